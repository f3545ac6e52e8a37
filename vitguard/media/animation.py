"""Animated GIF, WebP and APNG with Pillow: the sampled frames of the whole animation, limits first.

Frames of an animation are deltas composed on the previous ones, so reaching frame k decodes every frame
before it: the pixel limit counts ``width x height x frames``, checked from the header before any frame is
decoded (a many-frame bomb costs nothing). A frame that fails to decode after at least one good one ends the
animation there (``truncated``); decoded frames are turned into tensors one at a time and then dropped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.errors import ImageDecodeError
from vitguard.media.frames import MAX_FRAME_PIXELS, FrameRef, FrameSet, HashImage, PrepareImage
from vitguard.media.sampling import FrameLimits, sample_indices

__all__ = ["read_animation"]


def read_animation(data: bytes, limits: FrameLimits, prepare: PrepareImage,
                   hash_frame: HashImage | None = None) -> FrameSet | None:
    """The sampled frames of an animated GIF/WebP/APNG, or None when ``data`` is not an animation (a still
    image, or something Pillow cannot open: the still decoder gives that its reason code).

    Raises:
        ImageDecodeError: ``too_many_frames``, ``decompression_bomb`` (the frames together hold too many
            pixels), ``not_an_image`` (no frame decodes), or what ``prepare`` raises.
    """
    animation = _open_animation(data)
    if animation is None:
        return None
    image, total = animation.image, animation.total
    _check_limits(image, total, limits)
    wanted = sample_indices(total, limits.max_frames)
    decoded = _decode_sampled(image, wanted, prepare, hash_frame)
    return FrameSet(
        kind="animation", tensors=np.stack(decoded.tensors), frames=tuple(decoded.refs),
        sampling="all" if len(wanted) == total else "even", source_frames=total,
        duration_s=None if decoded.truncated else round(decoded.elapsed_ms / 1000, 3), truncated=decoded.truncated,
        sampled_with=limits.sampling_key,
    )


@dataclass(frozen=True)
class _Animation:
    """An opened animation and its frame count, read from the header."""

    image: Image.Image
    total: int


@dataclass
class _Decoded:
    """What walking the frames produced: the wanted frames, and how far the animation played."""

    tensors: list[NDArray[np.float32]] = field(default_factory=list)
    refs: list[FrameRef] = field(default_factory=list)
    elapsed_ms: float = 0.0
    """Sum of the durations of the frames walked so far (the start time of the next one)."""
    truncated: bool = False


def _open_animation(data: bytes) -> _Animation | None:
    """The animation in ``data``, or None for anything else: a still image, or bytes Pillow cannot open (the
    still-image decoder classifies that failure with the right reason code)."""
    try:
        image = Image.open(io.BytesIO(data))
        if not getattr(image, "is_animated", False):
            return None
        total = int(getattr(image, "n_frames", 1))  # GIF counts its frames by reading them: it may fail too
    except Exception:
        return None
    return _Animation(image, total)


def _check_limits(image: Image.Image, total: int, limits: FrameLimits) -> None:
    """Refuse an animation whose header promises more than ``limits`` allow, before any frame is decoded."""
    if total > limits.max_source_frames:
        raise ImageDecodeError(
            "too_many_frames", f"{image.format} animation of {total} frames, limit {limits.max_source_frames}")
    width, height = image.size
    if width * height > MAX_FRAME_PIXELS:  # as for a still image: each frame is decoded whole
        raise ImageDecodeError(
            "decompression_bomb", f"{width}x{height} frames exceed {MAX_FRAME_PIXELS} pixels")
    if width * height * total > limits.max_decoded_pixels:
        raise ImageDecodeError(
            "decompression_bomb",
            f"{total} frames of {width}x{height} are more than the {limits.max_decoded_pixels} pixels allowed")


def _decode_sampled(image: Image.Image, wanted: list[int], prepare: PrepareImage,
                    hash_frame: HashImage | None) -> _Decoded:
    """Walk the frames up to the last wanted one (each is a delta on the ones before), preparing the wanted
    frames as they pass; a frame that fails after a good one ends the walk (``truncated``)."""
    wanted_set = set(wanted)
    decoded = _Decoded()
    for index in range(wanted[-1] + 1):
        if not _seek(image, index, load=index in wanted_set, after_good_frame=bool(decoded.refs)):
            decoded.truncated = True
            break
        if index in wanted_set:
            decoded.tensors.append(prepare(image))
            decoded.refs.append(FrameRef(index, round(decoded.elapsed_ms / 1000, 3),
                                         hash_frame(image) if hash_frame else None))
        decoded.elapsed_ms += float(image.info.get("duration") or 0)
    return decoded


def _seek(image: Image.Image, index: int, *, load: bool, after_good_frame: bool) -> bool:
    """Move ``image`` to frame ``index`` (decoding it when ``load``); False when that fails after a good frame.

    Raises:
        ImageDecodeError: ``not_an_image`` when it fails before any frame decoded.
    """
    try:
        image.seek(index)
        if load or image.format == "WEBP":  # Pillow's WebP has a frame's duration only
            image.load()  # once it is loaded (a 10,000-frame animation read as 0.32 s); it decodes them anyway
    except ImageDecodeError:
        raise
    except Exception as exc:
        if not after_good_frame:
            raise ImageDecodeError("not_an_image", f"corrupt {image.format} animation: {exc}") from exc
        return False
    return True
