"""The back half of a group, after its forward pass: index -> alert -> emit -> remember.

Order of side effects, and why: the Milvus upsert (idempotent by content id) first, so a verdict never points
at an embedding that is not stored; then publish, every output acknowledged; then Redis (redelivery guard and
verdict cache), so an event is only remembered once its verdict is durable; only then does each event's
result go back to the runner, which lets the agent commit it. /classify requests in the group are answered
from their prediction alone, with no side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from vitguard import metrics
from vitguard.banks.matcher import BankMatcher
from vitguard.banks.signal import PdqHash
from vitguard.errors import InputError
from vitguard.model.types import ModelInfo
from vitguard.pipeline.alert import Candidate, alert_batch
from vitguard.pipeline.batcher import Group, Work
from vitguard.pipeline.core import answer_key, build_verdict, dead_letter, encode_cached_verdict
from vitguard.pipeline.emit import Answer, Emitter
from vitguard.pipeline.failure import MilvusPolicy, RedisPolicy
from vitguard.pipeline.index import index_batch
from vitguard.pipeline.match import ItemHashes, apply_matches, bank_alert, match_items, skips_clustering
from vitguard.pipeline.results import (
    Answered,
    CacheHit,
    DeadLettered,
    Decoded,
    DecodedFrames,
    FrameHashes,
    ItemResult,
    Predicted,
    Ready,
    Skipped,
    StageTimes,
)
from vitguard.pipeline.types import RawMessage
from vitguard.schemas.events import BankMatch, ImageEvent, Timings, Verdict, utc_now
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import DedupStore, EmbeddingIndex, SearchHit, WaveCounter

__all__ = ["Completer", "Outcome", "event_of", "raw_of", "timings"]

Outcome = ItemResult | Verdict | InputError
"""What a work entry ends as: an event's result, or a /classify request's verdict or error."""


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


class Completer:
    """Runs the back half of groups; holds no state of its own beyond the model's collection name."""

    def __init__(
        self,
        *,
        info: ModelInfo,
        index: EmbeddingIndex,
        dedup: DedupStore,
        waves: WaveCounter,
        policy: PolicySettings,
        redis: RedisPolicy,
        milvus: MilvusPolicy,
        emitter: Emitter,
        cache_key: str,
        clock: Callable[[], float],
        matcher: BankMatcher | None = None,
    ) -> None:
        self.info = info
        self.index = index
        self.dedup = dedup
        self.waves = waves
        self.policy = policy
        self.redis = redis
        self.milvus = milvus
        self.emitter = emitter
        self.cache_key = cache_key
        self._clock = clock
        self.matcher = matcher
        """Hash banks (the match stage); None: no bank matching. The worker's bank follower keeps it current."""
        self.collection: str | None = None

    async def ensure_collection(self) -> str:
        """Create the model's collection (holding while Milvus is down)."""
        if self.collection is None:
            self.collection = await self.milvus.call(
                "ensure_collection", lambda: self.index.ensure_collection(self.info))
        return self.collection

    async def check_collection(self, timeout_s: float) -> None:
        """Create or check the model's collection once, without holding (see
        :meth:`~vitguard.pipeline.failure.MilvusPolicy.once`)."""
        if self.collection is None:
            self.collection = await self.milvus.once(
                "ensure_collection", lambda: self.index.ensure_collection(self.info), timeout_s=timeout_s)

    async def complete(self, group: Group) -> list[tuple[Work, Outcome]]:
        """Every entry of ``group`` with what it ended as (acknowledged, for stream events)."""
        now_s = self._clock()
        hashes = await _resolve_hashes(group)
        with _timed(group.stage_ms, "bank_match"):  # searching banks in a thread: a big one must not hold the loop
            searching = self.matcher is not None and len(self.matcher.snapshot) > 0
            banks = await asyncio.to_thread(self._match, group, hashes) if searching else self._match(group, hashes)
        out: list[tuple[Work, Outcome]] = [
            (w, _with_banks(banks, i, self._request_outcome(w, group.predicted.get(i))))
            for i, w in enumerate(group.work) if w.request
        ]
        stream = [(i, w) for i, w in enumerate(group.work) if not w.request]
        if not stream:
            return out
        predicted = [(i, p) for i, p in group.predicted.items()  # negative-bank matches are not clustered
                     if not group.work[i].request and isinstance(p, Predicted)
                     and not skips_clustering(banks.get(i, (None, []))[1])]
        indexed: dict[int, tuple[str | None, Sequence[Any], bool]] = {}
        if predicted:
            collection = await self.ensure_collection()
            done = await index_batch(
                [p for _, p in predicted], index=self.index, collection=collection, milvus=self.milvus,
                policy=self.policy, model_version=self.info.version, now_ms=int(now_s * 1000),
                timed=lambda stage: _timed(group.stage_ms, stage),
            )
            for (i, _), x in zip(predicted, done, strict=True):
                indexed[i] = (x.cluster_id, x.matches, x.is_new_cluster)

        candidates: list[tuple[int, Candidate]] = []
        for i, w in stream:
            v = w.value
            if i in indexed and indexed[i][0]:
                cluster_id, matches, is_new = indexed[i]
                p = group.predicted[i]
                if cluster_id is not None and isinstance(p, Predicted):
                    candidates.append((i, Candidate(p.decoded.parsed.event, cluster_id, list(matches),
                                                    is_new or not matches)))
            elif (isinstance(v, CacheHit) and v.verdict.label == "unsafe" and v.verdict.cluster_id
                  and not skips_clustering(banks.get(i, (None, []))[1])):  # overturned since: not clustered
                hit = SearchHit(v.cached_from, 1.0, v.verdict.cluster_id)
                candidates.append((i, Candidate(v.parsed.event, v.verdict.cluster_id, [hit], False)))
        with _timed(group.stage_ms, "waves"):
            alert_results = await alert_batch(
                [c for _, c in candidates], waves=self.waves, redis=self.redis, policy=self.policy,
                model_name=self.info.name, now_s=now_s,
            )
        alert_of = {i: r for (i, _), r in zip(candidates, alert_results, strict=True)}
        answers = [self._answer(w, group.predicted.get(i), indexed.get(i, (None, (), False))[0]) for i, w in stream]
        # the verdict cache keeps the model's verdict and the PDQ hash, not the banks' say: a cache hit is
        # matched against the banks as they are when it comes (an entry added since applies, a removed one not)
        cacheable = {a.image_sha256: encode_cached_verdict(apply_matches(a, banks[i][0], []), _frame_hashes(w))
                     for (i, w), (_, _, a) in zip(stream, answers, strict=True)
                     if isinstance(a, Verdict) and not a.from_cache and a.image_sha256 and i in banks}
        answers = [(raw, event, _with_banks(banks, i, a))
                   for (i, _), (raw, event, a) in zip(stream, answers, strict=True)]
        alerts: list[Any] = [a for a, _ in alert_results if a is not None]
        alerts += _bank_alerts(banks, stream, answers)
        with _timed(group.stage_ms, "publish"):
            final = await self.emitter.emit(answers, alerts)
        return out + await self._remember(group, stream, final, alert_of, cacheable)

    async def complete_failed(self, group: Group, exc: BaseException) -> list[tuple[Work, Outcome]]:
        """After a bug in :meth:`complete`: every stream event of the group gets an ``internal_error``
        dead letter (invalid messages keep theirs), requests get the error."""
        why = f"batch failed: {type(exc).__name__}: {exc}"
        out: list[tuple[Work, Outcome]] = [(w, InputError("internal_error", why)) for w in group.work if w.request]
        stream = [(i, w) for i, w in enumerate(group.work) if not w.request]
        answers: list[tuple[RawMessage, ImageEvent | None, Answer]] = []
        for _, w in stream:
            raw, event = raw_of(w.value), event_of(w.value)
            letter = w.value.dead_letter if isinstance(w.value, DeadLettered) else dead_letter(
                raw, "internal_error", why, event)
            answers.append((raw, event, letter))
        if not stream:
            return out
        final = await self.emitter.emit(answers, [])
        return out + await self._remember(group, stream, final, {}, {})

    def _match(self, group: Group, hashes: Mapping[int, PdqHash | None]) -> dict[int, tuple[PdqHash | None,
                                                                                        list[BankMatch]]]:
        """The match stage: every predicted entry's PDQ hashes (one per frame of a multi-frame item) against
        the banks, in one call. ``hashes``: the still images' hashes (:func:`_resolve_hashes`)."""
        entries = [(i, _item_hashes(p.decoded, hashes.get(i))) for i, p in group.predicted.items()
                   if isinstance(p, Predicted)]
        entries += [(i, cached) for i, w in enumerate(group.work)
                    if isinstance(w.value, CacheHit) and (cached := _cached_hashes(w.value))]
        if not entries:
            return {}
        found = match_items(self.matcher, [h for _, h in entries],
                            read_only=[group.work[i].request for i, _ in entries])  # requests change nothing
        return {i: f for (i, _), f in zip(entries, found, strict=True)}

    def _answer(
        self, w: Work, predicted: Predicted | DeadLettered | None, cluster_id: str | None
    ) -> tuple[RawMessage, ImageEvent | None, Answer]:
        v = w.value
        if isinstance(v, DeadLettered):
            return v.raw, None, v.dead_letter
        if isinstance(v, CacheHit):
            return v.parsed.raw, v.parsed.event, v.verdict
        if not isinstance(v, Decoded | DecodedFrames) or predicted is None:  # unreachable: never drop an event
            raw, event = raw_of(v), event_of(v)
            return raw, event, dead_letter(raw, "internal_error", "event left unanswered", event)
        if isinstance(predicted, DeadLettered):
            return predicted.raw, v.parsed.event, predicted.dead_letter
        verdict = build_verdict(
            v.parsed.event, info=self.info, prediction=predicted.prediction, decision=predicted.decision,
            sha256=v.sha256, timings=timings(predicted.times), collection=self.collection, cluster_id=cluster_id,
            media=predicted.media,
        )
        return v.parsed.raw, v.parsed.event, verdict

    def _request_outcome(self, w: Work, predicted: Predicted | DeadLettered | None) -> Outcome:
        v = w.value
        if not isinstance(v, Decoded | DecodedFrames) or not isinstance(predicted, Predicted):
            letter = predicted.dead_letter if isinstance(predicted, DeadLettered) else None
            return InputError(letter.reason if letter else "internal_error",
                              letter.message if letter else "left unanswered")
        p, event = predicted.prediction, v.parsed.event
        return Verdict(
            event_id=event.event_id, content_id=event.content_id, tenant=event.tenant,
            label=predicted.decision.label, unsafe_score=predicted.decision.unsafe_score, top_class=p.top_class,
            scores={k: float(s) for k, s in p.scores.items()}, model_name=self.info.name,
            model_version=self.info.version, model_untrained=self.info.untrained, image_sha256=v.sha256,
            timings=timings(predicted.times), processed_at=utc_now(), media=predicted.media,
        )

    async def _remember(
        self,
        group: Group,
        stream: list[tuple[int, Work]],
        final: Sequence[Answer],
        alert_of: Mapping[int, tuple[Any, bool]],
        cacheable: Mapping[str, str],
    ) -> list[tuple[Work, Outcome]]:
        """After the broker acknowledged everything: Redis learns (``cacheable``: image sha256 -> the model's
        verdict, for the verdict cache); each event's result; metrics."""
        verdicts = [a for a in final if isinstance(a, Verdict)]
        answered = [answer_key(event) for (_, w), a in zip(stream, final, strict=True)
                    if isinstance(a, Verdict) and (event := event_of(w.value)) is not None]
        if verdicts:
            with _timed(group.stage_ms, "redis"):
                if answered:
                    await self._redis_call("mark_events", lambda: self.dedup.mark_events(answered))
                published = {v.image_sha256 for v in verdicts if not v.from_cache and v.image_sha256}
                fresh = {sha: text for sha, text in cacheable.items() if sha in published}
                if fresh:
                    await self._redis_call("cache_verdicts", lambda: self.dedup.cache_verdicts(fresh, self.cache_key))
        now = time.time()
        out: list[tuple[Work, Outcome]] = []
        for (i, w), answer in zip(stream, final, strict=True):
            raw = raw_of(w.value)
            result: ItemResult
            if isinstance(answer, Verdict):
                alert, suppressed = alert_of.get(i, (None, False))
                result = Answered(raw, answer, alert, suppressed)
                metrics.VERDICTS.labels(answer.label, "cache" if answer.from_cache else "model").inc()
                if answer.from_cache:
                    metrics.CACHE_HITS.inc()
                if answer.created_at is not None:
                    metrics.EVENT_LATENCY.observe(max(0.0, now - answer.created_at.timestamp()))
                if alert is not None:
                    metrics.ALERTS.labels(alert.severity).inc()
                if suppressed:
                    metrics.ALERTS_SUPPRESSED.inc()
            else:
                result = DeadLettered(raw, answer)
                metrics.DEAD_LETTERS.labels(answer.reason).inc()
            out.append((w, result))
        metrics.LAST_BATCH_TIMESTAMP.set(now)
        for stage, ms in group.stage_ms.items():
            metrics.STAGE_DURATION.labels(stage).observe(ms / 1000)
        return out

    async def _redis_call(self, op: str, call: Callable[[], Awaitable[None]]) -> None:
        await self.redis.call(op, call, None)


_Banks = dict[int, tuple[PdqHash | None, list[BankMatch]]]


def _cached_hashes(hit: CacheHit) -> ItemHashes:
    """What a cache hit is matched on: every classified frame's hash for a multi-frame item, else its one."""
    if hit.frame_hashes:
        return list(hit.frame_hashes)
    pdq = hit.verdict.pdq_hash
    return [(None, PdqHash(pdq, hit.verdict.pdq_quality or 0))] if pdq is not None else []


def _frame_hashes(w: Work) -> FrameHashes:
    """What the verdict cache keeps of a multi-frame item's hashes (every classified frame's)."""
    v = w.value
    return _hashes_of_frames(v) if isinstance(v, DecodedFrames) else ()


def _hashes_of_frames(item: DecodedFrames) -> FrameHashes:
    return tuple((ref.index, ref.pdq) for ref in item.frames.frames)


def _item_hashes(decoded: Decoded | DecodedFrames, still: PdqHash | None) -> ItemHashes:
    if isinstance(decoded, DecodedFrames):
        return list(_hashes_of_frames(decoded))
    return [(None, still)]


async def _resolve_hashes(group: Group) -> dict[int, PdqHash | None]:
    """The PDQ hash of every predicted still image of ``group``, once its pool job is done (it ran while the
    batch was in inference, so by now it has usually finished)."""
    stills = [(i, p.decoded) for i, p in group.predicted.items()
              if isinstance(p, Predicted) and isinstance(p.decoded, Decoded)]
    found = await asyncio.gather(*(d.hash() for _, d in stills))
    return {i: h for (i, _), h in zip(stills, found, strict=True)}


def _with_banks(banks: _Banks, i: int, answer: Any) -> Any:
    """A verdict with its PDQ hash and bank matches applied (anything else unchanged)."""
    if isinstance(answer, Verdict) and i in banks:
        pdq, matches = banks[i]
        return apply_matches(answer, pdq, matches)
    return answer


def _bank_alerts(banks: _Banks, stream: list[tuple[int, Work]], answers: Sequence[tuple[Any, Any, Any]]) -> list[Any]:
    """The bank-match alerts of a group's published verdicts (the alerts topic, next to near-duplicates)."""
    out = []
    for (i, _), (_, _, answer) in zip(stream, answers, strict=True):
        if isinstance(answer, Verdict) and i in banks:
            alert = bank_alert(answer, *banks[i])
            if alert is not None:
                metrics.ALERTS.labels(alert.severity).inc()
                out.append(alert)
    return out


@contextlib.contextmanager
def _timed(stage_ms: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stage_ms[stage] = stage_ms.get(stage, 0.0) + (time.perf_counter() - started) * 1000
