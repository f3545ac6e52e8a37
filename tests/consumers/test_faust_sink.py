"""Publishing through the Faust app's own producer against the real broker: what it refuses, and how the emit
stage takes that (a refusal is a rejected output, never a reason to stop the worker)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
import pytest

from vitguard.consumers.sink import FaustSink
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
async def producer_app(kafka_bootstrap: str) -> AsyncIterator[Any]:
    """A Faust app with the worker's producer size limit, its producer started."""
    app = faust.App(f"sink-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}",
                    producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES, topic_allow_declare=False)
    await app.producer.start()
    try:
        yield app
    finally:
        await app.producer.stop()


async def test_a_message_the_producer_refuses_for_its_size_is_rejected_not_fatal(
        producer_app: Any, new_topic: Callable[..., str]) -> None:
    """Faust raises ``ProducerSendError`` from aiokafka's ``MessageSizeTooLargeError``: classified by its cause."""
    topic = new_topic()
    results = await FaustSink(producer_app).send([
        OutMessage(topic, b"k", b"x" * (PRODUCER_MAX_REQUEST_BYTES + 1)), OutMessage(topic, b"k", b"small")])
    refused, sent = results
    assert refused is not None and type(refused).__name__ == "ProducerSendError"
    assert classify_publish_error(refused) == "rejected" and sent is None


async def test_a_huge_input_key_still_gets_its_dead_letter(
        producer_app: Any, new_topic: Callable[..., str], kafka_bootstrap: str) -> None:
    """An input record with a 170 KB key of control characters (6 bytes each in JSON): its dead letter kept the
    whole key, came to 1.2 MB, was refused even when minimal, and the worker stopped, the event uncommitted (a
    partition stalled). With no topic limit read (the broker did not answer at start-up) the default must be
    the producer's own limit, not Kafka's 1 MiB."""
    assert UNREAD_TOPIC_LIMIT <= PRODUCER_MAX_REQUEST_BYTES
    topics = OutputTopics(new_topic(prefix="v"), new_topic(prefix="a"), new_topic(prefix="dl"))
    policy = PublishPolicy(HealthState(), backoff=Backoff(0.01, 0.02), timeout_s=20)
    emitter = Emitter(FaustSink(producer_app), topics, TopicLimits(UNREAD_TOPIC_LIMIT), policy)
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
