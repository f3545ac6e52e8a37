"""Offset questions asked before reading: where does each partition start and end now, and which offset
is the first at or after a timestamp. Used by replay and the typed reader.

Answers come the Kafka way (``ListOffsets`` via ``get_watermark_offsets`` and ``offsets_for_times``) and
are then confirmed by reading, in :mod:`vitguard.kafka.coarse_offsets` (why, and why it is harmless on
Apache Kafka, is written there). Third-party errors become
:class:`~vitguard.errors.ServiceUnavailableError` here, so the CLI can print one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.admin import TopicAdmin
from vitguard.kafka.coarse_offsets import confirm_end_offsets, confirm_timestamp_offsets
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.errors import kafka_reason
from vitguard.settings import KafkaSettings

__all__ = [
    "consumer_config",
    "end_offsets",
    "offsets_for_timestamp",
    "start_offsets",
    "topic_partitions",
]


def consumer_config(kafka: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    """Properties of a consumer that is *assigned* partitions and never commits.

    confluent-kafka requires a ``group.id`` even for assign-only consumers; nothing is committed under it
    and no group is joined, so replays and readers never wait for a rebalance or disturb the workers.
    """
    return librdkafka_config(
        kafka,
        **{
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
            **extra,
        },
    )


def topic_partitions(kafka: KafkaSettings, topic: str, timeout_s: float) -> list[int]:
    """The partition ids of ``topic`` (see :meth:`TopicAdmin.partitions`).

    Raises:
        ServiceUnavailableError: no broker answered within ``timeout_s``.
        TopicNotFoundError: the topic does not exist.
    """
    return TopicAdmin(kafka, timeout_s=timeout_s).partitions(topic)


def end_offsets(consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float) -> dict[int, int]:
    """Each partition's end (high watermark) now: the offset the next record written will get.

    ``consumer`` must have ``enable.partition.eof`` set (see :func:`consumer_config`); its assignment is
    replaced.
    """
    reported = {p: _watermarks(consumer, topic, p, timeout_s)[1] for p in partitions}
    return confirm_end_offsets(consumer, topic, reported, timeout_s)


def start_offsets(consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float) -> dict[int, int]:
    """Each partition's first readable offset (low watermark; earlier records were deleted by retention)."""
    return {p: _watermarks(consumer, topic, p, timeout_s)[0] for p in partitions}


def offsets_for_timestamp(
    consumer: Consumer,
    topic: str,
    timestamp_ms: int,
    bounds: Mapping[int, tuple[int, int]],
    timeout_s: float,
) -> dict[int, int]:
    """Per partition, the first offset whose record timestamp is >= ``timestamp_ms``.

    ``bounds`` maps partition -> (low, end): a partition with no such record before ``end`` gets ``end``.
    ``consumer``'s assignment is replaced.

    Raises:
        ServiceUnavailableError: the broker did not answer within ``timeout_s``.
    """
    query = [TopicPartition(topic, p, timestamp_ms) for p in bounds]
    try:
        answered = consumer.offsets_for_times(query, timeout=timeout_s) if query else []
    except KafkaException as exc:
        raise ServiceUnavailableError(f"offsets_for_times on {topic!r} failed: {kafka_reason(exc)}") from exc
    result: dict[int, int] = {}
    for tp in answered:
        low, end = bounds[tp.partition]
        if tp.error is not None:
            raise ServiceUnavailableError(f"offsets_for_times on {topic}[{tp.partition}] failed: {tp.error.str()}")
        result[tp.partition] = end if tp.offset < 0 else min(max(tp.offset, low), end)
    ends = {p: b[1] for p, b in bounds.items()}
    return confirm_timestamp_offsets(consumer, topic, timestamp_ms, result, ends, timeout_s)


def _watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s, cached=False)
    except KafkaException as exc:
        raise ServiceUnavailableError(
            f"could not read the offsets of {topic}[{partition}] within {timeout_s:g}s: {kafka_reason(exc)}"
        ) from exc
    return int(low), int(high)
