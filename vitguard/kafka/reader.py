"""One typed topic reader: read topics to their end, or follow them, and decode into vitguard's schemas.

:class:`TopicReader` wraps one confluent-kafka consumer. Without ``group_id`` it is *assigned* every
partition of its topics (from the beginning, or from the end confirmed by
:func:`~vitguard.kafka.offsets.end_offsets`) and commits nothing: it never joins or disturbs a consumer
group (tools, tests, the demo, benchmarks). With ``group_id`` it joins that group; the caller stores an
offset with :meth:`TopicReader.store` once it has handled a record, and stored offsets are committed.

:func:`decode` turns a record into a pydantic model (a :class:`Record` holding the model or an
:class:`InvalidMessageError`), used by the subscribers and the worker's output reader.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from pydantic import BaseModel, ValidationError

from vitguard.errors import ReasonCode, ServiceUnavailableError, VitguardError
from vitguard.kafka.admin import TopicAdmin, TopicNotFoundError
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.errors import raise_if_fatal
from vitguard.kafka.offsets import consumer_config, end_offsets
from vitguard.settings import KafkaSettings

__all__ = [
    "InvalidMessageError",
    "RawRecord",
    "Record",
    "TopicReader",
    "decode",
    "read_models",
    "read_to_end",
]

M = TypeVar("M", bound=BaseModel)


class InvalidMessageError(VitguardError):
    """A message on a vitguard topic does not match its contract."""

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
class RawRecord:
    """One record as read: bytes, position and broker timestamp (ms, None when the broker gave none)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @classmethod
    def from_message(cls, msg: Message) -> RawRecord:
        ts_type, ts = msg.timestamp()
        return cls(
            topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=msg.key(),  # type: ignore[arg-type]
            value=msg.value(),  # type: ignore[arg-type]
            timestamp_ms=ts if ts_type else None,
            headers=tuple(msg.headers() or ()),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Record(Generic[M]):
    """One record decoded: ``value`` when it matched the contract, ``error`` when it did not."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int | None
    value: M | None = None
    error: InvalidMessageError | None = None


def decode(record: RawRecord, model: type[M]) -> Record[M]:
    """Validate ``record``'s value as ``model``; a bad one becomes a :class:`Record` with ``error`` set
    (reason ``invalid_json`` or ``schema_violation``, raw bytes kept)."""

    def invalid(reason: ReasonCode, text: str) -> Record[M]:
        error = InvalidMessageError(
            reason, text, topic=record.topic, partition=record.partition, offset=record.offset, raw=record.value
        )
        return Record(record.topic, record.partition, record.offset, record.key, record.timestamp_ms, error=error)

    if record.value is None:
        return invalid("invalid_json", "empty message")
    try:
        value = model.model_validate_json(record.value)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            return invalid("invalid_json", f"not a {model.__name__}: {err['msg']}")
        where = ".".join(str(p) for p in err["loc"]) or model.__name__
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return invalid("schema_violation", f"not a {model.__name__}: {where}: {err['msg']}{more}")
    return Record(record.topic, record.partition, record.offset, record.key, record.timestamp_ms, value=value)


class TopicReader:
    """Reads one or more topics (see the module docstring for the two modes).

    Args:
        kafka: connection settings.
        topics: the topic or topics to read.
        group_id: join this consumer group (the caller stores offsets with :meth:`store`); None: assign
            every partition and commit nothing.
        from_beginning: start at the oldest record (default) instead of the end; with a group, only
            where the group has no committed offset.
        connect_timeout_s: how long to wait for metadata and offsets.
        poll_interval_s: longest single wait inside iteration (shutdown latency).
        consumer_overrides: extra librdkafka properties.

    Raises:
        ServiceUnavailableError, TopicNotFoundError: when the broker or a topic is not there.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: str | Sequence[str],
        *,
        group_id: str | None = None,
        from_beginning: bool = True,
        connect_timeout_s: float = 10.0,
        poll_interval_s: float = 0.5,
        consumer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(dict.fromkeys(topics))
        self.group_id = group_id
        self.poll_interval_s = poll_interval_s
        existing = TopicAdmin(kafka, timeout_s=connect_timeout_s).topics()
        missing = [t for t in self.topics if t not in existing]
        if missing:
            names = ", ".join(repr(t) for t in missing)
            raise TopicNotFoundError(f"topic {names} does not exist on {kafka.bootstrap_servers}")
        reset = "earliest" if from_beginning else "latest"
        overrides = dict(consumer_overrides or {})
        self._partitions = {t: existing[t] for t in self.topics}
        if group_id is None:
            self._consumer = Consumer(
                consumer_config(kafka, f"vitguard-reader-{uuid.uuid4().hex[:8]}",
                                **{"auto.offset.reset": reset, **overrides})
            )
            assignment: list[TopicPartition] = []
            for topic, parts in self._partitions.items():
                if from_beginning:
                    starts = dict.fromkeys(parts, OFFSET_BEGINNING)
                else:  # the confirmed end rather than OFFSET_END: see vitguard.kafka.coarse_offsets
                    starts = end_offsets(self._consumer, topic, parts, connect_timeout_s)
                assignment += [TopicPartition(topic, p, o) for p, o in starts.items()]
            self._consumer.assign(assignment)
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
                        **overrides,
                    },
                )
            )
            self._consumer.subscribe(self.topics)
        self._closed = False

    # -- reading ---------------------------------------------------------------------------------------

    def _poll_one(self, timeout_s: float) -> tuple[RawRecord | None, tuple[str, int] | None]:
        """One poll: a record, or the (topic, partition) that reached its end, or neither."""
        msg = self._consumer.poll(timeout_s)
        if msg is None:
            return None, None
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None, (msg.topic() or "", msg.partition() or 0)
            raise_if_fatal(err, msg.topic() or ",".join(self.topics))
            return None, None
        return RawRecord.from_message(msg), None

    def next_record(self, timeout_s: float) -> RawRecord | None:
        """The next record, or None when none arrived within ``timeout_s``."""
        return self._poll_one(timeout_s)[0]

    def follow(self, *, max_messages: int | None = None, idle_timeout_s: float | None = None) -> Iterator[RawRecord]:
        """Yield records as they arrive until ``max_messages`` were read or nothing arrived for
        ``idle_timeout_s`` (both None: forever)."""
        read = 0
        last = time.monotonic()
        while max_messages is None or read < max_messages:
            record = self.next_record(self.poll_interval_s)
            if record is None:
                if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            read += 1
            yield record

    def poll(self, timeout_s: float) -> list[RawRecord]:
        """Whatever arrives within ``timeout_s``."""
        out: list[RawRecord] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            record, _ = self._poll_one(min(left, self.poll_interval_s))
            if record is not None:
                out.append(record)
        return out

    def read_to_end(self, timeout_s: float = 20.0) -> list[RawRecord]:
        """Every record up to the end of every assigned partition (assign mode only).

        Raises:
            ServiceUnavailableError: some partition did not reach its end within ``timeout_s``.
        """
        if self.group_id is not None:
            raise ValueError("read_to_end needs an assigned reader (group_id=None): a group's partitions move")
        pending = {(t, p) for t, parts in self._partitions.items() for p in parts}
        out: list[RawRecord] = []
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"partitions {sorted(pending)} did not reach their end within {timeout_s:g}s"
                )
            record, at_end = self._poll_one(0.2)
            if at_end is not None:
                pending.discard(at_end)
            elif record is not None:
                pending.add((record.topic, record.partition))
                out.append(record)
        return out

    def store(self, record: RawRecord) -> None:
        """Group mode: ``record`` is handled; its offset is committed with the next auto-commit."""
        if self.group_id is not None:
            self._consumer.store_offsets(offsets=[TopicPartition(record.topic, record.partition, record.offset + 1)])

    # -- finishing -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit stored offsets (group mode) and leave."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_to_end(kafka: KafkaSettings, topic: str | Sequence[str], timeout_s: float = 20.0) -> list[RawRecord]:
    """Every record of ``topic`` now, from the oldest to the end of each partition."""
    with TopicReader(kafka, topic, connect_timeout_s=timeout_s) as reader:
        return reader.read_to_end(timeout_s)


def read_models(kafka: KafkaSettings, topic: str, model: type[M], timeout_s: float = 20.0) -> list[Record[M]]:
    """:func:`read_to_end`, each record decoded as ``model``."""
    return [decode(r, model) for r in read_to_end(kafka, topic, timeout_s)]
