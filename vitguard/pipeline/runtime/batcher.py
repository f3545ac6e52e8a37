"""The ready queue and the batching rule: what the next forward pass holds.

Adaptive, like Triton's dynamic batcher: the batch loop asks for the next group as soon as the model is
free; it gets whatever is decoded by then, up to ``max_size`` images, without waiting to fill it. While a pass
runs, the next group fills. ``max_wait_s`` > 0 lets an idle model linger that long at most while fewer than
``max_size`` images are ready and more are still being fetched or decoded: an upper bound, never a floor.

Order within a partition, with a bound: a decoded image waits for earlier events of its partition that are
still being fetched or decoded, at most ``order_wait_s``; so verdicts (and which of two copies founds a
cluster) follow the partition's order, and a stalled fetch adds at most ``order_wait_s`` to its neighbours'
latency. A group is taken in submission order.

Fair sharing with ``POST /classify``: requests go ahead of stream images. While stream images wait, a pass
that carries requests is a short one, ``request_max_size`` images at most, requests first but at most half of
it, stream images in the rest: a request waits for the pass in progress and a short one, not a full batch, and
the stream keeps at least half of every pass, so neither starves the other. With no stream image waiting,
requests fill whole passes. Dead letters and cache hits need no inference; they ride along with the next group
(up to ``4 * max_size`` of them), so they are published without delay.

Fair sharing with animations and video: a batch holds at most ``max_size`` frames (a still image is one). The
queue is served in turns: on each turn every eligible entry, in queue order, takes at most ``per_item`` of its
frames; turns repeat while the batch has room. An entry with frames left goes back to the end of the queue.
So a still image queued behind a long video waits for at most ``per_item`` of the video's frames, never for
the whole video, and a video alone still fills whole batches. An item is complete (reduced, then answered)
after the pass that took its last frame, so a long video may be answered after later events of its
partition; offsets are still committed in partition order by the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitguard.model.types import Prediction
from vitguard.pipeline.results import DeadLettered, Decoded, DecodedFrames, Predicted, Ready

__all__ = ["FrameProgress", "Group", "ReadyQueue", "Work"]


@dataclass
class FrameProgress:
    """How far a multi-frame entry is through the forward passes: the batcher hands out frames
    ``[start, stop)`` for the next pass; the infer stage appends their predictions."""

    total: int
    start: int = 0
    stop: int = 0
    predictions: list[Prediction | BaseException] = field(default_factory=list)
    infer_ms: float = 0.0
    """This item's share of the passes so far."""
    wait_ms: float = 0.0
    """Ready to its first pass."""

    @property
    def left(self) -> int:
        """Frames not yet handed to a pass."""
        return self.total - self.stop

    @property
    def complete(self) -> bool:
        return len(self.predictions) >= self.total


@dataclass
class Work:
    """One entry of the ready queue: what the front half produced, and who waits for the answer."""

    value: Ready
    future: asyncio.Future[Any]
    request: bool = False
    """A synchronous /classify request: no index, no alerts, no publish; the future gets the verdict."""
    probe: bool = False
    """A request that wants the image's embedding too (``POST /search``): the future gets a
    :class:`~vitguard.pipeline.runtime.completion.Probed`."""
    ticket: tuple[Any, int] | None = None
    """(partition key, sequence number) from :meth:`ReadyQueue.expect`, for stream events."""
    ready_at: float = field(default_factory=time.monotonic)
    progress: FrameProgress | None = None
    """For an animation or a video: which frames the next pass takes, and the predictions so far."""

    def __post_init__(self) -> None:
        if isinstance(self.value, DecodedFrames) and self.progress is None:
            self.progress = FrameProgress(self.value.count)

    @property
    def frames_left(self) -> int:
        """Frames still to hand to a pass: 1 for a still image, 0 for what needs no inference."""
        if self.progress is not None:
            return self.progress.left
        return 1 if isinstance(self.value, Decoded) else 0


@dataclass
class Group:
    """What one forward pass covered, on its way from the batch loop to the completion loop."""

    work: list[Work]
    predicted: dict[int, Predicted | DeadLettered] = field(default_factory=dict)
    """Index in ``work`` -> the forward pass's answer, for the decoded entries."""
    stage_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def merged(cls, groups: Sequence[Group]) -> Group:
        """One group of ``groups`` in their order (the back half of several passes done as one: one Milvus
        search and upsert, one publish round, one Redis round trip); stage times add up."""
        if len(groups) == 1:
            return groups[0]
        out = cls([])
        for g in groups:
            base = len(out.work)
            out.work.extend(g.work)
            out.predicted.update({base + i: p for i, p in g.predicted.items()})
            for stage, ms in g.stage_ms.items():
                out.stage_ms[stage] = out.stage_ms.get(stage, 0.0) + ms
        return out

    def split_requests(self) -> tuple[Group, Group]:
        """(the /classify requests, the stream entries), each with its own share of ``predicted``; the stage
        times stay with the stream's part."""
        requests, stream = Group([]), Group([], stage_ms=self.stage_ms)
        for i, w in enumerate(self.work):
            part = requests if w.request else stream
            if i in self.predicted:
                part.predicted[len(part.work)] = self.predicted[i]
            part.work.append(w)
        return requests, stream


class ReadyQueue:
    """Stream entries and /classify requests waiting for a forward pass.

    Args:
        max_size: images per forward pass, at most.
        max_wait_s: longest an idle model lingers for images still in the front half (0: never).
        in_front: how many events are still being fetched or decoded.
        order_wait_s: longest a ready event waits for earlier events of its partition.
        per_item: frames one entry takes per turn (default ``max_size``: no limit).
        request_max_size: images in a pass that carries requests while stream images wait (default, or not
            below ``max_size``: no short passes).
    """

    def __init__(
        self, max_size: int, max_wait_s: float, in_front: Callable[[], int], order_wait_s: float = 1.0,
        per_item: int | None = None, request_max_size: int | None = None,
    ) -> None:
        self.max_size = max_size
        self.request_max_size = min(max_size, max(1, request_max_size or max_size))
        self.per_item = max(1, per_item or max_size)
        self.max_wait_s = max_wait_s
        self.order_wait_s = order_wait_s
        self._in_front = in_front
        self.stream: deque[Work] = deque()
        self.requests: deque[Work] = deque()
        self._signal = asyncio.Event()
        self._request_signal = asyncio.Event()
        """Set when a request joins (:meth:`next_requests` waits on it)."""
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
            if w.request:
                self._request_signal.set()
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

    async def next_requests(self) -> list[Work]:
        """Wait for requests and take a pass of requests only (up to ``max_size`` images), leaving the stream
        queued: for the batch loop while the stream's groups cannot move on (the completion stage holds)."""
        while not any(w.frames_left for w in self.requests):
            self._request_signal.clear()
            await self._request_signal.wait()
        taken: list[Work] = []
        _, self.requests = self._fill(self.requests, taken, self.max_size, None, time.monotonic())
        return taken

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
        """The batching rule, applied to what is queued now (no waiting).

        A multi-frame entry in the result takes frames ``progress.start:progress.stop`` in this pass; when it
        has frames left it is also back in the queue.
        """
        now = time.monotonic()
        taken: list[Work] = []
        stream_waits = any(w.frames_left for w in self.stream)
        short = stream_waits and any(w.frames_left for w in self.requests)
        size = self.request_max_size if short else self.max_size
        request_share = max(1, size // 2) if stream_waits else size
        frames, self.requests = self._fill(self.requests, taken, request_share, None, now)
        used, self.stream = self._fill(self.stream, taken, size - frames, 4 * self.max_size, now)
        _, self.requests = self._fill(self.requests, taken, size - frames - used, None, now)
        if not self.stream and not self.requests:
            self._signal.clear()
        taken.sort(key=lambda w: (w.request is False, w.ticket[1] if w.ticket else -1))
        return taken

    def _fill(
        self, queue: deque[Work], taken: list[Work], budget: int, riders: int | None, now: float
    ) -> tuple[int, deque[Work]]:
        """Take up to ``budget`` frames from ``queue`` in turns of at most ``per_item`` per entry, and up to
        ``riders`` entries that need no inference; returns the frames taken and what stays queued."""
        used = 0
        keep: deque[Work] = deque()  # not taken, in order
        again: deque[Work] = deque()  # taken in part: more turns while there is room, then the queue's end
        for w in queue:
            left = w.frames_left
            if not self._eligible(w, now) or (left and used >= budget):
                keep.append(w)
            elif left == 0:
                if riders:
                    taken.append(w)
                    riders -= 1
                else:
                    keep.append(w)
            else:
                n = min(left, self.per_item, budget - used)
                used += n
                taken.append(w)
                if w.progress is not None:
                    w.progress.start = w.progress.stop
                    w.progress.stop += n
                    if w.progress.left:
                        again.append(w)
        turn = deque(again)
        while turn and used < budget:
            w = turn.popleft()
            assert w.progress is not None  # noqa: S101 - only multi-frame entries are taken in part
            n = min(w.progress.left, self.per_item, budget - used)
            w.progress.stop += n
            used += n
            if w.progress.left:
                turn.append(w)
        keep.extend(w for w in again if w.frames_left)
        return used, keep

    def _decoded(self) -> int:
        return sum(w.frames_left for w in self.stream) + sum(w.frames_left for w in self.requests)

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
