"""What every backend shares: input handling, batching and turning raw outputs into predictions.

A backend only implements :meth:`BaseClassifier._forward` (one pass over an ``(N, C, H, W)`` batch that
returns logits or probabilities plus the pre-logits features); softmax, L2 normalisation and labelling are
done here in numpy, so every runtime (torch, TorchScript, ONNX) post-processes identically.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.errors import ImageDecodeError
from vitguard.model.types import ImageInput, ModelInfo, Prediction

__all__ = ["DEFAULT_BATCH_SIZE", "BaseClassifier", "ImagePreprocessor", "l2_normalize", "softmax"]

DEFAULT_BATCH_SIZE = 16
"""Images per forward pass in :meth:`BaseClassifier.classify`."""


class ImagePreprocessor(Protocol):
    """Bytes or a decoded image to one ``(C, H, W)`` float32 array."""

    def __call__(self, data: bytes) -> NDArray[np.float32]: ...

    def from_image(self, image: Image.Image) -> NDArray[np.float32]: ...


def softmax(logits: NDArray[np.floating]) -> NDArray[np.float32]:
    """Row-wise softmax in float32, stable for large logits."""
    x = np.asarray(logits, dtype=np.float32)
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    out: NDArray[np.float32] = x.astype(np.float32, copy=False)
    return out


def l2_normalize(features: NDArray[np.floating]) -> NDArray[np.float32]:
    """Row-wise unit length in float32, so inner product is cosine similarity downstream."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: NDArray[np.float32] = (x / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
    return out


class BaseClassifier(abc.ABC):
    """Implements the :class:`~vitguard.model.types.Classifier` protocol around one ``_forward``."""

    outputs_probabilities: bool = False
    """True when ``_forward`` already returns probabilities (a softmax inside the graph)."""

    def __init__(self, info: ModelInfo, preprocessor: ImagePreprocessor) -> None:
        self.info = info
        self.preprocessor = preprocessor

    def prepare(self, data: bytes) -> NDArray[np.float32]:
        """Decode and preprocess; thread-safe. Raises :class:`~vitguard.errors.ImageDecodeError`."""
        return self.preprocessor(data)

    def prepare_image(self, image: Image.Image) -> NDArray[np.float32]:
        """Preprocess a decoded image the same way as :meth:`prepare`."""
        return self.preprocessor.from_image(image)

    def predict(self, batch: NDArray[np.float32]) -> list[Prediction]:
        """One forward pass over ``(N, *input_size)``: probabilities and L2-normalised embeddings."""
        array = np.ascontiguousarray(batch, dtype=np.float32)
        if array.ndim != 4 or tuple(array.shape[1:]) != self.info.input_size:
            shape = ", ".join(map(str, self.info.input_size))
            raise ValueError(f"expected a batch of shape (N, {shape}), got {array.shape}")
        if array.shape[0] == 0:
            return []
        outputs, features = self._forward(array)
        probs = np.asarray(outputs, dtype=np.float32) if self.outputs_probabilities else softmax(outputs)
        embeddings = l2_normalize(features)
        labels = self.info.labels
        return [
            Prediction(
                scores={label: float(p) for label, p in zip(labels, row, strict=True)},
                embedding=embeddings[i],
            )
            for i, row in enumerate(probs)
        ]

    def classify(self, images: Sequence[ImageInput], batch_size: int = DEFAULT_BATCH_SIZE) -> list[Prediction]:
        """Prepare and predict in batches of ``batch_size``; a bad image raises for the whole call."""
        prepared = [self._prepare_input(image) for image in images]
        results: list[Prediction] = []
        for start in range(0, len(prepared), batch_size):
            results.extend(self.predict(np.stack(prepared[start : start + batch_size])))
        return results

    def classify_one(self, image: ImageInput) -> Prediction:
        """Classify one image (a batch of one)."""
        return self.predict(self._prepare_input(image)[np.newaxis])[0]

    def _prepare_input(self, image: ImageInput) -> NDArray[np.float32]:
        if isinstance(image, Image.Image):
            return self.prepare_image(image)
        if isinstance(image, Path):
            try:
                data = image.read_bytes()
            except OSError as exc:
                raise ImageDecodeError("not_an_image", f"cannot read {image}: {exc.strerror or exc}") from exc
            return self.prepare(data)
        return self.prepare(bytes(image))

    @abc.abstractmethod
    def _forward(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        """Run the network: ``(logits or probabilities, pre-logits features)``, each with N rows."""

    def __repr__(self) -> str:
        info = self.info
        return f"{type(self).__name__}({info.name}@{info.version}, backend={info.backend}, dim={info.embedding_dim})"
