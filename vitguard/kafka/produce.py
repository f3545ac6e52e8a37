"""Produce and wait: send messages with confluent-kafka and hand back one delivery result per message.

The one place that turns librdkafka's delivery callbacks into values (:class:`DeliveryResult`). Used by
:class:`~vitguard.producers.publisher.UploadEventPublisher` (streaming, bounded in flight), by
:func:`publish_and_wait` (a batch: the demo, the benchmarks, the test services) and by tools.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.errors import kafka_error
from vitguard.settings import KafkaSettings

__all__ = [
    "DEFAULT_PRODUCER_CONFIG",
    "DeliveryResult",
    "OutboundMessage",
    "delivery_result",
    "produce_and_wait",
    "publish_and_wait",
    "raise_on_failures",
]

DEFAULT_PRODUCER_CONFIG: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "allow.auto.create.topics": False,
    "linger.ms": 5,
}
"""Idempotent, acknowledged by all in-sync replicas, never creating topics."""


@dataclass(frozen=True)
class DeliveryResult:
    """What the broker said about one message."""

    key: str | None
    topic: str
    partition: int | None
    offset: int | None
    error: str | None
    """None when delivered; otherwise the Kafka error name (e.g. ``MSG_SIZE_TOO_LARGE``)."""
    error_message: str | None = None
    event_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class OutboundMessage:
    """One message to send; ``partition`` None lets the partitioner choose by key."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    partition: int | None = None
    timestamp_ms: int | None = None
    headers: Sequence[tuple[str, bytes | str]] | None = None


def _text(key: Any) -> str | None:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else None


def delivery_result(
    err: KafkaError | None, msg: Message | None, *, topic: str, key: bytes | None = None, event_id: str | None = None
) -> DeliveryResult:
    """A delivery callback's ``(err, msg)`` (or a local refusal, ``msg`` None) as a value."""
    if err is None and msg is not None:
        return DeliveryResult(_text(msg.key()), msg.topic() or topic, msg.partition(), msg.offset(), None,
                              event_id=event_id)
    return DeliveryResult(
        _text(msg.key()) if msg is not None else _text(key),
        (msg.topic() if msg is not None else None) or topic,
        None,
        None,
        err.name() if err is not None else "UNKNOWN",
        err.str() if err is not None else None,
        event_id,
    )


def produce_and_wait(producer: Producer, messages: Sequence[OutboundMessage], timeout_s: float) -> list[DeliveryResult]:
    """Send ``messages`` and wait for every delivery report; one result per message, in order.

    A message the client refuses outright (e.g. larger than ``message.max.bytes``) gets a failed result
    at once; a full local queue is waited out; a message still unreported at ``timeout_s`` gets error
    ``_MSG_TIMED_OUT``. Never raises for a failed delivery: the caller decides (see
    :func:`raise_on_failures`).
    """
    results: list[DeliveryResult | None] = [None] * len(messages)
    deadline = time.monotonic() + timeout_s

    def report_for(i: int, m: OutboundMessage) -> Any:
        def report(err: KafkaError | None, msg: Message) -> None:
            results[i] = delivery_result(err, msg, topic=m.topic, key=m.key)

        return report

    for i, m in enumerate(messages):
        kwargs: dict[str, Any] = {"key": m.key, "value": m.value, "on_delivery": report_for(i, m)}
        if m.partition is not None:
            kwargs["partition"] = m.partition
        if m.timestamp_ms is not None:
            kwargs["timestamp"] = m.timestamp_ms
        if m.headers:
            kwargs["headers"] = list(m.headers)
        while True:
            try:
                producer.produce(m.topic, **kwargs)
                break
            except BufferError:  # librdkafka's queue is full: serve delivery reports until it drains
                if time.monotonic() > deadline:
                    break
                producer.poll(0.1)
            except Exception as exc:  # KafkaException: refused before it left
                results[i] = delivery_result(kafka_error(exc), None, topic=m.topic, key=m.key)
                break
        producer.poll(0)
    producer.flush(max(0.0, deadline - time.monotonic()))
    return [
        r if r is not None else DeliveryResult(_text(m.key), m.topic, None, None, "_MSG_TIMED_OUT",
                                               f"not acknowledged within {timeout_s:g}s")
        for r, m in zip(results, messages, strict=True)
    ]


def raise_on_failures(results: Sequence[DeliveryResult]) -> None:
    """Raise :class:`ServiceUnavailableError` naming the first failure, if any message failed."""
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        raise ServiceUnavailableError(
            f"{len(failed)} of {len(results)} message(s) not delivered; first to {first.topic!r}: "
            f"{first.error}: {first.error_message}"
        )


def publish_and_wait(
    kafka: KafkaSettings,
    messages: Sequence[OutboundMessage],
    *,
    timeout_s: float = 30.0,
    producer_config: Mapping[str, Any] | None = None,
) -> list[DeliveryResult]:
    """Send a batch with a short-lived producer (:data:`DEFAULT_PRODUCER_CONFIG` plus ``producer_config``)
    and return each message's delivery result (see :func:`produce_and_wait`)."""
    producer = Producer(librdkafka_config(kafka, **{**DEFAULT_PRODUCER_CONFIG, **(producer_config or {})}))
    return produce_and_wait(producer, messages, timeout_s)
