from __future__ import annotations

import numpy as np
import pytest

from vitguard.finetune.probe import ProbeConfig, train_linear_head
from vitguard.finetune.training import EarlyStopping, optimizer_and_schedule


def _blobs(n_per: tuple[int, ...], dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes on a large, shifted scale: what raw pre-logits features look like to a probe."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(len(n_per), dim)) * 3
    xs = [centres[c] + rng.normal(0, 1.5, size=(n, dim)) for c, n in enumerate(n_per)]
    x = np.concatenate(xs).astype(np.float32) * 20 + 100  # far from zero mean / unit scale
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per)]).astype(np.int64)
    return x, y


def test_probe_separates_classes_and_the_folded_head_works_on_raw_features() -> None:
    x, y = _blobs((60, 30, 20))
    vx, vy = _blobs((20, 10, 8), seed=0)
    head = train_linear_head(x, y, vx, vy, 3, ProbeConfig(epochs=40, seed=3), progress=False)
    assert head.weight.shape == (3, 32) and head.bias.shape == (3,)
    probs = head.probabilities(vx)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == vy).mean() >= 0.95
    # the folded layer is exactly a torch Linear on the raw features
    import torch

    layer = torch.nn.Linear(32, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(head.weight))
        layer.bias.copy_(torch.from_numpy(head.bias))
        np.testing.assert_allclose(layer(torch.from_numpy(vx)).softmax(-1).numpy(), probs, atol=1e-6)
    assert head.history.val_accuracy[head.history.best_epoch - 1] >= 0.95


def test_probe_is_deterministic_with_a_seed() -> None:
    x, y = _blobs((30, 30))
    cfg = ProbeConfig(epochs=5, seed=11)
    a = train_linear_head(x, y, x[:10], y[:10], 2, cfg, progress=False)
    b = train_linear_head(x, y, x[:10], y[:10], 2, cfg, progress=False)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert a.history.train_loss == b.history.train_loss
    c = train_linear_head(x, y, x[:10], y[:10], 2, ProbeConfig(epochs=5, seed=12), progress=False)
    assert not np.array_equal(a.weight, c.weight)


@pytest.mark.parametrize("balance", ["loss", "sampler"])
def test_imbalance_handling_recovers_the_minority_class(balance: str) -> None:
    # heavy overlap + 20:1 imbalance: unbalanced training would favour the majority class
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (400, 4)), rng.normal(0.8, 1, (20, 4))]).astype(np.float32)
    y = np.r_[np.zeros(400), np.ones(20)].astype(np.int64)
    heads = {
        b: train_linear_head(
            x, y, x, y, 2, ProbeConfig(epochs=40, batch_size=32, patience=0, balance=b), progress=False
        )  # type: ignore[arg-type]
        for b in ("none", balance)
    }
    recall = {b: float((h.probabilities(x).argmax(1)[y == 1] == 1).mean()) for b, h in heads.items()}
    assert recall[balance] > recall["none"] + 0.3


def test_early_stopping_keeps_the_best_epoch() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(1.0) and stopper.update(0.5)
    assert not stopper.update(0.6) and not stopper.should_stop
    assert not stopper.update(0.7) and stopper.should_stop
    assert stopper.best == 0.5


def test_timm_schedule_warms_up_then_decays() -> None:
    import torch

    optimizer, schedule = optimizer_and_schedule([torch.nn.Parameter(torch.zeros(2))], lr=1.0, weight_decay=0.0,
                                                 total_steps=10, warmup_steps=2)
    lrs = []
    for step in range(11):
        schedule.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.5) and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[10] == pytest.approx(0.0)
    assert type(optimizer).__name__ == "AdamW"
