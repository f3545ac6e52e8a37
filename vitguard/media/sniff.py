"""What kind of media a byte string holds, from its magic bytes alone (no decoding)."""

from __future__ import annotations

from typing import Literal

__all__ = ["MediaKind", "media_kind"]

MediaKind = Literal["video", "maybe_animated", "still"]
"""``video``: a container PyAV reads; ``maybe_animated``: GIF, PNG (APNG) or WebP, animated or not;
``still``: anything else (left to the still-image decoder, which refuses what it cannot read)."""

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def media_kind(data: bytes) -> MediaKind:
    """MP4/MOV/3GP (``ftyp`` box, or an old QuickTime atom), Matroska/WebM (EBML) and AVI are video; HEIF and
    AVIF (``ftyp`` with an image brand) are stills."""
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
    return "still"
