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
    from vitguard.model import load_classifier

    policy = policy if policy is not None else PolicySettings.model_construct()
    wanted = tuple(unsafe_labels) if unsafe_labels else tuple(policy.unsafe_labels)
    folder = scan_image_folder(data_dir)
    paths = [item.path for item in folder.items]
    out_dir.mkdir(parents=True, exist_ok=True)

    scored_runs: list[tuple[ModelInfo, list[int], NDArray[np.float32]]] = []
    skipped: dict[Path, str] = {s.path: s.reason for s in folder.skipped}
    for spec in specs:
        classifier = load_classifier(spec, settings=model_settings)
        resolve_unsafe(folder.labels, classifier.info.labels, wanted, policy)  # fail before the slow part
        kept, probs, bad = score_folder(
            classifier, paths, batch_size=batch_size, workers=workers, progress=progress, desc=classifier.info.name
        )
        skipped.update({s.path: s.reason for s in bad})
        scored_runs.append((classifier.info, kept, probs))

    common = sorted(set.intersection(*(set(kept) for _, kept, _ in scored_runs)))
    runs: list[tuple[ScoredImages, dict[str, Any]]] = []
    files: list[Path] = []
    for index, (info, kept, probs) in enumerate(scored_runs):
        row_of = {pos: row for row, pos in enumerate(kept)}
        scored = ScoredImages(
            model=model_identity(info) | {"spec": specs[index]},
            data_labels=folder.labels,
            model_labels=info.labels,
            paths=tuple(paths[i] for i in common),
            y_true=np.array([folder.items[i].label for i in common], dtype=np.int64),
            probs=probs[[row_of[i] for i in common]] if common else probs[:0],
        )
        unsafe = resolve_unsafe(folder.labels, info.labels, wanted, policy)
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

    comparison = compare_metrics(runs[0][1], runs[1][1]) if len(runs) == 2 else []
    payload: dict[str, Any] = {
        "data": _data_summary(folder, common, skipped),
        "policy_threshold": policy.unsafe_threshold,
        "models": [metrics for _, metrics in runs],
        "comparison": comparison,
    }
    files.append(write_json(out_dir / "metrics.json", payload))
    report = render_report([m for _, m in runs], comparison, title=f"Evaluation on {data_dir}")
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
