"""Typed subscribers for downstream services: verdicts, alerts and dead letters as pydantic models.

Two ways to read:

* iterate the subscriber (``for verdict in VerdictSubscriber(...)``) to get models; a message that
  breaks the contract raises :class:`InvalidMessageError` (with its topic, partition, offset and raw
  bytes) instead of being skipped. The consumer is already past it, so iterating again continues with
  the next message;
* :meth:`TopicSubscriber.messages` yields :class:`Received` envelopes that carry either the model or
  the error, for callers that want to log bad messages and go on (``vitguard tail`` does).

Without ``group_id`` a subscriber is *assigned* every partition (from the beginning or from the end) and
commits nothing: good for tools and tests, it never joins or disturbs a consumer group. With
``group_id`` it joins that group and commits at-least-once: a message's offset is stored only when the
next one is requested, i.e. after the caller's code has run on it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from pydantic import BaseModel, ValidationError

from vitguard.errors import ReasonCode, ServiceUnavailableError, VitguardError
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.offsets import consumer_config, end_offsets, topic_partitions
from vitguard.schemas.events import DeadLetter, NearDuplicateAlert, Verdict
from vitguard.settings import KafkaSettings, Settings

__all__ = [
    "AlertSubscriber",
    "DeadLetterSubscriber",
    "InvalidMessageError",
    "Received",
    "TopicSubscriber",
    "VerdictSubscriber",
]

M = TypeVar("M", bound=BaseModel)


class InvalidMessageError(VitguardError):
    """A message on a vitguard output topic does not match its contract."""

    def __init__(
        self, reason: ReasonCode, message: str, *, topic: str, partition: int, offset: int, raw: bytes | None
    ) -> None:
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}: {message}")
        self.reason: ReasonCode = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.raw = raw


@dataclass(frozen=True)
class Received(Generic[M]):
    """One message read: ``value`` when it matched the contract, ``error`` when it did not."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None
    value: M | None = None
    error: InvalidMessageError | None = None


class TopicSubscriber(Generic[M]):
    """Reads one topic and turns each message into ``model``.

    Args:
        kafka: connection settings.
        topic: the topic to follow.
        group_id: join this consumer group and commit (see the module docstring); None: assign all
            partitions and commit nothing.
        from_beginning: without a group (or for a group with no committed offsets), start at the oldest
            message instead of the newest.
        connect_timeout_s: how long to wait for the broker's metadata.
        poll_interval_s: longest single wait inside iteration (shutdown latency).
        consumer_overrides: extra librdkafka properties (e.g. ``max.poll.interval.ms``, which librdkafka
            also sends as the group's rebalance timeout).

    Raises:
        ServiceUnavailableError, TopicNotFoundError: when the broker or the topic is not there.
    """

    model: ClassVar[type[BaseModel]]

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        group_id: str | None = None,
        from_beginning: bool = False,
        connect_timeout_s: float = 10.0,
        poll_interval_s: float = 0.5,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.poll_interval_s = poll_interval_s
        partitions = topic_partitions(kafka, topic, connect_timeout_s)
        reset = "earliest" if from_beginning else "latest"
        if group_id is None:
            conf = consumer_config(
                kafka, f"vitguard-subscriber-{uuid.uuid4().hex[:8]}",
                **{"auto.offset.reset": reset, **(consumer_overrides or {})},
            )
            self._consumer = Consumer(conf)
            if from_beginning:
                starts = dict.fromkeys(partitions, OFFSET_BEGINNING)
            else:
                # The confirmed end rather than the logical OFFSET_END: see vitguard.kafka.coarse_offsets.
                starts = end_offsets(self._consumer, topic, partitions, connect_timeout_s)
            self._consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
        else:
            self._consumer = Consumer(
                librdkafka_config(
                    kafka,
                    **{
                        "group.id": group_id,
                        "auto.offset.reset": reset,
                        "enable.auto.commit": True,
                        "enable.auto.offset.store": False,
                        "allow.auto.create.topics": False,
                        "session.timeout.ms": int(kafka.session_timeout_s * 1000),
                        **(consumer_overrides or {}),
                    },
                )
            )
            self._consumer.subscribe([topic])
        self._pending: Message | None = None
        self._closed = False

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> TopicSubscriber[M]:
        """A subscriber on this model's topic as named in ``settings``."""
        raise NotImplementedError

    # -- reading ---------------------------------------------------------------------------------------

    def messages(
        self, *, max_messages: int | None = None, idle_timeout_s: float | None = None
    ) -> Iterator[Received[M]]:
        """Yield every message as a :class:`Received` (value or error) until ``max_messages`` were read or
        nothing arrived for ``idle_timeout_s`` (both None: forever)."""
        read = 0
        last = time.monotonic()
        while max_messages is None or read < max_messages:
            self._store_pending()
            msg = self._consumer.poll(self.poll_interval_s)
            if msg is None:
                if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                    return
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                    raise ServiceUnavailableError(f"reading {self.topic!r} failed: {err.str()}")
                continue
            last = time.monotonic()
            read += 1
            self._pending = msg
            yield self._decode(msg)

    def __iter__(self) -> Iterator[M]:
        for received in self.messages():
            if received.error is not None:
                raise received.error
            assert received.value is not None  # noqa: S101 - Received holds one or the other
            yield received.value

    def _decode(self, msg: Message) -> Received[M]:
        raw = msg.value()
        ts_type, ts = msg.timestamp()
        topic, partition, offset = msg.topic() or self.topic, msg.partition() or 0, msg.offset() or 0

        def received(value: M | None = None, error: InvalidMessageError | None = None) -> Received[M]:
            return Received(topic, partition, offset, msg.key(), ts if ts_type else None, value, error)

        def invalid(reason: ReasonCode, text: str) -> Received[M]:
            return received(
                error=InvalidMessageError(reason, text, topic=topic, partition=partition, offset=offset, raw=raw)
            )

        if raw is None:
            return invalid("invalid_json", "empty message")
        try:
            value = self.model.model_validate_json(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] == "json_invalid":
                return invalid("invalid_json", f"not a {self.model.__name__}: {err['msg']}")
            where = ".".join(str(p) for p in err["loc"]) or self.model.__name__
            more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            return invalid("schema_violation", f"not a {self.model.__name__}: {where}: {err['msg']}{more}")
        return received(value=value)  # type: ignore[arg-type]  # model is M by construction

    # -- finishing -------------------------------------------------------------------------------------

    def _store_pending(self) -> None:
        if self._pending is not None and self.group_id is not None:
            self._consumer.store_offsets(message=self._pending)
        self._pending = None

    def close(self) -> None:
        """Commit what was handed out (group mode) and leave."""
        if self._closed:
            return
        self._closed = True
        try:
            self._store_pending()
        finally:
            self._consumer.close()

    def __enter__(self) -> TopicSubscriber[M]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class VerdictSubscriber(TopicSubscriber[Verdict]):
    """Yields :class:`~vitguard.schemas.events.Verdict` s."""

    model = Verdict

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> VerdictSubscriber:
        return cls(settings.kafka, settings.topics.verdicts, **kwargs)


class AlertSubscriber(TopicSubscriber[NearDuplicateAlert]):
    """Yields :class:`~vitguard.schemas.events.NearDuplicateAlert` s."""

    model = NearDuplicateAlert

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> AlertSubscriber:
        return cls(settings.kafka, settings.topics.alerts, **kwargs)


class DeadLetterSubscriber(TopicSubscriber[DeadLetter]):
    """Yields :class:`~vitguard.schemas.events.DeadLetter` s."""

    model = DeadLetter

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> DeadLetterSubscriber:
        return cls(settings.kafka, settings.topics.dead_letters, **kwargs)
