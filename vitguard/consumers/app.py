"""The Faust app: a thin agent that feeds the pipeline's runner, the runner owned by the app, and web views.

Who owns what:

* The **runner** (:class:`~vitguard.pipeline.runtime.runner.Runner`: thread pools, HTTP session, store clients) is
  owned by a ``mode.Service`` that the app starts and stops (:class:`RunnerService`), not by the agent body:
  the agent can be (re)started at any time and always finds working resources.
* The **agent** iterates events one by one, ``incref``-s each message (so Faust's automatic ack never
  makes it committable), submits it to the runner, and gives every answered event to the
  :class:`~vitguard.consumers.offsets.OffsetTracker`, which acks per partition in offset order. Nothing that
  was not answered is ever acked, so nothing abandoned is ever committed, with or without a committed
  offset for the group.
* **Failures**: an exception that escapes the agent loop, a runner loop crash or a
  :class:`~vitguard.errors.FatalError` (authorization, a store that cannot fit the model) calls
  :meth:`WorkerRuntime.fatal`: the unanswered events are abandoned, ``/livez`` and ``/readyz`` fail and the
  worker exits non-zero within the shutdown timeout, for the orchestrator to restart it. A restarted worker
  rejoins the group and gets the uncommitted events again.
* **Backpressure**: at most ``VITGUARD_WORKER_MAX_IN_FLIGHT`` events are unanswered; while Milvus holds a
  batch the consumer's partitions are paused, and resumed when it recovers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitguard import metrics
from vitguard.consumers.checks import DependencyChecks
from vitguard.consumers.offsets import OffsetTracker
from vitguard.errors import FatalError
from vitguard.health import HealthState
from vitguard.kafka.limits import PRODUCER_MAX_REQUEST_BYTES, UNREAD_TOPIC_LIMIT
from vitguard.pipeline.results import ItemResult
from vitguard.pipeline.runtime.build import build_runner
from vitguard.pipeline.runtime.runner import Runner
from vitguard.pipeline.types import RawMessage
from vitguard.settings import Settings

__all__ = ["WorkerRuntime", "consume", "create_app", "raw_message"]

_log = logging.getLogger(__name__)

_METADATA_TIMEOUT_S = 3.0


@dataclass
class WorkerRuntime:
    """What the agent, the runner's service and the web views share."""

    settings: Settings
    runner: Runner
    health: HealthState
    started: asyncio.Event = field(default_factory=asyncio.Event)
    tracker: OffsetTracker | None = None
    seek: Callable[[Any, int], Any] | None = None
    """Moves a partition's fetch position (the app's consumer); used to re-fetch a hole in the delivery."""
    accept_gap: Callable[[Any, int, int], Any] | None = None
    """Tells the consumer that offsets [start, end) of a partition were re-fetched and hold no records."""
    positions: Callable[[], Any] | None = None
    """Returns {partition: fetch position} for the assigned input partitions (the tail check)."""
    idle_since: float | None = None
    """When the agent last started waiting for the next event (None while it handles one)."""
    agent_runs: int = 0
    _expected_before_start: dict[Any, int] = field(default_factory=dict)
    """Start offsets of partitions assigned before the agent made its tracker (applied when it does)."""
    checks: DependencyChecks = field(init=False)
    """The broker and Milvus, asked in the background; ``/readyz`` reads their last answers."""

    @property
    def processor(self) -> Runner:  # the name the web views and tests used before the runner existed
        return self.runner

    def __post_init__(self) -> None:
        self.health.add_fatal_hook(self._abandon)
        ping = getattr(getattr(self.runner, "index", None), "ping", None)
        self.checks = DependencyChecks({
            "broker": functools.partial(_metadata_ok, self.settings),
            "milvus": (lambda: bool(ping())) if ping is not None else (lambda: True),
        })

    def fatal(self, exc: BaseException) -> None:
        """The worker cannot go on: declared once, in :meth:`HealthState.declare_fatal`, which abandons what is
        unanswered (uncommitted), fails health, and makes the worker process exit non-zero."""
        self.health.declare_fatal(exc)

    def _abandon(self, exc: BaseException) -> None:
        if self.tracker is not None:
            abandoned = self.tracker.abandon_all()
            if abandoned:
                _log.warning("%d unanswered event(s) abandoned uncommitted; they will be redelivered", abandoned)

    def expect(self, tp: Any, offset: int) -> None:
        """A partition was assigned; its delivery starts at ``offset`` (its committed offset), no seek."""
        if self.tracker is not None:
            self.tracker.expect(tp, offset)
        else:
            self._expected_before_start[tp] = offset

    def rewound(self, tp: Any, offset: int) -> None:
        """A partition's fetch position was moved to ``offset`` (a rewind to the committed offset)."""
        if self.tracker is not None:
            self.tracker.rewound(tp, offset)

    def broker_reachable(self) -> bool:
        """The last answer of the background broker check (a metadata request); never waits."""
        return self.checks.reachable("broker")

    def milvus_reachable(self) -> bool:
        """The last answer of the background Milvus check (a cheap call); never waits."""
        return self.checks.reachable("milvus")


def raw_message(event: Any) -> RawMessage:
    """The pipeline's view of a Faust event's message (with the broker timestamp, in ms)."""
    m = event.message
    ts = getattr(m, "timestamp", None)
    return RawMessage(value=m.value, key=m.key, topic=m.topic, partition=m.partition, offset=m.offset,
                      timestamp_ms=int(ts * 1000) if isinstance(ts, int | float) and ts > 0 else None)


def _metadata_ok(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    from vitguard.kafka.config import librdkafka_config

    try:
        AdminClient(librdkafka_config(settings.kafka)).list_topics(
            timeout=min(_METADATA_TIMEOUT_S, settings.kafka.request_timeout_s))
    except Exception:
        return False
    return True


def _start_banks(runtime: WorkerRuntime) -> Any:
    """The hash banks: read the banks topic, then follow it in a thread (None when banks are off).

    Started before the runner, so no image is matched against half-loaded banks; a banks topic that cannot
    be read within VITGUARD_BANKS_LOAD_TIMEOUT_S fails the start-up.
    """
    settings = runtime.settings
    if not settings.banks.enabled:
        return None
    from vitguard.banks import BankFollower, matcher_for

    matcher = matcher_for(settings.banks)
    follower = BankFollower(settings.kafka, settings.banks, matcher, topics=settings.topics)
    follower.start()
    runtime.runner.completer.matcher = matcher
    return follower


def _make_runner_service(runtime: WorkerRuntime, read_limits: Callable[[], dict[str, int]] | None) -> Any:
    from mode import Service

    class RunnerService(Service):  # type: ignore[misc]
        """Starts the runner with the app (and reads the output topics' size limits); closes it on stop."""

        async def on_start(self) -> None:
            if read_limits is not None:
                try:
                    limits = await asyncio.to_thread(read_limits)
                except Exception as exc:  # the limits default to Kafka's; say so once
                    _log.warning("could not read the output topics' size limits (%s); assuming %d bytes", exc,
                                 UNREAD_TOPIC_LIMIT)
                else:
                    runtime.runner.emitter.limits.update(limits)
            self.banks = await asyncio.to_thread(_start_banks, runtime)
            runtime.checks.start()
            try:
                await runtime.runner.check_dependencies()
            except FatalError as exc:  # stop before the consumer joins the group
                runtime.fatal(exc)
                return
            await runtime.runner.start()
            runtime.started.set()

        async def on_stop(self) -> None:
            runtime.started.clear()
            await runtime.checks.stop()
            if runtime.tracker is not None:
                runtime.tracker.abandon_all()
            await runtime.runner.close()
            if getattr(self, "banks", None) is not None:
                await asyncio.to_thread(self.banks.stop)

    return RunnerService()


def create_app(
    settings: Settings,
    *,
    runner: Runner | None = None,
    read_limits: bool = True,
    **runner_overrides: Any,
) -> Any:
    """Build the Faust app (not started): the moderation agent, the runner's service and the web views.

    Args:
        settings: everything; topics, batching, web server and the consumer group come from here.
        runner: a ready runner whose sink must be this app's; normally None, and one is built with
            :func:`~vitguard.pipeline.runtime.runner.build_runner` publishing through the app's producer.
        read_limits: read the output topics' ``max.message.bytes`` from the broker when the app starts.
        runner_overrides: passed to ``build_runner`` (``classifier=``, ``index=``, ``dedup=`` ...).

    Returns:
        ``faust.App``, with ``app.vitguard`` holding the :class:`WorkerRuntime`.
    """
    import os
    import tempfile

    import faust

    from vitguard.consumers.sink import FaustSink
    from vitguard.consumers.web import register_views
    from vitguard.kafka.config import faust_broker_kwargs

    kafka = settings.kafka
    producer_max_request = PRODUCER_MAX_REQUEST_BYTES
    app = faust.App(
        kafka.consumer_group,
        # broker, broker_consumer (our fetch wait, vitguard.kafka.faust_consumer), client id, credentials
        **faust_broker_kwargs(kafka),
        broker_rebalance_timeout=kafka.rebalance_timeout_s,
        broker_session_timeout=kafka.session_timeout_s,
        broker_request_timeout=max(kafka.request_timeout_s, kafka.session_timeout_s + 5),
        broker_heartbeat_interval=min(3.0, kafka.session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=producer_max_request,
        value_serializer="raw",
        key_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        # Faust's <app-id>-data/ directory goes under the system temp dir, not the working directory.
        datadir=os.path.join(tempfile.gettempdir(), "vitguard-faust-{conf.name}-data"),
        stream_wait_empty=False,  # shutdown never waits for unanswered events: they stay uncommitted
        web_enabled=settings.web.enabled,
        web_bind=settings.web.host,
        web_port=settings.web.port,
        web_host=settings.web.host,
        web_application_options={"client_max_size": settings.fetch.max_bytes + 64 * 1024},
    )
    topics = settings.topics
    health = HealthState()

    def on_hold(holding: bool) -> None:
        _pause(app, holding)

    if runner is None:
        runner = build_runner(settings, FaustSink(app), health=health, on_hold=on_hold, **runner_overrides)
    else:
        runner.milvus.on_hold = runner.milvus.on_hold or on_hold
    runtime = WorkerRuntime(settings, runner, runner.health)
    app.vitguard = runtime  # type: ignore[attr-defined]
    runtime.seek = lambda tp, offset: app.consumer.seek(tp, offset)
    runtime.accept_gap = lambda tp, start, end: _accept_gap(app.consumer, tp, start, end)
    runtime.positions = lambda: _input_positions(app.consumer, topics.images)
    app.vitguard_input_topic = topics.images  # type: ignore[attr-defined]

    limits_reader: Callable[[], dict[str, int]] | None = None
    if read_limits:
        from vitguard.kafka.limits import read_output_limits

        def limits_reader() -> dict[str, int]:
            return read_output_limits(kafka, [topics.verdicts, topics.alerts, topics.dead_letters],
                                      producer_max_request, kafka.request_timeout_s)

    app.add_dependency(_make_runner_service(runtime, limits_reader))
    images = app.topic(topics.images, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(images, name="vitguard.moderate")
    async def moderate(stream: Any) -> None:
        await consume(stream, runtime)

    @app.on_partitions_assigned.connect  # type: ignore[misc,arg-type]
    async def expect_committed(sender: Any, assigned: Any, **_: Any) -> None:
        await expect_from_committed(app.consumer, {tp for tp in assigned if tp.topic == topics.images},
                                    on_expect=runtime.expect)

    register_views(app, runtime)
    return app


async def _accept_gap(consumer: Any, tp: Any, start: int, end: int) -> None:
    accept = getattr(consumer, "accept_gap", None)
    if accept is not None:
        await accept(tp, start, end)


async def _input_positions(consumer: Any, topic: str) -> dict[Any, int]:
    positions: dict[Any, int] = {}
    paused = set(getattr(consumer, "_paused_partitions", ()) or ())
    for tp in consumer.assignment():
        if tp.topic != topic or tp in paused:
            continue
        try:
            pos = await consumer.position(tp)
        except Exception as exc:  # not assigned any more (a rebalance in progress): nothing to check
            _log.debug("no fetch position for %s: %s", tp, exc)
            continue
        if pos is not None:
            positions[tp] = int(pos)
    return positions


async def _start_offsets(consumer: Any, assigned: set[Any]) -> dict[Any, int]:
    """Each partition's committed offset, or its beginning where nothing is committed (read, no seek)."""
    committed = await consumer.committed_offsets(assigned)
    positions = {tp: int(committed[tp]) for tp in assigned if committed.get(tp)}
    missing = [tp for tp in assigned if tp not in positions]
    if missing:
        earliest = await consumer.earliest_offsets(*missing)
        positions.update({tp: int(earliest.get(tp) or 0) for tp in missing})
    return positions


async def expect_from_committed(consumer: Any, assigned: set[Any],
                                on_expect: Callable[[Any, int], object]) -> dict[Any, int]:
    """After a rebalance, tell the offset tracker where each assigned input partition starts; no seek.

    At a generation change Faust drops the records it had fetched but not yet delivered, and it does not
    always seek a partition it keeps (never one with no committed offset): the fetch position can then stand
    past those records. The tracker, told the committed offset, takes the first delivery past it (or past
    what it was delivered already) for a hole and re-fetches from there; a tail with nothing after it is
    found by the tail check. A partition whose delivery starts where it should is not sought at all: an
    unconditional rewind here delivered every record a second time at start-up. Returns the offsets.
    """
    if not assigned:
        return {}
    positions = await _start_offsets(consumer, assigned)
    for tp, offset in positions.items():
        on_expect(tp, offset)
    _log.info("partitions assigned; input partitions start at their committed offsets: %s",
              {str(tp): offset for tp, offset in sorted(positions.items(), key=str)})
    return positions


async def rewind_to_committed(consumer: Any, assigned: set[Any],
                              on_rewound: Callable[[Any, int], object] | None = None) -> dict[Any, int]:
    """Put every given input partition at its committed offset (its beginning if none), and say so.

    Used when consumption resumes after a Milvus hold: records fetched but not delivered when the pause came
    may have been dropped with the fetch position already past them. Reading again from the committed offset
    redelivers them; what was answered already is skipped by the redelivery guard. Returns the new positions.
    """
    if not assigned:
        return {}
    positions = await _start_offsets(consumer, assigned)
    for tp, offset in positions.items():
        if not await _seek(consumer.seek, tp, offset):
            continue
        if on_rewound is not None:
            on_rewound(tp, offset)
    _log.info("after the rebalance, input partitions rewound to their committed offsets: %s",
              {str(tp): offset for tp, offset in sorted(positions.items(), key=str)})
    return positions


def _pause(app: Any, holding: bool) -> None:
    """Pause (or resume) every assigned partition: no fetching while Milvus holds the batch path."""
    consumer = getattr(app, "consumer", None)
    if consumer is None:
        return
    try:
        assigned = consumer.assignment()
        if holding:
            consumer.pause_partitions(assigned)
            _log.warning("consumption paused on %d partition(s) while Milvus is failing", len(assigned))
        else:
            consumer.resume_partitions(assigned)
            _log.warning("consumption resumed")
            # records fetched but not delivered when the pause came may have been dropped with the fetch
            # position already past them: read again from the committed offsets (duplicates are answered once)
            inputs = {tp for tp in assigned if tp.topic == getattr(app, "vitguard_input_topic", tp.topic)}
            runtime = getattr(app, "vitguard", None)
            asyncio.ensure_future(rewind_to_committed(
                consumer, inputs, on_rewound=runtime.rewound if runtime is not None else None))
    except Exception:  # pausing is an optimisation: the in-flight bound already holds the stream
        _log.warning("could not %s the partitions", "pause" if holding else "resume", exc_info=True)


async def _seek(seek: Callable[[Any, int], Any], tp: Any, offset: int) -> bool:
    """Seek ``tp`` to ``offset``; False, logged, when the consumer refuses because a rebalance revoked the
    partition between the decision and the seek (aiokafka's ``IllegalStateError``, or an assertion
    mid-rebalance). Its new owner starts from the committed offset, which never passes a record being
    re-fetched, so nothing is lost; stopping the worker for it would turn every rolling deploy into restarts.
    Any other failure (a consumer thread that does not carry the seek out: ``SeekTimeoutError``) raises: a
    hole that cannot be re-fetched would hold the partition's commits for good."""
    from aiokafka.errors import IllegalStateError

    try:
        await seek(tp, offset)
    except (IllegalStateError, AssertionError) as exc:
        _log.warning("%s: seek to %d refused (%s: %s); the partition is no longer ours, its next owner reads from "
                     "the committed offset", tp, offset, type(exc).__name__, exc)
        return False
    return True


async def _refetch(runtime: WorkerRuntime, tp: Any, offset: int, revealed_at: int) -> None:
    metrics.OFFSET_HOLES.inc()
    _log.warning("%s: offset %d was not delivered before offset %d; re-fetching from %d (nothing past it is "
                 "committed)", tp, offset, revealed_at, offset)
    if runtime.seek is not None:
        await _seek(runtime.seek, tp, offset)


TAIL_CHECK_S = 2.0
"""How often an idle agent compares each input partition's fetch position with what it was delivered."""


async def _check_tails(runtime: WorkerRuntime, tracker: OffsetTracker, interval_s: float = TAIL_CHECK_S) -> None:
    """Re-fetch records that were fetched but never delivered at the end of a partition.

    A hole in the middle of a partition is revealed by the next delivered offset (:class:`OffsetTracker`).
    Records dropped at the *end* (at a rebalance or a pause, with nothing published after them yet) reveal
    nothing: the consumer's position is past them and no later record comes. So while the agent waits for
    events, a partition whose fetch position stays ahead of the next offset it was delivered, for two checks
    in a row, is sought back to that offset, once per (delivered, position) pair. A tail that holds no records
    (a transaction marker) is therefore read once more and then left alone.
    """
    from vitguard.kafka.faust_consumer import SeekTimeoutError

    seen: dict[Any, tuple[int, int]] = {}
    probed: dict[Any, tuple[int, int]] = {}
    while True:
        await asyncio.sleep(interval_s)
        try:
            seen = await _check_tails_once(runtime, tracker, interval_s, seen, probed)
        except asyncio.CancelledError:
            raise
        except SeekTimeoutError as exc:  # the consumer thread is stuck: as in the agent loop, the worker stops
            runtime.fatal(exc)
            return
        except Exception:  # a background check must never end silently: try again on the next round
            _log.exception("checking the partitions' tails failed; next check in %.0f s", interval_s)
            seen = {}


async def _check_tails_once(runtime: WorkerRuntime, tracker: OffsetTracker, interval_s: float,
                            seen: dict[Any, tuple[int, int]],
                            probed: dict[Any, tuple[int, int]]) -> dict[Any, tuple[int, int]]:
    """One round of :func:`_check_tails`; returns the (delivered, position) pairs seen."""
    idle = runtime.idle_since
    if runtime.positions is None or runtime.seek is None or idle is None or time.monotonic() - idle < interval_s:
        return {}
    try:
        positions = await runtime.positions()
    except Exception as exc:
        _log.debug("fetch positions unavailable: %s", exc)
        return seen
    if runtime.idle_since is None:  # an event arrived meanwhile
        return seen
    now_seen: dict[Any, tuple[int, int]] = {}
    for tp, position in positions.items():
        expected = tracker.expected(tp)
        if expected is None or position <= expected:
            continue
        pair = (expected, position)
        now_seen[tp] = pair
        if seen.get(tp) != pair or probed.get(tp) == pair:
            continue
        probed[tp] = pair
        metrics.OFFSET_HOLES.inc()
        _log.warning("%s: fetched up to offset %d but delivered up to %d; seeking back to %d",
                     tp, position - 1, expected - 1, expected)
        await _seek(runtime.seek, tp, expected)
    return now_seen


async def consume(stream: Any, runtime: WorkerRuntime) -> None:
    """The agent loop: take one event, hold its offset, submit it; ack it in order once answered.

    Never lets an exception reach Faust's supervisor (which would call this function again on a consumer
    whose position is already past the abandoned events): anything unexpected is :meth:`WorkerRuntime.fatal`.
    """
    if runtime.health.fatal is not None:
        return  # a supervisor restart after a fatal error: the worker is already stopping
    await runtime.started.wait()
    runtime.agent_runs += 1
    if runtime.agent_runs > 1:
        runtime.health.agent_restarts += 1
        runtime.fatal(FatalError("the agent was restarted after it stopped; its consumer position is unknown"))
        return
    def on_gap(tp: Any, start: int, end: int) -> None:
        if runtime.accept_gap is not None:
            asyncio.ensure_future(runtime.accept_gap(tp, start, end))

    tracker = OffsetTracker(lambda event: asyncio.ensure_future(stream.ack(event)), on_gap=on_gap)
    for tp, offset in runtime._expected_before_start.items():
        tracker.expect(tp, offset)
    runtime._expected_before_start.clear()
    runtime.tracker = tracker
    runtime.health.agent_running = True
    runner = runtime.runner
    tails = asyncio.ensure_future(_check_tails(runtime, tracker))

    def settle(entry: Any, fut: asyncio.Future[ItemResult]) -> None:
        if fut.cancelled():
            tracker.fail(entry)
            return
        exc = fut.exception()
        if exc is not None:
            tracker.fail(entry)
            runtime.fatal(exc)
            return
        tracker.done(entry)

    try:
        runtime.idle_since = time.monotonic()
        async for event in stream.events():
            runtime.idle_since = None
            event.message.incref()
            entry, seek_to = tracker.add(event)
            if seek_to is not None:
                await _refetch(runtime, event.message.tp, seek_to, event.message.offset)
            try:
                fut = await runner.submit(raw_message(event), time.time() * 1000)
            except BaseException:
                tracker.fail(entry)
                raise
            fut.add_done_callback(functools.partial(settle, entry))
            runtime.idle_since = time.monotonic()
    except asyncio.CancelledError:
        abandoned = tracker.abandon_all()
        if abandoned:
            _log.warning("%d in-flight event(s) abandoned uncommitted; they will be redelivered", abandoned)
        raise
    except BaseException as exc:
        _log.exception("the moderation agent failed")
        runtime.fatal(exc)
    finally:
        tails.cancel()
        runtime.idle_since = None
        runtime.health.agent_running = False
