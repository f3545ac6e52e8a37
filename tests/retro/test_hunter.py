"""The retro-hunter (vitguard.retro.hunter) on a real broker: it reads the review-audit and alerts topics in a
consumer group, hunts for confirmed decisions and waves, and publishes RetroMatch records to the alerts topic;
everything else on those topics (bank alerts, ordinary near-duplicates, its own matches, invalid records) is
read past. The store is the in-memory index here; a real process on Milvus Lite is test_retro_process.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.harness.clock import ManualClock
from tests.review.review_values import alert, decision
from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.reader import read_to_end
from vitguard.metrics import REGISTRY
from vitguard.model.types import ModelInfo
from vitguard.retro.hunt import Hunt, StoreSearcher
from vitguard.retro.hunter import RetroHunter
from vitguard.schemas.events import BankMatch, BankMatchAlert
from vitguard.schemas.retro import RetroMatch, RetroTrigger
from vitguard.schemas.review import ReviewAuditRecord
from vitguard.search import SearchAnswer, SearchRequest
from vitguard.settings import Settings, load_settings
from vitguard.stores import EmbeddingRecord, InMemoryEmbeddingIndex
from vitguard.testing.worker import publish_raw

MODEL = ModelInfo("timm:vit_tiny_test", "r1", ("NSFW", "SFW"), 4, (3, 32, 32))
FAST_GROUP = {"max.poll.interval.ms": 6000, "session.timeout.ms": 6000}  # the local broker waits out a join


def _row(cid: str, vec: list[float], label: str, cluster: str = "") -> EmbeddingRecord:
    return EmbeddingRecord(cid, np.asarray(vec, dtype=np.float32), label, 0.9 if label == "unsafe" else 0.1,
                           cluster, "t1", "r1", 1_767_225_600_000, 1_767_225_600_040)


def _searcher() -> StoreSearcher:
    index = InMemoryEmbeddingIndex()
    name = index.ensure_collection(MODEL)
    index.upsert(name, [
        _row("confirmed", [1, 0, 0, 0], "unsafe", "c-1"),
        _row("copy-a", [0.99, 0.1, 0, 0], "safe"),
        _row("copy-b", [0.98, 0.12, 0, 0], "safe"),
        _row("wave-item", [0, 1, 0, 0], "unsafe", "c-7"),
        _row("wave-copy", [0.05, 0.99, 0, 0], "safe"),
        _row("stranger", [0, 0, 0, 1], "safe"),
    ])
    return StoreSearcher(index, name)


def _audit(content_id: str, kind: str, outcome: str = "applied") -> bytes:
    made = decision(content_id, kind)
    record = ReviewAuditRecord(decision_id=made.decision_id, content_id=content_id, outcome=outcome,  # type: ignore[arg-type]
                               decision=made)
    return record.model_dump_json().encode()


def _bank_alert() -> bytes:
    match = BankMatch(bank="b", entry_id="e1", distance=3, action="force_unsafe")
    return BankMatchAlert(content_id="wave-item", event_id="e", matches=[match], action_taken="force_unsafe",
                          severity="critical", label="unsafe", pdq_hash="0" * 64, pdq_quality=90
                          ).model_dump_json().encode()


def _skipped(topic: str) -> float:
    return REGISTRY.get_sample_value("vitguard_retro_records_skipped_total", {"topic": topic}) or 0.0


@pytest.fixture
def settings(service_settings: Callable[..., Settings], new_topic: Callable[..., str]) -> Settings:
    return service_settings(topics={"alerts": new_topic(2, "alerts"), "review_audit": new_topic(2, "audit")},
                            retro={"hunts_per_s": 100, "group_id": new_topic(1, "group")})


def test_the_hunter_publishes_a_match_per_safe_item_near_each_trigger_and_reads_past_the_rest(
    settings: Settings,
) -> None:
    t = settings.topics
    publish_raw(settings.kafka, t.review_audit, [
        (b"d1", _audit("confirmed", "confirm_unsafe")),
        (b"d2", _audit("confirmed", "confirm_unsafe", outcome="duplicate")),
        (b"d3", _audit("copy-a", "overturn_safe")),
        (b"d4", b"{not json"),
        (b"d5", _audit("never-stored", "confirm_unsafe")),
    ])
    publish_raw(settings.kafka, t.alerts, [
        (b"w1", alert("wave-item", severity="critical", cluster="c-7").model_dump_json().encode()),
        (b"w2", alert("wave-item", severity="critical", cluster="c-7").model_dump_json().encode()),  # same wave
        (b"n1", alert("confirmed", severity="info", cluster="c-1").model_dump_json().encode()),
        (b"b1", _bank_alert()),
        (b"x1", b'{"alert_type": "near_duplicate", "severity": "critical"}'),
    ])
    skipped_before = (_skipped(t.alerts), _skipped(t.review_audit))
    hunter = RetroHunter(settings, _searcher(), Hunt(threshold=0.92))
    assert hunter.run(idle_timeout_s=4, consumer_overrides=FAST_GROUP, connect_timeout_s=15) == 3

    records = read_to_end(settings.kafka, t.alerts)
    matches = [RetroMatch.model_validate_json(r.value or b"") for r in records
               if json.loads(r.value or b"{}").get("alert_type") == "retro_match"]
    assert sorted((m.trigger.kind, m.trigger.content_id, m.content_id) for m in matches) == [
        ("review_confirmed", "confirmed", "copy-a"), ("review_confirmed", "confirmed", "copy-b"),
        ("wave", "wave-item", "wave-copy")]
    keys = {r.key for r in records if b"retro_match" in (r.value or b"")}
    assert keys == {b"copy-a", b"copy-b", b"wave-copy"}  # keyed by the matched item
    assert (_skipped(t.alerts), _skipped(t.review_audit)) == (skipped_before[0] + 1, skipped_before[1] + 1)

    # the group committed its progress: a second run reads nothing again and publishes nothing
    again = RetroHunter(settings, _searcher(), Hunt(threshold=0.92))
    assert again.run(idle_timeout_s=3, consumer_overrides=FAST_GROUP, connect_timeout_s=15) == 0


class _Flaky:
    """A searcher that is unavailable for its first ``failures`` calls (the store down, then back)."""

    def __init__(self, inner: StoreSearcher, failures: int) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def search(self, request: SearchRequest) -> SearchAnswer:
        self.calls += 1
        if self.calls <= self.failures:
            raise ServiceUnavailableError("milvus: connection refused")
        return self.inner.search(request)


def _offline(**retro: Any) -> Settings:
    return load_settings(retro=retro)


CLEAN = RetroTrigger(kind="on_demand", trigger_id="h", content_id="stranger")  # nothing near it: no publish


def test_a_hunt_waits_for_an_unavailable_store_and_is_not_skipped() -> None:
    clock = ManualClock()
    flaky = _Flaky(_searcher(), failures=3)
    hunter = RetroHunter(_offline(), flaky, Hunt(threshold=0.92), clock=clock, sleep=clock.sleep)
    assert hunter.run_hunt(CLEAN) == []
    assert flaky.calls == 4 and [round(s, 3) for s in clock.slept] == [1.0, 2.0, 4.0]  # backing off, then the hunt ran


def test_hunts_start_at_most_at_the_configured_rate_and_a_wave_is_hunted_once_per_window() -> None:
    clock = ManualClock()
    hunter = RetroHunter(_offline(hunts_per_s=4), _searcher(), Hunt(threshold=0.92), clock=clock,
                         sleep=clock.sleep)
    for _ in range(3):
        hunter.run_hunt(CLEAN)
    assert [round(s, 3) for s in clock.slept] == [0.25, 0.25]
    from vitguard.kafka.reader import RawRecord

    wave = alert("wave-item", severity="critical", cluster="c-7").model_dump_json().encode()
    record = RawRecord(hunter.settings.topics.alerts, 0, 0, None, wave, None)
    assert hunter.trigger(record) is not None
    assert hunter.trigger(record) is None  # the same wave again within its window
    clock.now += hunter.settings.policy.wave_window_s
    assert hunter.trigger(record) is not None


def test_waves_whose_window_is_over_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    from vitguard.kafka.reader import RawRecord
    from vitguard.retro import hunter as hunter_module

    monkeypatch.setattr(hunter_module, "_WAVES_KEPT", 2)
    clock = ManualClock()
    hunter = RetroHunter(_offline(), _searcher(), Hunt(threshold=0.92), clock=clock, sleep=clock.sleep)

    def wave(cluster: str) -> RawRecord:
        value = alert("wave-item", severity="critical", cluster=cluster).model_dump_json().encode()
        return RawRecord(hunter.settings.topics.alerts, 0, 0, None, value, None)

    for cluster in ("c-1", "c-2"):
        assert hunter.trigger(wave(cluster)) is not None
    clock.now += hunter.settings.policy.wave_window_s
    assert hunter.trigger(wave("c-3")) is not None  # over the bound: c-1 and c-2's windows are over
    assert set(hunter._waves) == {"c-3"}
    assert hunter.trigger(wave("c-3")) is None  # a wave still in its window stays remembered


def test_a_new_bank_entry_is_hunted_by_hash_over_the_items_judged_safe(
    service_settings: Callable[..., Settings], new_topic: Callable[..., str],
) -> None:
    """Issue 31: the hashes come from the verdicts topic (read from its start); a new entry of a positive bank
    finds the safe items within the bank's distance; an allow-list's entry, an unsafe item, a replay and a poor
    hash find nothing; the group's offsets keep a restart from hunting the same entry again."""
    from vitguard.banks import Bank, BankEntry
    from vitguard.banks.state import BankRecord
    from vitguard.retro.hashes import HashCatalog
    from vitguard.schemas.events import Verdict

    settings = service_settings(
        topics={"alerts": new_topic(1, "alerts"), "review_audit": new_topic(1, "audit"),
                "verdicts": new_topic(2, "verdicts")},
        banks={"topic": new_topic(1, "banks")}, retro={"hunts_per_s": 100, "group_id": new_topic(1, "group")})
    entry_hash = "f0" * 32  # a real PDQ hash has about half its bits set
    near = "f0" * 30 + "0f0f"  # 16 bits from the entry

    def verdict(cid: str, pdq: str, label: str = "safe", quality: int = 90, **extra: Any) -> tuple[bytes, bytes]:
        v = Verdict.model_validate({
            "event_id": f"e-{cid}", "content_id": cid, "tenant": "t9", "label": label, "unsafe_score": 0.2,
            "top_class": "SFW", "scores": {"NSFW": 0.2, "SFW": 0.8}, "model_name": "m", "model_version": "v1",
            "pdq_hash": pdq, "pdq_quality": quality, "collection": "col", **extra})
        return cid.encode(), v.model_dump_json().encode()

    t = settings.topics
    publish_raw(settings.kafka, t.verdicts, [
        verdict("same", entry_hash), verdict("close", near), verdict("far", "0f" * 32),
        verdict("bad", entry_hash, label="unsafe"), verdict("poor", entry_hash, quality=10),
        verdict("replayed", entry_hash, replay_id="rp-1"), (b"junk", b"{not a verdict"),
    ])
    bad = Bank(name="known-bad", action="force_unsafe", match_distance=20)
    allow = Bank(name="cleared", kind="negative")
    records = [BankRecord.for_bank(bad), BankRecord.for_bank(allow),
               BankRecord.for_entry(BankEntry(bank="known-bad", entry_id="kb-1", signal=entry_hash)),
               BankRecord.for_entry(BankEntry(bank="cleared", entry_id="ok-1", signal=entry_hash))]
    publish_raw(settings.kafka, settings.banks.topic, [(r.key, r.value) for r in records if r.value is not None])

    hunter = RetroHunter(settings, _searcher(), Hunt(threshold=0.92), catalog=HashCatalog(50))
    assert hunter.run(idle_timeout_s=4, consumer_overrides=FAST_GROUP, connect_timeout_s=15) == 2
    matches = [RetroMatch.model_validate_json(r.value or b"") for r in read_to_end(settings.kafka, t.alerts)]
    assert sorted((m.content_id, m.hash_distance, m.trigger.kind, m.trigger.bank, m.trigger.entry_id)
                  for m in matches) == [("close", 16, "bank_entry", "known-bad", "kb-1"),
                                        ("same", 0, "bank_entry", "known-bad", "kb-1")]
    close = next(m for m in matches if m.content_id == "close")
    assert (close.similarity, close.threshold, close.tenant, close.collection) == (1 - 16 / 128, 1 - 20 / 128,
                                                                                  "t9", "col")
    assert close.trigger.content_id == "bank:known-bad:kb-1" and close.trigger.pdq_hash == entry_hash

    again = RetroHunter(settings, _searcher(), Hunt(threshold=0.92), catalog=HashCatalog(50))
    assert again.run(idle_timeout_s=3, consumer_overrides=FAST_GROUP, connect_timeout_s=15) == 0
    assert again.catalog is not None and len(again.catalog) == 3  # rebuilt from the verdicts: same, close, far
