"""Retry with capped exponential backoff, for the blocking Milvus calls the pipeline must not drop.

The delay schedule is a pure function so it can be tested without sleeping; :func:`retry_with_backoff`
is synchronous because the agent already runs Milvus calls in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from vitguard.errors import ServiceUnavailableError
from vitguard.settings import MilvusSettings

__all__ = ["backoff_delay", "backoff_schedule", "retry_with_backoff"]

T = TypeVar("T")


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): base, 2*base, 4*base, ... <= max."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    return min(max_s, base_s * 2.0 ** min(attempt - 1, 62))


def backoff_schedule(settings: MilvusSettings) -> list[float]:
    """Every delay :func:`retry_with_backoff` may sleep, in order (one fewer than the attempts)."""
    return [
        backoff_delay(a, settings.retry_backoff_s, settings.retry_backoff_max_s)
        for a in range(1, settings.retry_attempts)
    ]


def retry_with_backoff(
    fn: Callable[[], T],
    settings: MilvusSettings,
    *,
    on_retry: Callable[[int, ServiceUnavailableError, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, retrying :class:`ServiceUnavailableError` with backoff.

    Only "service unavailable" is retried: a bad input or a configuration error fails at once, because
    waiting will not fix it.

    Args:
        fn: the call to make, e.g. ``lambda: index.upsert(name, records)``.
        settings: ``retry_attempts`` (total calls), ``retry_backoff_s`` (first delay, doubled each time)
            and ``retry_backoff_max_s`` (cap).
        on_retry: called as ``on_retry(attempt, error, delay_s)`` before each sleep (logging, metrics).
        sleep: how to wait; tests pass a recorder instead of sleeping.

    Raises:
        ServiceUnavailableError: the last error, after ``retry_attempts`` failed calls.
    """
    attempt = 1
    while True:
        try:
            return fn()
        except ServiceUnavailableError as exc:
            if attempt >= settings.retry_attempts:
                raise
            delay = backoff_delay(attempt, settings.retry_backoff_s, settings.retry_backoff_max_s)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
            attempt += 1
