"""The Faust app: a thin agent that feeds the pipeline's runner, the runner owned by the app, and web views.

Who owns what:

* The **runner** (:class:`~vitguard.pipeline.runtime.runner.Runner`: thread pools, HTTP session, store clients) is
  owned by a ``mode.Service`` that the app starts and stops (:class:`RunnerService`), not by the agent body:
  the agent can be (re)started at any time and always finds working resources.
* The **agent** iterates events one by one, ``incref``-s each message (so Faust's automatic ack never
  makes it committable), submits it to the runner, and gives every answered event to the
  :class:`~vitguard.kafka.faust.offsets.OffsetTracker`, which acks per partition in offset order. Nothing that
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

from vitguard.consumers.checks import DependencyChecks
from vitguard.errors import FatalError, VitguardError
from vitguard.health import HealthState
from vitguard.kafka.faust.offsets import OffsetTracker
from vitguard.kafka.faust.positions import (
    accept_gap,
    check_tails,
    expect_from_committed,
    input_positions,
    pause,
    refetch,
)
from vitguard.kafka.limits import PRODUCER_MAX_REQUEST_BYTES, UNREAD_TOPIC_LIMIT
from vitguard.pipeline.results import ItemResult
from vitguard.pipeline.runtime.build import build_runner, output_topics, publish_timeout_s
from vitguard.pipeline.runtime.runner import Runner
from vitguard.pipeline.types import RawMessage, TopicLimits
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
    banks: Any = None
    """The bank follower (:class:`~vitguard.banks.BankFollower`) once started; None when banks are off."""
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


def _start_policies(runtime: WorkerRuntime) -> Any:
    """The policy document (VITGUARD_POLICY_FILE or _TOPIC): read before the runner starts, so no image is judged
    under the built-in policy by mistake, then followed in a thread (None with neither: the built-in policy).

    Raises:
        ConfigError: the file cannot be read or its document is refused.
        ServiceUnavailableError: the topic could not be read to its end within VITGUARD_POLICY_LOAD_TIMEOUT_S.
    """
    from vitguard.policies.live import PolicyFollower, open_source

    settings = runtime.settings
    source = open_source(settings.policy, settings.kafka, settings.topics)
    if source is None:
        return None
    follower = PolicyFollower(runtime.runner.policies, source, load_timeout_s=settings.policy.load_timeout_s)
    follower.start()
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
                    emitter = runtime.runner.emitter
                    emitter.limits = TopicLimits(emitter.limits.default, {**emitter.limits.by_topic, **limits})
            try:
                self.policies = await asyncio.to_thread(_start_policies, runtime)
            except VitguardError as exc:  # a document the worker cannot judge by: stop before the group join
                runtime.fatal(FatalError(f"policy document: {exc}"))
                return
            self.banks = runtime.banks = await asyncio.to_thread(_start_banks, runtime)
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
            if getattr(self, "policies", None) is not None:
                await asyncio.to_thread(self.policies.stop)

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
            :func:`~vitguard.pipeline.runtime.build.build_runner` publishing with
            :class:`~vitguard.consumers.sink.KafkaSink`.
        read_limits: read the output topics' ``max.message.bytes`` from the broker when the app starts.
        runner_overrides: passed to ``build_runner`` (``classifier=``, ``index=``, ``dedup=`` ...).

    Returns:
        ``faust.App``, with ``app.vitguard`` holding the :class:`WorkerRuntime`.
    """
    import os
    import tempfile

    import faust

    from vitguard.consumers.sink import KafkaSink
    from vitguard.consumers.web import register_views
    from vitguard.kafka.config import faust_broker_kwargs

    kafka = settings.kafka
    producer_max_request = PRODUCER_MAX_REQUEST_BYTES
    app = faust.App(
        kafka.consumer_group,
        # broker, broker_consumer (our fetch wait, vitguard.kafka.faust.consumer), client id, credentials
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
        pause(app, holding)

    if runner is None:
        sink = KafkaSink(kafka, output_topics(settings), timeout_s=publish_timeout_s(settings))
        runner = build_runner(settings, sink, health=health, on_hold=on_hold, **runner_overrides)
    else:
        runner.milvus.on_hold = runner.milvus.on_hold or on_hold
    runtime = WorkerRuntime(settings, runner, runner.health)
    app.vitguard = runtime  # type: ignore[attr-defined]
    runtime.seek = lambda tp, offset: app.consumer.seek(tp, offset)
    runtime.accept_gap = lambda tp, start, end: accept_gap(app.consumer, tp, start, end)
    runtime.positions = lambda: input_positions(app.consumer, topics.images)
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
        # joined once the first assignment is handled (its start offsets known), not when it begins: until
        # then nothing can have been taken, /readyz is not ready, and a stop is the short one of a join (the
        # offsets lookup can hang on a broker that holds it: a stop then waited out the whole deadline)
        if runtime.health.joined_at is None:
            runtime.health.joined_at = time.monotonic()
            _log.info("joined the consumer group: %d partition(s) of %s assigned",
                      sum(1 for tp in assigned if tp.topic == topics.images), topics.images)

    register_views(app, runtime)
    return app


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
    tails = asyncio.ensure_future(check_tails(runtime, tracker))

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
                await refetch(runtime, event.message.tp, seek_to, event.message.offset)
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
