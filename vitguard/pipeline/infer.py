"""The infer stage: ONE forward pass for a micro-batch, probabilities and embedding per image, then the
policy's decision. When the batch pass fails, images are retried one by one so only the bad one fails."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace

import numpy as np

from vitguard.model.types import Classifier, Prediction
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Decoded, Predicted
from vitguard.policy import decide

__all__ = ["infer_batch", "predict_stacked"]

_log = logging.getLogger(__name__)


def predict_stacked(classifier: Classifier, tensors: Sequence[np.ndarray]) -> list[Prediction]:
    predictions = classifier.predict(np.stack(list(tensors)))
    if len(predictions) != len(tensors):
        raise RuntimeError(f"model returned {len(predictions)} predictions for {len(tensors)} images")
    return predictions


async def infer_batch(
    items: Sequence[Decoded],
    classifier: Classifier,
    pool: Executor,
    unsafe_labels: Sequence[str],
    threshold: float,
) -> list[Predicted | DeadLettered]:
    """Predictions for ``items`` in order (a dead letter for an image the model fails on)."""
    if not items:
        return []
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    predictions: list[Prediction | BaseException]
    try:
        predictions = list(await loop.run_in_executor(
            pool, predict_stacked, classifier, [i.tensor for i in items]))
    except Exception as exc:
        _log.warning("batch forward pass of %d failed (%r); retrying image by image", len(items), exc)
        predictions = []
        for item in items:
            try:
                predictions.append((await loop.run_in_executor(pool, predict_stacked, classifier, [item.tensor]))[0])
            except Exception as one:
                predictions.append(one)
    infer_ms = (time.perf_counter() - started) * 1000 / len(items)
    out: list[Predicted | DeadLettered] = []
    for item, prediction in zip(items, predictions, strict=True):
        raw, event = item.parsed.raw, item.parsed.event
        if isinstance(prediction, BaseException):
            out.append(DeadLettered(raw, dead_letter(
                raw, "inference_failed", f"model failed on this image: {type(prediction).__name__}: {prediction}",
                event)))
            continue
        wait_ms = max(0.0, (started - item.ready_at) * 1000) if item.ready_at else 0.0
        out.append(Predicted(
            item, prediction, decide(prediction.scores, unsafe_labels, threshold),
            replace(item.times, infer_ms=infer_ms, wait_ms=wait_ms),
        ))
    return out
