"""Cluster rows (vitguard.stores.cluster_rows) against a real redis-server: what a listing at any scale reads."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from vitguard.errors import ServiceUnavailableError
from vitguard.settings import PolicySettings, RedisSettings
from vitguard.stores import RedisWaveCounter, WaveRecord
from vitguard.stores.cluster_rows import ClusterSighting, RedisClusterRows

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


@pytest.fixture
def settings(redis_url: str, redis_prefix: str) -> RedisSettings:
    return RedisSettings(url=redis_url, key_prefix=redis_prefix)


@pytest.fixture
async def rows(settings: RedisSettings) -> AsyncIterator[RedisClusterRows]:
    store = RedisClusterRows(settings)
    yield store
    await store.close()


def sighting(cluster: str, item: str, uploaded_ms: int, seen_ms: int, tenant: str = "t1") -> ClusterSighting:
    return ClusterSighting(cluster, item, tenant, uploaded_ms, seen_ms)


async def test_a_row_holds_size_first_last_tenants_and_latest_whatever_the_arrival_order(
    rows: RedisClusterRows, settings: RedisSettings
) -> None:
    now = 1_000 * DAY_MS
    await rows.record_many([
        sighting("c-a", "a2", now - 50, now - 40),
        sighting("c-a", "a1", now - 90, now - 30, tenant="t2"),  # uploaded earlier, answered later
        sighting("c-b", "b1", now - 10, now - 20),
    ])
    await rows.record_many([sighting("c-a", "a3", now - 5, now - 10),
                            sighting("c-a", "a2", now - 50, now - 9)])  # a2 again: counted once
    waves = RedisWaveCounter(settings, PolicySettings())
    try:
        await waves.record_many([WaveRecord("c-a", "a3", now / 1000 - 1), WaveRecord("c-a", "a2", now / 1000 - 500)])
    finally:
        await waves.close()
    listed = await rows.latest(limit=10, now_s=now / 1000, window_s=60)
    assert [r.cluster_id for r in listed] == ["c-a", "c-b"]  # by latest activity (answered), newest first
    a = listed[0]
    assert (a.size, a.first_ms, a.last_ms, a.first_id) == (3, now - 90, now - 5, "a1")  # a2 counted once
    assert a.latest == ("a2", "a3", "a1") and a.tenants == ("t1", "t2") and a.tenant_count == 2
    assert a.growth == 1  # a2's wave record is outside the 60 s window
    assert [r.cluster_id for r in await rows.latest(limit=1, now_s=now / 1000, window_s=60)] == ["c-a"]
    assert await rows.count() == 2


async def test_rows_leave_the_index_and_expire_after_their_ttl(settings: RedisSettings, redis_url: str) -> None:
    short = RedisClusterRows(settings.model_copy(update={"cluster_rows_ttl_s": 60}))
    raw = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        now = 1_000 * DAY_MS
        await short.record_many([sighting("c-old", "o1", now - 120_000, now - 120_000)])
        assert 0 < await raw.ttl(short.keys("c-old")[0]) <= 60
        await short.record_many([sighting("c-new", "n1", now, now)])  # two minutes later: c-old is past 60 s
        assert [r.cluster_id for r in await short.latest(limit=5, now_s=now / 1000, window_s=60)] == ["c-new"]
        off = RedisClusterRows(settings.model_copy(update={"cluster_rows_ttl_s": 0}))
        await off.record_many([sighting("c-off", "x", now, now)])  # rows turned off: nothing written
        assert [r.cluster_id for r in await short.latest(limit=5, now_s=now / 1000, window_s=60)] == ["c-new"]
        await off.close()
    finally:
        await short.close()
        await raw.aclose()


async def test_redis_down_is_a_service_error() -> None:
    gone = RedisClusterRows(RedisSettings(url="redis://127.0.0.1:1/0", socket_timeout_s=0.2))
    try:
        with pytest.raises(ServiceUnavailableError):
            await gone.record_many([sighting("c", "x", 1, 1)])
        with pytest.raises(ServiceUnavailableError):
            await gone.latest(limit=5, now_s=1.0, window_s=60)
    finally:
        await gone.close()
