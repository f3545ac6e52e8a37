"""Values that cross the pipeline's edges: raw messages in, a batch outcome out, and the sink seam."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from vitguard.schemas.events import DeadLetter, NearDuplicateAlert, Verdict

__all__ = ["BatchOutcome", "RawMessage", "Sink"]


@dataclass(frozen=True)
class RawMessage:
    """One input message exactly as the broker delivered it.

    The processor never needs a Kafka client object: the Faust agent, the replay command and tests all
    build these from whatever consumer they use.
    """

    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class BatchOutcome:
    """What one batch produced; published (and acknowledged) before :meth:`BatchProcessor.process` returns.

    ``verdicts`` and ``dead_letters`` together answer every message of the batch except ``skipped``
    (already processed: a redelivery or a second copy of an event id within the batch).
    """

    verdicts: list[Verdict] = field(default_factory=list)
    alerts: list[NearDuplicateAlert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    skipped: list[RawMessage] = field(default_factory=list)
    suppressed_alerts: int = 0
    """Near-duplicates inside a wave whose alert the cooldown suppressed."""
    stage_ms: dict[str, float] = field(default_factory=dict)
    """Wall time per stage of this batch (fetch_decode, inference, milvus_search, ...)."""

    @property
    def answered(self) -> int:
        """Messages that got a verdict or a dead letter."""
        return len(self.verdicts) + len(self.dead_letters)


class Sink(Protocol):
    """Where a batch's outputs go. ``publish`` returns only once the broker acknowledged every message.

    Verdicts are keyed by content id, alerts by content id, dead letters by the original message key.
    An exception means "not (all) delivered": the processor publishes the batch again (at-least-once).
    """

    async def publish(
        self,
        verdicts: Sequence[Verdict],
        alerts: Sequence[NearDuplicateAlert],
        dead_letters: Sequence[DeadLetter],
    ) -> None: ...
