"""The emit stage: encode each output so that it fits its topic, publish, and re-send only what was not acked.

Size rule: an output is at most its topic's limit (the smaller of the topic's ``max.message.bytes`` and the
producer's max request size, read from the broker at start-up). A dead letter that would not fit keeps only
the first bytes of the original payload, plus the original's size, SHA-256 and source offset, and says
``payload_truncated``. A verdict that would not fit (huge metadata) becomes that event's ``output_too_large``
dead letter. A message the broker rejects anyway becomes an ``output_rejected`` dead letter with no payload;
if even that is rejected, the worker stops (:class:`~vitguard.errors.FatalError`): it cannot answer the event.

Retry rule: every message gets its own acknowledgement; a round re-sends only the unacknowledged ones, so a
retry never duplicates an acknowledged verdict.

Review requests (:mod:`vitguard.review.requests`: uncertain verdicts, every alert) go out in the same
round as the verdicts they are about, like alerts: best effort, never holding up an event's answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vitguard import metrics
from vitguard.errors import FatalError, ReasonCode
from vitguard.pipeline.core import dead_letter, decided_by
from vitguard.pipeline.runtime.failure import PublishPolicy
from vitguard.pipeline.types import OutMessage, OutputTopics, RawMessage, Sink, TopicLimits
from vitguard.policies.compiled import PolicyBook
from vitguard.policies.live import PolicyHolder
from vitguard.review.metrics import REQUESTS as REVIEW_REQUESTS
from vitguard.review.requests import build_review_requests, is_uncertain
from vitguard.schemas.events import DeadLetter, ImageEvent, NearDuplicateAlert, Verdict
from vitguard.settings import ReviewSettings

__all__ = [
    "RECORD_OVERHEAD_BYTES",
    "Answer",
    "Emitter",
    "encode_answer",
    "fit_dead_letter",
]

_log = logging.getLogger(__name__)

RECORD_OVERHEAD_BYTES = 512
"""Headroom for the record's framing (batch header, attributes, varints) on top of key and value."""

Answer = Verdict | DeadLetter


def _room(limit: int, key: bytes | None) -> int:
    return limit - RECORD_OVERHEAD_BYTES - (len(key) if key else 0)


def fit_dead_letter(letter: DeadLetter, limit: int) -> tuple[DeadLetter, bytes]:
    """``letter`` (or a truncated copy) and its encoding, at most ``limit`` bytes with its key and framing."""
    key = letter.key.encode() if letter.key is not None else None
    value = letter.model_dump_json().encode()
    room = _room(limit, key)
    if len(value) <= room:
        return letter, value
    empty = len(letter.truncated(0).model_dump_json().encode())
    keep = max(0, room - empty)
    while True:
        # JSON escaping (UTF-8) or base64 can grow the payload: shrink until it fits
        cut = letter.truncated(keep)
        value = cut.model_dump_json().encode()
        if len(value) <= room or keep == 0:
            return cut, value
        keep = max(0, min(keep - 1, keep * room // len(value)))


def encode_answer(
    raw: RawMessage, answer: Answer, topics: OutputTopics, limits: TopicLimits, event: ImageEvent | None
) -> tuple[Answer, OutMessage]:
    """The message that answers ``raw``, fitted to its topic (a too-large verdict becomes a dead letter)."""
    if isinstance(answer, Verdict):
        key = answer.content_id.encode()
        value = answer.model_dump_json().encode()
        if len(value) <= _room(limits.of(topics.verdicts), key):
            return answer, OutMessage(topics.verdicts, key, value)
        answer = dead_letter(
            raw, "output_too_large",
            f"the verdict is {len(value)} bytes, over the verdict topic's limit (event metadata too large)", event,
        )
    letter, encoded = fit_dead_letter(answer, limits.of(topics.dead_letters))
    letter_key = letter.key.encode() if letter.key is not None else None
    return letter, OutMessage(topics.dead_letters, letter_key, encoded)


def _rejected_letter(raw: RawMessage, event: ImageEvent | None, why: str, reason: ReasonCode) -> DeadLetter:
    return dead_letter(raw, reason, why, event).truncated(0)


@dataclass
class _Slot:
    raw: RawMessage | None
    event: ImageEvent | None
    answer: Answer | None
    message: OutMessage
    minimal: bool = False
    kind: str = "alert"
    """What an output that answers no event is (a metrics label when it is dropped)."""
    reasons: tuple[str, ...] = ()
    """A review request's reasons (metrics)."""


def uncertain_in(book: PolicyBook | None, review: ReviewSettings) -> Callable[[Verdict], bool]:
    """Whether a verdict's score is in the review band of the policy that decided it (a policy the document in
    force no longer has, or none: the band of the review settings)."""
    def uncertain(verdict: Verdict) -> bool:
        policy = book.named(verdict.policy) if book is not None else None
        if policy is not None:
            return policy.uncertain(verdict.unsafe_score)
        return is_uncertain(verdict.unsafe_score, review)
    return uncertain


def shadow_verdicts(book: PolicyBook, verdicts: Sequence[Verdict]) -> list[tuple[Verdict, Verdict]]:
    """Each live verdict the model decided whose policy has a shadow, with the verdict the shadow would have
    made of the same scores (label, score, categories, action, policy and version are the shadow's)."""
    out = []
    for verdict in verdicts:
        active = book.named(verdict.policy)
        if active is None or verdict.label_source != "model" or verdict.replay_id is not None:
            continue
        shadow = book.shadow_of(active)
        if shadow is None:
            continue
        d = shadow.decide(verdict.scores)
        out.append((verdict, verdict.model_copy(update={
            "label": d.label, "unsafe_score": d.unsafe_score, **decided_by(d),
            "cluster_id": verdict.cluster_id if d.label == "unsafe" else None})))
    return out


def count_shadow_decisions(pairs: Sequence[tuple[Verdict, Verdict]]) -> None:
    """``vitguard_policy_shadow_decisions_total`` for verdicts published with their shadows'."""
    for active, shadow in pairs:
        metrics.POLICY_SHADOW_DECISIONS.labels(active.policy or "", shadow.policy or "", active.action or "",
                                               shadow.action or "").inc()


class Emitter:
    """Publishes one batch's answers and alerts through a :class:`Sink` until every one is acknowledged.

    Args:
        sink: per-message delivery results.
        topics: where each kind of output goes.
        limits: largest message per topic (bytes).
        policy: classification, backoff and the deadline of one round.
        review: with ``topics.review_requests`` set, review requests are published.
        policies: the policy document in force: each verdict's review band is its policy's, and a policy's
            shadow judges the verdicts beside it (counted, and published when ``topics.shadow_verdicts`` is set).
    """

    def __init__(
        self, sink: Sink, topics: OutputTopics, limits: TopicLimits, policy: PublishPolicy,
        review: ReviewSettings | None = None, policies: PolicyHolder | None = None,
    ) -> None:
        self.sink = sink
        self.topics = topics
        self.limits = limits
        self.policy = policy
        self.review = review
        self.policies = policies

    async def emit(
        self,
        answers: Sequence[tuple[RawMessage, ImageEvent | None, Answer]],
        alerts: Sequence[NearDuplicateAlert],
    ) -> list[Answer]:
        """Publish; returns the answer finally published for each entry of ``answers`` (same order)."""
        slots: list[_Slot] = []
        for raw, event, answer in answers:
            fitted, message = encode_answer(raw, answer, self.topics, self.limits, event)
            if isinstance(fitted, DeadLetter) and fitted.payload_truncated:
                metrics.OUTPUTS_TRUNCATED.inc()
            slots.append(_Slot(raw, event, fitted, message))
        alert_limit = self.limits.of(self.topics.alerts)
        for alert in alerts:
            key, value = alert.content_id.encode(), alert.model_dump_json().encode()
            if len(value) > _room(alert_limit, key):
                metrics.OUTPUTS_DROPPED.labels("alert").inc()
                _log.error("alert for %s is %d bytes, over the alert topic's limit; dropped", alert.content_id,
                           len(value))
                continue
            slots.append(_Slot(None, None, None, OutMessage(self.topics.alerts, key, value)))
        book = self.policies.book if self.policies is not None else None
        reviews = self._review_slots(slots, alerts, book)
        shadows = shadow_verdicts(book, [s.answer for s in slots if isinstance(s.answer, Verdict)]) if (
            book is not None and book.shadows) else []
        await self._publish(slots + reviews + self._shadow_slots(shadows))
        for slot in reviews:
            for reason in slot.reasons:
                REVIEW_REQUESTS.labels(reason).inc()
        count_shadow_decisions(shadows)
        return [s.answer for s in slots if s.raw is not None]  # type: ignore[misc]

    def _shadow_slots(self, shadows: Sequence[tuple[Verdict, Verdict]]) -> list[_Slot]:
        """The shadow verdicts, when they have a topic (one too large for it is dropped and counted)."""
        topic = self.topics.shadow_verdicts
        if not topic:
            return []
        limit = self.limits.of(topic)
        out = []
        for _, shadow in shadows:
            key, value = shadow.content_id.encode(), shadow.model_dump_json().encode()
            if len(value) > _room(limit, key):
                metrics.OUTPUTS_DROPPED.labels("shadow_verdict").inc()
                continue
            out.append(_Slot(None, None, None, OutMessage(topic, key, value), kind="shadow_verdict"))
        return out

    async def _publish(self, slots: list[_Slot]) -> None:
        pending = list(range(len(slots)))
        attempt = 0
        while pending:
            try:
                async with asyncio.timeout(self.policy.timeout_s):
                    results = await self.sink.send([slots[i].message for i in pending])
            except TimeoutError:
                unacked = TimeoutError(f"no acknowledgement from the broker within {self.policy.timeout_s:g}s")
                results = [unacked] * len(pending)
            retry: list[int] = []
            transient: BaseException | None = None
            for i, result in zip(pending, results, strict=True):
                if result is None:
                    continue
                kind = self.policy.classify(result)
                if kind == "fatal":
                    raise FatalError(
                        f"publishing to {slots[i].message.topic} failed: {type(result).__name__}: {result}"
                    ) from result
                if kind == "rejected":
                    if self._degrade(slots[i], result):
                        retry.append(i)
                    continue
                transient = transient or result
                retry.append(i)
            if transient is not None:
                attempt += 1
                await self.policy.failed_round(attempt, len(retry), transient)
            pending = retry
        self.policy.succeeded()

    def _review_slots(self, slots: Sequence[_Slot], alerts: Sequence[NearDuplicateAlert],
                      book: PolicyBook | None) -> list[_Slot]:
        """Review requests for the verdicts being published (not for ones that became dead letters)."""
        if self.review is None or not self.topics.review_requests:
            return []
        verdicts = [(s.event, s.answer) for s in slots if isinstance(s.answer, Verdict)]
        limit = self.limits.of(self.topics.review_requests)
        out = []
        for request in build_review_requests(verdicts, [a for a in alerts if isinstance(a, NearDuplicateAlert)],
                                             uncertain_in(book, self.review)):
            key, value = request.content_id.encode(), request.model_dump_json().encode()
            if len(value) > _room(limit, key):
                metrics.OUTPUTS_DROPPED.labels("review_request").inc()
                continue
            out.append(_Slot(None, None, None, OutMessage(self.topics.review_requests, key, value),
                              kind="review_request", reasons=tuple(request.reasons)))
        return out

    def _degrade(self, slot: _Slot, error: BaseException) -> bool:
        """Replace a rejected message with the smallest dead letter that still answers its event.

        Returns whether the replacement is to be sent (False for an alert, which answers no event).
        """
        if slot.raw is None:
            metrics.OUTPUTS_DROPPED.labels(slot.kind).inc()
            _log.error("the broker rejected an output (%s: %s); dropped", slot.kind, error)
            return False
        if slot.minimal:
            raise FatalError(
                f"the broker rejects even a minimal dead letter on {slot.message.topic} ({error}); cannot answer "
                f"{slot.raw.topic}[{slot.raw.partition}]@{slot.raw.offset}"
            ) from error
        letter = _rejected_letter(
            slot.raw, slot.event, f"the broker rejected the output ({type(error).__name__}: {error})"[:1000],
            "output_rejected",
        )
        key = letter.key.encode() if letter.key is not None else None
        slot.answer = letter
        slot.message = OutMessage(self.topics.dead_letters, key, letter.model_dump_json().encode())
        slot.minimal = True
        metrics.OUTPUTS_TRUNCATED.inc()
        return True
