"""Torch eager backend for timm networks: one pass gives logits and the pre-logits embedding.

``forward_features -> forward_head(pre_logits=True) -> get_classifier()`` is timm's own decomposition of
``model(x)``, so the embedding is exactly the vector the classifier head sees. On CUDA the pass runs under
fp16 autocast with channels-last memory layout; on CPU it runs in float32.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from vitguard.model.base import BaseClassifier
from vitguard.model.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DataConfig, Preprocessor
from vitguard.model.types import ModelInfo

if TYPE_CHECKING:
    import torch

__all__ = ["TorchClassifier", "embedding_dim", "forward_two_outputs", "pick_device"]

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
    """A timm network in torch eager mode.

    ``module`` and ``data_config`` are public so fine-tuning can train the very network the factory built
    and evaluate it through this class without saving it first.
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
    ) -> None:
        import torch

        super().__init__(info, Preprocessor(data_config, max_pixels=max_pixels, min_side=min_side))
        self.data_config = data_config
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        module = module.eval().to(self.device)
        if self._cuda:
            module = module.to(memory_format=torch.channels_last)
        self.module = module

    def _forward(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        import torch

        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.inference_mode():
            if self._cuda:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    logits, features = forward_two_outputs(self.module, x)
            else:
                logits, features = forward_two_outputs(self.module, x)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()

    def timm_data_config(self) -> dict[str, Any]:
        """The data config as the dict timm's ``create_transform(**cfg)`` takes (for training transforms)."""
        return self.data_config.as_timm()
