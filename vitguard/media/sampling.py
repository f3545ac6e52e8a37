"""Which frames of a multi-frame input are classified, and the limits that bound the work: pure values.

Animations: every frame up to ``max_frames``, else ``max_frames`` evenly spaced ones that include the first
and the last (:func:`sample_indices`). Video: a fixed rate (``video_fps``) by the decoded timestamps, thinned
as the budget fills, and scene cuts (:mod:`vitguard.media.video`: a stream's length is known only once
decoded). Limits cover the whole input, not one frame: frames in the source (``max_source_frames``), pixels
decoded in total (``max_decoded_pixels``) and, for video, the duration (``max_duration_s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from vitguard.settings import FrameSettings

__all__ = [
    "DEFAULT_MAX_DECODED_PIXELS",
    "DEFAULT_MAX_DURATION_S",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_SOURCE_FRAMES",
    "DEFAULT_VIDEO_FPS",
    "FrameLimits",
    "VideoSampling",
    "sample_indices",
]

DEFAULT_MAX_FRAMES = 32
"""Frames classified per item, at most."""
DEFAULT_MAX_SOURCE_FRAMES = 10_000
"""An input with more frames than this is refused (``too_many_frames``): the many-frame bomb."""
DEFAULT_MAX_DECODED_PIXELS = 2_000_000_000
"""Pixels decoded for one item in total (every frame decoded counts, sampled or not)."""
DEFAULT_MAX_DURATION_S = 300.0
"""Longest video accepted (``video_too_long``)."""
DEFAULT_VIDEO_FPS = 1.0
"""Frames per second of video sampled, until the budget forces a sparser spread."""

VideoSampling = Literal["rate", "keyframes"]


@dataclass(frozen=True)
class FrameLimits:
    """Sampling and limits for one multi-frame item (see :class:`~vitguard.settings.FrameSettings`)."""

    max_frames: int = DEFAULT_MAX_FRAMES
    max_source_frames: int = DEFAULT_MAX_SOURCE_FRAMES
    max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    video_fps: float = DEFAULT_VIDEO_FPS
    video_sampling: VideoSampling = "rate"

    def __post_init__(self) -> None:
        if self.max_frames < 1 or self.max_source_frames < 1 or self.max_decoded_pixels < 1:
            raise ValueError("frame limits must be positive")
        if self.video_fps <= 0 or self.max_duration_s <= 0:
            raise ValueError("video_fps and max_duration_s must be positive")

    @property
    def sampling_key(self) -> str:
        """What decides which frames are sampled (``max_frames``, ``video_fps``, ``video_sampling``), as a short
        string: a verdict cached for a multi-frame item is reused only for an event sampled the same way."""
        return f"{self.max_frames}/{self.video_fps:g}/{self.video_sampling}"

    @classmethod
    def from_settings(cls, settings: FrameSettings) -> FrameLimits:
        return cls(
            max_frames=settings.max_frames,
            max_source_frames=settings.max_source_frames,
            max_decoded_pixels=settings.max_decoded_pixels,
            max_duration_s=settings.max_duration_s,
            video_fps=settings.video_fps,
            video_sampling=settings.video_sampling,
        )


def sample_indices(total: int, budget: int) -> list[int]:
    """Frame indices to classify out of ``total``: all of them up to ``budget``, else ``budget`` evenly
    spaced ones, the first (0) and the last (``total - 1``) always included. Sorted, no repeats."""
    if total <= 0:
        return []
    if total <= budget:
        return list(range(total))
    if budget == 1:
        return [0]
    step = (total - 1) / (budget - 1)
    return sorted({round(k * step) for k in range(budget)})
