"""Exported models (ONNX, TorchScript): writing them and loading them back as classifiers.

An export is a file with two outputs, ``logits`` and ``features`` (pre-logits, not yet normalised), plus
a sidecar JSON next to it (``model.onnx`` -> ``model.onnx.json``) that carries what the graph cannot: the
source model's name and version, the labels, the preprocessing config. The exported model therefore keeps
the source's identity, and its embeddings land in the same vector collection as the torch model's; an
int8 export changes the numbers, so its version gets an ``-int8`` suffix and a collection of its own.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import ModelLoadError
from vitguard.model.base import BaseClassifier
from vitguard.model.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DataConfig, Preprocessor
from vitguard.model.types import ModelInfo

if TYPE_CHECKING:
    import torch

    from vitguard.model.torch_backend import TorchClassifier

__all__ = [
    "ExportFormat",
    "OnnxClassifier",
    "TorchScriptClassifier",
    "export_model",
    "read_sidecar",
    "sidecar_path",
]

ExportFormat = Literal["onnx", "torchscript"]
_SIDECAR_FORMAT = "vitguard-export/1"


def sidecar_path(path: Path) -> Path:
    """Where an export's metadata lives: the model file's name plus ``.json``."""
    return path.with_name(path.name + ".json")


def read_sidecar(path: Path) -> tuple[ModelInfo, DataConfig]:
    """The identity and preprocessing of an exported model.

    Raises:
        ModelLoadError: the model file or its sidecar is missing or malformed.
    """
    if not path.is_file():
        raise ModelLoadError(f"{path}: expected an exported model file")
    meta_path = sidecar_path(path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        info = meta["info"]
        model_info = ModelInfo(
            name=str(info["name"]),
            version=str(info["version"]),
            labels=tuple(str(v) for v in info["labels"]),
            embedding_dim=int(info["embedding_dim"]),
            input_size=(int(info["input_size"][0]), int(info["input_size"][1]), int(info["input_size"][2])),
            backend=str(info["backend"]),
            untrained=bool(info.get("untrained", False)),
        )
        data_config = DataConfig.from_timm(meta["data_config"])
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: expected its metadata in {meta_path.name} next to it") from exc
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelLoadError(f"{meta_path}: expected vitguard export metadata ({exc!r})") from exc
    if meta.get("format") != _SIDECAR_FORMAT:
        raise ModelLoadError(f"{meta_path}: expected format {_SIDECAR_FORMAT!r}, got {meta.get('format')!r}")
    return model_info, data_config


def _write_sidecar(path: Path, info: ModelInfo, data_config: DataConfig, **extra: Any) -> None:
    meta = {"format": _SIDECAR_FORMAT, "info": asdict(info), "data_config": data_config.as_timm(), **extra}
    sidecar_path(path).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _two_outputs(module: torch.nn.Module) -> torch.nn.Module:
    """Wrap a timm network so its ``forward`` returns ``(logits, features)``: what an export must trace.

    The class is built here so that importing this module does not import torch.
    """
    import torch

    from vitguard.model.torch_backend import forward_two_outputs

    class TwoOutputs(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return forward_two_outputs(self.inner, x)

    return TwoOutputs(module).eval()


def export_model(
    classifier: TorchClassifier,
    out: str | Path,
    *,
    fmt: ExportFormat = "onnx",
    int8: bool = False,
    opset: int = 17,
) -> Path:
    """Write ``classifier``'s network as ONNX or TorchScript, plus its sidecar, loadable as ``onnx:PATH``.

    Args:
        classifier: a loaded torch classifier (any spec that gives one: hub, directory, ``timm:``).
        out: the model file to write; its parent is created.
        fmt: ``onnx`` or ``torchscript``.
        int8: ONNX only: dynamic int8 quantisation of the weights (MatMul/Gemm) after export.
        opset: ONNX opset.

    Returns:
        The written model path.
    """
    import torch

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = classifier.module
    if classifier.device.type != "cpu":  # export on CPU without moving the caller's model off its device
        module = copy.deepcopy(module).to("cpu")
    wrapper = _two_outputs(module.float())
    example = torch.zeros((2, *classifier.info.input_size), dtype=torch.float32)
    info = classifier.info
    if fmt == "torchscript":
        if int8:
            raise ValueError("--int8 is only supported for ONNX exports")
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and tracer warnings; parity is tested instead
            traced = torch.jit.trace(wrapper, example, check_trace=False)  # type: ignore[no-untyped-call]
        traced.save(str(path))  # type: ignore[no-untyped-call]
        _write_sidecar(path, _replace(info, backend="torchscript"), classifier.data_config, source=info.name)
        return path
    if fmt != "onnx":
        raise ValueError(f"unknown export format {fmt!r}; use onnx or torchscript")
    fp32_path = path if not int8 else path.with_name(path.stem + ".fp32" + path.suffix)
    _export_onnx(wrapper, example, fp32_path, opset)
    version = info.version
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QInt8)
        fp32_path.unlink()
        version = f"{info.version}-int8"
    _write_sidecar(
        path,
        _replace(info, backend="onnx", version=version),
        classifier.data_config,
        source=info.name,
        quantization="dynamic-int8" if int8 else None,
    )
    return path


def _export_onnx(wrapper: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    import torch

    kwargs: dict[str, Any] = {
        "input_names": ["pixel_values"],
        "output_names": ["logits", "features"],
        "dynamic_axes": {"pixel_values": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
        "opset_version": opset,
    }
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in timm's asserts
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, **kwargs)


def _replace(info: ModelInfo, **changes: Any) -> ModelInfo:
    from dataclasses import replace

    return replace(info, **changes)


class OnnxClassifier(BaseClassifier):
    """An exported ONNX model on onnxruntime (CUDA provider when present, else CPU)."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        spinning: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> None:
        from vitguard.model.ort import create_session

        info, data_config = read_sidecar(path)
        try:
            self._session = create_session(path, threads=threads, spinning=spinning)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelLoadError(f"{path}: expected a valid ONNX model ({exc})") from exc
        names = [o.name for o in self._session.get_outputs()]
        if names[:2] != ["logits", "features"]:
            raise ModelLoadError(f"{path}: expected outputs ['logits', 'features'], got {names}")
        self._input = self._session.get_inputs()[0].name
        preprocessor = Preprocessor(data_config, max_pixels=max_pixels, min_side=min_side)
        super().__init__(_replace(info, backend="onnx"), preprocessor)
        self.data_config = data_config

    def _forward(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        logits, features = self._session.run(["logits", "features"], {self._input: batch})
        return logits, features


class TorchScriptClassifier(BaseClassifier):
    """An exported TorchScript model (no timm or Python model code needed to run it)."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> None:
        import torch

        info, data_config = read_sidecar(path)
        try:
            self._module = torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]
        except Exception as exc:  # RuntimeError for anything that is not a TorchScript archive
            raise ModelLoadError(f"{path}: expected a TorchScript archive ({exc})") from exc
        self._device = torch.device(device)
        super().__init__(
            _replace(info, backend="torchscript"), Preprocessor(data_config, max_pixels=max_pixels, min_side=min_side)
        )
        self.data_config = data_config

    def _forward(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        import torch

        with torch.inference_mode():
            logits, features = self._module(torch.from_numpy(batch).to(self._device))
        return logits.float().cpu().numpy(), features.float().cpu().numpy()
