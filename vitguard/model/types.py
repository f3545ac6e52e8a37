"""What every classifier backend gives back, whatever model or runtime is behind it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["Classifier", "ImageInput", "ModelInfo", "Prediction"]

ImageInput = Image.Image | bytes | Path
"""What ``classify`` accepts: a decoded image, encoded bytes, or a path to an image file."""


@dataclass(frozen=True)
class ModelInfo:
    """Identity and shape of a loaded model; verdicts and vector collections are keyed by it."""

    name: str
    """Spec-like name, e.g. ``hf-hub:Marqo/nsfw-image-detection-384``, ``opennsfw``, ``timm:vit_tiny_patch16_384``."""
    version: str
    """Revision, or a short content hash of the weights."""
    labels: tuple[str, ...]
    """Class names in output order."""
    embedding_dim: int
    """Length of the embedding (``model.num_features`` for timm models)."""
    input_size: tuple[int, int, int]
    """(channels, height, width) of one preprocessed image."""
    backend: str = "torch"
    """Runtime: ``torch``, ``torchscript`` or ``onnx``."""
    untrained: bool = False
    """True for random weights (benchmarks and plumbing only); every verdict says so."""
    unsafe_labels: tuple[str, ...] = ()
    """The classes its checkpoint says are unsafe (a fine-tuned head); empty when it says nothing."""

    @property
    def collection_suffix(self) -> str:
        """A Milvus-safe name part that differs between models (name, version, dimension)."""
        raw = f"{self.name}_{self.version}_{self.embedding_dim}"
        return re.sub(r"[^A-Za-z0-9_]", "_", raw)[:200]


@dataclass(frozen=True)
class Prediction:
    """Class probabilities and the embedding from one forward pass over one image."""

    scores: dict[str, float]
    """Probability per class label (softmax, sums to 1)."""
    embedding: NDArray[np.float32] = field(repr=False)
    """L2-normalised embedding, shape ``(embedding_dim,)``."""

    @property
    def top_class(self) -> str:
        return max(self.scores, key=self.scores.__getitem__)


@runtime_checkable
class Classifier(Protocol):
    """A loaded model. The pipeline prepares images in a thread pool and predicts whole batches."""

    info: ModelInfo

    def prepare(self, data: bytes) -> NDArray[np.float32]:
        """Decode encoded image bytes and preprocess them to one ``input_size`` float32 array.

        Thread-safe. Raises :class:`~vitguard.errors.ImageDecodeError` with a reason code.
        """
        ...

    def prepare_image(self, image: Image.Image) -> NDArray[np.float32]:
        """Preprocess an already decoded image the same way as :meth:`prepare`."""
        ...

    def predict(self, batch: NDArray[np.float32]) -> list[Prediction]:
        """One forward pass over a stacked batch ``(N, *input_size)``: probabilities and embeddings."""
        ...

    def classify(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Prepare and predict, in batches: the convenience API."""
        ...

    def classify_one(self, image: ImageInput) -> Prediction:
        """Classify a single image."""
        ...
