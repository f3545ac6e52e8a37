"""Creating the worker's topics at start-up when they are missing (idempotent; existing ones are kept)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vitguard.kafka.admin import TopicAdmin, TopicSpec
from vitguard.settings import KafkaSettings, TopicSettings

__all__ = ["ensure_topics"]

_log = logging.getLogger(__name__)


def ensure_topics(kafka: KafkaSettings, topics: TopicSettings, timeout_s: float | None = None,
                  extra: Sequence[str] = ()) -> list[str]:
    """Create any of the four topics (and of ``extra``: the review-requests topic the worker publishes to when
    the review loop is on) that does not exist, with the settings' partitions and replication.

    Returns the names created. Raises :class:`~vitguard.errors.ServiceUnavailableError` when the brokers
    do not answer or refuse a topic.
    """
    names = list(dict.fromkeys([*topics.all(), *extra]))
    specs = [TopicSpec(t, topics.partitions, topics.replication_factor) for t in names]
    created = TopicAdmin(kafka, timeout_s=timeout_s).create(specs)
    if created:
        _log.info("created topics %s", created)
    return created
