"""What the linear probe and full fine-tuning share: seeding, the learning-rate schedule, early stopping
and the per-epoch history."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["Balance", "EarlyStopping", "TrainingHistory", "cosine_with_warmup", "seed_everything"]

Balance = Literal["loss", "sampler", "none"]
"""How class imbalance is handled: class-weighted loss, a class-balanced sampler, or not at all."""


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that the same data and seed train the same weights on CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed)  # timm's augmentation draws from the global generators
    torch.manual_seed(seed)


def cosine_with_warmup(step: int, *, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up from ~0 to 1, then a cosine decay to ``min_factor``.

    Warm-up keeps the first updates from wrecking pretrained features while the new head is still random.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
