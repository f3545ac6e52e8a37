"""The agent loop's offset discipline, on Faust's real message refcounting.

Faust acks an event when the stream moves on to the next one (and when the agent is cancelled); the loop
must make a message committable only once it is answered, in offset order per partition, whatever order the
answers come in, and never commit past an event that was abandoned or failed, with no help from Faust's gap
check (which a group with no committed offset does not get).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from faust.types.tuples import TP, ConsumerMessage

from vitguard.consumers.app import WorkerRuntime, consume
from vitguard.errors import FatalError
from vitguard.health import HealthState
from vitguard.kafka.faust.offsets import OffsetTracker
from vitguard.pipeline.results import Answered
from vitguard.settings import load_settings


class RecordingConsumer:
    """Stands in for Faust's consumer: records which offsets became committable (Consumer.ack)."""

    def __init__(self) -> None:
        self.committable: list[tuple[int, int]] = []

    def ack(self, message: Any) -> bool:
        self.committable.append((message.partition, message.offset))
        return True


@dataclass
class Event:
    message: ConsumerMessage


def event(offset: int, partition: int = 0) -> Event:
    message = ConsumerMessage("in", partition, offset, 0.0, 0, None, b"k", b"{}", None)
    message.incref()  # the stream's own reference, as Faust's conductor gives it
    return Event(message)


class FakeStream:
    """``events()`` with Faust's semantics: an event is acked when the next one is asked for, or on close."""

    def __init__(self, events: list[Event], consumer: RecordingConsumer, hold: asyncio.Event | None = None) -> None:
        self.events_list = events
        self.consumer = consumer
        self.hold = hold

    async def events(self) -> AsyncIterator[Event]:
        for e in self.events_list:
            try:
                yield e
            finally:
                await self.ack(e)
        if self.hold is not None:
            await self.hold.wait()  # a live stream: more may come

    async def ack(self, e: Event) -> bool:
        return e.message.ack(self.consumer)


class ScriptedRunner:
    """``submit`` returns a future per offset; the test answers them in whatever order it likes."""

    def __init__(self) -> None:
        self.futures: dict[tuple[int, int], asyncio.Future[Any]] = {}
        self.submitted = asyncio.Event()

    async def submit(self, raw: Any, consumed_ms: float | None = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures[(raw.partition, raw.offset)] = fut
        self.submitted.set()
        return fut

    def answer(self, partition: int, offset: int) -> None:
        self.futures[(partition, offset)].set_result(Answered(None, None))  # type: ignore[arg-type]


def make_runtime(runner: Any) -> tuple[WorkerRuntime, list[BaseException]]:
    fatal: list[BaseException] = []
    rt = WorkerRuntime(load_settings(), runner, HealthState(model_loaded=True))
    rt.health.add_fatal_hook(fatal.append)
    rt.started.set()
    return rt, fatal


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def start(events: list[Event]) -> tuple[RecordingConsumer, ScriptedRunner, WorkerRuntime, list[BaseException],
                                             asyncio.Task[None]]:
    consumer, runner = RecordingConsumer(), ScriptedRunner()
    rt, fatal = make_runtime(runner)
    task = asyncio.ensure_future(consume(FakeStream(events, consumer, hold=asyncio.Event()), rt))
    while len(runner.futures) < len(events):
        await asyncio.sleep(0.001)
    return consumer, runner, rt, fatal, task


async def test_offsets_become_committable_in_order_once_answered_whatever_the_answer_order() -> None:
    consumer, runner, rt, _, task = await start([event(0), event(1), event(2), event(3)])
    assert consumer.committable == []  # the stream moved on, but nothing is answered yet
    runner.answer(0, 2)
    runner.answer(0, 1)
    await settle()
    assert consumer.committable == []  # 0 is still unanswered: it holds the commit of 1 and 2
    runner.answer(0, 0)
    await settle()
    assert consumer.committable == [(0, 0), (0, 1), (0, 2)]
    assert rt.health.agent_running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert consumer.committable == [(0, 0), (0, 1), (0, 2)]  # 3 was abandoned on cancel
    assert not rt.health.agent_running


async def test_partitions_are_independent() -> None:
    consumer, runner, _, _, task = await start([event(0, 0), event(0, 1), event(1, 0), event(1, 1)])
    runner.answer(1, 0)
    runner.answer(1, 1)
    await settle()
    assert consumer.committable == [(1, 0), (1, 1)]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_abandoned_event_is_never_committed_past_even_with_no_committed_offset() -> None:
    events = [event(0), event(1), event(2)]
    consumer, runner, _, _, task = await start(events)
    runner.answer(0, 0)
    runner.answer(0, 2)
    await settle()
    task.cancel()  # shutdown with 1 unanswered
    await asyncio.gather(task, return_exceptions=True)
    runner.answer(0, 1) if not runner.futures[(0, 1)].done() else None  # a late answer changes nothing
    await settle()
    assert consumer.committable == [(0, 0)]
    assert events[1].message.acked  # abandoned: Faust's own ack ignores it and shutdown does not wait for it


async def test_a_failed_event_is_fatal_and_blocks_its_partition() -> None:
    consumer, runner, rt, fatal, task = await start([event(0), event(1)])
    runner.futures[(0, 0)].set_exception(FatalError("topic authorization failed"))
    runner.answer(0, 1)
    await settle()
    assert consumer.committable == []
    assert len(fatal) == 1 and "authorization" in str(fatal[0]) and rt.health.fatal
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_restarted_agent_does_not_run_on_but_stops_the_worker() -> None:
    consumer, runner = RecordingConsumer(), ScriptedRunner()
    rt, fatal = make_runtime(runner)
    await consume(FakeStream([], consumer), rt)  # the supervisor's first run ends (the stream closed)
    assert not fatal
    await consume(FakeStream([event(0)], consumer), rt)  # a restart: the consumer position is past abandoned work
    assert len(fatal) == 1 and not runner.futures


async def test_an_exception_in_the_loop_stops_the_worker_instead_of_escaping() -> None:
    class Broken(ScriptedRunner):
        async def submit(self, raw: Any, consumed_ms: float | None = None) -> asyncio.Future[Any]:
            raise RuntimeError("bug")

    consumer = RecordingConsumer()
    rt, fatal = make_runtime(Broken())
    await consume(FakeStream([event(0)], consumer), rt)  # returns: nothing reaches Faust's supervisor
    assert len(fatal) == 1 and consumer.committable == []


def test_tracker_counts_unanswered_and_abandons_them() -> None:
    acked: list[int] = []
    tracker = OffsetTracker(lambda e: acked.append(e.message.offset))
    entries = [tracker.add(event(i))[0] for i in range(3)]
    tracker.done(entries[1])
    assert acked == [] and tracker.unanswered == 2
    assert tracker.abandon_all() == 2
    tracker.done(entries[0])  # answered after it was abandoned: stays failed
    assert acked == []


def test_topic_partition_is_the_queue_key() -> None:
    assert event(3, 2).message.tp == TP("in", 2)


async def test_an_assignment_tells_the_tracker_each_committed_offset_or_beginning_and_seeks_nothing() -> None:
    """An unconditional rewind at the assignment delivered every record twice at start-up; the tracker is
    told where each partition starts and only a delivery that skips past it is re-fetched."""
    from vitguard.kafka.faust.positions import expect_from_committed

    class Consumer:
        def __init__(self) -> None:
            self.seeks: list[tuple[TP, int]] = []

        async def committed_offsets(self, tps: set[TP]) -> dict[TP, int | None]:
            table: dict[TP, int | None] = {TP("in", 0): 42, TP("in", 1): None, TP("in", 2): 0}
            return {tp: table[tp] for tp in tps}

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 5 for tp in tps}

        async def seek(self, tp: TP, offset: int) -> None:
            self.seeks.append((tp, offset))

    consumer = Consumer()
    told: list[tuple[TP, int]] = []
    starts = await expect_from_committed(consumer, {TP("in", 0), TP("in", 1), TP("in", 2)},
                                         on_expect=lambda tp, offset: told.append((tp, offset)))
    assert starts == {TP("in", 0): 42, TP("in", 1): 5, TP("in", 2): 5}
    assert sorted(told) == [(TP("in", 0), 42), (TP("in", 1), 5), (TP("in", 2), 5)]
    assert consumer.seeks == []
    assert await expect_from_committed(consumer, set(), on_expect=lambda tp, offset: None) == {}


def test_an_assigned_partition_expects_its_committed_offset_unless_it_was_delivered_further() -> None:
    acked: list[int] = []
    tracker = OffsetTracker(lambda e: acked.append(e.message.offset))
    fresh, kept, moved = TP("in", 0), TP("in", 1), TP("in", 2)
    tracker.expect(fresh, 10)  # new to this worker, committed 10
    first, seek = tracker.add(event(12, fresh.partition))  # 10 and 11 skipped by the fetch: re-fetched
    assert seek == 10
    e10, seek = tracker.add(event(10, fresh.partition))
    assert seek is None

    for offset in range(20, 24):  # delivered up to 23, committed only 20 when the rebalance came
        tracker.add(event(offset, kept.partition))
    tracker.expect(kept, 20)
    assert tracker.expected(kept) == 24  # its own bookkeeping stands: a redelivery of 20..23 is no hole
    again, seek = tracker.add(event(21, kept.partition))
    assert seek is None
    jump, seek = tracker.add(event(26, kept.partition))  # 24, 25 dropped at the generation change
    assert seek == 24

    tracker.add(event(3, moved.partition))  # delivered up to 3, then another worker committed up to 50
    tracker.expect(moved, 50)
    assert tracker.expected(moved) == 50
    _, seek = tracker.add(event(50, moved.partition))
    assert seek is None


async def test_a_resume_rewinds_every_partition_to_its_committed_offset_or_its_beginning() -> None:
    from vitguard.kafka.faust.positions import rewind_to_committed

    class Consumer:
        def __init__(self) -> None:
            self.seeks: list[tuple[TP, int]] = []

        async def committed_offsets(self, tps: set[TP]) -> dict[TP, int | None]:
            table: dict[TP, int | None] = {TP("in", 0): 42, TP("in", 1): None, TP("in", 2): 0}
            return {tp: table[tp] for tp in tps}

        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            return {tp: 5 for tp in tps}

        async def seek(self, tp: TP, offset: int) -> None:
            self.seeks.append((tp, offset))

    consumer = Consumer()
    moved = await rewind_to_committed(consumer, {TP("in", 0), TP("in", 1), TP("in", 2)})
    assert sorted(consumer.seeks) == [(TP("in", 0), 42), (TP("in", 1), 5), (TP("in", 2), 5)]
    assert moved == {TP("in", 0): 42, TP("in", 1): 5, TP("in", 2): 5}
    assert await rewind_to_committed(consumer, set()) == {}


def test_a_hole_in_the_delivery_is_re_fetched_and_nothing_past_it_is_acked() -> None:
    acked: list[int] = []
    tracker = OffsetTracker(lambda e: acked.append(e.message.offset))
    first, seek = tracker.add(event(10))
    assert seek is None
    later, seek = tracker.add(event(13))  # 11 and 12 were not delivered
    assert seek == 11
    tracker.done(first)
    tracker.done(later)
    assert acked == [10]  # 13 waits: 11 and 12 may exist
    buffered, seek = tracker.add(event(14))  # fetched before the seek took effect: says nothing about the hole
    assert seek is None
    tracker.done(buffered)
    e11, _ = tracker.add(event(11))  # the re-fetch, in order
    e12, _ = tracker.add(event(12))
    tracker.done(e12)
    assert acked == [10]
    tracker.done(e11)
    assert acked == [10, 11, 12, 13, 14]


def test_a_hole_that_does_not_exist_is_accepted_after_one_seek_back() -> None:
    acked: list[int] = []
    tracker = OffsetTracker(lambda e: acked.append(e.message.offset))
    first, _ = tracker.add(event(0))
    later, seek = tracker.add(event(5))  # compaction removed 1..4
    assert seek == 1
    tracker.done(first)
    tracker.done(later)
    assert acked == [0]
    refetched, seek = tracker.add(event(5))  # after the seek the first record at or after 1 is 5: 1..4 do not exist
    assert seek is None
    tracker.done(refetched)
    assert acked == [0, 5, 5]
    nxt, seek = tracker.add(event(6))
    tracker.done(nxt)
    assert seek is None and acked[-1] == 6


def test_an_empty_hole_is_handed_to_the_consumer_and_a_rewind_forgets_holes() -> None:
    acked: list[int] = []
    gaps: list[tuple[Any, int, int]] = []
    tracker = OffsetTracker(lambda e: acked.append(e.message.offset), on_gap=lambda tp, s, e: gaps.append((tp, s, e)))
    tp = TP("in", 0)
    tracker.rewound(tp, 10)  # the rebalance put the partition at its committed offset, 10
    assert tracker.expected(tp) == 10
    first, seek = tracker.add(event(12))  # 10 and 11 were fetched and dropped: a hole from the first delivery on
    assert seek == 10 and not gaps
    tracker.done(first)
    assert acked == []
    again, seek = tracker.add(event(12))  # the re-fetch from 10 starts at 12: 10 and 11 do not exist
    assert seek is None and gaps == [(tp, 10, 12)]
    tracker.done(again)
    assert acked == [12, 12]

    later, seek = tracker.add(event(20))  # a new hole, 13..19 ...
    assert seek == 13
    tracker.rewound(tp, 13)  # ... then a rewind: everything from 13 is read again, the hole is forgotten
    assert tracker.expected(tp) == 13
    e13, seek = tracker.add(event(13))
    assert seek is None
    tracker.done(e13)
    assert acked[-1] == 13
    assert tracker.unanswered == 1  # 20 (first delivery) still waits for its answer


async def test_an_idle_agent_re_fetches_records_dropped_at_the_end_of_a_partition() -> None:
    """Records dropped at a rebalance with nothing published after them reveal no hole: the tail check sees
    the fetch position ahead of what was delivered and seeks back, once."""
    from vitguard.kafka.faust.positions import check_tails

    tp = TP("in", 0)
    rt, _ = make_runtime(ScriptedRunner())
    tracker = OffsetTracker(lambda e: None)
    tracker.rewound(tp, 5)
    seeks: list[tuple[TP, int]] = []
    position = {tp: 9}  # 5..8 were fetched, never delivered

    async def positions() -> dict[TP, int]:
        return dict(position)

    async def seek(t: TP, offset: int) -> None:
        seeks.append((t, offset))

    rt.positions, rt.seek = positions, seek
    rt.idle_since = None  # busy: nothing is checked
    task = asyncio.ensure_future(check_tails(rt, tracker, interval_s=0.02))
    await asyncio.sleep(0.15)
    assert seeks == []
    rt.idle_since = time.monotonic() - 10  # idle for a while
    await asyncio.sleep(0.2)
    assert seeks == [(tp, 5)]  # once per (delivered, position): a tail with no records is not re-read forever
    position[tp] = 12
    await asyncio.sleep(0.2)
    assert seeks == [(tp, 5), (tp, 5)]
    task.cancel()


def test_a_re_fetch_that_fills_a_hole_goes_on_without_a_second_seek() -> None:
    acked: list[int] = []
    tracker = OffsetTracker(lambda e: acked.append(e.message.offset))
    tp = TP("in", 0)
    tracker.rewound(tp, 39)
    first, seek = tracker.add(event(41))  # 39 and 40 dropped
    assert seek == 39
    e39, seek = tracker.add(event(39))  # the re-fetch
    assert seek is None  # 40 follows in the same re-fetch: no second seek
    e40, seek = tracker.add(event(40))
    assert seek is None
    again, seek = tracker.add(event(41))
    assert seek is None
    for e in (first, e39, e40, again):
        tracker.done(e)
    assert acked == [39, 40, 41, 41]
    later, seek = tracker.add(event(45))  # a new hole gets its own seek
    assert seek == 42


@pytest.fixture
async def unassigned_seek(kafka_bootstrap: str, new_topic: Any) -> AsyncIterator[Any]:
    """A seek on a real aiokafka consumer that owns only another topic's partition: what a seek gets when a
    rebalance revoked the partition first (``IllegalStateError: No current assignment``)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign([TopicPartition(new_topic(), 0)])

    async def seek(tp: Any, offset: int) -> None:
        consumer.seek(TopicPartition(tp.topic, tp.partition), offset)

    try:
        yield seek
    finally:
        await consumer.stop()


@pytest.mark.integration
async def test_a_seek_refused_after_a_rebalance_neither_stops_the_worker_nor_the_tail_check(
        unassigned_seek: Any) -> None:
    """Once, the agent stopped the worker (the hole's re-fetch raised into the loop), and the tail check's task
    died with the exception, unlogged, never to check again."""
    from vitguard.kafka.faust.positions import check_tails

    with pytest.raises(Exception, match="No current assignment"):
        await unassigned_seek(TP("in", 0), 1)
    consumer, runner = RecordingConsumer(), ScriptedRunner()
    rt, fatal = make_runtime(runner)
    rt.seek = unassigned_seek
    rt._expected_before_start[TP("in", 0)] = 0
    task = asyncio.ensure_future(consume(FakeStream([event(0), event(5)], consumer, hold=asyncio.Event()), rt))
    while len(runner.futures) < 2 and not task.done():  # offset 5 reveals a hole (1..4): a re-fetch is sought
        await asyncio.sleep(0.001)
    assert not task.done() and fatal == [] and set(runner.futures) == {(0, 0), (0, 5)}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    gone, kept = TP("in", 1), TP("in", 2)
    tracker = OffsetTracker(lambda e: None)
    tracker.rewound(gone, 5)
    tracker.rewound(kept, 5)
    seeks: list[tuple[TP, int]] = []
    position = {gone: 9, kept: 9}

    async def positions() -> dict[TP, int]:
        return dict(position)

    async def seek(tp: TP, offset: int) -> None:
        if tp == gone:
            await unassigned_seek(tp, offset)
        seeks.append((tp, offset))

    rt.positions, rt.seek = positions, seek
    rt.idle_since = time.monotonic() - 10
    tails = asyncio.ensure_future(check_tails(rt, tracker, interval_s=0.02))
    await asyncio.sleep(0.2)
    position[kept] = 12  # a new tail on the partition still owned: still checked
    await asyncio.sleep(0.2)
    assert not tails.done() and seeks == [(kept, 5), (kept, 5)]
    tails.cancel()


async def test_a_hanging_readiness_check_holds_one_thread_and_probes_never_wait_on_it() -> None:
    """Threads cannot be cancelled: a probe per refresh against a dependency that hangs used to leave one more
    thread blocked each time, until the default executor (DNS lookups, file reads) was full; and each probe
    waited on the hung check for seconds (Kubernetes' probe timeout is one second). Now the checks run in the
    background, one thread per dependency, and a probe reads their last answer."""
    import threading
    import types

    from vitguard.consumers.checks import DependencyChecks

    class HangingIndex:
        def __init__(self) -> None:
            self.calls = 0
            self.free = threading.Event()

        def ping(self) -> bool:
            self.calls += 1
            self.free.wait(30)
            return True

    index = HangingIndex()
    rt = WorkerRuntime(load_settings(), types.SimpleNamespace(index=index), HealthState())  # type: ignore[arg-type]
    rt.checks = DependencyChecks({"milvus": lambda: bool(index.ping())}, interval_s=0.01, timeout_s=0.1)
    rt.checks.start()
    try:
        answers = []
        for _ in range(10):
            began = time.monotonic()
            answers.append(rt.milvus_reachable())
            assert time.monotonic() - began < 0.01  # read, never waited on
            await asyncio.sleep(0.05)
        assert answers == [False] * 10 and index.calls == 1  # one hung thread, however many probes
        index.free.set()
        for _ in range(200):
            if rt.milvus_reachable() and index.calls >= 2:
                break
            await asyncio.sleep(0.01)
        assert rt.milvus_reachable() and index.calls >= 2  # the hung check returned, and fresh ones followed
    finally:
        index.free.set()
        await rt.checks.stop()


async def test_a_seek_the_consumer_thread_does_not_carry_out_still_stops_the_worker() -> None:
    """Only a revoked partition's refusal is forgiven: a hole that cannot be re-fetched would hold its
    partition's commits for good."""
    from vitguard.kafka.faust.consumer import SeekTimeoutError

    consumer, runner = RecordingConsumer(), ScriptedRunner()
    rt, fatal = make_runtime(runner)

    async def stuck(tp: Any, offset: int) -> None:
        raise SeekTimeoutError(f"the consumer thread did not seek {tp} to {offset} within 10 s")

    rt.seek = stuck
    rt._expected_before_start[TP("in", 0)] = 0
    await asyncio.wait_for(consume(FakeStream([event(0), event(5)], consumer, hold=asyncio.Event()), rt), 5)
    assert len(fatal) == 1 and isinstance(fatal[0], SeekTimeoutError)

    from vitguard.kafka.faust.positions import check_tails  # the tail check too

    rt, fatal = make_runtime(ScriptedRunner())
    tracker = OffsetTracker(lambda e: None)
    tracker.rewound(TP("in", 0), 5)

    async def positions() -> dict[TP, int]:
        return {TP("in", 0): 9}

    rt.positions, rt.seek, rt.idle_since = positions, stuck, time.monotonic() - 10
    await asyncio.wait_for(check_tails(rt, tracker, interval_s=0.02), 5)
    assert len(fatal) == 1 and isinstance(fatal[0], SeekTimeoutError)
