"""Near-duplicate clustering of a batch, with hand-made unit vectors."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from vitguard.pipeline.stages.clustering import ClusterAssignment, assign_clusters, default_cluster_id
from vitguard.stores.interfaces import SearchHit

T = 0.9


def unit(*components: float, dim: int = 4) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(components)] = components
    return v / np.linalg.norm(v)


def at_angle(cos: float) -> np.ndarray:
    """A unit vector whose cosine with e0 is ``cos`` (in the e0-e1 plane)."""
    return unit(cos, math.sqrt(1 - cos * cos))


def by_id(out: list[ClusterAssignment]) -> dict[str, ClusterAssignment]:
    return {a.content_id: a for a in out}


def test_default_cluster_id_is_stable_and_derived_from_the_content_id() -> None:
    assert default_cluster_id("img-1") == "c-" + hashlib.sha1(b"img-1", usedforsecurity=False).hexdigest()[:16]
    assert default_cluster_id("img-1") != default_cluster_id("img-2")


def test_item_without_matches_starts_its_own_cluster() -> None:
    out = assign_clusters(["a"], np.stack([unit(1)]), [[]], T)
    assert out == [ClusterAssignment("a", default_cluster_id("a"), [], True)]


def test_item_joins_the_cluster_of_its_nearest_known_match() -> None:
    hits = [[SearchHit("k1", 0.93, "c-one"), SearchHit("k2", 0.97, "c-two"), SearchHit("k3", 0.5, "c-three")]]
    [a] = assign_clusters(["a"], np.stack([unit(1)]), hits, T)
    assert a.cluster_id == "c-two"
    assert not a.is_new_cluster
    assert [m.content_id for m in a.matches] == ["k2", "k1"]  # most similar first, below threshold dropped


def test_known_match_below_threshold_does_not_join() -> None:
    [a] = assign_clusters(["a"], np.stack([unit(1)]), [[SearchHit("k", 0.89, "c-k")]], T)
    assert a.is_new_cluster and a.cluster_id == default_cluster_id("a") and a.matches == []


def test_near_items_in_one_batch_share_a_cluster_and_list_earlier_items() -> None:
    emb = np.stack([unit(1), at_angle(0.95), unit(0, 0, 1)])
    out = by_id(assign_clusters(["a", "b", "far"], emb, [[], [], []], T))
    assert out["a"].cluster_id == out["b"].cluster_id == default_cluster_id("a")
    assert out["a"].is_new_cluster and not out["b"].is_new_cluster
    assert out["a"].matches == []  # only earlier items count as matches
    [m] = out["b"].matches
    assert m.content_id == "a" and m.similarity == pytest.approx(0.95, abs=1e-5)
    assert m.cluster_id == out["a"].cluster_id
    assert out["far"].cluster_id == default_cluster_id("far") and out["far"].is_new_cluster


def test_chain_within_batch_is_one_cluster() -> None:
    # a~b and b~c but a and c are not near each other: still one cluster through b
    emb = np.stack([unit(1), at_angle(0.95), unit(math.cos(2 * math.acos(0.95)), math.sin(2 * math.acos(0.95)))])
    assert float(emb[0] @ emb[2]) < T
    out = assign_clusters(["a", "b", "c"], emb, [[], [], []], T)
    assert len({x.cluster_id for x in out}) == 1
    assert [x.is_new_cluster for x in out] == [True, False, False]


def test_batch_group_follows_a_known_match_found_by_a_later_member() -> None:
    # "a" has no known match; "b" is near "a" and near known item k in cluster c-k: both end in c-k
    emb = np.stack([unit(1), at_angle(0.95)])
    out = assign_clusters(["a", "b"], emb, [[], [SearchHit("k", 0.96, "c-k")]], T)
    assert [x.cluster_id for x in out] == ["c-k", "c-k"]
    assert [x.is_new_cluster for x in out] == [False, False]
    assert [m.content_id for m in out[1].matches] == ["k", "a"]


def test_group_bridging_two_known_clusters_follows_the_strongest_match() -> None:
    emb = np.stack([unit(1), at_angle(0.95)])
    hits = [[SearchHit("k1", 0.92, "c-1")], [SearchHit("k2", 0.99, "c-2")]]
    out = assign_clusters(["a", "b"], emb, hits, T)
    assert {x.cluster_id for x in out} == {"c-2"}
    assert out[0].matches[0].content_id == "k1"  # its own evidence is still reported


def test_hits_on_the_batch_own_rows_are_ignored() -> None:
    # the pipeline upserts before searching, so the index returns the item itself and its batch mates
    emb = np.stack([unit(1), unit(0, 1)])
    hits = [[SearchHit("a", 1.0, ""), SearchHit("b", 0.95, "")], [SearchHit("b", 1.0, "")]]
    out = assign_clusters(["a", "b"], emb, hits, T)
    assert [x.cluster_id for x in out] == [default_cluster_id("a"), default_cluster_id("b")]
    assert all(x.matches == [] and x.is_new_cluster for x in out)


def test_known_item_without_cluster_id_gets_a_derived_one() -> None:
    [a] = assign_clusters(["a"], np.stack([unit(1)]), [[SearchHit("legacy", 0.95, "")]], T)
    assert a.cluster_id == default_cluster_id("legacy")
    assert a.matches == [SearchHit("legacy", 0.95, default_cluster_id("legacy"))]


def test_duplicate_hits_and_repeated_content_ids() -> None:
    hits = [[SearchHit("k", 0.91, "c-k"), SearchHit("k", 0.95, "c-k")], []]
    out = assign_clusters(["a", "a"], np.stack([unit(1), unit(0, 1)]), hits, T)
    assert out[0].matches == [SearchHit("k", 0.95, "c-k")]
    assert out[0].cluster_id == out[1].cluster_id == "c-k"
    assert out[1].matches == []  # an item never matches itself


def test_custom_cluster_id_factory_and_validation() -> None:
    out = assign_clusters(["a"], np.stack([unit(1)]), [[]], T, new_cluster_id=lambda cid: f"new:{cid}")
    assert out[0].cluster_id == "new:a"
    assert assign_clusters([], np.zeros((0, 4), dtype=np.float32), [], T) == []
    with pytest.raises(ValueError):
        assign_clusters(["a", "b"], np.stack([unit(1)]), [[], []], T)
    with pytest.raises(ValueError):
        assign_clusters(["a"], np.stack([unit(1)]), [], T)


def test_result_does_not_depend_on_hit_order() -> None:
    emb = np.stack([unit(1), at_angle(0.93), unit(0, 0, 1)])
    hits = [[SearchHit("k1", 0.95, "c-1"), SearchHit("k2", 0.95, "c-2")], [], []]
    first = assign_clusters(["a", "b", "c"], emb, hits, T)
    second = assign_clusters(["a", "b", "c"], emb, [list(reversed(hits[0])), [], []], T)
    assert first == second
    assert first[0].cluster_id == first[1].cluster_id == "c-1"  # tie broken by content id
