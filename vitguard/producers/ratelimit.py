"""A token bucket for ``--rate``: at most ``rate`` events per second, with a small burst."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    """Blocks :meth:`acquire` so that, over any window, no more than ``rate * window + burst`` pass.

    Args:
        rate: events per second (> 0).
        burst: events allowed back to back after an idle spell.
        clock: monotonic seconds; injected so tests need not sleep.
        sleep: how to wait; injected with ``clock``.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()

    def acquire(self) -> float:
        """Take one token, waiting if none is left; returns the seconds waited."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        wait = (1 - self._tokens) / self.rate
        self._sleep(wait)
        after = self._clock()
        # Credit what the sleep actually took (it may overshoot), then spend the token.
        self._tokens = min(self.burst, self._tokens + (after - now) * self.rate) - 1
        self._last = after
        return wait
