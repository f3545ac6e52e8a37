"""Creating the worker's topics at start-up when they are missing (idempotent; existing ones are kept)."""

from __future__ import annotations

import logging

from vitguard.kafka.admin import TopicAdmin, TopicSpec
from vitguard.settings import KafkaSettings, TopicSettings

__all__ = ["ensure_topics"]

_log = logging.getLogger(__name__)


def ensure_topics(kafka: KafkaSettings, topics: TopicSettings, timeout_s: float | None = None) -> list[str]:
    """Create any of the four topics that does not exist, with the settings' partitions and replication.

    Returns the names created. Raises :class:`~vitguard.errors.ServiceUnavailableError` when the brokers
    do not answer or refuse a topic.
    """
    specs = [TopicSpec(t, topics.partitions, topics.replication_factor) for t in topics.all()]
    created = TopicAdmin(kafka, timeout_s=timeout_s).create(specs)
    if created:
        _log.info("created topics %s", created)
    return created
