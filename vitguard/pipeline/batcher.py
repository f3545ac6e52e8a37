"""The ready queue and the batching rule: what the next forward pass holds.

Adaptive, like Triton's dynamic batcher: the batch loop asks for the next group as soon as the model is
free; it gets whatever is decoded by then, up to ``max_size`` images, without waiting to fill it. While a pass
runs, the next group fills. ``max_wait_s`` > 0 lets an idle model linger that long at most while fewer than
``max_size`` images are ready and more are still being fetched or decoded: an upper bound, never a floor.

Fair sharing with ``POST /classify``: requests go ahead of stream images, but take at most half of a batch
while stream images wait, so neither starves the other. Dead letters and cache hits need no inference; they
ride along with the next group (up to ``4 * max_size`` of them), so they are published without delay.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """

    def __init__(self, max_size: int, max_wait_s: float, in_front: Callable[[], int]) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._in_front = in_front
        self.stream: deque[Work] = deque()
        self.requests: deque[Work] = deque()
        self._signal = asyncio.Event()

    def put(self, work: Work) -> None:
        (self.requests if work.request else self.stream).append(work)
        self._signal.set()

    def put_many(self, works: list[Work]) -> None:
        for w in works:
            (self.requests if w.request else self.stream).append(w)
        self._signal.set()

    async def next_group(self) -> list[Work]:
        """Wait until something is ready, linger if asked to, and take the next group (never empty)."""
        while True:
            await self._signal.wait()
            await self._linger()
            taken = self.take()
            if taken:
                return taken

    def take(self) -> list[Work]:
        """The batching rule, applied to what is queued now (no waiting)."""
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
            if isinstance(w.value, Decoded):
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
        self.stream.extendleft(reversed(keep))
        if not self.stream and not self.requests:
            self._signal.clear()
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
