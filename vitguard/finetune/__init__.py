"""Transfer learning: adapt the backbone to a labelled image folder and measure any model on one.

``vitguard finetune`` trains a linear probe on frozen features (the default) or fine-tunes the head and the
last blocks (:func:`run_finetune`), and writes a checkpoint directory that every part of vitguard loads
with ``--model DIR``. ``vitguard evaluate`` (:func:`run_evaluate`) gives the same metrics and plots for
any model spec, alone or against a second one.

Heavy libraries (torch, timm, matplotlib) are imported inside the functions that need them.
"""

from __future__ import annotations

from vitguard.finetune.data import ImageFolder, LabelledImage, SkippedImage, scan_image_folder, stratified_split
from vitguard.finetune.errors import DatasetError, NoTrainableHeadError
from vitguard.finetune.evaluate import EvaluationResult, run_evaluate
from vitguard.finetune.full import FullConfig
from vitguard.finetune.probe import LinearHead, ProbeConfig, train_linear_head
from vitguard.finetune.run import DataSplit, FinetuneResult, Method, load_split, run_finetune

__all__ = [
    "DataSplit",
    "DatasetError",
    "EvaluationResult",
    "FinetuneResult",
    "FullConfig",
    "ImageFolder",
    "LabelledImage",
    "LinearHead",
    "Method",
    "NoTrainableHeadError",
    "ProbeConfig",
    "SkippedImage",
    "load_split",
    "run_evaluate",
    "run_finetune",
    "scan_image_folder",
    "stratified_split",
    "train_linear_head",
]
