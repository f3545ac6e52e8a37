"""Shared fixtures: one tiny Marqo-layout checkpoint per session, and the offline hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitguard.model import load_torch_classifier
from vitguard.model.torch_backend import TorchClassifier
from vitguard.testing.models import make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_classifier(tiny_checkpoint: Path) -> TorchClassifier:
    return load_torch_classifier(str(tiny_checkpoint))


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache with HF_HUB_OFFLINE on: the hub can only be reached through the cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
