"""Linear probe: a new classification head trained on frozen backbone features.

The features are the backbone's pre-logits (``forward_head(x, pre_logits=True)``), un-normalised: the
very input the checkpoint's head sees at inference. Training standardises them (zero mean, unit variance
per dimension) because that makes the optimisation fast and insensitive to the feature scale, then folds
the standardisation back into the weights, so the head that is written is one plain linear layer on the
raw features and classifies exactly as it did in training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from vitguard.finetune.data import class_weights
from vitguard.finetune.training import Balance, EarlyStopping, TrainingHistory, optimizer_and_schedule, seed_everything

__all__ = ["LinearHead", "ProbeConfig", "train_linear_head"]


@dataclass(frozen=True)
class ProbeConfig:
    """Hyper-parameters of the linear probe; the defaults suit a few hundred to a few hundred thousand images."""

    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 256
    warmup_epochs: float = 2.0
    patience: int = 20
    """Epochs without a better validation loss before stopping; 0 disables early stopping."""
    label_smoothing: float = 0.0
    balance: Balance = "loss"
    seed: int = 0


@dataclass(frozen=True)
class LinearHead:
    """A trained head ``logits = features @ weight.T + bias`` on raw pre-logits features."""

    weight: NDArray[np.float32]
    """Shape ``(num_classes, num_features)``."""
    bias: NDArray[np.float32]
    history: TrainingHistory = field(default_factory=TrainingHistory, compare=False)

    def probabilities(self, features: NDArray[np.float32]) -> NDArray[np.float32]:
        """Softmax of the logits, computed in torch float32 as the checkpoint's ``nn.Linear`` head does."""
        import torch

        with torch.inference_mode():
            logits = torch.nn.functional.linear(
                torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
                torch.from_numpy(self.weight),
                torch.from_numpy(self.bias),
            )
            return logits.softmax(dim=-1).numpy()


def train_linear_head(
    train_x: NDArray[np.float32],
    train_y: NDArray[np.int64],
    val_x: NDArray[np.float32],
    val_y: NDArray[np.int64],
    num_classes: int,
    config: ProbeConfig | None = None,
    *,
    progress: bool = True,
) -> LinearHead:
    """Train a linear head with AdamW, a warm-up + cosine schedule and early stopping on validation loss.

    Class imbalance is handled as ``config.balance`` says: class-weighted cross-entropy (``loss``), a
    class-balanced draw of each epoch (``sampler``) or not at all. The validation loss uses the same
    class weights (unless ``balance`` is ``none``), without label smoothing, so "best" means best on every
    class, not on the big one.
    """
    import torch
    from torch.nn import functional as F

    config = config or ProbeConfig()
    seed_everything(config.seed)
    x = np.asarray(train_x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6

    def standardise(a: NDArray[np.float32]) -> torch.Tensor:
        return torch.from_numpy(((np.asarray(a, dtype=np.float64) - mean) / std).astype(np.float32))

    tx, vx = standardise(train_x), standardise(val_x)
    ty, vy = torch.from_numpy(np.asarray(train_y, dtype=np.int64)), torch.from_numpy(np.asarray(val_y, dtype=np.int64))
    weights = torch.from_numpy(class_weights(np.asarray(train_y, dtype=np.int64), num_classes))
    loss_weights = weights if config.balance == "loss" else None
    draw_weights = weights[ty] if config.balance == "sampler" else None
    val_weights = weights if config.balance != "none" else None

    head = torch.nn.Linear(tx.shape[1], num_classes)
    steps_per_epoch = max(1, -(-len(tx) // config.batch_size))
    total = steps_per_epoch * config.epochs
    warmup = int(steps_per_epoch * config.warmup_epochs)
    optimizer, schedule = optimizer_and_schedule(
        head.parameters(), lr=config.lr, weight_decay=config.weight_decay, total_steps=total, warmup_steps=warmup
    )
    updates = 0
    generator = torch.Generator().manual_seed(config.seed)
    history = TrainingHistory()
    stopper = EarlyStopping(config.patience)
    best_state = copy.deepcopy(head.state_dict())

    bar = tqdm(range(config.epochs), desc="linear probe", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        head.train()
        if draw_weights is not None:
            order = torch.multinomial(draw_weights, len(tx), replacement=True, generator=generator)
        else:
            order = torch.randperm(len(tx), generator=generator)
        running, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = F.cross_entropy(head(tx[idx]), ty[idx], weight=loss_weights, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            updates += 1
            schedule.step_update(updates)
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
        head.eval()
        with torch.inference_mode():
            logits = head(vx)
            val_loss = float(F.cross_entropy(logits, vy, weight=val_weights))
            val_acc = float((logits.argmax(dim=1) == vy).float().mean())
        history.train_loss.append(running / max(1, seen))
        history.val_loss.append(val_loss)
        history.val_accuracy.append(val_acc)
        if stopper.update(val_loss):
            history.best_epoch = epoch + 1
            best_state = copy.deepcopy(head.state_dict())
        bar.set_postfix(train=f"{history.train_loss[-1]:.4f}", val=f"{val_loss:.4f}", acc=f"{val_acc:.3f}")
        if stopper.should_stop:
            history.stopped_early = True
            break
    bar.close()

    # Fold the standardisation into the layer: W (x - m) / s + b == (W / s) x + (b - (W / s) m).
    w = best_state["weight"].double().numpy() / std
    b = best_state["bias"].double().numpy() - w @ mean
    return LinearHead(weight=w.astype(np.float32), bias=b.astype(np.float32), history=history)
