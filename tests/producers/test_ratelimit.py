"""RateLimiter: a token bucket checked on a fake clock (no sleeping in tests)."""

from __future__ import annotations

import pytest

from tests.harness.clock import ManualClock as FakeClock
from vitguard.producers.ratelimit import RateLimiter


def test_rate_is_never_exceeded_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, burst=3, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(53):
        limiter.acquire()
    # 3 free (burst), then 50 paced at 10/s -> 5 seconds
    assert clock.now - start == pytest.approx(5.0)
    assert clock.slept[:1] == [pytest.approx(0.1)]


def test_idle_time_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, burst=2, clock=clock, sleep=clock.sleep)
    clock.now += 60  # a long idle spell
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(0.5)


def test_oversleeping_is_credited() -> None:
    clock = FakeClock()

    def lazy_sleep(seconds: float) -> None:
        clock.now += seconds * 3  # the OS woke us late

    limiter = RateLimiter(1.0, burst=2, clock=clock, sleep=lazy_sleep)
    limiter.acquire()
    limiter.acquire()
    limiter.acquire()  # waits 1 s but sleeps 3 s: the bucket refills to its burst of 2, one is spent
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(1.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_bad_parameters_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst)
