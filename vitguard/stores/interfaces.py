"""Narrow interfaces of the stores the pipeline needs; the adapters live beside this module.

The pipeline only ever talks to these protocols, so a unit test can pass the small in-memory
implementations while integration tests use Milvus and Redis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from vitguard.model.types import ModelInfo

__all__ = [
    "ClusterRow",
    "ClusterRows",
    "ClusterSighting",
    "DedupStore",
    "EmbeddingIndex",
    "EmbeddingRecord",
    "SearchHit",
    "WaveCounter",
    "WaveRecord",
    "WaveRule",
    "WaveState",
    "default_cluster_id",
]


@dataclass(frozen=True)
class EmbeddingRecord:
    """One row of a per-model vector collection; ``content_id`` is the primary key (upserts are idempotent)."""

    content_id: str
    embedding: NDArray[np.float32] = field(repr=False)
    label: str
    unsafe_score: float
    cluster_id: str  # "" for safe items
    tenant: str
    model_version: str
    created_at_ms: int
    processed_at_ms: int


def default_cluster_id(content_id: str) -> str:
    """The cluster of an item stored without one (it founded its own): ``c-`` + the first 16 hex digits of
    SHA-1(content id), stable across runs and workers."""
    return "c-" + hashlib.sha1(content_id.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


@dataclass(frozen=True)
class SearchHit:
    content_id: str
    similarity: float
    cluster_id: str


class EmbeddingIndex(Protocol):
    """Vector store of embeddings, one collection per model (never mixing models)."""

    def ensure_collection(self, model: ModelInfo) -> str:
        """Create the model's collection (COSINE, dim = model.embedding_dim) if missing; return its name."""
        ...

    def upsert(self, collection: str, records: Sequence[EmbeddingRecord]) -> None:
        """Insert or replace rows by content id, in one call. Raises ServiceUnavailableError."""
        ...

    def search_unsafe(
        self, collection: str, vectors: NDArray[np.float32], limit: int, min_similarity: float
    ) -> list[list[SearchHit]]:
        """One batched search among unsafe rows; per query, hits >= min_similarity, most similar first."""
        ...

    def get(self, collection: str, content_ids: Sequence[str]) -> Mapping[str, EmbeddingRecord]:
        """The stored rows of these content ids (the ones found), embeddings included."""
        ...

    def ping(self) -> bool:
        """True when the store answers."""
        ...


class DedupStore(Protocol):
    """Redelivery guard by event (:func:`~vitguard.pipeline.core.answer_key`: its id and a digest of what it
    asks about) and verdict cache by image SHA-256 (Redis)."""

    async def seen_events(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these events (answer keys) already got a verdict, published and acknowledged."""
        ...

    async def mark_events(self, event_ids: Sequence[str]) -> None:
        """Remember events (answer keys) as answered (SET NX with TTL); called after their verdicts are
        acknowledged."""
        ...

    async def cached_verdicts(self, sha256s: Sequence[str], model_key: str) -> Mapping[str, str]:
        """Cached verdict JSON by image hash for this model (only the hashes found)."""
        ...

    async def cache_verdicts(self, verdicts: Mapping[str, str], model_key: str) -> None:
        """Store verdict JSON by image hash for this model, with TTL."""
        ...

    async def remember(self, event_ids: Sequence[str], verdicts: Mapping[str, str], model_key: str) -> None:
        """:meth:`mark_events` and :meth:`cache_verdicts` at once (one round trip where the store allows)."""
        ...


@dataclass(frozen=True)
class WaveState:
    count: int
    """Items on the cluster within the window, this one included."""
    is_wave: bool
    """count >= the policy's wave threshold."""
    alert: bool
    """Whether an alert should go out for this item (suppression applied to waves)."""


@dataclass(frozen=True, slots=True)
class WaveRule:
    """When a cluster is in a wave for an item: ``threshold`` items within ``window_s``; after a wave alert,
    further ones of the same scope are suppressed for ``cooldown_s`` (0: never)."""

    threshold: int
    window_s: int
    cooldown_s: int


@dataclass(frozen=True, slots=True)
class WaveRecord:
    """One unsafe item recorded on its cluster at ``now_s``, judged by ``rule`` (None: the counter's own, the
    fleet's settings). The wave-alert cooldown is kept per ``scope`` (a policy's name; "" for the fleet), so one
    policy's wave alert does not silence another's."""

    cluster_id: str
    content_id: str
    now_s: float
    rule: WaveRule | None = None
    scope: str = ""


@dataclass(frozen=True, slots=True)
class ClusterSighting:
    """An unsafe item counted on its cluster: uploaded at ``uploaded_ms``, answered at ``seen_ms``."""

    cluster_id: str
    content_id: str
    tenant: str
    uploaded_ms: int
    seen_ms: int


@dataclass(frozen=True, slots=True)
class ClusterRow:
    """One cluster as its row holds it."""

    cluster_id: str
    size: int
    first_ms: int
    last_ms: int
    first_id: str
    latest: tuple[str, ...]
    """The latest items answered on it, newest first."""
    tenants: tuple[str, ...]
    """Sorted, at most :data:`~vitguard.stores.cluster_rows.TENANTS_SHOWN`."""
    tenant_count: int
    growth: int
    """Items on it answered within the wave window (0 once the wave counter's window has passed)."""


class ClusterRows(Protocol):
    """Near-duplicate clusters kept as their own rows (:mod:`vitguard.stores.cluster_rows`)."""

    async def record_many(self, sightings: Sequence[ClusterSighting]) -> None:
        """Count unsafe items on their clusters' rows (idempotent), in one round trip."""
        ...

    async def latest(self, *, limit: int, now_s: float, window_s: float) -> list[ClusterRow]:
        """The ``limit`` most recently active clusters, newest first, with their growth within ``window_s``."""
        ...


class WaveCounter(Protocol):
    """Sliding-window counter per cluster with alert suppression (Redis sorted sets)."""

    async def record(self, cluster_id: str, content_id: str, now_s: float) -> WaveState: ...

    async def record_many(self, items: Sequence[WaveRecord], *, keep_s: int = 0) -> list[WaveState]:
        """Items recorded in order, as many :meth:`record` calls would be, in one round trip. A cluster's items
        are kept for the longest window in use: ``keep_s`` (the caller's, e.g. every policy's) or a rule's."""
        ...
