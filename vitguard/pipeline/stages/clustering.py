"""Near-duplicate clustering of a batch of new unsafe embeddings. Pure: no I/O, no clock.

Input: the batch's embeddings and, per item, the index's hits among *known* unsafe items (one batched
search). Output: a cluster per item and the matches that justify it.

The rule, as if the items arrived one by one in batch order:

* An item's candidates are its index hits and the **earlier** items of the same batch, compared by cosine
  similarity of the given (L2-normalised) embeddings. Candidates at or above ``threshold`` are its
  ``matches``, most similar first.
* Items of the batch that are near each other (similarity >= threshold, transitively) form a group, and a
  group always ends up in **one** cluster, whatever order its items came in. The group joins the cluster of
  the most similar known item any member matched; a group with no known match starts a new cluster, named
  deterministically after its first item (so a redelivered batch gets the same id).

For a group whose items matched one known cluster (the usual case) this is exactly "join your nearest
match's cluster". Only when a group bridges two known clusters do its items all follow the stronger match
rather than split, because splitting near-identical items of one batch across clusters would hide a wave.

Hits that point at items of the batch itself are ignored as index hits: the pipeline upserts a batch before
it searches, so the index may already return the batch's own rows (without their cluster yet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vitguard.stores.interfaces import SearchHit, default_cluster_id

__all__ = ["ClusterAssignment", "assign_clusters", "default_cluster_id"]


@dataclass(frozen=True)
class ClusterAssignment:
    """Where one item of the batch landed."""

    content_id: str
    cluster_id: str
    matches: list[SearchHit] = field(default_factory=list)
    """Known items and earlier items of the batch at or above the threshold, most similar first."""
    is_new_cluster: bool = False
    """True for the item that founded its cluster in this batch (no known item matched its group)."""


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the earlier item stays the root, so a group's founder is its first item
            self.parent[max(ra, rb)] = min(ra, rb)


def assign_clusters(
    content_ids: Sequence[str],
    embeddings: NDArray[np.floating],
    hits: Sequence[Sequence[SearchHit]],
    threshold: float,
    new_cluster_id: Callable[[str], str] = default_cluster_id,
) -> list[ClusterAssignment]:
    """Assign each new unsafe item of a batch to a near-duplicate cluster.

    Args:
        content_ids: the batch's items, in batch order.
        embeddings: ``(N, D)`` L2-normalised embeddings, row i for ``content_ids[i]``.
        hits: per item, index hits among known unsafe items (any order; below-threshold ones are ignored).
        threshold: cosine similarity that makes a near-duplicate.
        new_cluster_id: names a new cluster after the content id that founds it (or after a known item
            that has no cluster id yet).

    Returns:
        One assignment per item, in batch order.

    Raises:
        ValueError: the three inputs do not have the same length.
    """
    n = len(content_ids)
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be an (N, D) array, got shape {vectors.shape}")
    if len(hits) != n or vectors.shape[0] != n:
        raise ValueError(f"{n} content ids, {vectors.shape[0]} embeddings and {len(hits)} hit lists")
    if n == 0:
        return []
    sims = vectors @ vectors.T
    groups = _batch_groups(content_ids, sims, threshold)
    batch_ids = set(content_ids)
    known = [_known_matches(h, batch_ids, threshold, new_cluster_id) for h in hits]
    group_cluster = _group_clusters(groups, known)
    out: list[ClusterAssignment] = []
    for i in range(n):
        root = groups.find(i)
        cluster = group_cluster.get(root) or new_cluster_id(content_ids[root])
        out.append(ClusterAssignment(
            content_id=content_ids[i],
            cluster_id=cluster,
            matches=_matches(i, content_ids, sims, threshold, known[i], cluster),
            is_new_cluster=root not in group_cluster and i == root,
        ))
    return out


def _batch_groups(content_ids: Sequence[str], sims: NDArray[np.float64], threshold: float) -> _UnionFind:
    """Items of the batch that are near each other (or the same content id) form one group."""
    groups = _UnionFind(len(content_ids))
    for i in range(len(content_ids)):
        for j in range(i):
            if content_ids[i] == content_ids[j] or sims[i, j] >= threshold:
                groups.union(i, j)
    return groups


def _known_matches(hits: Sequence[SearchHit], batch_ids: set[str], threshold: float,
                   new_cluster_id: Callable[[str], str]) -> list[SearchHit]:
    """An item's index hits outside the batch, deduplicated, at or above the threshold, strongest first."""
    best: dict[str, SearchHit] = {}
    for h in hits:
        if h.content_id in batch_ids or h.similarity < threshold:
            continue
        cluster = h.cluster_id or new_cluster_id(h.content_id)
        if h.content_id not in best or h.similarity > best[h.content_id].similarity:
            best[h.content_id] = SearchHit(h.content_id, float(h.similarity), cluster)
    return sorted(best.values(), key=_order)


def _group_clusters(groups: _UnionFind, known: Sequence[Sequence[SearchHit]]) -> dict[int, str]:
    """Each group's cluster: the strongest known match of any member (a group with none is a new cluster)."""
    cluster: dict[int, str] = {}
    strongest: dict[int, SearchHit] = {}
    for i, matches in enumerate(known):
        if matches:
            root = groups.find(i)
            current = strongest.get(root)
            if current is None or _order(matches[0]) < _order(current):
                strongest[root] = matches[0]
                cluster[root] = matches[0].cluster_id
    return cluster


def _matches(i: int, content_ids: Sequence[str], sims: NDArray[np.float64], threshold: float,
             known: Sequence[SearchHit], cluster: str) -> list[SearchHit]:
    """Item ``i``'s matches: its known ones, and the earlier items of the batch near it (on its cluster)."""
    matches = list(known)
    seen = {content_ids[i]}
    for j in range(i):
        cid = content_ids[j]
        if cid in seen or sims[i, j] < threshold:
            continue
        seen.add(cid)
        matches.append(SearchHit(cid, float(sims[i, j]), cluster))
    matches.sort(key=_order)
    return matches


def _order(hit: SearchHit) -> tuple[float, str]:
    """Most similar first; ties broken by content id so the result does not depend on input order."""
    return (-hit.similarity, hit.content_id)
