"""The model fine-tuning starts from: a torch classifier plus what a new checkpoint must record about it.

A fine-tuned checkpoint keeps the base network's architecture, constructor arguments and preprocessing
(``pretrained_cfg``) and replaces only the classes and weights, so it loads through the same factory as
the base model and preprocesses images the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitguard.errors import ModelLoadError
from vitguard.finetune.errors import NoTrainableHeadError
from vitguard.settings import ModelSettings

if TYPE_CHECKING:
    from vitguard.model.torch_backend import TorchClassifier

__all__ = ["BaseModel", "load_base_model"]

_NOT_TRAINABLE = {
    "onnx": "an exported ONNX graph",
    "torchscript": "an exported TorchScript program",
    "opennsfw": "the bundled open_nsfw ONNX model",
}


@dataclass
class BaseModel:
    """A loaded, trainable base model and the checkpoint facts a fine-tuned copy inherits."""

    spec: str
    classifier: TorchClassifier
    """Its ``module`` is trained in place; its ``prepare`` is the eval preprocessing used everywhere."""
    architecture: str
    pretrained_cfg: dict[str, Any]
    model_args: dict[str, Any] = field(default_factory=dict)


def load_base_model(spec: str, settings: ModelSettings | None = None) -> BaseModel:
    """Load a hub, directory or ``timm:`` spec as a trainable torch model.

    ``auto`` means the default hub checkpoint: there is no offline fallback here, because the fallback
    (open_nsfw) is an ONNX graph with no trainable head.

    Raises:
        NoTrainableHeadError: the spec names an exported or ONNX-only model.
        ModelLoadError: the checkpoint cannot be loaded (missing, corrupt, not downloadable offline).
    """
    from vitguard.model import load_torch_classifier, parse_spec, read_checkpoint_config

    cfg = settings if settings is not None else ModelSettings.model_construct()
    parsed = parse_spec(spec)
    if parsed.kind == "auto":
        parsed = parse_spec(cfg.default_hub_id)
    if parsed.kind in _NOT_TRAINABLE:
        raise NoTrainableHeadError(
            f"model spec {spec!r} is {_NOT_TRAINABLE[parsed.kind]} and has no trainable head; fine-tune a torch "
            "checkpoint instead: hf-hub:ORG/NAME, a checkpoint directory or timm:ARCH"
        )
    try:
        classifier = load_torch_classifier(parsed, settings=cfg)
    except ModelLoadError as exc:
        raise ModelLoadError(f"cannot load the base model for fine-tuning: {exc}") from exc
    module: Any = classifier.module
    if parsed.kind == "dir":
        config = read_checkpoint_config(Path(parsed.target).expanduser().resolve())
        return BaseModel(spec, classifier, config.architecture, dict(config.pretrained_cfg), dict(config.model_args))
    if parsed.kind == "hf-hub":
        config = read_checkpoint_config(_hub_config_dir(parsed.target, cfg.revision))
        return BaseModel(spec, classifier, config.architecture, dict(config.pretrained_cfg), dict(config.model_args))
    # timm:ARCH: the network was built without constructor arguments; its pretrained_cfg is timm's default
    pretrained = dict(module.pretrained_cfg)
    pretrained["input_size"] = list(classifier.info.input_size)
    return BaseModel(spec, classifier, parsed.target, pretrained, {})


def _hub_config_dir(target: str, pinned: str | None) -> Path:
    """The local snapshot folder holding the hub checkpoint's config (already cached by the load)."""
    from huggingface_hub import hf_hub_download

    repo, _, inline = target.partition("@")
    try:
        return Path(hf_hub_download(repo, "config.json", revision=inline or pinned)).parent
    except Exception as exc:  # the weights loaded a moment ago, so this is the cache answering
        raise ModelLoadError(f"hf-hub:{repo}: cannot read config.json ({type(exc).__name__}: {exc})") from exc
