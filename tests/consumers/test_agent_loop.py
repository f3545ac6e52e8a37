"""The agent loop's offset discipline, on Faust's real message refcounting.

Faust acks a batch's messages when the agent asks for the next batch (and when it is cancelled); the loop
must make a message committable only after its batch's outputs are acknowledged, keep completions in batch
order, overlap preparing batch k+1 with completing batch k, and never commit an abandoned batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from faust.types.tuples import ConsumerMessage

from vitguard.consumers.app import WorkerRuntime, _consume, abandon, faust_broker_url
from vitguard.pipeline.types import BatchOutcome
from vitguard.settings import load_settings


class RecordingConsumer:
    """Stands in for Faust's consumer: records which offsets became committable (Consumer.ack)."""

    def __init__(self) -> None:
        self.committable: list[int] = []

    def ack(self, message: Any) -> bool:
        self.committable.append(message.offset)
        return True


@dataclass
class Event:
    message: ConsumerMessage


def event(offset: int) -> Event:
    message = ConsumerMessage("in", 0, offset, 0.0, 0, None, b"k", b"{}", None)
    message.incref()  # the stream's own reference, as Faust's conductor gives it
    return Event(message)


class FakeStream:
    """take_events with Faust's semantics: a batch is acked when the next one is asked for, or on close."""

    def __init__(self, batches: list[list[Event]], consumer: RecordingConsumer) -> None:
        self.batches = batches
        self.consumer = consumer

    async def take_events(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        for batch in self.batches:
            try:
                yield batch
            finally:
                for e in batch:
                    await self.ack(e)

    async def ack(self, e: Event) -> bool:
        return e.message.ack(self.consumer)


class ScriptedProcessor:
    """Records the order of prepare/complete calls; ``gate`` holds complete() of a chosen batch."""

    def __init__(self, consumer: RecordingConsumer) -> None:
        self.consumer = consumer
        self.log: list[str] = []
        self.gate: dict[int, asyncio.Event] = {}

    async def prepare(self, raws: list[Any]) -> Any:
        first = raws[0].offset
        self.log.append(f"prepare {first}")
        return first

    async def complete(self, first: int) -> BatchOutcome:
        self.log.append(f"complete {first} start (committable {sorted(self.consumer.committable)})")
        if first in self.gate:
            await self.gate[first].wait()
        await asyncio.sleep(0.01)
        self.log.append(f"complete {first} end")
        return BatchOutcome()


def runtime(processor: Any) -> WorkerRuntime:
    return WorkerRuntime(load_settings(), processor)


async def test_offsets_become_committable_only_after_their_batch_completes() -> None:
    consumer = RecordingConsumer()
    batches = [[event(0), event(1)], [event(2), event(3)], [event(4)]]
    processor = ScriptedProcessor(consumer)
    await _consume(FakeStream(batches, consumer), runtime(processor), 2, 0.1, overlap=True)

    assert sorted(consumer.committable) == [0, 1, 2, 3, 4]
    log = processor.log
    # batch 2 is prepared while batch 0 completes (overlap), and completions stay in order
    assert log.index("prepare 2") < log.index("complete 0 end")
    assert [entry for entry in log if entry.endswith(" end")] == ["complete 0 end", "complete 2 end",
                                                                   "complete 4 end"]
    # when batch 2 starts completing, only batch 0 is committable: Faust's own ack did not release batch 2
    assert "complete 2 start (committable [0, 1])" in log


async def test_without_overlap_each_batch_completes_before_the_next_is_prepared() -> None:
    consumer = RecordingConsumer()
    processor = ScriptedProcessor(consumer)
    await _consume(FakeStream([[event(0)], [event(1)]], consumer), runtime(processor), 1, 0.1, overlap=False)
    assert processor.log.index("complete 0 end") < processor.log.index("prepare 1")
    assert sorted(consumer.committable) == [0, 1]


async def test_a_cancelled_worker_commits_nothing_of_its_unfinished_batches() -> None:
    consumer = RecordingConsumer()
    batches = [[event(0), event(1)], [event(2)], [event(3)]]
    processor = ScriptedProcessor(consumer)
    processor.gate[0] = asyncio.Event()  # batch 0 never finishes: a slow forward pass at shutdown
    task = asyncio.ensure_future(_consume(FakeStream(batches, consumer), runtime(processor), 2, 0.1, True))
    while "prepare 2" not in processor.log:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert consumer.committable == []  # neither the in-flight batch nor the prepared one
    assert all(e.message.acked for batch in batches[:2] for e in batch)  # abandoned, not waited for


def test_abandoned_messages_ignore_later_acks() -> None:
    consumer = RecordingConsumer()
    e = event(7)
    abandon([e])
    assert e.message.ack(consumer) is False and consumer.committable == []


def test_broker_url_from_bootstrap_list() -> None:
    assert faust_broker_url("a:9092, b:9093") == "kafka://a:9092;kafka://b:9093"
