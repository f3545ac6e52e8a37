"""Values that cross the pipeline's edges: raw messages in, encoded messages out, and the sink seam."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vitguard.schemas.events import DeadLetter, NearDuplicateAlert, Verdict

__all__ = ["BatchOutcome", "OutMessage", "OutputTopics", "RawMessage", "Sink", "TopicLimits"]


@dataclass(frozen=True)
class RawMessage:
    """One input message exactly as the broker delivered it.

    The pipeline never needs a Kafka client object: the Faust agent, the replay command and tests all
    build these from whatever consumer they use.
    """

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    """The broker's timestamp of the record (queue time = consumed - this), when the consumer knows it."""


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """A ``POST /classify`` (or search by image) request: the image, and whose rules judge it."""

    data: bytes | None = None
    """The image bytes, or None with ``image_ref``."""
    image_ref: str | None = None
    content_id: str | None = None
    tenant: str = "default"
    surface: str | None = None
    policy: str | None = None
    """A policy of the document in force to judge under, instead of the tenant's (and surface's)."""


@dataclass(frozen=True)
class OutputTopics:
    """Where outputs go. Replay passes its own ``verdicts`` topic to keep production verdicts clean; an
    empty name means "do not publish this kind" (the sink drops those messages)."""

    verdicts: str
    alerts: str
    dead_letters: str
    review_requests: str = ""
    """Review requests (the review loop); empty by default: the worker sends them only with
    ``VITGUARD_REVIEW_ENABLED``."""
    shadow_verdicts: str = ""
    """What shadow policies would have decided (``VITGUARD_POLICY_SHADOW_TOPIC``); empty: counted only."""


@dataclass(frozen=True)
class TopicLimits:
    """The largest message each output topic accepts (bytes), as the runtime read it from the cluster, and what
    to assume for a topic it did not read (:data:`vitguard.kafka.limits.UNREAD_TOPIC_LIMIT` in the worker)."""

    default: int
    by_topic: Mapping[str, int] = field(default_factory=dict)

    def of(self, topic: str) -> int:
        return self.by_topic.get(topic, self.default)


@dataclass(frozen=True)
class OutMessage:
    """One encoded output: verdicts and alerts keyed by content id, dead letters by the original key."""

    topic: str
    key: bytes | None
    value: bytes


class Sink(Protocol):
    """Where encoded outputs go.

    ``send`` returns one entry per message, in order: None once the broker acknowledged it, or the exception
    that says why it was not delivered. It never raises for a delivery failure; the emit stage re-sends only
    the failed messages.
    """

    async def send(self, messages: Sequence[OutMessage]) -> list[BaseException | None]: ...


@dataclass
class BatchOutcome:
    """What a group of events produced, once published and acknowledged.

    ``verdicts`` and ``dead_letters`` together answer every event except ``skipped`` ones (already
    processed: a redelivery or a second copy of an event id).
    """

    verdicts: list[Verdict] = field(default_factory=list)
    alerts: list[NearDuplicateAlert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    skipped: list[RawMessage] = field(default_factory=list)
    suppressed_alerts: int = 0
    """Near-duplicates inside a wave whose alert the cooldown suppressed."""
    stage_ms: dict[str, float] = field(default_factory=dict)
    """Wall time per stage (inference, milvus_search, milvus_upsert, waves, publish, ...)."""

    @property
    def answered(self) -> int:
        """Messages that got a verdict or a dead letter."""
        return len(self.verdicts) + len(self.dead_letters)

    def merge(self, other: BatchOutcome) -> None:
        self.verdicts.extend(other.verdicts)
        self.alerts.extend(other.alerts)
        self.dead_letters.extend(other.dead_letters)
        self.skipped.extend(other.skipped)
        self.suppressed_alerts += other.suppressed_alerts
        for k, v in other.stage_ms.items():
            self.stage_ms[k] = self.stage_ms.get(k, 0.0) + v
