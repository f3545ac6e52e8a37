"""Multi-frame media: animated GIF/WebP/APNG (Pillow) and video (PyAV), expanded to sampled frames.

No pipeline or Kafka knowledge here: bytes and limits in, a :class:`FrameSet` (one preprocessed tensor per
sampled frame, and where each frame sits) out, or an :class:`~vitguard.errors.InputError` with a stable
reason code.
"""

from __future__ import annotations

from vitguard.media.expand import expand_frames
from vitguard.media.frames import FrameRef, FrameSet, HashImage, PrepareImage
from vitguard.media.sampling import FrameLimits, sample_indices
from vitguard.media.sniff import media_kind

__all__ = [
    "FrameLimits",
    "FrameRef",
    "FrameSet",
    "HashImage",
    "PrepareImage",
    "expand_frames",
    "media_kind",
    "sample_indices",
]
