"""All vitguard settings, one frozen class per concern.

Every field is read from an environment variable ``VITGUARD_<CONCERN>_<FIELD>`` (upper case), e.g.
``VITGUARD_KAFKA_BOOTSTRAP_SERVERS``. Lists are given as JSON (``'["NSFW"]'``). Settings are built once at
start-up by :func:`load_settings` and passed down through constructors: no other module reads the
environment. A bad value fails there with :class:`~vitguard.errors.ConfigError` and one line naming the
variable.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vitguard.errors import ConfigError

__all__ = [
    "BankSettings",
    "BatchSettings",
    "FetchSettings",
    "FrameSettings",
    "KafkaSettings",
    "LogSettings",
    "MilvusSettings",
    "ModelSettings",
    "PolicySettings",
    "RedisSettings",
    "ReviewSettings",
    "Settings",
    "TopicSettings",
    "WebSettings",
    "load_settings",
]


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore", case_sensitive=False)


class KafkaSettings(BaseSettings):
    """Where the Kafka cluster is and how vitguard joins it."""

    model_config = _config("VITGUARD_KAFKA_")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        min_length=1,
        description="Comma-separated broker list. Env: VITGUARD_KAFKA_BOOTSTRAP_SERVERS. Default 127.0.0.1:9092.",
    )
    consumer_group: str = Field(
        "vitguard",
        min_length=1,
        description="Consumer group (and Faust app id) shared by all workers. Env: VITGUARD_KAFKA_CONSUMER_GROUP.",
    )
    client_id: str = Field("vitguard", description="Client id sent to brokers. Env: VITGUARD_KAFKA_CLIENT_ID.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Env: VITGUARD_KAFKA_SECURITY_PROTOCOL. Default PLAINTEXT."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when a SASL protocol is used. Env: VITGUARD_KAFKA_SASL_MECHANISM."
    )
    sasl_username: str | None = Field(None, description="Env: VITGUARD_KAFKA_SASL_USERNAME.")
    sasl_password: SecretStr | None = Field(None, description="Env: VITGUARD_KAFKA_SASL_PASSWORD (secret).")
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL. Env: VITGUARD_KAFKA_SSL_CAFILE.")
    rebalance_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="How long a group join may take. Env: VITGUARD_KAFKA_REBALANCE_TIMEOUT_S. Default 30.",
    )
    session_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Consumer session timeout. Env: VITGUARD_KAFKA_SESSION_TIMEOUT_S."
    )
    request_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Admin/metadata request timeout. Env: VITGUARD_KAFKA_REQUEST_TIMEOUT_S."
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        description=(
            "Longest time the broker may hold the worker's fetch waiting for data (fetch.wait.max.ms): a bound "
            "on how late a message arriving on an idle partition is seen. Env: VITGUARD_KAFKA_FETCH_MAX_WAIT_MS. "
            "Default 100."
        ),
    )

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username):
            raise ValueError("SASL protocols need VITGUARD_KAFKA_SASL_MECHANISM and VITGUARD_KAFKA_SASL_USERNAME")
        return self


class TopicSettings(BaseSettings):
    """Topic names. Every topic vitguard reads or writes is named here and nowhere else."""

    model_config = _config("VITGUARD_TOPIC_")

    images: str = Field("image-events", min_length=1, description="Input. Env: VITGUARD_TOPIC_IMAGES.")
    verdicts: str = Field("image-verdicts", min_length=1, description="Env: VITGUARD_TOPIC_VERDICTS.")
    alerts: str = Field("near-duplicate-alerts", min_length=1, description="Env: VITGUARD_TOPIC_ALERTS.")
    dead_letters: str = Field("image-events-dlq", min_length=1, description="Env: VITGUARD_TOPIC_DEAD_LETTERS.")
    review_requests: str = Field(
        "review-requests",
        min_length=1,
        description="Items for human review, compacted by content id. Env: VITGUARD_TOPIC_REVIEW_REQUESTS.",
    )
    review_decisions: str = Field(
        "review-decisions",
        min_length=1,
        description="Reviewers' decisions, compacted by decision id. Env: VITGUARD_TOPIC_REVIEW_DECISIONS.",
    )
    review_audit: str = Field(
        "review-audit",
        min_length=1,
        description="What the applier did with each decision (append-only). Env: VITGUARD_TOPIC_REVIEW_AUDIT.",
    )
    verdict_corrections: str = Field(
        "verdict-corrections",
        min_length=1,
        description="Verdicts corrected by reviewers, by content id. Env: VITGUARD_TOPIC_VERDICT_CORRECTIONS.",
    )
    partitions: int = Field(
        6, ge=1, le=10_000, description="Partitions when vitguard creates a topic. Env: VITGUARD_TOPIC_PARTITIONS."
    )
    replication_factor: int = Field(
        1, ge=1, le=10, description="Replication when vitguard creates a topic. Env: VITGUARD_TOPIC_REPLICATION_FACTOR."
    )

    def all(self) -> tuple[str, str, str, str]:
        """The four topics, input first."""
        return (self.images, self.verdicts, self.alerts, self.dead_letters)

    def review(self) -> tuple[str, str, str, str]:
        """The review loop's topics (created by ``vitguard review topics``): requests, decisions, audit,
        corrections."""
        return (self.review_requests, self.review_decisions, self.review_audit, self.verdict_corrections)


class RedisSettings(BaseSettings):
    """Redis holds the redelivery guard, the verdict cache by image hash and the wave counters."""

    model_config = _config("VITGUARD_REDIS_")

    url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis URL. Env: VITGUARD_REDIS_URL. Default redis://127.0.0.1:6379/0."
    )
    password: SecretStr | None = Field(None, description="Overrides the URL's password. Env: VITGUARD_REDIS_PASSWORD.")
    key_prefix: str = Field("vitguard:", description="Prefix of every key. Env: VITGUARD_REDIS_KEY_PREFIX.")
    event_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long a processed event id is remembered. Env: VITGUARD_REDIS_EVENT_TTL_S.",
    )
    verdict_cache_ttl_s: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="Verdict cache lifetime by image hash. Env: VITGUARD_REDIS_VERDICT_CACHE_TTL_S.",
    )
    socket_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Per-command timeout; Redis is optional on the hot path. Env: VITGUARD_REDIS_SOCKET_TIMEOUT_S.",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v


class MilvusSettings(BaseSettings):
    """Where embeddings live: a Milvus Lite file path (embedded default) or a server URI."""

    model_config = _config("VITGUARD_MILVUS_")

    uri: str = Field(
        "./vitguard_milvus.db",
        min_length=1,
        description="Milvus Lite file (*.db) or server URI (http://host:19530). Env: VITGUARD_MILVUS_URI.",
    )
    token: SecretStr | None = Field(None, description="Server token (user:password). Env: VITGUARD_MILVUS_TOKEN.")
    db_name: str | None = Field(None, description="Database on a server. Env: VITGUARD_MILVUS_DB_NAME.")
    collection_prefix: str = Field(
        "vitguard_", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Env: VITGUARD_MILVUS_COLLECTION_PREFIX."
    )
    retry_backoff_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description=(
            "First delay while Milvus holds a batch, doubled each attempt (with jitter) for as long as it fails. "
            "Env: VITGUARD_MILVUS_RETRY_BACKOFF_S."
        ),
    )
    retry_backoff_max_s: float = Field(
        30.0, gt=0, le=600, description="Longest retry delay. Env: VITGUARD_MILVUS_RETRY_BACKOFF_MAX_S."
    )
    call_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "Deadline of one Milvus call (upsert, search, ping, ...): a hung server fails the call after this "
            "long instead of blocking the batch forever. Env: VITGUARD_MILVUS_CALL_TIMEOUT_S. Default 10."
        ),
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "Deadline of opening (or re-opening) the connection to Milvus. Env: VITGUARD_MILVUS_CONNECT_TIMEOUT_S. "
            "Default 10."
        ),
    )
    load_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description=(
            "Deadline of creating and loading a collection at start-up, slower than a call: a large collection "
            "takes a while to load into memory. Env: VITGUARD_MILVUS_LOAD_TIMEOUT_S. Default 120."
        ),
    )


class ModelSettings(BaseSettings):
    """Which model classifies images, and where it runs."""

    model_config = _config("VITGUARD_MODEL_")

    spec: str = Field(
        "auto",
        min_length=1,
        description=(
            "Model spec: auto | hf-hub:ORG/NAME | DIR | timm:ARCH | onnx:PATH | opennsfw. 'auto' tries the Marqo "
            "checkpoint and falls back to the bundled open_nsfw model offline. Env: VITGUARD_MODEL_SPEC."
        ),
    )
    default_hub_id: str = Field(
        "hf-hub:Marqo/nsfw-image-detection-384",
        description="What 'auto' tries first. Env: VITGUARD_MODEL_DEFAULT_HUB_ID.",
    )
    revision: str | None = Field(None, description="Pinned hub revision. Env: VITGUARD_MODEL_REVISION.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Env: VITGUARD_MODEL_DEVICE. Default auto.")
    threads: int | None = Field(
        None, ge=1, le=512, description="Intra-op threads (None: library default). Env: VITGUARD_MODEL_THREADS."
    )
    max_pixels: int = Field(
        40_000_000,
        ge=1024,
        description="Larger images are refused as decompression bombs. Env: VITGUARD_MODEL_MAX_PIXELS.",
    )
    min_side: int = Field(
        8,
        ge=1,
        le=4096,
        description=(
            "Images whose shorter side is below this many pixels are refused (reason image_too_small). "
            "Env: VITGUARD_MODEL_MIN_SIDE. Default 8."
        ),
    )
    ort_spinning: bool = Field(
        False,
        description=(
            "Let onnxruntime's worker threads busy-wait between operators (ONNX and opennsfw backends). They "
            "keep spinning for about 50 ms after every run, a core's worth, which steals CPU from decode "
            "threads and other processes (~1.5x slower batches on a busy 2-core box), and one image at idle "
            "gained nothing measurable from it (bench/ort_spinning.py). "
            "Env: VITGUARD_MODEL_ORT_SPINNING. Default false."
        ),
    )
    amp: Literal["fp16", "bf16", "off"] = Field(
        "fp16",
        description=(
            "Autocast dtype of the torch backend on CUDA (fp16 or bf16; off: float32 with TF32 matmuls). "
            "Ignored on CPU, which runs float32. Env: VITGUARD_MODEL_AMP. Default fp16."
        ),
    )
    torch_compile: bool = Field(
        False,
        description=(
            "Run the torch backend's forward pass through torch.compile (the first batch of each new size "
            "pays for compilation: seconds to minutes). Env: VITGUARD_MODEL_TORCH_COMPILE. Default false."
        ),
    )
    device_decode: bool = Field(
        True,
        description=(
            "On CUDA, decode JPEGs with nvJPEG and preprocess them on the GPU in the batch path "
            "(predict_encoded); other formats fall back to the CPU decoder. Ignored on CPU. "
            "Env: VITGUARD_MODEL_DEVICE_DECODE. Default true."
        ),
    )
    cuda_batch_size: int = Field(
        256,
        ge=1,
        le=4096,
        description=(
            "Images per forward pass the torch backend prefers on CUDA (its preferred_batch_size and "
            "classify()'s default there; on CPU 16). Env: VITGUARD_MODEL_CUDA_BATCH_SIZE. Default 256."
        ),
    )


class PolicySettings(BaseSettings):
    """What counts as unsafe, and when near-duplicates become alerts and waves."""

    model_config = _config("VITGUARD_POLICY_")

    unsafe_labels: tuple[str, ...] = Field(
        ("NSFW",),
        min_length=1,
        description=(
            "Labels whose probabilities add up to the unsafe score. "
            'Env: VITGUARD_POLICY_UNSAFE_LABELS (JSON list). Default ["NSFW"].'
        ),
    )
    unsafe_threshold: float = Field(
        0.5, ge=0, le=1, description="unsafe_score >= this gives label 'unsafe'. Env: VITGUARD_POLICY_UNSAFE_THRESHOLD."
    )
    near_duplicate_threshold: float = Field(
        0.92,
        gt=0,
        le=1,
        description="Cosine similarity that makes a near-duplicate. Env: VITGUARD_POLICY_NEAR_DUPLICATE_THRESHOLD.",
    )
    max_matches: int = Field(5, ge=1, le=100, description="Matches listed per alert. Env: VITGUARD_POLICY_MAX_MATCHES.")
    wave_window_s: int = Field(
        600, ge=1, description="Sliding window for abuse waves. Env: VITGUARD_POLICY_WAVE_WINDOW_S. Default 600."
    )
    wave_threshold: int = Field(
        5,
        ge=2,
        description="Items on one cluster within the window that make a wave. Env: VITGUARD_POLICY_WAVE_THRESHOLD.",
    )
    wave_alert_cooldown_s: int = Field(
        300,
        ge=0,
        description=(
            "After a wave alert, further wave alerts for that cluster are suppressed this long. "
            "Env: VITGUARD_POLICY_WAVE_ALERT_COOLDOWN_S."
        ),
    )


class FetchSettings(BaseSettings):
    """Limits on getting image bytes: every input reference is untrusted."""

    model_config = _config("VITGUARD_FETCH_")

    connect_timeout_s: float = Field(3.0, gt=0, le=60, description="Env: VITGUARD_FETCH_CONNECT_TIMEOUT_S.")
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Whole-body timeout. Env: VITGUARD_FETCH_READ_TIMEOUT_S."
    )
    max_bytes: int = Field(
        25 * 1024 * 1024,
        ge=1024,
        description="Largest image body, enforced while streaming. Env: VITGUARD_FETCH_MAX_BYTES.",
    )
    max_redirects: int = Field(3, ge=0, le=20, description="Env: VITGUARD_FETCH_MAX_REDIRECTS.")
    max_inline_bytes: int = Field(
        1024 * 1024, ge=64, description="Largest decoded inline (data:) image. Env: VITGUARD_FETCH_MAX_INLINE_BYTES."
    )
    file_root: Path | None = Field(
        None,
        description=(
            "file:// references are only read under this directory; None refuses them. Env: VITGUARD_FETCH_FILE_ROOT."
        ),
    )
    allowed_networks: tuple[str, ...] = Field(
        (),
        description=(
            "CIDRs exempt from the SSRF guard (e.g. an internal CDN). Env: VITGUARD_FETCH_ALLOWED_NETWORKS (JSON list)."
        ),
    )
    concurrency: int = Field(
        32, ge=1, le=1024,
        description=(
            "Parallel fetches per worker for the stream, and as many again for POST /classify requests (each "
            "has its own slots: callers of the API cannot take the stream's). Env: VITGUARD_FETCH_CONCURRENCY."
        ),
    )
    user_agent: str = Field("vitguard/0.1", description="Env: VITGUARD_FETCH_USER_AGENT.")

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR network") from exc
        return v


class BatchSettings(BaseSettings):
    """Micro-batching of the stream into forward passes."""

    model_config = _config("VITGUARD_BATCH_")

    max_size: int = Field(16, ge=1, le=4096, description="Events per batch. Env: VITGUARD_BATCH_MAX_SIZE. Default 16.")
    max_wait_s: float = Field(
        0.0,
        ge=0,
        le=60,
        description=(
            "Upper bound, never a floor: an idle model starts a batch at once with whatever is decoded; with a "
            "value > 0 it may linger this long at most for images still being fetched or decoded (bigger "
            "batches, more latency). Env: VITGUARD_BATCH_MAX_WAIT_S. Default 0."
        ),
    )
    order_wait_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description=(
            "Longest a decoded image waits for earlier events of its partition still being fetched, so a "
            "partition's verdicts keep their order; it bounds what one stalled fetch adds to its neighbours' "
            "latency. Env: VITGUARD_BATCH_ORDER_WAIT_S. Default 1.0."
        ),
    )
    decode_workers: int = Field(
        2, ge=1, le=256, description="Decode thread pool size. Env: VITGUARD_BATCH_DECODE_WORKERS."
    )
    decode_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Longest one decode, PDQ-hash or SHA-256 job may run in the decode pool (time queued does not count): "
            "past it the event is a decode_timeout dead letter and a new thread takes the stuck one's place. "
            "When more jobs than decode_workers are stuck at once the worker stops (exit code 1) for a restart. "
            "Far above any decode within the pixel and frame limits. Env: VITGUARD_BATCH_DECODE_TIMEOUT_S. "
            "Default 60."
        ),
    )
    request_max_size: int = Field(
        8,
        ge=0,
        le=4096,
        description=(
            "Images in a forward pass that carries POST /classify requests while stream images wait, at most "
            "(0, or not below max_size: no short passes); requests take at most half of it, the stream the rest. "
            "On the CPU a pass's time grows with its images and throughput hardly does, so a short pass answers "
            "a request without a full batch's time. On CUDA the worker turns short passes off unless this is set "
            "(small passes waste a GPU). Env: VITGUARD_BATCH_REQUEST_MAX_SIZE. Default 8."
        ),
    )


class FrameSettings(BaseSettings):
    """Animations and video: which frames are classified, and the limits on one multi-frame item."""

    model_config = _config("VITGUARD_FRAMES_")

    max_frames: int = Field(
        32,
        ge=1,
        le=1024,
        description=(
            "Frames classified per animation or video, at most: all frames up to this, else this many evenly "
            "spaced ones (first and last included). Each costs one tensor in memory while the item waits. "
            "Env: VITGUARD_FRAMES_MAX_FRAMES. Default 32."
        ),
    )
    max_source_frames: int = Field(
        10_000,
        ge=1,
        description=(
            "An animation or video with more frames than this is refused (reason too_many_frames). "
            "Env: VITGUARD_FRAMES_MAX_SOURCE_FRAMES. Default 10000."
        ),
    )
    max_decoded_pixels: int = Field(
        2_000_000_000,
        ge=1024,
        description=(
            "Pixels decoded for one item in total, every decoded frame counted (reason decompression_bomb). "
            "Env: VITGUARD_FRAMES_MAX_DECODED_PIXELS. Default 2000000000."
        ),
    )
    max_duration_s: float = Field(
        300.0, gt=0, le=86_400,
        description="Longest video accepted (reason video_too_long). Env: VITGUARD_FRAMES_MAX_DURATION_S. Default 300.",
    )
    video_fps: float = Field(
        1.0, gt=0, le=120,
        description=(
            "Video frames sampled per second, spread evenly over the whole video when that exceeds max_frames. "
            "Env: VITGUARD_FRAMES_VIDEO_FPS. Default 1."
        ),
    )
    video_sampling: Literal["rate", "keyframes"] = Field(
        "rate",
        description=(
            "rate: decode every frame, sample at video_fps; keyframes: decode key frames only (cheaper, coarser). "
            "Env: VITGUARD_FRAMES_VIDEO_SAMPLING. Default rate."
        ),
    )
    per_batch: int = Field(
        4,
        ge=1,
        le=4096,
        description=(
            "Fair batching: frames of one item a forward pass takes per turn; items with frames left take turns "
            "with everything else queued, so a long video never holds the still images behind it for more than "
            "this many slots. Env: VITGUARD_FRAMES_PER_BATCH. Default 4."
        ),
    )
    worst_frames: int = Field(
        5,
        ge=1,
        le=100,
        description="Worst frames (and unsafe segments) listed per verdict. Env: VITGUARD_FRAMES_WORST_FRAMES.",
    )


class WorkerSettings(BaseSettings):
    """How the worker holds work in flight, tells its health, and stops."""

    model_config = _config("VITGUARD_WORKER_")

    max_in_flight: int = Field(
        64,
        ge=1,
        le=100_000,
        description=(
            "Events taken from the stream and not yet answered, at most; past it the agent stops taking "
            "(backpressure). Env: VITGUARD_WORKER_MAX_IN_FLIGHT. Default 64."
        ),
    )
    shutdown_timeout_s: float = Field(
        25.0,
        gt=0,
        le=600,
        description=(
            "After SIGTERM (or a fatal error) the process exits within this many seconds, even when stuck; "
            "in-flight work stays uncommitted. Keep it under the orchestrator's grace period (Kubernetes: 30 s). "
            "Env: VITGUARD_WORKER_SHUTDOWN_TIMEOUT_S. Default 25."
        ),
    )
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description=(
            "/livez fails when stream events have been waiting this long with none answered and no dependency "
            "being retried (a wedged agent), or /classify requests this long with none answered. "
            "Env: VITGUARD_WORKER_STALL_TIMEOUT_S. Default 120."
        ),
    )
    publish_stuck_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "/readyz turns false when outputs have failed to publish for this long. "
            "Env: VITGUARD_WORKER_PUBLISH_STUCK_S. Default 30."
        ),
    )


class WebSettings(BaseSettings):
    """The worker's HTTP server: health, readiness, metrics and POST /classify."""

    model_config = _config("VITGUARD_WEB_")

    host: str = Field("0.0.0.0", description="Env: VITGUARD_WEB_HOST.")  # noqa: S104 - a server's bind address
    port: int = Field(6066, ge=0, le=65535, description="Env: VITGUARD_WEB_PORT. Default 6066.")
    enabled: bool = Field(True, description="Env: VITGUARD_WEB_ENABLED.")
    classify_max_in_flight: int = Field(
        64, ge=1, le=100_000,
        description=(
            "POST /classify requests handled at once; more are answered 429 with Retry-After (each holds its "
            "body, up to the fetch size limit, and a decode). Env: VITGUARD_WEB_CLASSIFY_MAX_IN_FLIGHT. Default 64."
        ),
    )


class LogSettings(BaseSettings):
    """Logging format and level."""

    model_config = _config("VITGUARD_LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Env: VITGUARD_LOG_LEVEL.")
    json_format: bool = Field(False, description="One JSON object per line. Env: VITGUARD_LOG_JSON_FORMAT.")


class BankSettings(BaseSettings):
    """Hash banks (PDQ): where they live, when a hash is matched, and the flood guard."""

    model_config = _config("VITGUARD_BANKS_")

    enabled: bool = Field(
        True,
        description=(
            "Hash every image (PDQ) and match it against the banks; the worker follows the banks topic. "
            "Env: VITGUARD_BANKS_ENABLED. Default true."
        ),
    )
    topic: str = Field(
        "vitguard-banks",
        min_length=1,
        description=(
            "Compacted topic holding banks and their hashes (the source of truth; one partition). "
            "Env: VITGUARD_BANKS_TOPIC. Default vitguard-banks."
        ),
    )
    quality_threshold: int = Field(
        50,
        ge=0,
        le=100,
        description=(
            "PDQ hashes of lower quality are carried in the verdict but never matched (HMA's rule). "
            "Env: VITGUARD_BANKS_QUALITY_THRESHOLD. Default 50."
        ),
    )
    default_match_distance: int = Field(
        31,
        ge=0,
        le=128,
        description=(
            "Match distance (bits) of a bank created without one. Env: VITGUARD_BANKS_DEFAULT_MATCH_DISTANCE. "
            "Default 31 (HMA)."
        ),
    )
    index: Literal["auto", "flat", "multihash", "mih"] = Field(
        "auto",
        description=(
            "Hash index: mih (multi-index hashing in numpy, exact within the distance, fast for large banks), "
            "flat (FAISS exact scan), multihash (FAISS IndexBinaryMultiHash) or auto (flat below multihash_min "
            "hashes, mih from there). Env: VITGUARD_BANKS_INDEX. Default auto."
        ),
    )
    multihash_min: int = Field(
        4_096, ge=1, description="Hashes from which auto picks mih. Env: VITGUARD_BANKS_MULTIHASH_MIN."
    )
    rebuild_interval_s: float = Field(
        0.5,
        gt=0,
        le=600,
        description=(
            "Bank changes are gathered this long before the index is rebuilt (off the hot path). "
            "Env: VITGUARD_BANKS_REBUILD_INTERVAL_S. Default 0.5."
        ),
    )
    load_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Start-up waits this long for the banks topic to be read to its end before failing. "
            "Env: VITGUARD_BANKS_LOAD_TIMEOUT_S. Default 60."
        ),
    )
    flood_window_s: float = Field(
        600.0,
        gt=0,
        description="Flood guard window. Env: VITGUARD_BANKS_FLOOD_WINDOW_S. Default 600.",
    )
    flood_min_matches: int = Field(
        50,
        ge=1,
        description=(
            "An entry is quarantined when, within one window, it matches at least this many items and at least "
            "flood_factor times its usual count per window. Env: VITGUARD_BANKS_FLOOD_MIN_MATCHES. Default 50."
        ),
    )
    flood_factor: float = Field(
        10.0, ge=1, description="See flood_min_matches. Env: VITGUARD_BANKS_FLOOD_FACTOR. Default 10."
    )
    flood_quarantine_s: float = Field(
        3600.0,
        gt=0,
        description=(
            "How long a quarantine lasts after the entry's last flood. Env: VITGUARD_BANKS_FLOOD_QUARANTINE_S. "
            "Default 3600."
        ),
    )
    flood_min_spread_bits: int = Field(
        32,
        ge=0,
        le=256,
        description=(
            "A flood is quarantined only when the items it matched are at least this far apart from each other "
            "(median PDQ distance between pairs): a wrong entry matches unrelated images; a wave of one image's "
            "copies keeps its force_unsafe. 0: quarantine on counts alone. "
            "Env: VITGUARD_BANKS_FLOOD_MIN_SPREAD_BITS. Default 32."
        ),
    )


class ReviewSettings(BaseSettings):
    """The human review loop: which verdicts go to reviewers, and the review console."""

    model_config = _config("VITGUARD_REVIEW_")

    enabled: bool = Field(
        False,
        description=(
            "The worker publishes review requests (uncertain verdicts, every near-duplicate, wave and bank-match "
            "alert) to VITGUARD_TOPIC_REVIEW_REQUESTS; create it first with `vitguard review topics`. "
            "Env: VITGUARD_REVIEW_ENABLED. Default false."
        ),
    )
    uncertain_low: float = Field(
        0.35,
        ge=0,
        le=1,
        description=(
            "Verdicts with uncertain_low <= unsafe_score < uncertain_high go to review. "
            "Env: VITGUARD_REVIEW_UNCERTAIN_LOW. Default 0.35."
        ),
    )
    uncertain_high: float = Field(
        0.65, ge=0, le=1, description="See uncertain_low. Env: VITGUARD_REVIEW_UNCERTAIN_HIGH. Default 0.65."
    )
    console_token: SecretStr | None = Field(
        None,
        description=(
            "Signs nothing and is shared: reviewers log in with it and type their name (one operator, "
            "development); with VITGUARD_REVIEW_REVIEWERS_FILE or VITGUARD_REVIEW_IDENTITY_HEADER it is not used "
            "for logins. Unset with neither, the console refuses to start. Env: VITGUARD_REVIEW_CONSOLE_TOKEN."
        ),
    )
    reviewers_file: Path | None = Field(
        None,
        description=(
            "Per-reviewer logins: one `name:scrypt-hash[:tenant,...]` a line (hash from `vitguard review "
            "hash-password`); a reviewer with tenants reviews only theirs. Env: VITGUARD_REVIEW_REVIEWERS_FILE."
        ),
    )
    identity_header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description=(
            "Take the reviewer from this request header, set by an authenticating proxy in front of the console "
            "(oauth2-proxy: X-Auth-Request-User); no login form. Only the proxy may reach the console then. "
            "Env: VITGUARD_REVIEW_IDENTITY_HEADER."
        ),
    )
    console_host: str = Field("127.0.0.1", description="Console bind address. Env: VITGUARD_REVIEW_CONSOLE_HOST.")
    console_port: int = Field(
        6070, ge=0, le=65535, description="Console port. Env: VITGUARD_REVIEW_CONSOLE_PORT. Default 6070."
    )
    public_origin: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+$",
        description=(
            "The console's origin as browsers see it (https://review.example.com) when it sits behind a proxy; "
            "writes from any other Origin are refused. Default: the request's own scheme and Host. "
            "Env: VITGUARD_REVIEW_PUBLIC_ORIGIN."
        ),
    )
    cookie_secure: bool = Field(
        False,
        description="Mark the session cookie Secure (serve the console over HTTPS). Env: "
        "VITGUARD_REVIEW_COOKIE_SECURE.",
    )
    session_ttl_s: int = Field(
        8 * 3600, ge=60, le=7 * 24 * 3600, description="Login lifetime. Env: VITGUARD_REVIEW_SESSION_TTL_S."
    )
    thumbnail_px: int = Field(
        256, ge=32, le=1024, description="Longest side of console thumbnails. Env: VITGUARD_REVIEW_THUMBNAIL_PX."
    )
    thumbnail_cache: int = Field(
        256, ge=0, le=100_000, description="Thumbnails kept in memory. Env: VITGUARD_REVIEW_THUMBNAIL_CACHE."
    )
    negative_bank: str = Field(
        "review-overturned",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]*$",
        description=(
            "Hash bank (negative) that `vitguard review apply` adds overturned items to, where hash banks are "
            "enabled. Env: VITGUARD_REVIEW_NEGATIVE_BANK. Default review-overturned."
        ),
    )
    confirmed_bank: str = Field(
        "review-confirmed",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]*$",
        description=(
            "Hash bank (positive, flag_only when created) for confirmed items the reviewer chose to bank. "
            "Env: VITGUARD_REVIEW_CONFIRMED_BANK. Default review-confirmed."
        ),
    )

    @model_validator(mode="after")
    def _band(self) -> ReviewSettings:
        if self.uncertain_low > self.uncertain_high:
            raise ValueError("VITGUARD_REVIEW_UNCERTAIN_LOW must not be above VITGUARD_REVIEW_UNCERTAIN_HIGH")
        return self


class Settings(BaseModel):
    """Everything, grouped by concern. Build it with :func:`load_settings`."""

    model_config = ConfigDict(frozen=True)

    kafka: KafkaSettings
    topics: TopicSettings
    redis: RedisSettings
    milvus: MilvusSettings
    model: ModelSettings
    policy: PolicySettings
    fetch: FetchSettings
    batch: BatchSettings
    worker: WorkerSettings
    web: WebSettings
    log: LogSettings
    banks: BankSettings = Field(default_factory=BankSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    frames: FrameSettings = Field(default_factory=FrameSettings)


_SECTIONS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings,
    "topics": TopicSettings,
    "redis": RedisSettings,
    "milvus": MilvusSettings,
    "model": ModelSettings,
    "policy": PolicySettings,
    "fetch": FetchSettings,
    "batch": BatchSettings,
    "worker": WorkerSettings,
    "web": WebSettings,
    "log": LogSettings,
    "banks": BankSettings,
    "review": ReviewSettings,
    "frames": FrameSettings,
}


def _env_var(cls: type[BaseSettings], field: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def load_settings(**overrides: dict[str, Any]) -> Settings:
    """Read all settings from the environment, with per-section overrides (``kafka={...}``).

    Raises:
        ConfigError: one line naming the first bad variable and what is wrong with it.
    """
    unknown = set(overrides) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown settings section(s): {', '.join(sorted(unknown))}")
    built: dict[str, BaseSettings] = {}
    for name, cls in _SECTIONS.items():
        try:
            built[name] = cls(**overrides.get(name, {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            raise ConfigError(f"invalid setting {_env_var(cls, field)}: {err['msg']}") from exc
    return Settings(**built)  # type: ignore[arg-type]
