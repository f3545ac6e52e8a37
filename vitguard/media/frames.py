"""The value a multi-frame input expands to: one preprocessed tensor per sampled frame, and where each
frame sits in the source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.model.preprocess import DEFAULT_MAX_PIXELS

__all__ = ["MAX_FRAME_PIXELS", "FrameRef", "FrameSet", "HashImage", "PrepareImage", "Sampling"]

MAX_FRAME_PIXELS = DEFAULT_MAX_PIXELS
"""One frame of an animation or a video larger than this is refused as a decompression bomb (the still-image
default, ``ModelSettings.max_pixels``)."""

PrepareImage = Callable[[Image.Image], NDArray[np.float32]]
"""``Classifier.prepare_image``: a decoded frame to one ``(C, H, W)`` float32 array."""
HashImage = Callable[[Image.Image], Any]
"""A decoded frame to its perceptual hash (the pipeline's PDQ hash, for the hash banks), or None."""

Sampling = Literal["all", "even", "rate", "keyframes"]


@dataclass(frozen=True)
class FrameRef:
    """One sampled frame: its index in the source (decode order), its time offset in seconds and, when the
    reader was given a ``hash_frame``, its perceptual hash (None when hashing failed)."""

    index: int
    time_s: float
    pdq: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FrameSet:
    """The sampled frames of one animation or video, preprocessed and stacked.

    Only these tensors are kept: every other decoded frame is dropped as soon as it is decoded, so memory is
    bounded by ``max_frames`` tensors plus one decoded frame, whatever the length of the input.
    """

    kind: Literal["animation", "video"]
    tensors: NDArray[np.float32] = field(repr=False)
    """``(N, C, H, W)``, row i is frame ``frames[i]``."""
    frames: tuple[FrameRef, ...]
    sampling: Sampling
    source_frames: int | None
    """Frames in the source (declared, or counted while decoding); None when unknown."""
    duration_s: float | None
    truncated: bool = False
    """Decoding stopped early at corrupt or missing data; the frames before it were classified."""
    sample_rate_fps: float | None = None
    """Video: the rate frames were kept at in the end (scene cuts aside)."""
    scene_cuts: int | None = None
    """Video: frames kept because the picture changed."""
    largest_gap_s: float | None = None
    """Video: the longest stretch of the decoded stream with no kept frame (the end included)."""
    sampled_with: str = ""
    """The sampling it was read with (:attr:`~vitguard.media.sampling.FrameLimits.sampling_key`)."""

    def __post_init__(self) -> None:
        if len(self.frames) == 0 or len(self.frames) != len(self.tensors):
            raise ValueError("a FrameSet needs one tensor per frame, at least one")

    def __len__(self) -> int:
        return len(self.frames)
