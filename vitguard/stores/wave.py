"""Abuse-wave detection: a sliding-window counter per near-duplicate cluster, with alert suppression.

Each unsafe near-duplicate is recorded on its cluster at time ``now_s``. When ``wave_threshold`` items
land on one cluster within ``wave_window_s`` the cluster is in a wave: the first item then raises a
critical alert and further wave alerts for that cluster are suppressed for ``wave_alert_cooldown_s``, so
a wave of thousands of copies produces a handful of alerts, not thousands. Below the threshold every
near-duplicate still gets its (informational) alert.

All times are the caller's ``now_s`` (window and cooldown alike), so replaying a stream or a test with
explicit timestamps behaves exactly like live traffic; Redis TTLs only collect garbage.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitguard.errors import ServiceUnavailableError
from vitguard.settings import PolicySettings, RedisSettings
from vitguard.stores.interfaces import WaveRecord, WaveRule, WaveState
from vitguard.stores.redis_store import CircuitBreaker, guarded, make_redis_client, redis_errors_mapped

__all__ = ["WAVE_SCRIPT", "RedisWaveCounter", "fleet_wave_rule", "kept_for_s", "wave_decision", "wave_window_key"]


def wave_window_key(prefix: str, cluster_id: str) -> str:
    """The sorted set of a cluster's items within the wave window (score: seconds)."""
    return f"{prefix}wave:{{{cluster_id}}}"


def fleet_wave_rule(policy: PolicySettings) -> WaveRule:
    """The fleet's wave rule (``VITGUARD_POLICY_WAVE_*``): what a policy without its own ``waves`` uses."""
    return WaveRule(policy.wave_threshold, policy.wave_window_s, policy.wave_alert_cooldown_s)


def kept_for_s(items: Sequence[WaveRecord], keep_s: int, fleet: WaveRule) -> int:
    """How long a cluster's items are kept: the longest window in use (the caller's ``keep_s``, e.g. every policy's
    of the document in force, the fleet's, or a record's own)."""
    return max([keep_s, fleet.window_s, *(i.rule.window_s for i in items if i.rule is not None)])


def wave_decision(count: int, threshold: int, cooldown_s: float, cooldown_free: bool) -> WaveState:
    """The pure rule: wave when ``count >= threshold``; inside a wave alert only when no cooldown runs.

    ``cooldown_s == 0`` turns suppression off (every wave item alerts).
    """
    is_wave = count >= threshold
    alert = (not is_wave) or cooldown_s <= 0 or cooldown_free
    return WaveState(count=count, is_wave=is_wave, alert=alert)


WAVE_SCRIPT = """
local zkey, ckey = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local member = ARGV[3]
local threshold = tonumber(ARGV[4])
local cooldown = tonumber(ARGV[5])
local gc_ttl = tonumber(ARGV[6])
redis.call('ZADD', zkey, ARGV[1], member)
redis.call('ZREMRANGEBYSCORE', zkey, '-inf', '(' .. ARGV[7])
local count = redis.call('ZCOUNT', zkey, ARGV[9], '+inf')
redis.call('EXPIRE', zkey, gc_ttl)
local is_wave = 0
local alert = 1
if count >= threshold then
  is_wave = 1
  if cooldown > 0 then
    local until_s = redis.call('GET', ckey)
    if until_s and tonumber(until_s) > now then
      alert = 0
    else
      redis.call('SET', ckey, ARGV[8], 'EX', gc_ttl)
    end
  end
end
return {count, is_wave, alert}
"""
"""Atomic record-trim-count-suppress in one round trip.

KEYS: window sorted set, cooldown key (of the record's scope). ARGV: now, window (informational), member,
threshold, cooldown, garbage-collection TTL, keep cutoff (now - the longest window in use: older items are
dropped), cooldown end (now + cooldown), count cutoff (now - this record's window).
"""


class RedisWaveCounter:
    """Sliding windows in Redis sorted sets (score = time, member = content id), updated atomically.

    A content id recorded twice (a redelivery) counts once. Both keys of a cluster share a hash tag, so the
    script also runs on Redis Cluster. A cluster's items are counted by each record's own window (a policy's
    wave rule) and kept for the longest window in use.

    Args:
        settings: Redis connection and key prefix.
        policy: ``wave_window_s``, ``wave_threshold``, ``wave_alert_cooldown_s``: the fleet's rule.
        breaker: fail-fast policy while Redis is down (default: 5 s open after a failure).
    """

    def __init__(
        self, settings: RedisSettings, policy: PolicySettings, *, breaker: CircuitBreaker | None = None
    ) -> None:
        self._settings = settings
        self._rule = fleet_wave_rule(policy)
        self._redis = make_redis_client(settings)
        self._script = self._redis.register_script(WAVE_SCRIPT)
        self._breaker = breaker if breaker is not None else CircuitBreaker()

    def keys(self, cluster_id: str, scope: str = "") -> tuple[str, str]:
        """(window sorted set, cooldown key of ``scope``) of a cluster."""
        p = self._settings.key_prefix
        cooldown = f"{p}wave-cooldown:{{{cluster_id}}}" + (f":{scope}" if scope else "")
        return wave_window_key(p, cluster_id), cooldown

    async def record(self, cluster_id: str, content_id: str, now_s: float) -> WaveState:
        """Record one item on a cluster and say whether it is a wave and whether to alert (the fleet's rule).

        Raises:
            ServiceUnavailableError: Redis did not answer.
        """
        [state] = await self.record_many([WaveRecord(cluster_id, content_id, now_s)])
        return state

    async def record_many(self, items: Sequence[WaveRecord], *, keep_s: int = 0) -> list[WaveState]:
        """Record items in order, in one pipelined round trip.

        Each item is still applied atomically and in order, so the result equals calling :meth:`record`
        for each item; a batch of near-duplicates just costs one round trip instead of one per item.

        Raises:
            ServiceUnavailableError: Redis did not answer (none, some or all items may be recorded).
        """
        if not items:
            return []
        keep = kept_for_s(items, keep_s, self._rule)
        async with guarded(self._settings, self._breaker, "wave record"):
            pipe = self._redis.pipeline(transaction=False)
            for item in items:
                await self._script(keys=list(self.keys(item.cluster_id, item.scope)),
                                   args=self._args(item, keep), client=pipe)
            replies = await pipe.execute()
        return [WaveState(count=int(c), is_wave=bool(w), alert=bool(a)) for c, w, a in replies]

    def _args(self, item: WaveRecord, keep_s: int) -> list[str]:
        rule = item.rule or self._rule
        now_s = float(item.now_s)
        gc_ttl = int(max(keep_s, rule.cooldown_s)) + 60
        return [
            repr(now_s),
            str(rule.window_s),
            item.content_id,
            str(rule.threshold),
            str(rule.cooldown_s),
            str(gc_ttl),
            repr(now_s - keep_s),
            repr(now_s + rule.cooldown_s),
            repr(now_s - rule.window_s),
        ]

    async def ping(self) -> bool:
        """True when Redis answers PING; never raises."""
        try:
            async with redis_errors_mapped(self._settings, "ping"):
                return bool(await self._redis.ping())
        except ServiceUnavailableError:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
