"""Near-duplicate clusters as moderators see them (``GET /clusters``, ``vitguard clusters``): each unsafe
cluster's size, first and last upload, growth within the wave window and wave state, and a few representative
items; one cluster's items, paged. Pure: built from the stored rows (:meth:`MilvusEmbeddingIndex.cluster_rows`),
so cluster ids are the stored ones (stable across restarts and workers) and nothing is counted twice.

Growth counts the cluster's items answered within the last ``VITGUARD_POLICY_WAVE_WINDOW_S`` (their
``processed_at``), and a cluster is a wave at ``VITGUARD_POLICY_WAVE_THRESHOLD`` of them: the stream's own wave
rule, read from the store instead of Redis's sliding window (which forgets, and suppresses repeated alerts).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from vitguard.stores.similar import StoredItem

__all__ = [
    "REPRESENTATIVES",
    "ClusterItems",
    "ClusterList",
    "ClusterNotFoundError",
    "ClusterSummary",
    "cluster_items",
    "summarize",
]

REPRESENTATIVES = 3
"""Items shown for each cluster in a list: its first upload and its latest ones."""


class ClusterNotFoundError(LookupError):
    """No stored item is on that cluster (HTTP 404)."""

    reason = "not_found"


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class ClusterSummary(BaseModel):
    """One unsafe near-duplicate cluster."""

    cluster_id: str
    size: int = Field(description="Items stored on the cluster.")
    first_seen: datetime = Field(description="The earliest upload on it.")
    last_seen: datetime = Field(description="The latest upload on it.")
    growth: int = Field(description="Items on it answered within the wave window.")
    wave: bool = Field(description="growth >= the wave threshold.")
    tenants: list[str]
    representatives: list[str] = Field(description="The first upload, then the latest ones (content ids).")


class ClusterList(BaseModel):
    """The clusters, most recently active first."""

    clusters: list[ClusterSummary]
    truncated: bool = Field(description="More rows were stored than were read: sizes and the list may be short.")


class ClusterItem(BaseModel):
    content_id: str
    tenant: str
    unsafe_score: float
    created_at: datetime
    processed_at: datetime


class ClusterItems(BaseModel):
    """One cluster and a page of its items, oldest upload first."""

    cluster: ClusterSummary
    items: list[ClusterItem]
    next_offset: int | None = Field(description="Where the next page starts; null on the last page.")


def summarize(rows: Sequence[StoredItem], *, now_ms: int, window_s: float, threshold: int,
              limit: int, truncated: bool = False) -> ClusterList:
    """The clusters of ``rows`` (unsafe rows with a cluster), most recently active first, at most ``limit``."""
    by_cluster: dict[str, list[StoredItem]] = {}
    for row in rows:
        if row.cluster_id:
            by_cluster.setdefault(row.cluster_id, []).append(row)
    summaries = [_summary(cid, members, now_ms, window_s, threshold) for cid, members in by_cluster.items()]
    summaries.sort(key=lambda c: (c.last_seen, c.cluster_id), reverse=True)
    return ClusterList(clusters=summaries[:limit], truncated=truncated or len(summaries) > limit)


def cluster_items(cluster_id: str, rows: Sequence[StoredItem], *, now_ms: int, window_s: float,
                  threshold: int, offset: int, limit: int) -> ClusterItems | None:
    """One cluster's summary and items ``offset`` to ``offset + limit`` (oldest upload first); None when no
    stored row is on it."""
    members = [r for r in rows if r.cluster_id == cluster_id]
    if not members:
        return None
    ordered = sorted(members, key=lambda r: (r.created_at_ms, r.content_id))
    page = ordered[offset:offset + limit]
    return ClusterItems(
        cluster=_summary(cluster_id, members, now_ms, window_s, threshold),
        items=[ClusterItem(content_id=r.content_id, tenant=r.tenant, unsafe_score=r.unsafe_score,
                           created_at=_time(r.created_at_ms), processed_at=_time(r.processed_at_ms)) for r in page],
        next_offset=offset + limit if offset + limit < len(ordered) else None,
    )


def _summary(cluster_id: str, members: Sequence[StoredItem], now_ms: int, window_s: float,
             threshold: int) -> ClusterSummary:
    ordered = sorted(members, key=lambda r: (r.created_at_ms, r.content_id))
    growth = sum(1 for r in members if r.processed_at_ms >= now_ms - window_s * 1000)
    latest = [r.content_id for r in reversed(ordered[1:])][: REPRESENTATIVES - 1]
    return ClusterSummary(
        cluster_id=cluster_id, size=len(members), first_seen=_time(ordered[0].created_at_ms),
        last_seen=_time(ordered[-1].created_at_ms), growth=growth, wave=growth >= threshold,
        tenants=sorted({r.tenant for r in members}), representatives=[ordered[0].content_id, *latest],
    )
