"""PNG plots of training and evaluation, drawn with matplotlib's Agg renderer.

Figures are built as :class:`matplotlib.figure.Figure` objects and saved directly, without ``pyplot``:
no global figure state, no GUI backend, safe on a headless server and in threads. matplotlib comes with the
``train`` extra and is imported only when a figure is drawn; :func:`require_plotting` lets a command fail
before hours of training rather than at the first plot.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vitguard.finetune.errors import TrainExtraMissingError
from vitguard.finetune.metrics import pr_curve, roc_auc, roc_curve

__all__ = ["plot_confusion_matrix", "plot_loss_curves", "plot_roc_pr", "plot_score_histograms", "require_plotting"]

_DPI = 110


def require_plotting(what: str = "this command") -> None:
    """Raise :class:`TrainExtraMissingError` (one line: what to install) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise TrainExtraMissingError(f"{what} needs the train extra: pip install 'vitguard[train]'")


def _figure(width: float, height: float) -> Any:
    require_plotting("drawing plots")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def plot_loss_curves(history: Mapping[str, Sequence[float]], path: Path, *, title: str = "Training") -> Path:
    """Training and validation loss per epoch (left) and validation accuracy (right).

    ``history`` holds lists keyed ``train_loss``, ``val_loss`` and optionally ``val_accuracy``; the best
    epoch (lowest validation loss, the one early stopping kept) is marked.
    """
    fig = _figure(9, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        values = list(history.get(key, ()))
        if values:
            ax_loss.plot(range(1, len(values) + 1), values, style, label=key.replace("_", " "))
    val_loss = list(history.get("val_loss", ()))
    if val_loss:
        best = int(np.argmin(val_loss)) + 1
        ax_loss.axvline(best, color="grey", linewidth=0.8, linestyle=":", label=f"best epoch {best}")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title(f"{title}: loss")
    ax_loss.legend()
    accuracy = list(history.get("val_accuracy", ()))
    if accuracy:
        ax_acc.plot(range(1, len(accuracy) + 1), accuracy, color="tab:green")
        ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title("validation accuracy")
    fig.savefig(path)
    return path


def plot_roc_pr(curves: Mapping[str, tuple[NDArray[np.bool_], NDArray[np.floating[Any]]]], path: Path) -> Path:
    """ROC (left) and precision-recall (right) of the unsafe score, one line per model.

    ``curves`` maps a model name to ``(is_unsafe, unsafe_score)`` over the same images, so two models can
    be compared on one figure.
    """
    fig = _figure(9, 4)
    ax_roc, ax_pr = fig.subplots(1, 2)
    for name, (y, score) in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        auc = roc_auc(y, score)
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
        precision, recall, _ = pr_curve(y, score)
        if len(recall):  # lower thresholds after full recall only add false positives: stop there, as usual
            end = int(np.argmax(recall >= recall[-1])) + 1
            precision, recall = precision[:end], recall[:end]
        ax_pr.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="post", label=name)
    ax_roc.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (unsafe vs safe)")
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    ax_roc.legend(loc="lower right", fontsize="small")
    ax_pr.legend(loc="lower left", fontsize="small")
    fig.savefig(path)
    return path


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, *, title: str = ""
) -> Path:
    """Confusion matrix coloured by row-normalised rate (recall), annotated with counts."""
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    size = 2.5 + 0.6 * len(labels)
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(labels))
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.savefig(path)
    return path


def plot_score_histograms(
    y_true: NDArray[np.int64], probs: NDArray[np.floating[Any]], labels: Sequence[str], path: Path
) -> Path:
    """One panel per class: the predicted probability of that class, for images of it and of the others.

    Well separated histograms mean a threshold on that class's score works; overlap shows where it fails.
    """
    probs = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    fig = _figure(3.2 * n, 3)
    axes = np.atleast_1d(fig.subplots(1, n))
    bins = np.linspace(0, 1, 26)
    for c, (ax, name) in enumerate(zip(axes, labels, strict=True)):
        mine = y_true == c
        ax.hist(probs[mine, c], bins=bins, alpha=0.6, label=f"true {name}", color="tab:red")
        ax.hist(probs[~mine, c], bins=bins, alpha=0.6, label="other classes", color="tab:blue")
        ax.set(xlabel=f"P({name})", ylabel="images", title=name)
        ax.legend(fontsize="small")
    fig.savefig(path)
    return path
