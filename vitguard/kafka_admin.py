"""Topic and offset helpers shared by the publisher, replay and subscribers (confluent-kafka).

One place for the questions vitguard's clients ask a cluster before they read or write: does this topic
exist and how many partitions does it have, where does each partition end right now, and which offset is
the first one at or after a timestamp. Third-party errors become :class:`~vitguard.errors.VitguardError`
subclasses here, so the CLI can print one line.

Offsets are answered the Kafka way (``ListOffsets`` via ``get_watermark_offsets`` and
``offsets_for_times``) and then *confirmed by reading*: a broker may answer ``ListOffsets`` coarsely (the
local Tansu broker used in tests answers at record-batch granularity and returns offset 0 for every
timestamp), so each answer is checked against the records themselves. Against Apache Kafka the check
costs one fetch per partition and never moves an offset; against a coarse broker it makes the result
exact instead of silently wrong.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from vitguard.errors import ServiceUnavailableError, VitguardError
from vitguard.settings import KafkaSettings

__all__ = [
    "KAFKA_LOGGER",
    "TopicNotFoundError",
    "client_config",
    "consumer_config",
    "end_offsets",
    "offsets_for_timestamp",
    "start_offsets",
    "topic_partitions",
]

KAFKA_LOGGER = logging.getLogger("vitguard.kafka")
"""librdkafka's own log lines go here instead of raw to stderr, so CLI errors stay one line."""
KAFKA_LOGGER.addHandler(logging.NullHandler())

_TIMESTAMP_NOT_AVAILABLE = 0


class TopicNotFoundError(VitguardError):
    """A topic vitguard was asked to read or write does not exist (vitguard never auto-creates topics)."""


def client_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """librdkafka properties for any client: the settings' connection properties, our logger, ``extra``."""
    return {**kafka.confluent_config(), "logger": KAFKA_LOGGER, **extra}


def consumer_config(kafka: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    """Properties of a consumer that is *assigned* partitions and never commits.

    confluent-kafka requires a ``group.id`` even for assign-only consumers; nothing is committed under it
    and no group is joined, so replays and ``tail`` never wait for a rebalance or disturb the workers.
    """
    return client_config(
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
    """The partition ids of ``topic``.

    All topics' metadata is requested rather than the one topic's: asking for a topic by name makes a
    broker with ``auto.create.topics.enable`` create it, which would hide a typo.

    Raises:
        ServiceUnavailableError: no broker answered within ``timeout_s``.
        TopicNotFoundError: the topic does not exist.
    """
    try:
        metadata = AdminClient(client_config(kafka)).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailableError(
            f"Kafka at {kafka.bootstrap_servers} did not answer within {timeout_s:g}s ({_kafka_reason(exc)})"
        ) from exc
    found = metadata.topics.get(topic)
    if found is None:
        raise TopicNotFoundError(f"topic {topic!r} does not exist on {kafka.bootstrap_servers}")
    if found.error is not None:
        raise TopicNotFoundError(f"topic {topic!r} is not usable on {kafka.bootstrap_servers}: {found.error.str()}")
    return sorted(found.partitions)


def end_offsets(consumer: Consumer, topic: str, partitions: Iterable[int], timeout_s: float) -> dict[int, int]:
    """Each partition's end (high watermark) now: the offset the next record written will get.

    The ``ListOffsets`` answer is confirmed by one fetch from that offset: the fetch response carries the
    partition's high watermark, which librdkafka then reports as the cached watermark. The larger of the
    two is the end. ``consumer`` must have ``enable.partition.eof`` set (see :func:`consumer_config`); its
    assignment is replaced.
    """
    parts = list(partitions)
    reported = {p: _watermarks(consumer, topic, p, timeout_s)[1] for p in parts}
    _fetch_once(consumer, topic, reported, timeout_s)
    ends = {}
    for p in parts:
        cached_high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
        ends[p] = max(reported[p], cached_high if cached_high is not None else -1)
    return ends


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
    This is Kafka's ``offsets_for_times`` answer, confirmed by reading forward from it until the first
    record at or after the timestamp (see the module docstring). ``consumer``'s assignment is replaced.

    Raises:
        ServiceUnavailableError: the broker did not answer within ``timeout_s``.
    """
    query = [TopicPartition(topic, p, timestamp_ms) for p in bounds]
    try:
        answered = consumer.offsets_for_times(query, timeout=timeout_s) if query else []
    except KafkaException as exc:
        raise ServiceUnavailableError(f"offsets_for_times on {topic!r} failed: {_kafka_reason(exc)}") from exc
    result: dict[int, int] = {}
    for tp in answered:
        low, end = bounds[tp.partition]
        if tp.error is not None:
            raise ServiceUnavailableError(f"offsets_for_times on {topic}[{tp.partition}] failed: {tp.error.str()}")
        result[tp.partition] = end if tp.offset < 0 else min(max(tp.offset, low), end)
    return _confirm_by_timestamp(consumer, topic, timestamp_ms, result, {p: b[1] for p, b in bounds.items()}, timeout_s)


def _confirm_by_timestamp(
    consumer: Consumer,
    topic: str,
    timestamp_ms: int,
    candidates: dict[int, int],
    ends: Mapping[int, int],
    timeout_s: float,
) -> dict[int, int]:
    """Read forward from each candidate to the first record with timestamp >= ``timestamp_ms``."""
    open_parts = {p: o for p, o in candidates.items() if o < ends[p]}
    if not open_parts:
        return candidates
    exact = dict(candidates)
    _assign(consumer, [TopicPartition(topic, p, o) for p, o in open_parts.items()])
    deadline = time.monotonic() + timeout_s
    try:
        while open_parts:
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"reading {topic!r} to find offsets at timestamp {timestamp_ms} took longer than {timeout_s:g}s"
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            p = msg.partition()
            if p not in open_parts:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    exact[p] = ends[p]
                    _close(consumer, topic, open_parts, p)
                    continue
                _raise_if_fatal(err, topic)
                continue
            offset = msg.offset()
            if offset is None:
                continue
            ts_type, ts = msg.timestamp()
            if offset >= ends[p]:
                exact[p] = ends[p]
            elif ts_type == _TIMESTAMP_NOT_AVAILABLE or ts >= timestamp_ms:
                exact[p] = offset
            else:
                continue
            if exact[p] != candidates[p]:
                KAFKA_LOGGER.debug("broker time index is coarse: %s[%d] %d -> %d", topic, p, candidates[p], exact[p])
            _close(consumer, topic, open_parts, p)
    finally:
        consumer.assign([])
    return exact


def _assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    # A partition paused under an earlier assignment stays paused in librdkafka: resume explicitly.
    consumer.assign(partitions)
    consumer.resume(partitions)


def _close(consumer: Consumer, topic: str, open_parts: dict[int, int], partition: int) -> None:
    del open_parts[partition]
    consumer.pause([TopicPartition(topic, partition)])


def _fetch_once(consumer: Consumer, topic: str, offsets: Mapping[int, int], timeout_s: float) -> None:
    """Assign ``offsets`` and poll until every partition answered once (a record or end-of-partition)."""
    pending = set(offsets)
    if not pending:
        return
    _assign(consumer, [TopicPartition(topic, p, o) for p, o in offsets.items()])
    deadline = time.monotonic() + timeout_s
    try:
        while pending:
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"partitions {sorted(pending)} of {topic!r} did not answer a fetch within {timeout_s:g}s"
                )
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                _raise_if_fatal(err, topic)
                continue
            pending.discard(msg.partition())
    finally:
        consumer.assign([])


def _watermarks(consumer: Consumer, topic: str, partition: int, timeout_s: float) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s, cached=False)
    except KafkaException as exc:
        raise ServiceUnavailableError(
            f"could not read the offsets of {topic}[{partition}] within {timeout_s:g}s: {_kafka_reason(exc)}"
        ) from exc
    return int(low), int(high)


def _raise_if_fatal(err: KafkaError, topic: str) -> None:
    if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        raise ServiceUnavailableError(f"reading {topic!r} failed: {err.str()}")
    KAFKA_LOGGER.warning("reading %s: %s (retrying)", topic, err.str())


def _kafka_reason(exc: KafkaException) -> str:
    arg = exc.args[0] if exc.args else None
    return arg.str() if isinstance(arg, KafkaError) else str(exc)
