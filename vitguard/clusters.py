"""Near-duplicate clusters as moderators see them (``GET /clusters``, ``vitguard clusters``): each unsafe
cluster's size, first and last upload, growth within the wave window and wave state, and a few representative
items; one cluster's items, paged. Pure: built from the clusters' own rows (:mod:`vitguard.stores.cluster_rows`,
kept in Redis by the alert stage: a listing at any scale), or from the stored items
(:meth:`MilvusEmbeddingIndex.cluster_rows`: a tenant's listing, one cluster's items). Cluster ids are the stored
ones (stable across restarts and workers) and nothing is counted twice.

Growth counts the cluster's items answered within the last ``VITGUARD_POLICY_WAVE_WINDOW_S`` (their
``processed_at``), and a cluster is a wave at ``VITGUARD_POLICY_WAVE_THRESHOLD`` of them: the stream's own wave
rule, read from the store instead of Redis's sliding window (which forgets, and suppresses repeated alerts).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from vitguard.stores.cluster_rows import TENANTS_SHOWN
from vitguard.stores.interfaces import ClusterRow
from vitguard.stores.similar import StoredItem

__all__ = [
    "REPRESENTATIVES",
    "ClusterItems",
    "ClusterList",
    "ClusterNotFoundError",
    "ClusterSummary",
    "cluster_items",
    "summarize",
    "summarize_rows",
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
    tenants: list[str] = Field(description=f"Its tenants (sorted; from rows, at most {TENANTS_SHOWN}).")
    tenant_count: int = Field(description="How many tenants it has items of.")
    representatives: list[str] = Field(description="The first upload, then the latest ones (content ids).")


class ClusterList(BaseModel):
    """The clusters, most recently active first."""

    clusters: list[ClusterSummary]
    truncated: bool = Field(
        description="rows: more clusters than listed; store: more rows were stored than read (sizes may be short).")
    source: Literal["rows", "store"] = Field(
        "store",
        description=(
            "rows: the clusters' own rows (every cluster active within VITGUARD_REDIS_CLUSTER_ROWS_TTL_S, at any "
            "scale; sizes estimated past a few hundred items); store: a scan of the stored unsafe items (a tenant's "
            "listing, ?source=store, or no rows)."
        ),
    )


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


def summarize_rows(rows: Sequence[ClusterRow], *, threshold: int, limit: int) -> ClusterList:
    """The clusters of their own rows (:class:`~vitguard.stores.interfaces.ClusterRow`, most recently active
    first, as read), at most ``limit``; ``truncated`` when more were read."""
    summaries = [
        ClusterSummary(
            cluster_id=r.cluster_id, size=max(1, r.size), first_seen=_time(r.first_ms), last_seen=_time(r.last_ms),
            growth=r.growth, wave=r.growth >= threshold, tenants=list(r.tenants), tenant_count=r.tenant_count,
            representatives=[r.first_id, *[c for c in r.latest if c != r.first_id]][:REPRESENTATIVES],
        )
        for r in rows[:limit]
    ]
    return ClusterList(clusters=summaries, truncated=len(rows) > limit, source="rows")


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
        tenants=sorted({r.tenant for r in members}), tenant_count=len({r.tenant for r in members}),
        representatives=[ordered[0].content_id, *latest],
    )
