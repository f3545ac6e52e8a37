"""The stream's way into the front half: records taken in batches, not one task per record.

Faust hands the agent one record per event-loop turn. Run one by one, every record paid for its own task, two
Redis round trips, a thread hop to read its file and one to decode it: each a wake-up of the event loop and,
on a busy worker, a wait for the GIL after every system call. That, not the model, capped a worker with a
fast model at ~200 images/s (``docs/line-rate.md``).

So records are collected, and the rule databases use for group commit decides when a batch goes: while fewer
than :data:`FRONT_BATCHES` batches are in the front half, what has been submitted goes now (on the next loop
turn: an idle worker waits for nothing); while they are all busy, records wait and go together when one
finishes. Under load the batches grow by themselves; at low load a batch is one record.

A batch runs :meth:`FrontHalf.screen` (parse, the in-memory guard, ONE Redis lookup), then for local
references (``data:``, ``file:``) :meth:`FrontHalf.fetch_local` (ONE thread hop, ONE verdict-cache lookup) and
:meth:`FrontHalf.decode_batch` (a few pool jobs): each value joins the ready queue as soon as its job returns.
What may take long goes on alone, so it holds nobody: a remote reference (its fetch, with its own deadline),
a video (its frames). A bug in a batch dead-letters the events of that batch it had not yet
handed on (``internal_error``), as a bug in a per-event front half always did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitguard import metrics
from vitguard.errors import FatalError
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, ItemResult, Ready, Skipped, Tagged
from vitguard.pipeline.runtime.batcher import ReadyQueue, Work
from vitguard.pipeline.runtime.front import FrontHalf
from vitguard.pipeline.types import RawMessage

__all__ = ["FRONT_BATCHES", "Entry", "StreamIntake"]

_log = logging.getLogger(__name__)

FRONT_BATCHES = 2
"""Batches in the front half at once: one being read or looked up while another decodes."""


@dataclass(eq=False)
class Entry:
    """One submitted record, until its value joins the ready queue (or it is answered in the front half)."""

    raw: RawMessage
    consumed_ms: float | None
    future: asyncio.Future[ItemResult]
    ticket: tuple[Any, int]
    handed_on: bool = field(default=False)
    """Its value went to the ready queue (or it was answered): it is out of the front half."""
    alone: bool = field(default=False)
    """It is being prepared on its own task (a remote fetch, a video), apart from its batch."""


class StreamIntake:
    """Collects submitted records and runs them through the front half in batches.

    Args:
        front: the front half's stages.
        ready: where prepared values wait for a forward pass.
        settle: answers a skipped event (every other value rides to the back half, which publishes it).
        fail: declares a fatal error (a task of the intake died with its events unanswered).
    """

    def __init__(self, front: FrontHalf, ready: ReadyQueue, *, settle: Callable[[asyncio.Future[Any], Skipped], None],
                 fail: Callable[[BaseException], None]) -> None:
        self.front = front
        self.ready = ready
        self._settle = settle
        self._fail = fail
        self._waiting: list[Entry] = []
        self._kick_due = False
        self._closed = False
        self._batches: set[asyncio.Task[None]] = set()
        self._alone: set[asyncio.Task[None]] = set()
        self.in_front = 0
        """Records submitted whose value has not yet joined the ready queue (the batcher lingers for them)."""
        self.batches = 0
        """Batches run since start (the mean batch is records submitted over this)."""

    def add(self, entry: Entry) -> None:
        """Take one record; it goes with the next batch."""
        self._waiting.append(entry)
        self.in_front += 1
        if not self._kick_due:
            self._kick_due = True
            asyncio.get_running_loop().call_soon(self._kick)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel every task of the intake and start no more (the runner is closing); returns them, to be
        awaited."""
        self._closed = True
        tasks = [*self._batches, *self._alone]
        for task in tasks:
            task.cancel()
        return tasks

    def _kick(self) -> None:
        self._kick_due = False
        while self._waiting and len(self._batches) < FRONT_BATCHES and not self._closed:
            entries, self._waiting = self._waiting, []
            self._start(self._batches, self._batch(entries))

    def _start(self, tasks: set[asyncio.Task[None]], coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(lambda t: self._done(tasks, t))

    def _done(self, tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
        """A task that died left its events unanswered: their offsets would hold their partitions' commits for
        good and their slots would never come back. That is a bug; stop loudly rather than stall quietly."""
        tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._fail(FatalError(f"a front-half task died, its events unanswered: {type(exc).__name__}: {exc}"))
        if tasks is self._batches:
            self._kick()

    async def _batch(self, entries: Sequence[Entry]) -> None:
        self.batches += 1
        metrics.FRONT_BATCH_RECORDS.observe(len(entries))
        await _prepare(self.front, entries, self._hand_on, self._alone_with)

    def _alone_with(self, entry: Entry, prepare: Awaitable[Ready]) -> None:
        async def run() -> None:
            self._hand_on([await _prepared(entry, prepare)])

        self._start(self._alone, run())

    def _hand_on(self, values: Sequence[Tagged[Entry, Ready]]) -> None:
        """Prepared values join the ready queue together. Failing that is a bug in the runner, not in the batch:
        those events are out of the front half and in no queue, so it is fatal (a stall otherwise)."""
        fresh = _first_hand_on(values)
        self.in_front -= len(fresh)
        try:
            self.enqueue(fresh)
        except Exception as exc:
            self._fail(FatalError(f"prepared events could not join the ready queue: {type(exc).__name__}: {exc}"))
            raise

    def enqueue(self, values: Sequence[Tagged[Entry, Ready]]) -> None:
        """Values join the ready queue together; a skipped event is answered here."""
        works: list[Work] = []
        for tagged in values:
            entry, value = tagged.tag, tagged.value
            if isinstance(value, Skipped):
                metrics.EVENTS_REDELIVERED.inc()
                self.ready.forget(entry.ticket)
                self._settle(entry.future, value)
            else:
                works.append(Work(value, entry.future, ticket=entry.ticket))
        if works:
            self.ready.put_many(works)

    async def prepare_all(self, entries: Sequence[Entry]) -> list[Tagged[Entry, Ready]]:
        """The same front half for a batch whose values are wanted all at once (:meth:`Runner.process`: they
        join the ready queue together, so they share forward passes); nothing joins the queue here."""
        values: list[Tagged[Entry, Ready]] = []
        alone: list[asyncio.Task[Tagged[Entry, Ready]]] = []
        try:
            await _prepare(self.front, entries, lambda batch: values.extend(_first_hand_on(batch)),
                           lambda e, p: alone.append(asyncio.ensure_future(_prepared(e, p))))
            values.extend(await asyncio.gather(*alone))
        finally:
            for task in alone:
                task.cancel()
        return values


async def _prepare(front: FrontHalf, entries: Sequence[Entry],
                   hand_on: Callable[[Sequence[Tagged[Entry, Ready]]], None],
                   alone: Callable[[Entry, Awaitable[Ready]], None], *, retry_alone: bool = True) -> None:
    """The front half of one batch (see the module's docstring): every entry is handed on, or given to ``alone``
    to be prepared on its own task. A bug in the batch is not blamed on all its events: those not yet handed on
    are prepared again one by one (``retry_alone``), so only an event that fails alone too ends as its
    ``internal_error`` dead letter."""
    def go_alone(entry: Entry, prepare: Awaitable[Ready]) -> None:
        entry.alone = True
        alone(entry, prepare)

    try:
        screened = await front.screen(entries)
        hand_on(screened.done)
        for remote in screened.remote:
            go_alone(remote.tag, front.finish(remote.value))
        if not screened.local:
            return
        local = await front.fetch_local(screened.local)
        hand_on(local.done)
        for video in local.videos:
            go_alone(video.tag, front.expand(video.value))
        async for decoded in front.decode_batch(local.images):
            hand_on(decoded)
    except asyncio.CancelledError:
        raise
    except Exception:
        if not retry_alone:
            raise
        left = [e for e in entries if not (e.handed_on or e.alone)]
        _log.exception("a front-half batch of %d records failed unexpectedly; preparing its %d unanswered "
                       "records one by one", len(entries), len(left))
        for entry in left:
            front.release(entry.raw)
            go_alone(entry, _prepare_one(front, entry))


async def _prepare_one(front: FrontHalf, entry: Entry) -> Ready:
    """One entry's front half, as a batch of one that raises what goes wrong (for :func:`_prepared`)."""
    values: list[Tagged[Entry, Ready]] = []
    later: list[Awaitable[Ready]] = []
    await _prepare(front, [entry], values.extend, lambda _, prepare: later.append(prepare), retry_alone=False)
    return await later[0] if later else values[0].value


def _first_hand_on(values: Sequence[Tagged[Entry, Ready]]) -> list[Tagged[Entry, Ready]]:
    """The values whose entries were not handed on yet, marked handed on now (an entry is handed on once)."""
    fresh = [t for t in values if not t.tag.handed_on]
    for tagged in fresh:
        tagged.tag.handed_on = True
    return fresh


async def _prepared(entry: Entry, prepare: Awaitable[Ready]) -> Tagged[Entry, Ready]:
    """An entry prepared on its own: its value, or its ``internal_error`` dead letter after a bug."""
    try:
        return Tagged(entry, await prepare)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _log.exception("preparing %s[%d]@%d failed unexpectedly", entry.raw.topic, entry.raw.partition,
                       entry.raw.offset)
        return Tagged(entry, _internal_error(entry.raw, exc))


def _internal_error(raw: RawMessage, exc: BaseException) -> DeadLettered:
    return DeadLettered(raw, dead_letter(raw, "internal_error",
                                         f"preparing the image failed: {type(exc).__name__}: {exc}"))
