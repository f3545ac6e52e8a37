"""Tolerant decoding of many files: order kept, failures returned with reason codes, never raised."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from vitguard.errors import ImageDecodeError
from vitguard.model.folder import UNREADABLE_REASON, decode_files, decode_in_batches


def _prepare(data: bytes) -> NDArray[np.float32]:
    """Stands in for ``Classifier.prepare``: b"bad..." is not an image, anything else decodes to its length."""
    if data.startswith(b"bad"):
        raise ImageDecodeError("unsupported_image", "not an image this test can decode")
    return np.full((3, 2, 2), len(data), dtype=np.float32)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for i, content in enumerate([b"a", b"bad", b"ccc", None, b"dddd"]):
        path = tmp_path / f"{i}.img"
        if content is not None:
            path.write_bytes(content)
        paths.append(path)
    return paths


def test_decode_files_keeps_order_and_reports_each_failure(files: list[Path]) -> None:
    result = decode_files(_prepare, files, workers=3)
    assert [d.index for d in result.decoded] == [0, 2, 4]
    assert [d.path for d in result.decoded] == [files[0], files[2], files[4]]
    assert [float(d.array[0, 0, 0]) for d in result.decoded] == [1.0, 3.0, 4.0]
    assert all(d.decode_ms >= 0 for d in result.decoded)
    assert result.stack().shape == (3, 3, 2, 2)
    (bad, missing) = result.failed
    assert (bad.index, bad.reason) == (1, "unsupported_image")
    assert bad.message == "unsupported_image: not an image this test can decode"
    assert (missing.index, missing.reason) == (3, UNREADABLE_REASON)
    assert missing.message == "cannot read: No such file or directory"


def test_decode_files_uses_given_bytes_indices_and_pool(files: list[Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    done: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        result = decode_files(_prepare, [files[3], files[1]], contents=[b"xy", b"zzz"], indices=[7, 9], pool=pool,
                              progress=done.append)
        assert not pool._shutdown, "a pool the caller passed stays open"  # type: ignore[attr-defined]
    assert [(d.index, float(d.array[0, 0, 0])) for d in result.decoded] == [(7, 2.0), (9, 3.0)]
    assert not result.failed and done == [1, 1]
    with pytest.raises(ValueError, match="one entry per path"):
        decode_files(_prepare, files, contents=[b"a"])


def test_decode_runs_in_threads(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=5)

    def prepare(data: bytes) -> NDArray[np.float32]:
        barrier.wait()  # deadlocks (and times out) unless two files decode at the same time
        return _prepare(data)

    paths = [tmp_path / "a", tmp_path / "b"]
    for p in paths:
        p.write_bytes(b"x")
    assert len(decode_files(prepare, paths, workers=2).decoded) == 2


def test_decode_in_batches_covers_every_file_once(files: list[Path]) -> None:
    batches = list(decode_in_batches(_prepare, files, batch_size=2))
    assert len(batches) == 3
    assert [[d.index for d in b.decoded] for b in batches] == [[0], [2], [4]]
    assert [[f.index for f in b.failed] for b in batches] == [[1], [3], []]
    assert list(decode_in_batches(_prepare, [], batch_size=4)) == []
    with pytest.raises(ValueError):
        list(decode_in_batches(_prepare, files, batch_size=0))
