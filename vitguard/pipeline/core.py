"""The pure part of moderation: messages in, verdicts, alerts and dead letters out. No I/O here.

:mod:`~vitguard.pipeline.runtime.runner` and its stages do the I/O (fetch, stores, model, publishing) and
calls these functions in between, so every decision the pipeline makes can be unit-tested with plain
values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from vitguard.banks.signal import PdqHash
from vitguard.errors import InputError, ReasonCode
from vitguard.model.types import ModelInfo, Prediction
from vitguard.pipeline.results import FrameHashes
from vitguard.pipeline.types import RawMessage
from vitguard.policies.compiled import CompiledPolicy
from vitguard.policy import Decision, decide
from vitguard.schemas.events import (
    MAX_ID_LEN,
    DeadLetter,
    ImageEvent,
    Match,
    MediaSummary,
    NearDuplicateAlert,
    Timings,
    Verdict,
    decode_key,
    load_json,
    utc_now,
)
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import WaveRule, WaveState

__all__ = [
    "alert_severity",
    "answer_key",
    "build_alert",
    "build_verdict",
    "cache_key",
    "dead_letter",
    "decided_by",
    "CachedVerdict",
    "encode_cached_verdict",
    "moderate_batch",
    "parse_cached_verdict",
    "verdict_from_cache",
]

_MAX_MESSAGE_CHARS = 2000


def _id_hint(value: object) -> str | None:
    """An id from a payload that failed validation, if it is a short string (for the dead letter)."""
    return value[:MAX_ID_LEN] if isinstance(value, str) and value else None


def dead_letter(
    raw: RawMessage, reason: ReasonCode, message: str, event: ImageEvent | None = None
) -> DeadLetter:
    """A dead letter that keeps ``raw``'s value byte for byte and says where it came from and why."""
    event_id = content_id = None
    if event is not None:
        event_id, content_id = event.event_id, event.content_id
    elif raw.value:
        try:
            data = load_json(raw.value)
        except InputError:
            data = None
        if isinstance(data, dict):
            event_id, content_id = _id_hint(data.get("event_id")), _id_hint(data.get("content_id"))
    return DeadLetter.for_payload(
        raw.value or b"",
        reason=reason,
        message=message[:_MAX_MESSAGE_CHARS],
        key=decode_key(raw.key),
        event_id=event_id,
        content_id=content_id,
        source_topic=raw.topic,
        source_partition=raw.partition,
        source_offset=raw.offset,
    )


def answer_key(event: ImageEvent) -> str:
    """What the redelivery guard remembers an answered event by: its id and a digest of what it asks about
    (content id, tenant, image reference).

    A redelivered or re-sent event has the same key and is answered once. An event that reuses an id for
    another image (a producer's bug, or someone racing a real upload with a benign one under the same id)
    has another key and is judged too: an image must not go unmoderated because of the id it came with.
    """
    what = json.dumps([event.content_id, event.tenant, event.image_ref]).encode()
    return f"{event.event_id}#{hashlib.blake2b(what, digest_size=8).hexdigest()}"


def cache_key(info: ModelInfo, unsafe_labels: Sequence[str], threshold: float,
              sampling: Sequence[object] = ()) -> str:
    """Verdict-cache namespace: a cached verdict is only valid for the same model AND the same policy, and
    the same frame sampling (``sampling``: what decides which frames of an animation or a video are judged)."""
    policy = json.dumps([sorted(unsafe_labels), threshold, *([list(sampling)] if sampling else [])])
    digest = hashlib.sha256(f"{info.name}|{info.version}|{policy}".encode()).hexdigest()[:16]
    return f"{info.collection_suffix[:80]}:{digest}"


def moderate_batch(
    predictions: Sequence[Prediction], unsafe_labels: Sequence[str], threshold: float
) -> list[Decision]:
    """The policy decision for each prediction of a forward pass, in order."""
    return [decide(p.scores, unsafe_labels, threshold) for p in predictions]


def build_verdict(
    event: ImageEvent,
    *,
    info: ModelInfo,
    prediction: Prediction,
    decision: Decision,
    sha256: str | None,
    timings: Timings,
    collection: str | None,
    cluster_id: str | None = None,
    processed_at: datetime | None = None,
    media: MediaSummary | None = None,
) -> Verdict:
    """The verdict for one freshly classified image; its embedding is stored under its content id.

    For an animation or a video, ``prediction`` and ``decision`` are its worst frame's and ``media`` lists the
    frames (see :mod:`~vitguard.pipeline.stages.reduce`).
    """
    return Verdict(
        event_id=event.event_id,
        content_id=event.content_id,
        tenant=event.tenant,
        label=decision.label,
        unsafe_score=decision.unsafe_score,
        top_class=prediction.top_class,
        scores={k: float(v) for k, v in prediction.scores.items()},
        model_name=info.name,
        model_version=info.version,
        model_untrained=info.untrained,
        embedding_id=event.content_id if collection else None,
        collection=collection,
        cluster_id=cluster_id if decision.label == "unsafe" else None,
        from_cache=False,
        image_sha256=sha256,
        timings=timings,
        created_at=event.created_at,
        processed_at=processed_at or utc_now(),
        replay_id=event.replay_id,
        metadata=dict(event.metadata),
        media=media,
        surface=event.surface,
        **decided_by(decision),
    )


def decided_by(decision: Decision) -> dict[str, Any]:
    """The verdict fields that say how the policy decided (categories, action, policy and version)."""
    return {"categories": dict(decision.categories), "action": decision.action or None,
            "policy": decision.policy, "policy_version": decision.policy_version}


@dataclass(frozen=True)
class CachedVerdict:
    """A verdict cache entry: the verdict; for a multi-frame item, every classified frame's hash and the
    sampling it was read with (:attr:`~vitguard.media.sampling.FrameLimits.sampling_key`; "" when written
    before entries said: the fleet's)."""

    verdict: Verdict
    frames: FrameHashes = ()
    sampled_with: str = ""

    def fits(self, sampling_key: str, fleet_key: str) -> bool:
        """Whether it answers an event sampled by ``sampling_key`` (a still image's answers any)."""
        return not self.frames or (self.sampled_with or fleet_key) == sampling_key


def encode_cached_verdict(verdict: Verdict, frames: FrameHashes = (), sampled_with: str = "") -> str:
    """A verdict cache entry: the verdict's JSON; for a multi-frame item, with every classified frame's hash too
    (so that a re-upload is matched against the banks on all its frames, not the verdict's one hash) and the
    sampling its frames were read with (an event whose policy samples otherwise is not answered from it)."""
    if not frames:
        return verdict.model_dump_json()
    return json.dumps({"verdict": verdict.model_dump(mode="json"), "sampled_with": sampled_with,
                       "frames": [[i, h.hex if h else None, h.quality if h else None] for i, h in frames]})


def parse_cached_verdict(cached_json: str) -> CachedVerdict | None:
    """A verdict cache entry (see :func:`encode_cached_verdict`), or None when it is unusable (written by an older
    contract, or not an entry at all)."""
    try:
        return CachedVerdict(Verdict.model_validate_json(cached_json))
    except ValidationError:
        pass
    try:
        entry = json.loads(cached_json)
        verdict = Verdict.model_validate(entry["verdict"])
        frames = tuple((int(i), PdqHash(str(h), int(q)) if h is not None else None) for i, h, q in entry["frames"])
        sampled_with = str(entry.get("sampled_with") or "")
    except (ValueError, TypeError, KeyError, AttributeError, ValidationError, RecursionError):
        return None
    return CachedVerdict(verdict, frames, sampled_with)


def verdict_from_cache(cached: Verdict, event: ImageEvent, sha256: str, timings: Timings,
                       policy: CompiledPolicy | None = None) -> Verdict:
    """This event's verdict copied from a cached one (same image bytes).

    The scores, model and cluster come from the cache; identity, metadata and times from the event.
    ``embedding_id`` and ``collection`` are set once the index stage has stored a copy of the original's row
    under this content id (:func:`~vitguard.pipeline.stages.index.cache_hit_copies`). The model's scores are
    judged again under ``policy`` (this event's): the image may have been judged for a tenant with other rules.
    A label a hash bank decided is kept.
    """
    decision: dict[str, Any] = {}
    if policy is not None and cached.label_source == "model":
        d = policy.decide(cached.scores)
        decision = {"label": d.label, "unsafe_score": d.unsafe_score, **decided_by(d),
                    "cluster_id": cached.cluster_id if d.label == "unsafe" else None}
    return cached.model_copy(
        update={
            **decision,
            "surface": event.surface,
            "event_id": event.event_id,
            "content_id": event.content_id,
            "tenant": event.tenant,
            "embedding_id": None,
            "collection": None,
            "from_cache": True,
            "image_sha256": sha256,
            "timings": timings,
            "created_at": event.created_at,
            "processed_at": utc_now(),
            "replay_id": event.replay_id,
            "metadata": dict(event.metadata),
        }
    )


class _MatchLike(Protocol):
    @property
    def content_id(self) -> str: ...
    @property
    def similarity(self) -> float: ...
    @property
    def cluster_id(self) -> str | None: ...


Severity = Literal["info", "warning", "critical"]


def alert_severity(state: WaveState, wave: WaveRule) -> Severity:
    """critical in a wave; warning once a cluster is half-way to a wave; info for a lone near-duplicate."""
    if state.is_wave:
        return "critical"
    if 2 * state.count >= wave.threshold:
        return "warning"
    return "info"


def build_alert(
    event: ImageEvent,
    *,
    cluster_id: str,
    matches: Sequence[_MatchLike],
    state: WaveState,
    policy: PolicySettings,
    model_name: str,
    wave: WaveRule,
    policy_name: str | None = None,
) -> NearDuplicateAlert:
    """The alert for an unsafe image that landed on a known cluster (most similar matches first), judged by
    ``wave`` (the wave rule of the item's policy, or the fleet's); ``policy`` gives how many matches to list."""
    ordered = sorted(matches, key=lambda m: -m.similarity)[: policy.max_matches]
    severity = alert_severity(state, wave)
    return NearDuplicateAlert(
        content_id=event.content_id,
        event_id=event.event_id,
        tenant=event.tenant,
        cluster_id=cluster_id,
        matches=[
            Match(
                content_id=m.content_id,
                similarity=max(-1.0, min(1.0, float(m.similarity))),
                cluster_id=m.cluster_id or None,
            )
            for m in ordered
        ],
        wave_count=max(1, state.count),
        wave_window_s=wave.window_s,
        severity=severity,
        model_name=model_name,
        policy=policy_name,
    )
