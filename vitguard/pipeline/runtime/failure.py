"""Each dependency's failure policy, in one place.

* **Redis down or slow** -> :class:`RedisPolicy`: degrade. The call returns a default (no guard, no cache, no
  wave), Redis is skipped for a few seconds, the batch goes on. Seen as
  ``vitguard_store_errors_total{store="redis"}`` and ``/readyz`` ``"redis": "degraded"``.
* **Milvus down or hung** -> :class:`MilvusPolicy`: hold the batch, capped jittered backoff for as long as it
  takes; consumption is paused meanwhile (``on_hold``). Seen as ``store_errors{store="milvus"}``, ``/readyz``
  false with the reason, consumer lag growing.
* **Milvus permanent error** (dimension or schema mismatch, authentication) -> :class:`~vitguard.errors.FatalError`:
  one critical log line, exit code 1.
* **At start-up, before the group join**, each is asked once (``once``): a refusal that waiting will not fix
  (Redis or Milvus credentials, a collection of another dimension, a Lite file another worker holds) is a
  :class:`~vitguard.errors.FatalError` then; one that does not answer is left to the policies above.
* **Publish transient** -> :class:`PublishPolicy`: re-send only the messages not yet acknowledged, capped
  jittered backoff. Seen as ``vitguard_publish_retries_total``; ``/readyz`` false after ``publish_stuck_s``.
* **Publish rejected** (too large, invalid record) -> that message is replaced by a smaller dead letter
  (``output_rejected``); seen as ``vitguard_dead_letters_total{reason}``.
* **Publish fatal** (authorization, invalid topic) -> :class:`~vitguard.errors.FatalError`, exit code 1.

Every call has a deadline: Redis commands (the adapter's socket timeouts and overall deadline), Milvus calls
(pymilvus ``timeout=``, plus a safety net here), publishing (``timeout_s`` per round). No policy nests
another's retries: the adapters fail fast and the loops below are the only retry loops of the batch path.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

from vitguard import metrics
from vitguard.errors import ConfigError, FatalError, ServiceUnavailableError
from vitguard.health import HealthState
from vitguard.kafka.errors import PublishFailure, classify_publish_error

__all__ = ["Backoff", "MilvusPolicy", "PublishPolicy", "RedisPolicy"]

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: ``base * 2**(attempt-1)``, at most ``max_s``, minus up to
    ``jitter`` of itself at random, so workers that failed together do not retry together."""

    base_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        if attempt < 1:
            raise ValueError("attempt numbers start at 1")
        capped = min(self.max_s, self.base_s * 2.0 ** min(attempt - 1, 62))
        return capped * (1.0 - self.jitter * rand())


class RedisPolicy:
    """Redis is an optimisation: a failed call returns its default and Redis is skipped for ``skip_s``."""

    def __init__(self, health: HealthState, *, skip_s: float = 5.0, timeout_s: float = 5.0) -> None:
        self._health = health
        self._skip_s = skip_s
        self._timeout_s = timeout_s
        self._skip_until = 0.0

    async def call(self, op: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        if time.monotonic() < self._skip_until:
            return default
        try:
            async with asyncio.timeout(self._timeout_s):  # the adapter has its own; this bounds a bug in it
                result = await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.STORE_ERRORS.labels("redis", op).inc()
            now = time.monotonic()
            first = now >= self._skip_until  # calls in flight when Redis went away fail together: log once
            self._skip_until = now + self._skip_s
            self._degraded(f"{op}: {type(exc).__name__}: {exc}")
            (_log.warning if first else _log.debug)(
                "Redis %s failed (%s); going on without it for %.0fs", op, exc, self._skip_s,
                extra={"store": "redis", "op": op},
            )
            return default
        if self._health.redis_degraded:  # degraded until a call succeeds, however long that takes
            self._health.redis_degraded, self._health.redis_error = False, None
            _log.warning("Redis answers again (%s)", op, extra={"store": "redis", "op": op})
        return result

    def _degraded(self, error: str) -> None:
        self._health.redis_degraded = True
        self._health.redis_error = error[:300]

    async def once(self, op: str, call: Callable[[], Awaitable[None]]) -> None:
        """One attempt, for a check at start-up: a refusal that waiting will not fix (a
        :class:`~vitguard.errors.ConfigError`: wrong credentials) is :class:`~vitguard.errors.FatalError`, so
        a misconfigured worker stops before it takes partitions instead of running for good without its
        guard, cache and wave counts; Redis down is logged and the worker starts degraded, as ever."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await call()
        except asyncio.CancelledError:
            raise
        except ConfigError as exc:
            raise FatalError(f"Redis {op}: {exc}") from exc
        except Exception as exc:
            metrics.STORE_ERRORS.labels("redis", op).inc()
            self._degraded(f"{op} at start-up: {type(exc).__name__}: {exc}")
            _log.warning("Redis %s failed at start-up (%s); starting without it", op, exc,
                         extra={"store": "redis", "op": op})


_MILVUS_TRANSIENT = (ServiceUnavailableError, TimeoutError, OSError)
"""What a Milvus call raises when waiting may fix it: down, hung past its deadline, a socket error."""


class MilvusPolicy:
    """Milvus holds the batch: transient failures are retried until they succeed, permanent ones are fatal.

    Args:
        pool: the thread that runs the blocking pymilvus calls.
        backoff: delays between attempts.
        call_timeout_s: pymilvus has its own per-call deadline; a call still running this long after it is
            abandoned and counted as a failure (a safety net against a client that ignores its deadline).
        on_hold: called with True when a hold starts (the runner pauses consumption) and False when it ends.
    """

    def __init__(
        self,
        health: HealthState,
        pool: Executor,
        *,
        backoff: Backoff,
        call_timeout_s: float,
        on_hold: Callable[[bool], None] | None = None,
    ) -> None:
        self._health = health
        self._pool = pool
        self._backoff = backoff
        self._call_timeout_s = call_timeout_s
        self.on_hold = on_hold

    async def call(self, op: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                result = await self._attempt(op, fn, self._call_timeout_s)
            except _MILVUS_TRANSIENT as exc:
                attempt += 1
                self._failed(op, attempt, exc)
                await asyncio.sleep(self._backoff.delay(attempt))
                continue
            if self._health.milvus_failing_since is not None:
                _log.warning("Milvus %s succeeded again after %d failed attempt(s); resuming", op, attempt)
                self._health.milvus_failing_since = None
                self._health.milvus_error = None
                if self.on_hold is not None:
                    self.on_hold(False)
            return result

    async def once(self, op: str, fn: Callable[[], T], *, timeout_s: float) -> T | None:
        """One attempt and no hold, for a check at start-up: the result; None (logged) when Milvus does not
        answer within ``timeout_s`` (the batch path holds for it later, as for any outage); a permanent error
        is :class:`~vitguard.errors.FatalError` at once, before the worker takes any partition."""
        try:
            return await self._attempt(op, fn, timeout_s)
        except _MILVUS_TRANSIENT as exc:
            metrics.STORE_ERRORS.labels("milvus", op).inc()
            message = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else f"no answer within {timeout_s:g}s"
            _log.warning("Milvus %s failed at start-up (%s); starting anyway, the first batch waits for it",
                         op, message, extra={"store": "milvus", "op": op})
            return None

    async def _attempt(self, op: str, fn: Callable[[], T], timeout_s: float) -> T:
        """One call in the store pool within ``timeout_s``: a permanent error is :class:`FatalError`, a
        transient one (:data:`_MILVUS_TRANSIENT`) is raised for the caller to retry or to report."""
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        except (ConfigError, FatalError) as exc:
            raise FatalError(f"Milvus {op}: {exc}") from exc

    def _failed(self, op: str, attempt: int, exc: BaseException) -> None:
        metrics.STORE_ERRORS.labels("milvus", op).inc()
        self._health.retried()
        message = f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
        if self._health.milvus_failing_since is None:
            self._health.milvus_failing_since = time.monotonic()
            if self.on_hold is not None:
                self.on_hold(True)
        self._health.milvus_error = f"{op}: {message}"
        _log.error(
            "Milvus %s failed (attempt %d: %s); holding the batch, consumption paused, nothing committed",
            op, attempt, message, extra={"store": "milvus", "op": op, "attempt": attempt},
        )


class PublishPolicy:
    """Publishing: classify each failed message; back off between rounds of the transient ones."""

    def __init__(self, health: HealthState, *, backoff: Backoff, timeout_s: float) -> None:
        self._health = health
        self.backoff = backoff
        self.timeout_s = timeout_s
        """Longest wait for one round of acknowledgements."""

    @staticmethod
    def classify(exc: BaseException) -> PublishFailure:
        if isinstance(exc, TimeoutError | ServiceUnavailableError):
            return "transient"
        return classify_publish_error(exc)

    async def failed_round(self, attempt: int, failed: int, first: BaseException) -> None:
        """Record a round with ``failed`` unacknowledged messages and wait before the next one."""
        metrics.PUBLISH_RETRIES.inc()
        self._health.retried()
        if self._health.publish_failing_since is None:
            self._health.publish_failing_since = time.monotonic()
        self._health.publish_error = f"{type(first).__name__}: {first}"[:300]
        delay = self.backoff.delay(attempt)
        _log.error(
            "publishing %d output(s) failed (attempt %d, %s); re-sending only those in %.1fs, offsets stay "
            "uncommitted", failed, attempt, self._health.publish_error, delay, extra={"attempt": attempt},
        )
        await asyncio.sleep(delay)

    def succeeded(self) -> None:
        self._health.publish_failing_since = None
        self._health.publish_error = None
