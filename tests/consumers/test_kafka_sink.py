"""Publishing with the worker's librdkafka producer against the real broker: what it refuses, how the emit stage
takes that (a refusal is a rejected output, never a reason to stop the worker), and that a call's delivery
reports come back to the event loop without blocking it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from confluent_kafka import KafkaException

from vitguard.consumers.sink import KafkaSink
from vitguard.health import HealthState
from vitguard.kafka.errors import classify_publish_error
from vitguard.kafka.limits import PRODUCER_MAX_REQUEST_BYTES, UNREAD_TOPIC_LIMIT
from vitguard.kafka.reader import read_to_end
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.runtime.failure import Backoff, PublishPolicy
from vitguard.pipeline.stages.emit import Emitter
from vitguard.pipeline.types import OutMessage, OutputTopics, RawMessage, TopicLimits
from vitguard.schemas.events import MAX_KEY_BYTES, DeadLetter
from vitguard.settings import KafkaSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def sink(kafka_bootstrap: str) -> AsyncIterator[KafkaSink]:
    """The worker's sink (its producer's size limit and delivery timeout)."""
    topics = OutputTopics("unused-v", "unused-a", "unused-dl")
    kafka_sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka_bootstrap), topics, timeout_s=20)
    try:
        yield kafka_sink
    finally:
        await kafka_sink.close()


async def test_a_message_the_producer_refuses_for_its_size_is_rejected_not_fatal(
        sink: KafkaSink, new_topic: Callable[..., str]) -> None:
    """librdkafka refuses a message over ``message.max.bytes`` in ``produce`` itself: that message's result."""
    topic = new_topic()
    results = await sink.send([
        OutMessage(topic, b"k", b"x" * (PRODUCER_MAX_REQUEST_BYTES + 1)), OutMessage(topic, b"k", b"small")])
    refused, sent = results
    assert isinstance(refused, KafkaException)
    assert classify_publish_error(refused) == "rejected" and sent is None


async def test_delivery_reports_come_back_to_the_loop_while_it_runs_on(
        sink: KafkaSink, new_topic: Callable[..., str], kafka_bootstrap: str) -> None:
    """Many calls at once, each answered with every message's own result; the loop is never blocked meanwhile
    (a ticker keeps running), and what was acknowledged is on the topic, in order per key."""
    topic = new_topic()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    running = asyncio.create_task(ticker())
    calls = [[OutMessage(topic, f"k{c % 3}".encode(), f"{c}-{i}".encode()) for i in range(50)] for c in range(20)]
    results = await asyncio.gather(*(sink.send(call) for call in calls))
    running.cancel()
    assert all(r is None for call in results for r in call)
    assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) < 0.5
    records = read_to_end(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, 20.0)
    assert len(records) == 1000
    for key in (b"k0", b"k1", b"k2"):
        values = [r.value.decode() for r in records if r.key == key]  # type: ignore[union-attr]
        per_call = [[v for v in values if v.startswith(f"{c}-")] for c in range(20)]
        assert all(vs == sorted(vs, key=lambda v: int(v.split("-")[1])) for vs in per_call)


async def test_an_unreachable_broker_is_a_timeout_for_each_message_not_a_hang() -> None:
    """Nothing listens: every message reports its delivery timeout (transient: the emit stage retries)."""
    sink = KafkaSink(KafkaSettings(bootstrap_servers="127.0.0.1:1"), OutputTopics("v", "a", "dl"), timeout_s=1.0)
    started = time.monotonic()
    results = await sink.send([OutMessage("v", b"k", b"one"), OutMessage("v", b"k", b"two")])
    await sink.close(timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert all(r is not None and classify_publish_error(r) == "transient" for r in results)


async def test_a_huge_input_key_still_gets_its_dead_letter(
        sink: KafkaSink, new_topic: Callable[..., str], kafka_bootstrap: str) -> None:
    """An input record with a 170 KB key of control characters (6 bytes each in JSON): its dead letter kept the
    whole key, came to 1.2 MB, was refused even when minimal, and the worker stopped, the event uncommitted (a
    partition stalled). With no topic limit read (the broker did not answer at start-up) the default must be
    the producer's own limit, not Kafka's 1 MiB."""
    assert UNREAD_TOPIC_LIMIT <= PRODUCER_MAX_REQUEST_BYTES
    topics = OutputTopics(new_topic(prefix="v"), new_topic(prefix="a"), new_topic(prefix="dl"))
    policy = PublishPolicy(HealthState(), backoff=Backoff(0.01, 0.02), timeout_s=20)
    emitter = Emitter(sink, topics, TopicLimits(UNREAD_TOPIC_LIMIT), policy)
    raws = [RawMessage(b"not json", b"\x01" * 170_000, "in", 0, 3),
            RawMessage(b"{" * 999_000, "\u00e9".encode() * 10_000, "in", 0, 4)]  # a payload near the limit too
    final = await emitter.emit([(r, None, dead_letter(r, "invalid_json", "not JSON")) for r in raws], [])
    assert all(isinstance(f, DeadLetter) for f in final)
    records = read_to_end(KafkaSettings(bootstrap_servers=kafka_bootstrap), topics.dead_letters, 20.0)
    assert len(records) == 2
    by_offset = {DeadLetter.model_validate_json(r.value or b"").source_offset: r for r in records}
    first, second = (DeadLetter.model_validate_json(by_offset[o].value or b"") for o in (3, 4))
    assert first.key == "\x01" * MAX_KEY_BYTES and first.original_bytes() == b"not json"
    assert second.key == "\u00e9" * (MAX_KEY_BYTES // 2) and second.payload_truncated
    assert second.payload_size == 999_000 and (by_offset[4].key or b"") == second.key.encode()
