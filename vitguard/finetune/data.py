"""Labelled image folders: scanning, checks, a stratified split and class weights.

The layout is ``DATA/<label>/**/*.jpg`` (any image suffix Pillow reads). Class names are the sub-folder
names, sorted, so the class order, and therefore the checkpoint's output order, does not depend on the
file system. Scanning only reads image headers (cheap); an image whose header cannot be read is skipped
and counted, never fatal. Images that pass the header check but fail full decoding are skipped later, by
the classifier's own ``prepare``, and counted there.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.finetune.errors import DatasetError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFolder",
    "LabelledImage",
    "SkippedImage",
    "check_modes",
    "class_weights",
    "imbalance_ratio",
    "mode_group",
    "scan_image_folder",
    "stratified_split",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
"""File suffixes (lower case) that are treated as images; other files in a class folder are ignored."""

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class LabelledImage:
    """One image file and the index of its class in :attr:`ImageFolder.labels`."""

    path: Path
    label: int
    mode: str
    """Pillow mode read from the header (``RGB``, ``L``, ``P``...)."""


@dataclass(frozen=True)
class SkippedImage:
    """An image file that was left out, and why (a reason code like the pipeline's)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ImageFolder:
    """The readable images of one folder, grouped by class, plus what was skipped."""

    root: Path
    labels: tuple[str, ...]
    items: tuple[LabelledImage, ...]
    skipped: tuple[SkippedImage, ...] = ()

    def counts(self) -> dict[str, int]:
        """Readable images per class, in label order."""
        per = Counter(item.label for item in self.items)
        return {name: per.get(i, 0) for i, name in enumerate(self.labels)}

    def subset(self, items: Iterable[LabelledImage]) -> ImageFolder:
        """The same folder restricted to ``items`` (skipped files are kept for the record)."""
        return ImageFolder(self.root, self.labels, tuple(items), self.skipped)

    @property
    def targets(self) -> NDArray[np.int64]:
        return np.array([item.label for item in self.items], dtype=np.int64)


def mode_group(mode: str) -> Literal["greyscale", "colour"]:
    """Greyscale or colour: the property of a Pillow mode that a classifier could learn as a shortcut."""
    return "greyscale" if mode in _GREY_MODES else "colour"


def _header(path: Path) -> tuple[str | None, str]:
    """Mode of an image file from its header, or ``None`` and a reason code when it is unreadable."""
    try:
        with Image.open(path) as image:
            if image.width < 1 or image.height < 1:
                return None, "image_too_small"
            return image.mode, ""
    except Image.DecompressionBombError:
        return None, "decompression_bomb"
    except (OSError, ValueError, SyntaxError):  # UnidentifiedImageError is an OSError
        return None, "not_an_image"


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in class_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.parts)
    )


def scan_image_folder(root: Path, *, labels: Sequence[str] | None = None) -> ImageFolder:
    """Find the labelled images under ``root``.

    Args:
        root: the folder whose sub-folders are the classes.
        labels: the classes expected (a validation folder must have exactly the training classes, in the
            training order); ``None`` takes the sorted sub-folder names.

    Raises:
        DatasetError: the folder is missing, has fewer than two classes, a class has no readable image, or
            its classes differ from ``labels``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist or is not a directory")
    dirs = {d.name: d for d in _class_dirs(root)}
    if labels is None:
        names = tuple(dirs)
    else:
        names = tuple(labels)
        missing = [name for name in names if name not in dirs]
        extra = sorted(set(dirs) - set(names))
        if missing or extra:
            raise DatasetError(
                f"classes in {root} differ from the training classes {list(names)}: "
                f"missing {missing}, unexpected {extra}"
            )
    if len(names) < 2:
        found = f"only {names[0]!r}" if names else "none"
        raise DatasetError(f"{root} needs two or more class sub-folders (DATA/<label>/*.jpg); found {found}")
    items: list[LabelledImage] = []
    skipped: list[SkippedImage] = []
    for index, name in enumerate(names):
        readable = 0
        for path in _image_files(dirs[name]):
            mode, reason = _header(path)
            if mode is None:
                skipped.append(SkippedImage(path, reason))
                continue
            items.append(LabelledImage(path, index, mode))
            readable += 1
        if readable == 0:
            raise DatasetError(
                f"class {name!r} has no readable image in {dirs[name]} "
                f"(suffixes {', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
            )
    return ImageFolder(root, names, tuple(items), tuple(skipped))


def check_modes(train: ImageFolder, val: ImageFolder | None = None) -> None:
    """Refuse data whose image modes differ by class, or between training and validation.

    When one class is all greyscale and another all colour, a classifier can separate them by colour alone
    and learn nothing about the content; its validation accuracy looks perfect and means nothing. The same
    holds for a validation folder whose images are in a mode the training images never have.

    Raises:
        DatasetError: naming the classes (or folders) and their modes.
    """
    groups: dict[str, set[str]] = {name: set() for name in train.labels}
    for item in train.items:
        groups[train.labels[item.label]].add(mode_group(item.mode))
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if groups[a] and groups[b] and not groups[a] & groups[b]:
                raise DatasetError(
                    f"image modes differ by class: {a!r} is all {'/'.join(sorted(groups[a]))}, {b!r} is all "
                    f"{'/'.join(sorted(groups[b]))}; a model would learn the mode, not the content; convert the "
                    "images to one mode or pass --allow-mixed-modes"
                )
    if val is not None:
        seen = set().union(*groups.values())
        val_groups = {mode_group(item.mode) for item in val.items}
        if val_groups - seen:
            raise DatasetError(
                f"validation images in {val.root} are {'/'.join(sorted(val_groups - seen))} but the training "
                f"images are all {'/'.join(sorted(seen))}; convert them to one mode or pass --allow-mixed-modes"
            )


def stratified_split(folder: ImageFolder, val_fraction: float, *, seed: int = 0) -> tuple[ImageFolder, ImageFolder]:
    """Split every class into training and validation images in the same proportion.

    Each class puts ``round(n * val_fraction)`` images (at least one, at most ``n - 1``) into validation, so
    a small class is never missing from either side. The draw is seeded: the same folder and seed give
    the same split on every machine.

    Raises:
        DatasetError: a class has fewer than two readable images, or ``val_fraction`` is not in (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train: list[LabelledImage] = []
    val: list[LabelledImage] = []
    for index, name in enumerate(folder.labels):
        members = [item for item in folder.items if item.label == index]
        if len(members) < 2:
            raise DatasetError(
                f"class {name!r} has {len(members)} readable image(s); a stratified split needs at least 2 "
                "per class (add images or give a separate validation folder)"
            )
        order = rng.permutation(len(members))
        n_val = min(len(members) - 1, max(1, math.floor(len(members) * val_fraction + 0.5)))
        val.extend(members[i] for i in order[:n_val])
        train.extend(members[i] for i in order[n_val:])
    return folder.subset(train), folder.subset(val)


def class_weights(targets: NDArray[np.int64], num_classes: int) -> NDArray[np.float32]:
    """Loss weights ``n / (C * n_c)`` that make every class count as much as the others in the loss.

    Balanced classes give weights of 1. A class absent from ``targets`` gets weight 0 (it cannot be
    learned from this data; the scan refuses empty classes before it comes to this).
    """
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def imbalance_ratio(counts: dict[str, int]) -> float:
    """Largest class size over smallest; 1.0 is balanced."""
    sizes = [n for n in counts.values() if n > 0]
    return max(sizes) / min(sizes) if sizes else 1.0
