"""The batch processor: the one place that turns a batch of raw messages into published outputs.

The Faust agent, ``vitguard replay`` (in-process, another model, another verdict topic) and tests all
drive the same :meth:`BatchProcessor.process`. Every dependency comes through the constructor
(classifier, fetcher, embedding index, dedup store, wave counter, sink), so a unit test passes in-memory
stores and a list sink, and an integration test passes the real ones.

Order of work in one batch, and why:

1. parse and validate (invalid messages become dead letters ``invalid_json`` / ``schema_violation``);
2. redelivery guard: events whose id Redis remembers are skipped (their outputs were already published);
3. per image, concurrently: fetch on the event loop, SHA-256, verdict-cache lookup, decode in the decode
   thread pool; a cache hit skips decoding and inference;
4. ONE forward pass for the batch in the inference thread (off the event loop, so Kafka heart-beats go on);
5. policy decision;
6. near-duplicate search for the batch's unsafe embeddings (one batched call), then clustering;
7. Milvus upsert of every new embedding, one call, idempotent by content id. Milvus errors are retried
   with backoff for as long as the worker runs: the batch is held (backpressure) and its offsets stay
   uncommitted until the upsert succeeds;
8. wave counter per unsafe item, and the alerts it allows;
9. publish verdicts, alerts and dead letters and wait for the broker's acknowledgements (retried);
10. remember the ids of events that got a verdict, and cache the verdicts, in Redis.

Only when :meth:`process` returns may the caller acknowledge the batch's offsets: upsert, then publish,
then commit. An exception never escapes for one bad event: it becomes that event's dead letter. Redis is
an optimisation: when it fails the batch goes on without the guard and cache (logged and counted).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from vitguard import metrics
from vitguard.errors import InputError, ReasonCode, ServiceUnavailableError
from vitguard.model.types import Classifier, Prediction
from vitguard.pipeline.core import (
    build_alert,
    build_verdict,
    cache_key,
    dead_letter,
    moderate_batch,
    parse_batch,
    parse_cached_verdict,
    verdict_from_cache,
)
from vitguard.pipeline.types import BatchOutcome, RawMessage, Sink
from vitguard.policy import Decision, decide, resolve_unsafe_labels
from vitguard.schemas.events import DeadLetter, ImageEvent, Timings, Verdict, utc_now
from vitguard.settings import BatchSettings, MilvusSettings, PolicySettings
from vitguard.stores.backoff import backoff_delay, retry_with_backoff
from vitguard.stores.interfaces import DedupStore, EmbeddingIndex, EmbeddingRecord, SearchHit, WaveCounter, WaveState

if TYPE_CHECKING:
    from vitguard.fetch import ImageFetcher
    from vitguard.settings import Settings

__all__ = ["RECENT_EVENT_IDS", "REDIS_RETRY_AFTER_S", "BatchProcessor", "PreparedBatch", "build_processor"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

REDIS_RETRY_AFTER_S = 5.0
"""After a Redis failure, Redis is skipped for this long, so an outage costs one timeout, not one per call."""

RECENT_EVENT_IDS = 100_000
"""Event ids this worker answered most recently, remembered in memory: a second redelivery guard that
works while Redis is down and covers the batch prepared while the previous one was completing."""

_HASH_IN_THREAD_BYTES = 1 << 20

_NO_WAVE = WaveState(count=1, is_wave=False, alert=True)
"""Images larger than this are hashed in the decode pool instead of on the event loop."""


@dataclass
class _Item:
    """One valid event on its way through the batch."""

    raw: RawMessage
    event: ImageEvent
    source: str = "unknown"
    sha256: str | None = None
    fetch_ms: float = 0.0
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    tensor: NDArray[np.float32] | None = None
    prediction: Prediction | None = None
    decision: Decision | None = None
    cached: Verdict | None = None
    cached_from: str | None = None
    """Content id the cached verdict was made for (an exact re-upload matches it)."""
    cluster_id: str | None = None
    matches: list[SearchHit] = field(default_factory=list)
    is_new_cluster: bool = False
    failure: DeadLetter | None = None

    def fail(self, reason: ReasonCode, message: str) -> None:
        self.failure = dead_letter(self.raw, reason, message, self.event)
        self.tensor = None

    def timings(self) -> Timings:
        return Timings(fetch_ms=self.fetch_ms, decode_ms=self.decode_ms, infer_ms=self.infer_ms)


@dataclass
class PreparedBatch:
    """A batch after :meth:`BatchProcessor.prepare`: parsed, guarded, fetched and decoded, not yet inferred."""

    raws: list[RawMessage]
    outcome: BatchOutcome
    items: list[_Item]
    started: float
    """perf_counter() when the batch was taken (batch duration metric)."""


class BatchProcessor:
    """Moderates batches of raw input messages and publishes the results through a :class:`Sink`.

    Args:
        classifier: the loaded model (its ``info`` names verdicts, the cache and the Milvus collection).
        fetcher: gets image bytes for ``image_ref`` (``fetch(ref)``, raising FetchError with a reason).
        index: the embedding store (Milvus in production).
        dedup: redelivery guard and verdict cache (Redis in production).
        waves: sliding-window wave counter (Redis in production).
        sink: where verdicts, alerts and dead letters go; ``publish`` returns after broker acks.
        policy: unsafe labels and threshold, near-duplicate threshold, wave rules.
        batch: ``decode_workers`` sizes the decode thread pool.
        milvus: retry and backoff of the store calls.
        publish_backoff_max_s: longest wait between two attempts to publish a batch.
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
        publish_backoff_max_s: float = 30.0,
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
        self._milvus_settings = milvus
        self._publish_backoff_max_s = publish_backoff_max_s
        self._clock = clock
        self.unsafe_labels = resolve_unsafe_labels(self.info.labels, policy)
        self.cache_key = cache_key(self.info, self.unsafe_labels, policy.unsafe_threshold)
        self._decode_pool = ThreadPoolExecutor(batch.decode_workers, thread_name_prefix="vitguard-decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="vitguard-infer")
        self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="vitguard-milvus")
        self._collection: str | None = None
        self._redis_skip_until = 0.0
        self._recent_ids: OrderedDict[str, None] = OrderedDict()
        self.batches = 0
        """Batches fully processed (outputs acknowledged) since start."""
        metrics.MODEL_INFO.labels(
            self.info.name, self.info.version, self.info.backend, str(self.info.embedding_dim)
        ).set(1)

    # ------------------------------------------------------------------ lifecycle

    @property
    def collection(self) -> str | None:
        """The model's Milvus collection, once :meth:`start` (or the first batch) created it."""
        return self._collection

    async def start(self) -> None:
        """Create the model's collection (retrying while Milvus is down). Idempotent."""
        if self._collection is None:
            self._collection = await self._milvus("ensure_collection", lambda: self.index.ensure_collection(self.info))

    async def close(self) -> None:
        """Release thread pools and clients (the sink belongs to the caller)."""
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
                await asyncio.get_running_loop().run_in_executor(self._store_pool, index_close)
            except Exception:
                _log.warning("error while closing the embedding index", exc_info=True)
        for pool in (self._decode_pool, self._infer_pool, self._store_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the batch

    async def process(self, raws: Sequence[RawMessage]) -> BatchOutcome:
        """Moderate one batch and publish its outputs; returns once the broker acknowledged all of them.

        Every message ends as exactly one verdict or one dead letter, except ``skipped`` ones (already
        processed). Never raises for bad events, store outages or model errors; only cancellation (the
        worker shutting down) interrupts it, and then nothing of the batch may be committed.

        Equivalent to ``await complete(await prepare(raws))``; a caller that wants the next batch's
        fetching and decoding to overlap this batch's inference calls the two halves itself.
        """
        return await self.complete(await self.prepare(raws))

    async def prepare(self, raws: Sequence[RawMessage]) -> PreparedBatch:
        """First half, no side effects: parse, redelivery guard, fetch, hash, cache lookup, decode.

        May run while the previous batch's :meth:`complete` is in progress (decoding in the decode pool
        while the model runs in the inference thread); :meth:`complete` calls must stay in batch order.
        """
        started = time.perf_counter()
        metrics.EVENTS_CONSUMED.inc(len(raws))
        metrics.BATCH_SIZE.observe(len(raws))
        outcome = BatchOutcome()
        try:
            items = await self._prepare_batch(raws, outcome)
        except Exception as exc:  # a bug, not an input problem: answer every event rather than lose it
            _log.exception("preparing a batch of %d failed unexpectedly; dead-lettering it", len(raws))
            outcome, items = self._all_failed(raws, exc)
        return PreparedBatch(raws=list(raws), outcome=outcome, items=items, started=started)

    async def complete(self, batch: PreparedBatch) -> BatchOutcome:
        """Second half: inference, clustering, Milvus upsert, waves, publish (acknowledged), Redis.

        Returns once every output is acknowledged by the broker; only then may the batch be committed.
        """
        outcome, items = batch.outcome, batch.items
        # events answered since this batch was prepared (an overlapping earlier batch) are redeliveries too
        repeated = [i for i in items if i.event.event_id in self._recent_ids]
        if repeated:
            outcome.skipped.extend(i.raw for i in repeated)
            items = [i for i in items if i.event.event_id not in self._recent_ids]
        try:
            await self._moderate(outcome, items)
        except Exception as exc:
            _log.exception("batch of %d failed unexpectedly; dead-lettering it", len(batch.raws))
            outcome, items = self._all_failed(batch.raws, exc, items, outcome.skipped)
        with self._stage(outcome, "publish"):
            await self._publish(outcome)
        with self._stage(outcome, "redis"):
            await self._remember(outcome)
        for verdict in outcome.verdicts:
            self._recent_ids[verdict.event_id] = None
        while len(self._recent_ids) > RECENT_EVENT_IDS:
            self._recent_ids.popitem(last=False)
        self._count(outcome, batch.started)
        return outcome

    async def _prepare_batch(self, raws: Sequence[RawMessage], outcome: BatchOutcome) -> list[_Item]:
        parsed = parse_batch(raws)
        outcome.dead_letters.extend(parsed.dead_letters)
        outcome.skipped.extend(parsed.repeats)
        items = [_Item(raw, event) for raw, event in parsed.events]

        no_ids: set[str] = set()
        seen = await self._redis(
            "seen_events", lambda: self.dedup.seen_events([i.event.event_id for i in items]), no_ids
        )
        if seen:
            outcome.skipped.extend(i.raw for i in items if i.event.event_id in seen)
            items = [i for i in items if i.event.event_id not in seen]

        with self._stage(outcome, "fetch_decode"):
            results = await asyncio.gather(*(self._prepare(i) for i in items), return_exceptions=True)
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException) and item.failure is None:
                item.fail("internal_error", f"preparing the image failed: {type(result).__name__}: {result}")
        return items

    async def _moderate(self, outcome: BatchOutcome, items: list[_Item]) -> None:
        to_infer = [i for i in items if i.failure is None and i.cached is None and i.tensor is not None]
        if to_infer:
            with self._stage(outcome, "inference"):
                await self._infer(to_infer)
        predicted = [i for i in to_infer if i.failure is None and i.prediction is not None]
        for item, decision in zip(
            predicted,
            moderate_batch([i.prediction for i in predicted if i.prediction is not None], self.unsafe_labels,
                           self.policy.unsafe_threshold),
            strict=True,
        ):
            item.decision = decision

        if predicted:
            await self.start()
            await self._cluster_and_store(predicted, outcome)

        await self._waves_and_alerts(items, outcome)

        for item in items:
            if item.failure is not None:
                outcome.dead_letters.append(item.failure)
            elif item.cached is not None:
                outcome.verdicts.append(item.cached)
            elif item.prediction is not None and item.decision is not None:
                outcome.verdicts.append(
                    build_verdict(
                        item.event,
                        info=self.info,
                        prediction=item.prediction,
                        decision=item.decision,
                        sha256=item.sha256,
                        timings=item.timings(),
                        collection=self._collection,
                        cluster_id=item.cluster_id,
                    )
                )
            else:  # unreachable by construction; never drop an event silently
                outcome.dead_letters.append(dead_letter(item.raw, "internal_error", "event left unanswered"))

    def _all_failed(
        self,
        raws: Sequence[RawMessage],
        exc: BaseException,
        items: list[_Item] | None = None,
        skipped: list[RawMessage] | None = None,
    ) -> tuple[BatchOutcome, list[_Item]]:
        """The fallback answer after a bug: invalid messages as usual, every other event ``internal_error``."""
        outcome = BatchOutcome()
        parsed = parse_batch(raws)
        outcome.dead_letters.extend(parsed.dead_letters)
        if items is None:
            outcome.skipped.extend(parsed.repeats)
            items = [_Item(raw, event) for raw, event in parsed.events]
        else:
            outcome.skipped.extend(skipped or [])
        for item in items:
            item.fail("internal_error", f"batch failed: {type(exc).__name__}: {exc}")
            if item.failure is not None:
                outcome.dead_letters.append(item.failure)
        return outcome, items

    # ------------------------------------------------------------------ stages

    async def _prepare(self, item: _Item) -> None:
        """Fetch, hash, look up the cache, decode: one image, concurrently with the others."""
        loop = asyncio.get_running_loop()
        try:
            result = await self.fetcher.fetch(item.event.image_ref)
        except InputError as exc:
            item.fail(exc.reason, exc.message)
            return
        except Exception as exc:
            _log.warning("fetch of %s raised %r", item.event.event_id, exc, exc_info=True)
            item.fail("internal_error", f"fetch failed: {type(exc).__name__}: {exc}")
            return
        data = result.data
        item.fetch_ms, item.source = float(result.elapsed_ms), str(result.source)
        metrics.IMAGE_STAGE_DURATION.labels("fetch", item.source).observe(item.fetch_ms / 1000)
        if len(data) > _HASH_IN_THREAD_BYTES:
            item.sha256 = await loop.run_in_executor(self._decode_pool, _sha256, data)
        else:
            item.sha256 = _sha256(data)

        sha = item.sha256
        nothing: Mapping[str, str] = {}
        cached = await self._redis(
            "cached_verdicts", lambda: self.dedup.cached_verdicts([sha], self.cache_key), nothing
        )
        original = parse_cached_verdict(cached[sha]) if sha in cached else None
        if original is not None:
            item.cached = verdict_from_cache(original, item.event, sha, item.timings())
            item.cached_from = original.content_id
            return

        started = time.perf_counter()
        try:
            item.tensor = await loop.run_in_executor(self._decode_pool, self.classifier.prepare, data)
        except InputError as exc:
            item.fail(exc.reason, exc.message)
        except Exception as exc:
            _log.warning("decode of %s raised %r", item.event.event_id, exc, exc_info=True)
            item.fail("internal_error", f"decode failed: {type(exc).__name__}: {exc}")
        finally:
            item.decode_ms = (time.perf_counter() - started) * 1000
            metrics.IMAGE_STAGE_DURATION.labels("decode", item.source).observe(item.decode_ms / 1000)

    async def _infer(self, items: list[_Item]) -> None:
        """One forward pass for the batch in the inference thread; on error, isolate the failing images."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        tensors = [i.tensor for i in items if i.tensor is not None]
        try:
            predictions = await loop.run_in_executor(self._infer_pool, self._predict_stacked, tensors)
        except Exception as exc:
            _log.warning("batch forward pass of %d failed (%r); retrying image by image", len(items), exc)
            predictions = None
        if predictions is not None:
            for item, prediction in zip(items, predictions, strict=True):
                item.prediction = prediction
        else:
            for item in items:
                try:
                    assert item.tensor is not None  # noqa: S101 - filtered by the caller
                    item.prediction = (
                        await loop.run_in_executor(self._infer_pool, self._predict_stacked, [item.tensor])
                    )[0]
                except Exception as exc:
                    item.fail("inference_failed", f"model failed on this image: {type(exc).__name__}: {exc}")
        share = (time.perf_counter() - started) * 1000 / max(1, len(items))
        for item in items:
            item.infer_ms = share
            item.tensor = None

    def _predict_stacked(self, tensors: list[NDArray[np.float32]]) -> list[Prediction]:
        predictions = self.classifier.predict(np.stack(tensors))
        if len(predictions) != len(tensors):
            raise RuntimeError(f"model returned {len(predictions)} predictions for {len(tensors)} images")
        return predictions

    async def _cluster_and_store(self, predicted: list[_Item], outcome: BatchOutcome) -> None:
        """Search near-duplicates of the unsafe items, assign clusters, then upsert every embedding."""
        from vitguard.pipeline.clustering import assign_clusters

        collection = self._collection
        assert collection is not None  # noqa: S101 - start() ran
        unsafe = [i for i in predicted if i.decision is not None and i.decision.label == "unsafe"]
        if unsafe:
            vectors = np.stack([i.prediction.embedding for i in unsafe if i.prediction is not None])
            with self._stage(outcome, "milvus_search"):
                hits = await self._milvus(
                    "search_unsafe",
                    lambda: self.index.search_unsafe(
                        collection, vectors, self.policy.max_matches + 1, self.policy.near_duplicate_threshold
                    ),
                )
            # an item already stored by an earlier, unfinished attempt at this batch is not its own match
            hits = [[h for h in hs if h.content_id != i.event.content_id] for i, hs in zip(unsafe, hits, strict=True)]
            assignments = assign_clusters(
                [i.event.content_id for i in unsafe], vectors, hits, self.policy.near_duplicate_threshold
            )
            for item, assignment in zip(unsafe, assignments, strict=True):
                item.cluster_id = assignment.cluster_id
                item.matches = list(assignment.matches)
                item.is_new_cluster = assignment.is_new_cluster

        now_ms = int(self._clock() * 1000)
        records = [
            EmbeddingRecord(
                content_id=i.event.content_id,
                embedding=i.prediction.embedding,
                label=i.decision.label,
                unsafe_score=i.decision.unsafe_score,
                cluster_id=i.cluster_id or "",
                tenant=i.event.tenant,
                model_version=self.info.version,
                created_at_ms=int(i.event.created_at.timestamp() * 1000),
                processed_at_ms=now_ms,
            )
            for i in predicted
            if i.prediction is not None and i.decision is not None
        ]
        with self._stage(outcome, "milvus_upsert"):
            await self._milvus("upsert", lambda: self.index.upsert(collection, records))

    async def _waves_and_alerts(self, items: list[_Item], outcome: BatchOutcome) -> None:
        """Count unsafe items on their clusters; alert for near-duplicates unless a wave suppresses it."""
        now = self._clock()
        with self._stage(outcome, "waves"):
            for item in items:
                if item.failure is not None:
                    continue
                matches: list[SearchHit]
                if item.cached is not None:
                    if item.cached.label != "unsafe" or not item.cached.cluster_id:
                        continue
                    item.cluster_id = item.cached.cluster_id
                    matches = [SearchHit(item.cached_from or "", 1.0, item.cached.cluster_id)]
                    is_new = False
                elif item.decision is not None and item.decision.label == "unsafe" and item.cluster_id:
                    matches = item.matches
                    is_new = item.is_new_cluster or not matches
                else:
                    continue
                cluster_id = item.cluster_id
                assert cluster_id is not None  # noqa: S101 - set above
                state = await self._record_wave(cluster_id, item.event.content_id, now)
                if is_new:
                    continue
                if state.is_wave and not state.alert:
                    outcome.suppressed_alerts += 1
                    continue
                outcome.alerts.append(
                    build_alert(
                        item.event,
                        cluster_id=cluster_id,
                        matches=matches,
                        state=state,
                        policy=self.policy,
                        model_name=self.info.name,
                    )
                )

    async def _record_wave(self, cluster_id: str, content_id: str, now: float) -> WaveState:
        """The wave counter's answer; without Redis, every near-duplicate alerts as a lone one."""
        return await self._redis(
            "wave_record", lambda: self.waves.record(cluster_id, content_id, now), _NO_WAVE
        )

    async def _publish(self, outcome: BatchOutcome) -> None:
        """Publish until the broker acknowledges everything; the batch must not be committed before."""
        attempt = 0
        while True:
            try:
                await self.sink.publish(outcome.verdicts, outcome.alerts, outcome.dead_letters)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                delay = backoff_delay(attempt, 0.5, self._publish_backoff_max_s)
                metrics.PUBLISH_RETRIES.inc()
                _log.error(
                    "publishing a batch failed (attempt %d, %s); retrying in %.1fs, offsets stay uncommitted",
                    attempt, exc, delay, extra={"attempt": attempt},
                )
                await asyncio.sleep(delay)

    async def _remember(self, outcome: BatchOutcome) -> None:
        """After publishing: the redelivery guard learns the event ids, the cache learns the verdicts.

        Only events that got a verdict are remembered: a dead-lettered event re-driven with its original
        payload (same event id) after its cause was fixed must be processed again, not skipped.
        """
        event_ids = [v.event_id for v in outcome.verdicts]
        await self._redis("mark_events", lambda: self.dedup.mark_events(event_ids), None)
        fresh = {v.image_sha256: v.model_dump_json() for v in outcome.verdicts if not v.from_cache and v.image_sha256}
        if fresh:
            await self._redis("cache_verdicts", lambda: self.dedup.cache_verdicts(fresh, self.cache_key), None)

    # ------------------------------------------------------------------ synchronous API

    async def classify(
        self,
        *,
        data: bytes | None = None,
        image_ref: str | None = None,
        content_id: str | None = None,
        tenant: str = "default",
    ) -> Verdict:
        """Moderate one image now (for ``POST /classify``): same model, policy and fetch limits, no side effects.

        Raises:
            InputError: the reference or the bytes are unusable; ``reason`` says why.
        """
        loop = asyncio.get_running_loop()
        timings: dict[str, float] = {}
        if image_ref is not None:
            result = await self.fetcher.fetch(image_ref)
            data, timings["fetch_ms"] = result.data, float(result.elapsed_ms)
        if not data:
            raise InputError("schema_violation", "send image bytes, or JSON with an image_ref")
        max_bytes = self.fetcher.settings.max_bytes
        if len(data) > max_bytes:
            raise InputError("fetch_too_large", f"image of {len(data)} bytes exceeds the limit of {max_bytes}")
        started = time.perf_counter()
        tensor = await loop.run_in_executor(self._decode_pool, self.classifier.prepare, data)
        timings["decode_ms"] = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        (prediction,) = await loop.run_in_executor(self._infer_pool, self._predict_stacked, [tensor])
        timings["infer_ms"] = (time.perf_counter() - started) * 1000
        decision = decide(prediction.scores, self.unsafe_labels, self.policy.unsafe_threshold)
        event_id = uuid.uuid4().hex
        return Verdict(
            event_id=event_id,
            content_id=content_id or f"classify-{event_id}",
            tenant=tenant,
            label=decision.label,
            unsafe_score=decision.unsafe_score,
            top_class=prediction.top_class,
            scores={k: float(v) for k, v in prediction.scores.items()},
            model_name=self.info.name,
            model_version=self.info.version,
            model_untrained=self.info.untrained,
            image_sha256=_sha256(data),
            timings=Timings(**timings),
            processed_at=utc_now(),
        )

    # ------------------------------------------------------------------ helpers

    async def _redis(self, op: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        """Run a Redis call; on failure log, count and return ``default`` (Redis never stops the pipeline)."""
        if time.monotonic() < self._redis_skip_until:
            return default
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.STORE_ERRORS.labels("redis", op).inc()
            self._redis_skip_until = time.monotonic() + REDIS_RETRY_AFTER_S
            _log.warning(
                "Redis %s failed (%s); going on without it for %.0fs", op, exc, REDIS_RETRY_AFTER_S,
                extra={"store": "redis", "op": op},
            )
            return default

    async def _milvus(self, op: str, call: Callable[[], T]) -> T:
        """Run a blocking store call in the store thread, retrying outages with backoff until it succeeds.

        Holding the batch here is the backpressure: the agent takes no new batch and commits nothing while
        Milvus is down. Errors other than "unavailable" propagate (they are bugs or misconfiguration).
        """
        loop = asyncio.get_running_loop()

        def on_retry(attempt: int, exc: ServiceUnavailableError, delay: float) -> None:
            metrics.STORE_ERRORS.labels("milvus", op).inc()
            _log.warning("Milvus %s failed (attempt %d): %s; retrying in %.1fs", op, attempt, exc, delay)

        rounds = 0
        while True:
            try:
                return await loop.run_in_executor(
                    self._store_pool, lambda: retry_with_backoff(call, self._milvus_settings, on_retry=on_retry)
                )
            except ServiceUnavailableError as exc:
                rounds += 1
                metrics.STORE_ERRORS.labels("milvus", op).inc()
                _log.error(
                    "Milvus %s still failing after %d rounds of retries (%s); holding the batch, not committing",
                    op, rounds, exc, extra={"store": "milvus", "op": op},
                )
                await asyncio.sleep(self._milvus_settings.retry_backoff_max_s)

    class _StageTimer:
        def __init__(self, outcome: BatchOutcome, stage: str) -> None:
            self.outcome, self.stage = outcome, stage

        def __enter__(self) -> None:
            self.started = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            seconds = time.perf_counter() - self.started
            self.outcome.stage_ms[self.stage] = self.outcome.stage_ms.get(self.stage, 0.0) + seconds * 1000
            metrics.STAGE_DURATION.labels(self.stage).observe(seconds)

    def _stage(self, outcome: BatchOutcome, stage: str) -> BatchProcessor._StageTimer:
        return BatchProcessor._StageTimer(outcome, stage)

    def _count(self, outcome: BatchOutcome, started: float) -> None:
        now = time.time()
        for v in outcome.verdicts:
            metrics.VERDICTS.labels(v.label, "cache" if v.from_cache else "model").inc()
            if v.from_cache:
                metrics.CACHE_HITS.inc()
            if v.created_at is not None:
                metrics.EVENT_LATENCY.observe(max(0.0, now - v.created_at.timestamp()))
        for d in outcome.dead_letters:
            metrics.DEAD_LETTERS.labels(d.reason).inc()
        for a in outcome.alerts:
            metrics.ALERTS.labels(a.severity).inc()
        metrics.ALERTS_SUPPRESSED.inc(outcome.suppressed_alerts)
        metrics.EVENTS_REDELIVERED.inc(len(outcome.skipped))
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)
        metrics.LAST_BATCH_TIMESTAMP.set(now)
        self.batches += 1
        _log.debug(
            "batch: %d verdicts, %d alerts, %d dead letters, %d skipped",
            len(outcome.verdicts), len(outcome.alerts), len(outcome.dead_letters), len(outcome.skipped),
            extra={"stage_ms": {k: round(v, 1) for k, v in outcome.stage_ms.items()}},
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_processor(
    settings: Settings,
    sink: Sink,
    *,
    classifier: Classifier | None = None,
    index: EmbeddingIndex | None = None,
    dedup: DedupStore | None = None,
    waves: WaveCounter | None = None,
    fetcher: ImageFetcher | None = None,
) -> BatchProcessor:
    """A processor wired to the real services named in ``settings``; pass any dependency to override it.

    Loads the model when ``classifier`` is None (slow: seconds). Store clients connect lazily, so this
    does not fail when Milvus or Redis is down.
    """
    from vitguard.fetch import ImageFetcher
    from vitguard.model import load_classifier
    from vitguard.stores import MilvusEmbeddingIndex, RedisDedupStore, RedisWaveCounter

    kwargs: dict[str, Any] = {
        "classifier": classifier or load_classifier(settings.model),
        "fetcher": fetcher or ImageFetcher(settings.fetch),
        "index": index or MilvusEmbeddingIndex(settings.milvus),
        "dedup": dedup or RedisDedupStore(settings.redis),
        "waves": waves or RedisWaveCounter(settings.redis, settings.policy),
    }
    return BatchProcessor(
        **kwargs, sink=sink, policy=settings.policy, batch=settings.batch, milvus=settings.milvus
    )
