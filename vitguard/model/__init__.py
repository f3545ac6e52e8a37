"""The model: decoded images in, class probabilities and an embedding out, from one forward pass.

Everything else in vitguard asks this package for a classifier; only this package calls
``timm.create_model``. Importing it does not import torch.

* :func:`load_classifier` (spec or ``ModelSettings``) -> :class:`Classifier`: the one factory; the specs
  are listed in :mod:`vitguard.model.factory`.
* :func:`load_torch_classifier` / :func:`load_torch_model`: the timm module behind a hub, directory or
  ``timm:`` spec, for fine-tuning and export; :func:`create_timm_model` for a fresh one;
  :func:`save_checkpoint` writes the hub layout back.
* :func:`export_model`: ONNX / TorchScript exports that ``onnx:PATH`` / ``torchscript:PATH`` load.
* :class:`Preprocessor`, :func:`decode_image`: timm's eval transform and safe decoding, with reason codes.
* :mod:`vitguard.testing.models`: ``make_tiny_checkpoint`` for tests anywhere.
"""

from __future__ import annotations

from vitguard.model.base import BaseClassifier, l2_normalize, softmax
from vitguard.model.checkpoint import (
    CheckpointConfig,
    create_timm_model,
    load_checkpoint_module,
    read_checkpoint_config,
    save_checkpoint,
)
from vitguard.model.exported import export_model
from vitguard.model.factory import load_classifier, load_torch_classifier, load_torch_model, parse_spec
from vitguard.model.preprocess import DataConfig, Preprocessor, decode_image
from vitguard.model.torch_backend import TorchClassifier
from vitguard.model.types import Classifier, ImageInput, ModelInfo, Prediction

__all__ = [
    "BaseClassifier",
    "CheckpointConfig",
    "Classifier",
    "DataConfig",
    "ImageInput",
    "ModelInfo",
    "Prediction",
    "Preprocessor",
    "TorchClassifier",
    "create_timm_model",
    "decode_image",
    "export_model",
    "l2_normalize",
    "load_checkpoint_module",
    "load_classifier",
    "load_torch_classifier",
    "load_torch_model",
    "parse_spec",
    "read_checkpoint_config",
    "save_checkpoint",
    "softmax",
]
