"""The chaos suite: two real workers in one group under a seeded random schedule of faults.

While a few hundred events flow (good ones, poison pills over 1 MiB, malformed JSON, stalled, trickling and
slow loopback URLs), the schedule SIGKILLs a worker, makes the agent of one raise and the runner's completion
loop of one raise (the fault worker: both are fatal, exit code 1), kills Redis and freezes it, kills the
Milvus server (restarted on the same data directory) and freezes it. A supervisor restarts any worker that
exits, like an orchestrator. At the end:

* every published message has exactly one verdict or dead letter after deduplication by event id (dead
  letters of unparsable messages by source offset): zero lost, duplicates counted and printed;
* each answer is the right one for its kind (pills truncated dead letters, stalled URLs ``fetch_timeout``);
* no worker was stuck: outside fault windows (and a grace after each recovery) the longest time without any
  output is under :data:`STALL_BOUND_S`;
* ``/readyz`` named Milvus while it was down, and said ready at no point once the detection delay passed;
* the killed worker exited -9, the ones whose agent or runner loop raised exited 1, nothing else exited;
  SIGTERM at the end stops both with 0.

``VITGUARD_CHAOS_SEED`` replays a run (the seed is printed first).
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.accounting import TimedOutputReader, longest_stall
from tests.harness.chaos import ChaosRun, input_effects, make_schedule, stopping, table
from tests.harness.controls import ImageServer, RedisControl
from tests.harness.events import EventFactory
from vitguard.testing import services

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(600)]

FAULT_WORKER = Path(__file__).parents[1] / "faults" / "fault_worker.py"
EVENTS = 300
STREAM_S = 110.0
"""The events are published evenly over this long; the faults run meanwhile (and past it, if they must)."""
STALL_BOUND_S = 10.0
RECOVERY_GRACE_S = 15.0
"""After a fault has recovered (every worker ready again), a rebalance and the redelivered backlog may
still take this long before outputs flow again; outside it, no gap may exceed the bound."""
WEIGHTS = {
    "good": 0.75, "http": 0.06, "slow": 0.04, "stall": 0.03, "trickle": 0.03, "malformed": 0.03,
    "pill_binary": 0.02, "pill_corrupt_inline": 0.02, "pill_inline_too_large": 0.02,
}


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("VITGUARD_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"\nchaos seed: {value} (replay with VITGUARD_CHAOS_SEED={value})")
    return value


@pytest.fixture
def redis() -> Iterator[RedisControl]:
    control = RedisControl().start()
    try:
        yield control
    finally:
        control.stop()


def test_chaos(seed: int, service_settings: Callable[..., Any], new_topic: Callable[..., str], tmp_path: Path,
               redis: RedisControl, own_milvus_server: Any) -> None:
    milvus = own_milvus_server
    began = time.monotonic()
    with ImageServer(hold_s=30.0) as server:
        settings = service_settings(
            topics={"images": new_topic(4, "img"), "verdicts": new_topic(1, "verdicts"),
                    "alerts": new_topic(1, "alerts"), "dead_letters": new_topic(1, "dlq")},
            redis={"url": redis.url, "socket_timeout_s": 0.5},
            milvus={"uri": milvus.uri, "collection_prefix": f"chaos_{uuid.uuid4().hex[:8]}_",
                    "call_timeout_s": 2.0, "connect_timeout_s": 2.0, "load_timeout_s": 60.0,
                    "retry_backoff_s": 0.2, "retry_backoff_max_s": 2.0},
            model={"spec": "opennsfw"},
            fetch={"file_root": str(tmp_path / "images"), "allowed_networks": ["127.0.0.0/8"],
                   "connect_timeout_s": 2.0, "read_timeout_s": 4.0},
            batch={"max_size": 16},
            kafka={"session_timeout_s": 6.0},
            web={"host": "127.0.0.1", "port": services.free_port()},
            worker={"shutdown_timeout_s": 8.0},
        )
        # /livez reports a wedged worker (work waiting, nothing answered) after this long
        settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"stall_timeout_s": 20.0})})
        factory = EventFactory(tmp_path / "images", server, max_inline_bytes=settings.fetch.max_inline_bytes,
                               crash_marker=f"crash-{uuid.uuid4().hex[:8]}", seed=seed)
        events = factory.stream(EVENTS, WEIGHTS, seed)
        run = ChaosRun(settings, workers=2, redis=redis, milvus=milvus, fault_script=FAULT_WORKER,
                       crash_marker=factory.crash_marker, log_dir=tmp_path / "logs")
        with stopping(run.close):
            run.start()
            assert run.wait_ready(240), "\n".join(w.log_tail() for w in run.workers)
            schedule = make_schedule(seed, workers=len(run.workers), start_s=10.0)
            print("schedule:", ", ".join(f"{f.kind}@{f.at_s:g}s" for f in schedule))
            run.drive(events, schedule, duration_s=STREAM_S, factory=factory)
            accounting = run.drain(150.0)
            if accounting.lost:
                print(run.diagnose())
                again = TimedOutputReader.for_settings(settings)  # rule out the reader: read it all again
                with stopping(again.close):
                    again.poll(10.0)
                    print(f"re-read from the beginning: {run.ledger.account(again.outputs).describe()}")
            final_codes = run.stop()
    took = time.monotonic() - began

    output_times = run.reader.output_times
    stall_s, stall_at = longest_stall(output_times, run.fault_windows(RECOVERY_GRACE_S), run.started_at,
                                      max(output_times))
    rows = [*run.summary(), *input_effects(run.ledger, run.reader.outputs)]
    print("\n" + table(rows, ("fault", "count", "observed effect")))
    print(f"\naccounting: {accounting.describe()}")
    print(f"answers by kind: {dict(accounting.by_expect)}")
    print(f"longest stall outside fault windows: {stall_s:.1f}s (at +{stall_at - run.started_at:.0f}s); "
          f"bound {STALL_BOUND_S:g}s")
    print(f"worker exits: {[(round(t - run.started_at), i, c) for t, i, c in run.exits]}; final SIGTERM "
          f"codes {final_codes}; seed {seed}; {took:.0f}s in all")

    logs = "\n".join(f"--- worker {i}\n{w.log_tail(4000)}" for i, w in enumerate(run.workers))
    assert not accounting.lost, f"seed {seed}: {accounting.describe()}\n{logs}"
    assert not accounting.wrong, f"seed {seed}: {accounting.describe()}"
    assert all(r.ok for r in run.records), f"seed {seed}: {rows}"
    assert not run.unexpected_exits(), f"seed {seed}: {run.exits}\n{logs}"
    assert stall_s <= STALL_BOUND_S, f"seed {seed}: stuck {stall_s:.1f}s at +{stall_at - run.started_at:.0f}s"
    assert final_codes == [0] * len(run.workers), f"seed {seed}: {final_codes}\n{logs}"
