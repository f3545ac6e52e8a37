"""Clusters as moderators see them (vitguard.clusters): summaries, growth and waves, one cluster's pages."""

from __future__ import annotations

from datetime import UTC, datetime

from vitguard.clusters import cluster_items, summarize
from vitguard.stores.similar import StoredItem

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000


def item(cid: str, cluster: str, created_min: int, processed_min: int | None = None, tenant: str = "a") -> StoredItem:
    processed = processed_min if processed_min is not None else created_min
    return StoredItem(cid, "unsafe", 0.9, cluster, tenant, NOW + created_min * MIN, NOW + processed * MIN)


ROWS = [
    item("old-1", "c-old", -500), item("old-2", "c-old", -400),
    item("w-1", "c-wave", -30), item("w-2", "c-wave", -20, tenant="b"), item("w-3", "c-wave", -10),
    item("w-4", "c-wave", -5), item("w-0", "c-wave", -900, processed_min=-900),
    item("solo", "c-solo", -60),
    StoredItem("orphan", "unsafe", 0.9, "", "a", NOW, NOW),  # no cluster: not listed
]


def test_clusters_are_listed_most_recent_first_with_growth_and_waves() -> None:
    listing = summarize(ROWS, now_ms=NOW, window_s=600 * 60, threshold=4, limit=10)
    assert [c.cluster_id for c in listing.clusters] == ["c-wave", "c-solo", "c-old"] and not listing.truncated
    wave, solo, old = listing.clusters
    assert (wave.size, wave.growth, wave.wave) == (5, 4, True)  # w-0 was answered before the window
    assert wave.first_seen == datetime(2025, 12, 31, 9, tzinfo=UTC) and wave.tenants == ["a", "b"]
    assert wave.representatives == ["w-0", "w-4", "w-3"]  # the first upload, then the latest
    assert (solo.size, solo.growth, solo.wave, solo.representatives) == (1, 1, False, ["solo"])
    assert (old.size, old.growth, old.wave) == (2, 2, False)
    assert summarize(ROWS, now_ms=NOW, window_s=60, threshold=4, limit=10).clusters[0].growth == 0


def test_a_list_cut_by_its_limit_or_by_the_rows_read_says_so() -> None:
    assert summarize(ROWS, now_ms=NOW, window_s=60, threshold=4, limit=2).truncated
    assert summarize(ROWS, now_ms=NOW, window_s=60, threshold=4, limit=10, truncated=True).truncated


def test_one_cluster_is_paged_oldest_first() -> None:
    first = cluster_items("c-wave", ROWS, now_ms=NOW, window_s=600 * 60, threshold=4, offset=0, limit=2)
    assert first is not None and first.cluster.size == 5 and first.next_offset == 2
    assert [i.content_id for i in first.items] == ["w-0", "w-1"]
    last = cluster_items("c-wave", ROWS, now_ms=NOW, window_s=600 * 60, threshold=4, offset=4, limit=2)
    assert last is not None and [i.content_id for i in last.items] == ["w-4"] and last.next_offset is None
    assert cluster_items("c-none", ROWS, now_ms=NOW, window_s=60, threshold=4, offset=0, limit=2) is None
