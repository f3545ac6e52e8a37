"""Animated GIF, WebP and APNG with Pillow: the sampled frames of the whole animation, limits first.

Frames of an animation are deltas composed on the previous ones, so reaching frame k decodes every frame
before it: the pixel limit counts ``width x height x frames``, checked from the header before any frame is
decoded (a many-frame bomb costs nothing). A frame that fails to decode after at least one good one ends the
animation there (``truncated``); decoded frames are turned into tensors one at a time and then dropped.
"""

from __future__ import annotations

import io

import numpy as np
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
    try:
        image = Image.open(io.BytesIO(data))
        if not getattr(image, "is_animated", False):
            return None
        total = int(getattr(image, "n_frames", 1))
    except Exception:  # the still-image decoder classifies the failure with the right reason code
        return None
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
    wanted = sample_indices(total, limits.max_frames)
    wanted_set = set(wanted)
    tensors = []
    refs: list[FrameRef] = []
    elapsed_ms = 0.0
    truncated = False
    for index in range(wanted[-1] + 1):
        try:
            image.seek(index)
            if index in wanted_set or image.format == "WEBP":  # Pillow's WebP has a frame's duration only
                image.load()  # once it is loaded (a 10,000-frame animation read as 0.32 s); it decodes them anyway
        except ImageDecodeError:
            raise
        except Exception as exc:
            if not refs:
                raise ImageDecodeError("not_an_image", f"corrupt {image.format} animation: {exc}") from exc
            truncated = True
            break
        if index in wanted_set:
            tensors.append(prepare(image))
            refs.append(FrameRef(index, round(elapsed_ms / 1000, 3), hash_frame(image) if hash_frame else None))
        elapsed_ms += float(image.info.get("duration") or 0)
    return FrameSet(
        kind="animation", tensors=np.stack(tensors), frames=tuple(refs),
        sampling="all" if len(wanted) == total else "even", source_frames=total,
        duration_s=None if truncated else round(elapsed_ms / 1000, 3), truncated=truncated,
    )
