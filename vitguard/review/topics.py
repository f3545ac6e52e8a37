"""Creating the review loop's topics, with the cleanup policy each one needs (idempotent)."""

from __future__ import annotations

import logging

from vitguard.kafka.admin import TopicAdmin, TopicSpec
from vitguard.settings import KafkaSettings, TopicSettings

__all__ = ["ensure_review_topics", "review_topic_specs"]

_log = logging.getLogger(__name__)

_COMPACTED = {"cleanup.policy": "compact"}
_FOREVER = {"cleanup.policy": "delete", "retention.ms": "-1"}


def review_topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """review-requests compacted by content id (the latest request per item), review-decisions compacted by
    decision id (every decision kept: each has its own key), verdict-corrections compacted by content id
    (the current correction per item), review-audit kept forever (the append-only trail)."""
    p, r = topics.partitions, topics.replication_factor
    return [
        TopicSpec(topics.review_requests, p, r, _COMPACTED),
        TopicSpec(topics.review_decisions, p, r, _COMPACTED),
        TopicSpec(topics.review_audit, p, r, _FOREVER),
        TopicSpec(topics.verdict_corrections, p, r, _COMPACTED),
    ]


def ensure_review_topics(kafka: KafkaSettings, topics: TopicSettings, timeout_s: float | None = None) -> list[str]:
    """Create whichever review topics are missing; return the names created."""
    created = TopicAdmin(kafka, timeout_s=timeout_s).create(review_topic_specs(topics))
    if created:
        _log.info("created review topics %s", created)
    return created
