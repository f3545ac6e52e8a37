"""Torch backend for timm networks: one pass gives logits and the pre-logits embedding.

``forward_features -> forward_head(pre_logits=True) -> get_classifier()`` is timm's own decomposition of
``model(x)``, so the embedding is exactly the vector the classifier head sees.

On CPU the pass runs in float32. On CUDA (:class:`TorchOptions`): autocast (fp16 or bf16), channels-last
memory layout, host batches staged in one reused pinned buffer and copied with ``non_blocking=True``,
optionally ``torch.compile``; a preferred batch size for the device; and :meth:`TorchClassifier.predict_encoded`,
which decodes JPEGs with nvJPEG and preprocesses them on the GPU (:mod:`vitguard.model.gpu_decode`), so a
batch of uploads never goes through host-side float tensors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import ImageDecodeError
from vitguard.model.base import DEFAULT_BATCH_SIZE, BaseClassifier, l2_normalize, softmax
from vitguard.model.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DataConfig, Preprocessor
from vitguard.model.types import ImageInput, ModelInfo, Prediction

if TYPE_CHECKING:
    import torch

    from vitguard.model.gpu_decode import TensorPreprocessor
    from vitguard.settings import ModelSettings

__all__ = ["TorchClassifier", "TorchOptions", "embedding_dim", "forward_two_outputs", "pick_device"]

DEFAULT_CUDA_BATCH_SIZE = 256
"""Same default as ``ModelSettings.cuda_batch_size``."""


@dataclass(frozen=True)
class TorchOptions:
    """How the torch backend runs on CUDA (all ignored on CPU); the ``ModelSettings`` fields of the same names."""

    amp: Literal["fp16", "bf16", "off"] = "fp16"
    """Autocast dtype; ``off`` runs float32 (TF32 matmuls allowed)."""
    torch_compile: bool = False
    """Wrap the forward pass in ``torch.compile``."""
    device_decode: bool = True
    """``predict_encoded`` decodes JPEGs on the GPU."""
    cuda_batch_size: int = DEFAULT_CUDA_BATCH_SIZE
    """Preferred images per forward pass on CUDA."""

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> TorchOptions:
        return cls(
            amp=getattr(settings, "amp", cls.amp),
            torch_compile=getattr(settings, "torch_compile", cls.torch_compile),
            device_decode=getattr(settings, "device_decode", cls.device_decode),
            cuda_batch_size=getattr(settings, "cuda_batch_size", cls.cuda_batch_size),
        )

_log = logging.getLogger(__name__)


def pick_device(requested: str) -> str:
    """``auto`` means CUDA when a device is present, else CPU; an explicit ``cuda`` without one falls back loudly."""
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        _log.warning("VITGUARD_MODEL_DEVICE=cuda but no CUDA device is present; running on CPU")
    return "cpu"


def embedding_dim(module: torch.nn.Module) -> int:
    """Width of ``forward_head(pre_logits=True)``: ``num_features``, or ``head_hidden_size`` for heads that add one."""
    net: Any = module
    hidden = getattr(net, "head_hidden_size", None)
    return int(hidden if hidden is not None else net.num_features)


def forward_two_outputs(module: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and pre-logits features of one pass through a timm network."""
    net: Any = module  # timm's model API is not typed
    features = net.forward_features(x)
    pre_logits: torch.Tensor = net.forward_head(features, pre_logits=True)
    logits: torch.Tensor = net.get_classifier()(pre_logits)
    return logits, pre_logits


class TorchClassifier(BaseClassifier):
    """A timm network in torch (eager, or compiled with ``options.torch_compile``).

    ``module`` and ``data_config`` are public so fine-tuning can train the very network the factory built
    and evaluate it through this class without saving it first.

    Args:
        module: the timm network (moved to ``device``, put in eval mode).
        info: identity and shapes.
        data_config: the checkpoint's preprocessing.
        device: ``cpu`` or ``cuda[:N]``.
        max_pixels, min_side: image limits of both preprocessing paths.
        options: CUDA settings (autocast dtype, compile, device decode, batch size).
        device_decode: whether :meth:`predict_encoded` decodes through torchvision on ``device``; None (the
            default) means on CUDA when ``options.device_decode``. True on CPU runs torchvision's CPU decoder
            through the same code (what the parity tests do).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        info: ModelInfo,
        data_config: DataConfig,
        *,
        device: str = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        options: TorchOptions | None = None,
        device_decode: bool | None = None,
    ) -> None:
        import torch

        super().__init__(info, Preprocessor(data_config, max_pixels=max_pixels, min_side=min_side))
        self.data_config = data_config
        self.options = options or TorchOptions()
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        module = module.eval().to(self.device)
        if self._cuda:
            module = module.to(memory_format=torch.channels_last)
            if self.options.amp == "off":
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
        self.module = module
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.options.amp)
        self._run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self._eager
        if self.options.torch_compile:
            self._run = torch.compile(self._eager)
        self._staging: torch.Tensor | None = None
        self._lock = threading.Lock()  # the pinned staging buffer is shared by calls on CUDA
        self.tensor_preprocessor: TensorPreprocessor | None = None
        """Decodes and preprocesses on ``device`` for :meth:`predict_encoded`; None: host preprocessing."""
        if device_decode is None:
            device_decode = self._cuda and self.options.device_decode
        if device_decode:
            from vitguard.model.gpu_decode import TensorPreprocessor

            if TensorPreprocessor.supports(data_config):
                self.tensor_preprocessor = TensorPreprocessor(
                    data_config, device=self.device, max_pixels=max_pixels, min_side=min_side)
            else:
                _log.warning("%s: interpolation %r has no tensor resize; decoding on the CPU",
                             info.name, data_config.interpolation)

    @property
    def preferred_batch_size(self) -> int:
        """Images per forward pass that suit the device: ``options.cuda_batch_size`` on CUDA, else 16."""
        return self.options.cuda_batch_size if self._cuda else DEFAULT_BATCH_SIZE

    def classify(self, images: Sequence[ImageInput], batch_size: int | None = None) -> list[Prediction]:
        """As :meth:`BaseClassifier.classify`, in batches of :attr:`preferred_batch_size` by default."""
        return super().classify(images, batch_size or self.preferred_batch_size)

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """One pass per batch size on zeros: CUDA kernels chosen, ``torch.compile`` done, before traffic."""
        for n in batch_sizes:
            self.predict(np.zeros((n, *self.info.input_size), dtype=np.float32))

    def _eager(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if self._cuda:
            x = x.contiguous(memory_format=torch.channels_last)
            if self._autocast_dtype is not None:
                with torch.autocast(device_type="cuda", dtype=self._autocast_dtype):
                    return forward_two_outputs(self.module, x)
        return forward_two_outputs(self.module, x)

    def _to_device(self, batch: NDArray[np.float32]) -> torch.Tensor:
        """Host batch -> device: on CUDA through a reused pinned buffer, copied without blocking the host."""
        import torch

        x = torch.from_numpy(batch)
        if not self._cuda:
            return x
        n = x.shape[0]
        if self._staging is None or self._staging.shape[0] < n:
            rows = max(n, self.preferred_batch_size)
            self._staging = torch.empty((rows, *x.shape[1:]), dtype=x.dtype, pin_memory=True)
        staging = self._staging[:n]
        staging.copy_(x)
        # the copy is ordered before the forward pass on the same stream; _outputs() synchronises, so the
        # buffer is free again when the next call (under the lock) overwrites it
        return staging.to(self.device, non_blocking=True)

    def _outputs(self, x: torch.Tensor) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        import torch

        with torch.inference_mode():
            logits, features = self._run(x)
            return logits.float().cpu().numpy(), features.float().cpu().numpy()

    def _forward(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        if not self._cuda:
            return self._outputs(self._to_device(batch))
        with self._lock:
            return self._outputs(self._to_device(batch))

    def predict_encoded(self, datas: Sequence[bytes]) -> list[Prediction | ImageDecodeError]:
        """Decode, preprocess and classify encoded images in one batch: on the device when
        :attr:`tensor_preprocessor` is set (JPEGs through nvJPEG on CUDA), else with :meth:`prepare` on
        the host. A refused image gets its :class:`ImageDecodeError` in its place; the others one pass."""
        import torch

        refused: dict[int, ImageDecodeError] = {}
        if self.tensor_preprocessor is None:
            rows = []
            for i, data in enumerate(datas):
                try:
                    rows.append(self.prepare(data))
                except ImageDecodeError as exc:
                    refused[i] = exc
            predictions = self.predict(np.stack(rows)) if rows else []
        else:
            with torch.inference_mode():
                batch, refused = self.tensor_preprocessor.batch(datas)
            if batch.shape[0]:
                with self._lock:
                    outputs, features = self._outputs(batch)
                predictions = _predictions(self.info, softmax(outputs), l2_normalize(features))
            else:
                predictions = []
        done = iter(predictions)
        return [refused[i] if i in refused else next(done) for i in range(len(datas))]

    def timm_data_config(self) -> dict[str, Any]:
        """The data config as the dict timm's ``create_transform(**cfg)`` takes (for training transforms)."""
        return self.data_config.as_timm()


def _predictions(info: ModelInfo, probs: NDArray[np.float32], embeddings: NDArray[np.float32]) -> list[Prediction]:
    """The same labelling as :meth:`BaseClassifier.predict`."""
    return [
        Prediction(scores={label: float(p) for label, p in zip(info.labels, row, strict=True)}, embedding=embeddings[i])
        for i, row in enumerate(probs)
    ]
