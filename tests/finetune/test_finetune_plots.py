from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vitguard.finetune.plots import plot_confusion_matrix, plot_loss_curves, plot_roc_pr, plot_score_histograms


def _is_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # the whole file decodes, not just the header
        return image.size


def test_every_plot_is_a_valid_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    paths = [
        plot_loss_curves(
            {"train_loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.7, 0.8], "val_accuracy": [0.5, 0.8, 0.7]},
            tmp_path / "loss.png",
        ),
        plot_roc_pr({"a": (y == 0, probs[:, 0]), "b": (y == 0, rng.random(60))}, tmp_path / "roc_pr.png"),
        plot_confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 0, 4]], ["NSFW", "SFW", "art"], tmp_path / "cm.png"),
        plot_score_histograms(y, probs, ["NSFW", "SFW", "art"], tmp_path / "hist.png"),
    ]
    for path in paths:
        width, height = _is_png(path)
        assert width > 200 and height > 200
