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


def _malformed(topic: str, good: Any) -> list[Any]:
    """Records an attacker (or a broken producer) can write on a review topic, built from a valid one."""
    import json

    from vitguard.kafka.produce import OutboundMessage

    body = json.loads(good.model_dump_json())
    naive = {**body, **{k: "2026-12-06T19:00:00" for k in ("requested_at", "decided_at") if k in body}}
    cases: list[bytes | None] = [
        b"not json", b"\xff\xfe\x00binary", b"[1, 2, 3]", b"null", b"{}", b"[" * 100_000,
        json.dumps(naive).encode(),  # the console's poison pill: a time with no timezone
        json.dumps({**body, "content_id": "x" * 10_000}).encode(),
        json.dumps({**body, "content_id": 42}).encode(),
        json.dumps({**body, "metadata": {f"k{i}": "v" for i in range(10_000)}}).encode(),
        json.dumps({**body, "schema_version": "9.0"}).encode(),
        None,  # a tombstone
    ]
    return [OutboundMessage(topic, value, f"bad-{i}".encode()) for i, value in enumerate(cases)]


def test_malformed_review_records_are_skipped_and_the_queue_shows_exactly_the_valid_ones(
    service_settings: Callable[..., Any],
) -> None:
    """Issue 29: a review request whose requested_at has no timezone made GET / answer 500 and the next request
    for the same content id killed the console's feed thread for good (a new console did the same). Every
    record is now validated on read; an invalid one is skipped, counted and logged, and the feed goes on."""
    import threading
    import time
    from datetime import UTC, datetime, timedelta

    from review_values import request

    from vitguard.review import metrics as review_metrics
    from vitguard.review.console import QueueFeed
    from vitguard.review.queue import ReviewQueue

    settings = review_settings(service_settings)
    t = settings.topics
    now = datetime.now(UTC)
    messages = []
    for i in range(4):  # valid requests and a decision on one of them, malformed records between all
        messages.append(encode(t.review_requests, f"ok-{i}", request(f"ok-{i}", at=now + timedelta(seconds=i))))
        messages += _malformed(t.review_requests, request(f"ok-{i}", at=now))
    messages.append(encode(t.review_decisions, "d-1", decision("ok-3", at=now + timedelta(minutes=1))))
    messages += _malformed(t.review_decisions, decision("ok-2", at=now + timedelta(minutes=1)))
    messages.append(encode(t.review_requests, "ok-naive-next", request("ok-naive-next", at=now)))
    raise_on_failures(publish_and_wait(settings.kafka, messages))
    skipped_before = sum(review_metrics.RECORDS_SKIPPED.labels(topic)._value.get()
                         for topic in (t.review_requests, t.review_decisions))

    queue = ReviewQueue()
    feed = QueueFeed(settings, queue, threading.Lock())
    feed.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(queue.pending()) + len(queue.decided()) < 5:
            time.sleep(0.1)
        time.sleep(1.0)  # whatever else the feed would take
    finally:
        feed.stop()
    assert feed.error is None
    assert sorted(i.request.content_id for i in queue.pending()) == ["ok-0", "ok-1", "ok-2", "ok-naive-next"]
    assert [i.request.content_id for i in queue.decided()] == ["ok-3"]  # the malformed decision on ok-2: none
    skipped = sum(review_metrics.RECORDS_SKIPPED.labels(topic)._value.get()
                  for topic in (t.review_requests, t.review_decisions)) - skipped_before
    assert skipped == 5 * 12, skipped  # each malformed record counted once


def test_the_applier_skips_a_decision_with_a_naive_time() -> None:
    """The worker's decision applier subtracted a naive decided_at from an aware requested_at (TypeError)."""
    import json

    from vitguard.kafka.reader import RawRecord
    from vitguard.review import metrics as review_metrics
    from vitguard.settings import load_settings

    body = json.loads(decision("c-naive").model_dump_json())
    body.update(requested_at="2026-12-06T18:00:00", decided_at="2026-12-06T19:00:00")
    applier = DecisionApplier(load_settings(), records=None, producer=object())
    before = review_metrics.DECISIONS_HANDLED.labels("invalid")._value.get()
    record = RawRecord("rd", 0, 7, b"c-naive", json.dumps(body).encode(), None)
    assert applier.handle_record(record) is None
    assert review_metrics.DECISIONS_HANDLED.labels("invalid")._value.get() == before + 1
