"""Tiny checkpoints in the exact Marqo/timm hub layout, for tests anywhere in vitguard.

A real ``vit_tiny_patch16_384`` (192-d embedding, labels NSFW/SFW, mean/std 0.5, bicubic, crop 1.0) with
two blocks and 64 px input: the same code paths and file format as the published checkpoint, a few
milliseconds per image on CPU. Weights are random but seeded, and the head is scaled up so different images
get clearly different probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vitguard.model.checkpoint import create_timm_model, save_checkpoint

__all__ = ["TINY_MODEL_ARGS", "make_tiny_checkpoint", "tiny_pretrained_cfg"]

TINY_MODEL_ARGS: dict[str, Any] = {"depth": 2, "img_size": 64}
"""Constructor arguments that make vit_tiny_patch16_384 small: 2 blocks, 64x64 input (16 patches)."""


def tiny_pretrained_cfg(img_size: int, num_classes: int) -> dict[str, Any]:
    """A ``pretrained_cfg`` with the Marqo checkpoint's preprocessing values at ``img_size``."""
    return {
        "tag": "vitguard_tiny_test",
        "custom_load": False,
        "input_size": [3, img_size, img_size],
        "fixed_input_size": True,
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "num_classes": num_classes,
        "pool_size": None,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


def make_tiny_checkpoint(
    out_dir: str | Path,
    *,
    labels: Sequence[str] = ("NSFW", "SFW"),
    architecture: str = "vit_tiny_patch16_384",
    model_args: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a small random checkpoint (``config.json`` + ``model.safetensors``) and return its directory.

    Load it with ``load_classifier(str(path))``. The same ``seed`` gives the same weights.
    """
    import torch

    args = dict(TINY_MODEL_ARGS if model_args is None else model_args)
    img_size = args.get("img_size", 384)
    side = int(img_size if isinstance(img_size, int) else img_size[0])
    cfg = tiny_pretrained_cfg(side, len(labels))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = create_timm_model(architecture, num_classes=len(labels), model_args=args, pretrained_cfg=cfg)
        head: torch.nn.Module = module.get_classifier()  # type: ignore[operator]
        with torch.no_grad():
            for param in head.parameters():
                param.normal_(0.0, 0.5)
    return save_checkpoint(
        module, out_dir, architecture=architecture, label_names=list(labels), pretrained_cfg=cfg, model_args=args
    )
