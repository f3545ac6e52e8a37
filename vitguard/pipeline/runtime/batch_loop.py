"""The batch loop: forward passes one after another, each handed to the back half.

When the model is idle it takes what the ready queue holds now (:mod:`~vitguard.pipeline.runtime.batcher`:
adaptive, requests first within bounds), runs ONE forward pass, answers the pass's ``/classify`` requests at
once on a task of their own (no side effects: they need not wait for the stream's index and publish), and
queues the stream's part for the back half. While the back half's queue is full (Milvus holds, publishing
fails), it keeps running passes of requests only: requests are answered and the stream is held back, as the
failure policy wants.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from vitguard.model.types import Classifier
from vitguard.pipeline.runtime.batcher import Group, ReadyQueue, Work
from vitguard.pipeline.runtime.completion import Completer
from vitguard.pipeline.stages.infer import infer_pass
from vitguard.policies.live import PolicyHolder

__all__ = ["BatchLoop"]

_log = logging.getLogger(__name__)


class BatchLoop:
    """Args:
        ready: the ready queue.
        classifier, pool: the model and the thread its forward passes run on.
        policies: the policy document in force (read once per pass: a pass finishes on the one it began with).
        worst_frames: the worst frames an animation's or a video's verdict lists.
        back_half: the queue the stream's part of each pass goes to.
        completer: answers the requests of a pass (bank matches; no side effects).
        settle: hands a request its verdict or error.
    """

    def __init__(self, ready: ReadyQueue, classifier: Classifier, pool: Executor, *, policies: PolicyHolder,
                 worst_frames: int, back_half: asyncio.Queue[Group], completer: Completer,
                 settle: Callable[..., None]) -> None:
        self.ready = ready
        self.classifier = classifier
        self.pool = pool
        self.policies = policies
        self.worst_frames = worst_frames
        self.back_half = back_half
        self.completer = completer
        self._settle = settle
        self.answering: set[asyncio.Task[None]] = set()
        """Tasks answering the /classify requests of a pass."""

    async def run(self) -> None:
        """Forward passes, one after another; the next group fills while one runs."""
        while True:
            stream = await self._pass(await self.ready.next_group())
            if stream.work:  # empty when the pass only held requests, or frames of items not yet complete
                await self._hand_over(stream)

    async def _pass(self, taken: list[Work]) -> Group:
        """One forward pass; its requests answered now; returns the stream's part, for the back half."""
        group = await infer_pass(taken, self.classifier, self.pool, self.policies.book,
                                 worst_frames=self.worst_frames)
        requests, stream = group.split_requests()
        if requests.work:
            task = asyncio.create_task(self._answer_requests(requests))
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)
        return stream

    async def _hand_over(self, stream: Group) -> None:
        """Queue ``stream`` for the back half; while its queue is full, run passes of requests only."""
        if not self.back_half.full():
            self.back_half.put_nowait(stream)
            return
        put = asyncio.ensure_future(self.back_half.put(stream))
        want: asyncio.Future[list[Work]] | None = None
        try:
            while not put.done():
                want = asyncio.ensure_future(self.ready.next_requests())
                await asyncio.wait({put, want}, return_when=asyncio.FIRST_COMPLETED)
                if want.done():  # took requests (even if the put went through meanwhile): never drop them
                    taken, want = want.result(), None
                    if (await self._pass(taken)).work:  # unreachable: a requests-only pass has no stream part
                        raise RuntimeError("a requests-only pass produced stream work")
        finally:
            put.cancel()
            if want is not None:
                want.cancel()

    async def _answer_requests(self, group: Group) -> None:
        """The /classify requests of a pass: bank matches, then each future gets its verdict or error."""
        outcomes: list[tuple[Any, Any]]
        try:
            outcomes = await self.completer.complete(group)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.exception("answering %d /classify requests failed unexpectedly", len(group.work))
            outcomes = await self.completer.complete_failed(group, exc)
        for work, outcome in outcomes:
            self._settle(work.future, outcome, slot=False)
