"""Transfer learning: adapt the backbone to a labelled image folder and measure any model on one.

``vitguard finetune`` trains a linear probe on frozen features (the default) or fine-tunes the last blocks,
and writes a checkpoint directory that every part of vitguard loads with ``--model DIR``.
``vitguard evaluate`` gives the same metrics and plots for any model spec.
"""

from __future__ import annotations

from vitguard.finetune.data import ImageFolder, LabelledImage, SkippedImage, scan_image_folder, stratified_split
from vitguard.finetune.errors import DatasetError, NoTrainableHeadError
from vitguard.finetune.probe import LinearHead, ProbeConfig, train_linear_head

__all__ = [
    "DatasetError",
    "ImageFolder",
    "LabelledImage",
    "LinearHead",
    "NoTrainableHeadError",
    "ProbeConfig",
    "SkippedImage",
    "scan_image_folder",
    "stratified_split",
    "train_linear_head",
]
