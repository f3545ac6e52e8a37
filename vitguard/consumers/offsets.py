"""Commit bookkeeping the agent owns: an offset becomes committable only in order, once it is answered.

Faust commits the offsets of acknowledged messages, and it is supposed to stop at a gap (an unacked message
before an acked one). It skips that check when a group has no committed offset yet (None or 0), so an
abandoned message could be committed past. :class:`OffsetTracker` does not rely on it: per partition it acks
(through ``ack``) only the longest prefix of answered events, in offset order. An event that will never be
answered (abandoned on shutdown, or failed by a fatal error) blocks its partition's prefix for good, so
nothing after it is ever acked by this process; the next owner of the partition gets it again.

Each message is ``incref``-ed by the agent when it is taken, so Faust's own automatic ack (when the stream
moves on) never makes it committable; only the ack issued here does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    state: str = "pending"  # pending | done | failed


class OffsetTracker:
    """Per-partition queues of taken events; acks each partition's answered prefix, in order.

    Args:
        ack: called with each event whose offset may now be committed (in offset order per partition).
    """

    def __init__(self, ack: Callable[[Any], object]) -> None:
        self._ack = ack
        self._queues: dict[Any, deque[_Entry]] = {}
        self.acked = 0

    def add(self, event: Any) -> _Entry:
        entry = _Entry(event)
        self._queues.setdefault(event.message.tp, deque()).append(entry)
        return entry

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
        for queue in self._queues.values():
            for entry in queue:
                if entry.state == "pending":
                    self.fail(entry)
                    count += 1
        return count

    @property
    def unanswered(self) -> int:
        return sum(1 for q in self._queues.values() for e in q if e.state == "pending")

    def _release(self, tp: Any) -> None:
        queue = self._queues.get(tp)
        while queue and queue[0].state == "done":
            self._ack(queue.popleft().event)
            self.acked += 1
