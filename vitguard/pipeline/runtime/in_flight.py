"""The events and ``/classify`` requests in flight: their futures, the stream's slots, and how each is settled.

A stream event takes a slot when it is submitted (``submit`` waits while ``max_in_flight`` are taken: the
agent's backpressure) and gives it back when it is answered: its future resolves with its
:data:`~vitguard.pipeline.results.ItemResult`, the front half's redelivery guard learns it, and only then may
the agent commit its offset. A request takes no slot. A fatal error fails every future at once: nothing is
answered or committed after it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vitguard import metrics
from vitguard.errors import InputError
from vitguard.health import HealthState
from vitguard.pipeline.results import Answered, DeadLettered, ItemResult
from vitguard.pipeline.runtime.completion import Outcome
from vitguard.pipeline.runtime.front import FrontHalf

__all__ = ["InFlight"]


class InFlight:
    """Futures of the stream events and the /classify requests in flight (``health`` keeps the count of each)."""

    def __init__(self, health: HealthState, front: FrontHalf, max_in_flight: int) -> None:
        self.health = health
        self.front = front
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: set[asyncio.Future[Any]] = set()
        self._requests: set[asyncio.Future[Any]] = set()
        """The /classify requests among them (``health`` keeps their own progress clock)."""

    def __len__(self) -> int:
        return len(self._pending)

    async def admit(self) -> asyncio.Future[ItemResult]:
        """A stream event's future, once a slot is free."""
        await self._slots.acquire()
        fut: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        self.track(fut)
        metrics.EVENTS_CONSUMED.inc()
        return fut

    def track(self, fut: asyncio.Future[Any], *, request: bool = False) -> None:
        self._pending.add(fut)
        if request:
            self._requests.add(fut)
        self._count()

    def settle(self, fut: asyncio.Future[Any], outcome: Outcome, *, slot: bool = True) -> None:
        """Hand an outcome to whoever waits for it; a stream event moves from in flight to answered."""
        if slot and isinstance(outcome, Answered | DeadLettered):
            self.front.settled(outcome.raw, answered=isinstance(outcome, Answered))
        if not fut.done():
            if isinstance(outcome, InputError):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
        request = fut in self._requests
        if fut in self._pending:
            self._pending.discard(fut)
            self._requests.discard(fut)
            if slot:
                self._slots.release()
        self._count()
        self.health.progressed(request=request)

    def fail_all(self, exc: BaseException) -> None:
        """Every future still pending gets ``exc`` (a fatal error)."""
        for fut in list(self._pending):
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        self._requests.clear()

    def cancel_all(self) -> None:
        for fut in list(self._pending):
            fut.cancel()

    def _count(self) -> None:
        self.health.waiting(len(self._pending) - len(self._requests), len(self._requests))
        metrics.IN_FLIGHT.set(len(self._pending))
