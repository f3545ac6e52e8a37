"""One entry of a group on its way through the back half, and the pure steps on it: what it is matched on,
what it counts for the waves, which alerts it raises, what it ends as (:mod:`~vitguard.pipeline.runtime.completion`
runs the stages in order over these records)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vitguard import metrics
from vitguard.banks.signal import PdqHash
from vitguard.pipeline.results import (
    Answered,
    CacheHit,
    DeadLettered,
    Decoded,
    DecodedFrames,
    FrameHashes,
    Indexed,
    ItemResult,
    Predicted,
    Ready,
    Skipped,
    StageTimes,
)
from vitguard.pipeline.runtime.batcher import Work
from vitguard.pipeline.stages.alert import Candidate
from vitguard.pipeline.stages.emit import Answer
from vitguard.pipeline.stages.match import ItemHashes, apply_matches, bank_alert, skips_clustering
from vitguard.pipeline.types import RawMessage
from vitguard.schemas.events import BankMatch, ImageEvent, NearDuplicateAlert, Timings, Verdict
from vitguard.stores.interfaces import SearchHit

__all__ = [
    "Finishing",
    "alerts_of",
    "candidate",
    "event_of",
    "frame_hashes",
    "sampled_with",
    "hashes_of",
    "policy_name_of",
    "raw_of",
    "resolve_hashes",
    "result",
    "timings",
    "with_banks",
]


def timings(t: StageTimes) -> Timings:
    return Timings(fetch_ms=t.fetch_ms, decode_ms=t.decode_ms, infer_ms=t.infer_ms, queue_ms=t.queue_ms,
                   wait_ms=t.wait_ms)


def raw_of(v: Ready) -> RawMessage:
    if isinstance(v, DeadLettered | Skipped):
        return v.raw
    return v.parsed.raw


def event_of(v: Ready) -> ImageEvent | None:
    if isinstance(v, CacheHit | Decoded | DecodedFrames):
        return v.parsed.event
    return None


@dataclass(frozen=True)
class Finishing:
    """One entry of a group on its way through the back half (match -> index -> alert -> emit -> remember):
    each step returns a copy with what it found, so no step reads another's index-keyed side tables."""

    work: Work
    predicted: Predicted | DeadLettered | None
    """The forward pass's answer (None for what needed no inference: a cache hit, a dead letter)."""
    pdq: PdqHash | None = None
    matches: tuple[BankMatch, ...] = ()
    matched: bool = False
    """The banks were asked about it (a predicted item or a cache hit with a hash)."""
    indexed: Indexed | None = None
    stored: bool = False
    """A cache hit that the index stage stored under its own content id (a copy of its original's row)."""
    alert: NearDuplicateAlert | None = None
    alert_suppressed: bool = False
    answer: Answer | None = None
    """What the emit stage publishes for it: its verdict (banks applied) or its dead letter."""
    cached: str | None = None
    """Its verdict cache entry, written once the verdict is published."""

    @property
    def raw(self) -> RawMessage:
        return raw_of(self.work.value)

    @property
    def event(self) -> ImageEvent | None:
        return event_of(self.work.value)

    @property
    def outbound(self) -> tuple[RawMessage, ImageEvent | None, Answer]:
        """What the emit stage takes for it (after :meth:`Completer._answer` set the answer)."""
        if self.answer is None:  # a bug in the back half: never publish nothing for an event
            raise RuntimeError(f"no answer for {self.raw.topic}[{self.raw.partition}]@{self.raw.offset}")
        return self.raw, self.event, self.answer


def _cached_hashes(hit: CacheHit) -> ItemHashes:
    """What a cache hit is matched on: every classified frame's hash for a multi-frame item, else its one."""
    if hit.frame_hashes:
        return list(hit.frame_hashes)
    pdq = hit.verdict.pdq_hash
    return [(None, PdqHash(pdq, hit.verdict.pdq_quality or 0))] if pdq is not None else []


def frame_hashes(w: Work) -> FrameHashes:
    """What the verdict cache keeps of a multi-frame item's hashes (every classified frame's)."""
    v = w.value
    return _hashes_of_frames(v) if isinstance(v, DecodedFrames) else ()


def sampled_with(w: Work) -> str:
    """The sampling a multi-frame item was read with ("" for a still image)."""
    v = w.value
    return v.frames.sampled_with if isinstance(v, DecodedFrames) else ""


def _hashes_of_frames(item: DecodedFrames) -> FrameHashes:
    return tuple((ref.index, ref.pdq) for ref in item.frames.frames)


def policy_name_of(item: Finishing) -> str | None:
    """The policy that judged ``item`` (a predicted item's decision, a cache hit's re-judged verdict)."""
    p, v = item.predicted, item.work.value
    if isinstance(p, Predicted):
        return p.decision.policy
    if isinstance(v, CacheHit):
        return v.verdict.policy
    return None


def hashes_of(item: Finishing, still: PdqHash | None) -> ItemHashes | None:
    """What ``item`` is matched on (None: not matched at all): a predicted item's hashes, a cache hit's."""
    p, v = item.predicted, item.work.value
    if isinstance(p, Predicted):
        return list(_hashes_of_frames(p.decoded)) if isinstance(p.decoded, DecodedFrames) else [(None, still)]
    if isinstance(v, CacheHit):
        return _cached_hashes(v) or None
    return None


async def resolve_hashes(items: Sequence[Finishing]) -> dict[int, PdqHash | None]:
    """The PDQ hash of every predicted still image, once its pool job is done (it ran while the batch was in
    inference, so by now it has usually finished)."""
    found: dict[int, PdqHash | None] = {}
    waiting: list[tuple[int, Decoded]] = []
    for k, i in enumerate(items):
        if isinstance(i.predicted, Predicted) and isinstance(d := i.predicted.decoded, Decoded):
            fut = d.pdq_pending
            if fut is None:
                found[k] = d.pdq
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                found[k] = fut.result()  # the usual case: read as it is, no task per image
            else:
                waiting.append((k, d))
    if waiting:
        hashes = await asyncio.gather(*(d.hash() for _, d in waiting))
        found.update((k, h) for (k, _), h in zip(waiting, hashes, strict=True))
    return found


def with_banks(item: Finishing, answer: Any) -> Any:
    """A verdict with its PDQ hash and bank matches applied (anything else unchanged)."""
    if isinstance(answer, Verdict) and item.matched:
        return apply_matches(answer, item.pdq, item.matches)
    return answer


def candidate(item: Finishing) -> Candidate | None:
    """What the alert stage counts: an item the index stage put on a cluster, or an unsafe cache hit on one
    (not when a negative bank cleared it since)."""
    x, v = item.indexed, item.work.value
    if x is not None:
        if not x.cluster_id:
            return None
        matches = list(x.matches)
        return Candidate(x.predicted.decoded.parsed.event, x.cluster_id, matches,  # type: ignore[arg-type]
                         x.is_new_cluster or not matches, policy_name_of(item))
    if (isinstance(v, CacheHit) and v.verdict.label == "unsafe" and v.verdict.cluster_id
            and not skips_clustering(item.matches)):
        hit = SearchHit(v.cached_from, 1.0, v.verdict.cluster_id)
        return Candidate(v.parsed.event, v.verdict.cluster_id, [hit], False, v.verdict.policy)
    return None


def alerts_of(stream: Sequence[Finishing]) -> list[Any]:
    """The group's alerts: near-duplicate and wave alerts, then the bank-match alerts of its verdicts."""
    alerts: list[Any] = [i.alert for i in stream if i.alert is not None]
    for i in stream:
        if isinstance(i.answer, Verdict) and i.matched:
            alert = bank_alert(i.answer, i.pdq, list(i.matches))
            if alert is not None:
                metrics.ALERTS.labels(alert.severity).inc()
                alerts.append(alert)
    return alerts


def result(item: Finishing, answer: Answer, now: float) -> ItemResult:
    """What a published stream entry ends as, counted."""
    if not isinstance(answer, Verdict):
        metrics.DEAD_LETTERS.labels(answer.reason).inc()
        return DeadLettered(item.raw, answer)
    metrics.VERDICTS.labels(answer.label, "cache" if answer.from_cache else "model").inc()
    if answer.from_cache:
        metrics.CACHE_HITS.inc()
    if answer.created_at is not None:
        metrics.EVENT_LATENCY.observe(max(0.0, now - answer.created_at.timestamp()))
    if item.alert is not None:
        metrics.ALERTS.labels(item.alert.severity).inc()
    if item.alert_suppressed:
        metrics.ALERTS_SUPPRESSED.inc()
    return Answered(item.raw, answer, item.alert, item.alert_suppressed)
