"""The runner: composes the stages, and owns ordering, concurrency, batching and the failure policy.

```
submit(raw) ─▶ front half, one task per event, concurrently:
                 ingest (parse, redelivery guard) ─▶ fetch (+hash, verdict cache) ─▶ decode
                                                   │ dead letter / cache hit / skipped
               ready queue ◀────────────────────────┘
batch loop:    when the model is idle, take what is ready now (up to max_size images; /classify requests
               first, at most half a batch) ─▶ infer: ONE forward pass ─▶ completion queue (depth 1)
completion:    index (near-duplicates, clusters, Milvus upsert) ─▶ alert (waves) ─▶ emit (fitted, acked)
               ─▶ remember (Redis) ─▶ each event's future resolves with its ItemResult
```

Batching is adaptive, like Triton's dynamic batcher: while a batch is in inference the next one fills up to
``max_size``; when the model is idle a batch starts with whatever is ready, without waiting
(``max_wait_s`` > 0 lets an idle model linger that long at most for images still being fetched or decoded:
an upper bound, never a floor). A slow image holds nobody: it joins a batch when it is decoded, or ends as
its own ``fetch_timeout`` dead letter; its neighbours are answered without it.

Order of side effects per group: Milvus upsert (idempotent by content id), then publish (every output
acknowledged), then Redis (guard and cache), then the event's future resolves; only then may the caller
mark its offset committable. The caller (the Faust agent) commits offsets in order per partition, so an
unanswered event holds back the commit of later ones on its partition, never their verdicts.

Failures: an input problem is that event's dead letter; Redis degrades; Milvus holds; a
:class:`~vitguard.errors.FatalError` (or a bug in the runner's own loops) fails every pending event's future
and calls ``on_fatal``: the worker exits non-zero rather than run on in a broken state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vitguard import metrics
from vitguard.errors import FatalError, InputError
from vitguard.health import HealthState
from vitguard.model.types import Classifier
from vitguard.pipeline.alert import Candidate, alert_batch
from vitguard.pipeline.core import build_verdict, cache_key, dead_letter, parse_cached_verdict, verdict_from_cache
from vitguard.pipeline.decode import decode_image
from vitguard.pipeline.emit import Answer, Emitter
from vitguard.pipeline.failure import Backoff, MilvusPolicy, PublishPolicy, RedisPolicy
from vitguard.pipeline.fetch import fetch_image
from vitguard.pipeline.index import index_batch
from vitguard.pipeline.infer import infer_batch
from vitguard.pipeline.ingest import parse
from vitguard.pipeline.results import (
    Answered,
    CacheHit,
    DeadLettered,
    Decoded,
    Fetched,
    ItemResult,
    Parsed,
    Predicted,
    Ready,
    Skipped,
    StageTimes,
)
from vitguard.pipeline.types import BatchOutcome, OutputTopics, RawMessage, Sink
from vitguard.policy import resolve_unsafe_labels
from vitguard.schemas.events import ImageEvent, Timings, Verdict, utc_now
from vitguard.settings import BatchSettings, MilvusSettings, PolicySettings
from vitguard.stores.interfaces import DedupStore, EmbeddingIndex, SearchHit, WaveCounter

if TYPE_CHECKING:
    from vitguard.fetch import ImageFetcher
    from vitguard.settings import Settings

__all__ = ["RECENT_EVENT_IDS", "Runner", "build_runner"]

_log = logging.getLogger(__name__)

RECENT_EVENT_IDS = 100_000
"""Event ids this worker answered most recently, remembered in memory: a second redelivery guard that
works while Redis is down."""

_CLASSIFY_TOPIC = "(classify)"


@dataclass
class _Work:
    """One entry of the ready queue: what the front half produced, and who waits for the answer."""

    value: Ready
    future: asyncio.Future[Any]
    request: bool = False
    """A synchronous /classify request: no index, no alerts, no publish; the future gets the verdict."""


@dataclass
class _Group:
    """What the batch loop hands to the completion loop."""

    work: list[_Work]
    predicted: dict[int, Predicted | DeadLettered] = field(default_factory=dict)
    """Index in ``work`` -> the forward pass's answer, for the decoded entries."""
    stage_ms: dict[str, float] = field(default_factory=dict)


def _times(t: StageTimes) -> Timings:
    return Timings(fetch_ms=t.fetch_ms, decode_ms=t.decode_ms, infer_ms=t.infer_ms, queue_ms=t.queue_ms,
                   wait_ms=t.wait_ms)


class Runner:
    """Moderates events submitted one by one, in adaptive micro-batches, and publishes through a sink.

    Args:
        classifier: the loaded model (its ``info`` names verdicts, the cache and the Milvus collection).
        fetcher: gets image bytes for ``image_ref``.
        index: the embedding store (Milvus in production).
        dedup: redelivery guard and verdict cache (Redis in production).
        waves: sliding-window wave counter (Redis in production).
        sink: per-message delivery results.
        topics: output topics.
        policy: unsafe labels and threshold, near-duplicate threshold, wave rules.
        batch: ``max_size``, ``max_wait_s`` (linger bound) and ``decode_workers``.
        milvus: backoff and call deadline of the store calls.
        limits: largest message per output topic in bytes (read from the broker at start-up).
        health: where the runner and its policies record their condition (shared with the web views).
        fetch_total_timeout_s: longest any one image may take to fetch.
        publish_timeout_s: longest one round of acknowledgements may take.
        max_in_flight: events submitted and not yet answered, at most (``submit`` waits past it).
        on_fatal: called once with the error when the runner cannot go on.
        on_hold: called with True when Milvus starts holding batches and False when it recovers.
        clock: wall clock in seconds (wave windows); tests pass a fake one.

    Raises:
        ConfigError: the policy's unsafe labels match none of the model's classes.
    """

    def __init__(
        self,
        *,
        classifier: Classifier,
        fetcher: ImageFetcher,
        index: EmbeddingIndex,
        dedup: DedupStore,
        waves: WaveCounter,
        sink: Sink,
        policy: PolicySettings,
        batch: BatchSettings,
        milvus: MilvusSettings,
        topics: OutputTopics | None = None,
        limits: Mapping[str, int] | None = None,
        health: HealthState | None = None,
        fetch_total_timeout_s: float | None = None,
        publish_timeout_s: float = 30.0,
        publish_backoff_max_s: float = 30.0,
        max_in_flight: int = 64,
        on_fatal: Callable[[BaseException], None] | None = None,
        on_hold: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.classifier = classifier
        self.info = classifier.info
        self.fetcher = fetcher
        self.index = index
        self.dedup = dedup
        self.waves = waves
        self.sink = sink
        self.policy = policy
        self.batch = batch
        self.topics = topics or OutputTopics("verdicts", "alerts", "dead-letters")
        self.health = health or HealthState()
        self.health.model_loaded = True
        self.on_fatal = on_fatal
        self._clock = clock
        fs = fetcher.settings
        self._fetch_timeout_s = fetch_total_timeout_s or (fs.connect_timeout_s + fs.read_timeout_s + 2.0)
        self.unsafe_labels = resolve_unsafe_labels(self.info.labels, policy)
        self.cache_key = cache_key(self.info, self.unsafe_labels, policy.unsafe_threshold)
        self._decode_pool = ThreadPoolExecutor(batch.decode_workers, thread_name_prefix="vitguard-decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="vitguard-infer")
        self._store_pool = ThreadPoolExecutor(2, thread_name_prefix="vitguard-milvus")
        self.redis = RedisPolicy(self.health)
        self.milvus = MilvusPolicy(
            self.health, self._store_pool,
            backoff=Backoff(milvus.retry_backoff_s, milvus.retry_backoff_max_s),
            call_timeout_s=getattr(milvus, "call_timeout_s", 10.0) * 2 + 5.0,
            on_hold=on_hold,
        )
        self.emitter = Emitter(
            sink, self.topics, limits or {},
            PublishPolicy(self.health, backoff=Backoff(0.5, publish_backoff_max_s), timeout_s=publish_timeout_s),
        )
        self._max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)
        self._collection: str | None = None
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self._active_ids: set[str] = set()
        self._ready_stream: deque[_Work] = deque()
        self._ready_requests: deque[_Work] = deque()
        self._ready_signal = asyncio.Event()
        self._to_complete: asyncio.Queue[_Group] = asyncio.Queue(maxsize=1)
        self._front: set[asyncio.Task[Any]] = set()
        self._pending: set[asyncio.Future[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._fatal: BaseException | None = None
        self._closed = False
        self.batches = 0
        """Groups fully processed (outputs acknowledged) since start."""
        metrics.MODEL_INFO.labels(
            self.info.name, self.info.version, self.info.backend, str(self.info.embedding_dim)
        ).set(1)

    # ------------------------------------------------------------------ lifecycle

    @property
    def collection(self) -> str | None:
        """The model's Milvus collection, once the first batch (or :meth:`ensure_collection`) created it."""
        return self._collection

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        """Start the batch and completion loops (idempotent). Does not wait for Milvus."""
        if self._closed:
            raise RuntimeError("the runner is closed")
        if not self._loops:
            self._loops = [
                asyncio.create_task(self._guarded(self._batch_loop), name="vitguard-batch-loop"),
                asyncio.create_task(self._guarded(self._completion_loop), name="vitguard-completion-loop"),
            ]

    async def ensure_collection(self) -> str:
        """Create the model's collection (holding while Milvus is down)."""
        if self._collection is None:
            self._collection = await self.milvus.call(
                "ensure_collection", lambda: self.index.ensure_collection(self.info))
        return self._collection

    async def close(self) -> None:
        """Stop the loops, cancel what is in flight (never answered, so never committed), release resources."""
        self._closed = True
        for task in [*self._loops, *self._front]:
            task.cancel()
        for task in [*self._loops, *self._front]:
            with contextlib.suppress(BaseException):
                await task
        for fut in list(self._pending):
            if not fut.done():
                fut.cancel()
        for closer in (getattr(self.fetcher, "close", None), getattr(self.dedup, "close", None),
                       getattr(self.waves, "close", None)):
            if closer is not None:
                try:
                    await closer()
                except Exception:  # closing must not hide the reason we are shutting down
                    _log.warning("error while closing %r", closer, exc_info=True)
        index_close = getattr(self.index, "close", None)
        if index_close is not None:
            try:
                async with asyncio.timeout(10):
                    await asyncio.get_running_loop().run_in_executor(self._store_pool, index_close)
            except Exception:
                _log.warning("error while closing the embedding index", exc_info=True)
        for pool in (self._decode_pool, self._infer_pool, self._store_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the stream

    async def submit(self, raw: RawMessage, consumed_ms: float | None = None) -> asyncio.Future[ItemResult]:
        """Take one event; returns a future that resolves once its outputs are acknowledged.

        Waits while ``max_in_flight`` events are unanswered (backpressure on the caller).

        Raises:
            FatalError: the runner has stopped for good (the same error every pending future got).
        """
        fut = await self._admit()
        task = asyncio.create_task(self._front_half(raw, consumed_ms, fut))
        self._front.add(task)
        task.add_done_callback(self._front.discard)
        return fut

    async def process(self, raws: Sequence[RawMessage]) -> BatchOutcome:
        """Moderate ``raws`` as one batch: their front halves run concurrently, then they join the ready
        queue together, so they share forward passes (up to ``max_size`` images each). The outcome answers
        each message exactly once (or skips it). For replays, tools and tests; the stream uses :meth:`submit`.
        """
        now_ms = time.time() * 1000
        futures = [await self._admit() for _ in raws]
        works = await asyncio.gather(*(self._front_half(r, now_ms, f, enqueue=False) for r, f in
                                       zip(raws, futures, strict=True)))
        for w in works:
            if w is not None:
                self._ready_stream.append(w)
        self._ready_signal.set()
        results = await asyncio.gather(*futures)
        outcome = BatchOutcome()
        for r in results:
            if isinstance(r, Answered):
                outcome.verdicts.append(r.verdict)
                if r.alert is not None:
                    outcome.alerts.append(r.alert)
                outcome.suppressed_alerts += int(r.alert_suppressed)
            elif isinstance(r, DeadLettered):
                outcome.dead_letters.append(r.dead_letter)
            else:
                outcome.skipped.append(r.raw)
        return outcome

    async def _admit(self) -> asyncio.Future[ItemResult]:
        if self._fatal is not None:
            raise self._fatal
        await self.start()
        await self._slots.acquire()
        fut: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        self._track(fut)
        metrics.EVENTS_CONSUMED.inc()
        return fut

    # ------------------------------------------------------------------ synchronous API

    async def classify(
        self,
        *,
        data: bytes | None = None,
        image_ref: str | None = None,
        content_id: str | None = None,
        tenant: str = "default",
    ) -> Verdict:
        """Moderate one image now (``POST /classify``): the same stages and batches as the stream, no side
        effects. Requests join the next batch ahead of stream images, at most half of it.

        Raises:
            InputError: the reference or the bytes are unusable; ``reason`` says why.
        """
        if self._fatal is not None:
            raise self._fatal
        await self.start()
        event_id = uuid.uuid4().hex
        cid = content_id or f"classify-{event_id}"
        # bytes sent in the request body have no reference: the event is internal, built without validation
        event = (ImageEvent(event_id=event_id, content_id=cid, tenant=tenant, image_ref=image_ref)
                 if image_ref is not None
                 else ImageEvent.model_construct(event_id=event_id, content_id=cid, tenant=tenant,
                                                 image_ref="(request body)"))
        raw = RawMessage(None, None, _CLASSIFY_TOPIC, 0, 0)
        parsed = Parsed(raw, event)
        if image_ref is not None:
            fetched = await fetch_image(parsed, self.fetcher, self._decode_pool, self._fetch_timeout_s)
            if isinstance(fetched, DeadLettered):
                d = fetched.dead_letter
                raise InputError(d.reason, d.message)
        else:
            if not data:
                raise InputError("schema_violation", "send image bytes, or JSON with an image_ref")
            max_bytes = self.fetcher.settings.max_bytes
            if len(data) > max_bytes:
                raise InputError("fetch_too_large", f"image of {len(data)} bytes exceeds the limit of {max_bytes}")
            from vitguard.pipeline.fetch import _sha256

            fetched = Fetched(parsed, data, _sha256(data), "body", parsed.times)
        decoded = await decode_image(fetched, self.classifier, self._decode_pool)
        if isinstance(decoded, DeadLettered):
            d = decoded.dead_letter
            raise InputError(d.reason, d.message)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._track(fut)
        self._ready_requests.append(_Work(decoded, fut, request=True))
        self._ready_signal.set()
        result: Verdict = await fut
        return result

    # ------------------------------------------------------------------ front half

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._pending.add(fut)
        self.health.in_flight = len(self._pending)
        metrics.IN_FLIGHT.set(len(self._pending))

    def _resolve(self, fut: asyncio.Future[Any], result: Any, *, slot: bool = True) -> None:
        if not fut.done():
            fut.set_result(result)
        self._release(fut, slot)

    def _release(self, fut: asyncio.Future[Any], slot: bool) -> None:
        if fut in self._pending:
            self._pending.discard(fut)
            if slot:
                self._slots.release()
        self.health.in_flight = len(self._pending)
        metrics.IN_FLIGHT.set(len(self._pending))

    async def _front_half(
        self, raw: RawMessage, consumed_ms: float | None, fut: asyncio.Future[ItemResult], *, enqueue: bool = True
    ) -> _Work | None:
        """ingest -> guard -> fetch -> cache -> decode, for one event; the result joins the ready queue
        (or is returned, with ``enqueue=False``). A skipped event is answered here."""
        try:
            value = await self._prepare(raw, consumed_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not an input problem: answer the event rather than lose it
            _log.exception("preparing %s[%d]@%d failed unexpectedly", raw.topic, raw.partition, raw.offset)
            value = DeadLettered(raw, dead_letter(raw, "internal_error",
                                                  f"preparing the image failed: {type(exc).__name__}: {exc}"))
        if isinstance(value, Skipped):
            metrics.EVENTS_REDELIVERED.inc()
            self._resolve(fut, value)
            self.health.progressed()
            return None
        work = _Work(value, fut)
        if enqueue:
            self._ready_stream.append(work)
            self._ready_signal.set()
        return work

    async def _prepare(self, raw: RawMessage, consumed_ms: float | None) -> Ready:
        parsed = parse(raw, consumed_ms)
        if isinstance(parsed, DeadLettered):
            return parsed
        if parsed.times.queue_ms:
            metrics.QUEUE_TIME.observe(parsed.times.queue_ms / 1000)
        event_id = parsed.event.event_id
        if event_id in self._recent_ids or event_id in self._active_ids:
            return Skipped(raw, "repeat" if event_id in self._active_ids else "redelivered")
        self._active_ids.add(event_id)
        try:
            no_ids: set[str] = set()
            seen = await self.redis.call("seen_events", lambda: self.dedup.seen_events([event_id]), no_ids)
            if event_id in seen:
                self._active_ids.discard(event_id)
                return Skipped(raw, "redelivered")
            fetched = await fetch_image(parsed, self.fetcher, self._decode_pool, self._fetch_timeout_s)
            if isinstance(fetched, DeadLettered):
                return fetched
            nothing: Mapping[str, str] = {}
            sha = fetched.sha256
            cached = await self.redis.call(
                "cached_verdicts", lambda: self.dedup.cached_verdicts([sha], self.cache_key), nothing)
            original = parse_cached_verdict(cached[sha]) if sha in cached else None
            if original is not None:
                verdict = verdict_from_cache(original, parsed.event, sha, _times(fetched.times))
                return CacheHit(parsed, verdict, original.content_id)
            return await decode_image(fetched, self.classifier, self._decode_pool)
        except BaseException:
            self._active_ids.discard(event_id)
            raise

    # ------------------------------------------------------------------ batch loop

    def _take(self) -> list[_Work]:
        """What the next group holds: up to ``max_size`` images (requests first, at most half), plus the
        dead letters and cache hits that are ready (they need no inference)."""
        max_size = self.batch.max_size
        taken: list[_Work] = []
        images = 0
        request_share = max(1, max_size // 2) if self._ready_stream else max_size
        while self._ready_requests and images < request_share:
            taken.append(self._ready_requests.popleft())
            images += 1
        others = 0
        keep: deque[_Work] = deque()
        while self._ready_stream:
            w = self._ready_stream.popleft()
            if isinstance(w.value, Decoded):
                if images < max_size:
                    taken.append(w)
                    images += 1
                else:
                    keep.append(w)
            elif others < 4 * max_size:
                taken.append(w)
                others += 1
            else:
                keep.append(w)
        while self._ready_requests and images < max_size:
            taken.append(self._ready_requests.popleft())
            images += 1
        self._ready_stream.extendleft(reversed(keep))
        if not self._ready_stream and not self._ready_requests:
            self._ready_signal.clear()
        return taken

    async def _linger(self) -> None:
        """With ``max_wait_s`` > 0: while fewer than ``max_size`` images are ready and more are being fetched
        or decoded, wait for them, at most ``max_wait_s`` (an upper bound; 0, the default, never waits)."""
        deadline = time.perf_counter() + self.batch.max_wait_s
        while (
            self.batch.max_wait_s > 0
            and sum(isinstance(w.value, Decoded) for w in self._ready_stream) < self.batch.max_size
            and self._front
        ):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._ready_signal.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.005)):
                    await self._ready_signal.wait()
        if self._ready_stream or self._ready_requests:
            self._ready_signal.set()

    async def _batch_loop(self) -> None:
        while True:
            await self._ready_signal.wait()
            await self._linger()
            work = self._take()
            if not work:
                continue
            group = _Group(work)
            decoded = [(i, w.value) for i, w in enumerate(work) if isinstance(w.value, Decoded)]
            if decoded:
                metrics.BATCH_SIZE.observe(len(decoded))
                with self._timed(group.stage_ms, "inference"):
                    predicted = await infer_batch(
                        [d for _, d in decoded], self.classifier, self._infer_pool, self.unsafe_labels,
                        self.policy.unsafe_threshold,
                    )
                for (i, _), p in zip(decoded, predicted, strict=True):
                    group.predicted[i] = p
                    if isinstance(p, Predicted):
                        metrics.BATCH_WAIT.observe(p.times.wait_ms / 1000)
            await self._to_complete.put(group)

    # ------------------------------------------------------------------ completion loop

    async def _completion_loop(self) -> None:
        while True:
            group = await self._to_complete.get()
            try:
                await self._complete(group)
            except asyncio.CancelledError:
                raise
            except FatalError as exc:
                self._fail_all(exc, group)
                return
            except Exception as exc:  # a bug: answer every event of the group with internal_error
                _log.exception("a group of %d failed unexpectedly; dead-lettering it", len(group.work))
                try:
                    await self._complete_fallback(group, exc)
                except FatalError as fatal:
                    self._fail_all(fatal, group)
                    return

    async def _complete(self, group: _Group) -> None:
        now_s = self._clock()
        requests = [(i, w) for i, w in enumerate(group.work) if w.request]
        for i, w in requests:
            self._answer_request(w, group.predicted.get(i))
        stream = [(i, w) for i, w in enumerate(group.work) if not w.request]
        if not stream:
            return
        predicted = [(i, p) for i, p in group.predicted.items() if not group.work[i].request
                     and isinstance(p, Predicted)]
        indexed: dict[int, tuple[str | None, Sequence[Any], bool]] = {}
        if predicted:
            collection = await self.ensure_collection()
            out = await index_batch(
                [p for _, p in predicted], index=self.index, collection=collection, milvus=self.milvus,
                policy=self.policy, model_version=self.info.version, now_ms=int(now_s * 1000),
                timed=lambda stage: self._timed(group.stage_ms, stage),
            )
            for (i, _), x in zip(predicted, out, strict=True):
                indexed[i] = (x.cluster_id, x.matches, x.is_new_cluster)

        candidates: list[tuple[int, Candidate]] = []
        for i, w in stream:
            v = w.value
            if i in indexed and indexed[i][0]:
                cluster_id, matches, is_new = indexed[i]
                assert cluster_id is not None  # noqa: S101 - checked above
                p = group.predicted[i]
                assert isinstance(p, Predicted)  # noqa: S101 - indexed implies predicted
                candidates.append((i, Candidate(p.decoded.parsed.event, cluster_id,
                                                list(matches), is_new or not matches)))  # type: ignore[arg-type]
            elif isinstance(v, CacheHit) and v.verdict.label == "unsafe" and v.verdict.cluster_id:
                hit = SearchHit(v.cached_from, 1.0, v.verdict.cluster_id)
                candidates.append((i, Candidate(v.parsed.event, v.verdict.cluster_id, [hit], False)))
        with self._timed(group.stage_ms, "waves"):
            alert_results = await alert_batch(
                [c for _, c in candidates], waves=self.waves, redis=self.redis, policy=self.policy,
                model_name=self.info.name, now_s=now_s,
            )
        alert_of = {i: r for (i, _), r in zip(candidates, alert_results, strict=True)}

        answers: list[tuple[RawMessage, ImageEvent | None, Answer]] = []
        for i, w in stream:
            answers.append(self._answer(w, group.predicted.get(i), indexed.get(i, (None, (), False))[0]))
        alerts = [a for a, _ in alert_results if a is not None]
        with self._timed(group.stage_ms, "publish"):
            final = await self.emitter.emit(answers, alerts)
        await self._finish(group, stream, final, alert_of)

    def _answer(
        self, w: _Work, predicted: Predicted | DeadLettered | None, cluster_id: str | None
    ) -> tuple[RawMessage, ImageEvent | None, Answer]:
        v = w.value
        if isinstance(v, DeadLettered):
            return v.raw, None, v.dead_letter
        if isinstance(v, CacheHit):
            return v.parsed.raw, v.parsed.event, v.verdict
        assert isinstance(v, Decoded)  # noqa: S101 - Skipped never reaches the ready queue
        if isinstance(predicted, DeadLettered):
            return predicted.raw, v.parsed.event, predicted.dead_letter
        if predicted is None:  # unreachable by construction; never drop an event silently
            return v.parsed.raw, v.parsed.event, dead_letter(v.parsed.raw, "internal_error", "event left unanswered",
                                                             v.parsed.event)
        verdict = build_verdict(
            v.parsed.event, info=self.info, prediction=predicted.prediction, decision=predicted.decision,
            sha256=v.sha256, timings=_times(predicted.times), collection=self._collection, cluster_id=cluster_id,
        )
        return v.parsed.raw, v.parsed.event, verdict

    def _answer_request(self, w: _Work, predicted: Predicted | DeadLettered | None) -> None:
        v = w.value
        assert isinstance(v, Decoded)  # noqa: S101 - requests are decoded before they queue
        if isinstance(predicted, Predicted):
            p = predicted.prediction
            verdict = Verdict(
                event_id=v.parsed.event.event_id, content_id=v.parsed.event.content_id, tenant=v.parsed.event.tenant,
                label=predicted.decision.label, unsafe_score=predicted.decision.unsafe_score, top_class=p.top_class,
                scores={k: float(s) for k, s in p.scores.items()}, model_name=self.info.name,
                model_version=self.info.version, model_untrained=self.info.untrained, image_sha256=v.sha256,
                timings=_times(predicted.times), processed_at=utc_now(),
            )
            self._resolve(w.future, verdict, slot=False)
        else:
            letter = predicted.dead_letter if isinstance(predicted, DeadLettered) else None
            error = InputError(letter.reason if letter else "internal_error",
                               letter.message if letter else "left unanswered")
            if not w.future.done():
                w.future.set_exception(error)
            self._release(w.future, slot=False)

    async def _finish(
        self,
        group: _Group,
        stream: list[tuple[int, _Work]],
        final: Sequence[Answer],
        alert_of: Mapping[int, tuple[Any, bool]],
    ) -> None:
        """After the broker acknowledged everything: Redis learns, the futures resolve, metrics count."""
        verdicts = [a for a in final if isinstance(a, Verdict)]
        event_ids = [v.event_id for v in verdicts]
        if event_ids:
            with self._timed(group.stage_ms, "redis"):
                await self.redis.call("mark_events", lambda: self.dedup.mark_events(event_ids), None)
                fresh = {v.image_sha256: v.model_dump_json() for v in verdicts if not v.from_cache and v.image_sha256}
                if fresh:
                    await self.redis.call("cache_verdicts", lambda: self.dedup.cache_verdicts(fresh, self.cache_key),
                                          None)
        now = time.time()
        for (i, w), answer in zip(stream, final, strict=True):
            raw = _raw_of(w.value)
            if answer.event_id is not None:
                self._active_ids.discard(answer.event_id)
            result: ItemResult
            if isinstance(answer, Verdict):
                self._recent_ids[answer.event_id] = None
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
            self._resolve(w.future, result)
        while len(self._recent_ids) > RECENT_EVENT_IDS:
            self._recent_ids.popitem(last=False)
        self.batches += 1
        self.health.progressed()
        metrics.LAST_BATCH_TIMESTAMP.set(now)
        for stage, ms in group.stage_ms.items():
            metrics.STAGE_DURATION.labels(stage).observe(ms / 1000)

    async def _complete_fallback(self, group: _Group, exc: BaseException) -> None:
        stream = [(i, w) for i, w in enumerate(group.work) if not w.request]
        for _, w in [(i, w) for i, w in enumerate(group.work) if w.request]:
            if not w.future.done():
                w.future.set_exception(InputError("internal_error", f"{type(exc).__name__}: {exc}"))
            self._release(w.future, slot=False)
        answers: list[tuple[RawMessage, ImageEvent | None, Answer]] = []
        for _, w in stream:
            raw = _raw_of(w.value)
            event = _event_of(w.value)
            if isinstance(w.value, DeadLettered):
                answers.append((raw, None, w.value.dead_letter))
            else:
                answers.append((raw, event, dead_letter(raw, "internal_error",
                                                        f"batch failed: {type(exc).__name__}: {exc}", event)))
        final = await self.emitter.emit(answers, [])
        await self._finish(group, stream, final, {})

    # ------------------------------------------------------------------ failures

    async def _guarded(self, loop_fn: Callable[[], Any]) -> None:
        """Run one of the runner's loops; if it ever ends by an exception, the runner is broken: go fatal."""
        try:
            await loop_fn()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            _log.critical("runner loop %s crashed: %r", getattr(loop_fn, "__name__", loop_fn), exc, exc_info=True)
            self._fail_all(exc if isinstance(exc, FatalError) else FatalError(f"runner loop crashed: {exc!r}"))

    def _fail_all(self, exc: BaseException, group: _Group | None = None) -> None:
        """Stop for good: every pending event's future gets ``exc``; nothing is answered or committed."""
        if self._fatal is None:
            self._fatal = exc
            self.health.fatal = str(exc)[:500]
            metrics.FATAL_ERRORS.labels(type(exc).__name__).inc()
            _log.critical("vitguard cannot go on: %s", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(self._fatal)
        self._pending.clear()

    @contextlib.contextmanager
    def _timed(self, stage_ms: dict[str, float], stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            stage_ms[stage] = stage_ms.get(stage, 0.0) + (time.perf_counter() - started) * 1000


def _raw_of(v: Ready) -> RawMessage:
    if isinstance(v, DeadLettered | Skipped):
        return v.raw
    return v.parsed.raw


def _event_of(v: Ready) -> ImageEvent | None:
    if isinstance(v, CacheHit | Decoded):
        return v.parsed.event
    return None


def build_runner(
    settings: Settings,
    sink: Sink,
    *,
    topics: OutputTopics | None = None,
    classifier: Classifier | None = None,
    index: EmbeddingIndex | None = None,
    dedup: DedupStore | None = None,
    waves: WaveCounter | None = None,
    fetcher: ImageFetcher | None = None,
    **kwargs: Any,
) -> Runner:
    """A runner wired to the real services named in ``settings``; pass any dependency to override it.

    Loads the model when ``classifier`` is None (slow: seconds). Store clients connect lazily, so this
    does not fail when Milvus or Redis is down.
    """
    from vitguard.fetch import ImageFetcher
    from vitguard.model import load_classifier
    from vitguard.stores import MilvusEmbeddingIndex, RedisDedupStore, RedisWaveCounter

    t = settings.topics
    return Runner(
        classifier=classifier or load_classifier(settings.model),
        fetcher=fetcher or ImageFetcher(settings.fetch),
        index=index or MilvusEmbeddingIndex(settings.milvus),
        dedup=dedup or RedisDedupStore(settings.redis),
        waves=waves or RedisWaveCounter(settings.redis, settings.policy),
        sink=sink,
        topics=topics or OutputTopics(t.verdicts, t.alerts, t.dead_letters),
        policy=settings.policy,
        batch=settings.batch,
        milvus=settings.milvus,
        publish_timeout_s=max(settings.kafka.request_timeout_s, 5.0),
        max_in_flight=settings.worker.max_in_flight,
        **kwargs,
    )
