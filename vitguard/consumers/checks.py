"""Background checks of the worker's dependencies (the broker, Milvus), so that probes never wait on one.

Kubernetes gives a probe one second by default. A probe that asked a hung Milvus itself took its client's
deadline (seconds) to answer, and timed out instead of saying why the worker is not ready. Here each
dependency is asked by its own task every ``interval_s``, in a thread, and ``/readyz`` reads the last answer:

* a check that has not answered within ``timeout_s`` counts as unreachable from then on, until one answers;
* at most one thread per dependency at a time: a check hung in a client that ignores its deadline is waited
  for, not joined by another (threads cannot be cancelled, and one per probe would fill the default executor
  that DNS lookups and file reads share);
* before the first answer a dependency counts as unreachable ("not checked yet" is not ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["CHECK_INTERVAL_S", "CHECK_TIMEOUT_S", "DependencyChecks"]

_log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 2.0
"""How often each dependency is asked."""

CHECK_TIMEOUT_S = 4.0
"""A check that has not answered this long counts as a failure (it still runs on in its thread)."""


@dataclass
class _Check:
    ok: bool = False
    started_at: float | None = None
    """When the check now running began (None between checks)."""


class DependencyChecks:
    """Keeps the last answer of each check; :meth:`reachable` reads it and never waits.

    Args:
        checks: name -> blocking function returning True when the dependency answers (run in a thread).
        interval_s: pause between two checks of one dependency.
        timeout_s: a check running longer counts as a failure.
    """

    def __init__(self, checks: Mapping[str, Callable[[], bool]], *, interval_s: float = CHECK_INTERVAL_S,
                 timeout_s: float = CHECK_TIMEOUT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._checks = dict(checks)
        self._state = {name: _Check() for name in self._checks}
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start one checking task per dependency (idempotent; on the running loop)."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._watch(name), name=f"vitguard-check-{name}")
                           for name in self._checks]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def reachable(self, name: str) -> bool:
        """The last answer; False while a check has run past its timeout, or before the first answer."""
        state = self._state[name]
        if state.started_at is not None and self._clock() - state.started_at > self._timeout_s:
            return False
        return state.ok

    async def _watch(self, name: str) -> None:
        while True:
            try:
                await self._check(name)
            except asyncio.CancelledError:
                raise
            except Exception:  # a background check must never end silently
                _log.exception("checking %s failed unexpectedly", name)
            await asyncio.sleep(self._interval_s)

    async def _check(self, name: str) -> None:
        state = self._state[name]
        state.started_at = self._clock()
        try:
            ok = bool(await asyncio.to_thread(self._checks[name]))
        except Exception as exc:
            _log.debug("%s check failed: %s", name, exc)
            ok = False
        finally:
            state.started_at = None
        state.ok = ok
