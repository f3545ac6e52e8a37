"""The failure model of issue 10 against real worker processes: poison pills, an agent crash, a hung Milvus
server, a stalled URL.

Each test is one of the four attacks that broke the pipeline, written so that it fails on the old behaviour
(a partition stopped by an oversized dead letter, a black hole after an agent restart, a frozen Milvus
that /readyz and SIGTERM did not notice, a slow URL that held its whole batch). The accounting is the
chaos harness's (:mod:`tests.harness.chaos`): every published message has exactly one verdict or dead
letter once redeliveries are deduplicated by event id.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.accounting import Ledger, TimedOutputReader
from tests.harness.controls import ImageServer, RedisControl
from tests.harness.events import EventFactory
from tests.harness.processes import ChaosWorker, assert_probes_fast, readyz
from vitguard.schemas.events import DeadLetter, Verdict
from vitguard.testing import services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SHUTDOWN_TIMEOUT_S = 8.0
"""The workers' shutdown timeout (the ``worker_settings`` fixture reads it)."""

FAULT_WORKER = Path(__file__).parents[1] / "faults" / "fault_worker.py"


def start(workers: list[ChaosWorker], settings: Any, **kwargs: Any) -> ChaosWorker:
    worker = ChaosWorker(settings, **kwargs).start()
    workers.append(worker)
    return worker


def published_good(settings: Any, tmp_path: Path, count: int) -> tuple[EventFactory, Ledger]:
    """An event factory and a ledger for ``settings``' input topic, ``count`` good events already published."""
    factory = EventFactory(tmp_path / "images")
    ledger = Ledger(settings.kafka, settings.topics.images)
    ledger.publish([factory.make("good") for _ in range(count)])
    return factory, ledger


def wait_all_answered(out: TimedOutputReader, ledger: Ledger, worker: ChaosWorker, timeout_s: float = 150.0,
                      settle_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and worker.running:
        out.poll(0.5)
        if not ledger.account(out.outputs).lost:
            out.poll(settle_s)
            return
    accounting = ledger.account(out.outputs)
    raise AssertionError(f"{accounting.describe()}; worker running: {worker.running}; log:\n{worker.log_tail()}")


def assert_exactly_once(ledger: Ledger, out: TimedOutputReader, log: str = "") -> None:
    accounting = ledger.account(out.outputs)
    print(f"accounting: {accounting.describe()}")
    assert not accounting.lost, accounting.describe()
    assert not accounting.wrong, accounting.describe()
    assert accounting.duplicates == 0, f"{accounting.describe()}\n{log}"
    verdict_ids = [v.event_id for v in out.outputs.verdicts]
    assert len(verdict_ids) == len(set(verdict_ids))  # no verdict published twice


# ------------------------------------------------------------------------------------------- 1. poison pills


def test_poison_pills_are_truncated_dead_letters_and_nothing_behind_them_waits(
    worker_settings: Callable[..., Any], tmp_path: Path, workers: list[ChaosWorker]
) -> None:
    settings = worker_settings()
    factory = EventFactory(tmp_path / "images", max_inline_bytes=settings.fetch.max_inline_bytes)
    pills = ("pill_binary", "pill_corrupt_inline", "pill_inline_too_large")
    events = [factory.make("good") for _ in range(3)]
    for pill in pills:  # one partition: every good event after a pill waits for it on the old code
        events += [factory.make(pill), factory.make("good"), factory.make("good")]
    assert all(len(e.value) > 1_000_000 for e in events if e.kind.startswith("pill"))
    ledger = Ledger(settings.kafka, settings.topics.images)
    published = ledger.publish(events)

    worker = start(workers, settings)
    with TimedOutputReader.for_settings(settings) as out:
        wait_all_answered(out, ledger, worker, settle_s=5.0)  # settle: a retry would re-send verdicts
        status, reasons = readyz(settings.web.port)
    assert status == 200, reasons
    assert worker.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0, worker.log_tail()

    assert_exactly_once(ledger, out, worker.log_tail(8000))
    answers = ledger.answers(out.outputs)
    limit = 1024 * 1024
    for p in published:
        (answer,) = answers[(p.partition, p.offset)]
        if not p.event.kind.startswith("pill"):
            assert isinstance(answer, Verdict)
            continue
        assert isinstance(answer, DeadLetter), p.event.kind
        assert answer.reason == p.event.expect
        assert answer.payload_truncated, p.event.kind
        assert answer.payload_size == len(p.event.value)
        assert answer.payload_sha256 == hashlib.sha256(p.event.value).hexdigest()
        assert (answer.source_topic, answer.source_partition, answer.source_offset) == (
            settings.topics.images, p.partition, p.offset)
        assert len(answer.model_dump_json()) < limit
        head = answer.original_bytes(allow_truncated=True)
        assert head and p.event.value.startswith(head)  # the payload's first bytes, byte for byte


# ------------------------------------------------------------------------------------------- 2. fatal exits

FATAL_SOURCES: dict[str, tuple[dict[str, Any], int, str]] = {
    # seam of the fault worker: (settings overrides, marked events, what the fatal log line says)
    "agent": ({}, 1, "injected agent fault"),
    "front_half": ({}, 1, "a front-half task died"),
    "batch_loop": ({}, 1, "runner loop crashed"),
    "completion_loop": ({}, 1, "runner loop crashed"),
    "milvus_permanent": ({}, 1, "retrying will not help"),
    "publish_permanent": ({}, 1, "TOPIC_AUTHORIZATION_FAILED"),
    # one decode thread; the second decode stuck past its deadline is one more than threads: a restart
    "decode_stuck": ({"batch": {"decode_workers": 1, "decode_timeout_s": 1.0}}, 2, "still running past"),
}
FATAL_LINE = "worker stopping after a fatal error"


def wait_exit_after_fatal(worker: ChaosWorker, timeout_s: float = 120.0) -> tuple[int | None, float]:
    """Wait for ``worker`` to exit; returns its exit code and the seconds from its fatal log line to its exit."""
    assert worker.process is not None
    deadline = time.monotonic() + timeout_s
    fatal_at: float | None = None
    while time.monotonic() < deadline and worker.process.poll() is None:
        if fatal_at is None and FATAL_LINE in worker.log_tail(200_000):
            fatal_at = time.monotonic()
        time.sleep(0.1)
    code = worker.process.poll()
    exited_at = time.monotonic()
    if fatal_at is None and FATAL_LINE in worker.log_tail(200_000):
        fatal_at = exited_at  # logged and exited between two polls
    assert fatal_at is not None, f"no fatal line; exit code {code}; log:\n{worker.log_tail(8000)}"
    return code, exited_at - fatal_at


@pytest.mark.parametrize("seam", list(FATAL_SOURCES))
def test_every_fatal_source_exits_1_in_time_and_a_restarted_worker_answers_every_event_once(
    seam: str, worker_settings: Callable[..., Any], tmp_path: Path, workers: list[ChaosWorker]
) -> None:
    """Issue 25: a fatal error raised inside the runner (its loops, a front-half task, a permanent Milvus or
    publish refusal, the stuck-decode limit) was recorded, and the worker then took itself for a second fatal
    and never exited: up for good, unready, holding its partitions. Each source must end the process with
    exit code 1 within the shutdown timeout, leave the unanswered events uncommitted, and a restarted worker
    must answer every event once."""
    overrides, count, said = FATAL_SOURCES[seam]
    settings = worker_settings(**overrides)  # a fresh consumer group: no committed offset when it fails
    factory = EventFactory(tmp_path / "images", crash_marker=f"crash-{uuid.uuid4().hex[:8]}")
    events = [factory.make("good") for _ in range(4)] + [factory.make("crash", seam=seam) for _ in range(count)]
    events += [factory.make("good") for _ in range(10)]
    ledger = Ledger(settings.kafka, settings.topics.images)
    ledger.publish(events)

    with TimedOutputReader.for_settings(settings) as out:
        # the fault worker fails at the seam on each marked event, every time it takes it
        faulty = start(workers, settings, script=FAULT_WORKER,
                       extra_env={"VITGUARD_FAULT_MARKER": factory.crash_marker})
        code, exit_s = wait_exit_after_fatal(faulty)
        log = faulty.log_tail(200_000)
        print(f"{seam}: exit code {code}, {exit_s:.1f}s after the fatal line")
        assert code == 1, f"exit code {code}; log:\n{log[-8000:]}"
        assert exit_s <= SHUTDOWN_TIMEOUT_S + 1.0, log[-8000:]
        assert said in log, log[-8000:]
        assert log.count(FATAL_LINE) == 1, log[-8000:]  # declared once, whatever followed
        out.poll(3.0)
        internal = [d for d in out.outputs.dead_letters if d.reason == "internal_error"]
        assert not internal, [d.message for d in internal]  # no black hole of a closed runner
        marked = ledger.published[4:4 + count]
        if seam not in ("completion_loop", "decode_stuck"):  # there, outputs may precede the failure
            assert not {m.event.event_id for m in marked} & set(out.first_answer_at)  # never answered
        if seam == "agent":
            assert out.outputs.answered() <= 4  # nothing behind the marked event was taken past it

        normal = start(workers, settings)
        wait_all_answered(out, ledger, normal)
    assert normal.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0
    if seam == "decode_stuck":
        # the first stuck decode may be abandoned as its event's decode_timeout dead letter before the second
        # (one stuck thread too many) stops the worker; otherwise the restarted worker judges both
        accounting = ledger.account(out.outputs)
        assert not accounting.lost and accounting.duplicates == 0, accounting.describe()
        assert all(p in marked and got == "decode_timeout" for p, got in accounting.wrong), accounting.describe()
    elif seam == "publish_permanent":
        # outputs of the refused round that the broker did acknowledge are sent again by the restarted worker
        # (at least once: those events were never committed); nothing is lost and every answer is right
        accounting = ledger.account(out.outputs)
        assert not accounting.lost and not accounting.wrong, accounting.describe()
    else:
        assert_exactly_once(ledger, out)  # events the crashed worker answered are not answered again


# ------------------------------------------------------------------------------------------- 3. hung Milvus


def test_hung_milvus_fails_readiness_and_sigterm_still_stops_the_worker_in_time(
    worker_settings: Callable[..., Any], tmp_path: Path, workers: list[ChaosWorker], own_milvus_server: Any
) -> None:
    frozen_milvus = own_milvus_server  # frozen below, thawed and stopped by the fixture
    settings = worker_settings(milvus={
        "uri": frozen_milvus.uri, "collection_prefix": f"hang_{uuid.uuid4().hex[:8]}_", "call_timeout_s": 2.0,
        "connect_timeout_s": 2.0, "load_timeout_s": 60.0})
    factory, ledger = published_good(settings, tmp_path, 6)

    with TimedOutputReader.for_settings(settings) as out:
        first = start(workers, settings)
        wait_all_answered(out, ledger, first, settle_s=0)
        assert readyz(settings.web.port)[0] == 200

        frozen_milvus.freeze()
        frozen_at = time.monotonic()
        held = ledger.publish([factory.make("good") for _ in range(6)])
        bound_s = 30.0
        status, reasons = 200, []
        while time.monotonic() - frozen_at < bound_s:
            status, reasons = readyz(settings.web.port)
            if status == 503 and any("milvus" in r.lower() for r in reasons):
                break
            time.sleep(0.5)
        not_ready_after = time.monotonic() - frozen_at
        assert status == 503 and any("milvus" in r.lower() for r in reasons), (status, reasons)
        print(f"/readyz 503 {not_ready_after:.1f}s after the freeze: {reasons}")
        assert_probes_fast(settings.web.port, "Milvus hangs")  # a probe read 4 s on the old code
        out.poll(2.0)
        assert not {p.event.event_id for p in held} & set(out.first_answer_at)  # held, not answered

        stopping = time.monotonic()
        code = first.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 20)
        took = time.monotonic() - stopping
        print(f"SIGTERM with Milvus frozen: exit code {code} after {took:.1f}s")
        assert took <= SHUTDOWN_TIMEOUT_S + 5, first.log_tail()
        assert code in (0, 143), first.log_tail()

        frozen_milvus.thaw()
        second = start(workers, settings)
        wait_all_answered(out, ledger, second)
    assert second.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0
    assert_exactly_once(ledger, out)


def test_probes_answer_fast_while_redis_hangs_and_the_stream_goes_on(
    worker_settings: Callable[..., Any], tmp_path: Path, workers: list[ChaosWorker]
) -> None:
    """Redis frozen (a socket that accepts and never answers): the worker degrades, answers events, and its
    probes answer at once; /readyz reports Redis degraded but stays ready (Redis is an optimisation)."""
    redis = RedisControl().start()
    try:
        settings = worker_settings(redis={"url": redis.url, "socket_timeout_s": 0.5})
        factory, ledger = published_good(settings, tmp_path, 3)
        with TimedOutputReader.for_settings(settings) as out:
            worker = start(workers, settings)
            wait_all_answered(out, ledger, worker, settle_s=0)
            redis.freeze()
            try:
                ledger.publish([factory.make("good") for _ in range(6)])
                wait_all_answered(out, ledger, worker, settle_s=0)
                assert_probes_fast(settings.web.port, "Redis hangs")
                assert readyz(settings.web.port)[0] == 200
            finally:
                redis.thaw()
        assert worker.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0
        assert_exactly_once(ledger, out)
    finally:
        redis.stop()


def assert_stops_before_joining(worker: ChaosWorker, *said: str, timeout_s: float = 60.0) -> None:
    """``worker`` exits 1 on its own, its log says ``said``, and its consumer never got partitions."""
    started = time.monotonic()
    while worker.running and time.monotonic() - started < timeout_s:
        time.sleep(0.2)
    log = worker.log_tail(20000)
    assert not worker.running, log
    assert worker.process is not None and worker.process.returncode == 1, log
    assert all(part in log for part in said), log
    assert "partitions assigned" not in log, log  # stopped before its consumer joined the group


def test_a_worker_whose_milvus_refuses_it_for_good_stops_before_joining_the_group(
    worker_settings: Callable[..., Any], tmp_path: Path, workers: list[ChaosWorker]
) -> None:
    """A second worker on the first one's Milvus Lite file (a permanent refusal, like a wrong token): it used to
    join the group, take partitions from the healthy worker and die on its first batch, on every restart."""
    settings = worker_settings()
    factory = EventFactory(tmp_path / "images")
    ledger = Ledger(settings.kafka, settings.topics.images)
    ledger.publish([factory.make("good") for _ in range(3)])
    with TimedOutputReader.for_settings(settings) as out:
        healthy = start(workers, settings)
        wait_all_answered(out, ledger, healthy, settle_s=0)

        second = start(workers, settings.model_copy(update={"web": settings.web.model_copy(
            update={"port": services.free_port()})}))
        assert_stops_before_joining(second, "in use by another process")

        ledger.publish([factory.make("good") for _ in range(3)])
        wait_all_answered(out, ledger, healthy)
    assert healthy.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0
    assert_exactly_once(ledger, out)


def test_a_worker_without_the_redis_password_stops_before_joining_the_group(
    worker_settings: Callable[..., Any], workers: list[ChaosWorker]
) -> None:
    """Redis is optional when it is down, but a Redis that refuses the worker's credentials will refuse them
    for good: the worker used to run on without its redelivery guard, cache and wave alerts, indefinitely."""
    server = services.start_redis(password=uuid.uuid4().hex)
    try:
        settings = worker_settings(redis={"url": server.address})
        assert_stops_before_joining(start(workers, settings), "refused vitguard", "VITGUARD_REDIS_PASSWORD")
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- 4. stalled URL


def test_a_stalled_url_holds_none_of_its_neighbours(worker_settings: Callable[..., Any], tmp_path: Path,
                                                    workers: list[ChaosWorker]) -> None:
    connect_s, read_s = 2.0, 10.0  # a fetch has connect + read seconds in all: 12 s
    with ImageServer(hold_s=30.0) as server:
        settings = worker_settings(fetch={"allowed_networks": ["127.0.0.0/8"], "connect_timeout_s": connect_s,
                                          "read_timeout_s": read_s})
        factory = EventFactory(tmp_path / "images", server)
        events = [factory.make("http") for _ in range(3)] + [factory.make("stall")]
        events += [factory.make("http") for _ in range(8)]
        ledger = Ledger(settings.kafka, settings.topics.images)
        published = ledger.publish(events)

        worker = start(workers, settings)
        with TimedOutputReader.for_settings(settings) as out:
            wait_all_answered(out, ledger, worker)
        assert worker.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 10) == 0
        assert server.hits["stall"] >= 1

    assert_exactly_once(ledger, out)
    stalled = published[3]
    (letter,) = ledger.answers(out.outputs)[(stalled.partition, stalled.offset)]
    assert isinstance(letter, DeadLetter) and letter.reason == "fetch_timeout"
    stalled_at = out.first_answer_at[stalled.event.event_id or ""]
    neighbours = [out.first_answer_at[p.event.event_id or ""] for p in published if p is not stalled]
    first_at = min(neighbours)
    print(f"neighbours answered within {max(neighbours) - first_at:.1f}s of the first; the stalled one "
          f"{stalled_at - first_at:.1f}s after it")
    # every neighbour is answered while the stalled fetch is still pending, well before its deadline
    assert max(neighbours) < stalled_at - 3.0
    assert max(neighbours) - first_at <= 3.0


def test_a_classify_request_in_flight_at_sigterm_is_told_to_go_elsewhere(
        worker_settings: Callable[..., Any], workers: list[ChaosWorker]) -> None:
    """SIGTERM while a ``POST /classify`` waits on its fetch: the client gets 503 ``shutting_down`` with
    Retry-After (retry on another worker), not a dropped connection or a 500, and the worker still exits
    within its shutdown deadline."""
    import json
    import threading
    import urllib.error
    import urllib.request

    with ImageServer(hold_s=60.0) as server:
        settings = worker_settings(fetch={"allowed_networks": ["127.0.0.0/8"], "connect_timeout_s": 2.0,
                                          "read_timeout_s": 30.0})
        worker = start(workers, settings)
        deadline = time.monotonic() + 90
        while readyz(settings.web.port, timeout_s=2.0)[0] != 200:
            assert worker.running and time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        answer: dict[str, Any] = {}

        def classify() -> None:
            body = json.dumps({"image_ref": server.url("stall", "held.jpg")}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{settings.web.port}/classify", data=body,
                                             headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - our own worker
                    answer["status"] = response.status
            except urllib.error.HTTPError as exc:
                answer.update(status=exc.code, body=json.loads(exc.read()), retry_after=exc.headers["Retry-After"])
            except OSError as exc:
                answer["error"] = repr(exc)

        client = threading.Thread(target=classify, daemon=True)
        client.start()
        while server.hits["stall"] < 1:
            assert time.monotonic() < deadline, "the request's fetch never reached the server"
            time.sleep(0.1)
        stopping = time.monotonic()
        code = worker.terminate(timeout_s=SHUTDOWN_TIMEOUT_S + 20)
        took = time.monotonic() - stopping
        client.join(10)
    assert answer.get("status") == 503, (answer, worker.log_tail())
    assert answer["body"]["reason"] == "shutting_down" and answer["retry_after"] == "1"
    assert code == 0 and took <= SHUTDOWN_TIMEOUT_S + 5, (code, took, worker.log_tail())


# ------------------------------------------------------------------------------------------- pause, no loss


def test_pausing_partitions_leaves_a_fetch_in_progress_its_partitions() -> None:
    """The loss the chaos suite found: Faust's ``getmany`` delivers a fetch's records only for partitions in
    the set ``pause_partitions`` used to shrink in place, so a Milvus hold that paused consumption mid-delivery
    dropped records the fetcher had passed, and Faust committed past them as a gap."""
    from faust.types import TP

    from vitguard.kafka.faust.consumer import FetchWaitConsumer

    consumer = object.__new__(FetchWaitConsumer)  # only the partition bookkeeping is exercised
    tps = {TP("img", 0), TP("img", 1)}
    consumer._active_partitions = set(tps)
    consumer._paused_partitions = set()
    in_progress = consumer._get_active_partitions()  # what a running getmany() holds

    consumer.pause_partitions(tps)
    assert in_progress == tps  # the loop in progress still delivers what it fetched
    assert consumer._get_active_partitions() == set() and consumer._paused_partitions == tps
    consumer.resume_partitions(tps)
    assert consumer._get_active_partitions() == tps and not consumer._paused_partitions


def _bookkeeping(cls: Any) -> Any:
    from collections import defaultdict

    from intervaltree import IntervalTree

    from vitguard.kafka.faust.consumer import FetchWaitConsumer, UntrackedReadOffsets

    consumer = object.__new__(cls)  # only Faust's delivery and commit bookkeeping is exercised
    consumer._gap = defaultdict(IntervalTree)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._read_offset = UntrackedReadOffsets() if cls is FetchWaitConsumer else defaultdict(lambda: None)
    return consumer


def _delivered(consumer: Any, tp: Any, offset: int) -> bool:
    """Faust's drain loop's test for a fetched record (``faust.transport.consumer._drain_messages``)."""
    r_offset = consumer._read_offset[tp]
    return r_offset is None or offset >= r_offset


async def test_records_re_fetched_after_a_seek_back_are_delivered_and_never_committed_past() -> None:
    """The loss the chaos suite found next: records 35..39 dropped at a rebalance, 40 delivered; the tracker
    seeks back to 35, and then Faust's drain loop, finishing 40's delivery, writes read offset 40 over the
    seek's 35. The re-fetched 35..39 fall below it and are dropped as old, 40 comes again (the tracker takes
    the hole for compaction), and Faust, which took the jump from 34 to 40 for a gap, commits past it."""
    from faust.transport.drivers import aiokafka as faust_aiokafka
    from faust.types import TP

    from vitguard.kafka.faust.consumer import FetchWaitConsumer

    tp = TP("img", 3)
    stock = _bookkeeping(faust_aiokafka.Consumer)
    ours = _bookkeeping(FetchWaitConsumer)
    for consumer in (stock, ours):
        consumer._committed_offset[tp] = 35
        consumer._read_offset[tp] = 35  # the seek back
        consumer._read_offset[tp] = 40  # the drain loop, after delivering 40
    assert not _delivered(stock, tp, 35)  # the stock consumer drops the re-fetch
    assert all(_delivered(ours, tp, o) for o in range(35, 41))

    for consumer in (stock, ours):
        await consumer._add_gap(tp, 35, 40)  # what the drain loop does when 40 follows a read offset of 34
        consumer._acked[tp].append(41)  # an answer past the hole (e.g. after the tracker took it for compaction)
    assert stock._new_offset(tp) == 42  # the stock consumer: past 35..40, never answered
    assert ours._new_offset(tp) is None  # ours: nothing until the tracker has checked the hole

    ours._acked[tp][:] = [35, 36, 41]
    assert ours._new_offset(tp) == 37  # only what was answered, in order
    ours._committed_offset[tp] = 37
    await ours.accept_gap(tp, 37, 41)  # the tracker re-fetched 37..40: nothing there
    assert ours._new_offset(tp) == 42


def test_sigterm_while_the_model_loads_exits_0_at_once(worker_settings: Callable[..., Any],
                                                      workers: list[ChaosWorker]) -> None:
    """A SIGTERM before Faust's worker had installed its handlers (the model loading) killed the process by the
    signal (-15, 143 in an orchestrator) instead of a clean stop: nothing had been taken."""
    from vitguard.consumers.worker import JOINING_STOP_S

    worker = start(workers, worker_settings())
    deadline = time.monotonic() + 60
    while "model in use" not in worker.log_tail(100_000):  # loaded; the topics and the app come next
        assert time.monotonic() < deadline and worker.running, worker.log_tail()
        time.sleep(0.02)
    stopped_at = time.monotonic()
    assert worker.terminate(timeout_s=30) == 0, worker.log_tail()
    assert time.monotonic() - stopped_at < JOINING_STOP_S + 3
    assert "joined the consumer group" not in worker.log_tail(100_000)


def test_sigterm_during_the_group_join_exits_0_at_once_and_readyz_says_joining(
    worker_settings: Callable[..., Any], workers: list[ChaosWorker]
) -> None:
    """Issue 30: /readyz said ready before the consumer had partitions, and a SIGTERM during the join waited for
    the join (the group's rebalance timeout) and then for the watchdog, exiting 143. A group join that takes the
    whole rebalance timeout (the embedded broker holds the first join that long) shows both."""
    from vitguard.consumers.worker import JOINING_STOP_S

    settings = worker_settings(kafka={"rebalance_timeout_s": 60.0, "session_timeout_s": 30.0})
    worker = start(workers, settings)
    deadline = time.monotonic() + 60
    status, reasons = readyz(settings.web.port, timeout_s=2)
    while status == 0 and time.monotonic() < deadline:  # the web server is up once the model is loaded
        time.sleep(0.2)
        status, reasons = readyz(settings.web.port, timeout_s=2)
    assert status == 503 and any(r.startswith("joining the consumer group for") for r in reasons), (status, reasons)
    assert "joined the consumer group" not in worker.log_tail(100_000)
    stopped_at = time.monotonic()
    assert worker.terminate(timeout_s=30) == 0
    assert time.monotonic() - stopped_at < JOINING_STOP_S + 3
