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


def assign_clusters(  # noqa: C901 - older than the limit, to be split
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

    batch_ids = set(content_ids)

    sims = vectors @ vectors.T
    groups = _UnionFind(n)
    for i in range(n):
        for j in range(i):
            if content_ids[i] == content_ids[j] or sims[i, j] >= threshold:
                groups.union(i, j)

    # known matches per item: index hits outside the batch, deduplicated, at or above the threshold
    known: list[list[SearchHit]] = []
    for i in range(n):
        best: dict[str, SearchHit] = {}
        for h in hits[i]:
            if h.content_id in batch_ids or h.similarity < threshold:
                continue
            cluster = h.cluster_id or new_cluster_id(h.content_id)
            if h.content_id not in best or h.similarity > best[h.content_id].similarity:
                best[h.content_id] = SearchHit(h.content_id, float(h.similarity), cluster)
        known.append(sorted(best.values(), key=_order))

    # each group's cluster: the strongest known match of any member, else a new one after its founder
    group_cluster: dict[int, str] = {}
    group_strength: dict[int, SearchHit] = {}
    for i in range(n):
        if known[i]:
            root = groups.find(i)
            top = known[i][0]
            current = group_strength.get(root)
            if current is None or _order(top) < _order(current):
                group_strength[root] = top
                group_cluster[root] = top.cluster_id

    out: list[ClusterAssignment] = []
    for i in range(n):
        root = groups.find(i)
        is_new = root not in group_cluster
        cluster = group_cluster.get(root) or new_cluster_id(content_ids[root])
        matches = list(known[i])
        seen = {content_ids[i]}
        for j in range(i):
            cid = content_ids[j]
            if cid in seen or sims[i, j] < threshold:
                continue
            seen.add(cid)
            matches.append(SearchHit(cid, float(sims[i, j]), cluster))
        matches.sort(key=_order)
        out.append(
            ClusterAssignment(
                content_id=content_ids[i],
                cluster_id=cluster,
                matches=matches,
                is_new_cluster=is_new and i == root,
            )
        )
    return out


def _order(hit: SearchHit) -> tuple[float, str]:
    """Most similar first; ties broken by content id so the result does not depend on input order."""
    return (-hit.similarity, hit.content_id)
