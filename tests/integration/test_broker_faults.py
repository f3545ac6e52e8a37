"""The Kafka broker itself failing under a running worker: frozen (a broker that stops answering: a long GC
pause, a hung disk, a network partition) for longer than the consumer's session, then answering again.

Each test runs its own broker (the session's is shared with every other test and must not be frozen), the
worker as a real process, and the chaos harness's accounting: every event published has a verdict or dead
letter once redeliveries are deduplicated by event id.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.accounting import Ledger, TimedOutputReader
from tests.harness.events import EventFactory
from tests.harness.processes import ChaosWorker, assert_probes_fast, readyz
from vitguard.testing import services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SHUTDOWN_TIMEOUT_S = 8.0
"""The workers' shutdown timeout (the ``worker_settings`` fixture reads it)."""


@pytest.fixture
def private_broker() -> Iterator[services.LocalService]:
    broker = services.start_broker()
    try:
        yield broker
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
        broker.stop()


@pytest.fixture
def kafka_bootstrap(private_broker: services.LocalService) -> str:
    """This module's tests talk to their own broker (the fixtures built on it follow)."""
    return private_broker.address


def wait_answered(out: TimedOutputReader, ledger: Ledger, worker: ChaosWorker, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.running:
        out.poll(0.5)
        if not ledger.account(out.outputs).lost:
            return
    raise AssertionError(f"{ledger.account(out.outputs).describe()}; worker running: {worker.running}; "
                         f"log:\n{worker.log_tail(6000)}")


def test_a_frozen_broker_fails_readiness_and_the_worker_answers_everything_once_it_thaws(
    worker_settings: Callable[..., Any], tmp_path: Path, workers: list[ChaosWorker],
    private_broker: services.LocalService,
) -> None:
    settings = worker_settings()
    factory = EventFactory(tmp_path / "images")
    ledger = Ledger(settings.kafka, settings.topics.images)
    ledger.publish([factory.make("good") for _ in range(4)])
    worker = ChaosWorker(settings).start()
    workers.append(worker)
    with TimedOutputReader.for_settings(settings) as out:
        wait_answered(out, ledger, worker, 120.0)
        assert readyz(settings.web.port)[0] == 200

        ledger.publish([factory.make("good") for _ in range(8)])  # in flight when the broker stops
        os.kill(private_broker.process.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        status, reasons = 200, []
        while time.monotonic() - frozen_at < 25.0:
            status, reasons = readyz(settings.web.port)
            if status == 503:
                break
            time.sleep(0.5)
        print(f"/readyz {status} {time.monotonic() - frozen_at:.1f}s after the freeze: {reasons}")
        assert status == 503 and "broker unreachable" in reasons, (status, reasons)
        assert_probes_fast(settings.web.port, "the broker hangs")
        time.sleep(max(0.0, 25.0 - (time.monotonic() - frozen_at)))  # well past the 6 s session
        assert worker.running, worker.log_tail(6000)
        os.kill(private_broker.process.pid, signal.SIGCONT)
        thawed_at = time.monotonic()

        ledger.publish([factory.make("good") for _ in range(4)])  # after the thaw
        wait_answered(out, ledger, worker, 120.0)
        print(f"everything answered {time.monotonic() - thawed_at:.1f}s after the thaw")
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and readyz(settings.web.port)[0] != 200:
            time.sleep(0.5)
        assert readyz(settings.web.port)[0] == 200, readyz(settings.web.port)
    accounting = ledger.account(out.outputs)
    print(f"accounting: {accounting.describe()}")
    assert not accounting.lost and not accounting.wrong, accounting.describe()
    assert worker.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0, worker.log_tail(6000)


def test_sigterm_with_the_broker_frozen_mid_stream_stops_in_time_and_a_new_worker_answers_the_rest(
    worker_settings: Callable[..., Any], tmp_path: Path, workers: list[ChaosWorker],
    private_broker: services.LocalService,
) -> None:
    settings = worker_settings(worker={"stall_timeout_s": 10.0, "publish_stuck_s": 5.0})
    factory = EventFactory(tmp_path / "images")
    ledger = Ledger(settings.kafka, settings.topics.images)
    ledger.publish([factory.make("good") for _ in range(2)])
    first = ChaosWorker(settings).start()
    workers.append(first)
    with TimedOutputReader.for_settings(settings) as out:
        wait_answered(out, ledger, first, 120.0)
        ledger.publish([factory.make("good") for _ in range(200)])
        while len(out.first_answer_at) < 10 and first.running:
            out.poll(0.05)
        os.kill(private_broker.process.pid, signal.SIGSTOP)  # mid-stream: batches decoded, outputs unsent
        answered_before = len(out.first_answer_at)
        time.sleep(20.0)  # past the session, publish_stuck_s and stall_timeout_s
        live = first.running
        status, reasons = readyz(settings.web.port)
        print(f"{answered_before} answered before the freeze; after 20 s frozen: running {live}, "
              f"/readyz {status} {reasons}")
        stopping = time.monotonic()
        code = first.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 20)
        took = time.monotonic() - stopping
        print(f"SIGTERM with the broker frozen: exit code {code} after {took:.1f}s")
        os.kill(private_broker.process.pid, signal.SIGCONT)
        assert live, first.log_tail(6000)
        assert status == 503 and "broker unreachable" in reasons, (status, reasons)
        stuck = [r for r in reasons if r.startswith("publishing stuck")]  # the outputs of the batch in flight
        assert stuck and "no acknowledgement from the broker within" in stuck[0], reasons
        assert took <= SHUTDOWN_TIMEOUT_S + 5, first.log_tail(6000)
        assert code in (0, 143), first.log_tail(6000)

        second = ChaosWorker(settings, log_path=first.log_path).start()
        workers.append(second)
        wait_answered(out, ledger, second, 180.0)
    accounting = ledger.account(out.outputs)
    print(f"accounting: {accounting.describe()}")
    assert not accounting.lost and not accounting.wrong, accounting.describe()
    assert second.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0, second.log_tail(6000)
