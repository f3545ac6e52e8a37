"""``vitguard evaluate``: any model spec on a labelled folder, alone or against a second spec.

Both models are scored on the same images (those that both could decode), and the report names the
better one per metric. The classifiers are built by the public factory, so what is measured is exactly
what the pipeline would run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from vitguard.finetune.data import ImageFolder, SkippedImage, scan_image_folder
from vitguard.finetune.report import (
    ScoredImages,
    compare_metrics,
    evaluate_scores,
    render_report,
    resolve_unsafe,
    write_json,
    write_plots,
    write_predictions,
)
from vitguard.model.folder import decode_in_batches
from vitguard.model.types import Classifier, ModelInfo
from vitguard.settings import ModelSettings, PolicySettings

__all__ = ["EvaluationResult", "model_identity", "run_evaluate", "score_folder", "skipped_summary"]

_log = logging.getLogger(__name__)


def model_identity(info: ModelInfo) -> dict[str, Any]:
    """What a report says about a model: enough to tell two runs apart and to find the model again."""
    return {
        "name": info.name,
        "version": info.version,
        "backend": info.backend,
        "labels": list(info.labels),
        "embedding_dim": info.embedding_dim,
        "untrained": info.untrained,
    }


def score_folder(
    classifier: Classifier,
    paths: Sequence[Path],
    *,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
    desc: str = "classifying",
) -> tuple[list[int], NDArray[np.float32], list[SkippedImage]]:
    """Class probabilities of every decodable image, through ``prepare`` + ``predict`` like the pipeline.

    Returns the positions of the scored images, their probabilities (columns in ``classifier.info.labels``
    order) and the skipped images with reason codes.
    """
    labels = classifier.info.labels
    kept: list[int] = []
    rows: list[NDArray[np.float32]] = []
    skipped: list[SkippedImage] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in decode_in_batches(classifier.prepare, paths, batch_size=batch_size, workers=workers):
            skipped += [SkippedImage(f.path, f.reason) for f in batch.failed]
            if batch.decoded:
                for decoded, prediction in zip(batch.decoded, classifier.predict(batch.stack()), strict=True):
                    kept.append(decoded.index)
                    rows.append(np.array([prediction.scores[label] for label in labels], dtype=np.float32))
            bar.update(len(batch.decoded) + len(batch.failed))
    probs = np.stack(rows) if rows else np.zeros((0, len(labels)), dtype=np.float32)
    return kept, probs, skipped


@dataclass
class EvaluationResult:
    """Everything ``vitguard evaluate`` wrote, in memory."""

    metrics: dict[str, Any]
    """The content of ``metrics.json``."""
    report: str
    """The content of ``report.md``."""
    files: list[Path]


def run_evaluate(
    specs: Sequence[str],
    data_dir: Path,
    out_dir: Path,
    *,
    unsafe_labels: Sequence[str] | None = None,
    target_precision: float | None = None,
    target_recall: float | None = None,
    model_settings: ModelSettings | None = None,
    policy: PolicySettings | None = None,
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate one or two model specs on a labelled folder; write metrics.json, report.md, plots, predictions.

    Raises:
        DatasetError: the folder is not a usable labelled image folder.
        ConfigError: no data class is unsafe by ``unsafe_labels``, or the policy matches no model class.
        ModelLoadError: a spec cannot be loaded.
    """
    policy = policy if policy is not None else PolicySettings.model_construct()
    wanted = tuple(unsafe_labels) if unsafe_labels else tuple(policy.unsafe_labels)
    folder = scan_image_folder(data_dir)
    paths = [item.path for item in folder.items]
    out_dir.mkdir(parents=True, exist_ok=True)

    model_runs = [
        _score_spec(
            spec,
            folder,
            paths,
            wanted,
            policy,
            model_settings=model_settings,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
        )
        for spec in specs
    ]
    skipped: dict[Path, str] = {s.path: s.reason for s in folder.skipped}
    for model_run in model_runs:
        skipped.update({s.path: s.reason for s in model_run.skipped})

    common = sorted(set.intersection(*(set(model_run.kept) for model_run in model_runs)))
    runs: list[tuple[ScoredImages, dict[str, Any]]] = []
    files: list[Path] = []
    for index, model_run in enumerate(model_runs):
        scored = _on_common_images(model_run, folder, paths, common)
        unsafe = resolve_unsafe(folder.labels, model_run.info.labels, wanted, policy)
        metrics = evaluate_scores(
            scored,
            unsafe,
            policy_threshold=policy.unsafe_threshold,
            target_precision=target_precision,
            target_recall=target_recall,
        )
        runs.append((scored, metrics))
        suffix = f"_{index + 1}" if len(specs) > 1 else ""
        files.append(write_predictions(out_dir / f"predictions{suffix}.jsonl", scored))
    files += write_plots(out_dir, runs, per_model_prefix=len(runs) > 1)
    data = _data_summary(folder, common, skipped)
    return _write_summary(out_dir, runs, data, policy.unsafe_threshold, files, title=f"Evaluation on {data_dir}")


@dataclass(frozen=True)
class _ModelRun:
    """One spec's classifier scored on the folder: what it could decode and what it made of it."""

    spec: str
    info: ModelInfo
    kept: list[int]
    """Positions in the folder's items of the rows of ``probs``."""
    probs: NDArray[np.float32]
    skipped: list[SkippedImage]


def _score_spec(
    spec: str,
    folder: ImageFolder,
    paths: Sequence[Path],
    wanted: Sequence[str],
    policy: PolicySettings,
    *,
    model_settings: ModelSettings | None,
    batch_size: int,
    workers: int,
    progress: bool,
) -> _ModelRun:
    """Load one spec and score every image of the folder with it.

    Raises:
        ConfigError: the unsafe classes cannot be resolved for this model; checked before the slow scoring.
        ModelLoadError: the spec cannot be loaded.
    """
    from vitguard.model import load_classifier

    classifier = load_classifier(spec, settings=model_settings)
    resolve_unsafe(folder.labels, classifier.info.labels, wanted, policy)  # fail before the slow part
    kept, probs, bad = score_folder(
        classifier, paths, batch_size=batch_size, workers=workers, progress=progress, desc=classifier.info.name
    )
    return _ModelRun(spec, classifier.info, kept, probs, bad)


def _on_common_images(
    model_run: _ModelRun, folder: ImageFolder, paths: Sequence[Path], common: Sequence[int]
) -> ScoredImages:
    """The run's probabilities restricted to ``common``, the images every model decoded, so all compare alike."""
    row_of = {pos: row for row, pos in enumerate(model_run.kept)}
    return ScoredImages(
        model=model_identity(model_run.info) | {"spec": model_run.spec},
        data_labels=folder.labels,
        model_labels=model_run.info.labels,
        paths=tuple(paths[i] for i in common),
        y_true=np.array([folder.items[i].label for i in common], dtype=np.int64),
        probs=model_run.probs[[row_of[i] for i in common]] if common else model_run.probs[:0],
    )


def _write_summary(
    out_dir: Path,
    runs: Sequence[tuple[ScoredImages, dict[str, Any]]],
    data: dict[str, Any],
    policy_threshold: float,
    files: list[Path],
    *,
    title: str,
) -> EvaluationResult:
    """Write metrics.json and report.md, with a per-metric comparison when there are exactly two models."""
    comparison = compare_metrics(runs[0][1], runs[1][1]) if len(runs) == 2 else []
    payload: dict[str, Any] = {
        "data": data,
        "policy_threshold": policy_threshold,
        "models": [metrics for _, metrics in runs],
        "comparison": comparison,
    }
    files.append(write_json(out_dir / "metrics.json", payload))
    report = render_report([m for _, m in runs], comparison, title=title)
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    files.append(out_dir / "report.md")
    return EvaluationResult(payload, report, files)


def _data_summary(folder: ImageFolder, common: Sequence[int], skipped: dict[Path, str]) -> dict[str, Any]:
    counts = Counter(folder.labels[folder.items[i].label] for i in common)
    return {
        "dir": str(folder.root),
        "labels": list(folder.labels),
        "counts": {label: counts.get(label, 0) for label in folder.labels},
        "skipped": skipped_summary(skipped),
    }


def skipped_summary(skipped: dict[Path, str], *, listed: int = 50) -> dict[str, Any]:
    """How many images were skipped, by reason code, and the first few files."""
    return {
        "count": len(skipped),
        "by_reason": dict(Counter(skipped.values())),
        "files": [str(p) for p in sorted(skipped)[:listed]],
    }
