"""Retry with capped exponential backoff, without sleeping."""

from __future__ import annotations

import pytest

from vitguard.errors import ConfigError, ServiceUnavailableError
from vitguard.settings import MilvusSettings
from vitguard.stores import backoff_delay, backoff_schedule, retry_with_backoff


def test_delays_double_and_are_capped() -> None:
    assert [backoff_delay(a, 0.5, 3.0) for a in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert backoff_delay(10_000, 0.5, 30.0) == 30.0  # no overflow for huge attempt numbers
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5, 3.0)


def test_schedule_has_one_delay_between_each_pair_of_attempts() -> None:
    s = MilvusSettings(retry_attempts=5, retry_backoff_s=0.25, retry_backoff_max_s=1.0)
    assert backoff_schedule(s) == [0.25, 0.5, 1.0, 1.0]
    assert backoff_schedule(MilvusSettings(retry_attempts=1)) == []


def test_retries_unavailable_until_success_and_reports_each_retry() -> None:
    s = MilvusSettings(retry_attempts=5, retry_backoff_s=0.1, retry_backoff_max_s=10.0)
    calls: list[int] = []
    slept: list[float] = []
    seen: list[tuple[int, float]] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServiceUnavailableError("milvus down")
        return "ok"

    result = retry_with_backoff(flaky, s, on_retry=lambda a, e, d: seen.append((a, d)), sleep=slept.append)
    assert result == "ok"
    assert len(calls) == 3
    assert slept == [0.1, 0.2]
    assert seen == [(1, 0.1), (2, 0.2)]


def test_gives_up_after_the_configured_attempts_with_the_last_error() -> None:
    s = MilvusSettings(retry_attempts=3, retry_backoff_s=1.0, retry_backoff_max_s=1.5)
    slept: list[float] = []
    n = 0

    def down() -> None:
        nonlocal n
        n += 1
        raise ServiceUnavailableError(f"attempt {n}")

    with pytest.raises(ServiceUnavailableError, match="attempt 3"):
        retry_with_backoff(down, s, sleep=slept.append)
    assert slept == [1.0, 1.5]


def test_other_errors_are_not_retried() -> None:
    slept: list[float] = []

    def broken() -> None:
        raise ConfigError("dimension mismatch")

    with pytest.raises(ConfigError):
        retry_with_backoff(broken, MilvusSettings(), sleep=slept.append)
    assert slept == []
