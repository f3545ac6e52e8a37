"""Meta's PDQ photo hash in numpy: the reference algorithm as three small banded products.

``pdqhash.compute`` (the C++ reference wrapped in Cython) costs 9-13 ms for a 640 x 640 image on this
project's CPUs, about open_nsfw's inference, and holds the GIL all along: half of it is a float64 luma
conversion, the rest is the Jarosz filter over every pixel. PDQ only samples that filtered image at 64 x 64
points, though, and every step up to the sampling is linear, so the same numbers come from

    RGB (H x W x 3)  ->  Rows (64 x H) @ RGB  ->  luma  ->  . @ Cols (W x 64)  ->  D (16 x 64) @ . @ D^T  ->  bits

where ``Rows``/``Cols`` are the sampled rows of the two-pass box filters (bands about ``2 H / 128`` wide,
cached per image size) and ``D`` is PDQ's 16 x 64 DCT matrix. 0.6 ms for a 640 x 649 photo (1.5 ms
before the row pass became one ``einsum``), in elementwise numpy that releases the GIL and uses no BLAS
thread pool.

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

__all__ = ["MIN_SIDE", "TIE_MARGIN", "pdq_bits", "pdq_hash"]

_SIDE = 64
MIN_SIDE = _SIDE
"""Below 64 px a side PDQ samples pixels more than once, DCT coefficients tie at the median and rounding
picks bits: :class:`~vitguard.banks.signal.PdqSignal` hashes those with the C++ reference itself."""
TIE_MARGIN = 1e-6
"""A coefficient this close to the median (relative to the largest coefficient) is a tie that only rounding
decides: the reference sums in float32 (~1e-7 relative), so its bit is its rounding's, and no other order of
sums reproduces it. Real photographs stay far from it (the closest measured: 3e-6, ``retina.jpg`` at 2048 px);
synthetic patterns meet it (``chessboard_RGB.png`` upscaled to 4032 px: 1e-18, 4 bits from ``pdqhash``).
:func:`pdq_hash` answers None for those, and :class:`~vitguard.banks.signal.PdqSignal` asks the reference."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _window(dimension: int) -> int:
    """``computeJaroszFilterWindowSize(dimension, 64)``."""
    return (dimension + 2 * _SIDE - 1) // (2 * _SIDE)


def _bounds(n: int, full: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``box1DFloat``'s window of each output o: inputs lo[o]..hi[o] (shrunk at the edges)."""
    half = (full + 2) // 2
    o = np.arange(n)
    return np.maximum(0, o - (full - half)), np.minimum(n - 1, o + half - 1)


@functools.lru_cache(maxsize=256)
def _sampled_filter(n: int) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """The two Jarosz passes along one axis, at PDQ's 64 sample points, as a band: sample i is
    ``weights[i] @ values[index[i]]`` (``index`` 64 x L, clipped to the axis; a padding weight is 0).

    Sample point p averages box outputs o = lo[p]..hi[p], and each of those averages inputs lo[o]..hi[o]:
    input c gets ``sum of 1 / (count[p] count[o])`` over the outputs whose window holds it, so the band
    starts at lo[lo[p]] and is at most ``2 window - 1`` wide. Built in a few array operations (the worker
    sees images of every size)."""
    full = _window(n)
    lo, hi = _bounds(n, full)
    count = (hi - lo + 1).astype(np.float64)
    picks = ((np.arange(_SIDE) + 0.5) * n / _SIDE).astype(np.intp)
    width = 2 * full - 1
    start = lo[lo[picks]]  # (64,)
    outputs = lo[picks][:, None] + np.arange(full)[None, :]  # (64, K): the first box's outputs, padded
    valid = outputs <= hi[picks][:, None]
    outputs = np.minimum(outputs, n - 1)
    share = np.where(valid, 1.0 / (count[picks][:, None] * count[outputs]), 0.0)  # (64, K)
    column = start[:, None] + np.arange(width)[None, :]  # (64, L)
    inside = (lo[outputs][:, :, None] <= column[:, None, :]) & (column[:, None, :] <= hi[outputs][:, :, None])
    weights = (share[:, :, None] * inside).sum(axis=1)  # (64, L)
    return np.minimum(column, n - 1), weights.astype(np.float32)


_GATHER_BYTES = 4 << 20
"""The most bytes of gathered band rows :func:`_filter_rows` holds at once (a few sample rows of a large image)."""


def _filter_rows(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """64 x W x C: the row-axis passes at the 64 sample rows, on the pixels as they are (luma is linear, so
    it is taken after, on 64 rows instead of all). Each sample row's band is gathered and weighted in one
    ``einsum`` over a few sample rows at a time: the same products summed in the same order as a loop over
    the rows (bit for bit), in a quarter of its time. Elementwise numpy, no BLAS: BLAS's thread pool would
    spin on the cores the model's own threads need (a third of a 2-core worker's throughput, measured)."""
    index, weights = _sampled_filter(rgb.shape[0])
    band = index.shape[1]
    flat = rgb.reshape(rgb.shape[0], -1)  # H x (W C)
    out = np.empty((_SIDE, flat.shape[1]), dtype=np.float32)
    step = max(1, _GATHER_BYTES // max(1, band * flat.shape[1]))
    for first in range(0, _SIDE, step):
        last = min(_SIDE, first + step)
        np.einsum("plk,pl->pk", flat[index[first:last]], weights[first:last], dtype=np.float32,
                  out=out[first:last])
    return out.reshape(_SIDE, *rgb.shape[1:])


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


def pdq_bits(rgb: NDArray[np.uint8]) -> tuple[NDArray[np.bool_], int] | None:
    """PDQ bits ``k = 0..255`` (``k = 16 i + j`` of the 16 x 16 DCT block) and the quality, of an
    ``H x W x 3`` uint8 RGB array (a ``H x W`` array is taken as grey); None when a coefficient ties with
    the median (:data:`TIE_MARGIN`)."""
    rows = _filter_rows(rgb if rgb.ndim == 2 else rgb[..., :3])
    if rows.ndim == 3:
        rows = rows[..., 0] * _LUMA[0] + rows[..., 1] * _LUMA[1] + rows[..., 2] * _LUMA[2]
    block = _filter_cols(rows, rgb.shape[1])
    quality = _quality(block)
    coefficients = (_DCT @ block @ _DCT.T).ravel()  # 16 x 64 x 64: under OpenBLAS's threading threshold
    ordered = np.partition(coefficients, (126, 127, 128))
    median = ordered[127]  # Torben's median of 256 values: the 128th smallest
    nearest = min(median - ordered[126], ordered[128] - median)
    if nearest <= TIE_MARGIN * float(np.abs(coefficients).max()):
        return None
    return coefficients > median, quality


def pdq_hash(rgb: NDArray[np.uint8]) -> tuple[str, int] | None:
    """The canonical 64-digit hex PDQ hash (bit 255 first, as ThreatExchange writes it) and the quality;
    None when rounding decides a bit (:data:`TIE_MARGIN`: ask the reference)."""
    decided = pdq_bits(rgb)
    if decided is None:
        return None
    bits, quality = decided
    return np.packbits(bits[::-1]).tobytes().hex(), quality
