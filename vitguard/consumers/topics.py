"""Creating the worker's topics at start-up when they are missing (idempotent; existing ones are kept)."""

from __future__ import annotations

import logging

from vitguard.errors import ServiceUnavailableError
from vitguard.settings import KafkaSettings, TopicSettings

__all__ = ["ensure_topics"]

_log = logging.getLogger(__name__)


def ensure_topics(kafka: KafkaSettings, topics: TopicSettings, timeout_s: float | None = None) -> list[str]:
    """Create any of the four topics that does not exist, with the settings' partitions and replication.

    Returns the names created. Raises :class:`ServiceUnavailableError` when the brokers do not answer.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    timeout = timeout_s or kafka.request_timeout_s
    admin = AdminClient(kafka.confluent_config())
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise ServiceUnavailableError(f"Kafka at {kafka.bootstrap_servers} did not answer: {exc}") from exc
    wanted = [t for t in dict.fromkeys(topics.all()) if t not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=topics.partitions, replication_factor=topics.replication_factor) for t in wanted],
        request_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ServiceUnavailableError(f"could not create topic {name}: {exc}") from exc
    if created:
        _log.info("created topics %s", created)
    return created
