"""The applier against a real broker and Milvus Lite: decisions take effect once, corrections and audit
are published, a restarted applier skips what it already applied."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from review_services import VECTOR, review_settings, seed_unsafe
from review_values import decision

from vitguard.kafka.produce import publish_and_wait, raise_on_failures
from vitguard.kafka.reader import read_models
from vitguard.review.applier import DecisionApplier, encode
from vitguard.schemas.review import ReviewAuditRecord, VerdictCorrection
from vitguard.stores.milvus import MilvusEmbeddingIndex

pytestmark = pytest.mark.integration


def test_decisions_apply_once_and_survive_a_restart(service_settings: Callable[..., Any]) -> None:
    settings = review_settings(service_settings)
    t = settings.topics
    index = MilvusEmbeddingIndex(settings.milvus)
    try:
        collection = seed_unsafe(index, "upload-1")
        seed_unsafe(index, "upload-2")
        assert [h.content_id for h in index.search_unsafe(collection, VECTOR[None], 5, 0.9)[0]] != []
        overturn = decision("upload-1", collection=collection, previous_label="unsafe", model_version="v1")
        confirm = decision("upload-2", "confirm_unsafe", collection=collection)
        messages = [encode(t.review_decisions, d.decision_id, d) for d in (overturn, overturn, confirm)]
        raise_on_failures(publish_and_wait(settings.kafka, messages))  # the overturn is delivered twice

        applier = DecisionApplier(settings, records=index)
        assert applier.run(once=True) == 2

        assert index.get(collection, ["upload-1"])["upload-1"].label == "overturned"
        hits = index.search_unsafe(collection, VECTOR[None], 5, 0.9)[0]
        assert [h.content_id for h in hits] == ["upload-2"], "the overturned item is no near-duplicate anchor"
        corrections = [r.value for r in read_models(settings.kafka, t.verdict_corrections, VerdictCorrection)]
        assert sorted((c.content_id, c.label) for c in corrections if c) == [("upload-1", "safe"),
                                                                              ("upload-2", "unsafe")]
        audit = [r.value for r in read_models(settings.kafka, t.review_audit, ReviewAuditRecord) if r.value]
        assert sorted(a.decision_id for a in audit) == sorted([overturn.decision_id, confirm.decision_id])
        assert all(a.outcome == "applied" for a in audit)

        restarted = DecisionApplier(settings, records=index)
        assert restarted.run(once=True) == 0
        again = read_models(settings.kafka, t.review_audit, ReviewAuditRecord)
        assert len(again) == 2, "a restart re-reads decisions but audits nothing twice"
    finally:
        index.close()


def test_the_queue_feed_counts_the_queue_once_caught_up_not_per_record(service_settings: Callable[..., Any]) -> None:
    """The depth gauge was recounted after every record, a scan of the whole queue each time: loading 20,000
    requests took 31 s, a million about a day, while the console showed a partial queue."""
    import threading
    import time

    from review_values import request

    from vitguard.review import metrics as review_metrics
    from vitguard.review.console import QueueFeed
    from vitguard.review.queue import ReviewQueue

    settings = review_settings(service_settings)
    n = 3000
    raise_on_failures(publish_and_wait(settings.kafka, [
        encode(settings.topics.review_requests, f"c{i}", request(f"c{i}")) for i in range(n)]))

    class CountingQueue(ReviewQueue):
        counts = 0

        def depth(self) -> int:
            CountingQueue.counts += 1
            return super().depth()

    queue = CountingQueue()
    feed = QueueFeed(settings, queue, threading.Lock())
    feed.start()
    try:
        deadline = time.monotonic() + 60
        while review_metrics.QUEUE_DEPTH._value.get() != n and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        feed.stop()
    assert feed.error is None and len(queue.pending()) == n
    assert review_metrics.QUEUE_DEPTH._value.get() == n and CountingQueue.counts < 50
