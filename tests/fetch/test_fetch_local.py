"""file:// under a root and inline data: URLs, through the pure functions and through ImageFetcher."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from vitguard.errors import FetchError
from vitguard.fetch import ImageFetcher
from vitguard.fetch.local import decode_data_url, read_file_url
from vitguard.settings import FetchSettings


def _png(size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "images"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "a.png").write_bytes(_png())
    (tmp_path / "secret.txt").write_text("top secret")
    return r


def _reason(fn: object, *args: object) -> str:
    with pytest.raises(FetchError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.reason


def test_reads_a_file_under_the_root(root: Path) -> None:
    data = read_file_url(f"file://{root}/sub/a.png", root, 1 << 20)
    assert Image.open(io.BytesIO(data)).size == (16, 16)
    assert read_file_url(f"file://localhost{root}/sub/a.png", root, 1 << 20) == data
    assert read_file_url(f"file://{root}/sub/%61.png", root, 1 << 20) == data  # percent-encoded name


def test_refuses_dotdot_and_symlink_escapes(root: Path, tmp_path: Path) -> None:
    assert _reason(read_file_url, f"file://{root}/../secret.txt", root, 1 << 20) == "file_outside_root"
    assert _reason(read_file_url, f"file://{root}/sub/%2e%2e/%2e%2e/secret.txt", root, 1 << 20) == "file_outside_root"
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert _reason(read_file_url, f"file://{root}/link.txt", root, 1 << 20) == "file_outside_root"
    (root / "dirlink").symlink_to(tmp_path)
    assert _reason(read_file_url, f"file://{root}/dirlink/secret.txt", root, 1 << 20) == "file_outside_root"
    assert _reason(read_file_url, "file:///etc/passwd", root, 1 << 20) == "file_outside_root"


def test_root_prefix_trick_is_outside(tmp_path: Path, root: Path) -> None:
    sibling = tmp_path / "images-evil"
    sibling.mkdir()
    (sibling / "x.png").write_bytes(_png())
    assert _reason(read_file_url, f"file://{sibling}/x.png", root, 1 << 20) == "file_outside_root"


def test_no_root_refuses_every_file(root: Path) -> None:
    assert _reason(read_file_url, f"file://{root}/sub/a.png", None, 1 << 20) == "file_outside_root"


def test_missing_directory_remote_and_large_files(root: Path) -> None:
    assert _reason(read_file_url, f"file://{root}/nope.png", root, 1 << 20) == "fetch_not_found"
    assert _reason(read_file_url, f"file://{root}/sub", root, 1 << 20) == "fetch_not_found"
    assert _reason(read_file_url, "file://fileserver/share/a.png", root, 1 << 20) == "unsupported_reference"
    size = (root / "sub" / "a.png").stat().st_size
    assert _reason(read_file_url, f"file://{root}/sub/a.png", root, size - 1) == "fetch_too_large"
    assert len(read_file_url(f"file://{root}/sub/a.png", root, size)) == size


def test_symlink_loop_is_a_clean_error(root: Path) -> None:
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    assert _reason(read_file_url, f"file://{root}/loop1", root, 1 << 20) in {"fetch_failed", "fetch_not_found"}


def test_fifo_is_not_read(root: Path) -> None:
    os.mkfifo(root / "pipe")
    assert _reason(read_file_url, f"file://{root}/pipe", root, 1 << 20) == "fetch_not_found"


def test_data_url_round_trip_and_limits() -> None:
    png = _png()
    ref = "data:image/png;base64," + base64.b64encode(png).decode()
    assert decode_data_url(ref, len(png)) == png
    assert _reason(decode_data_url, ref, len(png) - 1) == "inline_too_large"
    assert _reason(decode_data_url, "data:image/png;base64,@@@@", 1024) == "invalid_base64"
    assert _reason(decode_data_url, "data:image/png;base64,abc", 1024) == "invalid_base64"  # bad padding
    assert _reason(decode_data_url, "data:image/png;base64,aGVs\nbG8=", 1024) == "invalid_base64"
    assert _reason(decode_data_url, "data:text/plain;base64,aGVsbG8=", 1024) == "unsupported_reference"
    assert _reason(decode_data_url, "data:image/png,rawbytes", 1024) == "unsupported_reference"


def test_oversized_inline_payload_is_refused_before_decoding() -> None:
    # not valid base64 at all: only a length check can produce inline_too_large here
    ref = "data:image/png;base64," + "!" * 5000
    assert _reason(decode_data_url, ref, 1024) == "inline_too_large"


async def test_fetcher_dispatches_file_data_and_unknown_schemes(root: Path) -> None:
    png = _png()
    settings = FetchSettings(file_root=root, max_inline_bytes=len(png))
    async with ImageFetcher(settings) as fetcher:
        got = await fetcher.fetch(f"file://{root}/sub/a.png")
        assert got.data == png and got.source == "file" and got.elapsed_ms >= 0
        inline = await fetcher.fetch("data:image/png;base64," + base64.b64encode(png).decode())
        assert inline.data == png and inline.source == "data"
        for ref, reason in [
            ("ftp://example.com/a.png", "unsupported_reference"),
            ("gopher://x", "unsupported_reference"),
            ("/etc/passwd", "unsupported_reference"),
            (f"file://{root}/../secret.txt", "file_outside_root"),
            ("data:image/png;base64,%%%", "invalid_base64"),
        ]:
            with pytest.raises(FetchError) as info:
                await fetcher.fetch(ref)
            assert info.value.reason == reason, ref
