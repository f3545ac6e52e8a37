"""From one model's probabilities on labelled images to metrics, plots, ``metrics.json`` and a comparison.

Used by both ``vitguard finetune`` (on the validation images, with the trainer's own probabilities) and
``vitguard evaluate`` (on any folder, with any model spec), so a fine-tuned model and the default model
are measured by the same code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import ConfigError
from vitguard.finetune.metrics import class_metrics, moderation_metrics
from vitguard.finetune.plots import plot_confusion_matrix, plot_roc_pr, plot_score_histograms
from vitguard.policy import resolve_unsafe_labels
from vitguard.settings import PolicySettings

__all__ = [
    "COMPARED_METRICS",
    "ScoredImages",
    "UnsafeLabels",
    "compare_metrics",
    "evaluate_scores",
    "match_labels",
    "render_report",
    "resolve_unsafe",
    "write_json",
    "write_plots",
    "write_predictions",
]


@dataclass(frozen=True)
class ScoredImages:
    """One model's class probabilities on labelled images."""

    model: dict[str, Any]
    """Identity of the model: name, version, backend, labels, untrained."""
    data_labels: tuple[str, ...]
    model_labels: tuple[str, ...]
    paths: tuple[Path, ...]
    y_true: NDArray[np.int64]
    """Index of each image's class in ``data_labels``."""
    probs: NDArray[np.float32]
    """Shape ``(N, len(model_labels))``."""


@dataclass(frozen=True)
class UnsafeLabels:
    """Which data classes are unsafe (the truth) and which model classes add up to the unsafe score."""

    data: tuple[str, ...]
    model: tuple[str, ...]


def match_labels(labels: Sequence[str], wanted: Sequence[str]) -> tuple[str, ...]:
    """The members of ``labels`` named in ``wanted``, compared case-insensitively, in ``labels`` order."""
    keys = {w.casefold() for w in wanted}
    return tuple(label for label in labels if label.casefold() in keys)


def resolve_unsafe(
    data_labels: Sequence[str], model_labels: Sequence[str], wanted: Sequence[str], policy: PolicySettings
) -> UnsafeLabels:
    """Unsafe classes on both sides.

    The data's unsafe classes are those named in ``wanted`` (``--unsafe-label``, by default the policy's
    unsafe labels). The model's are the same names when the model has them (a fine-tuned model has the
    data's classes), otherwise what the policy says for that model, exactly as the pipeline decides.

    Raises:
        ConfigError: no data class is unsafe, or the policy matches none of the model's classes.
    """
    data = match_labels(data_labels, wanted)
    if not data:
        raise ConfigError(
            f"none of the data classes {list(data_labels)} is unsafe by {list(wanted)}; pass --unsafe-label "
            "with the class(es) that count as unsafe"
        )
    model = match_labels(model_labels, wanted) or resolve_unsafe_labels(model_labels, policy)
    return UnsafeLabels(data, model)


def evaluate_scores(
    scored: ScoredImages,
    unsafe: UnsafeLabels,
    *,
    policy_threshold: float,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> dict[str, Any]:
    """The class view (when every data class is a model class) and the moderation view of one model."""
    model_index = {label.casefold(): i for i, label in enumerate(scored.model_labels)}
    mapped = [model_index.get(label.casefold()) for label in scored.data_labels]
    classes: dict[str, Any] | None = None
    note = ""
    if all(i is not None for i in mapped):
        y_model = np.array([mapped[y] for y in scored.y_true], dtype=np.int64)
        classes = class_metrics(y_model, scored.probs, scored.model_labels)
    else:
        note = (
            f"data classes {list(scored.data_labels)} are not all model classes {list(scored.model_labels)}; "
            "only the unsafe-versus-safe view applies"
        )
    is_unsafe, unsafe_score = _unsafe_view(scored, unsafe.data, unsafe.model)
    moderation = moderation_metrics(
        is_unsafe,
        unsafe_score,
        policy_threshold=policy_threshold,
        target_precision=target_precision,
        target_recall=target_recall,
    )
    moderation["unsafe_data_labels"] = list(unsafe.data)
    moderation["unsafe_model_labels"] = list(unsafe.model)
    return {
        "model": scored.model,
        "n_images": int(len(scored.y_true)),
        "classes": classes,
        "classes_note": note,
        "moderation": moderation,
    }


def _unsafe_view(
    scored: ScoredImages, data_unsafe: Sequence[str], model_unsafe: Sequence[str]
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Truth (the image's class is unsafe) and the model's unsafe score, as the pipeline sums it."""
    unsafe_keys = {label.casefold() for label in data_unsafe}
    is_unsafe = np.array([scored.data_labels[y].casefold() in unsafe_keys for y in scored.y_true], dtype=bool)
    columns = [scored.model_labels.index(label) for label in model_unsafe]
    return is_unsafe, scored.probs[:, columns].sum(axis=1).astype(np.float64)


def _unsafe_view_of(scored: ScoredImages, metrics: Mapping[str, Any]) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    moderation = metrics["moderation"]
    return _unsafe_view(scored, moderation["unsafe_data_labels"], moderation["unsafe_model_labels"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60] or "model"


def write_plots(
    out_dir: Path, runs: Sequence[tuple[ScoredImages, Mapping[str, Any]]], *, per_model_prefix: bool = False
) -> list[Path]:
    """ROC/PR of every model on one figure; per model, the confusion matrix and score histograms.

    Score histograms are per class of the model (when the data's classes are the model's) and always of
    the unsafe score per data class.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_roc_pr({str(s.model["name"]): _unsafe_view_of(s, m) for s, m in runs}, out_dir / "roc_pr.png")]
    for index, (scored, metrics) in enumerate(runs):
        prefix = f"{index + 1}_{_slug(str(scored.model['name']))}_" if per_model_prefix else ""
        classes = metrics.get("classes")
        if classes:
            y_model = np.array([_model_index(scored, y) for y in scored.y_true], dtype=np.int64)
            written.append(
                plot_confusion_matrix(
                    classes["confusion_matrix"],
                    classes["labels"],
                    out_dir / f"{prefix}confusion_matrix.png",
                    title=f"confusion matrix: {scored.model['name']}",
                )
            )
            written.append(
                plot_score_histograms(
                    y_model, scored.probs, scored.model_labels, out_dir / f"{prefix}score_histograms.png"
                )
            )
        is_unsafe, score = _unsafe_view_of(scored, metrics)
        written.append(
            plot_score_histograms(
                np.where(is_unsafe, 0, 1).astype(np.int64),
                np.stack([score, 1.0 - score], axis=1),
                ("unsafe", "safe"),
                out_dir / f"{prefix}unsafe_score_histogram.png",
            )
        )
    return written


def _model_index(scored: ScoredImages, y: int) -> int:
    wanted = scored.data_labels[y].casefold()
    return next(i for i, label in enumerate(scored.model_labels) if label.casefold() == wanted)


def write_predictions(path: Path, scored: ScoredImages) -> Path:
    """One JSON line per image: path, true class and the model's probability per class."""
    with path.open("w", encoding="utf-8") as fh:
        for image, y, row in zip(scored.paths, scored.y_true, scored.probs, strict=True):
            scores = {label: float(p) for label, p in zip(scored.model_labels, row, strict=True)}
            fh.write(json.dumps({"path": str(image), "label": scored.data_labels[y], "scores": scores}) + "\n")
    return path


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Strict JSON (no NaN or infinity), indented for people and diffs."""
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


COMPARED_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accuracy", ("classes", "accuracy")),
    ("balanced_accuracy", ("classes", "balanced_accuracy")),
    ("macro_f1", ("classes", "macro_f1")),
    ("roc_auc", ("moderation", "roc_auc")),
    ("average_precision", ("moderation", "average_precision")),
    ("f1_at_policy_threshold", ("moderation", "at_policy_threshold", "f1")),
    ("precision_at_policy_threshold", ("moderation", "at_policy_threshold", "precision")),
    ("recall_at_policy_threshold", ("moderation", "at_policy_threshold", "recall")),
)
"""Metrics a comparison names a winner for; higher is better for each."""


def _lookup(metrics: Mapping[str, Any], path: Sequence[str]) -> float | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _target_metric(metrics: Mapping[str, Any]) -> tuple[str, float | None]:
    choice = metrics["moderation"].get("chosen_threshold")
    if not choice:
        return "at_target", None
    other = "recall" if choice["target"] == "precision" else "precision"
    name = f"{other}_at_{choice['target']}_{choice['target_value']:g}"
    # a target no threshold reaches is a measured result, not a missing one: nothing is had at that target
    return name, (float(choice[other]) if choice["reached"] else 0.0)


def compare_metrics(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Which of two evaluations (same images) is better on each metric both have.

    A metric only one model has (a class view the other's labels do not give) is listed with ``better``
    ``"n/a"``: it is not a win for either. A target precision (or recall) that a model never reaches scores 0 at
    that target, a real loss. A metric neither has is left out.
    """
    rows: list[dict[str, Any]] = []
    name_a, name_b = str(a["model"]["name"]), str(b["model"]["name"])
    if name_a == name_b:
        name_a, name_b = f"{name_a} (1)", f"{name_b} (2)"
    entries = [(metric, _lookup(a, path), _lookup(b, path)) for metric, path in COMPARED_METRICS]
    target_a, target_b = _target_metric(a), _target_metric(b)
    if target_a[0] == target_b[0]:
        entries.append((target_a[0], target_a[1], target_b[1]))
    for metric, va, vb in entries:
        if va is None and vb is None:
            continue
        if va is None or vb is None:
            better = "n/a"
        elif va > vb + 1e-12:
            better = name_a
        elif vb > va + 1e-12:
            better = name_b
        else:
            better = "tie"
        rows.append({"metric": metric, name_a: va, name_b: vb, "better": better})
    return rows


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("n/a" if value is None else str(value))


def render_report(
    evaluations: Sequence[Mapping[str, Any]], comparison: Sequence[Mapping[str, Any]] = (), *, title: str
) -> str:
    """A short Markdown summary: headline numbers per model, then the winner per metric."""
    lines = [f"# {title}", ""]
    for ev in evaluations:
        lines += _model_section(ev)
    if comparison:
        lines += _comparison_section(comparison)
    return "\n".join(lines) + "\n"


def _model_section(ev: Mapping[str, Any]) -> list[str]:
    """One model's heading, class view (or why there is none) and moderation view, then a blank line."""
    model = ev["model"]
    lines = [f"## {model['name']} (version {model.get('version', '?')})"]
    if model.get("untrained"):
        lines.append("**untrained (random weights)**")
    classes = ev.get("classes")
    if classes:
        lines += _class_lines(classes)
    elif ev.get("classes_note"):
        lines.append(f"- {ev['classes_note']}")
    lines += _moderation_lines(ev["moderation"])
    lines.append("")
    return lines


def _class_lines(classes: Mapping[str, Any]) -> list[str]:
    """The class view: overall numbers, then one indented line per class."""
    lines = [
        f"- accuracy {_fmt(classes['accuracy'])}, balanced accuracy {_fmt(classes['balanced_accuracy'])}, "
        f"macro F1 {_fmt(classes['macro_f1'])} on {classes['n']} images"
    ]
    for label, row in classes["per_class"].items():
        lines.append(
            f"  - {label}: precision {_fmt(row['precision'])}, recall {_fmt(row['recall'])}, "
            f"F1 {_fmt(row['f1'])}, support {row['support']}"
        )
    return lines


def _moderation_lines(moderation: Mapping[str, Any]) -> list[str]:
    """The unsafe-versus-safe view: ranking metrics, the policy threshold, and a chosen threshold if any."""
    at = moderation["at_policy_threshold"]
    lines = [
        f"- unsafe ({', '.join(moderation['unsafe_data_labels'])}) vs safe: ROC AUC {_fmt(moderation['roc_auc'])}, "
        f"average precision {_fmt(moderation['average_precision'])}; at threshold {at['threshold']:g}: "
        f"precision {_fmt(at['precision'])}, recall {_fmt(at['recall'])}"
    ]
    choice = moderation.get("chosen_threshold")
    if choice:
        reached = "" if choice["reached"] else " (target NOT reached; closest shown)"
        lines.append(
            f"- threshold for {choice['target']} >= {choice['target_value']:g}: {choice['threshold']:.4f} "
            f"(precision {_fmt(choice['precision'])}, recall {_fmt(choice['recall'])}){reached}"
        )
    return lines


def _comparison_section(comparison: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown table of the metrics side by side, then how many metrics each model won."""
    names = [k for k in comparison[0] if k not in ("metric", "better")]
    lines = ["## Comparison", "", f"| metric | {' | '.join(names)} | better |", "|---" * (len(names) + 2) + "|"]
    for row in comparison:
        values = " | ".join(_fmt(row[n]) for n in names)
        lines.append(f"| {row['metric']} | {values} | {row['better']} |")
    wins = {n: sum(1 for row in comparison if row["better"] == n) for n in names}
    lines += ["", "Metrics won: " + ", ".join(f"{n} {w}" for n, w in wins.items())]
    return lines
