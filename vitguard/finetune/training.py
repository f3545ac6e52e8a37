"""What the linear probe and full fine-tuning share: seeding, the optimiser and learning-rate schedule
(timm's factories), early stopping and the per-epoch history."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["Balance", "EarlyStopping", "TrainingHistory", "optimizer_and_schedule", "seed_everything"]

Balance = Literal["loss", "sampler", "none"]
"""How class imbalance is handled: class-weighted loss, a class-balanced sampler, or not at all."""


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that the same data and seed train the same weights on CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed)  # timm's augmentation draws from the global generators
    torch.manual_seed(seed)


def optimizer_and_schedule(
    params: Any, *, lr: float, weight_decay: float, total_steps: int, warmup_steps: int
) -> tuple[Any, Any]:
    """AdamW and a warm-up + cosine learning-rate schedule, from timm's own factories.

    ``params`` is a module's parameters or a list of parameter groups (each may carry its own ``lr`` and
    ``weight_decay``). The schedule is per optimiser step: call ``schedule.step_update(step)`` after each one.
    Warm-up (linear from 0) keeps the first updates from wrecking pretrained features while the new head is
    still random; the cosine then decays to 0 over the remaining steps.
    """
    from timm.optim import create_optimizer_v2  # type: ignore[attr-defined]  # re-exported, no __all__
    from timm.scheduler.cosine_lr import CosineLRScheduler

    optimizer = create_optimizer_v2(params, opt="adamw", lr=lr, weight_decay=weight_decay)
    schedule = CosineLRScheduler(
        optimizer, t_initial=max(1, total_steps - warmup_steps), warmup_t=warmup_steps, warmup_lr_init=0.0,
        warmup_prefix=True, lr_min=0.0, t_in_epochs=False,
    )
    return optimizer, schedule


@dataclass
class TrainingHistory:
    """Per-epoch losses and accuracy, and which epoch's weights were kept."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    """1-based epoch with the lowest validation loss: its weights are the ones written."""
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.train_loss),
            "stopped_early": self.stopped_early,
        }


class EarlyStopping:
    """Stops when the validation loss has not improved by ``min_delta`` for ``patience`` epochs.

    The caller keeps a copy of the weights whenever :meth:`update` reports an improvement and restores
    it at the end, so the written model is the best one seen, not the last one.
    """

    def __init__(self, patience: int, min_delta: float = 1e-4) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.bad_epochs = 0

    def update(self, val_loss: float) -> bool:
        """Record one epoch; True when it is the best so far."""
        if val_loss < self.best - self.min_delta:
            self.best = val_loss
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience
