"""Output size limits: the pure min/fallback rule, and what the real broker answers."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.admin import TopicAdmin, TopicSpec
from vitguard.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES, output_limit, read_output_limits
from vitguard.settings import KafkaSettings


@pytest.mark.parametrize(
    ("topic", "broker", "producer", "expected"),
    [
        (2_000_000, 5_000_000, 10_000_000, 2_000_000),  # the topic config wins over the broker default
        (2_000_000, None, 1_000_000, 1_000_000),  # capped by the producer's request size
        (None, 3_000_000, 10_000_000, 3_000_000),  # no topic answer: the broker's message.max.bytes
        (None, None, 10_000_000, DEFAULT_MAX_MESSAGE_BYTES),  # no answer at all: 1 MiB
        (None, None, 500, 500),
    ],
)
def test_output_limit_is_the_smaller_of_broker_answer_and_producer(
    topic: int | None, broker: int | None, producer: int, expected: int
) -> None:
    assert output_limit(topic, broker, producer) == expected


def test_output_limit_refuses_a_nonsense_producer_size() -> None:
    with pytest.raises(ValueError, match="producer_max_request_bytes"):
        output_limit(None, None, 0)


class SilentAdmin:
    """An admin whose broker answers no describe (as when DescribeConfigs is refused or times out)."""

    def __init__(self, broker: dict[str, str] | None = None) -> None:
        self.broker = broker
        self.broker_asks = 0

    def topic_config(self, topic: str) -> dict[str, str]:
        raise ServiceUnavailableError("no answer")

    def broker_config(self) -> dict[str, str]:
        self.broker_asks += 1
        if self.broker is None:
            raise ServiceUnavailableError("no answer")
        return self.broker


def test_no_describe_answer_falls_back_to_one_mib_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    admin: Any = SilentAdmin()
    with caplog.at_level(logging.WARNING, logger="vitguard.kafka.limits"):
        limits = read_output_limits(KafkaSettings(), ["a", "b", "a"], 5_000_000, 1.0, admin=admin)
    assert limits == {"a": DEFAULT_MAX_MESSAGE_BYTES, "b": DEFAULT_MAX_MESSAGE_BYTES}
    assert admin.broker_asks == 1
    assert len([r for r in caplog.records if r.name == "vitguard.kafka.limits"]) == 1


def test_broker_config_is_the_fallback_for_topics_without_an_answer() -> None:
    admin: Any = SilentAdmin(broker={"message.max.bytes": "3000000"})
    limits = read_output_limits(KafkaSettings(), ["a", "b"], 5_000_000, 1.0, admin=admin)
    assert limits == {"a": 3_000_000, "b": 3_000_000}
    assert admin.broker_asks == 1


@pytest.mark.integration
def test_limits_from_the_real_broker(kafka_bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    big, plain = f"lim-big-{uuid.uuid4().hex[:8]}", f"lim-plain-{uuid.uuid4().hex[:8]}"
    TopicAdmin(kafka).create([TopicSpec(big, config={"max.message.bytes": "2000000"}), TopicSpec(plain)])

    limits = read_output_limits(kafka, [big, plain], 10_000_000, 10.0)
    assert limits[big] == 2_000_000  # the topic's own config, described by the broker
    # A topic on defaults: Apache Kafka describes its inherited max.message.bytes (~1 MiB); a broker that
    # describes only explicit configs leaves the broker default or the 1 MiB fallback. Either way <= 10 MB.
    assert 0 < limits[plain] <= 10_000_000

    capped = read_output_limits(kafka, [big], 1_500_000, 10.0)
    assert capped[big] == 1_500_000  # the producer's request size caps it


def test_an_inline_image_at_the_capacity_fits_its_message_with_the_base64_growth_counted() -> None:
    """Issue 30: a 791 KB PNG became a 1,055,477-byte message that default Kafka refuses."""
    import base64
    import json

    from vitguard.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES, INLINE_ENVELOPE_BYTES, inline_capacity
    from vitguard.schemas.events import MAX_METADATA_KEYS
    from vitguard.settings import FetchSettings

    for limit in (DEFAULT_MAX_MESSAGE_BYTES, 1_000_000, 5 * 1024 * 1024):
        image = bytes(inline_capacity(limit))
        metadata = {f"key-{i:03d}": "v" * 1000 for i in range(MAX_METADATA_KEYS)}  # the fullest envelope
        event = {"event_id": "e" * 128, "content_id": "c" * 128, "tenant": "t" * 128,
                 "created_at": "2026-12-07T10:00:00.000000+00:00", "metadata": metadata,
                 "image_ref": "data:image/png;base64," + base64.b64encode(image).decode()}
        assert len(json.dumps(event).encode()) <= limit
        assert len(json.dumps(event).encode()) > limit - INLINE_ENVELOPE_BYTES  # the room is not wasted
    assert FetchSettings().max_inline_bytes <= inline_capacity(1_000_000)  # the workers' default fits too
    assert inline_capacity(100) == 0
