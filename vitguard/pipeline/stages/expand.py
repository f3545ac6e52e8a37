"""The expand stage: a still image is one frame (the decode stage, unchanged); an animation or a video is
its sampled frames, each decoded straight to its tensor and PDQ-hashed (:mod:`vitguard.media`); or a dead
letter.

What kind of input it is comes from the magic bytes, on the event loop (a few bytes, no decoding): JPEG and
everything else that cannot be animated goes to the decode stage exactly as before. GIF, PNG and WebP are
opened once in the decode pool and expanded when animated, else decoded as stills in the same call.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.media import FrameLimits, FrameSet, media_kind
from vitguard.media.animation import read_animation
from vitguard.media.sniff import SNIFF_BYTES
from vitguard.media.video import read_video
from vitguard.model.types import Classifier
from vitguard.pipeline.results import DeadLettered, Decoded, DecodedFrames, Fetched
from vitguard.pipeline.stages.decode import (
    decode_image,
    decoded_with_hash,
    hash_decoded,
    in_decode_pool,
    prepare_decoded,
)

__all__ = ["expand_bytes", "expand_item"]

_log = logging.getLogger(__name__)


def expand_bytes(
    data: bytes, classifier: Classifier, limits: FrameLimits, hash_pdq: bool
) -> FrameSet | tuple[NDArray[np.float32], Any]:
    """The frames of an animation or a video (each hashed), or for a still GIF/PNG/WebP its tensor and what to
    hash (hashed after, as for any still image: :func:`~vitguard.pipeline.stages.decode.decoded_with_hash`)."""
    def prepare(image: Image.Image) -> NDArray[np.float32]:  # looked up only for a multi-frame input
        return classifier.prepare_image(image)

    hasher = hash_decoded if hash_pdq else None
    if media_kind(data) == "video":
        return read_video(data, limits, prepare, hasher)
    frames = read_animation(data, limits, prepare, hasher)
    if frames is not None:
        return frames
    return prepare_decoded(classifier, data) if hash_pdq else (classifier.prepare(data), None)


async def expand_item(
    fetched: Fetched, classifier: Classifier, pool: Executor, limits: FrameLimits, *, hash_pdq: bool = True
) -> Decoded | DecodedFrames | DeadLettered:
    """The item's tensors: one for a still image, one per sampled frame for an animation or a video; each
    PDQ-hashed unless ``hash_pdq`` is false."""
    if media_kind(fetched.data[:SNIFF_BYTES]) == "still":
        return await decode_image(fetched, classifier, pool, hash_pdq=hash_pdq)
    done = await in_decode_pool(fetched, pool, expand_bytes, fetched.data, classifier, limits, hash_pdq)
    if isinstance(done, DeadLettered):
        return done
    out, times = done
    parsed = fetched.parsed
    if isinstance(out, FrameSet):
        return DecodedFrames(parsed, fetched.sha256, out, times, ready_at=time.perf_counter())
    tensor, source = out
    return decoded_with_hash(fetched, tensor, source, times, pool)
