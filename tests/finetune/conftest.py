"""A generated labelled image folder with visually distinct classes, written as real JPEG and PNG files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# class name -> how its images look
SHAPES = {
    "NSFW": "red squares",
    "SFW": "blue stripes",
    "art": "green circles",
}


def _draw(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    grey = int(rng.integers(100, 160))
    background = tuple(grey + int(v) for v in rng.integers(-12, 12, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    jitter = lambda: int(rng.integers(-30, 30))  # noqa: E731
    if kind == "red squares":
        for _ in range(int(rng.integers(2, 5))):
            s = int(rng.integers(size // 4, size // 2))
            x, y = (int(v) for v in rng.integers(0, size - s, size=2))
            draw.rectangle([x, y, x + s, y + s], fill=(220 + jitter() // 3, 40 + jitter(), 40 + jitter()))
    elif kind == "blue stripes":
        width = int(rng.integers(3, 8))
        offset = int(rng.integers(0, 2 * width))
        for x in range(-offset, size, 2 * width):
            draw.rectangle([x, 0, x + width - 1, size], fill=(40 + jitter(), 60 + jitter(), 220 + jitter() // 3))
    else:
        for _ in range(int(rng.integers(2, 4))):
            r = int(rng.integers(size // 6, size // 3))
            cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(40 + jitter(), 200 + jitter() // 3, 60 + jitter()))
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 12, size=(size, size, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(
    root: Path,
    classes: Sequence[str] = ("NSFW", "SFW"),
    per_class: int | Sequence[int] = 20,
    *,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/<class>/NNN.{jpg,png}``: alternating JPEG and PNG so both decoders are exercised."""
    rng = np.random.default_rng(seed)
    counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
    for name, count in zip(classes, counts, strict=True):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = _draw(SHAPES[name], size, rng)
            if i % 2:
                image.save(folder / f"{i:03d}.png")
            else:
                image.save(folder / f"{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(name="make_dataset")
def _make_dataset_fixture() -> Callable[..., Path]:
    """The generator itself, so a test chooses classes, counts and seed."""
    return make_dataset


@pytest.fixture(scope="session")
def binary_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes (NSFW red squares, SFW blue stripes), 20 images each."""
    return make_dataset(tmp_path_factory.mktemp("binary"), ("NSFW", "SFW"), 20, seed=1)


@pytest.fixture(scope="session")
def three_class_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes (NSFW, SFW, art), imbalanced: 24, 16, 12 images."""
    return make_dataset(tmp_path_factory.mktemp("three"), ("NSFW", "SFW", "art"), (24, 16, 12), seed=2)
