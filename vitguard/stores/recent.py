"""Read-your-writes for near-duplicate search without waiting for Milvus: the unsafe rows this process wrote
recently, searched in memory beside Milvus.

Why: a near-duplicate search must see the unsafe embeddings the previous group just upserted (a copy arriving
in the next group joins their cluster). With ``Strong`` consistency a Milvus server makes every search wait
until its time tick passes the latest write: ~200 ms a search measured against Milvus 2.3.5 (8 ms with
``Bounded``), which capped one worker at ~40 images/s. So searches run at ``Bounded`` consistency, and the
rows this process wrote within :data:`RECENT_WRITES_S` (longer than Milvus's bounded staleness, 5 s by
default) are searched here exactly and merged with Milvus's hits. Within one worker nothing is missed; between
workers a copy judged by another worker in the last few seconds may be missed (it then starts its own cluster),
as two concurrent groups on two workers always could.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vitguard.stores.interfaces import EmbeddingRecord, SearchHit

__all__ = ["RECENT_WRITES_MAX_ROWS", "RECENT_WRITES_S", "RecentWrites", "merge_hits"]

RECENT_WRITES_S = 15.0
"""How long a written row is searched here as well (well past Milvus's bounded staleness)."""

RECENT_WRITES_MAX_ROWS = 50_000
"""At most this many recent rows per collection (the oldest go first): ~40 MB of 192-d vectors at most."""


@dataclass(frozen=True)
class _Row:
    unit: NDArray[np.float32]
    cluster_id: str
    written_at: float


class RecentWrites:
    """The unsafe rows written in the last ``window_s`` seconds, per collection; thread-safe by its owner's lock."""

    def __init__(self, *, window_s: float = RECENT_WRITES_S, max_rows: int = RECENT_WRITES_MAX_ROWS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._max_rows = max_rows
        self._clock = clock
        self._rows: dict[str, OrderedDict[str, _Row]] = {}

    def wrote(self, collection: str, records: Sequence[EmbeddingRecord]) -> None:
        """Records were upserted: unsafe ones are remembered, a row rewritten as anything else is forgotten."""
        rows = self._rows.setdefault(collection, OrderedDict())
        now = self._clock()
        for r in records:
            rows.pop(r.content_id, None)
            if r.label != "unsafe":
                continue
            vec = np.asarray(r.embedding, dtype=np.float32).reshape(-1)
            norm = float(np.linalg.norm(vec))
            rows[r.content_id] = _Row(vec / norm if norm > 0 else vec, r.cluster_id, now)
        self._expire(rows, now)

    def forget(self, collection: str) -> None:
        """The collection was dropped or recreated."""
        self._rows.pop(collection, None)

    def search(self, collection: str, vectors: NDArray[np.float32], limit: int,
               min_similarity: float) -> list[list[SearchHit]]:
        """Per query vector, the recent unsafe rows with cosine similarity >= ``min_similarity``, best first."""
        rows = self._rows.get(collection)
        if rows:
            self._expire(rows, self._clock())
        if not rows:
            return [[] for _ in range(len(vectors))]
        ids = list(rows)
        matrix = np.stack([rows[i].unit for i in ids])
        queries = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        sims = (queries / np.where(norms > 0, norms, 1.0)) @ matrix.T
        out = []
        for row in sims:
            best = np.argsort(-row)[:limit]
            out.append([SearchHit(ids[j], float(row[j]), rows[ids[j]].cluster_id)
                        for j in best if row[j] >= min_similarity])
        return out

    def _expire(self, rows: OrderedDict[str, _Row], now: float) -> None:
        while rows:
            oldest = next(iter(rows.values()))
            if now - oldest.written_at <= self._window_s and len(rows) <= self._max_rows:
                break
            rows.popitem(last=False)


def merge_hits(*found: Sequence[SearchHit], limit: int) -> list[SearchHit]:
    """Hits of one query from several sources: one per content id (the higher similarity; the recent row's
    cluster id, which is the newest, on a tie), best first, at most ``limit``."""
    best: dict[str, SearchHit] = {}
    for hits in found:
        for h in hits:
            kept = best.get(h.content_id)
            if kept is None or h.similarity >= kept.similarity:
                best[h.content_id] = h
    return sorted(best.values(), key=lambda h: h.similarity, reverse=True)[:limit]
