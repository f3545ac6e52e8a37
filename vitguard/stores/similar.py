"""Similarity search over the stored embeddings, as users ask it (``POST /search``, ``vitguard search``): what
a search may filter on and what each hit says. Pure: the adapters (:mod:`vitguard.stores.milvus`,
:mod:`vitguard.stores.memory`) run it.

Filters become a Milvus boolean expression (:func:`milvus_filter`). Every value put into it is checked first
against the pattern of the field it filters (ids: letters, digits and ``._:@/-``; labels: ``safe`` or
``unsafe``), so a caller's value can never close the string literal and add terms of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from vitguard.stores.interfaces import EmbeddingRecord

__all__ = ["ANY", "LABELS", "SearchFilters", "SimilarItem", "StoredItem", "milvus_filter"]

LABELS = ("safe", "unsafe")
"""The labels an item is stored with."""

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]{0,127}$")
"""Tenants and cluster ids: the input contract's identifier pattern (``vitguard.schemas.events.Identifier``)."""


@dataclass(frozen=True)
class SearchFilters:
    """Which stored items a search may answer; an empty tuple or None means any. Values within one field are
    alternatives (OR); fields combine with AND."""

    labels: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    clusters: tuple[str, ...] = ()
    since_ms: int | None = None
    """Uploaded at or after (``created_at``, Unix milliseconds)."""
    until_ms: int | None = None
    """Uploaded before (``created_at``, Unix milliseconds)."""

    def __post_init__(self) -> None:
        for label in self.labels:
            if label not in LABELS:
                raise ValueError(f"label {label!r}: expected one of {', '.join(LABELS)}")
        for field, values in (("tenant", self.tenants), ("cluster", self.clusters)):
            for value in values:
                if not _ID.match(value):
                    raise ValueError(f"{field} {value!r}: expected letters, digits and ._:@/- (128 at most)")
        if self.since_ms is not None and self.until_ms is not None and self.since_ms >= self.until_ms:
            raise ValueError("since must be before until")

    def admits(self, record: EmbeddingRecord) -> bool:
        """Whether a stored row passes these filters (the in-memory index; Milvus evaluates
        :func:`milvus_filter` instead, with the same meaning)."""
        return ((not self.labels or record.label in self.labels)
                and (not self.tenants or record.tenant in self.tenants)
                and (not self.clusters or record.cluster_id in self.clusters)
                and (self.since_ms is None or record.created_at_ms >= self.since_ms)
                and (self.until_ms is None or record.created_at_ms < self.until_ms))


ANY = SearchFilters()
"""No filter: every stored item may answer."""


def milvus_filter(filters: SearchFilters, *, exclude: Sequence[str] = ()) -> str:
    """The Milvus expression of ``filters`` (``""``: no filter), leaving out the content ids ``exclude``
    (the item a search by content id starts from). Values were checked by :class:`SearchFilters`; excluded
    ids are checked here."""
    terms = [_in("label", filters.labels), _in("tenant", filters.tenants), _in("cluster_id", filters.clusters)]
    if filters.since_ms is not None:
        terms.append(f"created_at_ms >= {int(filters.since_ms)}")
    if filters.until_ms is not None:
        terms.append(f"created_at_ms < {int(filters.until_ms)}")
    for content_id in exclude:
        if not _ID.match(content_id):
            raise ValueError(f"content id {content_id!r}: expected letters, digits and ._:@/- (128 at most)")
    if exclude:
        terms.append(f"content_id not in {_list(exclude)}")
    return " and ".join(t for t in terms if t)


def _in(field: str, values: tuple[str, ...]) -> str:
    return f"{field} in {_list(values)}" if values else ""


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


@dataclass(frozen=True)
class SimilarItem:
    """One stored item found by a similarity search (its embedding left out)."""

    content_id: str
    similarity: float
    """Cosine similarity to the query, -1 to 1."""
    label: str
    unsafe_score: float
    cluster_id: str
    """``""`` for a safe item."""
    tenant: str
    model_version: str
    created_at_ms: int
    processed_at_ms: int

    @classmethod
    def of(cls, record: EmbeddingRecord, similarity: float) -> SimilarItem:
        return cls(record.content_id, similarity, record.label, record.unsafe_score, record.cluster_id,
                   record.tenant, record.model_version, record.created_at_ms, record.processed_at_ms)


@dataclass(frozen=True)
class StoredItem:
    """One stored row without its embedding (cluster listings)."""

    content_id: str
    label: str
    unsafe_score: float
    cluster_id: str
    tenant: str
    created_at_ms: int
    processed_at_ms: int

    @classmethod
    def of(cls, record: EmbeddingRecord) -> StoredItem:
        return cls(record.content_id, record.label, record.unsafe_score, record.cluster_id, record.tenant,
                   record.created_at_ms, record.processed_at_ms)
