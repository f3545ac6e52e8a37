"""Scale-out, proven locally: two ``vitguard worker`` processes in one consumer group share a
multi-partition input topic, every event gets exactly one verdict, and when one worker is stopped the
other takes over its partitions with nothing lost.

Each worker is a real subprocess started the way users start it (``python -m vitguard worker``, settings
from the environment) against the session's real broker and Redis. The workers share Redis (redelivery
guard, verdict cache) but not Milvus: Milvus Lite is an embedded database file that one process owns, so
each worker gets its own file here; in production every worker points ``VITGUARD_MILVUS_URI`` at one
Milvus server (see deploy/OPERATING.md). The model is the bundled open_nsfw (offline, fast).

Evidence that both workers own partitions: every partition carries events, and each worker's own
``/metrics`` counts consumed events (one registry per process). Evidence of the takeover: after worker A
has left, events land on every partition again, so also on A's former partitions, and all of them get
exactly one verdict, from B.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vitguard.schemas.events import ImageEvent
from vitguard.testing import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
START_TIMEOUT_S = 240.0
VERDICT_TIMEOUT_S = 180.0


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as resp:  # noqa: S310 - loopback URL
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def events_consumed(self) -> float:
        status, body = self.get("/metrics")
        assert status == 200, f"{self.name} /metrics answered {status}"
        for family in text_string_to_metric_families(body):
            if family.name == "vitguard_events_consumed":
                return sum(s.value for s in family.samples if s.name == "vitguard_events_consumed_total")
        return 0.0

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.5)
        pytest.fail(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def _worker_env(base: dict[str, str], port: int, milvus_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITGUARD_")}
    env.update(base)
    env["VITGUARD_WEB_PORT"] = str(port)
    env["VITGUARD_MILVUS_URI"] = str(milvus_path)
    return env


@dataclass
class WorkerGroup:
    """Starts worker subprocesses that share one consumer group and one set of topics."""

    topics: dict[str, str]
    start: Callable[[str], WorkerProcess]


@pytest.fixture
def workers(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    new_topic: Callable[..., str],
    sample_photos: list[Path],
    tmp_path: Path,
) -> Iterator[WorkerGroup]:
    """Worker subprocesses sharing one consumer group and one set of topics; all stopped at the end."""
    topics = {
        "VITGUARD_TOPIC_IMAGES": new_topic(partitions=PARTITIONS, prefix="scale-in"),
        "VITGUARD_TOPIC_VERDICTS": new_topic(partitions=2, prefix="scale-verdicts"),
        "VITGUARD_TOPIC_ALERTS": new_topic(partitions=1, prefix="scale-alerts"),
        "VITGUARD_TOPIC_DEAD_LETTERS": new_topic(partitions=1, prefix="scale-dlq"),
    }
    base = {
        **topics,
        "VITGUARD_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "VITGUARD_KAFKA_CONSUMER_GROUP": f"scale-{uuid.uuid4().hex[:8]}",
        # The local broker holds every group join for the whole rebalance timeout: keep it short.
        "VITGUARD_KAFKA_REBALANCE_TIMEOUT_S": "3",
        "VITGUARD_KAFKA_SESSION_TIMEOUT_S": "10",
        "VITGUARD_REDIS_URL": redis_url,
        "VITGUARD_REDIS_KEY_PREFIX": redis_prefix,
        "VITGUARD_MODEL_SPEC": "opennsfw",
        "VITGUARD_MODEL_DEVICE": "cpu",
        "VITGUARD_MODEL_THREADS": "1",
        "VITGUARD_BATCH_MAX_SIZE": "4",
        "VITGUARD_BATCH_MAX_WAIT_S": "0.2",
        "VITGUARD_FETCH_FILE_ROOT": str(sample_photos[0].parent),
        "VITGUARD_LOG_LEVEL": "INFO",
    }
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        port = services.free_port()
        log_path = workdir / "worker.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "vitguard", "worker"],
                cwd=workdir,  # Faust keeps its data directory in the working directory
                env=_worker_env(base, port, workdir / "milvus.db"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(name, process, port, log_path)
        started.append(worker)
        return worker

    try:
        yield WorkerGroup(topics, start)
    finally:
        for worker in started:
            worker.stop(30)


def _publish(bootstrap: str, topic: str, photos: list[Path], count: int, tag: str) -> list[str]:
    """``count`` events spread evenly over every partition; returns their event ids."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    ids: list[str] = []
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for i in range(count):
        photo = photos[i % len(photos)]
        event = ImageEvent(
            event_id=f"{tag}-{i}-{uuid.uuid4().hex[:8]}",
            content_id=f"{tag}-content-{i}",
            image_ref=photo.as_uri(),
            metadata={"phase": tag},
        )
        producer.produce(
            topic,
            key=event.content_id.encode(),
            value=event.model_dump_json().encode(),
            partition=i % PARTITIONS,
            on_delivery=on_delivery,
        )
        ids.append(event.event_id)
    assert producer.flush(30) == 0
    assert not errors, errors
    return ids


def _collect(bootstrap: str, topics: list[str], want: set[str], timeout_s: float) -> dict[str, Counter[str]]:
    """Read ``topics`` from the start until every id in ``want`` has an output (or time runs out).

    Returns, per topic, how many messages each event id got.
    """
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"scale-reader-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe(topics)
    seen: dict[str, Counter[str]] = {t: Counter() for t in topics}
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                event_id = json.loads(msg.value())["event_id"]
                seen[msg.topic()][event_id] += 1
            answered = set().union(*seen.values())
            if want <= answered:
                # Keep reading a little longer so a duplicate verdict, if any, is caught too.
                settle_until = settle_until or time.monotonic() + 5.0
                if time.monotonic() >= settle_until:
                    break
    finally:
        consumer.close()
    return seen


@pytest.mark.timeout(900)
def test_two_workers_share_partitions_and_one_takes_over(
    workers: WorkerGroup, kafka_bootstrap: str, sample_photos: list[Path]
) -> None:
    topics = workers.topics
    verdict_topic, dlq_topic = topics["VITGUARD_TOPIC_VERDICTS"], topics["VITGUARD_TOPIC_DEAD_LETTERS"]
    a, b = workers.start("worker-a"), workers.start("worker-b")
    a.wait_ready(START_TIMEOUT_S)
    b.wait_ready(START_TIMEOUT_S)

    # Phase 1: both workers in the group. Publish in rounds until both have consumed (the group settles
    # a few rebalance timeouts after the second member joins); every event must get exactly one verdict.
    phase1: list[str] = []
    deadline = time.monotonic() + VERDICT_TIMEOUT_S
    while True:
        phase1 += _publish(kafka_bootstrap, topics["VITGUARD_TOPIC_IMAGES"], sample_photos, 2 * PARTITIONS,
                           f"p1r{len(phase1)}")
        seen = _collect(kafka_bootstrap, [verdict_topic, dlq_topic], set(phase1), VERDICT_TIMEOUT_S)
        missing = set(phase1) - set(seen[verdict_topic])
        assert not missing, f"{len(missing)} events without a verdict; A:\n{a.log_tail()}\nB:\n{b.log_tail()}"
        if (a.events_consumed() > 0 and b.events_consumed() > 0) or time.monotonic() > deadline:
            break
    print(f"phase 1: {len(phase1)} events; consumed by A {a.events_consumed():.0f}, by B {b.events_consumed():.0f}")
    assert a.events_consumed() > 0, f"worker A never got a partition:\n{a.log_tail()}"
    assert b.events_consumed() > 0, f"worker B never got a partition:\n{b.log_tail()}"
    duplicates = {e: n for e, n in seen[verdict_topic].items() if n != 1}
    assert not duplicates, f"events with more than one verdict: {duplicates}"
    assert not seen[dlq_topic], f"unexpected dead letters: {dict(seen[dlq_topic])}"

    # Phase 2: stop A gracefully; B must take over all partitions, A's included.
    consumed_before = b.events_consumed()
    assert a.stop(60) == 0, f"worker A did not shut down cleanly:\n{a.log_tail()}"
    phase2 = _publish(kafka_bootstrap, topics["VITGUARD_TOPIC_IMAGES"], sample_photos, 3 * PARTITIONS, "p2")
    seen = _collect(kafka_bootstrap, [verdict_topic, dlq_topic], set(phase1) | set(phase2), VERDICT_TIMEOUT_S)
    missing = set(phase2) - set(seen[verdict_topic])
    assert not missing, f"{len(missing)} events lost after worker A left:\n{b.log_tail()}"
    duplicates = {e: n for e, n in seen[verdict_topic].items() if n != 1}
    assert not duplicates, f"events with more than one verdict: {duplicates}"
    assert not seen[dlq_topic], f"unexpected dead letters: {dict(seen[dlq_topic])}"
    assert set(seen[verdict_topic]) == set(phase1) | set(phase2), "verdicts for events nobody sent"
    print(f"phase 2: {len(phase2)} events after A left; B consumed {b.events_consumed() - consumed_before:.0f} more")
    assert b.events_consumed() - consumed_before >= len(phase2), "B did not consume A's former partitions"
    assert b.process.poll() is None, f"worker B died:\n{b.log_tail()}"
