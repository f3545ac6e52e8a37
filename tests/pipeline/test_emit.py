"""The emit stage: outputs fit their topic, retries re-send only the unacknowledged, rejections and fatal errors."""

from __future__ import annotations

import json
import os

import pytest

from vitguard.errors import FatalError
from vitguard.health import HealthState
from vitguard.kafka.limits import UNREAD_TOPIC_LIMIT
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.runtime.failure import Backoff, PublishPolicy
from vitguard.pipeline.runtime.sinks import ListSink
from vitguard.pipeline.stages.emit import RECORD_OVERHEAD_BYTES, Emitter, fit_dead_letter
from vitguard.pipeline.types import OutMessage, OutputTopics, RawMessage, TopicLimits
from vitguard.schemas.events import DeadLetter, ImageEvent, Verdict

TOPICS = OutputTopics("verdicts", "alerts", "dead-letters")


from aiokafka.errors import MessageSizeTooLargeError as SizeRejected  # noqa: E402 - the errors Faust's producer raises
from aiokafka.errors import TopicAuthorizationFailedError as AuthFailed  # noqa: E402


def raw(offset: int, value: bytes) -> RawMessage:
    return RawMessage(value=value, key=b"k", topic="in", partition=0, offset=offset)


def verdict(i: int, **extra: object) -> Verdict:
    return Verdict(event_id=f"e{i}", content_id=f"c{i}", label="safe", unsafe_score=0.1, top_class="SFW",
                   scores={"SFW": 0.9, "NSFW": 0.1}, model_name="m", model_version="1", **extra)  # type: ignore[arg-type]


def emitter(sink: ListSink, limit: int = 1_048_576, health: HealthState | None = None) -> Emitter:
    policy = PublishPolicy(health or HealthState(), backoff=Backoff(0.001, 0.002), timeout_s=5)
    return Emitter(sink, TOPICS, TopicLimits(UNREAD_TOPIC_LIMIT, {TOPICS.verdicts: limit, TOPICS.dead_letters: limit,
                                                                    TOPICS.alerts: limit}), policy)


@pytest.mark.parametrize("payload", [b"x" * 3_000_000, os.urandom(2_000_000), ("\u00e9\u0001" * 500_000).encode()])
def test_a_dead_letter_too_large_for_its_topic_is_truncated_and_still_identifies_the_original(payload: bytes) -> None:
    letter = dead_letter(raw(7, payload), "invalid_json", "not JSON")
    fitted, encoded = fit_dead_letter(letter, 1_000_000)
    assert len(encoded) + len(b"k") + RECORD_OVERHEAD_BYTES <= 1_000_000
    assert fitted.payload_truncated and fitted.payload_size == len(payload)
    assert fitted.payload_sha256 == letter.payload_sha256 and fitted.source_offset == 7
    head = fitted.original_bytes(allow_truncated=True)
    assert payload.startswith(head) and len(head) > 100_000
    with pytest.raises(ValueError, match="truncated"):
        fitted.original_bytes()


def test_a_small_dead_letter_is_kept_whole() -> None:
    letter = dead_letter(raw(1, b"{broken"), "invalid_json", "x")
    fitted, _ = fit_dead_letter(letter, 1_000_000)
    assert fitted == letter and not fitted.payload_truncated and fitted.original_bytes() == b"{broken"


async def test_a_verdict_too_large_becomes_that_events_dead_letter() -> None:
    sink = ListSink(TOPICS)
    event = ImageEvent(event_id="e1", content_id="c1", image_ref="https://example.test/a.jpg",
                       metadata={f"k{i}": "v" * 1000 for i in range(30)})
    big = verdict(1, metadata=dict(event.metadata))
    final = await emitter(sink, limit=20_000).emit([(raw(1, event.model_dump_json().encode()), event, big)], [])
    assert isinstance(final[0], DeadLetter) and final[0].reason == "output_too_large"
    assert sink.dead_letters == [final[0]] and not sink.verdicts


async def test_a_retry_re_sends_only_the_messages_not_yet_acknowledged() -> None:
    sink = ListSink(TOPICS)
    flaky = {"c1": 2}

    def reject(m: OutMessage) -> BaseException | None:
        cid = json.loads(m.value)["content_id"]
        if flaky.get(cid, 0) > 0:
            flaky[cid] -= 1
            return TimeoutError("not acknowledged")
        return None

    sink.reject = reject
    health = HealthState()
    answers = [(raw(i, b"{}"), None, verdict(i)) for i in range(3)]
    final = await emitter(sink, health=health).emit(answers, [])  # type: ignore[arg-type]
    assert [v.content_id for v in sink.verdicts] == ["c0", "c2", "c1"]  # each exactly once
    assert final == [a for _, _, a in answers] and sink.send_calls == 3
    assert health.publish_failing_since is None  # recovered


async def test_a_message_the_broker_rejects_becomes_a_minimal_output_rejected_letter() -> None:
    sink = ListSink(TOPICS)
    sink.reject = lambda m: SizeRejected("too large") if m.topic == TOPICS.verdicts else None
    final = await emitter(sink).emit([(raw(5, b"{}"), None, verdict(5))], [])
    assert isinstance(final[0], DeadLetter) and final[0].reason == "output_rejected"
    assert final[0].payload_truncated and final[0].source_offset == 5 and sink.dead_letters == final


async def test_rejected_even_as_a_minimal_letter_is_fatal() -> None:
    sink = ListSink(TOPICS)
    sink.reject = lambda m: SizeRejected("too large")
    with pytest.raises(FatalError, match="minimal dead letter"):
        await emitter(sink).emit([(raw(5, b"{}"), None, verdict(5))], [])


async def test_authorization_failure_is_fatal_not_retried_forever() -> None:
    sink = ListSink(TOPICS)
    sink.reject = lambda m: AuthFailed("denied")
    with pytest.raises(FatalError, match="denied"):
        await emitter(sink).emit([(raw(1, b"{}"), None, verdict(1))], [])
    assert sink.send_calls == 1
