"""The two references that need no network: ``file://`` under a root directory and inline ``data:`` URLs.

Both are plain synchronous functions so they can be unit-tested directly; the fetcher runs file reads in
a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from vitguard.errors import FetchError
from vitguard.schemas.events import INLINE_MEDIA_TYPES

__all__ = ["decode_data_url", "read_file_url", "resolve_file_url"]

_BASE64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


@functools.lru_cache(maxsize=16)
def _real_root(root: Path) -> Path:
    """The root's real path, resolved once per process (the root is configuration; what lies under it is
    resolved on every read)."""
    return root.resolve()


def resolve_file_url(ref: str, root: Path | None) -> Path:
    """The real path a ``file://`` URL names, proven to lie under ``root``.

    Symlinks and ``..`` are resolved *before* the containment check, so neither can escape the root.

    Raises:
        FetchError: ``file_outside_root`` when no root is configured or the path escapes it;
            ``unsupported_reference`` for a remote host (``file://server/share``) or a relative path.
    """
    if root is None:
        raise FetchError("file_outside_root", "file:// references are disabled (VITGUARD_FETCH_FILE_ROOT unset)")
    parts = urlsplit(ref)
    if parts.netloc not in ("", "localhost"):
        raise FetchError("unsupported_reference", f"file:// URL names a remote host {parts.netloc!r}")
    raw = unquote(parts.path)
    if not raw.startswith("/") or "\x00" in raw:
        raise FetchError("unsupported_reference", "file:// URL must carry an absolute path")
    try:
        real_root = _real_root(root)
        target = Path(raw).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, over-long names
        raise FetchError("fetch_failed", f"cannot resolve {raw}: {exc}") from exc
    if not target.is_relative_to(real_root):
        raise FetchError("file_outside_root", f"{raw} is outside the allowed root")
    return target


def read_file_url(ref: str, root: Path | None, max_bytes: int) -> bytes:
    """Read the file a ``file://`` URL names, at most ``max_bytes`` (blocking: call it in a thread).

    Raises:
        FetchError: as :func:`resolve_file_url`, plus ``fetch_not_found`` (missing or not a regular
            file), ``fetch_too_large`` and ``fetch_failed`` (permission or I/O error).
    """
    path = resolve_file_url(ref, root)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise FetchError("fetch_not_found", f"no such file {path}") from exc
    except OSError as exc:
        raise FetchError("fetch_failed", f"cannot open {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FetchError("fetch_not_found", f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise FetchError("fetch_too_large", f"{path} is {st.st_size} bytes, limit {max_bytes}")
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # owned by fh now
            data = fh.read(max_bytes + 1)  # a file growing under us is still capped
    except OSError as exc:
        raise FetchError("fetch_failed", f"cannot read {path}: {exc.strerror}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise FetchError("fetch_too_large", f"{path} is larger than {max_bytes} bytes")
    return data


def decode_data_url(ref: str, max_bytes: int) -> bytes:
    """Decode an inline ``data:image/<type>;base64,<payload>`` (or ``data:video/...``) URL.

    The encoded length is checked before decoding so an oversized payload costs no memory or CPU.

    Raises:
        FetchError: ``unsupported_reference`` (not a base64 image data URL), ``inline_too_large``,
            ``invalid_base64``.
    """
    header, sep, payload = ref.partition(",")
    if (not sep or not header.startswith("data:") or not header[5:].startswith(INLINE_MEDIA_TYPES)
            or not header.endswith(";base64")):
        raise FetchError("unsupported_reference",
                         "inline media must be data:image/<type>;base64,<data> or data:video/<type>;base64,<data>")
    max_encoded = 4 * -(-max_bytes // 3)  # base64 length of max_bytes bytes, padding included
    if len(payload) > max_encoded:
        raise FetchError(
            "inline_too_large", f"inline image of ~{len(payload) * 3 // 4} bytes, limit {max_bytes}"
        )
    raw = payload.encode("ascii", errors="replace")
    if not raw or not _BASE64_ALPHABET.issuperset(raw):
        raise FetchError("invalid_base64", "inline image payload is not standard base64")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FetchError("invalid_base64", f"inline image payload is not valid base64: {exc}") from exc
    if not data:
        raise FetchError("invalid_base64", "inline image payload decodes to nothing")
    if len(data) > max_bytes:
        raise FetchError("inline_too_large", f"inline image of {len(data)} bytes, limit {max_bytes}")
    return data
