"""Exports load back through the same spec mechanism and agree with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vitguard.errors import ModelLoadError
from vitguard.model import load_classifier
from vitguard.model.exported import export_model, sidecar_path
from vitguard.model.torch_backend import TorchClassifier


def _compare(reference: TorchClassifier, spec: str, photos: list[Path]) -> tuple[float, float]:
    exported = load_classifier(spec)
    batch = np.stack([reference.prepare(p.read_bytes()) for p in photos])
    ours, theirs = reference.predict(batch), exported.predict(batch)
    prob_diff = max(abs(a.scores[k] - b.scores[k]) for a, b in zip(ours, theirs, strict=True) for k in a.scores)
    cosine = min(float(a.embedding @ b.embedding) for a, b in zip(ours, theirs, strict=True))
    return prob_diff, cosine


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_parity(
    fmt: str, suffix: str, tiny_classifier: TorchClassifier, sample_photos: list[Path], tmp_path: Path
) -> None:
    path = export_model(tiny_classifier, tmp_path / f"model{suffix}", fmt=fmt)  # type: ignore[arg-type]
    assert path.is_file() and sidecar_path(path).is_file()
    exported = load_classifier(f"{fmt}:{path}")
    info, source = exported.info, tiny_classifier.info
    assert info.backend == fmt
    assert (info.name, info.version, info.labels, info.embedding_dim, info.input_size) == (
        source.name, source.version, source.labels, source.embedding_dim, source.input_size,
    )
    prob_diff, cosine = _compare(tiny_classifier, f"{fmt}:{path}", sample_photos[:4])
    assert prob_diff < 1e-4
    assert cosine > 0.9999
    # batch size is dynamic
    assert len(exported.classify(sample_photos[:3], batch_size=3)) == 3


def test_int8_export_is_its_own_version(
    tiny_classifier: TorchClassifier, sample_photos: list[Path], tmp_path: Path
) -> None:
    path = export_model(tiny_classifier, tmp_path / "q.onnx", fmt="onnx", int8=True)
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["quantization"] == "dynamic-int8"
    exported = load_classifier(f"onnx:{path}")
    assert exported.info.version == f"{tiny_classifier.info.version}-int8"
    fp32 = export_model(tiny_classifier, tmp_path / "fp32.onnx")
    assert path.stat().st_size < 0.5 * fp32.stat().st_size
    prob_diff, cosine = _compare(tiny_classifier, f"onnx:{path}", sample_photos[:4])
    assert cosine > 0.99  # approximate, but still the same embedding space
    assert prob_diff < 0.25


def test_broken_exports_fail_clearly(tiny_classifier: TorchClassifier, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="expected an exported model file"):
        load_classifier(f"onnx:{tmp_path / 'missing.onnx'}")
    path = export_model(tiny_classifier, tmp_path / "m.onnx")
    sidecar_path(path).unlink()
    with pytest.raises(ModelLoadError, match=r"expected its metadata in m\.onnx\.json"):
        load_classifier(f"onnx:{path}")
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"not a protobuf" * 10)
    good = export_model(tiny_classifier, tmp_path / "x.onnx")
    sidecar_path(garbage).write_text(sidecar_path(good).read_text())
    with pytest.raises(ModelLoadError, match="expected a valid ONNX model"):
        load_classifier(f"onnx:{garbage}")
    with pytest.raises(ModelLoadError, match="expected a TorchScript archive"):
        load_classifier(f"torchscript:{garbage}")
