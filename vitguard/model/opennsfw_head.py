"""A new classification head on the bundled open_nsfw network: what ``vitguard finetune --model opennsfw``
writes, and how it loads (a directory spec, like any checkpoint).

open_nsfw is an ONNX graph, so its layers cannot be trained here; its pooled 1,024-d features (the input of its
own ``fc_nsfw`` layer) are a good frozen feature extractor, and a linear probe on them needs no network and no
torch. The directory holds :data:`HEAD_CONFIG_NAME` (labels, unsafe classes, the open_nsfw version the head was
trained on) and :data:`HEAD_WEIGHTS_NAME` (``weight`` ``(classes, 1024)`` and ``bias``, safetensors: never
pickled). At inference the graph runs as always and the head replaces ``fc_nsfw``: probabilities are the
softmax of ``features @ weight.T + bias``; the embedding is open_nsfw's, unchanged.

A head trained on another open_nsfw build would see other features: loading refuses it, naming both versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import ModelLoadError
from vitguard.model.checkpoint import weights_digest
from vitguard.model.opennsfw import OpenNSFWClassifier
from vitguard.model.types import ModelInfo

__all__ = [
    "HEAD_CONFIG_NAME",
    "HEAD_WEIGHTS_NAME",
    "HeadCheckpoint",
    "OpenNSFWHeadClassifier",
    "is_head_checkpoint",
    "read_head_checkpoint",
    "save_head_checkpoint",
]

HEAD_CONFIG_NAME = "vitguard_head.json"
HEAD_WEIGHTS_NAME = "head.safetensors"
BASE_NAME = "opennsfw"


@dataclass(frozen=True)
class HeadCheckpoint:
    """A head read from its directory."""

    labels: tuple[str, ...]
    unsafe_labels: tuple[str, ...]
    base_version: str
    """The open_nsfw weights digest the head was trained on."""
    weight: NDArray[np.float32]
    bias: NDArray[np.float32]
    version: str
    """The head file's digest: the loaded model's version."""


def is_head_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a head over open_nsfw (rather than a torch checkpoint)."""
    return (directory / HEAD_CONFIG_NAME).is_file()


def save_head_checkpoint(directory: Path, *, weight: NDArray[np.float32], bias: NDArray[np.float32],
                         labels: tuple[str, ...] | list[str], unsafe_labels: tuple[str, ...] | list[str],
                         base_version: str) -> Path:
    """Write the head; returns the weights file.

    Raises:
        ValueError: shapes and labels disagree, or an unsafe label is not a label.
    """
    from safetensors.numpy import save_file

    if weight.ndim != 2 or weight.shape[0] != len(labels) or bias.shape != (len(labels),):
        raise ValueError(f"a head for {len(labels)} labels needs weight (N, F) and bias (N,), got "
                         f"{weight.shape} and {bias.shape}")
    unknown = [u for u in unsafe_labels if u not in labels]
    if unknown:
        raise ValueError(f"unsafe_labels {unknown} are not among the labels {list(labels)}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HEAD_WEIGHTS_NAME
    save_file({"weight": np.ascontiguousarray(weight, dtype=np.float32),
               "bias": np.ascontiguousarray(bias, dtype=np.float32)}, str(path))
    config = {"base": BASE_NAME, "base_version": base_version, "head": "linear", "labels": list(labels),
              "unsafe_labels": list(unsafe_labels), "features": "pooled (Reshape:0)"}
    (directory / HEAD_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def read_head_checkpoint(directory: Path) -> HeadCheckpoint:
    """Read and check a head directory.

    Raises:
        ModelLoadError: a file is missing or malformed (one line, naming the file).
    """
    config_path, weights_path = directory / HEAD_CONFIG_NAME, directory / HEAD_WEIGHTS_NAME
    try:
        raw: Any = json.loads(config_path.read_text(encoding="utf-8"))
        labels = tuple(str(v) for v in raw["labels"])
        unsafe = tuple(str(v) for v in raw.get("unsafe_labels", []))
        base, base_version = raw["base"], str(raw["base_version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{config_path}: expected a vitguard head config ({exc})") from exc
    if base != BASE_NAME:
        raise ModelLoadError(f"{config_path}: a head over {base!r}; only {BASE_NAME!r} heads exist")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(weights_path))
        weight, bias = tensors["weight"].astype(np.float32), tensors["bias"].astype(np.float32)
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        raise ModelLoadError(f"{weights_path}: expected the head's weight and bias (safetensors): {exc}") from exc
    if weight.ndim != 2 or weight.shape[0] != len(labels) or bias.shape != (len(labels),) or len(set(labels)) != len(
            labels) or not set(unsafe) <= set(labels):
        raise ModelLoadError(f"{directory}: the head's shapes {weight.shape}, {bias.shape} or labels {list(labels)} "
                             "do not agree")
    return HeadCheckpoint(labels, unsafe, base_version, weight, bias, weights_digest(weights_path))


class OpenNSFWHeadClassifier(OpenNSFWClassifier):
    """open_nsfw with a trained head in place of ``fc_nsfw`` (see the module docstring)."""

    outputs_probabilities = False

    def __init__(self, directory: Path, **options: Any) -> None:
        head = read_head_checkpoint(directory)
        super().__init__(**options)
        if head.base_version != self.info.version:
            raise ModelLoadError(
                f"{directory}: the head was trained on open_nsfw {head.base_version}, this install has "
                f"{self.info.version}; train it again (vitguard finetune --model opennsfw)"
            )
        if head.weight.shape[1] != self.info.embedding_dim:
            raise ModelLoadError(f"{directory}: the head takes {head.weight.shape[1]} features, open_nsfw gives "
                                 f"{self.info.embedding_dim}")
        self._weight, self._bias = head.weight, head.bias
        self.info = ModelInfo(name=f"dir:{directory.name}", version=head.version, labels=head.labels,
                              embedding_dim=self.info.embedding_dim, input_size=self.info.input_size, backend="onnx",
                              unsafe_labels=head.unsafe_labels)

    def _forward(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        features = self.raw_features(batch)
        return features @ self._weight.T + self._bias, features
