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
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from vitguard.kafka.reader import InvalidMessageError, RawRecord, Record, TopicReader, decode
from vitguard.schemas.events import BankMatchAlert, DeadLetter, NearDuplicateAlert, Verdict, alert_type_of
from vitguard.schemas.retro import RetroMatch
from vitguard.settings import KafkaSettings, Settings

__all__ = [
    "AlertSubscriber",
    "BankAlertSubscriber",
    "DeadLetterSubscriber",
    "InvalidMessageError",
    "Received",
    "RetroMatchSubscriber",
    "TopicSubscriber",
    "VerdictSubscriber",
]

M = TypeVar("M", bound=BaseModel)


Received = Record
"""One message read: ``value`` when it matched the contract, ``error`` when it did not
(:class:`vitguard.kafka.reader.Record`)."""


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
        self._reader = TopicReader(
            kafka,
            topic,
            group_id=group_id,
            from_beginning=from_beginning,
            connect_timeout_s=connect_timeout_s,
            poll_interval_s=poll_interval_s,
            consumer_overrides=consumer_overrides,
        )
        self._pending: RawRecord | None = None
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
            self._store_pending()  # the caller asked for the next one: the previous one is handled
            record = self._reader.next_record(self.poll_interval_s)
            if record is None:
                if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            self._pending = record
            if not self.wants(record):
                continue  # another kind on a shared topic: read past it (handled, so its offset is stored)
            read += 1
            yield decode(record, self.model)  # type: ignore[arg-type]  # model is M by construction

    def wants(self, record: RawRecord) -> bool:
        """Whether ``record`` is this subscriber's kind (a topic may carry several); the rest is read past."""
        return True

    def __iter__(self) -> Iterator[M]:
        for received in self.messages():
            if received.error is not None:
                raise received.error
            assert received.value is not None  # noqa: S101 - Received holds one or the other
            yield received.value

    # -- finishing -------------------------------------------------------------------------------------

    def _store_pending(self) -> None:
        if self._pending is not None:
            self._reader.store(self._pending)
        self._pending = None

    def close(self) -> None:
        """Commit what was handed out (group mode) and leave."""
        if self._closed:
            return
        self._closed = True
        try:
            self._store_pending()
        finally:
            self._reader.close()

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


class _AlertsTopic(TopicSubscriber[M]):
    """One kind of the alerts topic (``alert_type``): the others are read past, not reported as invalid."""

    alert_type: ClassVar[str]

    def wants(self, record: RawRecord) -> bool:
        found = alert_type_of(record.value)
        return found is None or found == self.alert_type  # not an alert at all: reported as invalid

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> _AlertsTopic[M]:
        return cls(settings.kafka, settings.topics.alerts, **kwargs)


class AlertSubscriber(_AlertsTopic[NearDuplicateAlert]):
    """Yields :class:`~vitguard.schemas.events.NearDuplicateAlert` s (the alerts topic's other kinds are read
    past: :class:`BankAlertSubscriber`, :class:`RetroMatchSubscriber`)."""

    model = NearDuplicateAlert
    alert_type = "near_duplicate"


class BankAlertSubscriber(_AlertsTopic[BankMatchAlert]):
    """Yields :class:`~vitguard.schemas.events.BankMatchAlert` s."""

    model = BankMatchAlert
    alert_type = "bank_match"


class RetroMatchSubscriber(_AlertsTopic[RetroMatch]):
    """Yields :class:`~vitguard.schemas.retro.RetroMatch` es (a retro-hunter's)."""

    model = RetroMatch
    alert_type = "retro_match"


class DeadLetterSubscriber(TopicSubscriber[DeadLetter]):
    """Yields :class:`~vitguard.schemas.events.DeadLetter` s."""

    model = DeadLetter

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> DeadLetterSubscriber:
        return cls(settings.kafka, settings.topics.dead_letters, **kwargs)
