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

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.banks.signal import PdqHash
from vitguard.media import FrameLimits, FrameSet, media_kind
from vitguard.media.animation import read_animation
from vitguard.media.video import read_video
from vitguard.model.types import Classifier
from vitguard.pipeline.decode import decode_image, hash_frame, in_decode_pool, prepare_and_hash
from vitguard.pipeline.results import DeadLettered, Decoded, DecodedFrames, Fetched

__all__ = ["expand_item"]

_log = logging.getLogger(__name__)


def _expand(
    data: bytes, classifier: Classifier, limits: FrameLimits, hash_pdq: bool
) -> FrameSet | tuple[NDArray[np.float32], PdqHash | None]:
    def prepare(image: Image.Image) -> NDArray[np.float32]:  # looked up only for a multi-frame input
        return classifier.prepare_image(image)

    hasher = hash_frame if hash_pdq else None
    if media_kind(data) == "video":
        return read_video(data, limits, prepare, hasher)
    frames = read_animation(data, limits, prepare, hasher)
    return frames if frames is not None else prepare_and_hash(classifier, data, hash_pdq)  # a still GIF/PNG/WebP


async def expand_item(
    fetched: Fetched, classifier: Classifier, pool: Executor, limits: FrameLimits, *, hash_pdq: bool = True
) -> Decoded | DecodedFrames | DeadLettered:
    """The item's tensors: one for a still image, one per sampled frame for an animation or a video; each
    PDQ-hashed unless ``hash_pdq`` is false."""
    if media_kind(fetched.data[:16]) == "still":
        return await decode_image(fetched, classifier, pool, hash_pdq=hash_pdq)
    done = await in_decode_pool(fetched, pool, _expand, fetched.data, classifier, limits, hash_pdq)
    if isinstance(done, DeadLettered):
        return done
    out, times = done
    parsed = fetched.parsed
    if isinstance(out, FrameSet):
        return DecodedFrames(parsed, fetched.sha256, out, times, ready_at=time.perf_counter())
    tensor, pdq = out
    return Decoded(parsed, fetched.sha256, tensor, times, ready_at=time.perf_counter(), pdq=pdq)
