"""vitguard's numpy PDQ against the C++ reference (``pdqhash``) on real photographs, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitguard.banks.pdq import MIN_SIDE, pdq_hash
from vitguard.banks.signal import PdqSignal


def _reference(rgb: np.ndarray) -> tuple[str, int]:
    import pdqhash

    vector, quality = pdqhash.compute(np.ascontiguousarray(rgb, dtype=np.uint8))
    return f"{int(''.join(str(int(x)) for x in vector), 2):064x}", int(quality)  # as threatexchange writes it


def _photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data as data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "camera", "moon", "page", "brick", "grass", "coins", "horse", "clock"):
        pixels = np.asarray(getattr(data, name)())
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        out.append((name, np.ascontiguousarray(pixels[..., :3].astype(np.uint8))))
    return out


PHOTOS = _photos()


@pytest.mark.parametrize("name, rgb", PHOTOS, ids=[n for n, _ in PHOTOS])
def test_same_hash_and_quality_as_the_reference(name: str, rgb: np.ndarray) -> None:
    assert pdq_hash(rgb) == _reference(rgb)


@pytest.mark.parametrize("size", [(64, 64), (65, 129), (127, 255), (333, 64), (513, 777), (1999, 2001)])
def test_same_hash_at_odd_sizes(size: tuple[int, int]) -> None:
    """Every window size and edge case of the box filters and of the decimation, on resized photographs."""
    for _, rgb in PHOTOS[:4]:
        resized = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        assert pdq_hash(resized) == _reference(resized)


def test_signal_uses_it_and_the_reference_below_64_px() -> None:
    _, rgb = PHOTOS[0]
    assert PdqSignal.hash_pixels(rgb).hex == _reference(rgb)[0]
    for size in ((8, 8), (MIN_SIDE - 1, 300), (3, 1000)):  # repeated samples; under 5 px the reference's zeros
        tiny = np.asarray(Image.fromarray(rgb).resize(size))
        got = PdqSignal.hash_pixels(tiny)
        assert (got.hex, got.quality) == _reference(tiny)


def test_grey_arrays_hash_like_their_rgb() -> None:
    _, rgb = PHOTOS[7]  # camera, grey
    assert PdqSignal.hash_pixels(rgb[..., 0]) == PdqSignal.hash_pixels(rgb)


def test_a_pattern_whose_coefficients_tie_is_hashed_by_the_reference() -> None:
    """An upscaled chessboard (a 4032-px JPEG) has DCT coefficients within 1e-18 of the median: the numpy path
    would be 4 bits from ``pdqhash`` (float rounding, not the algorithm), so it says so and the signal asks
    the reference; photographs of every size keep the fast path (above)."""
    import io
    from pathlib import Path

    import skimage

    board = Image.open(Path(skimage.__file__).parent / "data" / "chessboard_RGB.png").convert("RGB")
    buf = io.BytesIO()
    board.resize((4032, 4032), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
    rgb = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert pdq_hash(rgb) is None
    got = PdqSignal.hash_pixels(rgb)
    assert (got.hex, got.quality) == _reference(rgb)
    _, photo = PHOTOS[0]
    assert pdq_hash(photo) is not None
