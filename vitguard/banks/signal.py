"""Signal types: how a kind of hash is computed, validated, compared and indexed.

Shaped after python-threatexchange's ``signal_base``: a signal type is a class that knows its own name,
how to turn pixels into a signal string, how to validate one that came from elsewhere (an exchange, a CSV)
and how far apart two signals are. vitguard has one today, :class:`PdqSignal` (Meta's PDQ photo hash); a
second (e.g. a video hash) would be another subclass, with banks keyed by signal type.

Hashes come from :mod:`vitguard.banks.pdq` (the reference algorithm in numpy; ``pdqhash``, the C++ reference,
for images under 64 px a side). PDQ strings are the 64-character lower-case hex that ThreatExchange, HMA and
the reference tools exchange: bit ``i`` of ``pdqhash.compute``'s vector is bit ``7 - i % 8`` of byte ``i // 8``
(the first bit is the most significant bit of the first hex digit), exactly as python-threatexchange's
``pdq_hasher`` writes it.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PDQ_BITS",
    "PDQ_BYTES",
    "PDQ_DEFAULT_MATCH_DISTANCE",
    "PDQ_DEFAULT_QUALITY_THRESHOLD",
    "PdqHash",
    "PdqSignal",
    "SignalType",
    "hamming",
    "hex_to_bytes",
    "pack_hashes",
]

PDQ_BITS = 256
PDQ_BYTES = PDQ_BITS // 8
PDQ_DEFAULT_MATCH_DISTANCE = 31
"""HMA's and python-threatexchange's PDQ_CONFIDENT_MATCH_THRESHOLD: distance <= 31 bits is a match."""
PDQ_DEFAULT_QUALITY_THRESHOLD = 50
"""python-threatexchange's PdqSignal.QUALITY_THRESHOLD: below it a hash is too unreliable to match."""
PDQ_MIN_BITS_SET = 32
"""PDQ thresholds each coefficient at the median, so a real hash has about 128 of 256 bits set. One with
fewer than this many set (or more than 256 minus it) is degenerate, like the all-zero entry of
ThreatExchange issue #1609, and would match blank or flat images: imports refuse it."""

_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PdqHash:
    """A PDQ hash as computed from pixels: the hex string and PDQ's quality score (0-100)."""

    hex: str
    quality: int


class SignalType(ABC):
    """One kind of signal; every method is a class method (a signal type has no state)."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def validate_signal_str(cls, signal: str) -> str:
        """The canonical form of ``signal``.

        Raises:
            ValueError: it is not a valid signal of this type (the message says why, for an import report).
        """

    @classmethod
    @abstractmethod
    def distance(cls, a: str, b: str) -> int:
        """How far apart two canonical signals are (0: identical)."""


class PdqSignal(SignalType):
    """Meta's PDQ perceptual photo hash: 256 bits, Hamming distance, quality score."""

    name = "pdq"
    aliases: ClassVar[frozenset[str]] = frozenset({"pdq", "hash_pdq", "pdq_hash", "photo_pdq", "pdqhash"})
    """Spellings of the type in exchange files (ThreatExchange's indicator type is ``HASH_PDQ``)."""

    @classmethod
    def validate_signal_str(cls, signal: str) -> str:
        text = signal.strip().lower()
        if text.startswith("0x"):
            text = text[2:]
        if not _HEX.match(text):
            raise ValueError(f"not a PDQ hash (64 hex digits): {signal.strip()[:80]!r}")
        bits = int(text, 16).bit_count()
        if bits < PDQ_MIN_BITS_SET or bits > PDQ_BITS - PDQ_MIN_BITS_SET:
            raise ValueError(f"degenerate PDQ hash ({bits} of {PDQ_BITS} bits set; a real one has about 128)")
        return text

    @classmethod
    def distance(cls, a: str, b: str) -> int:
        return (int(a, 16) ^ int(b, 16)).bit_count()

    @classmethod
    def hash_pixels(cls, rgb: NDArray[np.uint8]) -> PdqHash:
        """The PDQ hash of an ``H x W x 3`` uint8 RGB array.

        :func:`vitguard.banks.pdq.pdq_hash` (the reference algorithm in numpy, several times faster and off
        the GIL) from 64 px a side; below that, where repeated samples make DCT coefficients tie at the
        median and only the reference's own rounding decides, and wherever else a coefficient ties
        (:data:`vitguard.banks.pdq.TIE_MARGIN`: synthetic patterns), ``pdqhash`` (the C++ reference itself)."""
        from vitguard.banks.pdq import MIN_SIDE, pdq_hash

        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        if min(rgb.shape[:2]) >= MIN_SIDE and (decided := pdq_hash(rgb)) is not None:
            return PdqHash(*decided)
        return cls.hash_pixels_reference(rgb)

    @classmethod
    def hash_pixels_reference(cls, rgb: NDArray[np.uint8]) -> PdqHash:
        """The PDQ hash of an ``H x W x 3`` uint8 RGB array by ``pdqhash``, the C++ reference itself."""
        import pdqhash

        vector, quality = pdqhash.compute(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8))
        packed = np.packbits(np.asarray(vector, dtype=np.uint8))  # bit 0 -> MSB of byte 0, as ThreatExchange
        return PdqHash(packed.tobytes().hex(), int(quality))

    @classmethod
    def hash_image(cls, image: object) -> PdqHash:
        """The PDQ hash of a PIL image (converted to RGB)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        return cls.hash_pixels(np.asarray(image.convert("RGB")))

    @classmethod
    def hash_bytes(cls, data: bytes) -> PdqHash:
        """The PDQ hash of an encoded image file (JPEG, PNG, ...); the first frame of an animation."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            return cls.hash_image(image)


def hex_to_bytes(signal: str) -> bytes:
    """32 bytes of a canonical PDQ hex string (the code FAISS indexes)."""
    return bytes.fromhex(signal)


def pack_hashes(signals: list[str]) -> NDArray[np.uint8]:
    """An ``n x 32`` uint8 matrix of canonical PDQ hex strings."""
    if not signals:
        return np.zeros((0, PDQ_BYTES), dtype=np.uint8)
    return np.frombuffer(b"".join(bytes.fromhex(s) for s in signals), dtype=np.uint8).reshape(-1, PDQ_BYTES)


def hamming(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> NDArray[np.int64]:
    """Brute-force Hamming distances between every row of ``a`` (n x 32) and of ``b`` (m x 32): n x m."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.int64)
    x = np.bitwise_xor(a[:, None, :], b[None, :, :])
    out: NDArray[np.int64] = np.unpackbits(x, axis=2).sum(axis=2, dtype=np.int64)
    return out
