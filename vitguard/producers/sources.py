"""Where ``vitguard publish`` gets events: a directory of images, a JSONL file of events, or URLs.

Each source yields :class:`SourceItem` s: an event ready to publish, or the local error that stopped one
(an unreadable image, an inline image over the limit, a JSONL line that breaks the contract). Errors are
items, not exceptions, so one bad file is counted in the summary instead of aborting the run; problems
with the source itself (a directory or file that cannot be read at all) raise :class:`SourceError`.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from pydantic import ValidationError

from vitguard.errors import InputError, VitguardError
from vitguard.schemas.events import ImageEvent, parse_image_event

__all__ = [
    "IMAGE_SUFFIXES",
    "IdFrom",
    "SourceError",
    "SourceItem",
    "count_jsonl_lines",
    "image_files",
    "items_from_directory",
    "items_from_jsonl",
    "items_from_urls",
    "url_content_id",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
"""File name endings ``publish`` treats as images in a directory (case-insensitive)."""

IdFrom = Literal["sha256", "name"]

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/\-]")


class SourceError(VitguardError):
    """An event source as a whole cannot be read (missing directory, unreadable JSONL file)."""


@dataclass(frozen=True)
class SourceItem:
    """One thing to publish: ``event``, or the ``error`` that stopped it; ``origin`` says where it came from."""

    origin: str
    event: ImageEvent | None = None
    error: InputError | None = None
    reason: str | None = None
    """Summary bucket of ``error``: its reason code, or a publish-side reason such as ``unreadable_file``."""


def image_files(directory: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``directory``, sorted, so a re-run publishes in the same order.

    Raises:
        SourceError: the directory does not exist or cannot be listed.
    """
    if not directory.is_dir():
        raise SourceError(f"{directory} is not a directory")
    pattern = "**/*" if recursive else "*"
    try:
        return sorted(p for p in directory.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise SourceError(f"cannot list {directory}: {exc.strerror or exc}") from exc


def items_from_directory(
    directory: Path,
    *,
    recursive: bool = False,
    inline: bool = False,
    max_inline_bytes: int = 1024 * 1024,
    tenant: str = "default",
    id_from: IdFrom = "sha256",
    files: Iterable[Path] | None = None,
) -> Iterator[SourceItem]:
    """Events for the images in ``directory``: ``file://`` references, or inline ``data:`` URLs.

    ``content_id`` is ``sha256-<first 32 hex of the bytes>`` (the same image always gets the same id, so
    it lands on the same partition and the same vector-store row) or, with ``id_from="name"``, the path
    relative to the directory with characters outside the id alphabet replaced by ``_``. The relative path
    is kept in ``metadata["filename"]``. Workers read ``file://`` references only under their
    ``VITGUARD_FETCH_FILE_ROOT``; inline images must fit the workers' ``max_inline_bytes``.
    """
    root = directory.resolve()
    for path in files if files is not None else image_files(directory, recursive):
        rel = path.resolve().relative_to(root).as_posix() if path.resolve().is_relative_to(root) else path.name
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield SourceItem(
                rel,
                error=InputError("fetch_not_found", f"cannot read {path}: {exc.strerror or exc}"),
                reason="unreadable_file",
            )
            continue
        if inline and len(data) > max_inline_bytes:
            yield SourceItem(
                rel,
                error=InputError("inline_too_large", f"{rel} is {len(data)} bytes, inline limit {max_inline_bytes}"),
                reason="inline_too_large",
            )
            continue
        content_id = _safe_id(rel) if id_from == "name" else "sha256-" + hashlib.sha256(data).hexdigest()[:32]
        ref = _data_url(path, data) if inline else path.resolve().as_uri()
        yield _build(rel, content_id=content_id, image_ref=ref, tenant=tenant, metadata={"filename": rel[:1024]})


def items_from_jsonl(stream: IO[str], name: str) -> Iterator[SourceItem]:
    """One event per non-blank line of ``stream``; ``name`` labels origins as ``name:LINE``."""
    try:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            origin = f"{name}:{number}"
            try:
                yield SourceItem(origin, event=parse_image_event(line))
            except InputError as exc:
                yield SourceItem(origin, error=exc, reason=exc.reason)
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"cannot read {name}: {exc}") from exc


def count_jsonl_lines(path: Path) -> int:
    """Non-blank lines of a JSONL file (for the progress bar's total).

    Raises:
        SourceError: the file cannot be read.
    """
    try:
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc


def url_content_id(url: str) -> str:
    """A stable content id for an image known only by its URL."""
    return "url-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def items_from_urls(urls: Iterable[str], *, tenant: str = "default") -> Iterator[SourceItem]:
    """Events for image URLs given on the command line (content id: :func:`url_content_id`)."""
    for url in urls:
        yield _build(url, content_id=url_content_id(url), image_ref=url, tenant=tenant, metadata={})


def _build(origin: str, **fields: object) -> SourceItem:
    try:
        return SourceItem(origin, event=ImageEvent.model_validate(fields))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "event"
        return SourceItem(
            origin, error=InputError("schema_violation", f"{origin}: {where}: {err['msg']}"), reason="schema_violation"
        )


def _safe_id(rel: str) -> str:
    cleaned = _ID_UNSAFE.sub("_", rel)
    if not cleaned[:1].isalnum():
        cleaned = "f" + cleaned
    if len(cleaned) > 128:
        cleaned = cleaned[:95] + "-" + hashlib.sha256(rel.encode()).hexdigest()[:32]
    return cleaned


def _data_url(path: Path, data: bytes) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "image/octet-stream"
    if not mime.startswith("image/"):
        mime = "image/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
