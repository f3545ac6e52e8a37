"""RedisDedupStore and RedisWaveCounter against a real redis-server; and what happens when it is gone."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from vitguard.errors import ConfigError, ServiceUnavailableError
from vitguard.settings import PolicySettings, RedisSettings
from vitguard.stores import InMemoryWaveCounter, RedisDedupStore, RedisWaveCounter, WaveCounter, WaveRecord, WaveRule
from vitguard.stores.interfaces import WaveState
from vitguard.stores.redis_store import CircuitBreaker
from vitguard.testing import services

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(redis_url: str, redis_prefix: str) -> RedisSettings:
    return RedisSettings(url=redis_url, key_prefix=redis_prefix, event_ttl_s=600, verdict_cache_ttl_s=1200)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def dedup(settings: RedisSettings) -> AsyncIterator[RedisDedupStore]:
    store = RedisDedupStore(settings)
    yield store
    await store.close()


async def test_event_ids_round_trip_with_ttl_and_nx(
    dedup: RedisDedupStore, raw: aioredis.Redis, settings: RedisSettings
) -> None:
    assert await dedup.seen_events(["e1", "e2", "e3"]) == set()
    await dedup.mark_events(["e1", "e3", "e1"])
    assert await dedup.seen_events(["e1", "e2", "e3"]) == {"e1", "e3"}
    key = f"{settings.key_prefix}event:e1"
    assert 0 < await raw.ttl(key) <= 600
    await raw.expire(key, 5)
    await dedup.mark_events(["e1"])  # NX: the first mark stands, its TTL is not renewed
    assert await raw.ttl(key) <= 5
    assert await dedup.seen_events([]) == set()
    await dedup.mark_events([])


async def test_verdict_cache_round_trip_per_model(
    dedup: RedisDedupStore, raw: aioredis.Redis, settings: RedisSettings
) -> None:
    sha_a, sha_b = "a" * 64, "b" * 64
    verdict = '{"label": "unsafe", "unsafe_score": 0.97}'
    await dedup.cache_verdicts({sha_a: verdict}, "opennsfw@r1")
    assert await dedup.cached_verdicts([sha_a, sha_b], "opennsfw@r1") == {sha_a: verdict}
    assert await dedup.cached_verdicts([sha_a], "other-model@r2") == {}
    key = f"{settings.key_prefix}verdict:opennsfw@r1:{sha_a}"
    assert await raw.get(key) == verdict
    assert 600 < await raw.ttl(key) <= 1200
    assert await dedup.ping() is True


async def test_remember_marks_and_caches_in_one_round_trip(
    dedup: RedisDedupStore, raw: aioredis.Redis, settings: RedisSettings
) -> None:
    """What the back half calls once per group: the same keys, values and TTLs as the two calls apart, NX kept."""
    sha = "c" * 64
    await raw.set(f"{settings.key_prefix}event:e9", "1", ex=5)  # an earlier mark: NX keeps it and its TTL
    await dedup.remember(["e8", "e9", "e8"], {sha: '{"label": "safe"}'}, "m@1")
    assert await dedup.seen_events(["e7", "e8", "e9"]) == {"e8", "e9"}
    assert 0 < await raw.ttl(f"{settings.key_prefix}event:e8") <= 600
    assert await raw.ttl(f"{settings.key_prefix}event:e9") <= 5
    assert await dedup.cached_verdicts([sha], "m@1") == {sha: '{"label": "safe"}'}
    assert 600 < await raw.ttl(f"{settings.key_prefix}verdict:m@1:{sha}") <= 1200
    await dedup.remember([], {}, "m@1")  # nothing to send: no round trip, no error


@pytest.fixture(params=["redis", "memory"])
async def counter(request: pytest.FixtureRequest, settings: RedisSettings) -> AsyncIterator[WaveCounter]:
    policy = PolicySettings(wave_window_s=10, wave_threshold=3, wave_alert_cooldown_s=5)
    if request.param == "memory":
        yield InMemoryWaveCounter(policy)
        return
    real = RedisWaveCounter(settings, policy)
    yield real
    await real.close()


async def test_wave_window_and_suppression(counter: WaveCounter) -> None:
    t0 = 1_700_000_000.25
    states = [await counter.record("c-1", f"x{i}", t0 + dt) for i, dt in enumerate([0, 1, 2, 3, 4, 7.5])]
    assert [s.count for s in states] == [1, 2, 3, 4, 5, 6]
    assert [s.is_wave for s in states] == [False, False, True, True, True, True]
    # below the threshold every near-duplicate alerts (info); in the wave one alert per 5 s cooldown
    assert [s.alert for s in states] == [True, True, True, False, False, True]
    assert (await counter.record("c-1", "x0", t0 + 7.6)).count == 6  # redelivery counts once
    assert (await counter.record("c-2", "y0", t0 + 7.7)).count == 1  # clusters are independent
    late = await counter.record("c-1", "z", t0 + 20)  # the window slid past every earlier item
    assert (late.count, late.is_wave, late.alert) == (1, False, True)


async def test_a_burst_gives_a_bounded_number_of_alerts(counter: WaveCounter) -> None:
    t0 = 1_700_000_000.0
    states = [await counter.record("burst", f"copy-{i}", t0 + i * 0.01) for i in range(200)]
    assert states[-1].is_wave and states[-1].count == 200
    assert sum(s.alert for s in states) == 3  # two info alerts before the wave, one critical wave alert


async def test_wave_keys_expire(settings: RedisSettings, raw: aioredis.Redis) -> None:
    policy = PolicySettings(wave_window_s=10, wave_threshold=2, wave_alert_cooldown_s=5)
    counter = RedisWaveCounter(settings, policy)
    await counter.record("c-9", "a", 100.0)
    await counter.record("c-9", "b", 101.0)
    zkey, ckey = counter.keys("c-9")
    assert await raw.zcard(zkey) == 2
    assert 0 < await raw.ttl(zkey) <= 70 and 0 < await raw.ttl(ckey) <= 70
    await counter.close()


# -- Redis down ------------------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung Redis."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def _down_settings(port: int, **kw: Any) -> RedisSettings:
    return RedisSettings(url=f"redis://127.0.0.1:{port}/0", key_prefix="down:", socket_timeout_s=0.2, **kw)


async def _every_call_unavailable(dedup: RedisDedupStore, waves: RedisWaveCounter) -> None:
    calls = [
        dedup.seen_events(["e1"]),
        dedup.mark_events(["e1"]),
        dedup.cached_verdicts(["h"], "m"),
        dedup.cache_verdicts({"h": "{}"}, "m"),
        dedup.remember(["e1"], {"h": "{}"}, "m"),
        waves.record("c", "x", 1.0),
    ]
    for call in calls:
        with pytest.raises(ServiceUnavailableError):
            await call
    assert await dedup.ping() is False
    assert await waves.ping() is False


@pytest.mark.timeout(30)
async def test_nothing_listening_is_service_unavailable() -> None:
    s = _down_settings(services.free_port())
    dedup, waves = RedisDedupStore(s), RedisWaveCounter(s, PolicySettings())
    await _every_call_unavailable(dedup, waves)
    await dedup.close()
    await waves.close()


@pytest.mark.timeout(30)
async def test_hung_server_is_service_unavailable_not_a_hang(silent_port: int) -> None:
    s = _down_settings(silent_port)
    dedup, waves = RedisDedupStore(s), RedisWaveCounter(s, PolicySettings())
    await _every_call_unavailable(dedup, waves)
    await dedup.close()
    await waves.close()


@pytest.mark.timeout(60)
async def test_breaker_fails_fast_then_recovers_when_redis_comes_back() -> None:
    port = services.free_port()
    now = [0.0]
    breaker = CircuitBreaker(open_for_s=5.0, clock=lambda: now[0])
    s = RedisSettings(url=f"redis://127.0.0.1:{port}/0", key_prefix="recover:", socket_timeout_s=0.5)
    dedup = RedisDedupStore(s, breaker=breaker)
    with pytest.raises(ServiceUnavailableError, match="failed"):
        await dedup.mark_events(["e1"])
    assert breaker.is_open
    server = services.start_redis(port=port)
    try:
        # Redis is back, but the breaker has not let a probe through yet: no call reaches it
        with pytest.raises(ServiceUnavailableError, match="skipped"):
            await dedup.mark_events(["e1"])
        now[0] += 5.0
        await dedup.mark_events(["e1"])
        assert not breaker.is_open
        assert await dedup.seen_events(["e1"]) == {"e1"}
        server.stop()
        with pytest.raises(ServiceUnavailableError, match="failed"):
            await dedup.seen_events(["e1"])
        assert await dedup.ping() is False
    finally:
        server.stop()
        await dedup.close()


async def test_record_many_equals_records_one_by_one(settings: RedisSettings) -> None:
    policy = PolicySettings(wave_window_s=10, wave_threshold=3, wave_alert_cooldown_s=5)
    items = [WaveRecord("c-a" if i % 3 else "c-b", f"m{i}", 50.0 + i * 0.5) for i in range(12)]
    batched = RedisWaveCounter(settings.model_copy(update={"key_prefix": settings.key_prefix + "b:"}), policy)
    single = RedisWaveCounter(settings.model_copy(update={"key_prefix": settings.key_prefix + "s:"}), policy)
    memory = InMemoryWaveCounter(policy)
    got = await batched.record_many(items)
    assert got == [await single.record(i.cluster_id, i.content_id, i.now_s) for i in items]
    assert got == await memory.record_many(items)
    assert await batched.record_many([]) == []
    await batched.close()
    await single.close()


async def test_a_start_up_check_tells_refused_credentials_from_redis_down() -> None:
    secret = uuid.uuid4().hex  # a throwaway server's password
    server = services.start_redis(password=secret)
    try:
        for password in (None, "not-it"):
            store = RedisDedupStore(RedisSettings(url=server.address, password=password))
            with pytest.raises(ConfigError, match="VITGUARD_REDIS_PASSWORD") as caught:
                await store.check()
            assert "not-it" not in str(caught.value) and secret not in str(caught.value)
            await store.close()
        store = RedisDedupStore(RedisSettings(url=server.address, password=secret))
        await store.check()
        await store.close()
    finally:
        server.stop()
    down = RedisDedupStore(_down_settings(services.free_port()))
    with pytest.raises(ServiceUnavailableError) as unavailable:
        await down.check()
    assert not isinstance(unavailable.value, ConfigError)
    await down.close()


async def test_each_record_is_judged_by_its_own_wave_rule_and_cooldown_scope(settings: RedisSettings) -> None:
    """Issue 32: a policy's wave rule (threshold, window, cooldown) judges its items on the fleet's cluster
    counts; items are kept for the longest window in use, and one policy's wave alert does not silence another's.
    The in-memory counter follows the same rules."""
    fleet = PolicySettings(wave_window_s=10, wave_threshold=5, wave_alert_cooldown_s=100)
    strict = WaveRule(threshold=2, window_s=10, cooldown_s=100)
    long_window = WaveRule(threshold=4, window_s=1000, cooldown_s=0)
    items = [
        WaveRecord("c", "a", 0.0),  # the fleet's rule: 1 of 5
        WaveRecord("c", "b", 1.0, strict, "kids"),  # 2 within 10 s: a wave for "kids", which alerts
        WaveRecord("c", "c", 2.0, strict, "kids"),  # still a wave; its cooldown runs: suppressed
        WaveRecord("c", "d", 3.0, WaveRule(2, 10, 100), "dating"),  # another scope: its own alert
        WaveRecord("c", "e", 500.0, long_window, "archive"),  # 5 within 1,000 s (kept that long): a wave
        WaveRecord("c", "f", 501.0),  # the fleet's 10 s window: 2 items, no wave
    ]
    expected = [WaveState(1, False, True), WaveState(2, True, True), WaveState(3, True, False),
                WaveState(4, True, True), WaveState(5, True, True), WaveState(2, False, True)]
    redis_counter = RedisWaveCounter(settings.model_copy(update={"key_prefix": settings.key_prefix + "r:"}), fleet)
    try:
        assert await redis_counter.record_many(items, keep_s=1000) == expected
    finally:
        await redis_counter.close()
    assert await InMemoryWaveCounter(fleet).record_many(items, keep_s=1000) == expected
    # without keep_s, the fleet's 10 s window is the longest in use when only fleet records come: old items go
    trimmed = InMemoryWaveCounter(fleet)
    await trimmed.record_many(items[:4])
    assert (await trimmed.record_many([WaveRecord("c", "g", 500.0)]))[0].count == 1
