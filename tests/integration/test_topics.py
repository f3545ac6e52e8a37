"""The worker's topics at start-up, on a real broker: the four stream topics and, with the review loop on,
the review-requests topic it publishes to (a broker that does not auto-create topics would otherwise refuse
every review request)."""

from __future__ import annotations

import uuid

import pytest

from vitguard.consumers.topics import ensure_topics
from vitguard.kafka.admin import TopicAdmin
from vitguard.settings import KafkaSettings, TopicSettings

pytestmark = pytest.mark.integration


def test_missing_topics_are_created_once_review_requests_included(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings(images=f"img-{tag}", verdicts=f"v-{tag}", alerts=f"a-{tag}", dead_letters=f"d-{tag}",
                           review_requests=f"rr-{tag}", partitions=2)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    created = ensure_topics(kafka, topics, extra=[topics.review_requests])
    assert sorted(created) == sorted([*topics.all(), topics.review_requests])
    admin = TopicAdmin(kafka)
    assert all(len(admin.topics()[t]) == 2 for t in created)
    assert ensure_topics(kafka, topics, extra=[topics.review_requests]) == []  # idempotent
