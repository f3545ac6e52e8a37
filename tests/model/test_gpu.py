"""The CUDA path (fp16 autocast, channels-last): skipped on machines without a CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitguard.model import load_classifier
from vitguard.settings import ModelSettings


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny_checkpoint: Path, sample_photos: list[Path]) -> None:
    cpu = load_classifier(str(tiny_checkpoint), settings=ModelSettings.model_construct(device="cpu"))
    gpu = load_classifier(str(tiny_checkpoint), settings=ModelSettings.model_construct(device="cuda"))
    assert getattr(gpu, "device").type == "cuda"  # noqa: B009 - TorchClassifier attribute
    batch = np.stack([cpu.prepare(p.read_bytes()) for p in sample_photos[:4]])
    for a, b in zip(cpu.predict(batch), gpu.predict(batch), strict=True):
        assert b.embedding.dtype == np.float32
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-2  # fp16 autocast
        assert float(a.embedding @ b.embedding) > 0.999
