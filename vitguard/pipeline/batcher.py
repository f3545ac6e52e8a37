"""The ready queue and the batching rule: what the next forward pass holds.

Adaptive, like Triton's dynamic batcher: the batch loop asks for the next group as soon as the model is
free; it gets whatever is decoded by then, up to ``max_size`` images, without waiting to fill it. While a pass
runs, the next group fills. ``max_wait_s`` > 0 lets an idle model linger that long at most while fewer than
``max_size`` images are ready and more are still being fetched or decoded: an upper bound, never a floor.

Order within a partition, with a bound: a decoded image waits for earlier events of its partition that are
still being fetched or decoded, at most ``order_wait_s``; so verdicts (and which of two copies founds a
cluster) follow the partition's order, and a stalled fetch adds at most ``order_wait_s`` to its neighbours'
latency. A group is taken in submission order.

Fair sharing with ``POST /classify``: requests go ahead of stream images, but take at most half of a batch
while stream images wait, so neither starves the other. Dead letters and cache hits need no inference; they
ride along with the next group (up to ``4 * max_size`` of them), so they are published without delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitguard.pipeline.results import DeadLettered, Decoded, Predicted, Ready

__all__ = ["Group", "ReadyQueue", "Work"]


@dataclass
class Work:
    """One entry of the ready queue: what the front half produced, and who waits for the answer."""

    value: Ready
    future: asyncio.Future[Any]
    request: bool = False
    """A synchronous /classify request: no index, no alerts, no publish; the future gets the verdict."""
    ticket: tuple[Any, int] | None = None
    """(partition key, sequence number) from :meth:`ReadyQueue.expect`, for stream events."""
    ready_at: float = field(default_factory=time.monotonic)


@dataclass
class Group:
    """What one forward pass covered, on its way from the batch loop to the completion loop."""

    work: list[Work]
    predicted: dict[int, Predicted | DeadLettered] = field(default_factory=dict)
    """Index in ``work`` -> the forward pass's answer, for the decoded entries."""
    stage_ms: dict[str, float] = field(default_factory=dict)


class ReadyQueue:
    """Stream entries and /classify requests waiting for a forward pass.

    Args:
        max_size: images per forward pass, at most.
        max_wait_s: longest an idle model lingers for images still in the front half (0: never).
        in_front: how many events are still being fetched or decoded.
        order_wait_s: longest a ready event waits for earlier events of its partition.
    """

    def __init__(
        self, max_size: int, max_wait_s: float, in_front: Callable[[], int], order_wait_s: float = 1.0
    ) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.order_wait_s = order_wait_s
        self._in_front = in_front
        self.stream: deque[Work] = deque()
        self.requests: deque[Work] = deque()
        self._signal = asyncio.Event()
        self._seq = itertools.count()
        self._pending: dict[Any, deque[int]] = {}
        """Per partition key, the sequence numbers of events still in the front half, in order."""

    def expect(self, key: Any) -> tuple[Any, int]:
        """Register an event of partition ``key`` entering the front half; returns its ticket."""
        seq = next(self._seq)
        self._pending.setdefault(key, deque()).append(seq)
        return key, seq

    def forget(self, ticket: tuple[Any, int] | None) -> None:
        """The event left the front half (ready, or answered there): later ones need not wait for it."""
        if ticket is None:
            return
        key, seq = ticket
        pending = self._pending.get(key)
        if pending is not None:
            with contextlib.suppress(ValueError):
                pending.remove(seq)
            if not pending:
                del self._pending[key]
        self._signal.set()

    def put(self, work: Work) -> None:
        self.put_many([work])

    def put_many(self, works: list[Work]) -> None:
        for w in works:
            (self.requests if w.request else self.stream).append(w)
        for w in works:
            self.forget(w.ticket)
        self._signal.set()

    async def next_group(self) -> list[Work]:
        """Wait until something is eligible, linger if asked to, and take the next group (never empty)."""
        while True:
            await self._signal.wait()
            await self._linger()
            taken = self.take()
            if taken:
                return taken
            self._signal.clear()
            wait = self._next_release()
            if wait is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._signal.wait()
                self._signal.set()

    def _eligible(self, w: Work, now: float) -> bool:
        if w.ticket is None:
            return True
        key, seq = w.ticket
        pending = self._pending.get(key)
        return not pending or pending[0] > seq or now - w.ready_at >= self.order_wait_s

    def _next_release(self) -> float | None:
        waiting = [w.ready_at for w in self.stream]
        if not waiting:
            return None
        return max(0.001, min(waiting) + self.order_wait_s - time.monotonic())

    def take(self) -> list[Work]:
        """The batching rule, applied to what is queued now (no waiting)."""
        now = time.monotonic()
        taken: list[Work] = []
        images = 0
        request_share = max(1, self.max_size // 2) if self.stream else self.max_size
        while self.requests and images < request_share:
            taken.append(self.requests.popleft())
            images += 1
        others = 0
        keep: deque[Work] = deque()
        while self.stream:
            w = self.stream.popleft()
            if not self._eligible(w, now):
                keep.append(w)
            elif isinstance(w.value, Decoded):
                if images < self.max_size:
                    taken.append(w)
                    images += 1
                else:
                    keep.append(w)
            elif others < 4 * self.max_size:
                taken.append(w)
                others += 1
            else:
                keep.append(w)
        while self.requests and images < self.max_size:
            taken.append(self.requests.popleft())
            images += 1
        self.stream = keep
        if not self.stream and not self.requests:
            self._signal.clear()
        taken.sort(key=lambda w: (w.request is False, w.ticket[1] if w.ticket else -1))
        return taken

    def _decoded(self) -> int:
        return sum(isinstance(w.value, Decoded) for w in self.stream) + len(self.requests)

    async def _linger(self) -> None:
        if self.max_wait_s <= 0:
            return
        deadline = time.perf_counter() + self.max_wait_s
        while self._decoded() < self.max_size and self._in_front() > 0:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._signal.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.005)):
                    await self._signal.wait()
        if self.stream or self.requests:
            self._signal.set()
