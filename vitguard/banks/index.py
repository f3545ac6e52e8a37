"""Hash indexes: every banked hash within a distance of each query hash, for a whole batch at once.

:class:`HashIndex` is the narrow interface the matcher uses (HMA's ``SignalTypeIndex``). Implementations:

- :class:`MultiIndexHashIndex` (``mih``), the default for banks of ``multihash_min`` hashes and more:
  multi-index hashing (Norouzi et al.) over 16 tables of 16-bit chunks, in numpy, a whole batch per call. By
  the pigeonhole principle a hash within ``max_distance`` of a query has at least one chunk within
  ``max_distance // 16`` bits of the query's (a pair 31 bits apart has a chunk at most 1 bit apart), so
  probing each table at the query's chunk and its 1-bit neighbours finds every match; the candidates are
  then checked with exact popcounts. About 100 bytes per hash (the codes, one sorted permutation per table).
- :class:`FaissHashIndex`: FAISS binary indexes, ``flat`` (an exact scan, the default below
  ``multihash_min``) and ``multihash`` (``IndexBinaryMultiHash``, the same pigeonhole probing; HMA's PDQ
  index). FAISS answers one range search per query: on this machine it matched about 10x fewer images per
  second than ``mih`` at 1 M hashes (``bench/banks.py``).
- :class:`BruteForceHashIndex`: numpy popcounts, the reference the tests hold the others to.

An index is immutable: it is built once from a snapshot of the banks (off the hot path, in the follower)
and replaced whole.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from vitguard.banks.signal import PDQ_BITS, PDQ_BYTES, hamming

__all__ = [
    "DEFAULT_MULTIHASH_MIN",
    "BruteForceHashIndex",
    "FaissHashIndex",
    "HashIndex",
    "IndexKind",
    "MultiIndexHashIndex",
    "build_index",
]

DEFAULT_MULTIHASH_MIN = 4_096
"""From this many hashes on, ``auto`` uses multi-index hashing (a flat scan costs ~n/10^7 s per query)."""
_MULTIHASH_TABLES = 16
_MAX_PROBES = 1 << 21
"""Table probes per :meth:`MultiIndexHashIndex.search` step (a batch is searched in groups of queries)."""
_MIH_MAX_DISTANCE = 47
"""Above this, probes grow with C(16, flips) per table and ``auto`` prefers an exact scan."""

IndexKind = Literal["auto", "flat", "multihash", "mih", "brute"]

Hits = list[list[tuple[int, int]]]
"""Per query, ``(position, distance)`` of every hash in range, closest first."""


class HashIndex(Protocol):
    """Every indexed hash within ``max_distance`` of each query (positions are rows of the built codes)."""

    max_distance: int

    def __len__(self) -> int: ...

    def search(self, queries: NDArray[np.uint8]) -> Hits:
        """``queries``: an ``n x 32`` uint8 matrix; one hit list per row."""
        ...


def _check(codes: NDArray[np.uint8]) -> NDArray[np.uint8]:
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != PDQ_BYTES:
        raise ValueError(f"hash codes must be an n x {PDQ_BYTES} uint8 matrix, got shape {codes.shape}")
    return codes


def _no_hits(queries: NDArray[np.uint8]) -> Hits:
    return [[] for _ in range(len(queries))]


class BruteForceHashIndex:
    """Exact, numpy only; for tests and tiny banks."""

    def __init__(self, codes: NDArray[np.uint8], max_distance: int) -> None:
        self.codes = _check(codes)
        self.max_distance = max_distance

    def __len__(self) -> int:
        return len(self.codes)

    def search(self, queries: NDArray[np.uint8]) -> Hits:
        queries = _check(queries)
        out: Hits = []
        for row in hamming(queries, self.codes):
            found = np.flatnonzero(row <= self.max_distance)
            out.append(sorted(((int(i), int(row[i])) for i in found), key=lambda h: (h[1], h[0])))
        return out


class FaissHashIndex:
    """FAISS binary index (flat or multi-hash, see the module docstring)."""

    def __init__(
        self, codes: NDArray[np.uint8], max_distance: int, *, kind: IndexKind = "auto",
        multihash_min: int = DEFAULT_MULTIHASH_MIN,
    ) -> None:
        import faiss

        codes = _check(codes)
        self.max_distance = max_distance
        if kind == "auto":
            kind = "multihash" if len(codes) >= multihash_min else "flat"
        self.kind = kind
        self._n = len(codes)
        index: Any
        if kind == "multihash":
            index = faiss.IndexBinaryMultiHash(PDQ_BITS, _MULTIHASH_TABLES, PDQ_BITS // _MULTIHASH_TABLES)
            index.nflip = max_distance // _MULTIHASH_TABLES
        elif kind == "flat":
            index = faiss.IndexBinaryFlat(PDQ_BITS)
        else:
            raise ValueError(f"unknown FAISS index kind {kind!r}: use auto, flat or multihash")
        if self._n:
            index.add(codes)
        self._index = index

    def __len__(self) -> int:
        return self._n

    def search(self, queries: NDArray[np.uint8]) -> Hits:
        queries = _check(queries)
        if not self._n or not len(queries):
            return _no_hits(queries)
        lims, dist, ids = self._index.range_search(queries, self.max_distance + 1)  # FAISS: distance < radius
        out: Hits = []
        for q in range(len(queries)):
            lo, hi = int(lims[q]), int(lims[q + 1])
            hits = [(int(i), int(d)) for i, d in zip(ids[lo:hi], dist[lo:hi], strict=True)]
            hits.sort(key=lambda h: (h[1], h[0]))
            out.append(hits)
        return out


class MultiIndexHashIndex:
    """Exact range search by multi-index hashing over 16 tables of 16-bit chunks (see the module docstring).

    Per table: the rows sorted by that chunk's value and where each of the 65,536 values starts, so a probe
    is a slice. A batch's probes are gathered at once, checked with popcounts on 64-bit words, and duplicate
    (query, row) pairs (a row found through two tables) removed.
    """

    def __init__(self, codes: NDArray[np.uint8], max_distance: int) -> None:
        codes = _check(codes)
        if max_distance < 0:
            raise ValueError(f"max_distance must be >= 0, got {max_distance}")
        self.max_distance = max_distance
        self._n = len(codes)
        self._words = codes.view(np.uint64).reshape(-1, PDQ_BYTES // 8)  # rows as 4 x 64 bits
        chunks = self._chunks(codes)  # n x 16
        n = self._n
        self._order = np.empty(_MULTIHASH_TABLES * n, dtype=np.uint32 if n < 2**32 else np.uint64)
        self._starts = np.empty((_MULTIHASH_TABLES, 65_537), dtype=np.int64)
        for t in range(_MULTIHASH_TABLES):
            order = np.argsort(chunks[:, t], kind="stable")
            self._order[t * n:(t + 1) * n] = order
            counts = np.bincount(chunks[:, t], minlength=65_536)
            self._starts[t, 0] = t * n
            np.cumsum(counts, out=self._starts[t, 1:])
            self._starts[t, 1:] += t * n
        self._masks = self._flip_masks(max_distance // _MULTIHASH_TABLES)

    @staticmethod
    def _chunks(codes: NDArray[np.uint8]) -> NDArray[np.intp]:
        return (codes[:, 0::2].astype(np.intp) << 8) | codes[:, 1::2]

    @staticmethod
    def _flip_masks(flips: int) -> NDArray[np.intp]:
        import itertools

        masks = [0]
        for k in range(1, min(flips, 16) + 1):
            masks.extend(sum(1 << b for b in bits) for bits in itertools.combinations(range(16), k))
        return np.array(masks, dtype=np.intp)

    def __len__(self) -> int:
        return self._n

    def search(self, queries: NDArray[np.uint8]) -> Hits:
        queries = _check(queries)
        if not self._n or not len(queries):
            return _no_hits(queries)
        group = max(1, _MAX_PROBES // (_MULTIHASH_TABLES * len(self._masks)))  # bounds the probe arrays' memory
        out: Hits = []
        for start in range(0, len(queries), group):
            out.extend(self._search(queries[start:start + group]))
        return out

    def _search(self, queries: NDArray[np.uint8]) -> Hits:
        nq = len(queries)
        keys = self._chunks(queries)[:, :, None] ^ self._masks[None, None, :]  # nq x 16 x probes
        tables = np.arange(_MULTIHASH_TABLES)[None, :, None]
        lo = self._starts[tables, keys].ravel()
        hi = self._starts[tables, keys + 1].ravel()
        sizes = hi - lo
        total = int(sizes.sum())
        if not total:
            return [[] for _ in range(nq)]
        per_query = sizes.reshape(nq, -1).sum(axis=1)
        bounds = np.concatenate([[0], np.cumsum(per_query)])
        cand = np.take(self._order, np.repeat(lo - np.cumsum(sizes) + sizes, sizes) + np.arange(total))
        # np.take, not fancy indexing: on rows it is about 7x faster (this gather of candidate rows dominates)
        xor = np.take(self._words, cand, axis=0)
        qwords = queries.view(np.uint64).reshape(-1, PDQ_BYTES // 8)
        for q in range(nq):  # candidates are grouped by query
            xor[bounds[q]:bounds[q + 1]] ^= qwords[q]
        # popcount per 64-bit word, capped (a word over the distance already rules the row out, and the cap
        # keeps the byte sum below 256), the four bytes summed with one multiply
        if self.max_distance < 63:
            counts = np.minimum(np.bitwise_count(xor), self.max_distance + 1)
            dist = (counts.view(np.uint32).ravel() * np.uint32(0x01010101)) >> np.uint32(24)
        else:
            dist = np.bitwise_count(xor).sum(axis=1, dtype=np.int64)
        query_of = np.repeat(np.arange(nq), per_query)
        keep = dist <= self.max_distance
        query_of, cand, dist = query_of[keep], cand[keep].astype(np.int64), dist[keep].astype(np.int64)
        out: Hits = [[] for _ in range(nq)]
        if len(cand):
            pairs = np.unique(np.stack([query_of, dist, cand], axis=1), axis=0)  # sorted: query, distance, row
            for q, d, i in pairs.tolist():
                out[q].append((i, d))
        return out


def build_index(
    codes: NDArray[np.uint8], max_distance: int, *, kind: IndexKind = "auto",
    multihash_min: int = DEFAULT_MULTIHASH_MIN,
) -> HashIndex:
    """The index for ``codes``: ``auto`` is an exact FAISS scan below ``multihash_min`` hashes (or for match
    distances over 47 bits), multi-index hashing from there on; ``brute`` the numpy reference; ``flat`` and
    ``multihash`` FAISS's."""
    if kind == "brute":
        return BruteForceHashIndex(codes, max_distance)
    if kind == "mih" or (kind == "auto" and len(codes) >= multihash_min and max_distance <= _MIH_MAX_DISTANCE):
        return MultiIndexHashIndex(codes, max_distance)
    return FaissHashIndex(codes, max_distance, kind="flat" if kind == "auto" else kind, multihash_min=multihash_min)
