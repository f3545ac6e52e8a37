"""Redis adapter of :class:`~vitguard.stores.interfaces.DedupStore`, and the shared client factory.

Redis is an optimisation on the hot path, never a dependency of correctness: when it is down every call
raises :class:`~vitguard.errors.ServiceUnavailableError` quickly (short socket timeouts, one reconnect
try, an overall deadline) and the pipeline goes on classifying without the redelivery guard and the
verdict cache.

Keys (all under ``RedisSettings.key_prefix``):

* ``<prefix>event:<answer key>`` -> ``"1"``, TTL ``event_ttl_s``: the event's outputs were published (the key
  is the event id and a digest of its image reference: :func:`~vitguard.pipeline.core.answer_key`).
* ``<prefix>verdict:<model_key>:<sha256>`` -> verdict JSON, TTL ``verdict_cache_ttl_s``.

Reads of a batch are one MGET; writes one pipelined round trip (no MULTI).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from vitguard.errors import ConfigError, ServiceUnavailableError, cause_chain
from vitguard.settings import RedisSettings

__all__ = [
    "DEFAULT_BREAKER_OPEN_S",
    "CircuitBreaker",
    "RedisDedupStore",
    "guarded",
    "make_redis_client",
    "redis_errors_mapped",
    "refused_for_good",
]


def make_redis_client(settings: RedisSettings) -> aioredis.Redis:
    """An asyncio Redis client with the settings' timeouts; it connects on first use."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "decode_responses": True,
        # one immediate retry recovers a pooled connection Redis closed; more would only delay failure
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 30,
    }
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    client: aioredis.Redis = aioredis.Redis.from_url(settings.url, **kwargs)
    return client


def refused_for_good(exc: BaseException) -> bool:
    """True when Redis answered and refused: wrong or missing credentials (``WRONGPASS``, ``NOAUTH``), or an
    ACL that denies the command (``NOPERM``). Follows the ``__cause__`` chain of a mapped error."""
    from redis.exceptions import AuthenticationError, NoPermissionError

    return any(isinstance(e, AuthenticationError | NoPermissionError) for e in cause_chain(exc))


def _where(url: str) -> str:
    """``host:port`` of a Redis URL (never its credentials)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '?'}:{parts.port or 6379}"


DEFAULT_BREAKER_OPEN_S = 5.0
"""After a Redis failure, calls fail fast for this long before one is let through to probe again."""


@asynccontextmanager
async def redis_errors_mapped(settings: RedisSettings, what: str) -> AsyncIterator[None]:
    """Turn every Redis, socket or timeout error inside into :class:`ServiceUnavailableError`.

    An overall deadline (four socket timeouts) bounds the whole operation, retries included, so a
    half-dead server cannot stall a batch.
    """
    deadline = settings.socket_timeout_s * 4
    try:
        async with asyncio.timeout(deadline):
            yield
    except (RedisError, OSError, TimeoutError) as exc:
        raise ServiceUnavailableError(f"Redis {what} failed: {type(exc).__name__}: {exc}") from exc


class CircuitBreaker:
    """Fail fast while Redis is known to be down, instead of paying socket timeouts on every call.

    A hung Redis costs up to a few socket timeouts per call, and a batch makes several calls: without
    the breaker a Redis outage would slow the pipeline to a crawl instead of letting it classify on.
    After a failure the breaker stays open for ``open_for_s``; then the next call probes Redis again.

    Args:
        open_for_s: how long to fail fast after a failure (0 disables the breaker).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, open_for_s: float = DEFAULT_BREAKER_OPEN_S, clock: Callable[[], float] = time.monotonic):
        self.open_for_s = open_for_s
        self._clock = clock
        self._open_until = float("-inf")
        self._last_error = ""

    @property
    def is_open(self) -> bool:
        return self._clock() < self._open_until

    def check(self, what: str) -> None:
        """Raise :class:`ServiceUnavailableError` at once while the breaker is open."""
        if self.is_open:
            left = self._open_until - self._clock()
            raise ServiceUnavailableError(
                f"Redis {what} skipped: unavailable ({self._last_error}); next try in {left:.1f} s"
            )

    def failed(self, error: BaseException) -> None:
        self._last_error = str(error)
        self._open_until = self._clock() + self.open_for_s

    def succeeded(self) -> None:
        self._open_until = float("-inf")


@asynccontextmanager
async def guarded(settings: RedisSettings, breaker: CircuitBreaker, what: str) -> AsyncIterator[None]:
    """:func:`redis_errors_mapped` behind a :class:`CircuitBreaker`."""
    breaker.check(what)
    try:
        async with redis_errors_mapped(settings, what):
            yield
    except ServiceUnavailableError as exc:
        breaker.failed(exc)
        raise
    breaker.succeeded()


class RedisDedupStore:
    """Processed event ids and the verdict cache in Redis.

    Args:
        settings: URL, password, key prefix, TTLs, socket timeout.
        breaker: fail-fast policy while Redis is down (default: 5 s open after a failure).
    """

    def __init__(self, settings: RedisSettings, *, breaker: CircuitBreaker | None = None) -> None:
        self._settings = settings
        self._prefix = settings.key_prefix
        self._redis = make_redis_client(settings)
        self._breaker = breaker if breaker is not None else CircuitBreaker()

    def event_key(self, event_id: str) -> str:
        return f"{self._prefix}event:{event_id}"

    def verdict_key(self, sha256: str, model_key: str) -> str:
        return f"{self._prefix}verdict:{model_key}:{sha256}"

    async def seen_events(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids were already processed. Raises ServiceUnavailableError."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()
        async with guarded(self._settings, self._breaker, "seen_events"):
            found = await self._redis.mget([self.event_key(e) for e in ids])  # one command for the batch
        return {e for e, n in zip(ids, found, strict=True) if n is not None}

    async def mark_events(self, event_ids: Sequence[str]) -> None:
        """Remember event ids as processed: SET NX with ``event_ttl_s``. Raises ServiceUnavailableError."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return
        async with guarded(self._settings, self._breaker, "mark_events"):
            pipe = self._redis.pipeline(transaction=False)
            self._mark(pipe, ids)
            await pipe.execute()

    async def cached_verdicts(self, sha256s: Sequence[str], model_key: str) -> Mapping[str, str]:
        """Cached verdict JSON by image hash (only the hashes found). Raises ServiceUnavailableError."""
        hashes = list(dict.fromkeys(sha256s))
        if not hashes:
            return {}
        async with guarded(self._settings, self._breaker, "cached_verdicts"):
            values = await self._redis.mget([self.verdict_key(h, model_key) for h in hashes])
        return {h: str(v) for h, v in zip(hashes, values, strict=True) if v is not None}  # str: decode_responses

    async def cache_verdicts(self, verdicts: Mapping[str, str], model_key: str) -> None:
        """Store verdict JSON by image hash with ``verdict_cache_ttl_s``. Raises ServiceUnavailableError."""
        if not verdicts:
            return
        async with guarded(self._settings, self._breaker, "cache_verdicts"):
            pipe = self._redis.pipeline(transaction=False)
            self._cache(pipe, verdicts, model_key)
            await pipe.execute()

    async def remember(self, event_ids: Sequence[str], verdicts: Mapping[str, str], model_key: str) -> None:
        """:meth:`mark_events` and :meth:`cache_verdicts` in one round trip. Raises ServiceUnavailableError."""
        ids = list(dict.fromkeys(event_ids))
        if not ids and not verdicts:
            return
        async with guarded(self._settings, self._breaker, "remember"):
            pipe = self._redis.pipeline(transaction=False)
            self._mark(pipe, ids)
            self._cache(pipe, verdicts, model_key)
            await pipe.execute()

    def _mark(self, pipe: Any, ids: Sequence[str]) -> None:
        ttl = self._settings.event_ttl_s
        for e in ids:  # SET ... NX EX, spelled out: redis-py's set() keyword handling costs more than the command
            pipe.execute_command("SET", self.event_key(e), "1", "NX", "EX", ttl)

    def _cache(self, pipe: Any, verdicts: Mapping[str, str], model_key: str) -> None:
        ttl = self._settings.verdict_cache_ttl_s
        for h, v in verdicts.items():
            pipe.execute_command("SET", self.verdict_key(h, model_key), v, "EX", ttl)

    async def check(self) -> None:
        """Ask Redis once (PING), for a check at start-up.

        Raises:
            ConfigError: Redis answered and refused these credentials or the command (waiting will not fix
                it: see :func:`refused_for_good`).
            ServiceUnavailableError: Redis did not answer.
        """
        try:
            async with redis_errors_mapped(self._settings, "ping"):
                await self._redis.ping()
        except ServiceUnavailableError as exc:
            if refused_for_good(exc):
                raise ConfigError(
                    f"Redis at {_where(self._settings.url)} refused vitguard ({exc.__cause__}): check "
                    "VITGUARD_REDIS_PASSWORD and the user in VITGUARD_REDIS_URL"
                ) from exc
            raise

    async def ping(self) -> bool:
        """True when Redis answers PING (always asks, even with the breaker open); never raises."""
        try:
            async with redis_errors_mapped(self._settings, "ping"):
                ok = bool(await self._redis.ping())
        except ServiceUnavailableError as exc:
            self._breaker.failed(exc)
            return False
        if ok:
            self._breaker.succeeded()
        return ok

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
