"""Where the consumer reads, repaired: Faust's consumer positions after rebalances, pauses and seeks.

Each function answers an upstream defect listed in :mod:`vitguard.kafka.faust`; the agent
(:mod:`vitguard.consumers.app`) calls them through :class:`Runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from vitguard import metrics
from vitguard.kafka.faust.consumer import SeekTimeoutError
from vitguard.kafka.faust.offsets import OffsetTracker

__all__ = [
    "TAIL_CHECK_S",
    "Runtime",
    "accept_gap",
    "check_tails",
    "expect_from_committed",
    "input_positions",
    "pause",
    "refetch",
    "rewind_to_committed",
]

_log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What the repairs need of the worker's runtime (:class:`vitguard.consumers.app.WorkerRuntime`)."""

    seek: Callable[[Any, int], Awaitable[Any]] | None
    positions: Callable[[], Awaitable[dict[Any, int]]] | None
    idle_since: float | None

    def fatal(self, exc: BaseException) -> None: ...


async def accept_gap(consumer: Any, tp: Any, start: int, end: int) -> None:
    accept = getattr(consumer, "accept_gap", None)
    if accept is not None:
        await accept(tp, start, end)


async def input_positions(consumer: Any, topic: str) -> dict[Any, int]:
    positions: dict[Any, int] = {}
    paused = set(getattr(consumer, "_paused_partitions", ()) or ())
    for tp in consumer.assignment():
        if tp.topic != topic or tp in paused:
            continue
        try:
            pos = await consumer.position(tp)
        except Exception as exc:  # not assigned any more (a rebalance in progress): nothing to check
            _log.debug("no fetch position for %s: %s", tp, exc)
            continue
        if pos is not None:
            positions[tp] = int(pos)
    return positions


async def _start_offsets(consumer: Any, assigned: set[Any]) -> dict[Any, int]:
    """Each partition's committed offset, or its beginning where nothing is committed (read, no seek)."""
    committed = await consumer.committed_offsets(assigned)
    positions = {tp: int(committed[tp]) for tp in assigned if committed.get(tp)}
    missing = [tp for tp in assigned if tp not in positions]
    if missing:
        earliest = await consumer.earliest_offsets(*missing)
        positions.update({tp: int(earliest.get(tp) or 0) for tp in missing})
    return positions


async def expect_from_committed(consumer: Any, assigned: set[Any],
                                on_expect: Callable[[Any, int], object]) -> dict[Any, int]:
    """After a rebalance, tell the offset tracker where each assigned input partition starts; no seek.

    At a generation change Faust drops the records it had fetched but not yet delivered, and it does not
    always seek a partition it keeps (never one with no committed offset): the fetch position can then stand
    past those records. The tracker, told the committed offset, takes the first delivery past it (or past
    what it was delivered already) for a hole and re-fetches from there; a tail with nothing after it is
    found by the tail check. A partition whose delivery starts where it should is not sought at all: an
    unconditional rewind here delivered every record a second time at start-up. Returns the offsets.
    """
    if not assigned:
        return {}
    positions = await _start_offsets(consumer, assigned)
    for tp, offset in positions.items():
        on_expect(tp, offset)
    _log.info("partitions assigned; input partitions start at their committed offsets: %s",
              {str(tp): offset for tp, offset in sorted(positions.items(), key=str)})
    return positions


async def rewind_to_committed(consumer: Any, assigned: set[Any],
                              on_rewound: Callable[[Any, int], object] | None = None) -> dict[Any, int]:
    """Put every given input partition at its committed offset (its beginning if none), and say so.

    Used when consumption resumes after a Milvus hold: records fetched but not delivered when the pause came
    may have been dropped with the fetch position already past them. Reading again from the committed offset
    redelivers them; what was answered already is skipped by the redelivery guard. Returns the new positions.
    """
    if not assigned:
        return {}
    positions = await _start_offsets(consumer, assigned)
    for tp, offset in positions.items():
        if not await _seek(consumer.seek, tp, offset):
            continue
        if on_rewound is not None:
            on_rewound(tp, offset)
    _log.info("after the rebalance, input partitions rewound to their committed offsets: %s",
              {str(tp): offset for tp, offset in sorted(positions.items(), key=str)})
    return positions


def pause(app: Any, holding: bool) -> None:
    """Pause (or resume) every assigned partition: no fetching while Milvus holds the batch path."""
    consumer = getattr(app, "consumer", None)
    if consumer is None:
        return
    try:
        assigned = consumer.assignment()
        if holding:
            consumer.pause_partitions(assigned)
            _log.warning("consumption paused on %d partition(s) while Milvus is failing", len(assigned))
        else:
            consumer.resume_partitions(assigned)
            _log.warning("consumption resumed")
            # records fetched but not delivered when the pause came may have been dropped with the fetch
            # position already past them: read again from the committed offsets (duplicates are answered once)
            inputs = {tp for tp in assigned if tp.topic == getattr(app, "vitguard_input_topic", tp.topic)}
            runtime = getattr(app, "vitguard", None)
            asyncio.ensure_future(rewind_to_committed(
                consumer, inputs, on_rewound=runtime.rewound if runtime is not None else None))
    except Exception:  # pausing is an optimisation: the in-flight bound already holds the stream
        _log.warning("could not %s the partitions", "pause" if holding else "resume", exc_info=True)


async def _seek(seek: Callable[[Any, int], Any], tp: Any, offset: int) -> bool:
    """Seek ``tp`` to ``offset``; False, logged, when the consumer refuses because a rebalance revoked the
    partition between the decision and the seek (aiokafka's ``IllegalStateError``, or an assertion
    mid-rebalance). Its new owner starts from the committed offset, which never passes a record being
    re-fetched, so nothing is lost; stopping the worker for it would turn every rolling deploy into restarts.
    Any other failure (a consumer thread that does not carry the seek out: ``SeekTimeoutError``) raises: a
    hole that cannot be re-fetched would hold the partition's commits for good."""
    from aiokafka.errors import IllegalStateError

    try:
        await seek(tp, offset)
    except (IllegalStateError, AssertionError) as exc:
        _log.warning("%s: seek to %d refused (%s: %s); the partition is no longer ours, its next owner reads from "
                     "the committed offset", tp, offset, type(exc).__name__, exc)
        return False
    return True


async def refetch(runtime: Runtime, tp: Any, offset: int, revealed_at: int) -> None:
    metrics.OFFSET_HOLES.inc()
    _log.warning("%s: offset %d was not delivered before offset %d; re-fetching from %d (nothing past it is "
                 "committed)", tp, offset, revealed_at, offset)
    if runtime.seek is not None:
        await _seek(runtime.seek, tp, offset)


TAIL_CHECK_S = 2.0
"""How often an idle agent compares each input partition's fetch position with what it was delivered."""


async def check_tails(runtime: Runtime, tracker: OffsetTracker, interval_s: float = TAIL_CHECK_S) -> None:
    """Re-fetch records that were fetched but never delivered at the end of a partition.

    A hole in the middle of a partition is revealed by the next delivered offset (:class:`OffsetTracker`).
    Records dropped at the *end* (at a rebalance or a pause, with nothing published after them yet) reveal
    nothing: the consumer's position is past them and no later record comes. So while the agent waits for
    events, a partition whose fetch position stays ahead of the next offset it was delivered, for two checks
    in a row, is sought back to that offset, once per (delivered, position) pair. A tail that holds no records
    (a transaction marker) is therefore read once more and then left alone.
    """
    seen: dict[Any, tuple[int, int]] = {}
    probed: dict[Any, tuple[int, int]] = {}
    while True:
        await asyncio.sleep(interval_s)
        try:
            seen = await _check_tails_once(runtime, tracker, interval_s, seen, probed)
        except asyncio.CancelledError:
            raise
        except SeekTimeoutError as exc:  # the consumer thread is stuck: as in the agent loop, the worker stops
            runtime.fatal(exc)
            return
        except Exception:  # a background check must never end silently: try again on the next round
            _log.exception("checking the partitions' tails failed; next check in %.0f s", interval_s)
            seen = {}


async def _check_tails_once(runtime: Runtime, tracker: OffsetTracker, interval_s: float,
                            seen: dict[Any, tuple[int, int]],
                            probed: dict[Any, tuple[int, int]]) -> dict[Any, tuple[int, int]]:
    """One round of :func:`check_tails`; returns the (delivered, position) pairs seen."""
    idle = runtime.idle_since
    if runtime.positions is None or runtime.seek is None or idle is None or time.monotonic() - idle < interval_s:
        return {}
    try:
        positions = await runtime.positions()
    except Exception as exc:
        _log.debug("fetch positions unavailable: %s", exc)
        return seen
    if runtime.idle_since is None:  # an event arrived meanwhile
        return seen
    now_seen: dict[Any, tuple[int, int]] = {}
    for tp, position in positions.items():
        expected = tracker.expected(tp)
        if expected is None or position <= expected:
            continue
        pair = (expected, position)
        now_seen[tp] = pair
        if seen.get(tp) != pair or probed.get(tp) == pair:
            continue
        probed[tp] = pair
        metrics.OFFSET_HOLES.inc()
        _log.warning("%s: fetched up to offset %d but delivered up to %d; seeking back to %d",
                     tp, position - 1, expected - 1, expected)
        await _seek(runtime.seek, tp, expected)
    return now_seen
