"""Redis adapter of :class:`~vitguard.stores.interfaces.DedupStore`, and the shared client factory.

Redis is an optimisation on the hot path, never a dependency of correctness: when it is down every call
raises :class:`~vitguard.errors.ServiceUnavailableError` quickly (short socket timeouts, one reconnect
try, an overall deadline) and the pipeline goes on classifying without the redelivery guard and the
verdict cache.

Keys (all under ``RedisSettings.key_prefix``):

* ``<prefix>event:<event_id>`` -> ``"1"``, TTL ``event_ttl_s``: the event's outputs were published.
* ``<prefix>verdict:<model_key>:<sha256>`` -> verdict JSON, TTL ``verdict_cache_ttl_s``.

Reads and writes of a batch go in one pipelined round trip (no MULTI, so it also works on a cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from vitguard.errors import ServiceUnavailableError
from vitguard.settings import RedisSettings

__all__ = ["RedisDedupStore", "make_redis_client", "redis_errors_mapped"]


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


class RedisDedupStore:
    """Processed event ids and the verdict cache in Redis.

    Args:
        settings: URL, password, key prefix, TTLs, socket timeout.
    """

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._prefix = settings.key_prefix
        self._redis = make_redis_client(settings)

    def event_key(self, event_id: str) -> str:
        return f"{self._prefix}event:{event_id}"

    def verdict_key(self, sha256: str, model_key: str) -> str:
        return f"{self._prefix}verdict:{model_key}:{sha256}"

    async def seen_events(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these event ids were already processed. Raises ServiceUnavailableError."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()
        async with redis_errors_mapped(self._settings, "seen_events"):
            pipe = self._redis.pipeline(transaction=False)
            for e in ids:
                pipe.exists(self.event_key(e))
            found = await pipe.execute()
        return {e for e, n in zip(ids, found, strict=True) if n}

    async def mark_events(self, event_ids: Sequence[str]) -> None:
        """Remember event ids as processed: SET NX with ``event_ttl_s``. Raises ServiceUnavailableError."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return
        async with redis_errors_mapped(self._settings, "mark_events"):
            pipe = self._redis.pipeline(transaction=False)
            for e in ids:
                pipe.set(self.event_key(e), "1", nx=True, ex=self._settings.event_ttl_s)
            await pipe.execute()

    async def cached_verdicts(self, sha256s: Sequence[str], model_key: str) -> Mapping[str, str]:
        """Cached verdict JSON by image hash (only the hashes found). Raises ServiceUnavailableError."""
        hashes = list(dict.fromkeys(sha256s))
        if not hashes:
            return {}
        async with redis_errors_mapped(self._settings, "cached_verdicts"):
            pipe = self._redis.pipeline(transaction=False)
            for h in hashes:
                pipe.get(self.verdict_key(h, model_key))
            values = await pipe.execute()
        return {h: v for h, v in zip(hashes, values, strict=True) if v is not None}

    async def cache_verdicts(self, verdicts: Mapping[str, str], model_key: str) -> None:
        """Store verdict JSON by image hash with ``verdict_cache_ttl_s``. Raises ServiceUnavailableError."""
        if not verdicts:
            return
        async with redis_errors_mapped(self._settings, "cache_verdicts"):
            pipe = self._redis.pipeline(transaction=False)
            for h, v in verdicts.items():
                pipe.set(self.verdict_key(h, model_key), v, ex=self._settings.verdict_cache_ttl_s)
            await pipe.execute()

    async def ping(self) -> bool:
        """True when Redis answers PING; never raises."""
        try:
            async with redis_errors_mapped(self._settings, "ping"):
                return bool(await self._redis.ping())
        except ServiceUnavailableError:
            return False

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
