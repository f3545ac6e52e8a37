"""``vitguard finetune``: labelled folder in, checkpoint directory + metrics + plots out.

Order of work, chosen so that every mistake in the input fails in seconds, before any slow step: scan and
split the data, load the base model, resolve the unsafe classes, then extract features or train, then
write. The output directory is the loader's layout (``config.json`` + ``model.safetensors``) with
``metrics.json``, ``report.md``, ``val_predictions.jsonl`` and ``plots/`` beside it; the loader ignores the
extra files, so ``--model OUT`` works everywhere in vitguard.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from vitguard.finetune.base import BaseModel, load_base_model
from vitguard.finetune.data import (
    ImageFolder,
    check_modes,
    imbalance_ratio,
    scan_image_folder,
    stratified_split,
)
from vitguard.finetune.errors import DatasetError, NoTrainableHeadError
from vitguard.finetune.evaluate import skipped_summary
from vitguard.finetune.features import extract_features
from vitguard.finetune.full import FullConfig, finetune_network
from vitguard.finetune.plots import plot_loss_curves
from vitguard.finetune.probe import ProbeConfig, train_linear_head
from vitguard.finetune.report import (
    ScoredImages,
    evaluate_scores,
    render_report,
    resolve_unsafe,
    write_json,
    write_plots,
    write_predictions,
)
from vitguard.finetune.training import TrainingHistory, seed_everything
from vitguard.settings import ModelSettings, PolicySettings

__all__ = ["DataSplit", "FinetuneResult", "Method", "load_split", "run_finetune"]

_log = logging.getLogger(__name__)

Method = Literal["probe", "full"]
"""``probe``: frozen backbone, new linear head on cached features. ``full``: train head and blocks on images."""


@dataclass(frozen=True)
class DataSplit:
    """Training and validation images and how they were obtained."""

    train: ImageFolder
    val: ImageFolder
    source: dict[str, Any]
    """``{"train_dir", "val_dir"}`` or ``{"train_dir", "val_fraction", "seed"}``."""


def load_split(
    data_dir: Path,
    *,
    val_dir: Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    allow_mixed_modes: bool = False,
) -> DataSplit:
    """Scan the folder(s), check image modes, and split stratified unless a validation folder is given.

    Raises:
        DatasetError: see :func:`~vitguard.finetune.data.scan_image_folder`, :func:`check_modes` and
            :func:`stratified_split`.
    """
    folder = scan_image_folder(data_dir)
    if val_dir is not None:
        val = scan_image_folder(val_dir, labels=folder.labels)
        if not allow_mixed_modes:
            check_modes(folder, val)
        return DataSplit(folder, val, {"train_dir": str(data_dir), "val_dir": str(val_dir)})
    if not allow_mixed_modes:
        check_modes(folder)
    train, val = stratified_split(folder, val_fraction, seed=seed)
    return DataSplit(train, val, {"train_dir": str(data_dir), "val_fraction": val_fraction, "seed": seed})


@dataclass
class FinetuneResult:
    """What ``vitguard finetune`` wrote, plus the trainer's own validation predictions in memory."""

    out_dir: Path
    metrics: dict[str, Any]
    report: str
    val_paths: list[Path] = field(default_factory=list)
    val_probs: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    """The trainer's probabilities for ``val_paths`` (columns in label order): what the checkpoint must reproduce."""


def run_finetune(
    data: DataSplit,
    out_dir: Path,
    *,
    model: str = "auto",
    method: Method = "probe",
    probe: ProbeConfig | None = None,
    full: FullConfig | None = None,
    unsafe_labels: Sequence[str] | None = None,
    target_precision: float | None = None,
    target_recall: float | None = None,
    model_settings: ModelSettings | None = None,
    policy: PolicySettings | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
) -> FinetuneResult:
    """Adapt ``model`` to the labelled data and write a checkpoint directory with metrics and plots.

    Raises:
        NoTrainableHeadError: ``model`` is an ONNX/TorchScript export or open_nsfw.
        ConfigError: no data class is unsafe by ``unsafe_labels`` (default: the policy's).
        ModelLoadError: the base model cannot be loaded.
    """
    policy = policy if policy is not None else PolicySettings.model_construct()
    probe = probe or ProbeConfig()
    full = full or FullConfig()
    labels = data.train.labels
    wanted = tuple(unsafe_labels) if unsafe_labels else tuple(policy.unsafe_labels)
    unsafe = resolve_unsafe(labels, labels, wanted, policy)
    base = load_base_model(model, model_settings)
    classifier = base.classifier
    train_paths = [item.path for item in data.train.items]
    val_paths = [item.path for item in data.val.items]
    train_targets, val_targets = data.train.targets, data.val.targets
    seed = probe.seed if method == "probe" else full.seed
    training: dict[str, Any]

    if method == "probe":
        features_train = extract_features(
            classifier, train_paths, cache_dir=cache_dir, batch_size=batch_size, workers=workers,
            progress=progress, desc="features (train)",
        )  # fmt: skip
        features_val = extract_features(
            classifier, val_paths, cache_dir=cache_dir, batch_size=batch_size, workers=workers,
            progress=progress, desc="features (validation)",
        )  # fmt: skip
        train_y = train_targets[features_train.kept]
        val_y = val_targets[features_val.kept]
        _require_every_class(labels, train_y, "training")
        _require_every_class(labels, val_y, "validation")
        head = train_linear_head(
            features_train.features, train_y, features_val.features, val_y, len(labels), probe, progress=progress
        )
        _install_linear_head(base, head.weight, head.bias)
        val_probs = head.probabilities(features_val.features)
        val_kept = features_val.kept
        skipped = features_train.skipped + features_val.skipped
        history: TrainingHistory = head.history
        training = {
            "method": "linear_probe",
            "config": asdict(probe),
            "feature_cache": {
                "dir": str(cache_dir) if cache_dir else None,
                "hits": features_train.cache_hits + features_val.cache_hits,
            },
        }
        counts_train = Counter(labels[y] for y in train_y)
    else:
        seed_everything(seed)
        _reset_head(base, len(labels))
        result = finetune_network(
            classifier, train_paths, train_targets.tolist(), val_paths, val_targets.tolist(), len(labels), full,
            progress=progress,
        )  # fmt: skip
        val_probs, val_kept, skipped, history = result.val_probs, result.val_kept, result.skipped, result.history
        val_y = val_targets[val_kept]
        skipped_train = {s.path for s in skipped}
        counts_train = Counter(labels[i.label] for i in data.train.items if i.path not in skipped_train)
        training = {
            "method": "full" if full.unfreeze is None else f"partial (head + last {full.unfreeze} blocks)",
            "config": asdict(full),
            "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters,
        }
    training |= {"history": history.to_dict(), "device": str(classifier.device)}

    from vitguard.model import save_checkpoint
    from vitguard.model.checkpoint import WEIGHTS_NAME, weights_digest

    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        classifier.module,
        out_dir,
        architecture=base.architecture,
        label_names=list(labels),
        pretrained_cfg=base.pretrained_cfg,
        model_args=base.model_args or None,
    )
    info = base.classifier.info
    identity = {
        "name": f"dir:{out_dir.resolve().name}",
        "version": weights_digest(out_dir / WEIGHTS_NAME),
        "backend": "torch",
        "labels": list(labels),
        "embedding_dim": info.embedding_dim,
        "untrained": False,
        "base_model": {"spec": model, "name": info.name, "version": info.version, "untrained": info.untrained},
    }
    kept_val_paths = [val_paths[i] for i in val_kept]
    scored = ScoredImages(identity, labels, labels, tuple(kept_val_paths), val_y.astype(np.int64), val_probs)
    evaluation = evaluate_scores(
        scored,
        unsafe,
        policy_threshold=policy.unsafe_threshold,
        target_precision=target_precision,
        target_recall=target_recall,
    )
    counts_val = Counter(labels[y] for y in val_y)
    counts = {label: counts_train.get(label, 0) for label in labels}
    payload: dict[str, Any] = {
        **evaluation,
        "data": {
            **data.source,
            "labels": list(labels),
            "train_counts": counts,
            "val_counts": {label: counts_val.get(label, 0) for label in labels},
            "imbalance_ratio": imbalance_ratio(counts),
            "skipped": skipped_summary({s.path: s.reason for s in (*data.train.skipped, *data.val.skipped, *skipped)}),
        },
        "training": training,
    }
    write_json(out_dir / "metrics.json", payload)
    write_predictions(out_dir / "val_predictions.jsonl", scored)
    plots = out_dir / "plots"
    write_plots(plots, [(scored, evaluation)])
    plot_loss_curves(history.to_dict(), plots / "loss_curves.png", title=training["method"])
    report = render_report([evaluation], title=f"Fine-tuned {identity['name']} from {model}")
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    return FinetuneResult(out_dir, payload, report, kept_val_paths, val_probs)


def _require_every_class(labels: Sequence[str], targets: NDArray[np.int64], side: str) -> None:
    present = set(np.unique(targets).tolist())
    missing = [label for i, label in enumerate(labels) if i not in present]
    if missing:
        raise DatasetError(f"no decodable {side} image is left for class(es) {missing}; add readable images")


def _reset_head(base: BaseModel, num_classes: int) -> Any:
    """Give the network a fresh linear head with ``num_classes`` outputs (timm's own initialisation)."""
    import torch

    net: Any = base.classifier.module
    if not hasattr(net, "reset_classifier"):
        raise NoTrainableHeadError(f"{base.architecture} has no replaceable classifier head")
    net.reset_classifier(num_classes)
    head = net.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise NoTrainableHeadError(
            f"{base.architecture}'s classifier head is a {type(head).__name__}, not one linear layer; the linear "
            "probe cannot write it (use --method full)"
        )
    return head.to(base.classifier.device)


def _install_linear_head(base: BaseModel, weight: NDArray[np.float32], bias: NDArray[np.float32]) -> None:
    """Write the probe's weights into the network's own head, which sees the same pre-logits features."""
    import torch

    head = _reset_head(base, weight.shape[0])
    if tuple(head.weight.shape) != weight.shape:
        raise NoTrainableHeadError(
            f"{base.architecture}'s head takes {head.weight.shape[1]} features, the probe {weight.shape[1]}"
        )
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    base.classifier.module.eval()
