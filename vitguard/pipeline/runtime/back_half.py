"""The stream's back half: what happens to a group after its forward pass, in two loops that overlap.

```
queue (up to 8 passes) ─▶ completion loop: the passes queued, merged into one group ─▶ match ─▶ index (Milvus
                          search, upsert) ─▶ alert (waves)  ─▶ staged ─▶ publish loop: emit (acknowledged)
                          ─▶ remember (Redis) ─▶ each event's future resolves
```

Both loops take groups in order, so per event the order of side effects is: Milvus upsert, then publish, then
Redis, then the future (the agent commits only then); and groups are published in the order they were
indexed. The next group's Milvus calls run while this one publishes, so a Milvus server's call latency and
the broker's acknowledgements no longer add up (:mod:`~vitguard.pipeline.runtime.completion` holds the
stages). Merging the passes queued behind one pays the fixed costs (a Milvus search and upsert, a publish
round, a Redis round trip) once for all of them, whatever size the adaptive batcher made the passes.

A bug in a stage dead-letters its group (``internal_error``); a :class:`~vitguard.errors.FatalError` stops the
runner, and from then on nothing more is published: those events stay unanswered and uncommitted, for the
worker that takes the partitions over. Closing lets the group being published finish (its Redis writes
included): outputs that reached the broker while their events stayed unremembered would be answered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vitguard.errors import FatalError
from vitguard.pipeline.runtime.batcher import Group
from vitguard.pipeline.runtime.completion import Completer, Staged

__all__ = ["QUEUED_PASSES", "BackHalf"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUED_PASSES = 8
"""Forward passes that may wait for the back half (the completion loop takes them all as one group). While
Milvus holds, the queue fills and the batch loop waits: backpressure."""

_STAGED_GROUPS = 1
"""Groups indexed and waiting for the publish loop: one publishing, one waiting, one being indexed."""


class BackHalf:
    """The completion and publish loops of the stream's groups.

    Args:
        completer: the stages.
        max_images: images per forward pass (a merged group holds at most :data:`QUEUED_PASSES` times that).
        settle: hands an entry's outcome to whoever waits for it (``slot``: a stream event's in-flight slot).
        fail: declares a fatal error.
        stopped: True once the runner stopped for good or is closing (nothing more is published).
    """

    def __init__(self, completer: Completer, *, max_images: int,
                 settle: Callable[..., None], fail: Callable[[BaseException], None],
                 stopped: Callable[[], bool]) -> None:
        self.completer = completer
        self.queue: asyncio.Queue[Group] = asyncio.Queue(maxsize=QUEUED_PASSES)
        """What the batch loop hands over (its ``full()`` is the backpressure the batch loop reads)."""
        self._staged: asyncio.Queue[Staged] = asyncio.Queue(maxsize=_STAGED_GROUPS)
        self._max_group = QUEUED_PASSES * max_images
        self._settle = settle
        self._fail = fail
        self._stopped = stopped
        self._publishing: asyncio.Future[None] | None = None
        self.groups = 0
        """Groups fully processed (outputs acknowledged) since start."""

    async def finish_publishing(self, grace_s: float) -> None:
        """Wait (at most ``grace_s``) for the group being published to finish."""
        if self._publishing is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(self._publishing)

    async def completion_loop(self) -> None:
        """match, index, alert: group after group, in order; each staged group goes on to the publish loop."""
        while True:
            group = await self._next_group()

            async def failed(exc: Exception, group: Group = group) -> Staged:
                return self.completer.stage_failed(group, exc)

            staged = await self._or_dead_letters("indexing", group, self.completer.stage(group), failed)
            if staged is None:
                return
            await self._staged.put(staged)

    async def publish_loop(self) -> None:
        """emit, remember, settle: group after group in the order they were staged."""
        while True:
            staged = await self._staged.get()
            if self._stopped():
                return
            self._publishing = asyncio.ensure_future(self._publish(staged))
            try:
                await asyncio.shield(self._publishing)
            finally:
                self._publishing = None

    async def _publish(self, staged: Staged) -> None:
        outcomes = await self._or_dead_letters(
            "publishing", staged.group, self.completer.publish(staged),
            lambda exc: self.completer.complete_failed(staged.group, exc))
        if outcomes is None:
            return
        for work, outcome in outcomes:
            self._settle(work.future, outcome, slot=not work.request)
        self.groups += 1

    async def _or_dead_letters(self, doing: str, group: Group, step: Awaitable[T],
                               on_bug: Callable[[Exception], Awaitable[T]]) -> T | None:
        """``step``'s result; after a bug, ``on_bug``'s (the group dead-lettered, ``internal_error``); None after a
        fatal error, which is declared here."""
        try:
            try:
                return await step
            except FatalError:
                raise
            except Exception as exc:
                _log.exception("%s a group of %d failed unexpectedly; dead-lettering it", doing, len(group.work))
                return await on_bug(exc)
        except asyncio.CancelledError:
            raise
        except FatalError as exc:
            self._fail(exc)
            return None

    async def _next_group(self) -> Group:
        """The next pass's group, merged with those queued behind it (in order), up to the group's limit."""
        groups = [await self.queue.get()]
        size = len(groups[0].work)
        while not self.queue.empty() and size < self._max_group:
            groups.append(self.queue.get_nowait())
            size += len(groups[-1].work)
        return Group.merged(groups)
