"""Expand an input to the frames to classify: None for a still image, else a :class:`FrameSet`."""

from __future__ import annotations

from vitguard.media.animation import read_animation
from vitguard.media.frames import FrameSet, HashImage, PrepareImage
from vitguard.media.sampling import FrameLimits
from vitguard.media.sniff import media_kind
from vitguard.media.video import read_video

__all__ = ["expand_frames"]


def expand_frames(data: bytes, limits: FrameLimits, prepare: PrepareImage,
                  hash_frame: HashImage | None = None) -> FrameSet | None:
    """The sampled frames of an animation or a video; None for anything else (a still image, or bytes the
    still-image decoder should judge). Thread-safe; CPU-bound (run it in the decode pool).

    Raises:
        InputError: the reason codes of :func:`~vitguard.media.video.read_video` and
            :func:`~vitguard.media.animation.read_animation`.
    """
    kind = media_kind(data)
    if kind == "video":
        return read_video(data, limits, prepare, hash_frame)
    if kind == "maybe_animated":
        return read_animation(data, limits, prepare, hash_frame)
    return None
