from __future__ import annotations

import random

import pytest

from tests.pipeline.conftest import image_root, opennsfw  # noqa: F401 - the stream tests' fixtures


def random_pdq(rng: random.Random) -> str:
    """A random, balanced (128 bits set) PDQ-like hash."""
    bits = [1] * 128 + [0] * 128
    rng.shuffle(bits)
    return f"{int(''.join(map(str, bits)), 2):064x}"


def flip(signal: str, n: int, rng: random.Random) -> str:
    """``signal`` with ``n`` distinct bits flipped."""
    value = int(signal, 16)
    for bit in rng.sample(range(256), n):
        value ^= 1 << bit
    return f"{value:064x}"


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)
