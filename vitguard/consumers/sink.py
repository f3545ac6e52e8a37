"""Publishing outputs with librdkafka (confluent-kafka), one delivery result per message, without blocking the loop.

The worker publishes every verdict, alert and dead letter through this sink. Faust's own producer (aiokafka)
encoded each record batch in Python on the event loop and wrote to the socket from it: at line rate that was
a fifth of the event loop's time, and each write a wait for the GIL (``docs/line-rate.md``). librdkafka batches,
compresses and talks to the brokers on its own native threads; :meth:`KafkaSink.send` only hands it the
messages (one C call each) and waits for their delivery reports, which a poller thread (``vg-producer``)
collects and hands back to the event loop once per call, when the last one is in.

Delivery is at least once, like the rest of the worker: the producer is idempotent (``acks=all``), a message
librdkafka could not deliver within ``timeout_s`` is reported failed (``message.timeout.ms``), and the emit stage
sends it again (:class:`~vitguard.pipeline.stages.emit.Emitter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer

from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.limits import PRODUCER_MAX_REQUEST_BYTES
from vitguard.pipeline.runtime.pools import set_native_thread_name
from vitguard.pipeline.types import OutMessage, OutputTopics
from vitguard.settings import KafkaSettings

__all__ = ["KafkaSink"]

_log = logging.getLogger(__name__)

_POLL_S = 0.05
"""How long the poller waits in one ``poll`` for delivery reports (it returns as soon as one is in)."""


class _Call:
    """One :meth:`KafkaSink.send`: its messages' results, and the event-loop future set when the last is in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.results: list[BaseException | None] = [TimeoutError("not acknowledged in time")] * size
        self.remaining = size
        self.done: asyncio.Future[None] = loop.create_future()
        self.lock = threading.Lock()

    def report(self, i: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, _msg: Any) -> None:  # on the poller thread
            self.settle(i, KafkaException(err) if err is not None else None)
        return on_delivery

    def settle(self, i: int, result: BaseException | None) -> None:
        with self.lock:
            self.results[i] = result
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                self.loop.call_soon_threadsafe(_resolve, self.done)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class KafkaSink:
    """A :class:`~vitguard.pipeline.types.Sink` over a confluent-kafka producer (idempotent, ``acks=all``).

    Args:
        kafka: brokers and security settings.
        topics: output topics (an empty name: that kind is dropped, e.g. a back-test without an alert topic).
        timeout_s: longest wait for one call's delivery reports; an undelivered message then reports a timeout
            (and librdkafka stops trying it at the same time).
        linger_ms: how long librdkafka waits to fill a batch (a few ms: one request for a group's outputs).
    """

    def __init__(self, kafka: KafkaSettings, topics: OutputTopics, timeout_s: float = 60.0,
                 linger_ms: float = 2.0) -> None:
        self.topics = topics
        self._timeout_s = timeout_s
        self._producer = Producer(librdkafka_config(
            kafka,
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": linger_ms,
                "compression.type": "lz4",
                "message.max.bytes": PRODUCER_MAX_REQUEST_BYTES,
                "message.timeout.ms": max(1, int(timeout_s * 1000)),
            },
        ))
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._poller_lock = threading.Lock()

    def _start_poller(self) -> None:
        with self._poller_lock:
            if self._poller is None and not self._stop.is_set():
                self._poller = threading.Thread(target=self._poll_forever, name="vitguard-producer", daemon=True)
                self._poller.start()

    def _poll_forever(self) -> None:
        set_native_thread_name("vg-producer")
        while not self._stop.is_set():
            try:
                self._producer.poll(_POLL_S)
            except Exception:  # a callback's bug must not end delivery reports for everyone
                _log.exception("the producer's poll raised")

    async def send(self, messages: Sequence[OutMessage]) -> list[BaseException | None]:
        """Hand ``messages`` to librdkafka and wait for each one's delivery report (None: acknowledged)."""
        if not messages:
            return []
        self._start_poller()
        call = _Call(asyncio.get_running_loop(), len(messages))
        for i, m in enumerate(messages):
            if not m.topic:
                call.settle(i, None)
                continue
            await self._produce(call, i, m)
        try:
            async with asyncio.timeout(self._timeout_s + 5.0):  # librdkafka reports a timeout itself first
                await asyncio.shield(call.done)
        except TimeoutError:
            pass
        with call.lock:
            return list(call.results)

    async def _produce(self, call: _Call, i: int, m: OutMessage) -> None:
        while True:
            try:
                self._producer.produce(m.topic, value=m.value, key=m.key, on_delivery=call.report(i))
                return
            except BufferError:  # librdkafka's local queue is full: let deliveries drain
                await asyncio.sleep(0.01)
            except KafkaException as exc:  # refused locally (larger than message.max.bytes, unknown topic)
                call.settle(i, exc)
                return

    async def close(self, timeout_s: float = 10.0) -> None:
        """:meth:`shutdown` off the event loop."""
        await asyncio.to_thread(self.shutdown, timeout_s)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), then stop the poller (blocking)."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            _log.warning("%d output(s) still undelivered when the producer closed", remaining)
        self._stop.set()
        if self._poller is not None:
            self._poller.join(2 * _POLL_S + 1.0)
