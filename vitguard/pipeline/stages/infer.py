"""The infer stage: ONE forward pass for a micro-batch of frames, probabilities and embedding per frame, then
the policy's decision. Still images and chunks of animations and videos share the pass (the batcher decides
which frames); an item whose last frame is in the pass goes through the reduce stage. When the batch pass
fails, frames are retried one by one so only the bad item fails."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import numpy as np

from vitguard import metrics
from vitguard.model.types import Classifier, Prediction
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Decoded, DecodedFrames, Predicted
from vitguard.pipeline.runtime.batcher import FrameProgress, Group, Work
from vitguard.pipeline.stages.reduce import reduce_frames
from vitguard.policies.compiled import PolicyBook

__all__ = ["NonFiniteOutput", "forward", "infer_pass", "predict_stacked"]

_log = logging.getLogger(__name__)


def predict_stacked(classifier: Classifier, tensors: Sequence[np.ndarray]) -> list[Prediction]:
    predictions = classifier.predict(np.stack(list(tensors)))
    if len(predictions) != len(tensors):
        raise RuntimeError(f"model returned {len(predictions)} predictions for {len(tensors)} images")
    return predictions


class NonFiniteOutput(ValueError):
    """The model's scores or embedding for an image hold NaN or infinity (an overflow, a broken checkpoint):
    no decision can come from them; read as safe they would let the image through."""


def _finite(p: Prediction) -> Prediction | BaseException:
    if all(math.isfinite(v) for v in p.scores.values()) and bool(np.isfinite(p.embedding).all()):
        return p
    return NonFiniteOutput("the model returned NaN or infinite scores or embedding for this image")


async def forward(
    tensors: Sequence[np.ndarray], classifier: Classifier, pool: Executor
) -> list[Prediction | BaseException]:
    """One pass over ``tensors``; when it fails, one pass per tensor, each failure in its place. A prediction
    that is not finite is a failure too (:class:`NonFiniteOutput`)."""
    if not tensors:
        return []
    loop = asyncio.get_running_loop()
    try:
        return [_finite(p) for p in await loop.run_in_executor(pool, predict_stacked, classifier, tensors)]
    except Exception as exc:
        _log.warning("batch forward pass of %d failed (%r); retrying image by image", len(tensors), exc)
    out: list[Prediction | BaseException] = []
    for tensor in tensors:
        try:
            out.append(_finite((await loop.run_in_executor(pool, predict_stacked, classifier, [tensor]))[0]))
        except Exception as one:
            out.append(one)
    return out


def _failed(item: Decoded | DecodedFrames, error: BaseException) -> DeadLettered:
    raw, event = item.parsed.raw, item.parsed.event
    return DeadLettered(raw, dead_letter(
        raw, "inference_failed", f"model failed on this image: {type(error).__name__}: {error}", event))


def _unexpected(item: Decoded | DecodedFrames, step: str, error: Exception) -> DeadLettered:
    """An item the stage failed on for a reason no rule foresaw: its dead letter, so the pass goes on."""
    raw, event = item.parsed.raw, item.parsed.event
    _log.error("%s of %s failed", step, event.event_id, exc_info=error)
    return DeadLettered(raw, dead_letter(
        raw, "internal_error", f"{step} failed: {type(error).__name__}: {error}", event))


async def infer_pass(
    taken: Sequence[Work],
    classifier: Classifier,
    pool: Executor,
    book: PolicyBook,
    *,
    worst_frames: int = 5,
) -> Group:
    """The forward pass over what the batcher took. The group holds the entries that are complete after it
    (still images, items whose last frame was in it, and the entries that need no inference); an item with
    frames left keeps its predictions so far in its :class:`~vitguard.pipeline.runtime.batcher.FrameProgress`."""
    tensors = _pass_tensors(taken)
    group = Group([])
    if not tensors:
        group.work.extend(taken)
        return group
    metrics.BATCH_SIZE.observe(len(tensors))
    started = time.perf_counter()
    predictions = iter(await forward(tensors, classifier, pool))  # one a tensor, in the order of ``taken``
    group.stage_ms["inference"] = (time.perf_counter() - started) * 1000
    timing = _PassTiming(started, group.stage_ms["inference"] / len(tensors))
    for w in taken:
        v = w.value
        answer: Predicted | DeadLettered | None = None
        if isinstance(v, Decoded):
            answer = _decide_still(v, next(predictions), timing, book)
        elif isinstance(v, DecodedFrames) and w.progress is not None:
            _record_frames(v, w.progress, predictions, timing)
            if not w.progress.complete:
                continue  # frames left: the item stays with the batcher
            answer = _decide_frames(v, w.progress, book, worst_frames)
        if answer is not None:
            _complete(group, answer)
        group.work.append(w)
    return group


def _pass_tensors(taken: Sequence[Work]) -> list[np.ndarray]:
    """The tensors of one pass: a still image's, and the frames the batcher handed out of a multi-frame item."""
    tensors: list[np.ndarray] = []
    for w in taken:
        if isinstance(w.value, Decoded):
            tensors.append(w.value.tensor)
        elif isinstance(w.value, DecodedFrames) and w.progress is not None:
            tensors.extend(w.value.frames.tensors[w.progress.start : w.progress.stop])
    return tensors


@dataclass(frozen=True, slots=True)
class _PassTiming:
    """When a forward pass started, and each frame's share of its time."""

    started: float
    """``time.perf_counter()`` at the start of the pass."""
    per_frame_ms: float


def _wait_ms(ready_at: float, started: float) -> float:
    """Milliseconds from ``ready_at`` (ready for inference; 0 when unknown) to the start of the pass."""
    return max(0.0, (started - ready_at) * 1000) if ready_at else 0.0


def _decide_still(item: Decoded, prediction: Prediction | BaseException, timing: _PassTiming,
                  book: PolicyBook) -> Predicted | DeadLettered:
    """A still image's answer from its prediction: the policy's decision, or its dead letter."""
    wait_ms = _wait_ms(item.ready_at, timing.started)
    try:
        if isinstance(prediction, BaseException):
            return _failed(item, prediction)
        return Predicted(item, prediction, item.parsed.policy_in(book).decide(prediction.scores),
                         replace(item.times, infer_ms=timing.per_frame_ms, wait_ms=wait_ms))
    except Exception as exc:  # the policy on scores nobody foresaw (NaN from a broken model): this item
        return _unexpected(item, "deciding on its scores", exc)


def _record_frames(item: DecodedFrames, progress: FrameProgress, predictions: Iterator[Prediction | BaseException],
                   timing: _PassTiming) -> None:
    """Append this pass's predictions of ``item``'s frames (the next ones of ``predictions``) to its progress."""
    n = progress.stop - progress.start
    if not progress.predictions:
        progress.wait_ms = _wait_ms(item.ready_at, timing.started)
    progress.predictions.extend(itertools.islice(predictions, n))
    progress.infer_ms += timing.per_frame_ms * n


def _decide_frames(item: DecodedFrames, progress: FrameProgress, book: PolicyBook,
                   worst: int) -> Predicted | DeadLettered:
    """A multi-frame item's answer once every frame is predicted: its frames reduced to one decision."""
    try:
        return _reduced(item, progress, book, worst)
    except Exception as exc:  # a bug or an input the reduce stage did not foresee: this item only
        return _unexpected(item, "reducing its frames", exc)


def _complete(group: Group, answer: Predicted | DeadLettered) -> None:
    """Record ``answer`` for the entry about to be appended to ``group``."""
    group.predicted[len(group.work)] = answer
    if isinstance(answer, Predicted):
        metrics.BATCH_WAIT.observe(answer.times.wait_ms / 1000)


def _reduced(item: DecodedFrames, progress: FrameProgress, book: PolicyBook,
             worst: int) -> Predicted | DeadLettered:
    good: list[Prediction] = []
    for p in progress.predictions:
        if isinstance(p, BaseException):
            return _failed(item, p)
        good.append(p)
    prediction, decision, media = reduce_frames(item.frames, good, item.parsed.policy_in(book), worst=worst)
    times = replace(item.times, infer_ms=progress.infer_ms, wait_ms=progress.wait_ms)
    return Predicted(item, prediction, decision, times, media=media)
