"""The pipeline's emit step publishes review requests beside the verdicts and alerts they are about."""

from __future__ import annotations

import json
from collections.abc import Sequence

from review_values import alert, verdict

from vitguard.health import HealthState
from vitguard.kafka.limits import UNREAD_TOPIC_LIMIT
from vitguard.pipeline.runtime.failure import Backoff, PublishPolicy
from vitguard.pipeline.stages.emit import Emitter
from vitguard.pipeline.types import OutMessage, OutputTopics, RawMessage, TopicLimits
from vitguard.schemas.events import ImageEvent
from vitguard.schemas.review import ReviewRequest
from vitguard.settings import ReviewSettings


class Sink:
    def __init__(self) -> None:
        self.messages: list[OutMessage] = []

    async def send(self, messages: Sequence[OutMessage]) -> list[BaseException | None]:
        self.messages.extend(messages)
        return [None] * len(messages)


def _answer(cid: str, score: float) -> tuple[RawMessage, ImageEvent, object]:
    raw = RawMessage(value=b"{}", key=cid.encode(), topic="in", partition=0, offset=0)
    return raw, ImageEvent(event_id=f"e-{cid}", content_id=cid, image_ref=f"https://cdn.example/{cid}.jpg"), \
        verdict(cid, score)


def _emitter(sink: Sink, topics: OutputTopics, review: ReviewSettings | None) -> Emitter:
    policy = PublishPolicy(HealthState(), backoff=Backoff(0.001, 0.002), timeout_s=5)
    return Emitter(sink, topics, TopicLimits(UNREAD_TOPIC_LIMIT), policy, review=review)


async def test_uncertain_verdicts_and_alerts_become_review_requests() -> None:
    sink = Sink()
    topics = OutputTopics("verdicts", "alerts", "dlq", review_requests="review-requests")
    answers = [_answer("sure", 0.01), _answer("unsure", 0.5), _answer("dup", 0.97)]
    await _emitter(sink, topics, ReviewSettings()).emit(answers, [alert("dup")])  # type: ignore[arg-type]
    requests = [ReviewRequest.model_validate(json.loads(m.value)) for m in sink.messages
                if m.topic == "review-requests"]
    assert {(r.content_id, tuple(r.reasons)) for r in requests} == {("unsure", ("uncertain",)),
                                                                     ("dup", ("near_duplicate",))}
    assert all(m.key == json.loads(m.value)["content_id"].encode() for m in sink.messages
               if m.topic == "review-requests")
    assert [m.topic for m in sink.messages].count("verdicts") == 3


async def test_no_review_topic_no_requests() -> None:
    sink = Sink()
    await _emitter(sink, OutputTopics("verdicts", "alerts", "dlq"), ReviewSettings()).emit(
        [_answer("unsure", 0.5)], [])  # type: ignore[list-item]
    assert [m.topic for m in sink.messages] == ["verdicts"]
