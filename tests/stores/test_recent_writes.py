"""Read-your-writes beside Milvus's Bounded consistency (vitguard.stores.recent): pure logic."""

from __future__ import annotations

import numpy as np

from tests.harness.clock import ManualClock
from vitguard.stores.interfaces import EmbeddingRecord, SearchHit
from vitguard.stores.recent import RecentWrites, merge_hits


def rec(cid: str, vec: np.ndarray, label: str = "unsafe", cluster: str = "c1") -> EmbeddingRecord:
    return EmbeddingRecord(cid, vec, label, 0.9, cluster, "t", "r1", 0, 0)


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_recent_unsafe_rows_are_found_until_the_window_passes() -> None:
    clock = ManualClock()
    recent = RecentWrites(window_s=10.0, clock=clock)
    a, b = unit(1), unit(2)
    recent.wrote("col", [rec("a", a * 3.0), rec("b", b, label="safe")])  # any norm; safe rows are not kept
    hits = recent.search("col", np.stack([a, b]), limit=5, min_similarity=0.99)
    assert [[h.content_id for h in hs] for hs in hits] == [["a"], []]
    assert abs(hits[0][0].similarity - 1.0) < 1e-5 and hits[0][0].cluster_id == "c1"
    assert recent.search("other", np.stack([a]), 5, 0.5) == [[]]  # collections never mix
    clock.now += 10.5
    assert recent.search("col", np.stack([a]), 5, 0.5) == [[]]


def test_a_row_rewritten_as_safe_or_in_another_cluster_is_what_search_sees() -> None:
    recent = RecentWrites()
    a = unit(3)
    recent.wrote("col", [rec("a", a, cluster="old")])
    recent.wrote("col", [rec("a", a, cluster="new")])
    assert [h.cluster_id for h in recent.search("col", a[None, :], 5, 0.9)[0]] == ["new"]
    recent.wrote("col", [rec("a", a, label="safe")])  # overturned: no longer a near-duplicate candidate
    assert recent.search("col", a[None, :], 5, 0.0) == [[]]
    recent.wrote("col", [rec("a", a)])
    recent.forget("col")  # dropped and recreated
    assert recent.search("col", a[None, :], 5, 0.0) == [[]]


def test_the_oldest_rows_go_first_past_the_row_limit() -> None:
    recent = RecentWrites(max_rows=3)
    vecs = [unit(10 + i) for i in range(5)]
    recent.wrote("col", [rec(f"r{i}", v) for i, v in enumerate(vecs)])
    found = {h.content_id for hs in recent.search("col", np.stack(vecs), 5, 0.99) for h in hs}
    assert found == {"r2", "r3", "r4"}


def test_limit_and_order_per_query() -> None:
    recent = RecentWrites()
    base = unit(20)
    near = [base + 0.01 * i * unit(30 + i) for i in range(6)]
    recent.wrote("col", [rec(f"n{i}", v) for i, v in enumerate(near)])
    hits = recent.search("col", base[None, :], limit=3, min_similarity=0.5)[0]
    assert len(hits) == 3 and [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
    assert hits[0].content_id == "n0"


def test_merge_keeps_one_hit_per_item_the_best_and_prefers_the_later_source_on_a_tie() -> None:
    milvus = [SearchHit("a", 0.95, "m"), SearchHit("b", 0.97, "m"), SearchHit("c", 0.91, "m")]
    mine = [SearchHit("a", 0.95, "recent"), SearchHit("d", 0.99, "recent")]
    merged = merge_hits(milvus, mine, limit=3)
    assert [(h.content_id, h.cluster_id) for h in merged] == [("d", "recent"), ("b", "m"), ("a", "recent")]


def test_rows_of_many_writes_rewrites_and_expiry_match_an_exact_search() -> None:
    """The chunked store against a brute-force search of what should be live, over random writes."""
    clock = ManualClock()
    recent = RecentWrites(window_s=5.0, max_rows=40, clock=clock)
    rng = np.random.default_rng(7)
    live: dict[str, tuple[float, np.ndarray, str]] = {}  # content id -> (written at, unit vector, cluster)
    order: list[str] = []
    for step in range(60):
        clock.now += float(rng.uniform(0, 0.5))
        batch = []
        for _ in range(int(rng.integers(0, 6))):
            cid = f"r{int(rng.integers(0, 80))}"
            v = unit(int(rng.integers(0, 10**6)))
            label = "unsafe" if rng.random() < 0.8 else "safe"
            batch.append(rec(cid, v, label=label, cluster=f"c{step}"))
        recent.wrote("col", batch)
        for r in batch:
            live.pop(r.content_id, None)
            if r.content_id in order:
                order.remove(r.content_id)
            if r.label == "unsafe":
                live[r.content_id] = (clock.now, r.embedding / np.linalg.norm(r.embedding), r.cluster_id)
                order.append(r.content_id)
        for cid in [c for c in order if clock.now - live[c][0] > 5.0]:
            order.remove(cid)
            del live[cid]
        while len(order) > 40:
            del live[order.pop(0)]
        queries = np.stack([live[c][1] for c in order[:3]] + [unit(99)]) if order else np.stack([unit(99)])
        got = recent.search("col", queries, limit=4, min_similarity=0.2)
        for q, hits in zip(queries, got, strict=True):
            want = sorted(((float(live[c][1] @ q), c) for c in order if float(live[c][1] @ q) >= 0.2),
                          reverse=True)[:4]
            assert [h.content_id for h in hits] == [c for _, c in want]
            assert all(h.cluster_id == live[h.content_id][2] for h in hits)


def test_a_wave_of_identical_copies_answers_the_best_few_in_write_order() -> None:
    """A wave: every query is as close to every recent row (thousands, over many writes). The answer is the
    ``limit`` best per query, ties in the order they were written, live rows only."""
    recent = RecentWrites()
    v = unit(5)
    for w in range(40):
        recent.wrote("col", [rec(f"w{w}-{i}", v, cluster="wave") for i in range(50)])
    recent.wrote("col", [rec("w0-1", v, label="safe")])  # rewritten as safe: no longer a hit
    got = recent.search("col", np.stack([v, v, unit(6)]), limit=5, min_similarity=0.99)
    assert [h.content_id for h in got[0]] == ["w0-0", "w0-2", "w0-3", "w0-4", "w0-5"]
    assert got[1] == got[0] and got[2] == []
    assert all(h.cluster_id == "wave" and abs(h.similarity - 1.0) < 1e-5 for h in got[0])
