"""``vitguard finetune``: labelled folder in, checkpoint directory + metrics + plots out.

Order of work, chosen so that every mistake in the input fails in seconds, before any slow step: scan and
split the data, resolve the unsafe classes, load the base model, then extract features or train, then
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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from vitguard.finetune.base import BaseModel, load_base_model
from vitguard.finetune.data import (
    ImageFolder,
    SkippedImage,
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
from vitguard.finetune.probe import LinearHead, ProbeConfig, train_linear_head
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

if TYPE_CHECKING:
    from vitguard.finetune.features import FeatureModel

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


@dataclass
class _Trained:
    """What either training method hands to the writer."""

    val_probs: NDArray[np.float32]
    val_kept: list[int]
    """Positions in the validation images of the rows of ``val_probs``."""
    train_counts: dict[str, int]
    skipped: list[SkippedImage]
    history: TrainingHistory
    training: dict[str, Any]
    """The ``training`` section of metrics.json, without the history."""


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
        NoTrainableHeadError: ``model`` is an ONNX/TorchScript export, or open_nsfw with ``method="full"``
            (open_nsfw trains a linear probe on its features: a head directory).
        ConfigError: no data class is unsafe by ``unsafe_labels`` (default: the policy's).
        DatasetError: a class has no decodable image left on one side of the split.
        ModelLoadError: the base model cannot be loaded.
    """
    policy = policy if policy is not None else PolicySettings.model_construct()
    labels = data.train.labels
    wanted = tuple(unsafe_labels) if unsafe_labels else tuple(policy.unsafe_labels)
    unsafe = resolve_unsafe(labels, labels, wanted, policy)  # before the slow part: fail in seconds
    from vitguard.model import parse_spec

    if parse_spec(model).kind == "opennsfw":
        trained, identity, device = _opennsfw_probe(model, method, data, out_dir, unsafe.data, probe, model_settings,
                                                    cache_dir, batch_size, workers, progress)
    else:
        trained, identity, device = _torch_finetune(model, method, data, out_dir, unsafe.data, probe, full,
                                                    model_settings, cache_dir, batch_size, workers, progress)
    val_items = [data.val.items[i] for i in trained.val_kept]
    val_y = np.array([item.label for item in val_items], dtype=np.int64)
    scored = ScoredImages(identity, labels, labels, tuple(i.path for i in val_items), val_y, trained.val_probs)
    evaluation = evaluate_scores(
        scored,
        unsafe,
        policy_threshold=policy.unsafe_threshold,
        target_precision=target_precision,
        target_recall=target_recall,
    )
    val_counts = Counter(labels[y] for y in val_y)
    skipped = {s.path: s.reason for s in (*data.train.skipped, *data.val.skipped, *trained.skipped)}
    payload: dict[str, Any] = {
        **evaluation,
        "data": {
            **data.source,
            "labels": list(labels),
            "train_counts": trained.train_counts,
            "val_counts": {label: val_counts.get(label, 0) for label in labels},
            "imbalance_ratio": imbalance_ratio(trained.train_counts),
            "skipped": skipped_summary(skipped),
        },
        "training": {
            **trained.training,
            "history": trained.history.to_dict(),
            "device": device,
        },
    }
    write_json(out_dir / "metrics.json", payload)
    write_predictions(out_dir / "val_predictions.jsonl", scored)
    plots = out_dir / "plots"
    write_plots(plots, [(scored, evaluation)])
    plot_loss_curves(trained.history.to_dict(), plots / "loss_curves.png", title=trained.training["method"])
    report = render_report([evaluation], title=f"Fine-tuned {identity['name']} from {model}")
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    _log.info(
        "wrote %s (%s, %d classes, validation accuracy %.4f)",
        out_dir,
        trained.training["method"],
        len(labels),
        (evaluation["classes"] or {}).get("accuracy", float("nan")),
    )
    return FinetuneResult(out_dir, payload, report, list(scored.paths), trained.val_probs)


def _torch_finetune(model: str, method: Method, data: DataSplit, out_dir: Path, unsafe: Sequence[str],
                    probe: ProbeConfig | None, full: FullConfig | None, model_settings: ModelSettings | None,
                    cache_dir: Path | None, batch_size: int, workers: int,
                    progress: bool) -> tuple[_Trained, dict[str, Any], str]:
    """Train a torch base (probe or full) and write its checkpoint; the training, what the checkpoint will
    report when loaded, and the device."""
    base = load_base_model(model, model_settings)
    if method == "probe":
        trained = _train_probe(base, data, probe or ProbeConfig(), cache_dir, batch_size, workers, progress)
    else:
        trained = _train_full(base, data, full or FullConfig(), progress)

    from vitguard.model import save_checkpoint
    from vitguard.model.checkpoint import WEIGHTS_NAME, weights_digest

    out_dir.mkdir(parents=True, exist_ok=True)
    info = base.classifier.info
    labels = data.train.labels
    save_checkpoint(
        base.classifier.module,
        out_dir,
        architecture=base.architecture,
        label_names=list(labels),
        pretrained_cfg=base.pretrained_cfg,
        model_args=base.model_args or None,
        untrained=info.untrained,  # a head trained on random features is still plumbing only
        unsafe_labels=list(unsafe),
    )
    identity = {  # what load_classifier(out_dir) will report
        "name": f"dir:{out_dir.resolve().name}",
        "version": weights_digest(out_dir / WEIGHTS_NAME),
        "backend": "torch",
        "labels": list(labels),
        "embedding_dim": info.embedding_dim,
        "untrained": info.untrained,
        "base_model": {"spec": model, "name": info.name, "version": info.version, "untrained": info.untrained},
    }
    return trained, identity, str(base.classifier.device)


def _opennsfw_probe(model: str, method: Method, data: DataSplit, out_dir: Path, unsafe: Sequence[str],
                    probe: ProbeConfig | None, model_settings: ModelSettings | None, cache_dir: Path | None,
                    batch_size: int, workers: int, progress: bool) -> tuple[_Trained, dict[str, Any], str]:
    """A linear head on the bundled open_nsfw network's pooled features (offline, no torch network), written
    as a head directory (:mod:`vitguard.model.opennsfw_head`)."""
    from vitguard.model.checkpoint import weights_digest
    from vitguard.model.opennsfw import OpenNSFWClassifier
    from vitguard.model.opennsfw_head import save_head_checkpoint

    if method != "probe":
        raise NoTrainableHeadError("the bundled open_nsfw model is an ONNX graph: only a linear probe on its "
                                   "features can be trained (--method probe)")
    cfg = model_settings if model_settings is not None else ModelSettings.model_construct()
    classifier = OpenNSFWClassifier(threads=cfg.threads, max_pixels=cfg.max_pixels, min_side=cfg.min_side)
    head, trained = _probe_head(classifier, data, probe or ProbeConfig(), cache_dir, batch_size, workers, progress)
    labels = data.train.labels
    weights = save_head_checkpoint(out_dir, weight=head.weight, bias=head.bias, labels=list(labels),
                                   unsafe_labels=list(unsafe), base_version=classifier.info.version)
    info = classifier.info
    identity = {
        "name": f"dir:{out_dir.resolve().name}",
        "version": weights_digest(weights),
        "backend": "onnx",
        "labels": list(labels),
        "embedding_dim": info.embedding_dim,
        "untrained": False,
        "base_model": {"spec": model, "name": info.name, "version": info.version, "untrained": False},
    }
    return trained, identity, "cpu"


def _train_probe(
    base: BaseModel,
    data: DataSplit,
    config: ProbeConfig,
    cache_dir: Path | None,
    batch_size: int,
    workers: int,
    progress: bool,
) -> _Trained:
    """A linear head on the torch network's frozen features, written into the network's own head."""
    head, trained = _probe_head(base.classifier, data, config, cache_dir, batch_size, workers, progress)
    _install_linear_head(base, head.weight, head.bias)
    return trained


def _probe_head(
    classifier: FeatureModel,
    data: DataSplit,
    config: ProbeConfig,
    cache_dir: Path | None,
    batch_size: int,
    workers: int,
    progress: bool,
) -> tuple[LinearHead, _Trained]:
    """Features once (cached), then a linear head trained on them."""
    labels = data.train.labels
    extracted = [
        extract_features(
            classifier,
            [item.path for item in folder.items],
            cache_dir=cache_dir,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            desc=f"features ({side})",
        )
        for folder, side in ((data.train, "training"), (data.val, "validation"))
    ]
    train, val = extracted
    train_y, val_y = data.train.targets[train.kept], data.val.targets[val.kept]
    _require_every_class(labels, train_y, "training")
    _require_every_class(labels, val_y, "validation")
    head = train_linear_head(train.features, train_y, val.features, val_y, len(labels), config, progress=progress)
    counts = Counter(labels[y] for y in train_y)
    return head, _Trained(
        # the trainer's own evaluation: the folded head on the raw features, as the checkpoint computes it
        val_probs=head.probabilities(val.features),
        val_kept=val.kept,
        train_counts={label: counts.get(label, 0) for label in labels},
        skipped=train.skipped + val.skipped,
        history=head.history,
        training={
            "method": "linear_probe",
            "config": asdict(config),
            "feature_cache": {"dir": str(cache_dir) if cache_dir else None, "hits": train.cache_hits + val.cache_hits},
        },
    )


def _train_full(base: BaseModel, data: DataSplit, config: FullConfig, progress: bool) -> _Trained:
    """A fresh head (seeded), then the head and the chosen blocks trained on augmented images."""
    labels = data.train.labels
    seed_everything(config.seed)
    _reset_head(base, len(labels))
    train_items, val_items = data.train.items, data.val.items
    result = finetune_network(
        base.classifier,
        [item.path for item in train_items],
        [item.label for item in train_items],
        [item.path for item in val_items],
        [item.label for item in val_items],
        labels,
        config,
        progress=progress,
    )
    dropped = {s.path for s in result.skipped}
    counts = Counter(labels[item.label] for item in train_items if item.path not in dropped)
    return _Trained(
        val_probs=result.val_probs,
        val_kept=result.val_kept,
        train_counts={label: counts.get(label, 0) for label in labels},
        skipped=result.skipped,
        history=result.history,
        training={
            "method": "full" if config.unfreeze is None else f"partial (head + last {config.unfreeze} blocks)",
            "config": asdict(config),
            "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters,
        },
    )


def _require_every_class(labels: Sequence[str], targets: NDArray[np.int64], side: str) -> None:
    present = set(np.unique(targets).tolist())
    missing = [label for i, label in enumerate(labels) if i not in present]
    if missing:
        raise DatasetError(f"no decodable {side} image is left for class(es) {missing}; add readable images")


def _reset_head(base: BaseModel, num_classes: int, *, linear: bool = False) -> Any:
    """Give the network a fresh head with ``num_classes`` outputs (timm's own initialisation).

    With ``linear``, the head must be one linear layer (the probe writes its weights into it).
    """
    import torch

    net: Any = base.classifier.module
    if not hasattr(net, "reset_classifier"):
        raise NoTrainableHeadError(f"{base.architecture} has no replaceable classifier head")
    net.reset_classifier(num_classes)
    head = net.get_classifier()
    if linear and not isinstance(head, torch.nn.Linear):
        raise NoTrainableHeadError(
            f"{base.architecture}'s classifier head is a {type(head).__name__}, not one linear layer; the linear "
            "probe cannot write it (use --method full)"
        )
    return head.to(base.classifier.device)


def _install_linear_head(base: BaseModel, weight: NDArray[np.float32], bias: NDArray[np.float32]) -> None:
    """Write the probe's weights into the network's own head, which sees the same pre-logits features."""
    import torch

    head = _reset_head(base, weight.shape[0], linear=True)
    if tuple(head.weight.shape) != weight.shape:
        raise NoTrainableHeadError(
            f"{base.architecture}'s head takes {head.weight.shape[1]} features, the probe {weight.shape[1]}"
        )
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    base.classifier.module.eval()
