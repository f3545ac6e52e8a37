"""The model: decoded images in, class probabilities and an embedding out, from one forward pass.

Everything else in vitguard asks this package for a classifier (:func:`load_classifier`); only this
package calls ``timm.create_model``. See :mod:`vitguard.model.factory` for the model specs.
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
from vitguard.model.factory import load_classifier, load_torch_classifier, load_torch_model, parse_spec
from vitguard.model.preprocess import DataConfig, Preprocessor, decode_image
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
    "create_timm_model",
    "decode_image",
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
