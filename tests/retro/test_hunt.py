"""One retro-hunt (vitguard.retro.hunt): which records start one, what it finds over a real in-memory index, and
the matches' stable ids. The Kafka follower is tested in test_hunter.py, a real process in test_retro_process.py."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from tests.review.review_values import alert, decision
from vitguard.model.types import ModelInfo
from vitguard.retro.hunt import Hunt, StoreSearcher, hunt, trigger_of
from vitguard.schemas.retro import RetroMatch, RetroTrigger, retro_match_id
from vitguard.schemas.review import ReviewAuditRecord
from vitguard.search import NotStoredError
from vitguard.stores import EmbeddingRecord, InMemoryEmbeddingIndex

MODEL = ModelInfo("timm:vit_tiny_test", "r1", ("NSFW", "SFW"), 4, (3, 32, 32))
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _row(cid: str, vec: list[float], label: str, tenant: str = "a", hour: int = 0) -> EmbeddingRecord:
    return EmbeddingRecord(cid, np.asarray(vec, dtype=np.float32), label, 0.9 if label == "unsafe" else 0.2,
                           f"c-{cid}" if label == "unsafe" else "", tenant, "r1", T0 + hour * 3_600_000,
                           T0 + hour * 3_600_000 + 40)


@pytest.fixture
def searcher() -> StoreSearcher:
    index = InMemoryEmbeddingIndex()
    name = index.ensure_collection(MODEL)
    index.upsert(name, [
        _row("confirmed", [1, 0, 0, 0], "unsafe"),
        _row("old-copy", [0.99, 0.1, 0, 0], "safe", tenant="b", hour=1),
        _row("new-copy", [0.98, 0.15, 0, 0], "safe", hour=5),
        _row("unsafe-copy", [0.99, 0.05, 0, 0], "unsafe", hour=2),  # already known: not a retro match
        _row("overturned-copy", [0.99, 0.08, 0, 0], "overturned", hour=2),  # a reviewer said safe: left alone
        _row("cousin", [0.8, 0.6, 0, 0], "safe", hour=3),  # similarity 0.8: below the threshold
        _row("stranger", [0, 0, 1, 0], "safe", hour=4),
    ])
    return StoreSearcher(index, name)


CONFIRMED = RetroTrigger(kind="review_confirmed", trigger_id="d-1", content_id="confirmed")


def test_a_hunt_finds_the_safe_items_within_the_threshold_most_similar_first(searcher: StoreSearcher) -> None:
    found = hunt(searcher, CONFIRMED, Hunt(threshold=0.92))
    assert [m.content_id for m in found] == ["old-copy", "new-copy"]
    first = found[0]
    assert first.similarity == pytest.approx(0.995, abs=1e-3) and first.threshold == 0.92
    assert (first.tenant, first.old_label, first.old_unsafe_score, first.model_version) == ("b", "safe", 0.2, "r1")
    assert first.uploaded_at == datetime(2026, 1, 1, 1, tzinfo=UTC) and first.collection == searcher.collection
    assert first.trigger == CONFIRMED and first.alert_type == "retro_match" and first.severity == "warning"
    assert RetroMatch.model_validate_json(first.model_dump_json()) == first  # the published form reads back


def test_the_reach_of_a_hunt(searcher: StoreSearcher) -> None:
    assert [m.content_id for m in hunt(searcher, CONFIRMED, Hunt(threshold=0.75))] == ["old-copy", "new-copy",
                                                                                        "cousin"]
    assert [m.content_id for m in hunt(searcher, CONFIRMED, Hunt(threshold=0.75, limit=1))] == ["old-copy"]
    since = datetime(2026, 1, 1, 2, tzinfo=UTC)
    assert [m.content_id for m in hunt(searcher, CONFIRMED, Hunt(threshold=0.75, since=since))] == ["new-copy",
                                                                                                    "cousin"]
    with pytest.raises(ValueError, match="1 to 100"):
        Hunt(threshold=0.9, limit=101)


def test_an_item_that_is_not_stored_has_nothing_to_hunt_from(searcher: StoreSearcher) -> None:
    with pytest.raises(NotStoredError):
        hunt(searcher, RetroTrigger(kind="on_demand", trigger_id="x", content_id="never-stored"), Hunt(0.9))


def test_match_ids_are_stable_per_hunt_and_item_and_a_wave_is_one_hunt_per_cluster() -> None:
    wave_a = RetroTrigger(kind="wave", trigger_id="alert-1", content_id="u1", cluster_id="c-1")
    wave_b = RetroTrigger(kind="wave", trigger_id="alert-2", content_id="u2", cluster_id="c-1")
    assert retro_match_id(wave_a, "x") == retro_match_id(wave_b, "x")  # two alerts of one wave: the same match
    assert retro_match_id(wave_a, "x") != retro_match_id(wave_a, "y")
    assert retro_match_id(CONFIRMED, "x") == retro_match_id(CONFIRMED.model_copy(update={"trigger_id": "d-2"}), "x")
    on_demand = RetroTrigger(kind="on_demand", trigger_id="op", content_id="confirmed")
    assert retro_match_id(on_demand, "x") != retro_match_id(CONFIRMED, "x")
    assert len(retro_match_id(CONFIRMED, "x")) == 32


def _audit(kind: str, outcome: str) -> ReviewAuditRecord:
    made = decision("item-1", kind)
    return ReviewAuditRecord(decision_id=made.decision_id, content_id="item-1", outcome=outcome,  # type: ignore[arg-type]
                             decision=made)


def test_which_records_start_a_hunt() -> None:
    confirmed = _audit("confirm_unsafe", "applied")
    assert trigger_of(confirmed) == RetroTrigger(kind="review_confirmed", trigger_id=confirmed.decision_id,
                                                 content_id="item-1")
    wave = alert("u-9", severity="critical", cluster="c-7")
    assert trigger_of(wave) == RetroTrigger(kind="wave", trigger_id=wave.alert_id, content_id="u-9", cluster_id="c-7")
    for nothing in (_audit("confirm_unsafe", "duplicate"), _audit("confirm_unsafe", "superseded"),
                    _audit("overturn_safe", "applied"), alert("u-1", severity="info"),
                    alert("u-2", severity="warning")):
        assert trigger_of(nothing) is None, nothing
