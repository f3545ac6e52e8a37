"""Applying decisions: effects, idempotency by decision id, ordering by decided_at (pure, in-memory store)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from review_values import T0, decision

from vitguard.model.types import ModelInfo
from vitguard.review.apply import OVERTURNED_LABEL, Ledger, apply_decision
from vitguard.schemas.review import ReviewDecision
from vitguard.stores.interfaces import EmbeddingRecord
from vitguard.stores.memory import InMemoryEmbeddingIndex

INFO = ModelInfo("m", "v1", ("NSFW", "SFW"), 4, (3, 8, 8))


@pytest.fixture
def index() -> tuple[InMemoryEmbeddingIndex, str]:
    idx = InMemoryEmbeddingIndex()
    collection = idx.ensure_collection(INFO)
    vec = np.array([1, 0, 0, 0], dtype=np.float32)
    idx.upsert(collection, [
        EmbeddingRecord("bad", vec, "unsafe", 0.9, "c-1", "t", "v1", 0, 0),
        EmbeddingRecord("meh", np.array([0, 1, 0, 0], dtype=np.float32), "safe", 0.45, "", "t", "v1", 0, 0),
    ])
    return idx, collection


class Banks:
    def __init__(self) -> None:
        self.negative: list[str] = []
        self.positive: list[str] = []

    def add_negative(self, d: ReviewDecision) -> str:
        self.negative.append(d.content_id)
        return "negative_bank"

    def add_positive(self, d: ReviewDecision) -> str:
        self.positive.append(d.content_id)
        return "bank_added"


def test_overturn_leaves_the_unsafe_set(index: tuple[InMemoryEmbeddingIndex, str]) -> None:
    idx, col = index
    query = np.array([[1, 0, 0, 0]], dtype=np.float32)
    assert idx.search_unsafe(col, query, 5, 0.9)[0], "seeded row is a near-duplicate candidate"
    d = decision("bad", collection=col, previous_label="unsafe")
    done = apply_decision(d, ledger=Ledger(), records=idx, banks=None)
    assert done is not None and done.audit.outcome == "applied"
    assert idx.records(col)["bad"].label == OVERTURNED_LABEL
    assert idx.search_unsafe(col, query, 5, 0.9) == [[]]
    assert done.correction is not None
    assert (done.correction.label, done.correction.previous_label) == ("safe", "unsafe")
    assert done.audit.effects == ["milvus_relabelled", "bank_skipped", "correction_published"]


def test_confirm_joins_the_unsafe_set_with_a_cluster(index: tuple[InMemoryEmbeddingIndex, str]) -> None:
    idx, col = index
    banks = Banks()
    done = apply_decision(decision("meh", "confirm_unsafe", collection=col, add_to_bank=True), ledger=Ledger(),
                          records=idx, banks=banks)
    assert done is not None and done.correction is not None and done.correction.label == "unsafe"
    row = idx.records(col)["meh"]
    assert row.label == "unsafe" and row.cluster_id.startswith("c-")
    assert banks.positive == ["meh"] and "bank_added" in done.audit.effects


def test_negative_bank_where_banks_exist(index: tuple[InMemoryEmbeddingIndex, str]) -> None:
    idx, col = index
    banks = Banks()
    done = apply_decision(decision("bad", collection=col), ledger=Ledger(), records=idx, banks=banks)
    assert banks.negative == ["bad"] and done is not None and "negative_bank" in done.audit.effects


def test_same_decision_twice_is_applied_once(index: tuple[InMemoryEmbeddingIndex, str]) -> None:
    idx, col = index
    ledger = Ledger()
    d = decision("bad", collection=col)
    first = apply_decision(d, ledger=ledger, records=idx, banks=None)
    assert first is not None
    ledger.remember(first.audit)
    calls = idx.upsert_calls
    assert apply_decision(d, ledger=ledger, records=idx, banks=None) is None
    assert idx.upsert_calls == calls
    rebuilt = Ledger.from_audit([first.audit])  # what a restarted applier reads back from the audit topic
    assert apply_decision(d, ledger=rebuilt, records=idx, banks=None) is None


def test_an_older_decision_read_late_is_superseded(index: tuple[InMemoryEmbeddingIndex, str]) -> None:
    idx, col = index
    ledger = Ledger()
    newer = apply_decision(decision("bad", "confirm_unsafe", collection=col, at=T0 + timedelta(hours=2)),
                           ledger=ledger, records=idx, banks=None)
    assert newer is not None
    ledger.remember(newer.audit)
    older = apply_decision(decision("bad", collection=col, at=T0 + timedelta(hours=1)), ledger=ledger,
                           records=idx, banks=None)
    assert older is not None and older.audit.outcome == "superseded" and older.correction is None
    assert idx.records(col)["bad"].label == "unsafe"


def test_missing_row_or_collection_is_recorded_not_fatal(index: tuple[InMemoryEmbeddingIndex, str]) -> None:
    idx, col = index
    gone = apply_decision(decision("never-indexed", collection=col), ledger=Ledger(), records=idx, banks=None)
    assert gone is not None and gone.audit.effects[0] == "milvus_missing"
    none = apply_decision(decision("bad", collection=None), ledger=Ledger(), records=idx, banks=None)
    assert none is not None and none.audit.effects[0] == "milvus_no_collection"


def test_overturned_items_go_to_a_negative_bank_of_the_hash_banks(index: tuple[InMemoryEmbeddingIndex, str]) -> None:
    from vitguard.banks import MemoryBankStore
    from vitguard.review.banks import StoreReviewBanks

    idx, col = index
    store = MemoryBankStore()
    banks = StoreReviewBanks(store, negative_bank="review-overturned", confirmed_bank="review-confirmed")
    pdq = "f" * 16 + "0" * 48
    done = apply_decision(decision("bad", collection=col, pdq_hash=pdq), ledger=Ledger(), records=idx, banks=banks)
    assert done is not None and "negative_bank" in done.audit.effects
    state = store.read()
    assert state.banks["review-overturned"].kind == "negative"
    assert [(e.entry_id, e.signal) for e in state.bank_entries("review-overturned")] == [("bad", pdq)]
    unhashed = apply_decision(decision("meh", "confirm_unsafe", collection=col, add_to_bank=True), ledger=Ledger(),
                              records=idx, banks=banks)
    assert unhashed is not None and "bank_no_hash" in unhashed.audit.effects
