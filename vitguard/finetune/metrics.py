"""Classification metrics on plain arrays: pure numpy, no I/O.

Two views of a model on labelled data:

* the class view (accuracy, per-class precision/recall/F1, confusion matrix), when the data's classes are
  the model's classes;
* the moderation view: the unsafe score (the summed probability of the unsafe classes, exactly what
  :func:`vitguard.policy.decide` compares with the threshold) against the truth "this image is of an
  unsafe class": ROC and PR curves, ROC AUC, average precision, the numbers at the policy threshold and
  the threshold that reaches a target precision or recall.

Thresholds follow the pipeline's rule ``unsafe_score >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "ThresholdChoice",
    "average_precision",
    "choose_threshold",
    "class_metrics",
    "confusion_matrix",
    "moderation_metrics",
    "pr_curve",
    "roc_auc",
    "roc_curve",
]

FloatArray = NDArray[np.float64]


def confusion_matrix(y_true: NDArray[np.int64], y_pred: NDArray[np.int64], num_classes: int) -> NDArray[np.int64]:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def class_metrics(y_true: NDArray[np.int64], probs: NDArray[np.floating[Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    The predicted class is the arg-max of ``probs`` (shape ``(N, C)``, columns in ``labels`` order). A class
    that is never predicted has precision 0 (not NaN), so JSON stays valid and averages stay defined.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1).astype(np.int64)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    per_class: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(labels):
        tp = float(matrix[i, i])
        precision = _ratio(tp, float(matrix[:, i].sum()))
        recall = _ratio(tp, float(matrix[i, :].sum()))
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(matrix[i, :].sum())}
    present = [m for m in per_class.values() if m["support"]]
    return {
        "n": int(len(y_true)),
        "accuracy": _ratio(float(np.trace(matrix)), float(matrix.sum())),
        "balanced_accuracy": float(np.mean([m["recall"] for m in present])) if present else 0.0,
        "macro_f1": float(np.mean([m["f1"] for m in present])) if present else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }


def _binary_counts(y: NDArray[np.bool_], score: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """True and false positives at each distinct score, taken as threshold, from the highest down."""
    order = np.argsort(-score, kind="stable")
    score, y = score[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tps = np.cumsum(y, dtype=np.float64)[last_of_run]
    fps = (last_of_run + 1 - tps).astype(np.float64)
    return tps, fps, score[last_of_run].astype(np.float64)


def roc_curve(y: NDArray[np.bool_], score: NDArray[np.floating[Any]]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """False-positive rate, true-positive rate and thresholds, starting at (0, 0) with threshold +inf."""
    y = np.asarray(y, dtype=bool)
    tps, fps, thresholds = _binary_counts(y, np.asarray(score, dtype=np.float64))
    pos, neg = float(y.sum()), float((~y).sum())
    tpr = np.r_[0.0, tps / pos] if pos else np.zeros(len(tps) + 1)
    fpr = np.r_[0.0, fps / neg] if neg else np.zeros(len(fps) + 1)
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_auc(y: NDArray[np.bool_], score: NDArray[np.floating[Any]]) -> float | None:
    """Area under the ROC curve (ties count one half); ``None`` when only one class is present."""
    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def pr_curve(y: NDArray[np.bool_], score: NDArray[np.floating[Any]]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Precision, recall and thresholds, one point per distinct score from the highest threshold down."""
    y = np.asarray(y, dtype=bool)
    tps, fps, thresholds = _binary_counts(y, np.asarray(score, dtype=np.float64))
    pos = float(y.sum())
    precision = tps / (tps + fps)
    recall = tps / pos if pos else np.zeros_like(tps)
    return precision, recall, thresholds


def average_precision(y: NDArray[np.bool_], score: NDArray[np.floating[Any]]) -> float | None:
    """Sum over thresholds of precision times the recall gained there; ``None`` without positives."""
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return None
    precision, recall, _ = pr_curve(y, score)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class ThresholdChoice:
    """The unsafe threshold that meets a target, and what it gives on the evaluated data."""

    target: str
    """``precision`` or ``recall``."""
    target_value: float
    reached: bool
    """False when no threshold meets the target; the other numbers then describe the closest one."""
    threshold: float
    precision: float
    recall: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(
    y: NDArray[np.bool_],
    score: NDArray[np.floating[Any]],
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> ThresholdChoice | None:
    """The unsafe threshold for a target precision (most recall that keeps it) or recall (most precision).

    Exactly one target must be given. With a precision target the lowest threshold whose precision meets
    it is chosen, because it flags the most unsafe images; with a recall target, the threshold with the
    best precision among those that meet the recall. When nothing meets the target, the closest threshold
    is returned with ``reached=False``. ``None`` when the data has no unsafe image.
    """
    if (target_precision is None) == (target_recall is None):
        raise ValueError("give exactly one of target_precision and target_recall")
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return None
    precision, recall, thresholds = pr_curve(y, score)
    if target_precision is not None:
        ok = precision >= target_precision
        if ok.any():
            # recall never falls as the threshold falls, so the last qualifying point has the most recall
            i = int(np.flatnonzero(ok)[-1])
        else:
            i = int(np.argmax(precision))
        target, value = "precision", target_precision
    else:
        assert target_recall is not None  # noqa: S101 - narrowed by the check above
        ok = recall >= target_recall
        if ok.any():
            candidates = np.flatnonzero(ok)
            i = int(candidates[np.argmax(precision[candidates])])  # first (highest threshold) on ties
        else:
            i = int(np.argmax(recall))
        target, value = "recall", target_recall
    return ThresholdChoice(
        target=target,
        target_value=float(value),
        reached=bool(ok.any()),
        threshold=float(thresholds[i]),
        precision=float(precision[i]),
        recall=float(recall[i]),
    )


def _at_threshold(y: NDArray[np.bool_], score: FloatArray, threshold: float) -> dict[str, float]:
    flagged = score >= threshold
    tp = float(np.sum(flagged & y))
    fp = float(np.sum(flagged & ~y))
    fn = float(np.sum(~flagged & y))
    tn = float(np.sum(~flagged & ~y))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "false_positive_rate": _ratio(fp, fp + tn),
        "accuracy": _ratio(tp + tn, float(len(y))),
    }


def moderation_metrics(
    is_unsafe: NDArray[np.bool_],
    unsafe_score: NDArray[np.floating[Any]],
    *,
    policy_threshold: float,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> dict[str, Any]:
    """The unsafe-versus-safe view: ROC AUC, average precision, numbers at the policy threshold and the
    threshold chosen for the target (precision 0.95 when no target is given)."""
    y = np.asarray(is_unsafe, dtype=bool)
    score = np.asarray(unsafe_score, dtype=np.float64)
    if target_precision is None and target_recall is None:
        target_precision = 0.95
    choice = choose_threshold(y, score, target_precision=target_precision, target_recall=target_recall)
    return {
        "n": int(len(y)),
        "n_unsafe": int(y.sum()),
        "roc_auc": roc_auc(y, score),
        "average_precision": average_precision(y, score),
        "at_policy_threshold": _at_threshold(y, score, policy_threshold),
        "chosen_threshold": choice.to_dict() if choice else None,
    }
