"""The decode stage: image bytes -> the model's input tensor, in the decode thread pool; or a dead letter.

The PDQ hash for the hash banks is computed from the same decoded pixels the model sees
(:func:`prepare_decoded`), as a second pool job that overlaps inference (:func:`decoded_with_hash`); a hashing
failure never fails the image, it only leaves the hash None.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from vitguard import metrics
from vitguard.banks.signal import PdqHash, PdqSignal
from vitguard.errors import InputError
from vitguard.model.preprocess import REDUCED_SCALE
from vitguard.model.types import Classifier
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Decoded, Fetched, Parsed, StageTimes
from vitguard.pipeline.runtime.pools import JobTimeout

__all__ = [
    "FullResolution", "decode_failed", "decode_image", "decoded_with_hash", "hash_decoded", "in_decode_pool",
    "prepare_decoded",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class FullResolution:
    """An image the model saw at a reduced scale (a large JPEG in Pillow's draft mode): its PDQ hash needs the
    full-resolution pixels, decoded again in the hash job (which overlaps inference)."""

    data: bytes
    decode: Callable[[bytes], Any]
    """Decodes ``data`` upright, RGB, at full resolution."""


def prepare_decoded(classifier: Classifier, data: bytes) -> tuple[NDArray[np.float32], Any]:
    """The model's input tensor and what to PDQ-hash for the same image: the decoded image when the
    classifier's preprocessor decodes apart from preprocessing (``decode``, ``from_decoded``, as both of
    vitguard's do) and decoded it at full resolution; a :class:`FullResolution` when it decoded a large JPEG
    at a reduced scale (banks come from other systems that hash full images: the reduced decode's hash was
    up to 14 bits from the reference's, of a 31-bit match budget); else the bytes (hashed apart)."""
    from vitguard.model.base import BaseClassifier

    pre: Any = getattr(classifier, "preprocessor", None)
    decode, from_decoded = getattr(pre, "decode", None), getattr(pre, "from_decoded", None)
    own_prepare = isinstance(classifier, BaseClassifier) and type(classifier).prepare is not BaseClassifier.prepare
    if callable(decode) and callable(from_decoded) and not own_prepare:
        image = decode(data)
        tensor: NDArray[np.float32] = from_decoded(image)
        full = getattr(pre, "decode_full", None)
        if callable(full) and image.info.get(REDUCED_SCALE):
            return tensor, FullResolution(data, full)
        return tensor, image
    return classifier.prepare(data), data


def hash_decoded(source: Any) -> PdqHash | None:
    """The PDQ hash of what :func:`prepare_decoded` returned to hash, or of a decoded frame of an animation or
    a video (None when hashing fails)."""
    if isinstance(source, bytes):
        return _hash(lambda: PdqSignal.hash_bytes(source))
    if isinstance(source, FullResolution):
        return _hash(lambda: PdqSignal.hash_image(source.decode(source.data)))
    return _hash(lambda: PdqSignal.hash_image(source))


def _hash(compute: Any) -> PdqHash | None:
    try:
        result: PdqHash = compute()
    except Exception as exc:  # the model's decode succeeded: hashing must not fail the image
        _log.warning("PDQ hashing failed (%s: %s); the image is not matched against the banks",
                     type(exc).__name__, exc)
        return None
    return result


def decode_failed(parsed: Parsed, exc: BaseException) -> DeadLettered:
    """The dead letter of an image whose decode job failed: the one place decode errors map to reasons."""
    if isinstance(exc, InputError):
        return DeadLettered(parsed.raw, dead_letter(parsed.raw, exc.reason, exc.message, parsed.event))
    if isinstance(exc, JobTimeout):
        _log.error("decoding %s was abandoned: %s (a crafted file or a decoder bug?)", parsed.event.event_id, exc)
        return DeadLettered(parsed.raw, dead_letter(
            parsed.raw, "decode_timeout", f"decoding was abandoned: {exc}", parsed.event))
    _log.warning("decode of %s raised %r", parsed.event.event_id, exc, exc_info=exc)
    return DeadLettered(parsed.raw, dead_letter(
        parsed.raw, "internal_error", f"decode failed: {type(exc).__name__}: {exc}", parsed.event))


async def in_decode_pool(
    fetched: Fetched, pool: Executor, fn: Callable[..., T], *args: Any
) -> tuple[T, StageTimes] | DeadLettered:
    """Run one decode job for ``fetched`` in the decode pool, timed; a refusal or a bug becomes its dead letter
    (:func:`decode_failed`)."""
    started = time.perf_counter()
    try:
        out = await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    except Exception as exc:
        return decode_failed(fetched.parsed, exc)
    finally:
        decode_s = time.perf_counter() - started
        metrics.IMAGE_STAGE_DURATION.labels("decode", fetched.source).observe(decode_s)
    return out, replace(fetched.times, decode_ms=decode_s * 1000)


async def decode_image(
    fetched: Fetched, classifier: Classifier, pool: Executor, *, hash_pdq: bool = True
) -> Decoded | DeadLettered:
    """The tensor on the critical path; the PDQ hash of the same decoded image as a second pool job (see
    :func:`decoded_with_hash`)."""
    if not hash_pdq:
        done = await in_decode_pool(fetched, pool, classifier.prepare, fetched.data)
        if isinstance(done, DeadLettered):
            return done
        tensor, times = done
        return decoded_with_hash(fetched, tensor, None, times, pool)
    prepared = await in_decode_pool(fetched, pool, prepare_decoded, classifier, fetched.data)
    if isinstance(prepared, DeadLettered):
        return prepared
    (tensor, source), times = prepared
    return decoded_with_hash(fetched, tensor, source, times, pool)


def decoded_with_hash(fetched: Fetched, tensor: NDArray[np.float32], source: Any, times: StageTimes,
                      pool: Executor) -> Decoded:
    """A still image ready for inference, its PDQ hash of ``source`` (from :func:`prepare_decoded`; None: no
    hashing) submitted to the decode pool so that it runs while the batch is in inference (the match stage
    awaits it)."""
    pending = None
    if source is not None:
        try:
            pending = asyncio.wrap_future(pool.submit(hash_decoded, source))
        except RuntimeError:  # the pool is shutting down: the image goes on unhashed
            pending = None
    return Decoded(fetched.parsed, fetched.sha256, tensor, times, ready_at=time.perf_counter(), pdq_pending=pending)
