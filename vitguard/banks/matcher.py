"""Matching a batch of PDQ hashes against every enabled bank in one call.

:func:`build_snapshot` turns a :class:`~vitguard.banks.state.BankState` into an immutable
:class:`BankSnapshot` (entries, their packed hashes, one :class:`~vitguard.banks.index.HashIndex`), off the
hot path. :class:`BankMatcher` holds the current snapshot, swaps in a new one atomically (one attribute
assignment; a batch in flight keeps the snapshot it started with) and answers
:meth:`BankMatcher.match_batch`, with the flood guard applied.

The index is searched at the largest match distance of any enabled bank; each hit is then kept only when
it is within its own bank's distance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vitguard.banks.flood import FloodGuard, FloodRule
from vitguard.banks.index import DEFAULT_MULTIHASH_MIN, HashIndex, IndexKind, build_index
from vitguard.banks.models import Bank
from vitguard.banks.signal import PDQ_BYTES, PDQ_DEFAULT_QUALITY_THRESHOLD, pack_hashes
from vitguard.banks.state import BankState
from vitguard.schemas.events import BankMatch

__all__ = ["MAX_SEARCH_DISTANCE", "BankMatcher", "BankSnapshot", "build_snapshot"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankSnapshot:
    """The enabled banks at one version of the banks topic, indexed."""

    banks: dict[str, Bank]
    entry_banks: tuple[str, ...]
    entry_ids: tuple[str, ...]
    index: HashIndex
    version: int = 0
    built_at: float = field(default_factory=time.time)
    build_s: float = 0.0

    def __len__(self) -> int:
        return len(self.entry_ids)

    @classmethod
    def empty(cls) -> BankSnapshot:
        return cls({}, (), (), build_index(np.zeros((0, PDQ_BYTES), np.uint8), 0, kind="brute"))


MAX_SEARCH_DISTANCE = 64
"""The widest PDQ search (bits): PDQ's own recommended threshold is 31; two unrelated photos are about 128
apart, so past 64 a match says little and the hits grow with the bank."""


def build_snapshot(
    state: BankState, *, kind: IndexKind = "auto", multihash_min: int = DEFAULT_MULTIHASH_MIN
) -> BankSnapshot:
    """Index every entry of every enabled bank in ``state`` (entries of unknown banks are left out)."""
    started = time.perf_counter()
    banks = {name: b for name, b in state.banks.items() if b.enabled}
    rows = sorted((b, e.entry_id, e.signal) for (b, _), e in state.entries.items() if b in banks)
    # the search radius is the widest bank's that holds entries (an empty bank widens nothing), at most
    # MAX_SEARCH_DISTANCE: at 128 half of a bank is "near" any hash and one search returned millions of hits
    wanted = max((banks[b].match_distance for b in {b for b, _, _ in rows}), default=0)
    if wanted > MAX_SEARCH_DISTANCE:
        _log.warning("banks with match_distance above %d are matched at %d (a wider search returns much of "
                     "the bank for any hash)", MAX_SEARCH_DISTANCE, MAX_SEARCH_DISTANCE)
    max_distance = min(wanted, MAX_SEARCH_DISTANCE)
    codes = pack_hashes([s for _, _, s in rows])
    index = build_index(codes, max_distance, kind=kind, multihash_min=multihash_min)
    return BankSnapshot(
        banks=banks,
        entry_banks=tuple(b for b, _, _ in rows),
        entry_ids=tuple(i for _, i, _ in rows),
        index=index,
        version=state.version,
        build_s=time.perf_counter() - started,
    )


class BankMatcher:
    """Matches batches against the current snapshot.

    Args:
        quality_threshold: hashes of lower PDQ quality are not matched.
        flood: the flood guard's rule.
        clock: seconds (the flood guard's windows); ``time.time`` by default.
    """

    def __init__(
        self,
        snapshot: BankSnapshot | None = None,
        *,
        quality_threshold: int = PDQ_DEFAULT_QUALITY_THRESHOLD,
        flood: FloodRule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.snapshot = snapshot or BankSnapshot.empty()
        self.quality_threshold = quality_threshold
        self.flood = FloodGuard(flood)
        self._clock = clock
        self._lock = threading.Lock()
        """One match at a time: the stream's and /classify's completions match from worker threads, and the
        flood guard's counts are shared."""

    def release(self, key: str, released_at: float) -> bool:
        """An operator's release of ``bank|entry_id`` from the flood guard's quarantine (see
        :meth:`~vitguard.banks.flood.FloodGuard.release`); from the bank follower's thread."""
        with self._lock:
            return self.flood.release(key, released_at)

    def update(self, snapshot: BankSnapshot) -> None:
        """Use ``snapshot`` from the next batch on."""
        self.snapshot = snapshot

    def match_batch(
        self, hashes: Sequence[str | None], qualities: Sequence[int | None], items: Sequence[int] | None = None,
        *, counts: Sequence[bool] | None = None,
    ) -> list[list[BankMatch]]:
        """The bank matches of each hash, closest first; ``[]`` for None or low-quality hashes.

        Every match of a positive bank counts towards the flood guard, once per item: ``items`` gives each
        hash's item (the frames of one video share one), so a video whose frames all match an entry counts
        once. Without ``items`` every hash is its own item. ``counts`` (per hash) says which matches count at
        all: a read-only caller (``POST /classify``, ``vitguard classify``) sees each entry's quarantine as it
        is and changes nothing, so calling the HTTP API cannot switch a bank entry off.
        """
        with self._lock:
            return self._match_batch(hashes, qualities, items, counts)

    def _match_batch(
        self, hashes: Sequence[str | None], qualities: Sequence[int | None], items: Sequence[int] | None,
        counts: Sequence[bool] | None = None,
    ) -> list[list[BankMatch]]:
        _check_lengths(hashes, qualities, items, counts)
        snap = self.snapshot
        out: list[list[BankMatch]] = [[] for _ in hashes]
        wanted = _matchable(hashes, qualities, self.quality_threshold)
        if not wanted or not len(snap):
            return out
        queries: NDArray[np.uint8] = pack_hashes([hashes[i] or "" for i in wanted])
        flood = _BatchFlood(self.flood, self._clock(), hashes, items, counts)
        for i, hits in zip(wanted, snap.index.search(queries), strict=True):
            for pos, distance in hits:
                bank = snap.banks[snap.entry_banks[pos]]
                if distance > bank.match_distance:
                    continue
                entry_id = snap.entry_ids[pos]
                negative = bank.kind == "negative"
                out[i].append(BankMatch(bank=bank.name, entry_id=entry_id, distance=distance, action=bank.action,
                                        negative=negative,
                                        quarantined=not negative and flood.quarantined(bank.name, entry_id, i)))
        return out


def _check_lengths(hashes: Sequence[str | None], qualities: Sequence[int | None], items: Sequence[int] | None,
                   counts: Sequence[bool] | None) -> None:
    """``qualities``, ``items`` and ``counts`` (when given) hold one value per hash."""
    if len(hashes) != len(qualities):
        raise ValueError(f"{len(hashes)} hashes but {len(qualities)} qualities")
    if items is not None and len(items) != len(hashes):
        raise ValueError(f"{len(hashes)} hashes but {len(items)} item ids")
    if counts is not None and len(counts) != len(hashes):
        raise ValueError(f"{len(hashes)} hashes but {len(counts)} counting flags")


def _matchable(hashes: Sequence[str | None], qualities: Sequence[int | None], threshold: int) -> list[int]:
    """The positions of the hashes worth matching: known, and of at least ``threshold`` quality."""
    return [i for i, (h, q) in enumerate(zip(hashes, qualities, strict=True))
            if h is not None and q is not None and q >= threshold]


@dataclass
class _BatchFlood:
    """The flood guard as one batch sees it: a positive match counts once per item and entry (the frames of a
    video share their item), and a read-only hash only looks at the quarantine."""

    guard: FloodGuard
    now: float
    hashes: Sequence[str | None]
    items: Sequence[int] | None
    """Each hash's item; None: each hash is its own."""
    counts: Sequence[bool] | None
    """Per hash, whether its matches count; None: all do."""
    counted: dict[tuple[int, str], bool] = field(default_factory=dict)
    """(item, entry key): whether the entry was quarantined when the item's first match of it was counted."""

    def quarantined(self, bank: str, entry_id: str, i: int) -> bool:
        """Whether a positive bank's entry matched by hash ``i`` is quarantined; counts the match unless read-only."""
        key = f"{bank}|{entry_id}"
        if self.counts is not None and not self.counts[i]:  # read-only: look, never count
            return self.guard.quarantined(key, self.now)
        seen = (self.items[i] if self.items is not None else i, key)
        if seen not in self.counted:
            self.counted[seen] = self.guard.observe(key, self.now, self.hashes[i])
        return self.counted[seen]
