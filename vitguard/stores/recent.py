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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vitguard.stores.interfaces import EmbeddingRecord, SearchHit

__all__ = ["RECENT_WRITES_MAX_ROWS", "RECENT_WRITES_S", "RecentWrites", "merge_hits"]

RECENT_WRITES_S = 15.0
"""How long a written row is searched here as well (well past Milvus's bounded staleness)."""

RECENT_WRITES_MAX_ROWS = 50_000
"""At most this many recent rows per collection (the oldest go first): ~40 MB of 192-d vectors at most."""


@dataclass
class _Chunk:
    """The unsafe rows of one write, as one matrix (searched with one product; never re-stacked)."""

    ids: list[str]
    clusters: list[str]
    units: NDArray[np.float32]
    """One L2-normalised row per id."""
    alive: NDArray[np.bool_]
    """False for a row rewritten later, or dropped past the row limit."""
    written_at: float


@dataclass
class _Collection:
    chunks: deque[_Chunk] = field(default_factory=deque)
    where: dict[str, tuple[_Chunk, int]] = field(default_factory=dict)
    """Each live row's chunk and position."""

    def kill(self, content_id: str) -> None:
        found = self.where.pop(content_id, None)
        if found is not None:
            chunk, i = found
            chunk.alive[i] = False


class RecentWrites:
    """The unsafe rows written in the last ``window_s`` seconds, per collection; thread-safe by its owner's lock.

    Rows are kept as one matrix per write (a chunk), so a search is one matrix product per chunk: re-stacking
    every recent row on every search was a tenth of the Milvus thread's time at line rate."""

    def __init__(self, *, window_s: float = RECENT_WRITES_S, max_rows: int = RECENT_WRITES_MAX_ROWS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._max_rows = max_rows
        self._clock = clock
        self._collections: dict[str, _Collection] = {}

    def wrote(self, collection: str, records: Sequence[EmbeddingRecord]) -> None:
        """Records were upserted: unsafe ones are remembered, a row rewritten as anything else is forgotten."""
        col = self._collections.setdefault(collection, _Collection())
        now = self._clock()
        kept: dict[str, EmbeddingRecord] = {}
        for r in records:
            col.kill(r.content_id)
            kept.pop(r.content_id, None)
            if r.label == "unsafe":
                kept[r.content_id] = r
        if kept:
            units = np.stack([np.asarray(r.embedding, dtype=np.float32).reshape(-1) for r in kept.values()])
            norms = np.linalg.norm(units, axis=1, keepdims=True)
            chunk = _Chunk(list(kept), [r.cluster_id for r in kept.values()],
                           (units / np.where(norms > 0, norms, 1.0)).astype(np.float32), np.ones(len(kept), dtype=bool),
                           now)
            col.chunks.append(chunk)
            for i, cid in enumerate(chunk.ids):
                col.where[cid] = (chunk, i)
        self._expire(col, now)

    def forget(self, collection: str) -> None:
        """The collection was dropped or recreated."""
        self._collections.pop(collection, None)

    def search(self, collection: str, vectors: NDArray[np.float32], limit: int,
               min_similarity: float) -> list[list[SearchHit]]:
        """Per query vector, the recent unsafe rows with cosine similarity >= ``min_similarity``, best first."""
        out: list[list[SearchHit]] = [[] for _ in range(len(vectors))]
        col = self._collections.get(collection)
        if col is None:
            return out
        self._expire(col, self._clock())
        if not col.where:
            return out
        raw = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        queries = (raw / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        chunks = list(col.chunks)
        found = _top_per_chunk(queries, chunks, limit, min_similarity)
        if found is None:
            return out
        sims, where, position = found
        best = np.argsort(-sims, axis=1, kind="stable")[:, :limit]  # ties: the earlier write, then its order
        for q, (row_sims, row_chunks, row_positions) in enumerate(zip(
                np.take_along_axis(sims, best, axis=1).tolist(), np.take_along_axis(where, best, axis=1).tolist(),
                np.take_along_axis(position, best, axis=1).tolist(), strict=True)):
            for s, c, j in zip(row_sims, row_chunks, row_positions, strict=True):
                if s == -np.inf:
                    break
                out[q].append(SearchHit(chunks[c].ids[j], s, chunks[c].clusters[j]))
        return out

    def _expire(self, col: _Collection, now: float) -> None:
        """Drop the chunks older than the window, then the oldest rows past the row limit."""
        while col.chunks and now - col.chunks[0].written_at > self._window_s:
            self._drop(col, col.chunks.popleft())
        while len(col.where) > self._max_rows and col.chunks:
            oldest = col.chunks[0]
            for i in np.nonzero(oldest.alive)[0][: len(col.where) - self._max_rows]:
                col.kill(oldest.ids[i])
            if not oldest.alive.any():
                col.chunks.popleft()

    @staticmethod
    def _drop(col: _Collection, chunk: _Chunk) -> None:
        for i in np.nonzero(chunk.alive)[0]:
            col.where.pop(chunk.ids[i], None)


def _top_per_chunk(queries: NDArray[np.float32], chunks: Sequence[_Chunk], limit: int, min_similarity: float
                   ) -> tuple[NDArray[np.float32], NDArray[np.intp], NDArray[np.intp]] | None:
    """Per query, each chunk's best ``limit`` live rows at or above ``min_similarity`` (-inf where fewer), side
    by side: their similarities, chunk indices and positions in the chunk; None when no chunk has any. In numpy
    only, so a wave of copies (every query close to every recent row) costs matrix work, not a Python object per
    pair."""
    sims_of, chunk_of, position_of = [], [], []
    for c, chunk in enumerate(chunks):
        sims = queries @ chunk.units.T
        hit = (sims >= min_similarity) & chunk.alive
        if not hit.any():
            continue
        sims = np.where(hit, sims, np.float32(-np.inf))
        if sims.shape[1] > limit:
            top = np.argsort(-sims, axis=1, kind="stable")[:, :limit]
            sims = np.take_along_axis(sims, top, axis=1)
        else:
            top = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        sims_of.append(sims)
        position_of.append(top)
        chunk_of.append(np.full(top.shape, c, dtype=np.intp))
    if not sims_of:
        return None
    return np.concatenate(sims_of, axis=1), np.concatenate(chunk_of, axis=1), np.concatenate(position_of, axis=1)


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
