"""The Faust app: one agent that moderates the image-events topic in micro-batches, plus web views.

The agent is thin on purpose. It takes batches with ``stream.take_events(max_size, within=max_wait_s)``
(events, not values, because dead letters need each message's partition and offset) and hands them to
:meth:`BatchProcessor.prepare` / :meth:`BatchProcessor.complete`. A message's offset becomes committable
only after ``complete`` returned, i.e. after the batch's outputs were acknowledged by the broker and the
Milvus upsert succeeded; Faust commits committable offsets after a producer flush. So offsets are never
committed past an event whose results are not durable (at-least-once).

Faust acks a batch's events when the agent asks for the next batch, and also when the agent body raises
or is cancelled (the ``take`` generator's ``finally``). The agent therefore holds one extra reference on
every message it takes (``Message.incref``) and releases it only after the batch's outputs are
acknowledged: Faust's own ack then no longer makes an unfinished message committable, and the next batch
can be fetched and decoded while this one is in inference. On cancellation (shutdown) unfinished messages
are marked abandoned (:func:`abandon`): never committed, redelivered to the next worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vitguard.pipeline.processor import BatchProcessor, PreparedBatch, build_processor
from vitguard.pipeline.sinks import OutputTopics
from vitguard.pipeline.types import RawMessage
from vitguard.settings import Settings

__all__ = ["WorkerRuntime", "abandon", "create_app", "faust_broker_url"]

_log = logging.getLogger(__name__)

_BROKER_CHECK_CACHE_S = 5.0


def faust_broker_url(bootstrap_servers: str) -> str:
    """Faust's broker URL (``kafka://h1:9092;h2:9092``) from a comma-separated bootstrap list."""
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    return ";".join(f"kafka://{h}" for h in hosts)


def _broker_credentials(settings: Settings) -> Any:
    """Faust broker credentials: the one Kafka connection config (:mod:`vitguard.kafka.config`)."""
    from vitguard.kafka.config import faust_credentials

    return faust_credentials(settings.kafka)


def abandon(events: Sequence[Any]) -> None:
    """Keep these events' offsets out of every commit: their batch was not finished.

    A message flagged ``acked`` is ignored by any later ack (so its offset is never marked committable)
    and is dropped from the consumer's unacked set (so shutdown does not wait for it). This relies on
    ``faust.types.tuples.Message.acked``, which faust-streaming has had since its first release.
    """
    for event in events:
        event.message.acked = True


@dataclass
class WorkerRuntime:
    """What the web views and the agent share: the processor, and a little state for /readyz."""

    settings: Settings
    processor: BatchProcessor
    in_flight: int = 0
    agent_started: bool = False
    _broker_ok: bool = False
    _broker_checked_at: float = field(default=-1e9)

    async def broker_reachable(self) -> bool:
        """A metadata request to the brokers, cached for a few seconds (readiness probes are frequent)."""
        now = time.monotonic()
        if now - self._broker_checked_at > _BROKER_CHECK_CACHE_S:
            self._broker_ok = await asyncio.to_thread(_metadata_ok, self.settings)
            self._broker_checked_at = now
        return self._broker_ok


def _raw(event: Any) -> RawMessage:
    m = event.message
    return RawMessage(value=m.value, key=m.key, topic=m.topic, partition=m.partition, offset=m.offset)


async def _consume(stream: Any, runtime: WorkerRuntime, max_size: int, max_wait_s: float, overlap: bool) -> None:
    """The agent loop: take a batch, hold its offsets, prepare it, complete it, then release its offsets.

    Each message is ``incref``-ed when taken, so the ack that ``take_events`` gives it when the loop asks
    for the next batch does not make it committable; the explicit ack after :meth:`complete` (outputs
    acknowledged) does. That lets batch k+1 be fetched and decoded while batch k is still in inference
    (``overlap``) without committing batch k early. Completions stay in batch order.
    """
    processor = runtime.processor
    pending: asyncio.Task[None] | None = None
    taken: list[Any] = []

    async def finish(prepared: PreparedBatch, events: list[Any]) -> None:
        try:
            await processor.complete(prepared)
        except BaseException:
            abandon(events)
            raise
        for event in events:
            await stream.ack(event)
        runtime.in_flight -= len(events)

    try:
        async for events in stream.take_events(max_size, within=max_wait_s):
            taken = list(events)
            for event in taken:
                event.message.incref()
            runtime.in_flight += len(taken)
            prepared = await processor.prepare([_raw(e) for e in taken])
            if pending is not None:
                await pending  # batch k is done and released before batch k+1 completes
            pending = asyncio.ensure_future(finish(prepared, taken))
            taken = []
            if not overlap:
                await pending
    except BaseException:
        # cancelled (shutdown) or a bug: unfinished batches must not be committed; they are redelivered
        abandon(taken)
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if taken or pending is not None:
            _log.warning("in-flight batches abandoned uncommitted; they will be redelivered")
        raise
    if pending is not None:
        await pending


def _metadata_ok(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient(settings.kafka.confluent_config()).list_topics(timeout=min(3.0, settings.kafka.request_timeout_s))
    except Exception:
        return False
    return True


def create_app(
    settings: Settings,
    *,
    processor: BatchProcessor | None = None,
    **processor_overrides: Any,
) -> Any:
    """Build the Faust app (not started): the moderation agent and the web views.

    Args:
        settings: everything; topics, batching, web server and the consumer group come from here.
        processor: a ready processor whose sink must be this app's; normally None, and one is built with
            :func:`~vitguard.pipeline.processor.build_processor` publishing through the app's producer.
        processor_overrides: passed to ``build_processor`` (``classifier=``, ``index=``, ``dedup=`` ...).

    Returns:
        ``faust.App``, with ``app.vitguard`` holding the :class:`WorkerRuntime`.
    """
    import faust

    from vitguard.consumers.sink import FaustSink
    from vitguard.consumers.web import register_views
    from vitguard.kafka.config import faust_broker_kwargs

    kafka = settings.kafka
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
        value_serializer="raw",
        key_serializer="raw",
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        web_enabled=settings.web.enabled,
        web_bind=settings.web.host,
        web_port=settings.web.port,
        web_host=settings.web.host,
        web_application_options={"client_max_size": settings.fetch.max_bytes + 64 * 1024},
    )
    topics = settings.topics
    sink = FaustSink(app, OutputTopics(topics.verdicts, topics.alerts, topics.dead_letters))
    runtime = WorkerRuntime(settings, processor or build_processor(settings, sink, **processor_overrides))
    app.vitguard = runtime  # type: ignore[attr-defined]
    images = app.topic(topics.images, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    batch = settings.batch

    @app.agent(images, name="vitguard.moderate")
    async def moderate(stream: Any) -> None:
        await runtime.processor.start()
        runtime.agent_started = True
        try:
            await _consume(stream, runtime, batch.max_size, batch.max_wait_s, batch.overlap)
        finally:
            runtime.agent_started = False
            await runtime.processor.close()

    register_views(app, runtime)
    return app
