"""Full and partial fine-tuning: train the head and the last N blocks (or everything) on images.

The recipe is the usual one for adapting a pretrained ViT: AdamW (no weight decay on biases, norms and
position/class tokens), a higher learning rate for the new head than for the pretrained blocks, linear
warm-up then cosine decay per step, cross-entropy with optional label smoothing and class weights, timm's
training-time augmentation, gradient clipping, mixed precision on CUDA (bf16 where supported, else fp16
with loss scaling), early stopping on the validation loss with the best weights restored, and seeded
randomness. Validation images go through the classifier's own ``prepare``, the inference preprocessing,
so the validation numbers are the ones the written checkpoint will reproduce.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from vitguard.errors import ConfigError
from vitguard.finetune.data import SkippedImage, class_weights
from vitguard.finetune.errors import DatasetError
from vitguard.finetune.features import forward_batch
from vitguard.finetune.training import Balance, EarlyStopping, TrainingHistory, optimizer_and_schedule, seed_everything
from vitguard.model.folder import decode_in_batches

if TYPE_CHECKING:
    import torch

    from vitguard.model.torch_backend import TorchClassifier

__all__ = ["FullConfig", "FullResult", "check_images", "finetune_network", "select_trainable"]


@dataclass(frozen=True)
class FullConfig:
    """Hyper-parameters of full or partial fine-tuning."""

    unfreeze: int | None = 1
    """Blocks trained besides the head, counted from the output end; 0: head only; None: everything."""
    epochs: int = 10
    lr: float = 5e-5
    """Learning rate of the pretrained blocks."""
    head_lr: float = 1e-3
    """Learning rate of the new head, which starts from random weights."""
    weight_decay: float = 0.05
    batch_size: int = 32
    warmup_epochs: float = 1.0
    patience: int = 3
    """Epochs without a better validation loss before stopping; 0 disables early stopping."""
    label_smoothing: float = 0.1
    balance: Balance = "loss"
    grad_clip: float = 1.0
    """Largest global gradient norm; 0 disables clipping."""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Area range of timm's random-resized crop; small crops can cut away what decides the label."""
    amp: bool = True
    """Mixed precision, on CUDA only; CPU always trains in float32."""
    seed: int = 0
    workers: int = 0
    """DataLoader worker processes; 0 decodes in the training process (deterministic, simplest)."""
    max_steps_per_epoch: int | None = None
    """Cap on optimiser steps per epoch (smoke tests, quick looks at a huge folder)."""


@dataclass
class FullResult:
    """The trained network's validation probabilities, from the weights that were kept."""

    history: TrainingHistory
    val_probs: NDArray[np.float32]
    val_kept: list[int]
    """Positions in the validation paths of the rows of ``val_probs``."""
    skipped: list[SkippedImage]
    trainable_parameters: int
    total_parameters: int


def select_trainable(module: torch.nn.Module, unfreeze: int | None) -> set[str]:
    """Names of the parameters to train: the classifier head plus the last ``unfreeze`` block groups.

    Blocks are timm's own coarse parameter groups (``model.group_matcher(coarse=True)``): for a ViT the
    stem (patch embedding, tokens), each transformer block, and the final norm together with the last
    block. ``unfreeze=None`` trains everything.

    Raises:
        ConfigError: partial unfreezing of a network that does not describe its blocks to timm.
    """
    from timm.models import group_parameters

    net: Any = module
    names = [name for name, _ in module.named_parameters()]
    if unfreeze is None:
        return set(names)
    head_ids = {id(p) for p in net.get_classifier().parameters()}
    head = {name for name, p in module.named_parameters() if id(p) in head_ids}
    if unfreeze <= 0:
        return head
    if not hasattr(net, "group_matcher"):
        raise ConfigError(f"{type(module).__name__} does not name its blocks; use --unfreeze all")
    groups = group_parameters(module, net.group_matcher(coarse=True))
    blocks = [set(group) - head for _, group in sorted(groups.items())]
    blocks = [group for group in blocks if group]
    chosen = set().union(*blocks[-unfreeze:]) if blocks else set()
    return head | chosen


_CHECK_BATCH = 64
"""Files decoded per step by :func:`check_images` (bounds the memory the check holds at once)."""


def check_images(
    classifier: TorchClassifier, paths: Sequence[Path], *, workers: int = 2, progress: bool = True, desc: str = ""
) -> tuple[list[int], list[SkippedImage]]:
    """Decode every image once with the classifier's ``prepare``: the readable positions and the skipped files.

    Done before training so an unreadable file is counted up front instead of failing an epoch. The arrays
    are dropped batch by batch: only the verdict per file is kept.
    """
    kept: list[int] = []
    skipped: list[SkippedImage] = []
    with tqdm(total=len(paths), desc=desc or "checking images", disable=not progress) as bar:
        for batch in decode_in_batches(classifier.prepare, paths, batch_size=_CHECK_BATCH, workers=workers):
            kept += [d.index for d in batch.decoded]
            skipped += [SkippedImage(f.path, f.reason) for f in batch.failed]
            bar.update(len(batch.decoded) + len(batch.failed))
    return kept, skipped


class _Images:
    """A map-style dataset: path -> (tensor, class) through a loading function."""

    def __init__(self, paths: Sequence[Path], targets: Sequence[int], load: Callable[[bytes], Any]) -> None:
        self.paths, self.targets, self.load = list(paths), list(targets), load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch

        x = self.load(self.paths[index].read_bytes())
        return (x if isinstance(x, torch.Tensor) else torch.from_numpy(x)), self.targets[index]


def _train_transform(classifier: TorchClassifier, config: FullConfig) -> Callable[[bytes], Any]:
    from timm.data import create_transform  # type: ignore[attr-defined]

    from vitguard.model import decode_image

    transform = create_transform(**classifier.timm_data_config(), is_training=True, scale=config.crop_scale)
    preprocessor: Any = classifier.preprocessor
    max_pixels = int(getattr(preprocessor, "max_pixels", 40_000_000))
    min_side = int(getattr(preprocessor, "min_side", 8))
    _, height, width = classifier.info.input_size

    def load(data: bytes) -> Any:
        image = decode_image(data, max_pixels=max_pixels, min_side=min_side, draft_size=(width, height))
        return transform(image)

    return load


def _param_groups(module: torch.nn.Module, trainable: set[str], config: FullConfig) -> list[dict[str, Any]]:
    net: Any = module
    no_decay = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    head_ids = {id(p) for p in net.get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, param in module.named_parameters():
        param.requires_grad_(name in trainable)
        if name not in trainable:
            continue
        decay = param.ndim > 1 and name not in no_decay
        groups.setdefault((id(param) in head_ids, decay), []).append(param)
    return [
        {"params": params, "lr": config.head_lr if is_head else config.lr, "weight_decay": config.weight_decay * decay}
        for (is_head, decay), params in groups.items()
    ]


def _freeze_frozen_norms(module: torch.nn.Module) -> None:
    """Keep batch-norm statistics of frozen layers fixed (train() would update them)."""
    import torch

    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in sub.parameters()
        ):
            sub.eval()


def finetune_network(
    classifier: TorchClassifier,
    train_paths: Sequence[Path],
    train_targets: Sequence[int],
    val_paths: Sequence[Path],
    val_targets: Sequence[int],
    labels: Sequence[str],
    config: FullConfig | None = None,
    *,
    progress: bool = True,
) -> FullResult:
    """Fine-tune ``classifier.module`` in place on the images; it ends holding the best weights, in eval mode.

    The module must already have a head with one output per label. Unreadable images are skipped and
    returned. Returns the validation probabilities of the kept weights, computed as the classifier computes
    them at inference.

    Raises:
        DatasetError: a class has no decodable image left for training or validation.
    """
    import torch

    config = config or FullConfig()
    _make_deterministic(config.seed, classifier.device)
    module = classifier.module

    images = _check_split(classifier, train_paths, train_targets, val_paths, val_targets, progress=progress)
    _require_every_class(labels, images)
    weights = torch.from_numpy(class_weights(images.train.targets, len(labels))).to(classifier.device)
    loaders = _make_loaders(classifier, images, weights, config)

    trainable = select_trainable(module, config.unfreeze)
    trainer = _make_trainer(module, trainable, len(loaders.train), weights, config, classifier.device, progress)
    history = _fit(trainer, loaders, weights if config.balance != "none" else None)

    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    probs = _probabilities(classifier, loaders.val_set, config.batch_size)
    return FullResult(
        history=history,
        val_probs=probs,
        val_kept=images.val.kept,
        skipped=images.skipped,
        trainable_parameters=sum(p.numel() for n, p in module.named_parameters() if n in trainable),
        total_parameters=sum(p.numel() for p in module.parameters()),
    )


def _make_deterministic(seed: int, device: torch.device) -> None:
    """Seed every generator and, on CUDA, pin cuDNN to deterministic kernels, so a seed reproduces a run."""
    import torch

    seed_everything(seed)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


@dataclass(frozen=True)
class _Side:
    """The decodable images of one side of the split (training or validation) and their classes."""

    paths: list[Path]
    targets: NDArray[np.int64]
    kept: list[int]
    """Positions of ``paths`` in the side's input paths."""


@dataclass(frozen=True)
class _CheckedImages:
    """Both sides of the split after every image was decoded once, and the files that could not be."""

    train: _Side
    val: _Side
    skipped: list[SkippedImage]
    """Training images first, then validation images."""


def _check_split(
    classifier: TorchClassifier,
    train_paths: Sequence[Path],
    train_targets: Sequence[int],
    val_paths: Sequence[Path],
    val_targets: Sequence[int],
    *,
    progress: bool,
) -> _CheckedImages:
    """Decode every image of both sides once (training first) and keep the readable ones."""
    train_kept, skipped = check_images(classifier, train_paths, progress=progress, desc="checking training images")
    val_kept, val_skipped = check_images(classifier, val_paths, progress=progress, desc="checking validation images")
    return _CheckedImages(
        train=_side(train_paths, train_targets, train_kept),
        val=_side(val_paths, val_targets, val_kept),
        skipped=skipped + val_skipped,
    )


def _side(paths: Sequence[Path], targets: Sequence[int], kept: list[int]) -> _Side:
    return _Side(
        paths=[paths[i] for i in kept], targets=np.array([targets[i] for i in kept], dtype=np.int64), kept=kept
    )


def _require_every_class(labels: Sequence[str], images: _CheckedImages) -> None:
    """Refuse to train when skipping unreadable files left a class with no image on either side.

    Raises:
        DatasetError: naming the side and the classes without an image.
    """
    for side, targets in (("training", images.train.targets), ("validation", images.val.targets)):
        present = set(targets.tolist())
        missing = [label for i, label in enumerate(labels) if i not in present]
        if missing:
            raise DatasetError(f"no decodable {side} image is left for class(es) {missing}; add readable images")


@dataclass(frozen=True)
class _Loaders:
    """The data loaders of both sides, and the validation images for the final probabilities."""

    train: Any
    """Augmented training images, shuffled or class-balanced by a weighted sampler."""
    val: Any
    """Validation images through the inference preprocessing, in order."""
    val_set: _Images


def _make_loaders(
    classifier: TorchClassifier, images: _CheckedImages, weights: torch.Tensor, config: FullConfig
) -> _Loaders:
    import torch

    train_y = images.train.targets
    train_set = _Images(images.train.paths, train_y.tolist(), _train_transform(classifier, config))
    val_set = _Images(images.val.paths, images.val.targets.tolist(), classifier.prepare)
    generator = torch.Generator().manual_seed(config.seed)
    sampler = None
    if config.balance == "sampler":
        sampler = torch.utils.data.WeightedRandomSampler(
            weights.cpu()[torch.from_numpy(train_y)].double(),  # type: ignore[arg-type]
            len(train_y),
            replacement=True,
            generator=generator,
        )
    loader_args: dict[str, Any] = {"num_workers": config.workers, "pin_memory": classifier.device.type == "cuda"}
    train_loader: Any = torch.utils.data.DataLoader(
        train_set,  # type: ignore[arg-type]
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=len(train_set) > config.batch_size,
        **loader_args,
    )
    val_loader: Any = torch.utils.data.DataLoader(val_set, batch_size=config.batch_size, **loader_args)  # type: ignore[arg-type]
    return _Loaders(train=train_loader, val=val_loader, val_set=val_set)


@dataclass
class _Trainer:
    """Everything one optimiser step needs, and the count of updates so far (the schedule is per update)."""

    module: torch.nn.Module
    device: torch.device
    config: FullConfig
    optimizer: Any
    schedule: Any
    steps_per_epoch: int
    use_amp: bool
    amp_dtype: torch.dtype
    scaler: torch.amp.GradScaler
    loss_weights: torch.Tensor | None
    progress: bool
    updates: int = 0

    def train_epoch(self, loader: Any, epoch: int) -> float:
        """One pass over at most ``steps_per_epoch`` batches in train mode; the mean training loss per image."""
        self.module.train()
        _freeze_frozen_norms(self.module)
        running, seen = 0.0, 0
        steps = tqdm(
            loader, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}", leave=False, disable=not self.progress
        )
        for step, (x, y) in enumerate(steps):
            if step >= self.steps_per_epoch:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = self.step(x, y)
            running += loss * len(y)
            seen += len(y)
            steps.set_postfix(loss=f"{loss:.4f}")
        return running / max(1, seen)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimiser update on a batch (loss scaling and clipping included); the batch's loss."""
        import torch
        from torch.nn import functional as F

        config = self.config
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            loss = F.cross_entropy(self.module(x), y, weight=self.loss_weights, label_smoothing=config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.updates += 1
        self.schedule.step_update(self.updates)
        return float(loss.detach())


def _make_trainer(
    module: torch.nn.Module,
    trainable: set[str],
    batches: int,
    weights: torch.Tensor,
    config: FullConfig,
    device: torch.device,
    progress: bool,
) -> _Trainer:
    """The optimiser and its warm-up + cosine schedule over every step of every epoch, and mixed precision.

    Mixed precision is used on CUDA only: bf16 where the GPU supports it, else fp16, which needs loss scaling.
    """
    import torch

    steps_per_epoch = batches
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    total = max(1, steps_per_epoch * config.epochs)
    warmup = int(steps_per_epoch * config.warmup_epochs)
    optimizer, schedule = optimizer_and_schedule(
        _param_groups(module, trainable, config), lr=config.lr, weight_decay=config.weight_decay,
        total_steps=total, warmup_steps=warmup,
    )
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return _Trainer(
        module=module,
        device=device,
        config=config,
        optimizer=optimizer,
        schedule=schedule,
        steps_per_epoch=steps_per_epoch,
        use_amp=use_amp,
        amp_dtype=amp_dtype,
        scaler=scaler,
        loss_weights=weights if config.balance == "loss" else None,
        progress=progress,
    )


def _fit(trainer: _Trainer, loaders: _Loaders, val_weights: torch.Tensor | None) -> TrainingHistory:
    """Train epoch by epoch, validating after each, until the epochs run out or early stopping says so.

    The module ends holding the weights of the epoch with the lowest validation loss, not the last ones.
    """
    module, config = trainer.module, trainer.config
    history = TrainingHistory()
    stopper = EarlyStopping(config.patience)
    best_state = copy.deepcopy(module.state_dict())
    epochs = tqdm(range(config.epochs), desc="fine-tuning", unit="epoch", disable=not trainer.progress)
    for epoch in epochs:
        train_loss = trainer.train_epoch(loaders.train, epoch)
        val_loss, val_acc = _validate(
            module, loaders.val, trainer.device, val_weights, trainer.use_amp, trainer.amp_dtype
        )
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_acc)
        if stopper.update(val_loss):
            history.best_epoch = epoch + 1
            best_state = copy.deepcopy(module.state_dict())
        epochs.set_postfix(train=f"{history.train_loss[-1]:.4f}", val=f"{val_loss:.4f}", acc=f"{val_acc:.3f}")
        if stopper.should_stop:
            history.stopped_early = True
            break
    epochs.close()
    module.load_state_dict(best_state)
    return history


def _validate(
    module: torch.nn.Module,
    loader: Any,
    device: torch.device,
    weights: torch.Tensor | None,
    use_amp: bool,
    amp_dtype: torch.dtype,
) -> tuple[float, float]:
    """Class-weighted mean cross-entropy (no smoothing) and accuracy over the validation images."""
    import torch
    from torch.nn import functional as F

    module.eval()
    loss_sum, weight_sum, correct, count = 0.0, 0.0, 0, 0
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                logits = module(x).float()
            loss_sum += float(F.cross_entropy(logits, y, weight=weights, reduction="sum"))
            weight_sum += float(weights[y].sum()) if weights is not None else float(len(y))
            correct += int((logits.argmax(dim=1) == y).sum())
            count += len(y)
    return loss_sum / max(weight_sum, 1e-12), correct / max(count, 1)


def _probabilities(classifier: TorchClassifier, images: _Images, batch_size: int) -> NDArray[np.float32]:
    from vitguard.model import softmax

    rows: list[NDArray[np.float32]] = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([classifier.prepare(p.read_bytes()) for p in images.paths[start : start + batch_size]])
        logits, _ = forward_batch(classifier, batch)
        rows.append(softmax(logits))
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(rows)
