"""What kind of media a byte string holds, from its magic bytes alone (no decoding)."""

from __future__ import annotations

from typing import Literal

__all__ = ["SNIFF_BYTES", "MediaKind", "media_kind"]

SNIFF_BYTES = 1024
"""Enough of the start of a file for :func:`media_kind`."""

MediaKind = Literal["video", "maybe_animated", "still"]
"""``video``: a container PyAV reads; ``maybe_animated``: GIF, PNG (APNG) or WebP, animated or not;
``still``: anything else (left to the still-image decoder, which refuses what it cannot read)."""

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def media_kind(data: bytes) -> MediaKind:
    """MP4/MOV/3GP (``ftyp`` box, or an old QuickTime atom), Matroska/WebM (EBML), AVI and MPEG-TS are video;
    HEIF and AVIF (``ftyp`` with an image brand) are stills. Give it the first :data:`SNIFF_BYTES` bytes (a
    transport stream shows from its third packet)."""
    head = data[:16]
    if head[4:8] == b"ftyp":
        return "still" if head[8:12] in _HEIF_BRANDS else "video"
    if head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    if head[4:8] in _QUICKTIME_ATOMS and int.from_bytes(head[:4], "big") >= 8:
        return "video"
    if head[:6] in (b"GIF87a", b"GIF89a") or head[:8] == b"\x89PNG\r\n\x1a\n" or (
            head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "maybe_animated"
    if _transport_stream(data):
        return "video"
    return "still"


def _transport_stream(data: bytes) -> bool:
    """MPEG-TS (HLS segments, broadcast captures): the sync byte 0x47 opening three packets in a row, of 188
    bytes, or 192 in M2TS (Blu-ray, AVCHD: a 4-byte time code before each)."""
    return any(len(data) > start + 2 * size and all(data[start + k * size] == 0x47 for k in range(3))
               for start, size in ((0, 188), (4, 192)))
