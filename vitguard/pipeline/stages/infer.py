"""The infer stage: ONE forward pass for a micro-batch of frames, probabilities and embedding per frame, then
the policy's decision. Still images and chunks of animations and videos share the pass (the batcher decides
which frames); an item whose last frame is in the pass goes through the reduce stage. When the batch pass
fails, frames are retried one by one so only the bad item fails."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from vitguard import metrics
from vitguard.model.types import Classifier, Prediction
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Decoded, DecodedFrames, Predicted
from vitguard.pipeline.runtime.batcher import FrameProgress, Group, Work
from vitguard.pipeline.stages.reduce import reduce_frames
from vitguard.policy import decide

__all__ = ["NonFiniteOutput", "forward", "infer_batch", "infer_pass", "predict_stacked"]

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


async def infer_batch(
    items: Sequence[Decoded],
    classifier: Classifier,
    pool: Executor,
    unsafe_labels: Sequence[str],
    threshold: float,
) -> list[Predicted | DeadLettered]:
    """Predictions for still images ``items`` in order (a dead letter for an image the model fails on)."""
    if not items:
        return []
    started = time.perf_counter()
    predictions = await forward([i.tensor for i in items], classifier, pool)
    infer_ms = (time.perf_counter() - started) * 1000 / len(items)
    out: list[Predicted | DeadLettered] = []
    for item, prediction in zip(items, predictions, strict=True):
        if isinstance(prediction, BaseException):
            out.append(_failed(item, prediction))
            continue
        wait_ms = max(0.0, (started - item.ready_at) * 1000) if item.ready_at else 0.0
        out.append(Predicted(
            item, prediction, decide(prediction.scores, unsafe_labels, threshold),
            replace(item.times, infer_ms=infer_ms, wait_ms=wait_ms),
        ))
    return out


async def infer_pass(
    taken: Sequence[Work],
    classifier: Classifier,
    pool: Executor,
    unsafe_labels: Sequence[str],
    threshold: float,
    *,
    worst_frames: int = 5,
) -> Group:
    """The forward pass over what the batcher took. The group holds the entries that are complete after it
    (still images, items whose last frame was in it, and the entries that need no inference); an item with
    frames left keeps its predictions so far in its :class:`~vitguard.pipeline.runtime.batcher.FrameProgress`."""
    tensors: list[np.ndarray] = []
    for w in taken:
        if isinstance(w.value, Decoded):
            tensors.append(w.value.tensor)
        elif isinstance(w.value, DecodedFrames) and w.progress is not None:
            tensors.extend(w.value.frames.tensors[w.progress.start : w.progress.stop])
    group = Group([])
    if not tensors:
        group.work.extend(taken)
        return group
    metrics.BATCH_SIZE.observe(len(tensors))
    started = time.perf_counter()
    predictions = await forward(tensors, classifier, pool)
    group.stage_ms["inference"] = (time.perf_counter() - started) * 1000
    per_frame_ms = group.stage_ms["inference"] / len(tensors)
    pos = 0
    for w in taken:
        v = w.value
        answer: Predicted | DeadLettered | None = None
        if isinstance(v, Decoded):
            p = predictions[pos]
            pos += 1
            wait_ms = max(0.0, (started - v.ready_at) * 1000) if v.ready_at else 0.0
            try:
                answer = _failed(v, p) if isinstance(p, BaseException) else Predicted(
                    v, p, decide(p.scores, unsafe_labels, threshold),
                    replace(v.times, infer_ms=per_frame_ms, wait_ms=wait_ms))
            except Exception as exc:  # the policy on scores nobody foresaw (NaN from a broken model): this item
                answer = _unexpected(v, "deciding on its scores", exc)
        elif isinstance(v, DecodedFrames) and w.progress is not None:
            progress = w.progress
            n = progress.stop - progress.start
            if not progress.predictions:
                progress.wait_ms = max(0.0, (started - v.ready_at) * 1000) if v.ready_at else 0.0
            progress.predictions.extend(predictions[pos : pos + n])
            progress.infer_ms += per_frame_ms * n
            pos += n
            if not progress.complete:
                continue
            try:
                answer = _reduced(v, progress, unsafe_labels, threshold, worst_frames)
            except Exception as exc:  # a bug or an input the reduce stage did not foresee: this item only
                answer = _unexpected(v, "reducing its frames", exc)
        if answer is not None:
            group.predicted[len(group.work)] = answer
            if isinstance(answer, Predicted):
                metrics.BATCH_WAIT.observe(answer.times.wait_ms / 1000)
        group.work.append(w)
    return group


def _reduced(item: DecodedFrames, progress: FrameProgress, unsafe_labels: Sequence[str], threshold: float,
             worst: int) -> Predicted | DeadLettered:
    good: list[Prediction] = []
    for p in progress.predictions:
        if isinstance(p, BaseException):
            return _failed(item, p)
        good.append(p)
    prediction, decision, media = reduce_frames(item.frames, good, unsafe_labels, threshold, worst=worst)
    times = replace(item.times, infer_ms=progress.infer_ms, wait_ms=progress.wait_ms)
    return Predicted(item, prediction, decision, times, media=media)
