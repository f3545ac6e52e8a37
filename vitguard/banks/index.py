"""Hash indexes: every banked hash within a distance of each query hash, for a whole batch at once.

:class:`HashIndex` is the narrow interface the matcher uses (HMA's ``SignalTypeIndex``). Two
implementations:

- :class:`FaissHashIndex`, the real one: FAISS binary indexes. Up to ``multihash_min`` hashes an exact
  flat scan (``IndexBinaryFlat``); above it ``IndexBinaryMultiHash`` with 16 tables of 16 bits, probing
  ``max_distance // 16`` bit flips per table, which by the pigeonhole principle still finds every hash
  within ``max_distance`` (a pair 31 bits apart has at least one 16-bit chunk at most 1 bit apart). This is
  HMA's PDQ index.
- :class:`BruteForceHashIndex`: numpy popcounts, the reference the tests hold FAISS to.

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
    "build_index",
]

DEFAULT_MULTIHASH_MIN = 50_000
"""From this many hashes on, ``auto`` uses the multi-hash index (a flat scan costs ~n/10^7 s per query)."""
_MULTIHASH_TABLES = 16

IndexKind = Literal["auto", "flat", "multihash", "brute"]

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
            return [[] for _ in range(len(queries))]
        lims, dist, ids = self._index.range_search(queries, self.max_distance + 1)  # FAISS: distance < radius
        out: Hits = []
        for q in range(len(queries)):
            lo, hi = int(lims[q]), int(lims[q + 1])
            hits = [(int(i), int(d)) for i, d in zip(ids[lo:hi], dist[lo:hi], strict=True)]
            hits.sort(key=lambda h: (h[1], h[0]))
            out.append(hits)
        return out


def build_index(
    codes: NDArray[np.uint8], max_distance: int, *, kind: IndexKind = "auto",
    multihash_min: int = DEFAULT_MULTIHASH_MIN,
) -> HashIndex:
    """The index for ``codes``: :class:`BruteForceHashIndex` for ``brute``, FAISS otherwise."""
    if kind == "brute":
        return BruteForceHashIndex(codes, max_distance)
    return FaissHashIndex(codes, max_distance, kind=kind, multihash_min=multihash_min)
