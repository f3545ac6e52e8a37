"""UploadEventPublisher without a reachable broker: local validation, backpressure, failure reporting."""

from __future__ import annotations

import pytest

from vitguard.producers.publisher import (
    DeliveryResult,
    InvalidEventError,
    PublishError,
    UploadEventPublisher,
    validate_event,
)
from vitguard.schemas.events import ImageEvent
from vitguard.settings import KafkaSettings
from vitguard.testing.services import free_port


def _nowhere() -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")


def test_invalid_events_are_refused_locally_with_a_reason() -> None:
    with pytest.raises(InvalidEventError) as bad_ref:
        validate_event({"content_id": "c1", "image_ref": "gopher://x"})
    assert bad_ref.value.reason == "schema_violation"
    assert "image_ref" in str(bad_ref.value)
    with pytest.raises(InvalidEventError) as bad_json:
        validate_event(b"{not json")
    assert bad_json.value.reason == "invalid_json"
    unchecked = ImageEvent.model_construct(content_id="has space", image_ref="https://x/y.png")
    with pytest.raises(InvalidEventError, match="content_id"):
        validate_event(unchecked)


def test_publish_rejects_before_sending() -> None:
    publisher = UploadEventPublisher(_nowhere(), "topic", delivery_timeout_s=1)
    with pytest.raises(InvalidEventError):
        publisher.publish({"content_id": "", "image_ref": "https://x/y.png"})
    assert publisher.in_flight == 0
    publisher.close(timeout_s=1)


def test_full_queue_waits_then_failures_surface_on_flush() -> None:
    """A tiny librdkafka queue and no broker: publish must block (not raise BufferError), and every
    message must come back as a failed delivery, raised by flush."""
    seen: list[DeliveryResult] = []
    publisher = UploadEventPublisher(
        _nowhere(),
        "topic",
        delivery_timeout_s=1.0,
        on_delivery=seen.append,
        producer_config={"queue.buffering.max.messages": 2, "message.timeout.ms": 800},
    )
    events = [ImageEvent(content_id=f"c{i}", image_ref="https://x/y.png") for i in range(5)]
    for event in events:
        publisher.publish(event)  # the 3rd blocks until the first ones time out
    with pytest.raises(PublishError) as failed:
        publisher.flush(timeout_s=10)
    assert len(failed.value.failures) == 5
    assert {f.key for f in failed.value.failures} == {e.content_id for e in events}
    assert {f.error for f in failed.value.failures} == {"_MSG_TIMED_OUT"}
    assert [r.event_id for r in seen] == [e.event_id for e in events]
    assert publisher.failure_counts() == {"_MSG_TIMED_OUT": 5}
    publisher.flush(timeout_s=1)  # failures are raised once


def test_in_flight_bound_blocks_publish() -> None:
    publisher = UploadEventPublisher(
        _nowhere(), "topic", max_in_flight=1, delivery_timeout_s=0.5, producer_config={"message.timeout.ms": 500}
    )
    publisher.publish(ImageEvent(content_id="a", image_ref="https://x/a.png"))
    assert publisher.in_flight == 1
    publisher.publish(ImageEvent(content_id="b", image_ref="https://x/b.png"))  # waits for a's report
    assert publisher.in_flight == 1
    assert [f.key for f in publisher.failures] == ["a"]


def test_context_manager_keeps_the_original_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), UploadEventPublisher(
        _nowhere(), "topic", delivery_timeout_s=0.5, producer_config={"message.timeout.ms": 500}
    ) as publisher:
        publisher.publish(ImageEvent(content_id="a", image_ref="https://x/a.png"))
        raise RuntimeError("boom")
    with pytest.raises(PublishError, match="closed"):
        publisher.publish(ImageEvent(content_id="a", image_ref="https://x/a.png"))
