"""The batching rule on its own: images up to max_size; while stream images wait, requests at most half of a short
pass."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Decoded, Parsed, StageTimes
from vitguard.pipeline.runtime.batcher import Group, ReadyQueue, Work
from vitguard.pipeline.types import RawMessage
from vitguard.schemas.events import ImageEvent


def decoded(i: int, request: bool = False) -> Work:
    raw = RawMessage(b"{}", None, "in", 0, i)
    event = ImageEvent(event_id=f"e{i}", content_id=f"c{i}", image_ref="https://example.test/x.jpg")
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return Work(Decoded(Parsed(raw, event), "0" * 64, np.zeros((3, 4, 4), np.float32), StageTimes()), fut, request)


def letter(i: int) -> Work:
    raw = RawMessage(b"{", None, "in", 0, i)
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return Work(DeadLettered(raw, dead_letter(raw, "invalid_json", "x")), fut)


async def test_requests_take_at_most_half_while_stream_images_wait() -> None:
    q = ReadyQueue(8, 0.0, lambda: 0)
    for i in range(10):
        q.put(decoded(i))
    for i in range(100, 110):
        q.put(decoded(i, request=True))
    first = q.take()
    assert sum(w.request for w in first) == 4 and len(first) == 8
    assert [w.value.parsed.raw.offset for w in first if not w.request] == [0, 1, 2, 3]  # type: ignore[union-attr]


def offsets(group: list[Work]) -> list[int]:
    return [w.value.parsed.raw.offset for w in group]  # type: ignore[union-attr]


def queued(q: ReadyQueue, stream: range, requests: range) -> ReadyQueue:
    """``q`` with stream images at offsets ``stream``, then requests at offsets ``requests``."""
    for i in stream:
        q.put(decoded(i))
    for i in requests:
        q.put(decoded(i, request=True))
    return q


async def test_a_pass_with_requests_is_short_while_stream_images_wait_requests_at_most_half() -> None:
    q = queued(ReadyQueue(8, 0.0, lambda: 0, request_max_size=4), range(20), range(100, 103))
    assert offsets(q.take()) == [100, 101, 0, 1]  # short: half requests, the stream the rest
    assert offsets(q.take()) == [102, 2, 3, 4]  # short again while a request waits
    assert offsets(q.take()) == list(range(5, 13))  # no request: a full pass of the stream


async def test_no_short_pass_without_stream_images_or_requests() -> None:
    q = ReadyQueue(8, 0.0, lambda: 0, request_max_size=2)
    for i in range(100, 110):
        q.put(decoded(i, request=True))
    q.put(letter(9))  # a dead letter in the stream queue is no stream image waiting for the model
    first = q.take()
    assert len(first) == 9 and sum(w.request for w in first) == 8  # requests fill a whole pass
    for i in range(10):
        q.put(decoded(i))
    assert offsets(q.take()) == [108, 0]  # now stream images wait: the pass with requests is short
    assert offsets(q.take()) == [109, 1]
    assert offsets(q.take()) == list(range(2, 10))  # no request left: full passes of the stream


async def test_request_max_size_at_or_above_max_size_keeps_full_passes() -> None:
    q = queued(ReadyQueue(4, 0.0, lambda: 0, request_max_size=16), range(8), range(100, 104))
    assert offsets(q.take()) == [100, 101, 0, 1]
    assert offsets(q.take()) == [102, 103, 2, 3]


async def test_requests_fill_the_batch_when_no_stream_image_waits() -> None:
    q = ReadyQueue(4, 0.0, lambda: 0)
    for i in range(6):
        q.put(decoded(i, request=True))
    assert len(q.take()) == 4 and len(q.take()) == 2 and q.take() == []


async def test_dead_letters_ride_along_without_using_image_slots() -> None:
    q = ReadyQueue(2, 0.0, lambda: 0)
    for i in range(3):
        q.put(decoded(i))
    q.put(letter(9))
    group = q.take()
    assert len(group) == 3 and sum(isinstance(w.value, Decoded) for w in group) == 2
    assert len(q.take()) == 1  # the third image, in order


async def test_next_group_never_waits_when_nothing_is_in_the_front_half() -> None:
    q = ReadyQueue(16, 5.0, lambda: 0)  # a long linger bound, but nothing more is coming
    q.put(decoded(0))
    group = await asyncio.wait_for(q.next_group(), 1.0)
    assert len(group) == 1


async def test_linger_is_an_upper_bound() -> None:
    in_front = [1]
    q = ReadyQueue(16, 0.05, lambda: in_front[0])
    q.put(decoded(0))
    group = await asyncio.wait_for(q.next_group(), 1.0)  # returns after at most ~max_wait_s, never blocks
    assert len(group) == 1


async def test_a_ready_event_waits_for_an_earlier_one_of_its_partition_at_most_order_wait_s() -> None:
    q = ReadyQueue(8, 0.0, lambda: 0, order_wait_s=0.2)
    early = q.expect(("in", 0))
    late = q.expect(("in", 0))
    other = q.expect(("in", 1))
    w_late, w_other = decoded(1), decoded(2)
    w_late.ticket, w_other.ticket = late, other
    q.put_many([w_late, w_other])
    assert [w.ticket for w in q.take()] == [other]  # partition 1 is not held by partition 0's straggler
    assert q.take() == []  # the later event of partition 0 waits for the earlier one ...
    group = await asyncio.wait_for(q.next_group(), 2.0)  # ... at most order_wait_s
    assert [w.ticket for w in group] == [late]
    q.forget(early)


async def test_a_group_is_taken_in_partition_order_once_the_earlier_event_is_ready() -> None:
    q = ReadyQueue(8, 0.0, lambda: 0, order_wait_s=10)
    tickets = [q.expect(("in", 0)) for _ in range(3)]
    works = [decoded(i) for i in range(3)]
    for w, t in zip(works, tickets, strict=True):
        w.ticket = t
    q.put_many([works[2], works[1]])
    assert q.take() == []
    q.put(works[0])
    assert [w.ticket for w in q.take()] == tickets


async def test_next_requests_takes_requests_only_and_waits_for_one() -> None:
    q = ReadyQueue(4, 0.0, lambda: 0)
    for i in range(3):
        q.put(decoded(i))
    waiting = asyncio.ensure_future(q.next_requests())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # stream images are not its business
    for i in range(100, 106):
        q.put(decoded(i, request=True))
    assert offsets(await asyncio.wait_for(waiting, 1.0)) == [100, 101, 102, 103]
    assert offsets(await q.next_requests()) == [104, 105]
    assert offsets(await asyncio.wait_for(q.next_group(), 1.0)) == [0, 1, 2]  # the stream is still queued


def test_merged_groups_keep_their_order_and_each_entry_its_prediction() -> None:
    loop = asyncio.new_event_loop()
    try:
        works = [Work(object(), loop.create_future()) for _ in range(5)]  # type: ignore[arg-type]
        a = Group(works[:2], {1: "p1"}, {"infer": 2.0})  # type: ignore[dict-item]
        b = Group(works[2:5], {0: "p2", 2: "p4"}, {"infer": 3.0, "decode": 1.0})  # type: ignore[dict-item]
        merged = Group.merged([a, b])
        assert merged.work == works
        assert merged.predicted == {1: "p1", 2: "p2", 4: "p4"}
        assert merged.stage_ms == {"infer": 5.0, "decode": 1.0}
        assert Group.merged([a]) is a
    finally:
        loop.close()
