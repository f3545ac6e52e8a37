"""Real animations and videos made from real photos, for tests, the demo and the benchmark.

Every generator takes a list of photo frames (PIL images) and encodes them with Pillow (GIF, WebP, APNG) or
PyAV (MP4/H.264, WebM/VP9, ...). :func:`photo_frames` turns a base photo into a short "clip" (a slow pan over
it) with another photo cut in at one frame: the hidden frame a moderation system must find. The bad-media
helpers produce what uploads really look like when they go wrong: truncated files, a codec FFmpeg has no
decoder for, a container with no frame at all.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "HIDDEN_BASE",
    "HIDDEN_PHOTO",
    "HIDDEN_THRESHOLD",
    "animated_image",
    "negative_time_video",
    "photo_frames",
    "truncated",
    "unknown_codec_video",
    "video_bytes",
    "zero_frame_video",
]


def photo_frames(
    base: Path | Image.Image,
    count: int,
    *,
    hidden: Path | Image.Image | None = None,
    hidden_at: int | None = None,
    size: tuple[int, int] = (160, 120),
) -> list[Image.Image]:
    """``count`` frames panning slowly across ``base``; frame ``hidden_at`` (default: the middle) is ``hidden``."""
    src = _rgb(base)
    w, h = src.size
    crop_w, crop_h = int(w * 0.8), int(h * 0.8)
    frames = []
    for i in range(count):
        x = round((w - crop_w) * i / max(1, count - 1))
        frames.append(src.crop((x, (h - crop_h) // 2, x + crop_w, (h - crop_h) // 2 + crop_h)).resize(size))
    if hidden is not None:
        at = count // 2 if hidden_at is None else hidden_at
        frames[at] = _rgb(hidden).resize(size)
    return frames


def animated_image(frames: Sequence[Image.Image], fmt: str = "GIF", duration_ms: int = 100) -> bytes:
    """An animated GIF, WebP or PNG (APNG) of ``frames``, ``duration_ms`` each, looping."""
    out = io.BytesIO()
    first, *rest = list(frames)
    extra = {"lossless": True} if fmt.upper() == "WEBP" else {}
    first.save(out, fmt, save_all=True, append_images=rest, duration=duration_ms, loop=0, **extra)
    return out.getvalue()


def video_bytes(
    frames: Sequence[Image.Image],
    *,
    fps: int = 10,
    container: str = "mp4",
    codec: str = "libx264",
    repeat: int = 1,
    start_s: float | None = None,
) -> bytes:
    """A video of ``frames`` (each shown ``repeat`` frames long) at ``fps``, encoded with PyAV; with
    ``start_s``, its first frame is stamped at that time (a segment cut from a live stream)."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as box:
        stream: Any = box.add_stream(codec, rate=Fraction(fps))  # a VideoStream for a video codec
        width, height = frames[0].size
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        pts = round(start_s * fps) if start_s is not None else None
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            for _ in range(repeat):
                if pts is not None:
                    frame.pts, frame.time_base, pts = pts, Fraction(1, fps), pts + 1
                for packet in stream.encode(frame):
                    box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return out.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` of ``data``: an upload cut off mid-way."""
    return data[: max(1, int(len(data) * keep))]


def unknown_codec_video(frames: Sequence[Image.Image]) -> bytes:
    """A Matroska file whose video track names a codec FFmpeg has no decoder for (the H.264 codec id
    rewritten to an unregistered one of the same length)."""
    data = video_bytes(frames, container="matroska")
    tag = b"V_MPEG4/ISO/AVC"
    if tag not in data:
        raise RuntimeError("the Matroska muxer no longer writes the H.264 codec id")
    return data.replace(tag, b"V_VITGUARD/NONE", 1)


def negative_time_video(frames: Sequence[Image.Image], shift_s: float = 3.0, **video: Any) -> bytes:
    """A Matroska file (:func:`video_bytes` with ``video``) whose frames decode ``shift_s`` seconds early, from
    below zero: the track's 7-byte ``Language "und"`` element rewritten, in place, to a ``CodecDelay``."""
    language = b"\x22\xb5\x9c\x83und"
    data = video_bytes(frames, container="matroska", **video)
    if language not in data:
        raise RuntimeError("the Matroska muxer no longer writes the track's language")
    delay = b"\x56\xaa\x84" + int(shift_s * 1e9).to_bytes(4, "big")
    return data.replace(language, delay, 1)


def zero_frame_video() -> bytes:
    """A WebM file with a video track and not one frame in it."""
    import av

    out = io.BytesIO()
    with av.open(out, mode="w", format="webm") as box:
        stream: Any = box.add_stream("libvpx-vp9", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        box.start_encoding()
    return out.getvalue()


def _rgb(image: Path | Image.Image) -> Image.Image:
    return (Image.open(image) if isinstance(image, Path) else image).convert("RGB")


HIDDEN_BASE = "chelsea.png"
"""The photo the test clips pan over (open_nsfw scores its frames below 0.001)."""
HIDDEN_PHOTO = "astronaut.png"
"""The photo cut in as the hidden frame (open_nsfw: ~0.007-0.03 as a 160x120 frame, GIF palette or not)."""
HIDDEN_THRESHOLD = 0.002
"""A test policy threshold under which, with open_nsfw, the hidden frame and only it counts as unsafe."""


def restate_duration(data: bytes, seconds: float) -> bytes:
    """``data`` (a Matroska/WebM or MP4/MOV file) with its header's stated duration rewritten to ``seconds``,
    its frames untouched: the container that lies about its length (Matroska's ``Duration`` element; MP4's
    ``mvhd``, ``mdhd`` and ``tkhd`` durations). Raises ``ValueError`` when no duration field is found."""
    import struct

    out = bytearray(data)
    found = 0
    at = out.find(b"\x44\x89")  # Matroska Duration: a float in TimecodeScale units (1 ms by default)
    while at != -1:
        size = out[at + 2]
        if size in (0x84, 0x88):
            fmt = ">f" if size == 0x84 else ">d"
            struct.pack_into(fmt, out, at + 3, seconds * 1000.0)
            found += 1
            break
        at = out.find(b"\x44\x89", at + 1)
    movie_scale = None
    for box in (b"mvhd", b"tkhd", b"mdhd"):
        at = out.find(box)
        while at != -1:
            version, body = out[at + 4], at + 8
            if box == b"tkhd":
                field = body + (20 if version == 0 else 28)
                scale = movie_scale
            else:
                scale_at = body + (8 if version == 0 else 16)
                scale = struct.unpack_from(">I", out, scale_at)[0]
                field = scale_at + 4
                if box == b"mvhd":
                    movie_scale = scale
            if scale:
                if version == 0:
                    struct.pack_into(">I", out, field, round(seconds * scale))
                else:
                    struct.pack_into(">Q", out, field, round(seconds * scale))
                found += 1
            at = out.find(box, at + 4)
    if not found:
        raise ValueError("no duration field found")
    return bytes(out)
