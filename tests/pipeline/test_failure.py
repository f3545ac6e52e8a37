"""The failure policies: jittered capped backoff, Redis degrades, Milvus holds then resumes, permanent is fatal."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from vitguard.errors import ConfigError, FatalError, ServiceUnavailableError
from vitguard.health import HealthState, liveness, readiness
from vitguard.pipeline.runtime.failure import Backoff, MilvusPolicy, RedisPolicy


def test_backoff_is_capped_and_jittered_downwards() -> None:
    b = Backoff(0.5, 4.0, jitter=0.5)
    assert b.delay(1, lambda: 0.0) == 0.5 and b.delay(10, lambda: 0.0) == 4.0
    assert b.delay(10, lambda: 1.0) == 2.0
    with pytest.raises(ValueError):
        b.delay(0)


async def test_redis_failure_returns_the_default_and_skips_redis_for_a_while() -> None:
    health = HealthState()
    policy = RedisPolicy(health, skip_s=60)
    calls = 0

    async def down() -> set[str]:
        nonlocal calls
        calls += 1
        raise ServiceUnavailableError("redis down")

    assert await policy.call("seen_events", down, set()) == set()
    assert await policy.call("seen_events", down, {"x"}) == {"x"}
    assert calls == 1 and health.redis_error and "redis down" in health.redis_error


async def test_calls_in_flight_when_redis_goes_away_log_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    policy = RedisPolicy(HealthState(), skip_s=60)
    gate = asyncio.Event()

    async def failing() -> set[str]:
        await gate.wait()
        raise ConnectionError("connection refused")

    calls = [asyncio.ensure_future(policy.call("seen_events", failing, set())) for _ in range(30)]
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="vitguard.pipeline.runtime.failure"):
        gate.set()
        assert await asyncio.gather(*calls) == [set()] * 30
    assert len([r for r in caplog.records if "going on without it" in r.getMessage()]) == 1


async def test_milvus_holds_until_it_answers_pausing_and_resuming_consumption() -> None:
    health = HealthState()
    holds: list[bool] = []
    failures = 3

    def flaky() -> str:
        nonlocal failures
        if failures:
            failures -= 1
            raise ServiceUnavailableError("milvus down")
        return "ok"

    with ThreadPoolExecutor(1) as pool:
        policy = MilvusPolicy(health, pool, backoff=Backoff(0.001, 0.002), call_timeout_s=5, on_hold=holds.append)
        assert await policy.call("upsert", flaky) == "ok"
    assert holds == [True, False] and health.milvus_failing_since is None


async def test_a_hung_milvus_call_counts_as_a_failure_after_the_deadline() -> None:
    import threading

    release = threading.Event()
    attempts = 0
    health = HealthState()

    def hangs_once() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            release.wait(5)
        return "ok"

    with ThreadPoolExecutor(2) as pool:
        policy = MilvusPolicy(health, pool, backoff=Backoff(0.001, 0.002), call_timeout_s=0.2)
        assert await policy.call("search", hangs_once) == "ok"
        release.set()
    assert attempts == 2


async def test_a_permanent_milvus_error_is_fatal() -> None:
    def mismatch() -> None:
        raise ConfigError("collection has dim 1024, the model gives 192")

    with ThreadPoolExecutor(1) as pool:
        policy = MilvusPolicy(HealthState(), pool, backoff=Backoff(0.001, 0.002), call_timeout_s=5)
        with pytest.raises(FatalError, match="dim 1024"):
            await policy.call("ensure_collection", mismatch)


async def test_a_start_up_check_tries_milvus_once_fatal_only_when_permanent() -> None:
    import threading

    release = threading.Event()
    calls: list[str] = []

    def down() -> None:
        calls.append("down")
        raise ServiceUnavailableError("connection refused")

    def hangs() -> None:
        calls.append("hangs")
        release.wait(5)

    def refused() -> None:
        raise ConfigError("the Milvus Lite file m.db is in use by another process")

    health, holds = HealthState(), []
    with ThreadPoolExecutor(2) as pool:
        policy = MilvusPolicy(health, pool, backoff=Backoff(0.001, 0.002), call_timeout_s=5, on_hold=holds.append)
        assert await policy.once("ensure_collection", lambda: "vitguard_m", timeout_s=1) == "vitguard_m"
        assert await policy.once("ensure_collection", down, timeout_s=1) is None
        started = time.monotonic()
        assert await policy.once("ensure_collection", hangs, timeout_s=0.2) is None
        assert time.monotonic() - started < 1.0
        release.set()
        with pytest.raises(FatalError, match="in use by another process"):
            await policy.once("ensure_collection", refused, timeout_s=1)
    assert calls == ["down", "hangs"]  # one attempt each, no retry loop
    assert holds == [] and health.milvus_failing_since is None  # nothing is held at start-up


async def test_a_start_up_redis_check_is_fatal_only_for_a_refusal() -> None:
    async def refused() -> None:
        raise ConfigError("Redis at 127.0.0.1:6379 refused vitguard (invalid username-password pair)")

    async def down() -> None:
        raise ServiceUnavailableError("Redis ping failed: ConnectionError: connection refused")

    health = HealthState()
    policy = RedisPolicy(health, timeout_s=1)
    await policy.once("ping", down)  # Redis down at start-up: the worker starts degraded, and says so
    assert health.redis_degraded and "connection refused" in (health.redis_error or "")
    with pytest.raises(FatalError, match="refused vitguard"):
        await policy.once("ping", refused)


async def test_redis_stays_degraded_until_a_call_succeeds_however_long_it_is_down() -> None:
    """Issue 30: /readyz said "degraded" for the 5 s after a failed call, then "ok" with Redis still down."""
    health = HealthState()
    policy = RedisPolicy(health, skip_s=0.05, timeout_s=1)
    up = False

    async def call() -> str:
        if not up:
            raise ServiceUnavailableError("Redis seen_events failed: ConnectionError: refused")
        return "answer"

    assert await policy.call("seen_events", call, "default") == "default"
    for _ in range(3):  # skipped calls and failed retries alike keep it degraded
        await asyncio.sleep(0.06)
        assert await policy.call("seen_events", call, "default") == "default"
        probe = readiness(health, time.monotonic() + 3600, broker_reachable=True, milvus_reachable=True,
                          publish_stuck_s=30)
        assert probe.detail["redis"] == "degraded" and "refused" in str(probe.detail["redis_error"])
    up = True
    await asyncio.sleep(0.06)
    assert await policy.call("seen_events", call, "default") == "answer"
    assert not health.redis_degraded and health.redis_error is None


def test_readiness_waits_for_the_group_join_and_says_how_long_it_has_taken() -> None:
    """Issue 30: /readyz said ready at 5 s; the consumer got its partitions at 22-23 s."""
    h = HealthState(model_loaded=True, agent_running=True, started_at=10.0)
    probe = readiness(h, 32.0, broker_reachable=True, milvus_reachable=True, publish_stuck_s=30)
    assert not probe.ok and probe.reasons == ("joining the consumer group for 22s",) and not probe.detail["joined"]
    h.joined_at = 33.0
    probe = readiness(h, 34.0, broker_reachable=True, milvus_reachable=True, publish_stuck_s=30)
    assert probe.ok and probe.detail["joined"]


def test_readiness_says_why_and_redis_never_gates_it() -> None:
    h = HealthState(model_loaded=True, agent_running=True, joined_at=1.0)
    assert readiness(h, 100.0, broker_reachable=True, milvus_reachable=True, publish_stuck_s=30).ok
    h.redis_degraded = True
    probe = readiness(h, 100.0, broker_reachable=True, milvus_reachable=True, publish_stuck_s=30)
    assert probe.ok and probe.detail["redis"] == "degraded"
    h.milvus_failing_since, h.milvus_error = 90.0, "upsert: timeout"
    probe = readiness(h, 100.0, broker_reachable=False, milvus_reachable=True, publish_stuck_s=30)
    assert not probe.ok and any("milvus" in r for r in probe.reasons) and "broker unreachable" in probe.reasons
    h.milvus_failing_since = None
    h.publish_failing_since = 60.0
    assert not readiness(h, 100.0, broker_reachable=True, milvus_reachable=True, publish_stuck_s=30).ok
    assert readiness(h, 80.0, broker_reachable=True, milvus_reachable=True, publish_stuck_s=30).ok


def test_liveness_fails_when_wedged_or_fatal_not_when_idle() -> None:
    h = HealthState(model_loaded=True, agent_running=True, last_progress=0.0)
    assert liveness(h, 1000.0, 120).ok  # idle: nothing waiting
    h.in_flight = 3
    assert not liveness(h, 1000.0, 120).ok and liveness(h, 100.0, 120).ok
    h.in_flight, h.fatal = 0, "boom"
    assert not liveness(h, 1.0, 120).ok


def test_liveness_keeps_a_clock_for_the_stream_and_one_for_requests() -> None:
    h = HealthState(model_loaded=True, agent_running=True, in_flight=2, last_progress=0.0,
                    last_request_progress=0.0)
    h.progressed(request=True)  # requests answered: the stream's clock does not move
    assert h.last_progress == 0.0
    probe = liveness(h, h.last_request_progress + 1000, 120)
    assert not probe.ok and probe.reasons[0].startswith("wedged: 2 event(s) waiting")
    h.in_flight, h.requests_in_flight = 0, 1
    probe = liveness(h, h.last_request_progress + 1000, 120)
    assert not probe.ok and probe.reasons == ("wedged: 1 /classify request(s) waiting, none answered for 1000s",)
    assert liveness(h, h.last_request_progress + 60, 120).ok


def test_a_stream_held_for_a_dependency_is_live_while_its_policy_retries() -> None:
    h = HealthState(model_loaded=True, agent_running=True, in_flight=5, last_progress=0.0,
                    milvus_failing_since=10.0, milvus_error="upsert: TimeoutError", last_retry=990.0)
    probe = liveness(h, 1000.0, 120)
    assert probe.ok and probe.detail["holding"] == "milvus: upsert: TimeoutError"
    h.last_retry = 800.0  # the attempts stopped: the hold itself is wedged
    probe = liveness(h, 1000.0, 120)
    assert not probe.ok and "held for milvus: upsert: TimeoutError, no attempt for 200s" in probe.reasons[0]
    h.milvus_failing_since, h.publish_failing_since, h.publish_error = None, 900.0, "KafkaTimeoutError"
    h.last_retry = 999.0
    assert liveness(h, 1000.0, 120).detail["holding"] == "publishing: KafkaTimeoutError"
    assert liveness(h, 1000.0, 120).ok


def test_work_arriving_at_an_idle_worker_starts_the_clock_again() -> None:
    h = HealthState(model_loaded=True, agent_running=True, last_progress=0.0, last_request_progress=0.0)
    h.waiting(stream=1, requests=1)  # an hour of no traffic, then an event and a request
    now = time.monotonic()
    assert liveness(h, now, 120).ok and h.last_progress >= now - 1 and h.last_request_progress >= now - 1
    h.last_progress = 0.0
    h.waiting(stream=2, requests=1)  # more work while some waits: the clocks run on
    assert h.last_progress == 0.0 and not liveness(h, now, 120).ok

