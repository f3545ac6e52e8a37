"""Workaround for brokers whose ``ListOffsets`` answers are coarse: confirm each answer by reading.

Which brokers: the embedded Tansu broker that the tests and ``vitguard demo`` run (memory storage)
answers ``ListOffsets`` at record-batch granularity. Its high watermark from ``get_watermark_offsets``
can lag the records it serves, and ``offsets_for_times`` returns offset 0 for every timestamp. Taking
those answers as they are would make a replay "from 10:00" start at the oldest record, and a subscriber
"from the end" re-read records.

What: every answer is checked against the records themselves.

* :func:`confirm_end_offsets`: one fetch from the answered end; the fetch response carries the
  partition's real high watermark (librdkafka caches it), and the larger of the two is the end.
* :func:`confirm_timestamp_offsets`: read forward from the answered offset to the first record whose
  timestamp is at or after the one asked for.

Why harmless on Apache Kafka (what users run): Kafka's answers are exact, so the fetch from the end
returns end-of-partition at once and the cached watermark equals the answer, and the first record read
from an ``offsets_for_times`` answer already has a timestamp at or after the one asked for. The check
costs one fetch per partition and never moves an offset. This is the only module in vitguard that knows
about a broker quirk; delete it (and its two calls in :mod:`vitguard.kafka.offsets`) if the embedded
broker's answers become exact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.config import KAFKA_LOGGER
from vitguard.kafka.errors import raise_if_fatal

__all__ = ["assign_resumed", "confirm_end_offsets", "confirm_timestamp_offsets"]

_TIMESTAMP_NOT_AVAILABLE = 0
_POLL_S = 0.2


def assign_resumed(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """Assign ``partitions`` and resume them: a partition paused under an earlier assignment stays
    paused in librdkafka."""
    consumer.assign(partitions)
    consumer.resume(partitions)


def confirm_end_offsets(
    consumer: Consumer, topic: str, reported: Mapping[int, int], timeout_s: float
) -> dict[int, int]:
    """The exact end of each partition, given the broker's ``ListOffsets`` answer ``reported``.

    ``consumer`` must have ``enable.partition.eof`` set; its assignment is replaced (and cleared).
    """
    _fetch_once(consumer, topic, reported, timeout_s)
    ends = {}
    for p, answered in reported.items():
        cached_high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
        ends[p] = max(answered, cached_high if cached_high is not None else -1)
        if ends[p] != answered:
            KAFKA_LOGGER.debug("broker ListOffsets is coarse: end of %s[%d] %d -> %d", topic, p, answered, ends[p])
    return ends


def confirm_timestamp_offsets(
    consumer: Consumer,
    topic: str,
    timestamp_ms: int,
    candidates: Mapping[int, int],
    ends: Mapping[int, int],
    timeout_s: float,
) -> dict[int, int]:
    """Read forward from each candidate (``offsets_for_times`` answer) to the first record with
    timestamp >= ``timestamp_ms``; a partition without one before its end gets its end.

    ``consumer``'s assignment is replaced (and cleared).

    Raises:
        ServiceUnavailableError: reading took longer than ``timeout_s``, or failed.
    """
    exact = dict(candidates)
    open_parts = {p: o for p, o in candidates.items() if o < ends[p]}
    if not open_parts:
        return exact
    assign_resumed(consumer, [TopicPartition(topic, p, o) for p, o in open_parts.items()])
    too_slow = f"reading {topic!r} to find offsets at timestamp {timestamp_ms} took longer than {timeout_s:g}s"
    try:
        for msg in _poll_open(consumer, open_parts, time.monotonic() + timeout_s, too_slow):
            p = msg.partition()
            assert p is not None  # noqa: S101 - _poll_open yields only messages of open partitions
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    exact[p] = ends[p]
                    _close(consumer, topic, open_parts, p)
                else:
                    raise_if_fatal(err, topic)
                continue
            found = _timestamp_offset(msg, timestamp_ms, ends[p])
            if found is None:
                continue
            exact[p] = found
            if found != candidates[p]:
                KAFKA_LOGGER.debug("broker time index is coarse: %s[%d] %d -> %d", topic, p, candidates[p], found)
            _close(consumer, topic, open_parts, p)
    finally:
        consumer.assign([])
    return exact


def _poll_open(consumer: Consumer, open_parts: Mapping[int, int], deadline: float, too_slow: str) -> Iterator[Message]:
    """The messages of the partitions still in ``open_parts``, until none is left (the caller removes each it
    is done with).

    Raises:
        ServiceUnavailableError: ``too_slow``, once ``time.monotonic()`` is past ``deadline``.
    """
    while open_parts:
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(too_slow)
        msg = consumer.poll(_POLL_S)
        if msg is not None and msg.partition() in open_parts:
            yield msg


def _timestamp_offset(msg: Message, timestamp_ms: int, end: int) -> int | None:
    """The answer for ``msg``'s partition, given it is the next record there: its offset when its timestamp is
    at or after ``timestamp_ms`` (or unknown), the partition's ``end`` when it lies at or past it; None: read on.
    """
    offset = msg.offset()
    if offset is None:
        return None
    ts_type, ts = msg.timestamp()
    if offset >= end:
        return end
    if ts_type == _TIMESTAMP_NOT_AVAILABLE or ts >= timestamp_ms:
        return offset
    return None


def _close(consumer: Consumer, topic: str, open_parts: dict[int, int], partition: int) -> None:
    del open_parts[partition]
    consumer.pause([TopicPartition(topic, partition)])


def _fetch_once(consumer: Consumer, topic: str, offsets: Mapping[int, int], timeout_s: float) -> None:
    """Assign ``offsets`` and poll until every partition answered once (a record or end-of-partition)."""
    pending = set(offsets)
    if not pending:
        return
    assign_resumed(consumer, [TopicPartition(topic, p, o) for p, o in offsets.items()])
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"partitions {sorted(pending)} of {topic!r} did not answer a fetch within {timeout_s:g}s"
                )
            msg = consumer.poll(_POLL_S)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                raise_if_fatal(err, topic)
                continue
            pending.discard(msg.partition())
    finally:
        consumer.assign([])
