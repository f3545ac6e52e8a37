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
import functools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from vitguard import metrics
from vitguard.banks.matcher import BankMatcher
from vitguard.errors import InputError
from vitguard.model.types import ModelInfo
from vitguard.pipeline.core import answer_key, build_verdict, dead_letter, decided_by, encode_cached_verdict
from vitguard.pipeline.results import (
    CacheHit,
    DeadLettered,
    Decoded,
    DecodedFrames,
    ItemResult,
    Predicted,
)
from vitguard.pipeline.runtime.batcher import Group, Work
from vitguard.pipeline.runtime.failure import MilvusPolicy, RedisPolicy
from vitguard.pipeline.runtime.finishing import (
    Finishing,
    alerts_of,
    candidate,
    event_of,
    frame_hashes,
    hashes_of,
    policy_name_of,
    raw_of,
    resolve_hashes,
    result,
    sampled_with,
    timings,
    with_banks,
)
from vitguard.pipeline.stages.alert import alert_batch
from vitguard.pipeline.stages.emit import Answer, Emitter
from vitguard.pipeline.stages.index import cache_hit_copies, index_batch
from vitguard.pipeline.stages.match import apply_matches, match_items, skips_clustering, under_policy
from vitguard.policies.live import PolicyHolder
from vitguard.schemas.events import Verdict, utc_now
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import ClusterRows, DedupStore, EmbeddingIndex, WaveCounter

__all__ = ["Completer", "Outcome", "Probed", "Staged"]

@dataclass(frozen=True)
class Probed:
    """A request's verdict and the embedding it was judged on (``POST /search`` by image); for an animation or a
    video, the embedding of the frame that decided."""

    verdict: Verdict
    embedding: NDArray[np.float32]


Outcome = ItemResult | Verdict | Probed | InputError
"""What a work entry ends as: an event's result, or a /classify request's verdict (with its embedding when
asked) or error."""


@dataclass(frozen=True)
class Staged:
    """A group between the two halves of the back half: indexed and answered, not yet published."""

    group: Group
    requests: list[tuple[Work, Outcome]]
    """The /classify requests' answers (nothing to publish)."""
    stream: list[Finishing]
    """The stream's entries, each with its answer."""


class Completer:
    """Runs the back half of groups, in two halves: :meth:`stage` (match, index, alert: the Milvus and wave
    calls) and :meth:`publish` (emit, remember). Holds no state of its own beyond the model's collection name."""

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
        policies: PolicyHolder | None = None,
        cluster_rows: ClusterRows | None = None,
    ) -> None:
        self.info = info
        self.cluster_rows = cluster_rows
        """Where the alert stage keeps each cluster's row (``GET /clusters``); None: no rows."""
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
        self.policies = policies
        """The policy document in force: what each item's policy makes of the banks it matched."""
        self.collection: str | None = None

    async def ensure_collection(self) -> str:
        """Create the model's collection (holding while Milvus is down)."""
        if self.collection is None:
            self.collection = await self.milvus.call(
                "ensure_collection", lambda: self.index.ensure_collection(self.info))
        return self.collection

    async def check_collection(self, timeout_s: float) -> None:
        """Create or check the model's collection once, without holding (see
        :meth:`~vitguard.pipeline.runtime.failure.MilvusPolicy.once`)."""
        if self.collection is None:
            self.collection = await self.milvus.once(
                "ensure_collection", lambda: self.index.ensure_collection(self.info), timeout_s=timeout_s)

    async def complete(self, group: Group) -> list[tuple[Work, Outcome]]:
        """Every entry of ``group`` with what it ended as (acknowledged, for stream events): :meth:`stage`, then
        :meth:`publish` (the runner runs the two halves of consecutive groups at the same time)."""
        return await self.publish(await self.stage(group))

    async def stage(self, group: Group) -> Staged:
        """match -> index -> alert -> answer: each step taking and returning one :class:`Finishing` record per
        entry. The /classify requests are answered after the match (no side effects)."""
        now_s = self._clock()
        items = await self._match(group, [Finishing(w, group.predicted.get(i)) for i, w in enumerate(group.work)])
        requests = [(i.work, self._request_answer(i)) for i in items if i.work.request]
        stream = [i for i in items if not i.work.request]
        if stream:
            stream = await self._index(group, stream, now_s)
            stream = await self._alert(group, stream, now_s)
            stream = [self._answer(i) for i in stream]
        return Staged(group, requests, stream)

    def stage_failed(self, group: Group, exc: BaseException) -> Staged:
        """After a bug in :meth:`stage`: every stream event of the group gets an ``internal_error`` dead letter
        (invalid messages keep theirs), requests get the error."""
        why = f"batch failed: {type(exc).__name__}: {exc}"
        requests: list[tuple[Work, Outcome]] = [(w, InputError("internal_error", why)) for w in group.work
                                                if w.request]
        stream = []
        for w in group.work:
            if w.request:
                continue
            raw, event = raw_of(w.value), event_of(w.value)
            letter = w.value.dead_letter if isinstance(w.value, DeadLettered) else dead_letter(
                raw, "internal_error", why, event)
            stream.append(Finishing(w, None, answer=letter))
        return Staged(group, requests, stream)

    async def complete_failed(self, group: Group, exc: BaseException) -> list[tuple[Work, Outcome]]:
        """:meth:`stage_failed`, published."""
        return await self.publish(self.stage_failed(group, exc))

    async def publish(self, staged: Staged) -> list[tuple[Work, Outcome]]:
        """emit (every output acknowledged) -> remember (Redis): each entry with what it ended as."""
        if not staged.stream:
            return staged.requests
        stream = staged.stream
        with _timed(staged.group.stage_ms, "publish"):
            final = await self.emitter.emit([i.outbound for i in stream], alerts_of(stream))
        return staged.requests + await self._remember(staged.group, stream, final)

    async def _match(self, group: Group, items: list[Finishing]) -> list[Finishing]:
        """The match stage: every predicted entry's PDQ hashes (one per frame of a multi-frame item) and every
        cache hit's against the banks, in one call (in a thread: a big bank must not hold the loop).
        /classify requests read the flood guard and never count towards it."""
        hashes = await resolve_hashes(items)
        wanted = [(k, h) for k, i in enumerate(items) if (h := hashes_of(i, hashes.get(k))) is not None]
        if not wanted:
            return items
        with _timed(group.stage_ms, "bank_match"):
            read_only = [items[k].work.request for k, _ in wanted]
            call = functools.partial(match_items, self.matcher, [h for _, h in wanted], read_only)
            searching = self.matcher is not None and len(self.matcher.snapshot) > 0
            found = await asyncio.to_thread(call) if searching else call()
        book = self.policies.book if self.policies is not None else None
        out = list(items)
        for (k, _), (pdq, matches) in zip(wanted, found, strict=True):
            policy = book.named(policy_name_of(items[k])) if book is not None and matches else None
            if policy is not None:
                matches = under_policy(matches, policy.banks)
            out[k] = replace(out[k], pdq=pdq, matches=tuple(matches), matched=True)
        return out

    async def _index(self, group: Group, items: list[Finishing], now_s: float) -> list[Finishing]:
        """The index stage for the predicted items (negative-bank matches are not clustered) and the cache
        hits (stored as copies of their original's row)."""
        chosen = [k for k, i in enumerate(items)
                  if isinstance(i.predicted, Predicted) and not skips_clustering(i.matches)]
        hits = [k for k, i in enumerate(items) if isinstance(i.work.value, CacheHit)]
        if not chosen and not hits:
            return items
        collection = await self.ensure_collection()
        timed = functools.partial(_timed, group.stage_ms)
        copies, stored = await cache_hit_copies(
            [items[k].work.value for k in hits],  # type: ignore[misc]
            index=self.index, collection=collection, milvus=self.milvus, now_ms=int(now_s * 1000), timed=timed)
        done = await index_batch(
            [items[k].predicted for k in chosen],  # type: ignore[misc]
            index=self.index, collection=collection, milvus=self.milvus, policy=self.policy,
            model_version=self.info.version, now_ms=int(now_s * 1000), timed=timed, copies=copies,
        )
        out = list(items)
        for k, indexed in zip(chosen, done, strict=True):
            out[k] = replace(out[k], indexed=indexed)
        for k in hits:
            event = out[k].event
            out[k] = replace(out[k], stored=event is not None and event.content_id in stored)
        return out

    async def _alert(self, group: Group, items: list[Finishing], now_s: float) -> list[Finishing]:
        """The alert stage: wave counts and near-duplicate alerts of the items with a cluster."""
        candidates = [(k, c) for k, i in enumerate(items) if (c := candidate(i)) is not None]
        with _timed(group.stage_ms, "waves"):
            results = await alert_batch(
                [c for _, c in candidates], waves=self.waves, redis=self.redis, policy=self.policy,
                model_name=self.info.name, now_s=now_s, book=self.policies.book if self.policies else None,
                rows=self.cluster_rows,
            )
        out = list(items)
        for (k, _), (alert, suppressed) in zip(candidates, results, strict=True):
            out[k] = replace(out[k], alert=alert, alert_suppressed=suppressed)
        return out

    def _answer(self, item: Finishing) -> Finishing:
        """The emit stage's input for one stream entry: its verdict (banks applied) or dead letter, and the
        verdict cache entry to write once it is published (the model's verdict and the PDQ hash, not the
        banks' say: a cache hit is matched against the banks as they are when it comes)."""
        v, predicted = item.work.value, item.predicted
        answer: Answer
        if isinstance(v, DeadLettered):
            answer = v.dead_letter
        elif isinstance(v, CacheHit):
            answer = v.verdict.model_copy(update={"embedding_id": v.verdict.content_id,
                                                  "collection": self.collection}) if item.stored else v.verdict
        elif not isinstance(v, Decoded | DecodedFrames) or predicted is None:  # unreachable: never drop an event
            answer = dead_letter(item.raw, "internal_error", "event left unanswered", item.event)
        elif isinstance(predicted, DeadLettered):
            answer = predicted.dead_letter
        else:
            cluster_id = item.indexed.cluster_id if item.indexed is not None else None
            answer = build_verdict(
                v.parsed.event, info=self.info, prediction=predicted.prediction, decision=predicted.decision,
                sha256=v.sha256, timings=timings(predicted.times), collection=self.collection,
                cluster_id=cluster_id, media=predicted.media,
            )
        cached = None
        if isinstance(answer, Verdict) and not answer.from_cache and answer.image_sha256 and item.matched:
            cached = encode_cached_verdict(apply_matches(answer, item.pdq, []), frame_hashes(item.work),
                                           sampled_with(item.work))
        return replace(item, answer=with_banks(item, answer), cached=cached)

    def _request_answer(self, item: Finishing) -> Outcome:
        """A request's verdict with its bank matches, and its embedding when the request asked for it."""
        answer: Outcome = with_banks(item, self._request_outcome(item.work, item.predicted))
        if item.work.probe and isinstance(answer, Verdict) and isinstance(item.predicted, Predicted):
            return Probed(answer, item.predicted.prediction.embedding)
        return answer

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
            timings=timings(predicted.times), processed_at=utc_now(), media=predicted.media, surface=event.surface,
            **decided_by(predicted.decision),
        )

    async def _remember(
        self, group: Group, stream: list[Finishing], final: Sequence[Answer]
    ) -> list[tuple[Work, Outcome]]:
        """After the broker acknowledged everything: Redis learns (the redelivery guard, the verdict cache);
        each event's result; metrics."""
        if any(isinstance(a, Verdict) for a in final):
            with _timed(group.stage_ms, "redis"):
                await self._learn(stream, final)
        now = time.time()
        out: list[tuple[Work, Outcome]] = [(i.work, result(i, answer, now))
                                           for i, answer in zip(stream, final, strict=True)]
        metrics.LAST_BATCH_TIMESTAMP.set(now)
        for stage, ms in group.stage_ms.items():
            metrics.STAGE_DURATION.labels(stage).observe(ms / 1000)
        return out

    async def _learn(self, stream: Sequence[Finishing], final: Sequence[Answer]) -> None:
        """Redis learns what was published: the redelivery guard marks the answered events, the verdict cache
        takes the fresh verdicts (the model's, with their hashes)."""
        answered = [answer_key(i.event) for i, a in zip(stream, final, strict=True)
                    if isinstance(a, Verdict) and i.event is not None]
        published = {a.image_sha256 for a in final if isinstance(a, Verdict) and not a.from_cache and a.image_sha256}
        fresh = {sha: i.cached for i in stream
                 if i.cached is not None and isinstance(i.answer, Verdict)
                 and (sha := i.answer.image_sha256) is not None and sha in published}
        if answered or fresh:  # one round trip for both
            await self._redis_call("remember", lambda: self.dedup.remember(answered, fresh, self.cache_key))

    async def _redis_call(self, op: str, call: Callable[[], Awaitable[None]]) -> None:
        await self.redis.call(op, call, None)


@contextlib.contextmanager
def _timed(stage_ms: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stage_ms[stage] = stage_ms.get(stage, 0.0) + (time.perf_counter() - started) * 1000
