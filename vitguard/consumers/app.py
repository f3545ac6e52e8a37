"""The Faust app: one agent that moderates the image-events topic in micro-batches, plus web views.

The agent is thin on purpose. It takes batches with ``stream.take_events(max_size, within=max_wait_s)``
(events, not values, because dead letters need each message's partition and offset), hands them to
:meth:`BatchProcessor.process`, and only then asks for the next batch. Faust acks a batch's events when
the agent asks for the next one, and commits acked offsets after a producer flush; since ``process``
returns only after the outputs are acknowledged by the broker and the Milvus upsert succeeded, offsets
are never committed past an event whose results are not durable (at-least-once).

Faust also acks a batch when the agent body raises or is cancelled (the ``take`` generator's ``finally``).
That would commit an abandoned batch, so on cancellation (shutdown) the batch's messages are marked
"abandoned" first: :func:`abandon` flags them as acked without telling the consumer, which keeps their
offsets out of every commit; a restarted worker receives them again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vitguard.pipeline.processor import BatchProcessor, build_processor
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
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    import ssl

    import faust

    context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        ssl_context = context if kafka.security_protocol == "SASL_SSL" else None
        if kafka.sasl_mechanism and kafka.sasl_mechanism.startswith("SCRAM"):
            return faust.SASLCredentials(
                username=kafka.sasl_username, password=password, ssl_context=ssl_context,
                mechanism=kafka.sasl_mechanism,
            )
        return faust.SASLCredentials(username=kafka.sasl_username, password=password, ssl_context=ssl_context)
    return faust.SSLCredentials(context)


def abandon(events: Sequence[Any]) -> None:
    """Keep these events' offsets out of every commit: the batch was not finished.

    Faust's take buffer acks its events in a ``finally`` even when the agent is cancelled; a message
    already flagged ``acked`` is ignored by that ack, so its offset is never marked committable. This
    relies on ``faust.types.tuples.Message.acked``, which faust-streaming has had since its first release.
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

    kafka = settings.kafka
    app = faust.App(
        kafka.consumer_group,
        broker=faust_broker_url(kafka.bootstrap_servers),
        broker_client_id=kafka.client_id,
        broker_credentials=_broker_credentials(settings),
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
            await _consume(stream)
        finally:
            runtime.agent_started = False
            await runtime.processor.close()

    async def _consume(stream: Any) -> None:
        async for events in stream.take_events(batch.max_size, within=batch.max_wait_s):
            raws = [
                RawMessage(
                    value=e.message.value,
                    key=e.message.key,
                    topic=e.message.topic,
                    partition=e.message.partition,
                    offset=e.message.offset,
                )
                for e in events
            ]
            runtime.in_flight = len(raws)
            try:
                await runtime.processor.process(raws)
            except BaseException:
                # cancelled (shutdown) or a bug: the batch is not finished, its offsets must not be committed
                abandon(events)
                _log.warning("batch of %d abandoned uncommitted; it will be redelivered", len(raws))
                raise
            finally:
                runtime.in_flight = 0

    register_views(app, runtime)
    return app
