"""The timm checkpoint layout (``config.json`` + ``model.safetensors``): read, build, load and write.

This is the layout of ``Marqo/nsfw-image-detection-384`` on the Hugging Face hub and of every timm
``push_to_hf_hub`` export, and it is what fine-tuning writes, so a fine-tuned model loads through the same
code path as the published one. ``config.json`` carries ``architecture``, ``num_classes``, ``label_names``,
``pretrained_cfg`` (input size, interpolation, mean/std, crop) and optional ``model_args`` (constructor
arguments such as ``depth`` or ``img_size``). Weights are read with safetensors only, never with pickle.

Only this package calls :func:`timm.create_model`; :func:`create_timm_model` is the one place it happens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitguard.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointConfig",
    "create_timm_model",
    "load_checkpoint_module",
    "read_checkpoint_config",
    "resolve_data_config",
    "save_checkpoint",
    "weights_digest",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class CheckpointConfig:
    """What ``config.json`` says about the network; everything needed to rebuild it before loading weights."""

    architecture: str
    num_classes: int
    label_names: tuple[str, ...]
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    untrained: bool = False
    """Trained on a random-weight backbone (``timm:ARCH``): plumbing only, every verdict says so."""
    unsafe_labels: tuple[str, ...] = ()
    """The classes that count as unsafe, as ``vitguard finetune`` resolved them; the worker's policy takes them
    unless ``VITGUARD_POLICY_UNSAFE_LABELS`` is set."""

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], *, source: str) -> CheckpointConfig:
        """Validate a parsed ``config.json``.

        Raises:
            ModelLoadError: a field is missing or inconsistent; the message names it and the file.
        """
        pretrained_cfg = raw.get("pretrained_cfg")
        if "architecture" not in raw or not isinstance(pretrained_cfg, Mapping):
            raise ModelLoadError(
                f"{source}: expected a timm hub config with 'architecture' and 'pretrained_cfg' "
                f"(got keys {sorted(raw)})"
            )
        architecture = str(raw["architecture"])
        num_classes = raw.get("num_classes", pretrained_cfg.get("num_classes"))
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ModelLoadError(f"{source}: expected a positive integer 'num_classes', got {num_classes!r}")
        labels = _label_names(raw.get("label_names", pretrained_cfg.get("label_names")), num_classes, source)
        model_args = raw.get("model_args") or {}
        if not isinstance(model_args, Mapping):
            raise ModelLoadError(f"{source}: expected 'model_args' to be an object, got {model_args!r}")
        untrained, unsafe = _vitguard_block(raw.get("vitguard"), labels, source)
        return cls(architecture, num_classes, labels, dict(pretrained_cfg), dict(model_args), untrained, unsafe)

    def input_size(self) -> tuple[int, int, int]:
        """The input size the weights were saved for, ``model_args['img_size']`` taking precedence (as in timm)."""
        channels, height, width = (int(v) for v in self.pretrained_cfg.get("input_size", (3, 224, 224)))
        img_size = self.model_args.get("img_size")
        if img_size is not None:
            height, width = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        return (channels, height, width)


def _vitguard_block(raw: object, labels: tuple[str, ...], source: str) -> tuple[bool, tuple[str, ...]]:
    """``config.json``'s ``vitguard`` object: ``untrained`` and ``unsafe_labels`` (both optional)."""
    if raw is None:
        return False, ()
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"{source}: expected 'vitguard' to be an object, got {raw!r}")
    untrained = raw.get("untrained", False)
    unsafe = raw.get("unsafe_labels", [])
    if not isinstance(untrained, bool):
        raise ModelLoadError(f"{source}: expected 'vitguard.untrained' to be true or false, got {untrained!r}")
    if not isinstance(unsafe, list) or not all(isinstance(u, str) and u in labels for u in unsafe):
        raise ModelLoadError(f"{source}: 'vitguard.unsafe_labels' must list some of the classes {list(labels)}, "
                             f"got {unsafe!r}")
    return untrained, tuple(unsafe)


def _label_names(raw: object, num_classes: int, source: str) -> tuple[str, ...]:
    if raw is None:
        return tuple(f"class_{i}" for i in range(num_classes))
    if isinstance(raw, Mapping):  # timm allows {index: name}
        try:
            names = tuple(str(raw[k]) for k in sorted(raw, key=int))
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"{source}: 'label_names' keys must be class indices") from exc
    elif isinstance(raw, Sequence) and not isinstance(raw, str):
        names = tuple(str(v) for v in raw)
    else:
        raise ModelLoadError(f"{source}: expected 'label_names' to be a list of class names, got {raw!r}")
    if len(names) != num_classes:
        raise ModelLoadError(
            f"{source}: {len(names)} label_names {list(names)} for num_classes={num_classes}; they must match"
        )
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{source}: label_names {list(names)} are not unique")
    return names


def read_checkpoint_config(directory: Path) -> CheckpointConfig:
    """Read and validate ``DIR/config.json``.

    Raises:
        ModelLoadError: the file is missing, not JSON, or not a timm hub config.
    """
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{directory}: expected a checkpoint directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: expected a JSON object ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return CheckpointConfig.from_json(raw, source=str(path))


def create_timm_model(
    architecture: str,
    *,
    num_classes: int,
    model_args: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """A freshly initialised timm network (random weights), in eval mode.

    The only ``timm.create_model`` call in vitguard: fine-tuning and tests get their networks here, so the
    constructor arguments are always the ones a checkpoint records.

    Args:
        architecture: a timm model name, e.g. ``vit_tiny_patch16_384``.
        num_classes: classifier outputs.
        model_args: extra constructor arguments (``depth``, ``img_size``, ...).
        pretrained_cfg: a checkpoint's preprocessing config, attached as ``module.pretrained_cfg`` so
            ``timm.data.resolve_data_config(model=module)`` sees the checkpoint's values.

    Raises:
        ModelLoadError: unknown architecture or arguments it does not accept.
    """
    import timm
    from timm.models import PretrainedCfg

    args = dict(model_args or {})
    args.pop("num_classes", None)  # timm's export records it among the constructor arguments; ours is explicit
    overlay: dict[str, Any] = {}
    if pretrained_cfg:
        known = {f.name for f in dataclasses.fields(PretrainedCfg)}
        overlay = {k: v for k, v in pretrained_cfg.items() if k in known}
        overlay["num_classes"] = num_classes
    try:
        module = timm.create_model(
            architecture,
            pretrained=False,
            num_classes=num_classes,
            pretrained_cfg_overlay=overlay or None,
            **args,
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelLoadError(f"unknown timm architecture {architecture!r}") from exc
        raise ModelLoadError(f"cannot build {architecture}({_args(num_classes, model_args)}): {exc}") from exc
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelLoadError(f"cannot build {architecture}({_args(num_classes, model_args)}): {exc}") from exc
    return module.eval()


def _args(num_classes: int, model_args: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in {"num_classes": num_classes, **(model_args or {})}.items())


def resolve_data_config(
    *, pretrained_cfg: Mapping[str, Any] | None = None, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """timm's own resolution of a data config (input size, interpolation, mean/std, crop) from a checkpoint."""
    from timm.data import resolve_data_config as timm_resolve  # type: ignore[attr-defined]

    resolved: dict[str, Any] = timm_resolve(pretrained_cfg=dict(pretrained_cfg or {}), model=model)  # type: ignore[no-untyped-call]
    return resolved


def weights_digest(path: Path) -> str:
    """First 12 hex digits of the file's sha256: the model version when no revision is pinned."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def load_checkpoint_module(directory: Path) -> tuple[torch.nn.Module, CheckpointConfig, str]:
    """Build the network a checkpoint directory describes and load its safetensors weights (strictly).

    Returns:
        The module in eval mode, its config, and the short sha256 of the weights file.

    Raises:
        ModelLoadError: missing or unreadable files, or weights that do not fit the described network; one
            line that says what was expected.
    """
    config = read_checkpoint_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        found = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pth", ".pt", ".ckpt"))
        hint = f" (found {', '.join(found)}; vitguard loads safetensors only, never pickle)" if found else ""
        raise ModelLoadError(f"{directory}: expected weights in {WEIGHTS_NAME}{hint}")
    module = create_timm_model(
        config.architecture,
        num_classes=config.num_classes,
        model_args=config.model_args,
        pretrained_cfg=config.pretrained_cfg,
    )
    state = _read_safetensors(weights)
    network = f"{config.architecture}({_args(config.num_classes, config.model_args)})"
    _check_state_dict(module, state, f"{weights} for {network}")
    module.load_state_dict(state, strict=True)
    return module.eval(), config, weights_digest(weights)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ValueError for a truncated header
        raise ModelLoadError(f"{path}: expected a valid safetensors file ({exc})") from exc


def _check_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if wrong:
        key = wrong[0]
        problems.append(
            f"{len(wrong)} tensors of the wrong shape (e.g. {key}: {list(state[key].shape)}, "
            f"expected {list(expected[key])})"
        )
    raise ModelLoadError(f"weights do not match the network in {what}: {'; '.join(problems)}")


def save_checkpoint(
    module: torch.nn.Module,
    out_dir: str | Path,
    *,
    architecture: str,
    label_names: Sequence[str],
    pretrained_cfg: Mapping[str, Any],
    model_args: Mapping[str, Any] | None = None,
    untrained: bool = False,
    unsafe_labels: Sequence[str] = (),
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the timm hub layout that :func:`load_checkpoint_module` reads.

    Args:
        module: a timm network (e.g. from :func:`create_timm_model`, after fine-tuning).
        out_dir: created if needed; existing files of the same names are replaced.
        architecture: the timm name the module was built from.
        label_names: class names in output order; their number must equal the module's classifier width.
        pretrained_cfg: the preprocessing the weights expect (input_size, interpolation, mean, std, crop_pct,
            crop_mode ...), normally the base checkpoint's.
        model_args: the extra constructor arguments the module was built with.
        untrained: the backbone had random weights (a ``timm:ARCH`` base): loaded models say so.
        unsafe_labels: the classes that count as unsafe; the worker's policy takes them unless it names its own.

    Returns:
        The checkpoint directory.
    """
    from timm.models import save_for_hf

    num_classes = int(getattr(module, "num_classes", len(label_names)))
    if len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label_names for a module with {num_classes} outputs")
    out = Path(out_dir)
    cfg = {k: v for k, v in dict(pretrained_cfg).items() if k not in ("label_names", "hf_hub_id", "file", "source")}
    cfg["num_classes"] = num_classes
    if "input_size" in cfg:
        cfg["input_size"] = [int(v) for v in cfg["input_size"]]
    model_config: dict[str, Any] = {"label_names": list(label_names), "pretrained_cfg": cfg}
    unknown = [u for u in unsafe_labels if u not in label_names]
    if unknown:
        raise ValueError(f"unsafe_labels {unknown} are not among the label_names {list(label_names)}")
    if untrained or unsafe_labels:
        model_config["vitguard"] = {"untrained": untrained, "unsafe_labels": list(unsafe_labels)}
    # timm's own hub export (config.json + model.safetensors, weights never pickled); the loader below keeps
    # vitguard's strict checks (shapes, label count, digest), which timm's loader does not make
    args = {k: v for k, v in dict(model_args or {}).items() if k != "num_classes"}  # the head may be new
    save_for_hf(module, str(out), model_config=model_config, model_args=args, safe_serialization=True)
    return out
