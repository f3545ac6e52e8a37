"""Event contracts: the four messages vitguard reads and writes on Kafka.

Each model is a contract with downstream services: fields are documented, enumerations are ``Literal``,
unknown fields are refused on input, and every event carries ``schema_version``. A breaking change bumps the
major version of ``SCHEMA_VERSION``; adding an optional field bumps the minor one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from vitguard.errors import InputError, ReasonCode

__all__ = [
    "alert_type_of",
    "INLINE_MEDIA_TYPES",
    "SCHEMA_VERSION",
    "BankMatch",
    "BankMatchAlert",
    "FrameScore",
    "FrameSegment",
    "DeadLetter",
    "ImageEvent",
    "Match",
    "MediaSummary",
    "NearDuplicateAlert",
    "Timings",
    "Verdict",
    "decode_key",
    "load_json",
    "parse_image_event",
    "derived_event_id",
    "INLINE_ENVELOPE_BYTES",
    "inline_capacity",
    "utc_now",
    "validate_image_event",
]

SCHEMA_VERSION = "1.7"
"""1.1: dead letters carry ``payload_size``, ``payload_sha256`` and ``payload_truncated``; timings carry
``queue_ms`` and ``wait_ms``. Readers of 1.0 that ignore unknown fields keep working.
1.2: hash banks: verdicts carry ``bank_matches``, ``pdq_hash``, ``pdq_quality`` and ``label_source``; the alerts
topic also carries :class:`BankMatchAlert`; every alert has ``alert_type`` to tell the two apart.
1.2 also: animations and video: verdicts of multi-frame items carry ``media`` (:class:`MediaSummary`: the worst
frames, unsafe segments, frame counts); the key is left out of still-image verdicts, which keep their 1.1 shape.
New reason codes: too_many_frames, video_too_long, unsupported_codec, corrupt_video, no_frames.
1.3: new reason code decode_timeout (a decode abandoned past ``VITGUARD_BATCH_DECODE_TIMEOUT_S``).
1.4: a video's ``media`` states its sampling: ``sample_rate_fps``, ``scene_cuts`` and ``largest_gap_s``.
1.5: the alerts topic also carries :class:`~vitguard.schemas.retro.RetroMatch` (``alert_type`` ``retro_match``):
an item judged safe before that a retro-hunt found close to something now known unsafe.
1.6: policies as data: events may carry ``surface``; verdicts carry ``surface``, ``categories`` (score per
moderation category), ``action`` (allow, review, block or a custom action) and the ``policy`` and
``policy_version`` that decided; review requests may have the reason ``policy``; a bank match's ``action`` may
be the item's policy's. Retro-hunts by PDQ hash: a trigger of kind ``bank_entry`` (with ``bank``, ``entry_id``,
``pdq_hash``) and a match's ``hash_distance``.
1.7: a near-duplicate alert carries the ``policy`` of the new image, whose wave rule judged the cluster (its
``wave_window_s`` and ``severity`` are that rule's). A retro match's ``on_demand`` trigger may carry ``pdq_hash``
(``vitguard retro-hunt --hash``).

Compatibility rule: within 1.x a new field is optional and a new reason code or enumeration value is only
added. Readers of an older 1.x must ignore fields they do not know (a reader that forbids unknown fields reads
still-image verdicts, but not verdicts carrying ``media``); readers of a newer 1.x read older events, absent
fields taking their defaults. Producers may keep writing older 1.x events. A breaking change is 2.0."""

MAX_ID_LEN = 128
MAX_URL_LEN = 4096
MAX_INLINE_REF_LEN = 2 * 1024 * 1024  # base64 text of a data: URL; the decoded-size limit is a fetch setting
MAX_METADATA_KEYS = 32
MAX_METADATA_VALUE_LEN = 1024

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]*$"),
]
"""Ids are printable, URL- and key-safe: letters, digits and ``._:@/-``, at most 128 characters."""


def utc_now() -> datetime:
    """Timezone-aware now, the only clock the schemas use."""
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    schema_version: str = Field(
        SCHEMA_VERSION, pattern=r"^1\.[0-9]+$", description="Contract version (major.minor); this reader accepts 1.x."
    )


INLINE_ENVELOPE_BYTES = 48 * 1024
"""Room an inline event keeps for everything but the image: ids, tenant, timestamps and metadata (at most
32 keys of up to 1 KiB values)."""


def inline_capacity(message_limit: int) -> int:
    """The largest image (decoded bytes) an inline ``data:`` event can carry in a message of ``message_limit``
    bytes: base64 writes 4 characters for every 3 bytes, and the rest of the event needs its room."""
    return max(0, (message_limit - INLINE_ENVELOPE_BYTES) * 3 // 4)


INLINE_MEDIA_TYPES = ("image/", "video/")
"""What an inline ``data:`` reference may be labelled; the media kind itself is read from the bytes (an inline
video labelled ``data:video/mp4`` was a schema violation, ``data:image/mp4`` accepted)."""


URL_REF_PATTERN = r"^(https?|file)://[^\s]*$"
"""An http(s):// or file:// reference: no whitespace (and at most :data:`MAX_URL_LEN` characters)."""
DATA_REF_PATTERN = r"^data:(image|video)/[^,]*;base64,[\s\S]+$"
"""An inline reference: ``data:image/...`` or ``data:video/...``, base64, not empty."""
TIMESTAMP_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
                     r"([Zz]|[+-][0-9]{2}:?[0-9]{2})$")
"""An ISO 8601 / RFC 3339 date and time with its offset (``2026-01-01T00:00:00Z``)."""


class ImageEvent(_Event):
    """Input: an image was uploaded somewhere, and this is where to get it.

    Unknown fields are accepted and ignored (counted in ``vitguard_input_unknown_fields_total``), so producers
    can add a field before the workers know it. Names starting with ``x_`` are the producer's own for good;
    any other name may be given a meaning by a later 1.x contract.
    """

    model_config = ConfigDict(frozen=True, extra="allow", str_strip_whitespace=False)

    event_id: Identifier = Field(
        default_factory=lambda: uuid.uuid4().hex,
        description=(
            "Unique per event; a redelivered event keeps its id and gets no second verdict. When a message "
            "leaves it out, the worker derives it from the message bytes (sha256-<32 hex digits>), so a "
            "redelivery of the same record is still recognised."
        ),
    )
    content_id: Identifier = Field(
        description="The platform's id of the image; Kafka key, Milvus primary key, the id downstream joins on."
    )
    image_ref: str = Field(
        min_length=1,
        max_length=MAX_INLINE_REF_LEN,
        description=(
            "Where the image is: an http(s):// URL, a file:// URL under the worker's allowed root, or an inline "
            "data:image/...;base64,... URL for small images."
        ),
        json_schema_extra={"anyOf": [{"pattern": URL_REF_PATTERN, "maxLength": MAX_URL_LEN},
                                     {"pattern": DATA_REF_PATTERN}]},
    )
    tenant: Identifier = Field("default", description="Tenant or source platform the upload belongs to.")
    surface: Identifier | None = Field(
        None, exclude_if=lambda v: v is None,
        description="Where on the tenant's platform it was uploaded (e.g. profile, chat); policies may differ (1.6).",
    )
    created_at: datetime = Field(
        default_factory=utc_now, description="When the upload happened (timezone-aware, ISO 8601).",
        json_schema_extra={"pattern": TIMESTAMP_PATTERN},
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description=f"Free-form string tags passed through to the verdict (at most {MAX_METADATA_KEYS} keys).",
        json_schema_extra={"maxProperties": MAX_METADATA_KEYS,
                           "propertyNames": {"minLength": 1, "maxLength": MAX_ID_LEN},
                           "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_LEN}},
    )
    replay_id: str | None = Field(
        None, max_length=MAX_ID_LEN, description="Set by `vitguard replay` on events it re-publishes."
    )

    @field_validator("image_ref")
    @classmethod
    def _ref_scheme(cls, v: str) -> str:
        if v.startswith(("http://", "https://", "file://")):
            if len(v) > MAX_URL_LEN:
                raise ValueError(f"URL longer than {MAX_URL_LEN} characters")
            if any(c.isspace() for c in v):
                raise ValueError("URL contains whitespace")
            return v
        if v.startswith("data:"):
            header, sep, payload = v.partition(",")
            if not sep or not header.endswith(";base64") or not header[5:].startswith(INLINE_MEDIA_TYPES):
                raise ValueError("inline media must be data:image/<type>;base64,<data> or data:video/<type>;...")
            if not payload:
                raise ValueError("inline image is empty")
            return v
        raise ValueError("image_ref must be an http(s)://, file:// or data:image/...;base64, (or data:video/) URL")

    @field_validator("created_at", mode="before")
    @classmethod
    def _iso_text(cls, v: Any) -> Any:
        """An ISO 8601 string with its offset, as the published schema says (no Unix times, no naive times)."""
        if isinstance(v, datetime):  # built in code, not read from JSON
            return v
        if not isinstance(v, str) or not re.fullmatch(TIMESTAMP_PATTERN, v):
            raise ValueError("created_at must be an ISO 8601 date and time with its offset (2026-01-01T00:00:00Z)")
        return v

    @field_validator("created_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created_at must carry a timezone (e.g. 2026-01-01T00:00:00Z)")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
        for key, value in v.items():
            if not key or len(key) > MAX_ID_LEN:
                raise ValueError(f"metadata key must be 1..{MAX_ID_LEN} characters")
            if len(value) > MAX_METADATA_VALUE_LEN:
                raise ValueError(f"metadata value of {key!r} longer than {MAX_METADATA_VALUE_LEN} characters")
        return v


class Timings(BaseModel):
    """Where the time went for one image, in milliseconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fetch_ms: float = Field(0.0, ge=0, description="Getting the bytes (network, disk or base64).")
    decode_ms: float = Field(0.0, ge=0, description="Decoding and preprocessing to the model's input tensor.")
    infer_ms: float = Field(0.0, ge=0, description="This image's share of the batch forward pass.")
    queue_ms: float = Field(0.0, ge=0, description="Broker timestamp to consumed: time waiting in Kafka (1.1).")
    wait_ms: float = Field(0.0, ge=0, description="Decoded to its forward pass: time waiting for the model (1.1).")


class BankMatch(BaseModel):
    """One hash-bank entry an image matched (1.2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank: str = Field(description="The bank's name.")
    entry_id: str = Field(description="The entry within the bank (the exchange's id when the list had one).")
    distance: int = Field(ge=0, le=256, description="Hamming distance between the two PDQ hashes, in bits.")
    action: Literal["force_unsafe", "flag_only"] = Field(
        description="The action on this match: the bank's, or what the item's policy makes of the bank (1.6).")
    negative: bool = Field(
        False, description="True for a negative bank (allow-list): the item is known safe, not known bad."
    )
    quarantined: bool = Field(
        False,
        description=(
            "The flood guard quarantined this entry: it matched far more items than usual within its window, so "
            "its force_unsafe action is suspended until someone looks."
        ),
    )
    frame: int | None = Field(
        None, ge=0,
        description=(
            "For an animation or a video: the source index of the sampled frame that matched (the closest one "
            "when several did); None for a still image."
        ),
    )


class FrameScore(BaseModel):
    """One classified frame of an animation or a video (1.2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, description="Frame index in the source, in decode order, from 0.")
    time_s: float = Field(ge=0, description="Time offset of the frame from the start, in seconds.")
    unsafe_score: float = Field(ge=0, le=1, description="The frame's unsafe score under the policy.")


class FrameSegment(BaseModel):
    """A run of consecutive sampled frames the policy calls unsafe (1.2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start_s: float = Field(ge=0, description="Time of the run's first frame.")
    end_s: float = Field(
        ge=0, description="Time of the next sampled frame after the run (the item's end for a run that ends it)."
    )
    unsafe_score: float = Field(ge=0, le=1, description="The highest unsafe score in the run.")
    frames: int = Field(ge=1, description="Sampled frames in the run.")


class MediaSummary(BaseModel):
    """How a multi-frame item was judged: its verdict is its worst frame's (1.2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["animation", "video"] = Field(description="animation: GIF, WebP or APNG; video: PyAV-decoded.")
    sampling: Literal["all", "even", "rate", "keyframes"] = Field(
        description=(
            "all: every frame; even: evenly spaced frames, first and last included; rate: video frames at a fixed "
            "rate (spread evenly when over the budget); keyframes: video key frames only."
        )
    )
    frames_total: int | None = Field(None, ge=0, description="Frames in the source, when known.")
    frames_classified: int = Field(ge=1, description="Frames the model saw.")
    duration_s: float | None = Field(None, ge=0, description="Duration of the item in seconds, when known.")
    truncated: bool = Field(
        False, description="Decoding stopped early at corrupt or missing data; frames before it were classified."
    )
    sample_rate_fps: float | None = Field(
        None, ge=0, description="Video: the rate frames were sampled at in the end (halved each time the budget "
                                "filled), scene cuts aside (1.4)."
    )
    scene_cuts: int | None = Field(
        None, ge=0, description="Video: frames classified because the picture changed (a scene cut) (1.4)."
    )
    largest_gap_s: float | None = Field(
        None, ge=0, description="Video: the longest stretch of decoded stream with no classified frame (1.4)."
    )
    worst_frame: FrameScore = Field(description="The frame the verdict's label, scores and embedding come from.")
    worst_frames: list[FrameScore] = Field(description="The highest-scoring frames, worst first.")
    unsafe_segments: list[FrameSegment] = Field(
        default_factory=list, description="Runs of unsafe frames, worst first (empty for a safe item)."
    )
    embedding: Literal["worst_frame"] = Field(
        "worst_frame", description="Which frame's embedding represents the item in the vector store."
    )


class Verdict(_Event):
    """Output: the moderation decision for one image."""

    event_id: Identifier = Field(description="The input event this answers.")
    content_id: Identifier = Field(description="The image; also the Kafka key of this message.")
    tenant: Identifier = Field("default", description="Copied from the input event.")
    label: Literal["safe", "unsafe"] = Field(
        description="The policy's decision: unsafe when its action is anything but allow (see action).")
    unsafe_score: float = Field(
        ge=0, le=1,
        description=(
            "The highest score among the categories the policy acts on (the built-in policy: the sum of the "
            "probabilities of the unsafe classes)."
        ),
    )
    top_class: str = Field(description="The model class with the highest probability.")
    scores: dict[str, float] = Field(description="Probability per model class; they sum to 1.")
    model_name: str = Field(description="The model that decided, e.g. hf-hub:Marqo/nsfw-image-detection-384.")
    model_version: str = Field(description="Revision or content hash of the weights.")
    model_untrained: bool = Field(False, description="True for random-weight models (benchmarks, plumbing only).")
    embedding_id: str | None = Field(
        None, description="Primary key of the embedding in the vector store (content id), None if not stored."
    )
    collection: str | None = Field(None, description="Vector collection holding the embedding (one per model).")
    cluster_id: str | None = Field(None, description="Near-duplicate cluster of an unsafe image.")
    from_cache: bool = Field(False, description="True when an identical image (same SHA-256) was already judged.")
    image_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the image bytes.")
    timings: Timings = Field(default_factory=Timings, description="Per-stage time for this image.")
    created_at: datetime | None = Field(None, description="The input event's created_at.")
    processed_at: datetime = Field(default_factory=utc_now, description="When the verdict was made.")
    replay_id: str | None = Field(None, description="Set when the verdict comes from a replay, not live traffic.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Copied from the input event.")
    media: MediaSummary | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description=(
            "Animations and video: frames classified and the worst ones; label, scores and embedding are the worst "
            "frame's. Absent for a still image (1.2)."
        ),
    )
    label_source: Literal["model", "bank"] = Field(
        "model",
        description=(
            "What decided the label: the model's score and policy, or a hash-bank match: force_unsafe (unsafe) "
            "or a negative bank (safe); force_unsafe wins when both match (1.2)."
        ),
    )
    bank_matches: list[BankMatch] = Field(
        default_factory=list, description="Hash-bank entries the image matched, closest first (1.2)."
    )
    pdq_hash: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="PDQ perceptual hash of the image, 64 hex digits (1.2)."
    )
    pdq_quality: int | None = Field(
        None, ge=0, le=100,
        description="PDQ's quality score (0-100); hashes below the banks' quality threshold are not matched (1.2).",
    )
    surface: Identifier | None = Field(
        None, exclude_if=lambda v: v is None, description="Copied from the input event (1.6)."
    )
    categories: dict[str, float] = Field(
        default_factory=dict, description="Score per moderation category of the policy document in force (1.6)."
    )
    action: str | None = Field(
        None, max_length=40,
        description=(
            "What the policy says to do: allow, review, block, or a custom action of the policy document; "
            "block for a force_unsafe bank match, allow for a negative bank (1.6)."
        ),
    )
    policy: str | None = Field(None, max_length=64, description="The policy that decided (1.6).")
    policy_version: str | None = Field(
        None, max_length=64, description="The version of the policy document it belongs to (1.6)."
    )


class Match(BaseModel):
    """One known unsafe item a new one is close to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    content_id: str = Field(description="The known item.")
    similarity: float = Field(ge=-1, le=1, description="Cosine similarity of the embeddings.")
    cluster_id: str | None = Field(None, description="The cluster the known item belongs to.")


class NearDuplicateAlert(_Event):
    """An unsafe image landed close to known unsafe images; ``severity`` rises in an abuse wave."""

    alert_type: Literal["near_duplicate"] = Field(
        "near_duplicate", description="Which alert this is; the alerts topic also carries bank_match alerts (1.2)."
    )
    alert_id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Unique per alert.")
    content_id: Identifier = Field(description="The new unsafe image.")
    event_id: Identifier = Field(description="The event that brought it.")
    tenant: Identifier = Field("default", description="Tenant of the new image.")
    cluster_id: str = Field(description="The cluster it joined.")
    matches: list[Match] = Field(description="Closest known unsafe items, most similar first.")
    wave_count: int = Field(ge=1, description="Items that landed on this cluster within the wave window.")
    wave_window_s: int = Field(ge=1, description="The window wave_count counts over.")
    severity: Literal["info", "warning", "critical"] = Field(
        description="info: a near-duplicate; critical: a wave (wave_count >= the policy's threshold)."
    )
    model_name: str = Field(description="Embeddings of different models are never compared.")
    created_at: datetime = Field(default_factory=utc_now, description="When the alert was raised.")
    policy: str | None = Field(
        None, max_length=64, exclude_if=lambda v: v is None,
        description="The policy of the new image, whose wave rule judged the cluster (1.7).",
    )


class BankMatchAlert(_Event):
    """An image matched a positive hash bank (1.2)."""

    alert_type: Literal["bank_match"] = Field("bank_match", description="Which alert this is.")
    alert_id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Unique per alert.")
    content_id: Identifier = Field(description="The matching image.")
    event_id: Identifier = Field(description="The event that brought it.")
    tenant: Identifier = Field("default", description="Tenant of the image.")
    matches: list[BankMatch] = Field(description="The positive-bank entries it matched, closest first.")
    action_taken: Literal["force_unsafe", "flag_only", "suspended"] = Field(
        description=(
            "force_unsafe: the verdict is unsafe because of the match; flag_only: the bank only flags; suspended: "
            "a force_unsafe bank matched, but every such entry is quarantined by the flood guard."
        )
    )
    quarantined: bool = Field(False, description="At least one matched entry is quarantined by the flood guard.")
    severity: Literal["info", "warning", "critical"] = Field(
        description="critical: force_unsafe applied; warning: flag_only or suspended (a person should look)."
    )
    label: Literal["safe", "unsafe"] = Field(description="The verdict's label.")
    pdq_hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="The image's PDQ hash.")
    pdq_quality: int = Field(ge=0, le=100, description="Its PDQ quality.")
    created_at: datetime = Field(default_factory=utc_now, description="When the alert was raised.")


def alert_type_of(raw: bytes | str | None) -> str | None:
    """The ``alert_type`` of an alerts-topic record, read without validating it: ``near_duplicate`` when the
    field is absent (alerts before 1.2 had none); None when the record is not a JSON object (then no reader's
    contract can match it, and each reports it as invalid)."""
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("alert_type", "near_duplicate")
    return kind if isinstance(kind, str) else None


class DeadLetter(_Event):
    """An event vitguard could not process, with why, and the original bytes to re-drive it."""

    reason: ReasonCode = Field(description="Stable machine-readable reason code.")
    message: str = Field(max_length=2000, description="What went wrong, for people.")
    payload: str = Field(description="The original message value: UTF-8 text, or base64 (see payload_encoding).")
    payload_encoding: Literal["utf-8", "base64"] = Field(description="How payload encodes the original bytes.")
    key: str | None = Field(
        None, description="The original message key (UTF-8, or base64 if not UTF-8); its first 1,024 bytes when longer."
    )
    event_id: str | None = Field(None, description="The event id, when the payload parsed far enough to have one.")
    content_id: str | None = Field(None, description="The content id, when known.")
    source_topic: str = Field(description="Where the original message was read from.")
    source_partition: int = Field(ge=0, description="Its partition.")
    source_offset: int = Field(ge=0, description="Its offset.")
    failed_at: datetime = Field(default_factory=utc_now, description="When processing gave up.")
    payload_size: int | None = Field(None, ge=0, description="Size of the original message value in bytes (1.1).")
    payload_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the original message value, hex (1.1)."
    )
    payload_truncated: bool = Field(
        False,
        description=(
            "True when ``payload`` holds only the first bytes of the original, because the whole dead letter would "
            "not fit the dead-letter topic; size, SHA-256 and the source offset identify the original (1.1)."
        ),
    )

    @classmethod
    def for_payload(cls, raw: bytes, **fields: Any) -> DeadLetter:
        """Build a dead letter that preserves ``raw`` exactly (UTF-8 text when it is, base64 otherwise)."""
        payload, encoding = _encode_bytes(raw)
        return cls(
            payload=payload,
            payload_encoding=encoding,
            payload_size=len(raw),
            payload_sha256=hashlib.sha256(raw).hexdigest(),
            **fields,
        )

    def truncated(self, keep_bytes: int) -> DeadLetter:
        """This dead letter with only the first ``keep_bytes`` of the original payload, flagged as truncated.

        Size and SHA-256 of the whole original stay, so the original can still be found at its source offset.
        """
        raw = self.original_bytes(allow_truncated=True)
        head = raw[: max(0, keep_bytes)]
        if self.payload_encoding == "utf-8":
            payload = head.decode("utf-8", errors="ignore")  # never cut a character in half
        else:
            payload = base64.b64encode(head).decode("ascii")
        return self.model_copy(
            update={
                "payload": payload,
                "payload_truncated": True,
                "payload_size": self.payload_size if self.payload_size is not None else len(raw),
                "payload_sha256": self.payload_sha256 or hashlib.sha256(raw).hexdigest(),
            }
        )

    def original_bytes(self, *, allow_truncated: bool = False) -> bytes:
        """The original message value, byte for byte.

        Raises:
            ValueError: the payload was truncated (pass ``allow_truncated=True`` for its first bytes), or is
                not the base64 ``payload_encoding`` says it is.
        """
        if self.payload_truncated and not allow_truncated:
            raise ValueError(
                f"dead letter payload was truncated ({self.payload_size} bytes originally): re-read it from "
                f"{self.source_topic}[{self.source_partition}]@{self.source_offset}"
            )
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload, validate=True)
        return self.payload.encode("utf-8")


def _encode_bytes(raw: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


MAX_KEY_BYTES = 1024
"""A dead letter keeps at most this many bytes of the original key (a key of any size must not make the dead
letter itself too large to publish)."""


def decode_key(raw: bytes | None) -> str | None:
    """A Kafka key as text for a dead letter (base64 when not UTF-8): its first :data:`MAX_KEY_BYTES` bytes."""
    if raw is None:
        return None
    if len(raw) > MAX_KEY_BYTES:
        head = raw[:MAX_KEY_BYTES]
        try:  # a UTF-8 key cut between the bytes of a character stays text
            return head.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            if exc.start >= MAX_KEY_BYTES - 3 and _is_utf8(head[: exc.start]):
                return head[: exc.start].decode("utf-8")
        return base64.b64encode(head).decode("ascii")
    return _encode_bytes(raw)[0]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True



def load_json(raw: bytes | str) -> Any:
    """Decode untrusted JSON (an input event, a ``POST /classify`` body).

    Raises:
        InputError: ``invalid_json`` when the bytes are not UTF-8 JSON, or nest deeper than the decoder's
            recursion limit (a RecursionError, not a ValueError: it escaped every handler that expected one).
    """
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError("invalid_json", f"payload is not valid UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise InputError("invalid_json", "payload is JSON nested too deeply to decode") from exc


def parse_image_event(raw: bytes | str) -> ImageEvent:
    """Parse and validate one input message.

    Raises:
        InputError: ``invalid_json`` when the bytes are not a JSON object, ``schema_violation`` when the
            object breaks the contract (the message names the first offending field).
    """
    data = load_json(raw)
    if not isinstance(data, dict):
        raise InputError("invalid_json", f"payload must be a JSON object, got {type(data).__name__}")
    if "event_id" not in data:  # derived from the bytes: a redelivery of this record has the same id
        data["event_id"] = derived_event_id(raw)
    return validate_image_event(data)


def derived_event_id(raw: bytes | str) -> str:
    """The id of an input message that carries none: ``sha256-`` and 32 hex digits of its bytes."""
    data = raw.encode() if isinstance(raw, str) else raw
    return "sha256-" + hashlib.sha256(data).hexdigest()[:32]


def validate_image_event(data: dict[str, Any]) -> ImageEvent:
    """Validate a decoded JSON object against the input contract.

    Raises:
        InputError: ``schema_violation``, naming the first offending field.
    """
    try:
        return ImageEvent.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "event"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError("schema_violation", f"{where}: {err['msg']}{more}") from exc
