"""Produce-and-wait and the typed reader against the real broker."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from vitguard.kafka.admin import TopicNotFoundError
from vitguard.kafka.produce import OutboundMessage, publish_and_wait, raise_on_failures
from vitguard.kafka.reader import RawRecord, TopicReader, decode, read_models, read_to_end
from vitguard.schemas.events import ImageEvent
from vitguard.settings import KafkaSettings

pytestmark = pytest.mark.integration


def _event(i: int) -> ImageEvent:
    return ImageEvent(content_id=f"c-{i}", image_ref=f"https://example.com/{i}.png")


def test_every_message_gets_its_delivery_result_and_reads_back_typed(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = new_topic(partitions=2)
    messages = [OutboundMessage(topic, _event(i).model_dump_json().encode(), f"c-{i}".encode()) for i in range(4)]
    messages.append(OutboundMessage(topic, b"{not json", b"bad", partition=1))
    results = publish_and_wait(kafka, messages)
    assert [r.ok for r in results] == [True] * 5
    assert results[-1].partition == 1 and results[-1].offset is not None
    raise_on_failures(results)

    records = read_models(kafka, topic, ImageEvent)
    assert sorted(r.value.content_id for r in records if r.value is not None) == [f"c-{i}" for i in range(4)]
    (bad,) = [r for r in records if r.error is not None]
    assert bad.error.reason == "invalid_json" and bad.error.raw == b"{not json"
    assert bad.key == b"bad" and bad.partition == 1


def test_a_refused_message_is_a_failed_result_not_an_exception(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = new_topic()
    results = publish_and_wait(
        kafka, [OutboundMessage(topic, b"x" * 5000), OutboundMessage(topic, b"ok")],
        producer_config={"message.max.bytes": 2000},
    )
    assert results[0].error == "MSG_SIZE_TOO_LARGE" and results[1].ok
    with pytest.raises(Exception, match="MSG_SIZE_TOO_LARGE"):
        raise_on_failures(results)


def test_reader_from_the_end_sees_only_new_records(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    topic = new_topic()
    raise_on_failures(publish_and_wait(kafka, [OutboundMessage(topic, b"old")]))
    with TopicReader(kafka, topic, from_beginning=False) as reader:
        raise_on_failures(publish_and_wait(kafka, [OutboundMessage(topic, b"new")]))
        got = list(reader.follow(max_messages=1, idle_timeout_s=15))
    assert [r.value for r in got] == [b"new"]
    assert [r.value for r in read_to_end(kafka, topic)] == [b"old", b"new"]


def test_reader_refuses_a_missing_topic(kafka_bootstrap: str) -> None:
    with pytest.raises(TopicNotFoundError):
        TopicReader(KafkaSettings(bootstrap_servers=kafka_bootstrap), f"missing-{uuid.uuid4().hex[:8]}")


def test_decode_schema_violation_keeps_position() -> None:
    record = RawRecord("t", 2, 7, b"k", b'{"content_id": ""}', 123)
    decoded = decode(record, ImageEvent)
    assert decoded.value is None and decoded.error is not None
    assert decoded.error.reason == "schema_violation" and (decoded.partition, decoded.offset) == (2, 7)
