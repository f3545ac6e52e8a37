"""Commit bookkeeping the agent owns: an offset becomes committable only in order, once it is answered.

Faust commits the offsets of acknowledged messages, and it is supposed to stop at a gap (an unacked message
before an acked one). It skips that check when a group has no committed offset yet (None or 0), so an
abandoned message could be committed past. :class:`OffsetTracker` does not rely on it: per partition it acks
(through ``ack``) only the longest prefix of answered events, in offset order. An event that will never be
answered (abandoned on shutdown, or failed by a fatal error) blocks its partition's prefix for good, so
nothing after it is ever acked by this process; the next owner of the partition gets it again.

Each message is ``incref``-ed by the agent when it is taken, so Faust's own automatic ack (when the stream
moves on) never makes it committable; only the ack issued here does. Faust's own gap bookkeeping is off
(:class:`~vitguard.kafka.faust.consumer.FetchWaitConsumer`): it counted the offsets it had not seen, and the
offset that revealed them, as acknowledged, so the first ack past them committed events never answered. A hole
the tracker has checked and found empty is handed to Faust through ``on_gap`` instead.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["OffsetTracker", "abandon"]


def abandon(events: Any) -> None:
    """Keep these events' offsets out of every commit: they were not answered.

    A message flagged ``acked`` is ignored by any later ack (so its offset is never marked committable)
    and is dropped from the consumer's unacked set (so shutdown does not wait for it). This relies on
    ``faust.types.tuples.Message.acked``, which faust-streaming has had since its first release.
    """
    for event in events:
        event.message.acked = True


@dataclass
class _Entry:
    event: Any
    offset: int
    seq: int
    state: str = "pending"  # pending | done | failed


def _entry_order(entry: _Entry) -> tuple[int, int]:
    return entry.offset, entry.seq


class _Probe(NamedTuple):
    """A seek back to a hole, outstanding: the re-fetch delivers from ``start`` up to ``revealed`` again."""

    start: int
    """The hole's start."""
    revealed: int
    """The offset whose delivery revealed the hole."""


_NO_RANGES: tuple[tuple[int, int], ...] = ()


@dataclass
class _Partition:
    entries: list[_Entry] = field(default_factory=list)
    """Taken and not yet acked, ordered by (offset, arrival)."""
    holes: list[tuple[int, int]] = field(default_factory=list)
    """Offset ranges [start, end) skipped by the delivery and not yet seen: nothing at or past them is acked."""
    expected: int | None = None
    """The offset after the highest one delivered."""
    probing: _Probe | None = None
    """While a seek back to a hole is outstanding."""

    def refetched(self, offset: int) -> Sequence[tuple[int, int]]:
        """Account for ``offset`` if it is a record of the outstanding re-fetch; returns the ranges [start, end)
        it shows empty: what the delivery skipped before it is not there (compaction, transaction markers)."""
        probe = self.probing
        if probe is None or not probe.start <= offset <= probe.revealed:
            return _NO_RANGES
        empty = [(s, min(e, offset)) for s, e in self.holes if s < offset]
        filling = any(s <= offset < e for s, e in self.holes)
        self.holes = [(max(s, offset), e) for s, e in self.holes if e > offset]
        # a record that fills a hole: the re-fetch goes on through the rest, no second seek
        self.probing = _Probe(offset + 1, probe.revealed) if filling else None
        return empty

    def fill(self, offset: int) -> None:
        """``offset`` was delivered: it is no longer part of a hole."""
        holes: list[tuple[int, int]] = []
        for s, e in self.holes:
            if s <= offset < e:
                holes.extend(r for r in ((s, offset), (offset + 1, e)) if r[0] < r[1])
            else:
                holes.append((s, e))
        self.holes = holes

    def settle_probe(self) -> None:
        """Forget the outstanding re-fetch once it has filled every hole it was for."""
        if self.probing is not None and not any(s <= self.probing.revealed for s, _ in self.holes):
            self.probing = None

    def probe(self, revealed: int) -> int | None:
        """Start a seek back to the first hole, unless one is outstanding; returns the offset to seek to.

        ``revealed``: the highest offset delivered; the re-fetch reads up to it again."""
        if self.probing is not None or not self.holes:
            return None
        start = min(s for s, _ in self.holes)
        self.probing = _Probe(start, revealed)
        return start


class OffsetTracker:
    """Per-partition bookkeeping of taken events; acks each partition's answered prefix, in offset order.

    A delivered offset beyond the next expected one is a hole: records the consumer skipped (dropped at a
    rebalance or a pause) or that do not exist (compaction, transaction markers). Nothing past a hole is
    acked; :meth:`add` returns the offset to seek back to, once per hole. The first record delivered at or
    after the hole then says which it was: what it skipped does not exist. So the tracker never relies on
    Faust's gap handling, which counts a hole as acknowledged.

    A rewind (:meth:`rewound`) restarts a partition's delivery at a known offset: everything from there on is
    read again, so its holes are forgotten and the next delivered offset is checked against that position.

    Args:
        ack: called with each event whose offset may now be committed (in offset order per partition).
        on_gap: called with (partition, start, end) when [start, end) was re-fetched and holds no records,
            so that the consumer's commits may pass over it.
    """

    def __init__(self, ack: Callable[[Any], object],
                 on_gap: Callable[[Any, int, int], object] | None = None) -> None:
        self._ack = ack
        self._on_gap = on_gap
        self._parts: dict[Any, _Partition] = {}
        self._seq = itertools.count()
        self.acked = 0
        self.holes_seen = 0

    def add(self, event: Any) -> tuple[_Entry, int | None]:
        """Register a taken event; returns its entry and, when it reveals a hole, the offset to seek back to."""
        offset = int(event.message.offset)
        tp = event.message.tp
        part = self._parts.setdefault(tp, _Partition())
        empty = part.refetched(offset)
        if self._on_gap is not None:
            for start, end in empty:
                self._on_gap(tp, start, end)
        part.fill(offset)
        part.settle_probe()
        expected = part.expected
        if expected is not None and offset > expected:
            part.holes.append((expected, offset))
            self.holes_seen += 1
        part.expected = offset + 1 if expected is None else max(expected, offset + 1)
        seek = part.probe(revealed=part.expected - 1)
        entry = _Entry(event, offset, next(self._seq))
        bisect.insort(part.entries, entry, key=_entry_order)
        return entry, seek

    def rewound(self, tp: Any, offset: int) -> None:
        """``tp``'s fetch position was moved to ``offset``: every record from there on is delivered again."""
        part = self._parts.setdefault(tp, _Partition())
        part.expected = offset
        part.holes = []
        part.probing = None

    def expect(self, tp: Any, offset: int) -> None:
        """``tp`` was (re)assigned and its fetch starts at its committed offset ``offset``, with no seek.

        Offsets below ``offset`` are answered (committed). A partition this process has not been delivered up
        to ``offset`` (new to it, or committed further by another worker since) expects ``offset`` next, so a
        first delivery past it is a hole and is re-fetched. One delivered further keeps its own bookkeeping:
        a record delivered again below it is a redelivery, a jump past it still a hole.
        """
        part = self._parts.get(tp)
        if part is None or part.expected is None or part.expected < offset:
            self.rewound(tp, offset)

    def expected(self, tp: Any) -> int | None:
        """The offset the next new record of ``tp`` should have (None before the first delivery or rewind)."""
        part = self._parts.get(tp)
        return None if part is None else part.expected

    def done(self, entry: _Entry) -> None:
        """``entry`` was answered (its outputs are acknowledged)."""
        if entry.state == "pending":
            entry.state = "done"
        self._release(entry.event.message.tp)

    def fail(self, entry: _Entry) -> None:
        """``entry`` will never be answered by this process: its partition acks nothing from here on."""
        entry.state = "failed"
        abandon([entry.event])

    def abandon_all(self) -> int:
        """Shutting down: every unanswered event is abandoned. Returns how many."""
        count = 0
        for part in self._parts.values():
            for entry in part.entries:
                if entry.state == "pending":
                    self.fail(entry)
                    count += 1
        return count

    @property
    def unanswered(self) -> int:
        return sum(1 for p in self._parts.values() for e in p.entries if e.state == "pending")

    def _release(self, tp: Any) -> None:
        part = self._parts.get(tp)
        if part is None:
            return
        first_hole = min((s for s, _ in part.holes), default=None)
        while part.entries and part.entries[0].state == "done" and (
            first_hole is None or part.entries[0].offset < first_hole
        ):
            self._ack(part.entries.pop(0).event)
            self.acked += 1
