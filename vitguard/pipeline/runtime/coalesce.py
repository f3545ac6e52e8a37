"""Group commit for point lookups: many concurrent ``get(key)`` calls share one batched lookup.

The front half asks Redis two questions per event (was this event answered? is this image's verdict cached?).
Asked one by one, each is a round trip and an event-loop turn of client code; at saturation that was a quarter
of the worker's Python time. Joining only the keys asked in one loop turn does not help: Faust hands the agent
one record per loop turn (``Stream`` awaits ``sleep(0)`` per record), so a turn holds one key.

The rule, the one databases use for group commit: with no lookup in flight, the keys asked go out on the next
loop turn (an idle worker waits for nothing); while one is in flight, newly asked keys wait and go out
together as soon as it returns. So the batch size follows the load, and no key ever waits longer than one
lookup in front of it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """Joins concurrent lookups of single keys into batched calls of ``lookup``.

    Args:
        lookup: given distinct keys, returns the values found (a key it leaves out has none). An exception it
            raises reaches every caller of that batch.
        max_keys: the most keys in one call.
        max_in_flight: calls running at once; keys asked beyond them wait for one to return.
    """

    def __init__(
        self,
        lookup: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        max_keys: int = 256,
        max_in_flight: int = 1,
    ) -> None:
        if max_keys < 1 or max_in_flight < 1:
            raise ValueError("max_keys and max_in_flight must be at least 1")
        self._lookup = lookup
        self._max_keys = max_keys
        self._max_in_flight = max_in_flight
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.lookups = 0
        """Calls of ``lookup`` that returned."""
        self.keys_looked_up = 0
        """Keys those calls covered (``keys_looked_up / lookups``: the mean batch)."""

    async def get(self, key: K) -> V | None:
        """The value ``lookup`` found for ``key``, or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._in_flight < self._max_in_flight and not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._waiting and self._in_flight < self._max_in_flight:
            batch: dict[K, list[asyncio.Future[V | None]]] = {}
            for key in list(itertools.islice(self._waiting, self._max_keys)):
                futures = [f for f in self._waiting.pop(key) if not f.done()]  # a cancelled caller is dropped
                if futures:
                    batch[key] = futures
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[K, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self._lookup(list(batch))
        except asyncio.CancelledError:
            for futures in batch.values():
                for f in futures:
                    f.cancel()
            raise
        except Exception as exc:
            for futures in batch.values():
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
        else:
            self.lookups += 1
            self.keys_looked_up += len(batch)
            for key, futures in batch.items():
                value = found.get(key)
                for f in futures:
                    if not f.done():
                        f.set_result(value)
        finally:
            self._in_flight -= 1
            if self._waiting:  # the keys asked meanwhile have waited one lookup: they go now
                self._flush()
