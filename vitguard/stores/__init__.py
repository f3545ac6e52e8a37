"""Stores behind narrow interfaces: Milvus for embeddings, Redis for dedup, verdict cache and waves.

The pipeline depends only on the protocols in :mod:`vitguard.stores.interfaces`; the in-memory
implementations exist for unit tests of pipeline logic.
"""

from __future__ import annotations

from vitguard.stores.interfaces import (
    DedupStore,
    EmbeddingIndex,
    EmbeddingRecord,
    SearchHit,
    WaveCounter,
    WaveRecord,
    WaveRule,
    WaveState,
)
from vitguard.stores.memory import InMemoryDedupStore, InMemoryEmbeddingIndex, InMemoryWaveCounter
from vitguard.stores.milvus import MilvusEmbeddingIndex
from vitguard.stores.naming import collection_name
from vitguard.stores.redis_store import CircuitBreaker, RedisDedupStore
from vitguard.stores.wave import RedisWaveCounter, wave_decision

__all__ = [
    "CircuitBreaker",
    "DedupStore",
    "EmbeddingIndex",
    "EmbeddingRecord",
    "InMemoryDedupStore",
    "InMemoryEmbeddingIndex",
    "InMemoryWaveCounter",
    "MilvusEmbeddingIndex",
    "RedisDedupStore",
    "RedisWaveCounter",
    "SearchHit",
    "WaveCounter",
    "WaveRecord",
    "WaveRule",
    "WaveState",
    "collection_name",
    "wave_decision",
]
