"""Where the retro-hunter keeps the PDQ hashes of items judged safe, so that a new bank entry can be hunted.

Decided (issue 31, item 4): the hashes live in the retro-hunter's memory, folded from the verdicts topic (every
verdict carries its item's PDQ hash and quality), not in Milvus: Milvus Lite has no binary vectors, and a Milvus
server's binary collection would be a second store to keep consistent with the first. A hunt of one hash is an
exact scan with popcounts in numpy (~32 bytes an item: 1 M items are 32 MB and one scan takes tens of
milliseconds here, ``bench/hash_hunt.py``), so no index is needed; the catalog is rebuilt at start-up by reading
the verdicts topic from its beginning, so it holds what the topic's retention holds (state that to operators:
a verdict older than the retention is not hunted by hash).

Pure apart from numpy: :meth:`HashCatalog.add` takes a verdict, :meth:`HashCatalog.hunt` answers a hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from vitguard.banks.signal import PDQ_BYTES
from vitguard.schemas.events import Verdict

__all__ = ["CatalogItem", "HashCatalog"]

_INITIAL_ROWS = 1024


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """What a hash hunt reports of a stored item (from its verdict)."""

    content_id: str
    tenant: str
    unsafe_score: float
    model_version: str
    collection: str | None
    uploaded_at: datetime
    judged_at: datetime


class HashCatalog:
    """The PDQ hashes of the items whose latest verdict is ``safe`` (from the model or a negative bank), with a
    hash of at least ``quality_threshold``; an item's later unsafe verdict or a confirmed review removes it."""

    def __init__(self, quality_threshold: int = 50) -> None:
        self.quality_threshold = quality_threshold
        self._codes = np.zeros((_INITIAL_ROWS, PDQ_BYTES), dtype=np.uint8)
        self._alive = np.zeros(_INITIAL_ROWS, dtype=bool)
        self._items: list[CatalogItem | None] = []
        self._row: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._row)

    def add(self, verdict: Verdict) -> bool:
        """Fold one verdict in: a safe one with a good hash is (re)stored, anything else removes its item.
        Whether the catalog holds the item afterwards. A replay's verdicts are a what-if: ignored."""
        if verdict.replay_id is not None:
            return verdict.content_id in self._row
        self.remove(verdict.content_id)
        quality = verdict.pdq_quality if verdict.pdq_quality is not None else -1
        if verdict.label != "safe" or verdict.pdq_hash is None or quality < self.quality_threshold:
            return False
        row = len(self._items)
        if row == len(self._codes):
            self._grow()
        self._codes[row] = np.frombuffer(bytes.fromhex(verdict.pdq_hash), dtype=np.uint8)
        self._alive[row] = True
        self._items.append(CatalogItem(
            verdict.content_id, verdict.tenant, verdict.unsafe_score, verdict.model_version, verdict.collection,
            verdict.created_at or verdict.processed_at, verdict.processed_at))
        self._row[verdict.content_id] = row
        if len(self._items) > 2 * len(self._row) + _INITIAL_ROWS:
            self._compact()
        return True

    def remove(self, content_id: str) -> None:
        """The item is no longer safe (a later verdict, a reviewer's confirmation)."""
        row = self._row.pop(content_id, None)
        if row is not None:
            self._alive[row] = False
            self._items[row] = None

    def hunt(self, pdq_hex: str, max_distance: int) -> list[tuple[CatalogItem, int]]:
        """The stored items within ``max_distance`` bits of ``pdq_hex``, closest first (then by content id)."""
        query = np.frombuffer(bytes.fromhex(pdq_hex), dtype=np.uint8)
        n = len(self._items)
        if n == 0:
            return []
        distances = np.bitwise_count(self._codes[:n] ^ query).sum(axis=1, dtype=np.int64)
        rows = np.nonzero((distances <= max_distance) & self._alive[:n])[0]
        found = [(self._items[r], int(distances[r])) for r in rows]
        return sorted(((item, d) for item, d in found if item is not None), key=lambda f: (f[1], f[0].content_id))

    def _grow(self) -> None:
        size = 2 * len(self._codes)
        codes = np.zeros((size, PDQ_BYTES), dtype=np.uint8)
        alive = np.zeros(size, dtype=bool)
        codes[: len(self._codes)] = self._codes
        alive[: len(self._alive)] = self._alive
        self._codes, self._alive = codes, alive

    def _compact(self) -> None:
        """Drop the rows of removed items (they pile up when items are re-judged often)."""
        keep = [r for r in range(len(self._items)) if self._alive[r]]
        self._codes[: len(keep)] = self._codes[keep]
        self._alive[:] = False
        self._alive[: len(keep)] = True
        self._items = [self._items[r] for r in keep]
        self._row = {item.content_id: i for i, item in enumerate(self._items) if item is not None}

