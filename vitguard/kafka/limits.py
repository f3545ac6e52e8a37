"""The largest message each output topic accepts, read from the cluster at start-up.

An output larger than its topic accepts would fail at publish time, after the batch was processed; the
emit stage instead checks sizes before publishing (and dead-letters an oversized output, truncated) using
these limits. A topic's limit is the smaller of

* what the broker accepts for the topic: the topic config ``max.message.bytes``; when the topic's
  configs cannot be described, the broker config ``message.max.bytes`` (the default every topic
  inherits); when neither can be described, :data:`DEFAULT_MAX_MESSAGE_BYTES` (Kafka's own default,
  1 MiB) with one warning;
* what our producer sends in one request (librdkafka's ``message.max.bytes``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.admin import TopicAdmin
from vitguard.schemas.events import INLINE_ENVELOPE_BYTES, inline_capacity
from vitguard.settings import KafkaSettings

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PRODUCER_MAX_REQUEST_BYTES",
    "INLINE_ENVELOPE_BYTES",
    "UNREAD_TOPIC_LIMIT",
    "inline_capacity",
    "output_limit",
    "read_output_limits",
]

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
"""Assumed when the broker describes neither the topic nor itself (Kafka's default ``message.max.bytes``)."""

PRODUCER_MAX_REQUEST_BYTES = 1_000_000
"""The largest message the worker's producer sends (librdkafka's ``message.max.bytes`` in
:class:`vitguard.consumers.sink.KafkaSink`; Faust's own producer, unused for outputs, gets the same): no topic's
limit can raise an output past it."""

_log = logging.getLogger(__name__)


def output_limit(topic_max_bytes: int | None, broker_max_bytes: int | None, producer_max_request_bytes: int) -> int:
    """The limit for one topic: the broker's answer for it (topic config, else broker config, else 1 MiB),
    capped by what the producer sends in one request."""
    if producer_max_request_bytes < 1:
        raise ValueError(f"producer_max_request_bytes must be >= 1, got {producer_max_request_bytes}")
    if topic_max_bytes is not None:
        accepted = topic_max_bytes
    elif broker_max_bytes is not None:
        accepted = broker_max_bytes
    else:
        accepted = DEFAULT_MAX_MESSAGE_BYTES
    return min(accepted, producer_max_request_bytes)


UNREAD_TOPIC_LIMIT = output_limit(None, None, PRODUCER_MAX_REQUEST_BYTES)
"""The limit of an output topic whose own was not read from the broker (yet, or at all): Kafka's default,
capped by the producer's request size (a message over that is refused by the client itself)."""


def _int_config(configs: dict[str, str], name: str) -> int | None:
    text = configs.get(name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_output_limits(
    kafka: KafkaSettings,
    topics: Iterable[str],
    producer_max_request_bytes: int,
    timeout_s: float,
    *,
    admin: TopicAdmin | None = None,
) -> dict[str, int]:
    """Per topic, the largest message (bytes) that both the broker and our producer accept.

    Args:
        kafka: connection settings.
        topics: the output topics.
        producer_max_request_bytes: the producer's ``message.max.bytes`` (librdkafka) /
            ``max_request_size`` (aiokafka).
        timeout_s: per describe request.
        admin: the admin to ask (default: one built from ``kafka``).

    Raises:
        TopicNotFoundError: the broker says an output topic does not exist.
    """
    admin = admin or TopicAdmin(kafka, timeout_s=timeout_s)
    broker_max: int | None = None
    broker_asked = False
    unanswered: list[str] = []
    limits: dict[str, int] = {}
    for topic in dict.fromkeys(topics):
        try:
            topic_max = _int_config(admin.topic_config(topic), "max.message.bytes")
        except ServiceUnavailableError as exc:
            _log.debug("describe of topic %s failed: %s", topic, exc)
            topic_max = None
        if topic_max is None:
            if not broker_asked:
                broker_asked = True
                try:
                    broker_max = _int_config(admin.broker_config(), "message.max.bytes")
                except ServiceUnavailableError as exc:
                    _log.debug("describe of the broker failed: %s", exc)
            if broker_max is None:
                unanswered.append(topic)
        limits[topic] = output_limit(topic_max, broker_max, producer_max_request_bytes)
    if unanswered:
        _log.warning(
            "the broker described no max.message.bytes for topics %s and no broker message.max.bytes; assuming %d",
            unanswered, DEFAULT_MAX_MESSAGE_BYTES,
        )
    return limits
