"""The console's queue: requests minus decisions, merged per item, most urgent first (pure)."""

from __future__ import annotations

from datetime import timedelta

from review_values import T0, decision, request

from vitguard.review.queue import ReviewQueue, item_key


def test_pending_until_decided_and_again_on_a_newer_request() -> None:
    q = ReviewQueue()
    q.add_request(request("a"))
    assert [i.request.content_id for i in q.pending()] == ["a"] and q.depth() == 1
    q.add_decision(decision("a", at=T0 + timedelta(minutes=1)))
    assert q.pending() == [] and q.depth() == 0
    q.add_request(request("a", at=T0 + timedelta(minutes=2), reasons=["appeal"]))
    assert [i.request.reasons for i in q.pending()] == [["appeal"]]


def test_decision_read_before_its_request() -> None:
    q = ReviewQueue()
    q.add_decision(decision("a", at=T0 + timedelta(minutes=1)))
    q.add_request(request("a"))
    assert q.pending() == []
    assert q.get(item_key("a")) is not None


def test_requests_merge_while_pending_and_waves_come_first() -> None:
    q = ReviewQueue()
    q.add_request(request("u", at=T0))
    q.add_request(request("w", at=T0 + timedelta(minutes=3), reasons=["wave"]))
    q.add_request(request("u", at=T0 + timedelta(minutes=1), reasons=["near_duplicate"], cluster_id="c-2"))
    pending = q.pending()
    assert [i.request.content_id for i in pending] == ["w", "u"]
    assert pending[1].request.reasons == ["uncertain", "near_duplicate"] and pending[1].request.cluster_id == "c-2"
