"""One retro-hunt: from a trigger to the :class:`~vitguard.schemas.retro.RetroMatch` es it finds.

A hunt is a similarity search from the trigger's stored item over the items stored as ``safe`` (an item a
reviewer overturned is stored as ``overturned`` and never matched again), at or above the near-duplicate
threshold, at most ``limit`` items (:data:`vitguard.search.MAX_K`), optionally only items uploaded since a
time. It reaches the store through a :class:`Searcher`: the store itself (a Milvus server, or a Lite file no
worker holds) or a running worker's ``POST /search`` (``vitguard.cli._worker_http.WorkerSearcher``: how a Milvus
Lite file is searched while its worker runs).

Which records start a hunt (:func:`trigger_of`): an audit record of an *applied* ``confirm_unsafe`` decision,
and a near-duplicate alert of severity ``critical`` (its cluster is in a wave). A new entry of an enabled
positive bank (:func:`entry_trigger`) starts a hash hunt (:func:`hash_hunt`) over the PDQ hashes of the items
judged safe (:class:`~vitguard.retro.hashes.HashCatalog`), within the bank's match distance. Everything else on
those topics (bank alerts, ordinary near-duplicates, retro matches themselves, duplicate or superseded
decisions) starts none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel

from vitguard.banks.models import Bank, BankEntry
from vitguard.retro.hashes import HashCatalog
from vitguard.schemas.events import MAX_ID_LEN, NearDuplicateAlert
from vitguard.schemas.retro import RetroMatch, RetroTrigger, retro_match_id
from vitguard.schemas.review import ReviewAuditRecord
from vitguard.search import MAX_K, SearchAnswer, SearchRequest, SimilarityIndex, SimilarResult

__all__ = ["Hunt", "Searcher", "StoreSearcher", "entry_trigger", "hash_hunt", "hash_trigger", "hunt", "trigger_of"]


class Searcher(Protocol):
    """Answers a search from a stored item (raises :class:`~vitguard.search.NotStoredError` when the store
    does not hold it)."""

    def search(self, request: SearchRequest) -> SearchAnswer: ...


@dataclass(frozen=True)
class StoreSearcher:
    """Searches an embedding index directly (the Milvus adapter, or the in-memory index)."""

    index: SimilarityIndex
    collection: str

    def search(self, request: SearchRequest) -> SearchAnswer:
        from vitguard.search import search_by_content_id

        return search_by_content_id(self.index, self.collection, request)


@dataclass(frozen=True)
class Hunt:
    """How far a hunt reaches: the similarity floor, the most items it reports, and the oldest upload."""

    threshold: float
    limit: int = MAX_K
    since: datetime | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_K:
            raise ValueError(f"a hunt reports 1 to {MAX_K} items, not {self.limit}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"a similarity threshold is -1 to 1, not {self.threshold}")


def hunt(searcher: Searcher, trigger: RetroTrigger, reach: Hunt) -> list[RetroMatch]:
    """The safe items within ``reach`` of the trigger's item, as matches (most similar first).

    Raises:
        NotStoredError: the trigger's item is not stored (nothing to hunt from).
    """
    request = SearchRequest(content_id=trigger.content_id, k=reach.limit, min_similarity=reach.threshold,
                            label=["safe"], since=reach.since)
    answer = searcher.search(request)
    return [_match(trigger, answer.collection, found, reach.threshold) for found in answer.results
            if found.label == "safe"]


def _match(trigger: RetroTrigger, collection: str, found: SimilarResult, threshold: float) -> RetroMatch:
    return RetroMatch(
        retro_match_id=retro_match_id(trigger, found.content_id), trigger=trigger, content_id=found.content_id,
        tenant=found.tenant, similarity=min(1.0, max(-1.0, found.similarity)), threshold=threshold,
        old_label="safe", old_unsafe_score=found.unsafe_score, model_version=found.model_version,
        collection=collection, uploaded_at=found.created_at, judged_at=found.processed_at,
    )


def trigger_of(record: BaseModel) -> RetroTrigger | None:
    """The hunt a record of the alerts or review-audit topic starts, or None."""
    if isinstance(record, ReviewAuditRecord):
        if record.outcome == "applied" and record.decision.decision == "confirm_unsafe":
            return RetroTrigger(kind="review_confirmed", trigger_id=record.decision_id, content_id=record.content_id)
        return None
    if isinstance(record, NearDuplicateAlert) and record.severity == "critical":
        return RetroTrigger(kind="wave", trigger_id=record.alert_id, content_id=record.content_id,
                            cluster_id=record.cluster_id)
    return None


def entry_trigger(entry: BankEntry, bank: Bank | None) -> RetroTrigger | None:
    """The hash hunt a bank entry starts: one of an enabled positive bank (an allow-list's entry finds nothing
    to take down), else None."""
    if bank is None or bank.kind != "positive" or not bank.enabled:
        return None
    ref = f"bank:{entry.bank}:{entry.entry_id}"
    if len(ref) > MAX_ID_LEN:
        ref = f"bank:{entry.bank}:{entry.signal}"[:MAX_ID_LEN]
    return RetroTrigger(kind="bank_entry", trigger_id=f"{entry.bank}/{entry.entry_id}"[:MAX_ID_LEN], content_id=ref,
                        bank=entry.bank, entry_id=entry.entry_id, pdq_hash=entry.signal)


def hash_hunt(catalog: HashCatalog, trigger: RetroTrigger, max_distance: int, limit: int = MAX_K,
              since: datetime | None = None) -> list[RetroMatch]:
    """The items judged safe whose PDQ hash is within ``max_distance`` bits of the trigger's, closest first (only
    those uploaded at or after ``since``, when given). Similarity is that of the two hashes as +-1 vectors
    (``1 - distance / 128``), so it reads like a cosine."""
    if trigger.pdq_hash is None:
        return []
    threshold = 1.0 - max_distance / 128
    return [
        RetroMatch(
            retro_match_id=retro_match_id(trigger, item.content_id), trigger=trigger, content_id=item.content_id,
            tenant=item.tenant, similarity=1.0 - distance / 128, threshold=max(-1.0, threshold),
            hash_distance=distance, old_label="safe", old_unsafe_score=item.unsafe_score,
            model_version=item.model_version, collection=item.collection or "pdq", uploaded_at=item.uploaded_at,
            judged_at=item.judged_at,
        )
        for item, distance in [f for f in catalog.hunt(trigger.pdq_hash, max_distance)
                               if since is None or f[0].uploaded_at >= since][:limit]
    ]


def hash_trigger(pdq_hash: str) -> RetroTrigger:
    """The trigger of an operator's hunt by one PDQ hash (``vitguard retro-hunt --hash``); the same hash is the
    same hunt (its matches keep their ids)."""
    return RetroTrigger(kind="on_demand", trigger_id=f"on-demand:pdq:{pdq_hash}", content_id=f"pdq:{pdq_hash}",
                        pdq_hash=pdq_hash)
