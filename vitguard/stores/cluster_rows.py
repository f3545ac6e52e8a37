"""Near-duplicate clusters kept as their own rows in Redis, so that ``GET /clusters`` lists them at any scale.

Every unsafe item the alert stage counts on a cluster (a :class:`ClusterSighting`) updates its cluster's row
in the same group: the earliest and latest upload and the first item (a min and a max, so arrival order does not
matter), the number of distinct items (a HyperLogLog: exact in practice for small clusters, within about 1% for
large ones, 12 KB at most a cluster), the tenants, and the latest few items. An index of clusters ordered by
their latest activity (this worker's clock when the item was answered, not the uploader's ``created_at``,
which a caller could forge to pin a cluster on top) answers a listing with one range read. Every write is
idempotent (a redelivered item changes nothing), and a row lives ``VITGUARD_REDIS_CLUSTER_ROWS_TTL_S`` after its
latest item. Growth in the wave window is read from the wave counter's own window of the cluster.

Keys of one cluster share a hash tag, so the row script also runs on Redis Cluster; the index is one key.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitguard.settings import RedisSettings
from vitguard.stores.interfaces import ClusterRow, ClusterSighting
from vitguard.stores.redis_store import CircuitBreaker, guarded, make_redis_client
from vitguard.stores.wave import wave_window_key

__all__ = ["LATEST_KEPT", "ROW_SCRIPT", "ClusterRow", "ClusterSighting", "RedisClusterRows"]

LATEST_KEPT = 3
"""The latest items a row remembers (a listing shows the first item and the latest others)."""

TENANTS_SHOWN = 50
"""At most this many of a cluster's tenants are listed (``tenant_count`` says how many there are)."""


ROW_SCRIPT = """
local row, items, tenants, latest = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, kept = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local uploaded, member, tenant = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local first = redis.call('HGET', row, 'first_ms')
  if (not first) or tonumber(uploaded) < tonumber(first) then
    redis.call('HSET', row, 'first_ms', uploaded, 'first_id', member)
  end
  local last = redis.call('HGET', row, 'last_ms')
  if (not last) or tonumber(uploaded) > tonumber(last) then
    redis.call('HSET', row, 'last_ms', uploaded)
  end
  redis.call('PFADD', items, member)
  redis.call('SADD', tenants, tenant)
  redis.call('LREM', latest, 0, member)
  redis.call('LPUSH', latest, member)
end
redis.call('LTRIM', latest, 0, kept - 1)
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ttl) end
return 1
"""
"""One cluster's sightings of a group into its row, in order, atomically. KEYS: row hash, items HyperLogLog,
tenants set, latest list. ARGV: TTL, latest items kept, then (uploaded ms, content id, tenant) per sighting."""


class RedisClusterRows:
    """Cluster rows in Redis (see the module docstring).

    Args:
        settings: Redis connection, key prefix and ``cluster_rows_ttl_s``.
        breaker: fail-fast policy while Redis is down (default: 5 s open after a failure).
    """

    def __init__(self, settings: RedisSettings, *, breaker: CircuitBreaker | None = None) -> None:
        self._settings = settings
        self._redis = make_redis_client(settings)
        self._script = self._redis.register_script(ROW_SCRIPT)
        self._breaker = breaker if breaker is not None else CircuitBreaker()

    @property
    def index_key(self) -> str:
        """The clusters by latest activity (score: ms)."""
        return f"{self._settings.key_prefix}clusters"

    def keys(self, cluster_id: str) -> list[str]:
        """Row hash, items HyperLogLog, tenants set and latest list of a cluster."""
        p, tag = self._settings.key_prefix, f"{{{cluster_id}}}"
        return [f"{p}cluster:{tag}", f"{p}cluster-items:{tag}", f"{p}cluster-tenants:{tag}",
                f"{p}cluster-latest:{tag}"]

    async def record_many(self, sightings: Sequence[ClusterSighting]) -> None:
        """Update the sightings' rows and the index, in one pipelined round trip; rows whose latest item is
        older than the TTL leave the index.

        Raises:
            ServiceUnavailableError: Redis did not answer (some rows may be updated: every write is idempotent).
        """
        ttl = self._settings.cluster_rows_ttl_s
        if not sightings or ttl <= 0:
            return
        by_cluster: dict[str, list[str | int]] = {}
        latest: dict[str, int] = {}
        for s in sightings:  # one script call a cluster: a wave's copies share a few
            by_cluster.setdefault(s.cluster_id, [ttl, LATEST_KEPT]).extend((s.uploaded_ms, s.content_id, s.tenant))
            latest[s.cluster_id] = max(s.seen_ms, latest.get(s.cluster_id, 0))
        async with guarded(self._settings, self._breaker, "cluster rows"):
            pipe = self._redis.pipeline(transaction=False)
            for cluster_id, args in by_cluster.items():
                await self._script(keys=self.keys(cluster_id), args=args, client=pipe)
            pipe.zadd(self.index_key, latest, gt=True)
            pipe.zremrangebyscore(self.index_key, "-inf", f"({max(latest.values()) - ttl * 1000}")
            await pipe.execute()

    async def count(self) -> int:
        """Clusters in the index."""
        async with guarded(self._settings, self._breaker, "cluster rows"):
            return int(await self._redis.zcard(self.index_key))

    async def latest(self, *, limit: int, now_s: float, window_s: float) -> list[ClusterRow]:
        """The ``limit`` most recently active clusters, newest first, with their growth within ``window_s``.

        Raises:
            ServiceUnavailableError: Redis did not answer.
        """
        async with guarded(self._settings, self._breaker, "cluster rows"):
            ids = [str(cid) for cid in await self._redis.zrevrange(self.index_key, 0, max(0, limit - 1))]
            if not ids:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for cid in ids:
                row, items, tenants, latest = self.keys(cid)
                pipe.hgetall(row)
                pipe.pfcount(items)
                pipe.scard(tenants)
                pipe.srandmember(tenants, TENANTS_SHOWN)
                pipe.lrange(latest, 0, -1)
                pipe.zcount(wave_window_key(self._settings.key_prefix, cid), now_s - window_s, "+inf")
            replies = await pipe.execute()
        out = []
        for i, cid in enumerate(ids):
            fields, size, tenant_count, tenants, newest, growth = replies[6 * i: 6 * i + 6]
            if not fields:  # expired between the index and the row
                continue
            out.append(ClusterRow(cid, int(size), int(fields["first_ms"]), int(fields["last_ms"]), fields["first_id"],
                                  tuple(newest), tuple(sorted(tenants or ())), int(tenant_count), int(growth)))
        return out

    async def close(self) -> None:
        await self._redis.aclose()
