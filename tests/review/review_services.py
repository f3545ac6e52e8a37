"""Helpers of the review-loop integration tests: settings with fresh review topics, seeded Milvus rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from vitguard.model.types import ModelInfo
from vitguard.review.topics import ensure_review_topics
from vitguard.settings import Settings
from vitguard.stores.interfaces import EmbeddingRecord
from vitguard.stores.milvus import MilvusEmbeddingIndex

INFO = ModelInfo("review-test-model", "v1", ("NSFW", "SFW"), 8, (3, 8, 8))
VECTOR = np.linspace(1.0, 2.0, 8, dtype=np.float32)


def review_settings(service_settings: Callable[..., Settings], **overrides: Any) -> Settings:
    """Settings on the session's services with review topics of this test only, created (compacted ones too)."""
    tag = uuid.uuid4().hex[:10]
    topics = {"review_requests": f"rr-{tag}", "review_decisions": f"rd-{tag}", "review_audit": f"ra-{tag}",
              "verdict_corrections": f"vc-{tag}", "partitions": 2}
    settings = service_settings(topics=topics, **overrides)
    ensure_review_topics(settings.kafka, settings.topics, timeout_s=15)
    return settings


def seed_unsafe(index: MilvusEmbeddingIndex, content_id: str, vector: np.ndarray = VECTOR) -> str:
    """An unsafe row for ``content_id`` in the test model's collection; returns the collection."""
    collection = index.ensure_collection(INFO)
    index.upsert(collection, [EmbeddingRecord(content_id, vector, "unsafe", 0.93, "c-seed", "default", "v1", 0, 0)])
    return collection
