"""Decoding many image files at once, tolerantly: a thread pool runs the classifier's ``prepare`` on each.

The offline tools (``vitguard classify``/``embed``, fine-tuning, evaluation, feature extraction) read a list
or folder of files where some are bound to be unreadable or not images. None of them should stop for
that: a file that fails becomes an :class:`Undecodable` with the pipeline's reason code, and the caller
reports it. Decoding (PIL + the eval transform) releases the GIL for most of its time, so a few threads
keep the model fed. Results keep the input order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import ImageDecodeError

__all__ = [
    "DEFAULT_DECODE_WORKERS",
    "UNREADABLE_REASON",
    "DecodeResult",
    "Decoded",
    "Undecodable",
    "decode_files",
    "decode_in_batches",
]

DEFAULT_DECODE_WORKERS = 2
"""Threads decoding at once; a couple per free core is plenty (the model is the slower stage)."""

UNREADABLE_REASON = "not_an_image"
"""Reason code of a file that cannot be read at all (missing, a directory, no permission)."""

Prepare = Callable[[bytes], NDArray[np.float32]]
"""``Classifier.prepare``: encoded bytes to one preprocessed array; raises ``ImageDecodeError``."""


@dataclass(frozen=True)
class Decoded:
    """One file, decoded and preprocessed.

    Attributes:
        index: its position in the ``paths`` given.
        path: the file.
        array: ``prepare``'s output, ready to stack into a batch.
        decode_ms: time spent reading and preparing it.
    """

    index: int
    path: Path
    array: NDArray[np.float32]
    decode_ms: float


@dataclass(frozen=True)
class Undecodable:
    """One file that was left out.

    Attributes:
        index: its position in the ``paths`` given.
        path: the file.
        reason: machine-readable code: the ``ImageDecodeError`` reason, or ``not_an_image`` for a file that
            cannot be read.
        message: one line for people (``cannot read: No such file or directory``, the decode error's text).
    """

    index: int
    path: Path
    reason: str
    message: str


@dataclass
class DecodeResult:
    """What became of a list of files, both lists in input order."""

    decoded: list[Decoded] = field(default_factory=list)
    failed: list[Undecodable] = field(default_factory=list)

    def stack(self) -> NDArray[np.float32]:
        """The decoded arrays as one batch ``(N, *input_size)`` (call only when ``decoded`` is not empty)."""
        return np.stack([d.array for d in self.decoded])


def _decode_one(prepare: Prepare, index: int, path: Path, data: bytes | None) -> Decoded | Undecodable:
    started = time.perf_counter()
    try:
        array = prepare(path.read_bytes() if data is None else data)
    except OSError as exc:
        return Undecodable(index, path, UNREADABLE_REASON, f"cannot read: {exc.strerror or exc}")
    except ImageDecodeError as exc:
        return Undecodable(index, path, exc.reason, str(exc))
    return Decoded(index, path, array, (time.perf_counter() - started) * 1000)


def decode_files(
    prepare: Prepare,
    paths: Sequence[Path],
    *,
    contents: Sequence[bytes] | None = None,
    indices: Sequence[int] | None = None,
    pool: Executor | None = None,
    workers: int = DEFAULT_DECODE_WORKERS,
    progress: Callable[[int], Any] | None = None,
) -> DecodeResult:
    """Decode every file with ``prepare``; the ones that fail are returned, never raised.

    Args:
        prepare: usually ``classifier.prepare``.
        paths: the files.
        contents: their bytes, when the caller has read them already (e.g. to hash them); else each file is
            read in the pool.
        indices: the positions to report (default ``0..len(paths)-1``), for a caller decoding a slice.
        pool: an executor to reuse across calls; else one with ``workers`` threads lives for this call.
        progress: called with 1 as each file is done (e.g. ``tqdm.update``).
    """
    if contents is not None and len(contents) != len(paths):
        raise ValueError("contents must hold one entry per path")
    positions = list(range(len(paths))) if indices is None else list(indices)
    data: Sequence[bytes | None] = contents if contents is not None else [None] * len(paths)
    result = DecodeResult()
    own = pool is None
    executor = ThreadPoolExecutor(max_workers=max(1, workers)) if pool is None else pool
    try:
        for outcome in executor.map(lambda job: _decode_one(prepare, *job), zip(positions, paths, data, strict=True)):
            if isinstance(outcome, Decoded):
                result.decoded.append(outcome)
            else:
                result.failed.append(outcome)
            if progress is not None:
                progress(1)
    finally:
        if own:
            executor.shutdown()
    return result


def decode_in_batches(
    prepare: Prepare,
    paths: Sequence[Path],
    *,
    batch_size: int,
    workers: int = DEFAULT_DECODE_WORKERS,
) -> Iterator[DecodeResult]:
    """:func:`decode_files` over consecutive slices of ``batch_size`` paths, one pool for all of them.

    Each result covers one slice (indices are positions in the whole ``paths``), so a caller can run the
    model on a slice while holding at most ``batch_size`` decoded images.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            stop = min(start + batch_size, len(paths))
            yield decode_files(prepare, paths[start:stop], indices=range(start, stop), pool=pool)
