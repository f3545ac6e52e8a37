"""The index stage: near-duplicate search for the unsafe items (one batched call), clusters, then one
idempotent Milvus upsert of every new embedding (keyed by content id), and of a copy of the stored row for
each verdict cache hit (:func:`cache_hit_copies`), so that every answered item is stored under its own content
id and can be searched for by it.

The search runs before the upsert so each stored embedding carries its cluster id. Milvus calls go through
:class:`~vitguard.pipeline.runtime.failure.MilvusPolicy` (hold with backoff; permanent errors are fatal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace

import numpy as np

from vitguard.pipeline.results import CacheHit, Indexed, Predicted
from vitguard.pipeline.runtime.failure import MilvusPolicy
from vitguard.pipeline.stages.clustering import assign_clusters
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import EmbeddingIndex, EmbeddingRecord

__all__ = ["cache_hit_copies", "index_batch"]


async def index_batch(
    predicted: Sequence[Predicted],
    *,
    index: EmbeddingIndex,
    collection: str,
    milvus: MilvusPolicy,
    policy: PolicySettings,
    model_version: str,
    now_ms: int,
    timed: Callable[[str], AbstractContextManager[None]],
    copies: Sequence[EmbeddingRecord] = (),
) -> list[Indexed]:
    """Cluster and store ``predicted`` (same order), and ``copies`` in the same upsert; ``timed(stage)`` is a
    context manager timing a stage."""
    unsafe = [i for i, p in enumerate(predicted) if p.decision.label == "unsafe"]
    out = [Indexed(p, None) for p in predicted]
    if unsafe:
        vectors = np.stack([predicted[i].prediction.embedding for i in unsafe])
        with timed("milvus_search"):
            hits = await milvus.call(
                "search_unsafe",
                lambda: index.search_unsafe(collection, vectors, policy.max_matches + 1,
                                            policy.near_duplicate_threshold),
            )
        ids = [predicted[i].decoded.parsed.event.content_id for i in unsafe]
        # an item already stored by an earlier, unfinished attempt at this batch is not its own match
        hits = [[h for h in hs if h.content_id != cid] for cid, hs in zip(ids, hits, strict=True)]
        for i, a in zip(unsafe, assign_clusters(ids, vectors, hits, policy.near_duplicate_threshold), strict=True):
            out[i] = Indexed(predicted[i], a.cluster_id, tuple(a.matches), a.is_new_cluster)
    records = [
        EmbeddingRecord(
            content_id=x.predicted.decoded.parsed.event.content_id,
            embedding=x.predicted.prediction.embedding,
            label=x.predicted.decision.label,
            unsafe_score=x.predicted.decision.unsafe_score,
            cluster_id=x.cluster_id or "",
            tenant=x.predicted.decoded.parsed.event.tenant,
            model_version=model_version,
            created_at_ms=int(x.predicted.decoded.parsed.event.created_at.timestamp() * 1000),
            processed_at_ms=now_ms,
        )
        for x in out
    ] + list(copies)
    if records:
        with timed("milvus_upsert"):
            await milvus.call("upsert", lambda: index.upsert(collection, records))
    return out


async def cache_hit_copies(
    hits: Sequence[CacheHit], *, index: EmbeddingIndex, collection: str, milvus: MilvusPolicy, now_ms: int,
    timed: Callable[[str], AbstractContextManager[None]],
) -> tuple[list[EmbeddingRecord], set[str]]:
    """The rows to store for verdict cache hits: each a copy of the row its cached verdict was made for (the
    same embedding and cluster; its own content id, tenant and times, and its own verdict's label and score),
    read in one call.

    Returns the copies to upsert and the content ids of the hits that will be stored (a hit of its own
    content id is stored already; one whose original row is gone, a collection dropped since, is not)."""
    wanted = sorted({h.cached_from for h in hits})
    if not wanted:
        return [], set()
    with timed("milvus_get"):
        originals = await milvus.call("get", lambda: index.get(collection, wanted))
    copies: dict[str, EmbeddingRecord] = {}
    stored: set[str] = set()
    for hit in hits:
        event, original = hit.parsed.event, originals.get(hit.cached_from)
        if original is None:
            continue
        stored.add(event.content_id)
        if event.content_id != hit.cached_from:
            # the label and score are this event's: its policy judged the cached scores again (another tenant's
            # rules may differ); an item judged safe here is in no cluster
            unsafe = hit.verdict.label == "unsafe"
            copies[event.content_id] = replace(
                original, content_id=event.content_id, tenant=event.tenant, label=hit.verdict.label,
                unsafe_score=hit.verdict.unsafe_score, cluster_id=original.cluster_id if unsafe else "",
                created_at_ms=int(event.created_at.timestamp() * 1000), processed_at_ms=now_ms)
    return list(copies.values()), stored
