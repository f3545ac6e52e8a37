from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitguard.errors import VitguardError
from vitguard.finetune.data import (
    check_modes,
    class_weights,
    imbalance_ratio,
    scan_image_folder,
    stratified_split,
)
from vitguard.finetune.errors import DatasetError


def test_scan_finds_classes_in_sorted_order_and_skips_unreadable(tmp_path: Path, make_dataset) -> None:
    make_dataset(tmp_path, ("SFW", "NSFW"), (5, 4))
    (tmp_path / "NSFW" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "NSFW" / "notes.txt").write_text("ignored: not an image suffix")
    nested = tmp_path / "SFW" / "more"
    nested.mkdir()
    Image.new("RGB", (8, 8), "blue").save(nested / "deep.png")

    folder = scan_image_folder(tmp_path)

    assert folder.labels == ("NSFW", "SFW")
    assert folder.counts() == {"NSFW": 4, "SFW": 6}
    assert [(s.path.name, s.reason) for s in folder.skipped] == [("broken.jpg", "not_an_image")]
    assert all(item.mode == "RGB" for item in folder.items)


def test_single_class_is_refused(tmp_path: Path, make_dataset) -> None:
    make_dataset(tmp_path, ("NSFW",), 3)
    with pytest.raises(DatasetError, match="two or more class"):
        scan_image_folder(tmp_path)


def test_empty_class_is_refused(tmp_path: Path, make_dataset) -> None:
    make_dataset(tmp_path, ("NSFW", "SFW"), 3)
    empty = tmp_path / "art"
    empty.mkdir()
    (empty / "corrupt.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="'art' has no readable image"):
        scan_image_folder(tmp_path)


def test_missing_folder_is_a_vitguard_error(tmp_path: Path) -> None:
    with pytest.raises(VitguardError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_validation_folder_must_have_the_training_classes(tmp_path: Path, make_dataset) -> None:
    make_dataset(tmp_path / "val", ("NSFW", "art"), 2)
    with pytest.raises(DatasetError, match=r"missing \['SFW'\], unexpected \['art'\]"):
        scan_image_folder(tmp_path / "val", labels=("NSFW", "SFW"))


def test_modes_that_differ_by_class_are_refused(tmp_path: Path, make_dataset) -> None:
    make_dataset(tmp_path, ("NSFW", "SFW"), 3)
    for path in (tmp_path / "SFW").iterdir():
        Image.open(path).convert("L").save(path)
    folder = scan_image_folder(tmp_path)
    with pytest.raises(DatasetError, match="'NSFW' is all colour, 'SFW' is all greyscale"):
        check_modes(folder)


def test_mixed_modes_within_every_class_are_fine(tmp_path: Path, make_dataset) -> None:
    make_dataset(tmp_path, ("NSFW", "SFW"), 4)
    for cls in ("NSFW", "SFW"):
        first = sorted((tmp_path / cls).iterdir())[0]
        Image.open(first).convert("L").save(first)
    check_modes(scan_image_folder(tmp_path))


def test_validation_modes_unseen_in_training_are_refused(tmp_path: Path, make_dataset) -> None:
    train = scan_image_folder(make_dataset(tmp_path / "train", ("NSFW", "SFW"), 3))
    make_dataset(tmp_path / "val", ("NSFW", "SFW"), 2)
    for path in (tmp_path / "val").rglob("*.*"):
        Image.open(path).convert("L").save(path)
    val = scan_image_folder(tmp_path / "val", labels=train.labels)
    with pytest.raises(DatasetError, match="validation images .* are greyscale"):
        check_modes(train, val)


def test_stratified_split_keeps_class_proportions_and_is_seeded(tmp_path: Path, make_dataset) -> None:
    folder = scan_image_folder(make_dataset(tmp_path, ("NSFW", "SFW", "art"), (20, 10, 3)))
    train, val = stratified_split(folder, 0.2, seed=7)
    assert Counter(folder.labels[i.label] for i in val.items) == {"NSFW": 4, "SFW": 2, "art": 1}
    assert len(train.items) + len(val.items) == 33
    assert not {i.path for i in train.items} & {i.path for i in val.items}
    again_train, again_val = stratified_split(folder, 0.2, seed=7)
    assert [i.path for i in again_val.items] == [i.path for i in val.items]
    _, other_val = stratified_split(folder, 0.2, seed=8)
    assert [i.path for i in other_val.items] != [i.path for i in val.items]


def test_split_needs_two_images_per_class(tmp_path: Path, make_dataset) -> None:
    folder = scan_image_folder(make_dataset(tmp_path, ("NSFW", "SFW"), (5, 1)))
    with pytest.raises(DatasetError, match="'SFW' has 1 readable image"):
        stratified_split(folder, 0.2)


def test_class_weights_balance_the_loss() -> None:
    targets = np.array([0] * 30 + [1] * 10, dtype=np.int64)
    weights = class_weights(targets, 2)
    np.testing.assert_allclose(weights, [40 / 60, 40 / 20])
    # every class then contributes the same total weight
    assert weights[0] * 30 == pytest.approx(weights[1] * 10)
    assert imbalance_ratio({"a": 30, "b": 10}) == 3.0
