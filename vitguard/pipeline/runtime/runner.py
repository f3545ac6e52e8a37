"""The runner: composes the stages, and owns ordering, concurrency, batching and the failure policy.

```
submit(raw) ─▶ intake: records taken in batches (group commit), each batch through the front half:
                 ingest (parse, redelivery guard: one lookup) ─▶ fetch (+hash; local references in one hop)
                 ─▶ verdict cache (one lookup) ─▶ decode (a few pool jobs)       remote fetches and video: alone
                                                   │ dead letter / cache hit / skipped
               ready queue ◀────────────────────────┘
batch loop:    when the model is idle, take what is ready now (up to max_size images; /classify requests
               first, at most half of a short pass of request_max_size while stream images wait)
               ─▶ infer: ONE forward pass ─▶ the back half's queue     (:mod:`~vitguard.pipeline.runtime.batch_loop`;
               a pass's /classify requests are answered at once, on a task of their own: no side effects)
back half:     completion loop: match (banks) ─▶ index (near-duplicates, clusters, Milvus upsert) ─▶ alert
               publish loop: emit (fitted, acked) ─▶ remember (Redis) ─▶ each event's future resolves
               (:mod:`~vitguard.pipeline.runtime.back_half`: the next group's Milvus calls overlap publishing)
```

A slow image holds nobody: it joins a batch when it is decoded, or ends as its own ``fetch_timeout`` dead
letter. An event's future resolves after its Milvus upsert, publish and Redis write; only then may the agent
commit its offset, in order per partition (an unanswered event holds back the commit of later ones only).

Failures: an input problem is that event's dead letter; Redis degrades; Milvus holds (the stream's groups wait,
and the batch loop runs passes of /classify requests only meanwhile, so requests are still answered); a
:class:`~vitguard.errors.FatalError` (or a bug in the runner's own loops) fails every pending event's future
and declares it fatal (:meth:`~vitguard.health.HealthState.declare_fatal`): the worker exits non-zero rather
than run on in a broken state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from vitguard import metrics
from vitguard.errors import FatalError, ServiceUnavailableError
from vitguard.health import HealthState
from vitguard.kafka.limits import UNREAD_TOPIC_LIMIT
from vitguard.media import FrameLimits
from vitguard.model.types import Classifier
from vitguard.pipeline.core import cache_key
from vitguard.pipeline.results import ItemResult, batch_outcome
from vitguard.pipeline.runtime.back_half import BackHalf
from vitguard.pipeline.runtime.batch_loop import BatchLoop
from vitguard.pipeline.runtime.batcher import ReadyQueue, Work
from vitguard.pipeline.runtime.completion import Completer, Outcome, Probed
from vitguard.pipeline.runtime.failure import Backoff, MilvusPolicy, PublishPolicy, RedisPolicy
from vitguard.pipeline.runtime.front import FrontHalf
from vitguard.pipeline.runtime.in_flight import InFlight
from vitguard.pipeline.runtime.intake import Entry, StreamIntake
from vitguard.pipeline.runtime.pools import PriorityPool, named_pool
from vitguard.pipeline.stages.emit import Emitter
from vitguard.pipeline.types import BatchOutcome, ImageRequest, OutputTopics, RawMessage, Sink, TopicLimits
from vitguard.policies.live import PolicyHolder
from vitguard.policy import resolve_unsafe_labels
from vitguard.schemas.events import Verdict
from vitguard.settings import BatchSettings, FrameSettings, MilvusSettings, PolicySettings, ReviewSettings
from vitguard.stores.interfaces import ClusterRows, DedupStore, EmbeddingIndex, WaveCounter

if TYPE_CHECKING:
    from vitguard.fetch import ImageFetcher

__all__ = ["Runner"]

_log = logging.getLogger(__name__)

_STORE_THREADS = 2
"""Threads for Milvus calls (each call has a deadline: ``VITGUARD_MILVUS_CALL_TIMEOUT_S``)."""

_PUBLISHING_GRACE_S = 3.0
"""How long closing waits for the group being published (acknowledgements and Redis writes) to finish."""


class Runner:
    """Moderates events submitted one by one, in adaptive micro-batches, and publishes through a sink.

    Args:
        classifier: the loaded model (its ``info`` names verdicts, the cache and the Milvus collection).
        fetcher: gets image bytes for ``image_ref``.
        index: the embedding store (Milvus in production).
        dedup, waves, cluster_rows: redelivery guard and verdict cache, wave counter, clusters' rows (Redis).
        sink: per-message delivery results.
        policy: unsafe labels and threshold (the built-in policy), near-duplicate threshold, wave rules.
        batch: ``max_size``, ``max_wait_s`` (linger bound) and ``decode_workers``.
        milvus: backoff and call deadline of the store calls.
        frames: sampling and limits of animations and video, frames per item per pass (fair batching).
        topics: output topics.
        limits: largest message per output topic in bytes (read from the broker at start-up).
        health: where the runner and its policies record their condition (shared with the web views).
        fetch_total_timeout_s: longest any one image may take to fetch.
        publish_timeout_s, publish_backoff_max_s: longest round of acknowledgements, and wait between rounds.
        max_in_flight: events submitted and not yet answered, at most (``submit`` waits past it).
        on_fatal: called once with the first fatal error (the runner's or anyone's that shares ``health``).
        on_hold: called with True when Milvus starts holding batches and False when it recovers.
        clock: wall clock in seconds (wave windows); tests pass a fake one.
        policies: the policy document in force (the worker follows it); default: ``policy`` and ``review``.

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
        frames: FrameSettings | None = None,
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
        review: ReviewSettings | None = None,
        hash_pdq: bool = True,
        policies: PolicyHolder | None = None,
        cluster_rows: ClusterRows | None = None,
    ) -> None:
        self.info = classifier.info
        self.fetcher = fetcher
        self.index = index
        self.dedup = dedup
        self.batch = batch
        self.frames = frames or FrameSettings()
        self.topics = topics or OutputTopics("verdicts", "alerts", "dead-letters")
        self.health = health or HealthState()
        self.health.model_loaded = True
        self.unsafe_labels = resolve_unsafe_labels(self.info.labels, policy, self.info.unsafe_labels)
        band = (review.uncertain_low, review.uncertain_high) if review is not None else None
        self.policies = policies or PolicyHolder.from_settings(policy, self.info.labels, self.unsafe_labels, band)
        f = self.frames
        self.cache_key = cache_key(self.info, self.unsafe_labels, policy.unsafe_threshold,
                                   (f.max_frames, f.video_fps, f.video_sampling, f.worst_frames))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decode_pool = PriorityPool(
            batch.decode_workers, "vitguard-decode", job_timeout_s=batch.decode_timeout_s,
            max_stuck=batch.decode_workers, on_stuck=functools.partial(
                self._jobs_stuck, "decode", "VITGUARD_BATCH_DECODE_TIMEOUT_S", "a decoder that does not return"))
        self._infer_pool = named_pool(1, "vitguard-infer")
        milvus_deadline_s = max(milvus.call_timeout_s, milvus.load_timeout_s) + 5.0
        self._milvus_check_s = milvus.connect_timeout_s + milvus.call_timeout_s
        # the policy stops waiting for a Milvus call at its deadline; a thread still in the call at twice that
        # is in a client that ignores its own timeout: replaced, and a restart once more are stuck than run
        self._store_pool = PriorityPool(
            _STORE_THREADS, "vitguard-milvus", job_timeout_s=2 * milvus_deadline_s, max_stuck=_STORE_THREADS,
            on_stuck=functools.partial(self._jobs_stuck, "Milvus", "VITGUARD_MILVUS_CALL_TIMEOUT_S",
                                       "a client call that ignores its timeout"))
        self.redis = RedisPolicy(self.health)
        self.milvus = MilvusPolicy(self.health, self._store_pool, call_timeout_s=milvus_deadline_s, on_hold=on_hold,
                                   backoff=Backoff(milvus.retry_backoff_s, milvus.retry_backoff_max_s))
        self.emitter = Emitter(
            sink, self.topics, TopicLimits(UNREAD_TOPIC_LIMIT, dict(limits or {})),
            PublishPolicy(self.health, backoff=Backoff(0.5, publish_backoff_max_s), timeout_s=publish_timeout_s),
            review=review, policies=self.policies,
        )
        self.completer = Completer(
            info=self.info, index=index, dedup=dedup, waves=waves, policy=policy, redis=self.redis,
            milvus=self.milvus, emitter=self.emitter, cache_key=self.cache_key, clock=clock, policies=self.policies,
            cluster_rows=cluster_rows,
        )
        self.front = FrontHalf(
            classifier=classifier, fetcher=fetcher, dedup=dedup, redis=self.redis, cache_key=self.cache_key,
            pool=self._decode_pool, request_pool=self._decode_pool.urgent,
            frames=FrameLimits.from_settings(self.frames), hash_pdq=hash_pdq, decode_jobs=batch.decode_workers,
            decode_budget_s=batch.decode_timeout_s / 4, policies=self.policies,
            fetch_timeout_s=fetch_total_timeout_s or (fetcher.settings.connect_timeout_s
                                                      + fetcher.settings.read_timeout_s + 2.0),
        )
        self.in_flight = InFlight(self.health, self.front, max_in_flight)
        self.ready = ReadyQueue(batch.max_size, batch.max_wait_s, lambda: self.intake.in_front,
                                batch.order_wait_s, per_item=self.frames.per_batch,
                                request_max_size=batch.request_max_size or None)
        self.intake = StreamIntake(self.front, self.ready, settle=self._settle, fail=self._fail_all)
        self.back_half = BackHalf(self.completer, max_images=batch.max_size, settle=self._settle,
                                  fail=self._fail_all, stopped=lambda: self._fatal is not None or self._closed)
        self.batch_loop = BatchLoop(
            self.ready, classifier, self._infer_pool, policies=self.policies,
            worst_frames=self.frames.worst_frames, back_half=self.back_half.queue,
            completer=self.completer, settle=self._settle)
        self._loops: list[asyncio.Task[None]] = []
        self._fatal: BaseException | None = None
        self._closed = False
        self._refusing_requests = False
        self._classifying: set[asyncio.Task[Verdict | Probed]] = set()  # what refuse_requests cancels
        metrics.MODEL_INFO.labels(
            self.info.name, self.info.version, self.info.backend, str(self.info.embedding_dim)
        ).set(1)
        self.health.add_fatal_hook(self._stop_for_good)
        if on_fatal is not None:
            self.health.add_fatal_hook(on_fatal)

    # ------------------------------------------------------------------ lifecycle

    @property
    def collection(self) -> str | None:
        """The model's Milvus collection, once the first batch (or :meth:`ensure_collection`) created it."""
        return self.completer.collection

    @property
    def batches(self) -> int:
        """Groups fully processed (outputs acknowledged) since start."""
        return self.back_half.groups

    @property
    def closed(self) -> bool:
        """True once the worker began stopping (:meth:`refuse_requests` or :meth:`close`)."""
        return self._closed or self._refusing_requests

    def refuse_requests(self) -> None:
        """The worker is stopping: every ``POST /classify`` in flight or still to come fails now with
        :class:`~vitguard.errors.ServiceUnavailableError` (the web view answers 503 ``shutting_down``), so
        none holds the web server's stop, which waits for its handlers, past the shutdown deadline. The
        stream goes on until :meth:`close`."""
        self._refusing_requests = True
        for task in list(self._classifying):
            task.cancel()

    async def start(self) -> None:
        """Start the batch loop and the back half's loops (idempotent). Does not wait for Milvus."""
        if self._closed:
            raise RuntimeError("the runner is closed")
        if not self._loops:
            self._loop = asyncio.get_running_loop()
            self._loops = [
                asyncio.create_task(self._guarded(self.batch_loop.run), name="vitguard-batch-loop"),
                asyncio.create_task(self._guarded(self.back_half.completion_loop), name="vitguard-completion-loop"),
                asyncio.create_task(self._guarded(self.back_half.publish_loop), name="vitguard-publish-loop"),
            ]

    async def ensure_collection(self) -> str:
        return await self.completer.ensure_collection()

    async def check_dependencies(self) -> None:
        """Before the worker consumes: create or check the model's Milvus collection, ask Redis once. A refusal
        that waiting will not fix (a wrong token or password, a collection of another dimension, a Lite file
        another worker holds) raises :class:`~vitguard.errors.FatalError` before the group join, not on the
        first batch after it (each restart would move the group's partitions) nor never (Redis degrades); a
        dependency that does not answer is left to its failure policy (Milvus holds, Redis degrades)."""
        await self.completer.check_collection(self._milvus_check_s)
        check = getattr(self.dedup, "check", None)
        if callable(check):
            await self.redis.once("ping", check)

    async def close(self) -> None:
        """Stop the loops, cancel what is in flight (never answered, so never committed), release resources.

        A group being published is let finish first (its Redis writes included, at most
        :data:`_PUBLISHING_GRACE_S`): outputs that reach the broker while their events stay unremembered would
        be answered a second time by the worker that takes the partition over."""
        self._closed = True
        await self.back_half.finish_publishing(_PUBLISHING_GRACE_S)
        tasks = [*self._loops, *self.batch_loop.answering, *self.intake.cancel()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.in_flight.cancel_all()
        stores = (self.fetcher, self.dedup, self.completer.waves, self.completer.cluster_rows, self.emitter.sink)
        for closer in (getattr(store, "close", None) for store in stores):
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
        self.intake.add(Entry(raw, consumed_ms, fut, self.ready.expect((raw.topic, raw.partition))))
        return fut

    async def process(self, raws: Sequence[RawMessage]) -> BatchOutcome:
        """Moderate ``raws`` as one batch: the stream's front half, then they join the ready queue together, so
        they share forward passes (up to ``max_size`` images each). The outcome answers each message exactly
        once (or skips it). For replays, tools and tests; the stream uses :meth:`submit`.
        """
        now_ms = time.time() * 1000
        entries = [Entry(r, now_ms, await self._admit(), self.ready.expect((r.topic, r.partition))) for r in raws]
        self.intake.enqueue(await self.intake.prepare_all(entries))
        return batch_outcome(await asyncio.gather(*(e.future for e in entries)))

    async def classify(self, *, data: bytes | None = None, image_ref: str | None = None,
                       content_id: str | None = None, tenant: str = "default", surface: str | None = None,
                       policy: str | None = None) -> Verdict:
        """Moderate one image now (``POST /classify``), under ``policy`` or else ``tenant``'s (and ``surface``'s):
        the same stages and batches as the stream, no side effects; ahead of stream images in the next batch.

        Raises:
            InputError: the reference or the bytes are unusable, or no policy has that name; ``reason`` says why.
        """
        return cast(Verdict, await self._request(ImageRequest(data, image_ref, content_id, tenant, surface, policy),
                                                 probe=False))

    async def probe(self, *, data: bytes | None = None, image_ref: str | None = None,
                    tenant: str = "default") -> Probed:
        """:meth:`classify`, answering the embedding the verdict was judged on too (``POST /search`` by image)."""
        return cast(Probed, await self._request(ImageRequest(data, image_ref, tenant=tenant), probe=True))

    async def _request(self, request: ImageRequest, *, probe: bool) -> Verdict | Probed:
        if self._fatal is not None:
            raise self._fatal
        if self.closed:
            raise ServiceUnavailableError("the worker is stopping")
        await self.start()
        task = asyncio.ensure_future(self._classify(request, probe))
        self._classifying.add(task)
        try:
            return await task  # a cancel of the request itself (the client went away) cancels it too
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if self.closed and not (caller is not None and caller.cancelling()):
                raise ServiceUnavailableError("the worker is stopping") from None
            raise
        finally:
            self._classifying.discard(task)

    async def _classify(self, request: ImageRequest, probe: bool) -> Verdict | Probed:
        decoded = await self.front.prepare_request(request)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.in_flight.track(fut, request=True)
        self.ready.put(Work(decoded, fut, request=True, probe=probe))
        return cast("Verdict | Probed", await fut)

    # ------------------------------------------------------------------ front half

    async def _admit(self) -> asyncio.Future[ItemResult]:
        if self._fatal is not None:
            raise self._fatal
        await self.start()
        return await self.in_flight.admit()

    # ------------------------------------------------------------------ futures and failures

    def _settle(self, fut: asyncio.Future[Any], outcome: Outcome, *, slot: bool = True) -> None:
        self.in_flight.settle(fut, outcome, slot=slot)

    async def _guarded(self, loop_fn: Callable[[], Any]) -> None:
        """Run one of the runner's loops; if it ever ends by an exception, the runner is broken: go fatal."""
        try:
            await loop_fn()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            _log.critical("runner loop %s crashed: %r", getattr(loop_fn, "__name__", loop_fn), exc, exc_info=True)
            self._fail_all(exc if isinstance(exc, FatalError) else FatalError(f"runner loop crashed: {exc!r}"))

    def _jobs_stuck(self, pool: str, setting: str, likely: str, stuck: int) -> None:
        """From a pool's watchdog thread: more of its jobs stuck past their deadline than it has threads.
        Python cannot kill a thread, so the worker stops (exit code 1) and a restart reclaims them."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        exc = FatalError(f"{stuck} {pool} jobs are still running past their deadline ({setting}; {likely}); "
                         "restart the worker to reclaim their threads")
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the worker is stopping anyway
            loop.call_soon_threadsafe(self._fail_all, exc)

    def _fail_all(self, exc: BaseException) -> None:
        """The runner cannot go on: declared where every fatal error is (:meth:`HealthState.declare_fatal`),
        which records it, stops the worker and calls :meth:`_stop_for_good`."""
        self.health.declare_fatal(exc)

    def _stop_for_good(self, exc: BaseException) -> None:
        """A fatal error (the runner's, the agent's, a start-up check's): every pending event's future gets it,
        nothing is answered or committed, and submissions fail from now on."""
        self._fatal = exc
        self.in_flight.fail_all(exc)
