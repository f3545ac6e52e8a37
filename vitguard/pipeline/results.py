"""Typed values that flow between the stages, and the one result every event ends as.

A stage takes a value and returns the next one, or a :class:`DeadLettered`; nothing sets flags on a shared
object. Every consumed event ends as exactly one :data:`ItemResult`: :class:`Answered` (a verdict was
published), :class:`DeadLettered` (a dead letter was published) or :class:`Skipped` (already answered: a
redelivery, or a second copy of an event id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from vitguard.banks.signal import PdqHash
from vitguard.media.frames import FrameSet
from vitguard.model.types import Prediction
from vitguard.pipeline.runtime.pools import JobTimeout
from vitguard.pipeline.types import BatchOutcome, RawMessage
from vitguard.policy import Decision
from vitguard.schemas.events import DeadLetter, ImageEvent, MediaSummary, NearDuplicateAlert, Verdict

if TYPE_CHECKING:
    from vitguard.policies.compiled import CompiledPolicy, PolicyBook

__all__ = [
    "Answered",
    "CacheHit",
    "DeadLettered",
    "Decoded",
    "DecodedFrames",
    "Fetched",
    "FrameHashes",
    "Indexed",
    "ItemResult",
    "Parsed",
    "Predicted",
    "Ready",
    "Skipped",
    "StageTimes",
    "Tagged",
    "batch_outcome",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageTimes:
    """Per-event milliseconds, carried into the verdict's ``timings``."""

    queue_ms: float = 0.0
    fetch_ms: float = 0.0
    decode_ms: float = 0.0
    wait_ms: float = 0.0
    infer_ms: float = 0.0


@dataclass(frozen=True)
class Parsed:
    """A message that is a valid image event."""

    raw: RawMessage
    event: ImageEvent
    times: StageTimes = field(default_factory=StageTimes)
    policy: str | None = None
    """The policy a ``/classify`` request asked to be judged under (stream events: their tenant's)."""

    def policy_in(self, book: PolicyBook) -> CompiledPolicy:
        """The policy of ``book`` that judges this event: the one its request named, else its tenant's (and
        surface's)."""
        return book.pick(self.event.tenant, self.event.surface, self.policy)


@dataclass(frozen=True)
class Fetched:
    """The event's image bytes, hashed."""

    parsed: Parsed
    data: bytes
    sha256: str
    source: str
    times: StageTimes


FrameHashes = tuple[tuple[int, PdqHash | None], ...]
"""The PDQ hash of every classified frame of an animation or a video (frame index, hash)."""


@dataclass(frozen=True)
class CacheHit:
    """The same bytes were classified before with the same model and policy: no decode, no inference."""

    parsed: Parsed
    verdict: Verdict
    cached_from: str
    """Content id the cached verdict was made for."""
    frame_hashes: FrameHashes = ()
    """For an animation or a video, every classified frame's PDQ hash (matched against the banks as they are
    now); empty for a still image (the verdict's own hash)."""


@dataclass(frozen=True)
class Decoded:
    """The model's input tensor for the event's image."""

    parsed: Parsed
    sha256: str
    tensor: NDArray[np.float32]
    times: StageTimes
    ready_at: float = 0.0
    """perf_counter() when it joined the ready queue (batch wait)."""
    pdq: PdqHash | None = None
    """The PDQ hash of the same decoded pixels (hash banks); None when hashing is off or failed, or while it
    is still ``pdq_pending``."""
    pdq_pending: asyncio.Future[PdqHash | None] | None = field(default=None, compare=False, repr=False)
    """The hash, still being computed in the decode pool (it overlaps inference); see :meth:`hash`."""

    async def hash(self) -> PdqHash | None:
        """The PDQ hash, once computed (None when hashing was off or failed)."""
        fut = self.pdq_pending
        if fut is None:
            return self.pdq
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.cancelled() and not _cancelling():  # the pool shut down under it: no hash, not our cancel
                return None
            raise
        except RuntimeError:  # a pool that refused the job at shutdown
            return None
        except JobTimeout as exc:  # abandoned past the decode deadline: the image goes on unhashed
            _log.warning("PDQ hashing of %s was abandoned (%s); it is not matched against the banks",
                         self.parsed.event.event_id, exc)
            return None


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(frozen=True)
class DecodedFrames:
    """The model's input tensors for the sampled frames of an animation or a video (the expand stage)."""

    parsed: Parsed
    sha256: str
    frames: FrameSet
    times: StageTimes
    ready_at: float = 0.0
    """perf_counter() when it joined the ready queue (batch wait)."""

    @property
    def count(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class Predicted:
    """One forward pass's answer for an image, and the policy's decision on it.

    For an animation or a video (``decoded`` is :class:`DecodedFrames`) the reduce stage made it: prediction
    and decision are the worst frame's, and ``media`` says which frames were seen and how they scored.
    """

    decoded: Decoded | DecodedFrames
    prediction: Prediction
    decision: Decision
    times: StageTimes
    media: MediaSummary | None = None


@dataclass(frozen=True)
class Indexed:
    """A prediction after the near-duplicate search and the Milvus upsert."""

    predicted: Predicted
    cluster_id: str | None
    matches: tuple[object, ...] = ()
    is_new_cluster: bool = False


@dataclass(frozen=True)
class Answered:
    raw: RawMessage
    verdict: Verdict
    alert: NearDuplicateAlert | None = None
    """The near-duplicate alert published with this verdict, if any."""
    alert_suppressed: bool = False
    """A near-duplicate inside a wave whose alert the cooldown suppressed."""


@dataclass(frozen=True)
class DeadLettered:
    raw: RawMessage
    dead_letter: DeadLetter


@dataclass(frozen=True)
class Skipped:
    raw: RawMessage
    why: Literal["redelivered", "repeat"]


Ready = Decoded | DecodedFrames | CacheHit | DeadLettered | Skipped
"""What the front half (ingest, fetch, expand, decode) hands to the batcher."""

T = TypeVar("T", covariant=True)
V = TypeVar("V", covariant=True)


@dataclass(frozen=True)
class Tagged(Generic[T, V]):
    """A stage's value for one event of a batch, with whoever waits for that event (``tag``: the runner's entry),
    so the stages that take a batch at once hand each event's value back to its owner, in any order."""

    tag: T
    value: V


ItemResult = Answered | DeadLettered | Skipped


def batch_outcome(results: Sequence[ItemResult]) -> BatchOutcome:
    """What a batch of events ended as, gathered (for :meth:`~vitguard.pipeline.runtime.runner.Runner.process`)."""
    outcome = BatchOutcome()
    for r in results:
        if isinstance(r, Answered):
            outcome.verdicts.append(r.verdict)
            if r.alert is not None:
                outcome.alerts.append(r.alert)
            outcome.suppressed_alerts += int(r.alert_suppressed)
        elif isinstance(r, DeadLettered):
            outcome.dead_letters.append(r.dead_letter)
        else:
            outcome.skipped.append(r.raw)
    return outcome
