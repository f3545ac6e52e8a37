"""Meta's PDQ photo hash in numpy: the reference algorithm as three small matrix products.

``pdqhash.compute`` (the C++ reference wrapped in Cython) costs about 13 ms for a 640 x 640 image on this
project's CPUs, more than open_nsfw's inference, and holds the GIL all along: half of it is a float64 luma
conversion, the rest is the Jarosz filter over every pixel. PDQ only samples that filtered image at 64 x 64
points, though, and every step up to the sampling is linear, so the same numbers come from

    luma (H x W)  ->  Rows (64 x H) @ luma @ Cols (W x 64)  ->  D (16 x 64) @ . @ D^T  ->  bits

where ``Rows``/``Cols`` are the sampled rows of the two-pass box filters (banded, cached per image size)
and ``D`` is PDQ's 16 x 64 DCT matrix. About 1 ms for the same image, in numpy loops that release the GIL
and use no BLAS thread pool.

The steps follow ``pdq/cpp/hashing/pdqhashing.cpp`` of ThreatExchange, as ``pdqhash`` 0.2.8 builds it:

* luma ``0.299 R + 0.587 G + 0.114 B`` (``pdqhash``'s own conversion);
* Jarosz filter: a box filter along each row (window ``ceil(W / 128)``, exactly ``(W + 127) // 128``) then
  along each column (``(H + 127) // 128``), twice; near the edges a window shrinks to what is inside the
  image (``box1DFloat``'s four phases), each output the mean of its window;
* decimation to 64 x 64 at ``int((i + 0.5) * H / 64)``, ``int((j + 0.5) * W / 64)``;
* quality: the sum of ``abs(int((u - v) * 100 / 255))`` over vertical and horizontal neighbours, ``// 90``,
  at most 100;
* DCT: ``D[i][j] = sqrt(2 / 64) cos(pi / 128 (i + 1) (2 j + 1))``, i < 16, j < 64; ``B = D A D^T``;
* bit ``k = 16 i + j`` is set when ``B[i][j]`` is above the median (Torben's: the 128th smallest value).

Floating-point sums run in a different order than the C++ running sums, so a coefficient within rounding
of the median can fall the other way: ``tests/banks/test_pdq.py`` checks the hashes against ``pdqhash``
on real photographs and their resized copies (0 bits apart and the same quality on every one measured). Images
under 64 px a side are the exception (coefficients tie; see :data:`MIN_SIDE`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import NDArray

__all__ = ["MIN_SIDE", "pdq_bits", "pdq_hash"]

_SIDE = 64
MIN_SIDE = _SIDE
"""Below 64 px a side PDQ samples pixels more than once, DCT coefficients tie at the median and rounding
picks bits: :class:`~vitguard.banks.signal.PdqSignal` hashes those with the C++ reference itself."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _window(dimension: int) -> int:
    """``computeJaroszFilterWindowSize(dimension, 64)``."""
    return (dimension + 2 * _SIDE - 1) // (2 * _SIDE)


def _bounds(n: int, full: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``box1DFloat``'s window of each output o: inputs lo[o]..hi[o] (shrunk at the edges)."""
    half = (full + 2) // 2
    o = np.arange(n)
    return np.maximum(0, o - (full - half)), np.minimum(n - 1, o + half - 1)


@functools.lru_cache(maxsize=32)
def _sampled_filter(n: int) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """The two Jarosz passes along one axis, at PDQ's 64 sample points, as a band: sample i is
    ``weights[i] @ values[index[i]]``; ``index`` is 64 x L (clipped; a padding weight is 0).

    The dense 64 x n rows of (box @ box) are built without the n x n matrix: the sampled rows of one box,
    then the second box applied on the right with a cumulative sum (output o averages inputs lo[o]..hi[o],
    so input c collects 1/count of each output whose window holds it)."""
    full = _window(n)
    lo, hi = _bounds(n, full)
    count = (hi - lo + 1).astype(np.float64)
    picks = np.array([int((i + 0.5) * n / _SIDE) for i in range(_SIDE)])
    first = np.zeros((_SIDE, n), dtype=np.float64)
    for row, p in enumerate(picks):
        first[row, lo[p]:hi[p] + 1] = 1.0 / count[p]
    sums = np.concatenate([np.zeros((_SIDE, 1)), np.cumsum(first / count, axis=1)], axis=1)
    c = np.arange(n)
    half = (full + 2) // 2
    first_o, last_o = np.maximum(0, c - half + 1), np.minimum(n - 1, c + (full - half))
    dense = sums[:, last_o + 1] - sums[:, first_o]
    dense[np.abs(dense) < 1e-12] = 0.0  # cumulative-sum residue outside the band
    support = [np.flatnonzero(row) for row in dense]
    width = max(len(cols) for cols in support)
    index = np.zeros((_SIDE, width), dtype=np.intp)
    weights = np.zeros((_SIDE, width), dtype=np.float32)
    for row, cols in enumerate(support):
        index[row, :len(cols)] = cols
        weights[row, :len(cols)] = dense[row, cols]
    return index, weights


def _filter_rows(luma: NDArray[np.float32]) -> NDArray[np.float32]:
    """64 x W: the row-axis passes at the 64 sample rows (elementwise numpy: no BLAS thread pool, whose
    spinning threads cost a 2-core worker a third of its throughput next to the model's own threads)."""
    index, weights = _sampled_filter(luma.shape[0])
    out = np.empty((_SIDE, luma.shape[1]), dtype=np.float32)
    for i in range(_SIDE):
        out[i] = (luma[index[i]] * weights[i][:, None]).sum(axis=0)
    return out


def _filter_cols(rows: NDArray[np.float32], width: int) -> NDArray[np.float64]:
    index, weights = _sampled_filter(width)
    block: NDArray[np.float64] = (rows[:, index] * weights[None, :, :]).sum(axis=2, dtype=np.float64)
    return block


def _dct_matrix() -> NDArray[np.float64]:
    scale = math.sqrt(2.0 / _SIDE)
    i = np.arange(1, 17, dtype=np.float64)[:, None]
    j = np.arange(_SIDE, dtype=np.float64)[None, :]
    return scale * np.cos((math.pi / 2 / _SIDE) * i * (2 * j + 1))


_DCT = _dct_matrix()


def _quality(block: NDArray[np.float64]) -> int:
    vertical = np.trunc((block[:-1, :] - block[1:, :]) * 100 / 255)
    horizontal = np.trunc((block[:, :-1] - block[:, 1:]) * 100 / 255)
    total = int(np.abs(vertical).sum() + np.abs(horizontal).sum())
    return min(100, total // 90)


def pdq_bits(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.bool_], int]:
    """PDQ bits ``k = 0..255`` (``k = 16 i + j`` of the 16 x 16 DCT block) and the quality, of an
    ``H x W x 3`` uint8 RGB array (a ``H x W`` array is taken as grey)."""
    if rgb.ndim == 2:
        luma = rgb.astype(np.float32)
    else:
        pixels = rgb[..., :3].astype(np.float32)  # converted once: uint8 times a float scalar converts per op
        luma = pixels[..., 0] * _LUMA[0] + pixels[..., 1] * _LUMA[1] + pixels[..., 2] * _LUMA[2]
    block = _filter_cols(_filter_rows(luma), luma.shape[1])
    quality = _quality(block)
    coefficients = (_DCT @ block @ _DCT.T).ravel()  # 16 x 64 x 64: under OpenBLAS's threading threshold
    median = np.partition(coefficients, 127)[127]  # Torben's median of 256 values: the 128th smallest
    return coefficients > median, quality


def pdq_hash(rgb: NDArray[np.uint8]) -> tuple[str, int]:
    """The canonical 64-digit hex PDQ hash (bit 255 first, as ThreatExchange writes it) and the quality."""
    bits, quality = pdq_bits(rgb)
    return np.packbits(bits[::-1]).tobytes().hex(), quality
