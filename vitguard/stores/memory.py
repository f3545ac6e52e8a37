"""Small in-memory stores for unit tests of pipeline logic; integration tests use Milvus and Redis.

They follow the same contracts as the real adapters (idempotent upserts, per-model collections, TTLs,
sliding windows and suppression) so a pure-logic test exercises the same behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import ConfigError
from vitguard.model.types import ModelInfo
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import EmbeddingRecord, SearchHit, WaveRecord, WaveState
from vitguard.stores.naming import collection_name
from vitguard.stores.similar import ANY, SearchFilters, SimilarItem, StoredItem
from vitguard.stores.wave import fleet_wave_rule, kept_for_s, wave_decision

__all__ = ["InMemoryDedupStore", "InMemoryEmbeddingIndex", "InMemoryWaveCounter"]


class InMemoryEmbeddingIndex:
    """Brute-force cosine search with numpy; one dict of rows per collection."""

    def __init__(self, collection_prefix: str = "vitguard_") -> None:
        self._prefix = collection_prefix
        self._dims: dict[str, int] = {}
        self._rows: dict[str, dict[str, EmbeddingRecord]] = {}
        self.upsert_calls = 0
        """How many upsert calls were made (tests check one call per batch)."""
        self.search_calls = 0

    def ensure_collection(self, model: ModelInfo) -> str:
        name = collection_name(self._prefix, model)
        existing = self._dims.setdefault(name, model.embedding_dim)
        if existing != model.embedding_dim:
            raise ConfigError(
                f"collection {name} holds {existing}-d embeddings, model makes {model.embedding_dim}-d"
            )
        self._rows.setdefault(name, {})
        return name

    def upsert(self, collection: str, records: Sequence[EmbeddingRecord]) -> None:
        rows = self._collection(collection)
        dim = self._dims[collection]
        for r in records:
            if np.asarray(r.embedding).reshape(-1).shape[0] != dim:
                raise ValueError(f"record {r.content_id} does not have a {dim}-d embedding")
        self.upsert_calls += 1
        for r in records:
            rows[r.content_id] = r

    def search_unsafe(
        self, collection: str, vectors: NDArray[np.float32], limit: int, min_similarity: float
    ) -> list[list[SearchHit]]:
        rows = [r for r in self._collection(collection).values() if r.label == "unsafe"]
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.shape[0] == 0:
            return []
        self.search_calls += 1
        if not rows:
            return [[] for _ in range(queries.shape[0])]
        matrix = _normalised(np.stack([np.asarray(r.embedding, dtype=np.float32).reshape(-1) for r in rows]))
        sims = _normalised(queries) @ matrix.T
        out: list[list[SearchHit]] = []
        for q in range(queries.shape[0]):
            order = np.argsort(-sims[q], kind="stable")[:limit]
            out.append(
                [
                    SearchHit(rows[i].content_id, float(sims[q, i]), rows[i].cluster_id)
                    for i in order
                    if sims[q, i] >= min_similarity
                ]
            )
        return out

    def ping(self) -> bool:
        return True

    def similar(
        self, collection: str, vector: NDArray[np.float32], *, limit: int, min_similarity: float,
        filters: SearchFilters = ANY, exclude: Sequence[str] = (),
    ) -> list[SimilarItem]:
        """Like the Milvus adapter's ``similar``: the stored items most similar to ``vector`` that pass
        ``filters``, ``exclude`` left out, most similar first."""
        rows = [r for r in self._collection(collection).values()
                if filters.admits(r) and r.content_id not in exclude]
        if not rows:
            return []
        matrix = _normalised(np.stack([np.asarray(r.embedding, dtype=np.float32).reshape(-1) for r in rows]))
        sims = matrix @ _normalised(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        order = np.argsort(-sims, kind="stable")[:limit]
        return [SimilarItem.of(rows[i], float(sims[i])) for i in order if sims[i] >= min_similarity]

    def cluster_rows(self, collection: str, *, filters: SearchFilters = ANY,
                     limit: int = 16_383) -> tuple[list[StoredItem], bool]:
        """Like the Milvus adapter's ``cluster_rows``: unsafe rows on a cluster that pass ``filters``."""
        rows = [StoredItem.of(r) for r in self._collection(collection).values()
                if r.label == "unsafe" and r.cluster_id and filters.admits(r)]
        return rows[:limit], len(rows) > limit

    def get(self, collection: str, content_ids: Sequence[str]) -> dict[str, EmbeddingRecord]:
        """The stored rows of these content ids (the ones found), like the Milvus adapter's ``get``."""
        rows = self._collection(collection)
        return {cid: rows[cid] for cid in content_ids if cid in rows}

    def records(self, collection: str) -> dict[str, EmbeddingRecord]:
        """The rows of a collection by content id (a copy)."""
        return dict(self._collection(collection))

    def _collection(self, name: str) -> dict[str, EmbeddingRecord]:
        if name not in self._rows:
            raise KeyError(f"no collection {name}: call ensure_collection first")
        return self._rows[name]


def _normalised(m: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(norms == 0, 1.0, norms)).astype(np.float32)


class InMemoryDedupStore:
    """Event ids and cached verdicts in dicts, with the same TTLs as the Redis store.

    Args:
        event_ttl_s: how long a processed event id is remembered.
        verdict_cache_ttl_s: how long a cached verdict lives.
        clock: seconds, monotonic (tests pass a fake one to expire entries).
    """

    def __init__(
        self,
        event_ttl_s: float = 7 * 24 * 3600,
        verdict_cache_ttl_s: float = 30 * 24 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._event_ttl = event_ttl_s
        self._verdict_ttl = verdict_cache_ttl_s
        self._clock = clock
        self._events: dict[str, float] = {}
        self._verdicts: dict[tuple[str, str], tuple[str, float]] = {}

    async def seen_events(self, event_ids: Sequence[str]) -> set[str]:
        now = self._clock()
        return {e for e in event_ids if self._events.get(e, -1.0) > now}

    async def mark_events(self, event_ids: Sequence[str]) -> None:
        now = self._clock()
        for e in event_ids:
            if self._events.get(e, -1.0) <= now:  # SET NX: an unexpired mark is kept as it is
                self._events[e] = now + self._event_ttl

    async def cached_verdicts(self, sha256s: Sequence[str], model_key: str) -> Mapping[str, str]:
        now = self._clock()
        found: dict[str, str] = {}
        for h in sha256s:
            entry = self._verdicts.get((model_key, h))
            if entry is not None and entry[1] > now:
                found[h] = entry[0]
        return found

    async def cache_verdicts(self, verdicts: Mapping[str, str], model_key: str) -> None:
        expires = self._clock() + self._verdict_ttl
        for h, v in verdicts.items():
            self._verdicts[(model_key, h)] = (v, expires)

    async def remember(self, event_ids: Sequence[str], verdicts: Mapping[str, str], model_key: str) -> None:
        await self.mark_events(event_ids)
        await self.cache_verdicts(verdicts, model_key)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class InMemoryWaveCounter:
    """Sliding windows per cluster and wave-alert cooldowns (per cluster and scope), driven only by the
    ``now_s`` passed in; the same rules as :class:`~vitguard.stores.wave.RedisWaveCounter`."""

    def __init__(self, policy: PolicySettings) -> None:
        self._rule = fleet_wave_rule(policy)
        self._members: dict[str, dict[str, float]] = {}
        self._cooldown_until: dict[tuple[str, str], float] = {}

    async def record(self, cluster_id: str, content_id: str, now_s: float) -> WaveState:
        [state] = await self.record_many([WaveRecord(cluster_id, content_id, now_s)])
        return state

    async def record_many(self, items: Sequence[WaveRecord], *, keep_s: int = 0) -> list[WaveState]:
        keep = kept_for_s(items, keep_s, self._rule)
        return [self._record(item, keep) for item in items]

    def _record(self, item: WaveRecord, keep_s: int) -> WaveState:
        rule, now_s = item.rule or self._rule, item.now_s
        members = self._members.setdefault(item.cluster_id, {})
        members[item.content_id] = now_s
        for cid in [c for c, ts in members.items() if ts < now_s - keep_s]:
            del members[cid]
        count = sum(1 for ts in members.values() if ts >= now_s - rule.window_s)
        scope = (item.cluster_id, item.scope)
        cooldown_free = self._cooldown_until.get(scope, float("-inf")) <= now_s
        state = wave_decision(count, rule.threshold, rule.cooldown_s, cooldown_free)
        if state.is_wave and state.alert and rule.cooldown_s > 0:
            self._cooldown_until[scope] = now_s + rule.cooldown_s
        return state
