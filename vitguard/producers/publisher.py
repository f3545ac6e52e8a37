"""``UploadEventPublisher``: how a platform puts upload events on the input topic.

A thin wrapper around a confluent-kafka ``Producer`` that

* validates every event against :class:`~vitguard.schemas.events.ImageEvent` before it leaves the process
  (an invalid event raises :class:`InvalidEventError` locally; nothing is sent);
* keys each message by ``content_id``, so every event about one image lands on one partition, in order;
* is idempotent with ``acks=all``: a broker retry never duplicates or reorders a message;
* bounds the messages in flight (sent, not yet acknowledged): at the bound, ``publish`` serves delivery
  reports until there is room, and a full librdkafka queue (``BufferError``) is waited out the same way;
* reports every delivery: failures are kept (:attr:`UploadEventPublisher.failures`), an optional callback
  sees every :class:`DeliveryResult`, and :meth:`~UploadEventPublisher.flush` raises :class:`PublishError`
  when anything failed since the last flush. Leaving the ``with`` block flushes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from vitguard.errors import InputError, VitguardError
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.errors import kafka_error
from vitguard.kafka.produce import DeliveryResult, delivery_result
from vitguard.schemas.events import ImageEvent, parse_image_event, validate_image_event
from vitguard.settings import KafkaSettings

__all__ = [
    "DEFAULT_DELIVERY_TIMEOUT_S",
    "DEFAULT_MAX_IN_FLIGHT",
    "DeliveryResult",
    "InvalidEventError",
    "PublishError",
    "UploadEventPublisher",
    "validate_event",
]

DEFAULT_MAX_IN_FLIGHT = 10_000
"""Messages sent but not yet acknowledged before ``publish`` blocks."""
DEFAULT_DELIVERY_TIMEOUT_S = 120.0
"""How long librdkafka keeps retrying one message before reporting it failed."""

Headers = Sequence[tuple[str, bytes | str]]


class InvalidEventError(InputError):
    """An event broke the ``ImageEvent`` contract and was not sent (reason ``schema_violation`` or
    ``invalid_json``)."""


class PublishError(VitguardError):
    """Messages were not acknowledged by the broker (or not within the flush timeout)."""

    def __init__(self, message: str, failures: Sequence[DeliveryResult] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


def validate_event(event: ImageEvent | Mapping[str, Any] | str | bytes) -> ImageEvent:
    """Validate against the input contract; an ``ImageEvent`` is re-validated in case it was built unchecked.

    Raises:
        InvalidEventError: reason ``invalid_json`` (text that is not a JSON object) or ``schema_violation``.
    """
    if isinstance(event, str | bytes):
        try:
            return parse_image_event(event)
        except InputError as exc:
            raise InvalidEventError(exc.reason, exc.message) from exc
    data = event.model_dump() if isinstance(event, ImageEvent) else dict(event)
    try:
        return validate_image_event(data)
    except InputError as exc:
        raise InvalidEventError(exc.reason, exc.message) from exc


class UploadEventPublisher:
    """Publishes :class:`ImageEvent` s (or raw bytes, for re-drives) to one topic.

    Args:
        kafka: connection settings.
        topic: where events go, usually ``settings.topics.images``.
        max_in_flight: messages sent but not yet acknowledged before ``publish`` waits.
        delivery_timeout_s: how long one message may take, retries included, before it counts as failed.
        on_delivery: called (from ``publish``/``poll``/``flush``) with every delivery result.
        producer_config: extra librdkafka properties; they override vitguard's defaults.
        producer_factory: builds the producer from its config (the I/O seam; tests pass a fake only
            where a real broker cannot show the behaviour, e.g. a full local queue).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S,
        on_delivery: Callable[[DeliveryResult], None] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.topic = topic
        self.max_in_flight = max_in_flight
        self.delivery_timeout_s = delivery_timeout_s
        self._on_delivery = on_delivery
        config = librdkafka_config(
            kafka,
            **{
                "enable.idempotence": True,
                "acks": "all",
                "allow.auto.create.topics": False,
                "delivery.timeout.ms": int(delivery_timeout_s * 1000),
                "linger.ms": 5,
                "compression.type": "lz4",
            },
        )
        config.update(producer_config or {})
        self._producer = producer_factory(config)
        self._in_flight = 0
        self.delivered = 0
        self.failures: list[DeliveryResult] = []
        self._unraised_failures: list[DeliveryResult] = []
        self._closed = False

    # -- sending ---------------------------------------------------------------------------------------

    def publish(
        self,
        event: ImageEvent | Mapping[str, Any] | str | bytes,
        *,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> ImageEvent:
        """Validate ``event`` and send it keyed by its content id; returns the validated event.

        Returns once the message is queued; its delivery is reported later (see the class docstring). A
        message the client refuses outright (larger than ``message.max.bytes``) is reported the same way,
        as a failed :class:`DeliveryResult`, at once.

        Raises:
            InvalidEventError: the event breaks the contract; nothing was sent.
            PublishError: the producer queue stayed full (broker unreachable) for the delivery timeout.
        """
        valid = validate_event(event)
        self.send_raw(
            valid.model_dump_json().encode("utf-8"),
            key=valid.content_id.encode("utf-8"),
            timestamp_ms=timestamp_ms,
            headers=headers,
            partition=partition,
            event_id=valid.event_id,
        )
        return valid

    def send_raw(
        self,
        value: bytes,
        *,
        key: bytes | None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        event_id: str | None = None,
    ) -> None:
        """Send bytes as they are, unvalidated: for replays and dead-letter re-drives, whose job is to
        resubmit exactly what was once received."""
        if self._closed:
            raise PublishError("publisher is closed")
        while self._in_flight >= self.max_in_flight:
            self._producer.poll(0.1)
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._make_callback(event_id)}
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if headers:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        waited_since: float | None = None
        while True:
            try:
                self._producer.produce(self.topic, **kwargs)
                break
            except KafkaException as exc:
                # Refused before it left (e.g. larger than message.max.bytes): reported like a failed
                # delivery, so a batch run counts it instead of stopping.
                self._record(delivery_result(kafka_error(exc), None, topic=self.topic, key=key, event_id=event_id))
                return
            except BufferError:
                # librdkafka's own queue is full: serve delivery reports until it drains.
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since > self.delivery_timeout_s:
                    raise PublishError(
                        f"producer queue for {self.topic!r} stayed full for {self.delivery_timeout_s:g}s"
                    ) from None
                self._producer.poll(0.1)
        self._in_flight += 1
        self._producer.poll(0)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve pending delivery reports; returns how many were served."""
        return int(self._producer.poll(timeout_s))

    # -- finishing -------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages sent whose delivery has not been reported yet."""
        return self._in_flight

    def failure_counts(self) -> Counter[str]:
        """Failed deliveries so far, by Kafka error name."""
        return Counter(f.error or "?" for f in self.failures)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every message sent so far is acknowledged or failed.

        Raises:
            PublishError: messages are still unacknowledged after ``timeout_s``, or some failed since the
                previous flush (the failures are attached; :attr:`failures` keeps all of them).
        """
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise PublishError(f"{remaining} message(s) to {self.topic!r} not acknowledged within {timeout_s:g}s")
        if self._unraised_failures:
            failed, self._unraised_failures = self._unraised_failures, []
            first = failed[0]
            raise PublishError(
                f"{len(failed)} message(s) to {self.topic!r} failed; first: {first.error}: {first.error_message}",
                failed,
            )

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush and stop accepting messages. Raises like :meth:`flush`."""
        if self._closed:
            return
        try:
            self.flush(timeout_s)
        finally:
            self._closed = True

    def __enter__(self) -> UploadEventPublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing: still deliver what was sent, but never hide the original exception.
        try:
            self.close()
        except PublishError:
            pass

    # -- internals -------------------------------------------------------------------------------------

    def _make_callback(self, event_id: str | None) -> Callable[[KafkaError | None, Message], None]:
        def callback(err: KafkaError | None, msg: Message) -> None:
            self._in_flight -= 1
            result = delivery_result(err, msg, topic=self.topic, event_id=event_id)
            self._record(result)

        return callback

    def _record(self, result: DeliveryResult) -> None:
        if result.ok:
            self.delivered += 1
        else:
            self.failures.append(result)
            self._unraised_failures.append(result)
        if self._on_delivery is not None:
            self._on_delivery(result)
