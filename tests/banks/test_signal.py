"""PDQ hashing, the hex format ThreatExchange uses, validation and distance."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.banks.conftest import flip, random_pdq
from vitguard.banks.signal import PdqSignal, hamming, pack_hashes


def test_hash_matches_python_threatexchange_hex_format(sample_photos: list[Path]) -> None:
    import pdqhash

    rgb = np.asarray(Image.open(sample_photos[0]).convert("RGB"))
    vector, quality = pdqhash.compute(rgb)
    expected = f"{int(''.join(str(int(x)) for x in vector), 2):064x}"  # as threatexchange's pdq_hasher
    got = PdqSignal.hash_pixels(rgb)
    assert got.hex == expected
    assert got.quality == quality
    assert PdqSignal.validate_signal_str(got.hex) == got.hex


def test_hash_bytes_and_grey_images(sample_photos: list[Path]) -> None:
    data = sample_photos[0].read_bytes()
    assert PdqSignal.hash_bytes(data) == PdqSignal.hash_image(Image.open(sample_photos[0]))
    grey = np.asarray(Image.open(sample_photos[0]).convert("L"))
    assert len(PdqSignal.hash_pixels(grey).hex) == 64


def test_transformed_copies_are_close_and_other_photos_far(sample_photos: list[Path]) -> None:
    original = Image.open(sample_photos[0]).convert("RGB")
    base = PdqSignal.hash_image(original).hex
    buf = io.BytesIO()
    original.resize((original.width // 2, original.height // 2)).save(buf, "JPEG", quality=70)
    w, h = original.size
    copies = [PdqSignal.hash_bytes(buf.getvalue()).hex,
              PdqSignal.hash_image(original.crop((w // 100, h // 100, w - w // 100, h - h // 100))).hex]
    assert all(PdqSignal.distance(base, c) <= 31 for c in copies)
    others = [PdqSignal.hash_image(Image.open(p)).hex for p in sample_photos[1:]]
    assert all(PdqSignal.distance(base, o) > 31 for o in others)


@pytest.mark.parametrize("bad, why", [
    ("abc", "64 hex"),
    ("z" * 64, "64 hex"),
    ("0" * 64, "degenerate"),
    ("f" * 64, "degenerate"),
])
def test_validation_says_why(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        PdqSignal.validate_signal_str(bad)


def test_validation_canonicalises(rng: random.Random) -> None:
    h = random_pdq(rng)
    assert PdqSignal.validate_signal_str("  0x" + h.upper() + "\n") == h


def test_distance_and_brute_force_hamming_agree(rng: random.Random) -> None:
    a = random_pdq(rng)
    others = [flip(a, n, rng) for n in (0, 1, 17, 31, 32, 100)]
    assert [PdqSignal.distance(a, o) for o in others] == [0, 1, 17, 31, 32, 100]
    assert hamming(pack_hashes([a]), pack_hashes(others)).tolist() == [[0, 1, 17, 31, 32, 100]]
