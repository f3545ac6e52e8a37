"""All vitguard settings, one frozen class per concern.

Every field is read from an environment variable ``VITGUARD_<CONCERN>_<FIELD>`` (upper case), e.g.
``VITGUARD_KAFKA_BOOTSTRAP_SERVERS``. Lists are given as JSON (``'["NSFW"]'``). Settings are built once at
start-up by :func:`load_settings` and passed down through constructors: no other module reads the
environment. A bad value fails there with :class:`~vitguard.errors.ConfigError` and one line naming the
variable.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from vitguard.errors import ConfigError
from vitguard.schemas.events import inline_capacity

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
    "RetroSettings",
    "ReviewSettings",
    "Settings",
    "TopicSettings",
    "WebSettings",
    "load_settings",
]


def _env_list(value: Any) -> Any:
    """A list variable as an operator writes it: a JSON list (``["a","b"]``) or comma-separated (``a,b``)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg}); write a,b or [\"a\",\"b\"]") from None
    return tuple(part.strip() for part in text.split(",") if part.strip())


EnvList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_env_list)]
EnvSecrets = Annotated[tuple[SecretStr, ...], NoDecode, BeforeValidator(_env_list)]
"""A list of strings read from one variable, JSON or comma-separated (pydantic-settings alone takes JSON only,
and a plain value failed with a traceback instead of one line)."""


_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]{0,127}$")
"""A tenant id (the input contract's identifier)."""


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="ignore", case_sensitive=False)


class KafkaSettings(BaseSettings):
    """Where the Kafka cluster is and how vitguard joins it."""

    model_config = _config("VITGUARD_KAFKA_")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        min_length=1,
        description="Comma-separated broker list.",
    )
    consumer_group: str = Field(
        "vitguard",
        min_length=1,
        description="Consumer group (and Faust app id) shared by all workers.",
    )
    client_id: str = Field("vitguard", description="Client id sent to brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when a SASL protocol is used."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret: never logged).")
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL.")
    rebalance_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="How long a group join may take.",
    )
    session_timeout_s: float = Field(
        30.0, gt=0, le=600, description="Consumer session timeout."
    )
    request_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Admin/metadata request timeout."
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        description=(
            "Longest time the broker may hold the worker's fetch waiting for data (fetch.wait.max.ms): a bound "
            "on how late a message arriving on an idle partition is seen. "
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

    images: str = Field("image-events", min_length=1, description="Input.")
    verdicts: str = Field("image-verdicts", min_length=1, description="One verdict per answered event.")
    alerts: str = Field("near-duplicate-alerts", min_length=1, description="Near-duplicate and wave alerts.")
    dead_letters: str = Field(
        "image-events-dlq", min_length=1, description="Events that could not be judged, with a reason code."
    )
    review_requests: str = Field(
        "review-requests",
        min_length=1,
        description="Items for human review, compacted by content id.",
    )
    review_decisions: str = Field(
        "review-decisions",
        min_length=1,
        description="Reviewers' decisions, compacted by decision id.",
    )
    review_audit: str = Field(
        "review-audit",
        min_length=1,
        description="What the applier did with each decision (append-only).",
    )
    verdict_corrections: str = Field(
        "verdict-corrections",
        min_length=1,
        description="Verdicts corrected by reviewers, by content id.",
    )
    partitions: int = Field(
        6, ge=1, le=10_000, description="Partitions when vitguard creates a topic."
    )
    replication_factor: int = Field(
        1, ge=1, le=10, description="Replication when vitguard creates a topic."
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
        "redis://127.0.0.1:6379/0", description="Redis URL."
    )
    password: SecretStr | None = Field(None, description="Overrides the URL's password.")
    key_prefix: str = Field("vitguard:", description="Prefix of every key.")
    event_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long a processed event id is remembered.",
    )
    verdict_cache_ttl_s: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="Verdict cache lifetime by image hash.",
    )
    cluster_rows_ttl_s: int = Field(
        30 * 86_400, ge=0, le=400 * 86_400,
        description=(
            "How long a near-duplicate cluster's row (size, first and last upload, tenants, latest items: what "
            "GET /clusters lists at any scale) is kept after its latest item; 0: no rows (GET /clusters scans "
            "the store instead)."
        ),
    )
    socket_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Per-command timeout; Redis is optional on the hot path.",
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
        description="Milvus Lite file (*.db) or server URI (http://host:19530).",
    )
    token: SecretStr | None = Field(None, description="Server token (user:password).")
    db_name: str | None = Field(None, description="Database on a server.")
    collection_prefix: str = Field(
        "vitguard_", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Prefix of the collection names (one collection per model version).",
    )
    retry_backoff_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description=(
            "First delay while Milvus holds a batch, doubled each attempt (with jitter) for as long as it fails. "
        ),
    )
    retry_backoff_max_s: float = Field(
        30.0, gt=0, le=600, description="Longest retry delay."
    )
    call_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "Deadline of one Milvus call (upsert, search, ping, ...): a hung server fails the call after this "
            "long instead of blocking the batch forever."
        ),
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "Deadline of opening (or re-opening) the connection to Milvus. "
        ),
    )
    load_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description=(
            "Deadline of creating and loading a collection at start-up, slower than a call: a large collection "
            "takes a while to load into memory."
        ),
    )
    search_consistency: Literal["Bounded", "Strong"] = Field(
        "Bounded",
        description=(
            "Consistency of the similarity searches users and retro-hunts run (POST /search, vitguard search, "
            "retro-hunt): Bounded answers in milliseconds and may miss items stored in the last seconds; Strong "
            "sees everything stored and waits for the server's next time tick (~200 ms a search). Lookups by "
            "content id are always Strong; Milvus Lite sees everything either way."
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
            "checkpoint and falls back to the bundled open_nsfw model offline."
        ),
    )
    default_hub_id: str = Field(
        "hf-hub:Marqo/nsfw-image-detection-384",
        description="What 'auto' tries first.",
    )
    revision: str | None = Field(None, description="Pinned hub revision.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs (auto: CUDA when present)."
    )
    threads: int | None = Field(
        None, ge=1, le=512, description="Intra-op threads (None: library default)."
    )
    max_pixels: int = Field(
        40_000_000,
        ge=1024,
        description="Larger images are refused as decompression bombs.",
    )
    min_side: int = Field(
        8,
        ge=1,
        le=4096,
        description=(
            "Images whose shorter side is below this many pixels are refused (reason image_too_small). "
        ),
    )
    ort_spinning: bool = Field(
        False,
        description=(
            "Let onnxruntime's worker threads busy-wait between operators (ONNX and opennsfw backends). They "
            "keep spinning for about 50 ms after every run, a core's worth, which steals CPU from decode "
            "threads and other processes (~1.5x slower batches on a busy 2-core box), and one image at idle "
            "gained nothing measurable from it (bench/ort_spinning.py). "
        ),
    )
    amp: Literal["fp16", "bf16", "off"] = Field(
        "fp16",
        description=(
            "Autocast dtype of the torch backend on CUDA (fp16 or bf16; off: float32 with TF32 matmuls). "
            "Ignored on CPU, which runs float32."
        ),
    )
    torch_compile: bool = Field(
        False,
        description=(
            "Run the torch backend's forward pass through torch.compile (the first batch of each new size "
            "pays for compilation: seconds to minutes)."
        ),
    )
    device_decode: bool = Field(
        True,
        description=(
            "On CUDA, decode JPEGs with nvJPEG and preprocess them on the GPU in the batch path "
            "(predict_encoded); other formats fall back to the CPU decoder. Ignored on CPU. "
        ),
    )
    cuda_batch_size: int = Field(
        256,
        ge=1,
        le=4096,
        description=(
            "Images per forward pass the torch backend prefers on CUDA (its preferred_batch_size and "
            "classify()'s default there; on CPU 16)."
        ),
    )


class PolicySettings(BaseSettings):
    """What counts as unsafe, and when near-duplicates become alerts and waves."""

    model_config = _config("VITGUARD_POLICY_")

    unsafe_labels: EnvList = Field(
        ("NSFW",),
        min_length=1,
        description=(
            "Labels whose probabilities add up to the unsafe score."
        ),
    )
    unsafe_threshold: float = Field(
        0.5, ge=0, le=1, description="unsafe_score >= this gives label 'unsafe'."
    )
    near_duplicate_threshold: float = Field(
        0.92,
        gt=0,
        le=1,
        description="Cosine similarity that makes a near-duplicate.",
    )
    max_matches: int = Field(5, ge=1, le=100, description="Matches listed per alert.")
    wave_window_s: int = Field(
        600, ge=1, description="Sliding window for abuse waves."
    )
    wave_threshold: int = Field(
        5,
        ge=2,
        description="Items on one cluster within the window that make a wave.",
    )
    wave_alert_cooldown_s: int = Field(
        300,
        ge=0,
        description=(
            "After a wave alert, further wave alerts for that cluster are suppressed this long. "
        ),
    )
    file: Path | None = Field(
        None,
        description=(
            "A policy document (YAML or JSON: per-tenant policies, categories, actions; docs/policies.md), read "
            "at start and again whenever it changes. Unset with no VITGUARD_POLICY_TOPIC: the settings above are "
            "the one policy."
        ),
    )
    topic: str | None = Field(
        None,
        min_length=1,
        description=(
            "A compacted topic whose latest record under the key 'document' is the policy document "
            "(`vitguard policy publish`); every worker follows it. Not with VITGUARD_POLICY_FILE."
        ),
    )
    load_timeout_s: float = Field(
        20.0, gt=0, description="How long start-up may take to read the policies topic to its end."
    )
    shadow_topic: str | None = Field(
        None,
        min_length=1,
        description=(
            "Where the verdicts of shadow policies go (the verdict as the candidate would have decided it); "
            "unset: shadow decisions are only counted (vitguard_policy_shadow_decisions_total)."
        ),
    )

    @model_validator(mode="after")
    def _one_document_source(self) -> PolicySettings:
        if self.file is not None and self.topic:
            raise ValueError("VITGUARD_POLICY_FILE and VITGUARD_POLICY_TOPIC: give one document source, not both")
        return self


class FetchSettings(BaseSettings):
    """Limits on getting image bytes: every input reference is untrusted."""

    model_config = _config("VITGUARD_FETCH_")

    connect_timeout_s: float = Field(3.0, gt=0, le=60, description="TCP connect deadline per image URL.")
    read_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Whole-body timeout."
    )
    max_bytes: int = Field(
        25 * 1024 * 1024,
        ge=1024,
        description="Largest image body, enforced while streaming.",
    )
    max_redirects: int = Field(3, ge=0, le=20, description="Redirects followed per image URL (each checked again).")
    max_inline_bytes: int = Field(
        inline_capacity(1_000_000), ge=64,
        description=(
            "Largest decoded inline (data:) image: by default what fits Kafka's default 1 MB message once "
            "base64-encoded, with room for the rest of the event (vitguard publish --inline also checks the "
            "topic's own limit)."
        ),
    )
    file_root: Path | None = Field(
        None,
        description=(
            "file:// references are only read under this directory; None refuses them."
        ),
    )
    allowed_networks: EnvList = Field(
        (),
        description=(
            "CIDRs exempt from the SSRF guard (e.g. an internal CDN)."
        ),
    )
    concurrency: int = Field(
        32, ge=1, le=1024,
        description=(
            "Parallel fetches per worker for the stream, and as many again for POST /classify requests (each "
            "has its own slots: callers of the API cannot take the stream's)."
        ),
    )
    user_agent: str = Field("vitguard/0.1", description="User-Agent of image fetches.")

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

    max_size: int = Field(16, ge=1, le=4096, description="Events per batch.")
    max_wait_s: float = Field(
        0.0,
        ge=0,
        le=60,
        description=(
            "Upper bound, never a floor: an idle model starts a batch at once with whatever is decoded; with a "
            "value > 0 it may linger this long at most for images still being fetched or decoded (bigger "
            "batches, more latency)."
        ),
    )
    order_wait_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description=(
            "Longest a decoded image waits for earlier events of its partition still being fetched, so a "
            "partition's verdicts keep their order; it bounds what one stalled fetch adds to its neighbours' "
            "latency."
        ),
    )
    decode_workers: int = Field(
        2, ge=1, le=256, description="Decode thread pool size."
    )
    decode_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Longest one decode, PDQ-hash or SHA-256 job may run in the decode pool (time queued does not count): "
            "past it the event is a decode_timeout dead letter and a new thread takes the stuck one's place. "
            "When more jobs than decode_workers are stuck at once the worker stops (exit code 1) for a restart. "
            "Far above any decode within the pixel and frame limits. "
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
            "(small passes waste a GPU)."
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
        ),
    )
    max_source_frames: int = Field(
        10_000,
        ge=1,
        description=(
            "An animation or video with more frames than this is refused (reason too_many_frames). "
        ),
    )
    max_decoded_pixels: int = Field(
        2_000_000_000,
        ge=1024,
        description=(
            "Pixels decoded for one item in total, every decoded frame counted (reason decompression_bomb). "
        ),
    )
    max_duration_s: float = Field(
        300.0, gt=0, le=86_400,
        description="Longest video accepted (reason video_too_long).",
    )
    video_fps: float = Field(
        1.0, gt=0, le=120,
        description=(
            "Video frames sampled per second, spread evenly over the whole video when that exceeds max_frames. "
        ),
    )
    video_sampling: Literal["rate", "keyframes"] = Field(
        "rate",
        description=(
            "rate: decode every frame, sample at video_fps; keyframes: decode key frames only (cheaper, coarser). "
        ),
    )
    per_batch: int = Field(
        4,
        ge=1,
        le=4096,
        description=(
            "Fair batching: frames of one item a forward pass takes per turn; items with frames left take turns "
            "with everything else queued, so a long video never holds the still images behind it for more than "
            "this many slots."
        ),
    )
    worst_frames: int = Field(
        5,
        ge=1,
        le=100,
        description="Worst frames (and unsafe segments) listed per verdict.",
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
            "(backpressure)."
        ),
    )
    shutdown_timeout_s: float = Field(
        25.0,
        gt=0,
        le=600,
        description=(
            "After SIGTERM (or a fatal error) the process exits within this many seconds, even when stuck; "
            "in-flight work stays uncommitted. Keep it under the orchestrator's grace period (Kubernetes: 30 s). "
        ),
    )
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description=(
            "/livez fails when stream events have been waiting this long with none answered and no dependency "
            "being retried (a wedged agent), or /classify requests this long with none answered. "
        ),
    )
    publish_stuck_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "/readyz turns false when outputs have failed to publish for this long. "
        ),
    )


class WebSettings(BaseSettings):
    """The worker's HTTP server: health, readiness, metrics and POST /classify."""

    model_config = _config("VITGUARD_WEB_")

    host: str = Field(
        "127.0.0.1",
        description=(
            "Bind address of the web server: loopback by default; 0.0.0.0 to serve probes and /classify to the "
            "network (the container image and the manifests set it), with api_keys for /classify."
        ),
    )
    port: int = Field(6066, ge=0, le=65535, description="Port of the web server (probes, metrics, /classify).")
    enabled: bool = Field(True, description="Serve the web endpoints.")
    api_keys: EnvSecrets = Field(
        (),
        description=(
            "Keys that POST /classify requires (Authorization: Bearer <key>, or X-API-Key), JSON or "
            "comma-separated, several for rotation; empty: no key asked. Probes and /metrics stay open."
        ),
    )
    tenant_api_keys: EnvSecrets = Field(
        (),
        description=(
            "Keys bound to one tenant, as TENANT=KEY (JSON or comma-separated): accepted wherever api_keys are; "
            "with one, /search, /clusters and /clusters/{id} answer only that tenant's items (asking about "
            "another tenant is 403)."
        ),
    )
    api_key_rate: float = Field(
        50.0, gt=0, le=100_000,
        description="Requests per second each API key may make (a burst of as many); more are answered 429.",
    )
    classify_max_in_flight: int = Field(
        64, ge=1, le=100_000,
        description=(
            "POST /classify requests handled at once; more are answered 429 with Retry-After (each holds its "
            "body, up to the fetch size limit, and a decode)."
        ),
    )


    @field_validator("tenant_api_keys")
    @classmethod
    def _tenant_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for entry in value:
            tenant, sep, key = entry.get_secret_value().partition("=")
            if not sep or not key or not _TENANT.match(tenant):
                raise ValueError("expected TENANT=KEY entries (a tenant id: letters, digits and ._:@/-)")
        return value


class LogSettings(BaseSettings):
    """Logging format and level."""

    model_config = _config("VITGUARD_LOG_")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_format: bool = Field(False, description="One JSON object per line.")


class BankSettings(BaseSettings):
    """Hash banks (PDQ): where they live, when a hash is matched, and the flood guard."""

    model_config = _config("VITGUARD_BANKS_")

    enabled: bool = Field(
        True,
        description=(
            "Hash every image (PDQ) and match it against the banks; the worker follows the banks topic. "
        ),
    )
    topic: str = Field(
        "vitguard-banks",
        min_length=1,
        description=(
            "Compacted topic holding banks and their hashes (the source of truth; one partition). "
        ),
    )
    quality_threshold: int = Field(
        50,
        ge=0,
        le=100,
        description=(
            "PDQ hashes of lower quality are carried in the verdict but never matched (HMA's rule). "
        ),
    )
    default_match_distance: int = Field(
        31,
        ge=0,
        le=128,
        description=(
            "Match distance (bits) of a bank created without one. "
        ),
    )
    index: Literal["auto", "flat", "multihash", "mih"] = Field(
        "auto",
        description=(
            "Hash index: mih (multi-index hashing in numpy, exact within the distance, fast for large banks), "
            "flat (FAISS exact scan), multihash (FAISS IndexBinaryMultiHash) or auto (flat below multihash_min "
            "hashes, mih from there)."
        ),
    )
    multihash_min: int = Field(
        4_096, ge=1, description="Hashes from which auto picks mih."
    )
    rebuild_interval_s: float = Field(
        0.5,
        gt=0,
        le=600,
        description=(
            "Bank changes are gathered this long before the index is rebuilt (off the hot path). "
        ),
    )
    load_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Start-up waits this long for the banks topic to be read to its end before failing. "
        ),
    )
    flood_window_s: float = Field(
        600.0,
        gt=0,
        description="Flood guard window.",
    )
    flood_min_matches: int = Field(
        50,
        ge=1,
        description=(
            "An entry is quarantined when, within one window, it matches at least this many items and at least "
            "flood_factor times its usual count per window."
        ),
    )
    flood_factor: float = Field(
        10.0, ge=1, description="See flood_min_matches."
    )
    flood_quarantine_s: float = Field(
        3600.0,
        gt=0,
        description=(
            "How long a quarantine lasts after the entry's last flood. "
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
        ),
    )
    uncertain_low: float = Field(
        0.35,
        ge=0,
        le=1,
        description=(
            "Verdicts with uncertain_low <= unsafe_score < uncertain_high go to review. "
        ),
    )
    uncertain_high: float = Field(
        0.65, ge=0, le=1, description="See uncertain_low."
    )
    console_token: SecretStr | None = Field(
        None,
        description=(
            "Signs nothing and is shared: reviewers log in with it and type their name (one operator, "
            "development); with VITGUARD_REVIEW_REVIEWERS_FILE or VITGUARD_REVIEW_IDENTITY_HEADER it is not used "
            "for logins. Unset with neither, the console refuses to start."
        ),
    )
    reviewers_file: Path | None = Field(
        None,
        description=(
            "Per-reviewer logins: one `name:scrypt-hash[:tenant,...]` a line (hash from `vitguard review "
            "hash-password`); a reviewer with tenants reviews only theirs."
        ),
    )
    identity_header: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description=(
            "Take the reviewer from this request header, set by an authenticating proxy in front of the console "
            "(oauth2-proxy: X-Auth-Request-User); no login form. Only the proxy may reach the console then. "
        ),
    )
    console_host: str = Field("127.0.0.1", description="Console bind address.")
    console_port: int = Field(
        6070, ge=0, le=65535, description="Console port."
    )
    public_origin: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+$",
        description=(
            "The console's origin as browsers see it (https://review.example.com) when it sits behind a proxy; "
            "writes from any other Origin are refused. Default: the request's own scheme and Host. "
        ),
    )
    cookie_secure: bool = Field(
        False,
        description="Mark the session cookie Secure (serve the console over HTTPS).",
    )
    session_ttl_s: int = Field(
        8 * 3600, ge=60, le=7 * 24 * 3600, description="Login lifetime."
    )
    thumbnail_px: int = Field(
        256, ge=32, le=1024, description="Longest side of console thumbnails."
    )
    thumbnail_cache: int = Field(
        256, ge=0, le=100_000, description="Thumbnails kept in memory."
    )
    negative_bank: str = Field(
        "review-overturned",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]*$",
        description=(
            "Hash bank (negative) that `vitguard review apply` adds overturned items to, where hash banks are "
            "enabled."
        ),
    )
    confirmed_bank: str = Field(
        "review-confirmed",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]*$",
        description=(
            "Hash bank (positive, flag_only when created) for confirmed items the reviewer chose to bank. "
        ),
    )

    @model_validator(mode="after")
    def _band(self) -> ReviewSettings:
        if self.uncertain_low > self.uncertain_high:
            raise ValueError("VITGUARD_REVIEW_UNCERTAIN_LOW must not be above VITGUARD_REVIEW_UNCERTAIN_HIGH")
        return self


class RetroSettings(BaseSettings):
    """Retro-hunts: re-checking what was judged safe when something close to it becomes known unsafe."""

    model_config = _config("VITGUARD_RETRO_")

    threshold: float | None = Field(
        None, gt=0, le=1,
        description="Cosine similarity a retro-hunt matches at (unset: VITGUARD_POLICY_NEAR_DUPLICATE_THRESHOLD).",
    )
    max_matches: int = Field(100, ge=1, le=100, description="Most items one hunt reports, most similar first.")
    hunts_per_s: float = Field(
        5.0, gt=0, le=1000, description="Most hunts `vitguard retro-hunt --follow` starts a second (the store's load).",
    )
    group_id: str = Field(
        "vitguard-retro-hunt",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]*$",
        description="Consumer group of `vitguard retro-hunt --follow`: its committed offsets are the hunts' progress.",
    )
    max_poll_interval_s: float = Field(
        300.0, ge=6, le=3600,
        description=(
            "Longest a follower may spend between two reads (a hunt waiting for the store included) before the "
            "group moves its partitions (librdkafka max.poll.interval.ms, also the join's rebalance timeout)."
        ),
    )


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
    retro: RetroSettings = Field(default_factory=RetroSettings)


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
    "retro": RetroSettings,
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
        except SettingsError as exc:  # a variable the environment source could not decode at all
            field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else "?"
            raise ConfigError(f"invalid setting {_env_var(cls, field)}: {exc}") from exc
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            raise ConfigError(f"invalid setting {_env_var(cls, field)}: {err['msg']}") from exc
    return Settings(**built)  # type: ignore[arg-type]
