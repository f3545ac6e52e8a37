"""Group commit on its own: an idle lookup goes out at once, keys asked meanwhile go out together, errors and
cancellations reach the right callers. A Redis-backed check of the front half's two lookups is at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from vitguard.pipeline.runtime.coalesce import Coalescer


class Lookup:
    """Records each call; returns ``key * 10`` for even keys; blocks on ``gate`` while it is clear."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, keys: Sequence[int]) -> Mapping[int, int]:
        self.calls.append(list(keys))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {k: k * 10 for k in keys if k % 2 == 0}


def held(**limits: int) -> tuple[Lookup, Coalescer[int, int]]:
    """A coalescer over a lookup that blocks until its gate is set."""
    lookup = Lookup()
    lookup.gate.clear()
    return lookup, Coalescer(lookup, **limits)


async def in_flight(c: Coalescer[int, int], key: int) -> asyncio.Future[int | None]:
    """Ask for ``key`` and let its lookup go out (it stays in flight while the gate is clear)."""
    asked = asyncio.ensure_future(c.get(key))
    await asyncio.sleep(0.01)
    return asked


async def test_one_key_alone_goes_out_on_the_next_turn_and_missing_keys_are_none() -> None:
    lookup = Lookup()
    c = Coalescer(lookup)
    assert await asyncio.wait_for(c.get(2), 1) == 20
    assert await asyncio.wait_for(c.get(3), 1) is None
    assert lookup.calls == [[2], [3]]
    assert (c.lookups, c.keys_looked_up) == (2, 2)


async def test_keys_asked_while_a_lookup_is_in_flight_go_out_together() -> None:
    lookup, c = held()
    first = await in_flight(c, 0)
    assert lookup.calls == [[0]]
    later = [asyncio.ensure_future(c.get(k)) for k in (1, 2, 3, 2)]  # 2 twice: one key, two callers
    await asyncio.sleep(0.01)
    assert lookup.calls == [[0]], "nothing else may go out while the first lookup is in flight"
    lookup.gate.set()
    assert await asyncio.wait_for(first, 1) == 0
    assert await asyncio.wait_for(asyncio.gather(*later), 1) == [None, 20, None, 20]
    assert lookup.calls == [[0], [1, 2, 3]]
    assert (c.lookups, c.keys_looked_up) == (2, 4)


async def test_batches_are_cut_at_max_keys() -> None:
    lookup, c = held(max_keys=3, max_in_flight=2)
    tasks = [asyncio.ensure_future(c.get(k)) for k in range(8)]
    await asyncio.sleep(0.01)
    assert lookup.calls == [[0, 1, 2], [3, 4, 5]], "two in flight, three keys each"
    lookup.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [0, None, 20, None, 40, None, 60, None]
    assert lookup.calls[2:] == [[6, 7]]


async def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs() -> None:
    lookup, c = held()
    a = await in_flight(c, 0)
    b, d = asyncio.ensure_future(c.get(2)), asyncio.ensure_future(c.get(4))
    await asyncio.sleep(0.01)
    lookup.fail = ConnectionError("gone")
    lookup.gate.set()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(a, 1)
    for t in (b, d):
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(t, 1)
    lookup.fail = None
    assert await asyncio.wait_for(c.get(6), 1) == 60, "a failed lookup must not wedge the coalescer"


async def test_a_cancelled_caller_is_skipped_and_the_others_get_their_answers() -> None:
    lookup, c = held()
    first = await in_flight(c, 0)
    gone = asyncio.ensure_future(c.get(1))  # waits behind the first, then is cancelled before it goes out
    same_key = [asyncio.ensure_future(c.get(2)), asyncio.ensure_future(c.get(2))]
    await asyncio.sleep(0.01)
    gone.cancel()
    same_key[0].cancel()
    lookup.gate.set()
    assert await asyncio.wait_for(first, 1) == 0
    assert await asyncio.wait_for(same_key[1], 1) == 20
    assert gone.cancelled() and same_key[0].cancelled()
    assert lookup.calls == [[0], [2]], "a key whose every caller left is not looked up"


async def test_a_caller_cancelled_during_its_lookup_does_not_disturb_the_rest() -> None:
    lookup, c = held()
    a, b = asyncio.ensure_future(c.get(2)), asyncio.ensure_future(c.get(4))
    await asyncio.sleep(0.01)
    assert lookup.calls == [[2, 4]]
    a.cancel()
    lookup.gate.set()
    assert await asyncio.wait_for(b, 1) == 40
    assert a.cancelled()


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        Coalescer(Lookup(), max_keys=0)
    with pytest.raises(ValueError):
        Coalescer(Lookup(), max_in_flight=0)


@pytest.mark.integration
async def test_front_half_style_lookups_against_a_real_redis_and_a_dead_one(redis_url: str, redis_prefix: str) -> None:
    from vitguard.health import HealthState
    from vitguard.pipeline.runtime.failure import RedisPolicy
    from vitguard.settings import RedisSettings
    from vitguard.stores import RedisDedupStore
    from vitguard.testing import services

    async def run(url: str) -> tuple[list[bool | None], Coalescer[str, bool]]:
        store = RedisDedupStore(RedisSettings(url=url, key_prefix=redis_prefix, socket_timeout_s=0.5))
        policy = RedisPolicy(HealthState())

        async def seen(ids: Sequence[str]) -> Mapping[str, bool]:
            return dict.fromkeys(await policy.call("seen_events", lambda: store.seen_events(ids), set()), True)

        try:
            if url == redis_url:
                await store.mark_events([f"e{i}" for i in range(0, 40, 3)])
            c: Coalescer[str, bool] = Coalescer(seen)
            return list(await asyncio.wait_for(asyncio.gather(*(c.get(f"e{i}") for i in range(40))), 10)), c
        finally:
            await store.close()

    got, c = await run(redis_url)
    assert got == [True if i % 3 == 0 else None for i in range(40)]
    assert (c.lookups, c.keys_looked_up) == (1, 40), "forty keys asked in one turn: one round trip"
    got, c = await run(f"redis://127.0.0.1:{services.free_port()}/0")
    assert got == [None] * 40, "Redis down: every caller gets the policy's default, none an error"
