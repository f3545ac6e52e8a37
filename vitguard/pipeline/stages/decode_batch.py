"""The decode and expand stages for a batch of images: a few pool jobs of several images each, instead of one
job (and one event-loop wake-up) per image.

A still image is decoded to its tensor (:func:`~vitguard.pipeline.stages.decode.prepare_decoded`); a GIF, PNG or
WebP is opened once and expanded to its sampled frames when animated
(:func:`~vitguard.pipeline.stages.expand.expand_bytes`). Video is not taken here: its decode may take seconds
(:meth:`~vitguard.pipeline.runtime.front.FrontHalf.expand` runs it on its own). The PDQ hashes of a job's still
images are one more job, submitted when the decode job returns, so hashing still overlaps inference
(:func:`~vitguard.pipeline.stages.decode.decoded_with_hash` does the same per image).

The batch is cut into jobs so that every decode thread gets a share, and no job holds more than
:data:`CHUNK_ITEMS` images or :data:`CHUNK_BYTES` of input, so a job's images are ready for a forward pass soon
after the first of them is. A job that has run for ``budget_s`` stops before its next image and the rest go on
in a new job, so an image never starts late in its job's deadline because of its neighbours.

A decoder that never returns holds only its own image. Each job records its results as it goes; when it runs
past the pool's deadline, the images it finished keep their tensors, the image it was on becomes its
``decode_timeout`` dead letter, and the images after it are decoded in a new job. One image's decode error is
that image's dead letter, never the job's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from vitguard import metrics
from vitguard.banks.signal import PdqHash
from vitguard.media import FrameLimits, FrameSet, media_kind
from vitguard.media.sniff import SNIFF_BYTES
from vitguard.model.types import Classifier
from vitguard.pipeline.results import DeadLettered, Decoded, DecodedFrames, Fetched, Parsed, Tagged
from vitguard.pipeline.stages.decode import decode_failed, hash_decoded, prepare_decoded
from vitguard.pipeline.stages.expand import expand_bytes

__all__ = ["CHUNK_BYTES", "CHUNK_ITEMS", "decode_batch"]

T = TypeVar("T")

CHUNK_ITEMS = 16
"""Images in one decode job, at most."""

CHUNK_BYTES = 4 << 20
"""Encoded bytes in one decode job, at most (a job holds at least one image, however large)."""


@dataclass(frozen=True)
class _Done:
    """One image's decode, as the job recorded it (on the pool's thread)."""

    value: FrameSet | tuple[NDArray[np.float32], Any] | None
    """An animation's frames, or a still image's tensor and what to PDQ-hash of it (see
    :func:`~vitguard.pipeline.stages.decode.prepare_decoded`; None: no hash); None when it failed."""
    error: BaseException | None
    seconds: float


def _decode_one(data: bytes, classifier: Classifier, limits: FrameLimits,
                hash_pdq: bool) -> FrameSet | tuple[NDArray[np.float32], Any]:
    if media_kind(data[:SNIFF_BYTES]) == "still":
        return prepare_decoded(classifier, data) if hash_pdq else (classifier.prepare(data), None)
    return expand_bytes(data, classifier, limits, hash_pdq)


def _decode_job(datas: Sequence[bytes], classifier: Classifier, limits: Sequence[FrameLimits], hash_pdq: bool,
                budget_s: float, out: list[_Done]) -> None:
    """In the decode pool: each image in turn, appended to ``out`` as soon as it is done (so a job abandoned at
    its deadline still hands over what it finished); stops early, before an image, once ``budget_s`` has
    passed (the caller starts a new job for the rest)."""
    job_started = time.perf_counter()
    for data, item_limits in zip(datas, limits, strict=True):
        started = time.perf_counter()
        if out and started - job_started > budget_s:
            return
        try:
            out.append(_Done(_decode_one(data, classifier, item_limits, hash_pdq), None,
                             time.perf_counter() - started))
        except Exception as exc:  # that image's dead letter (decode_failed maps it), never the job's
            out.append(_Done(None, exc, time.perf_counter() - started))


def _hash_job(sources: Sequence[Any]) -> list[PdqHash | None]:
    return [hash_decoded(s) for s in sources]


def _chunks(items: Sequence[Tagged[T, Fetched]], jobs: int) -> list[list[Tagged[T, Fetched]]]:
    """``items`` cut into about ``jobs`` runs in order, none over :data:`CHUNK_ITEMS` or :data:`CHUNK_BYTES`."""
    per_job = max(1, min(CHUNK_ITEMS, -(-len(items) // max(1, jobs))))
    out: list[list[Tagged[T, Fetched]]] = []
    size = 0
    for item in items:
        if not out or len(out[-1]) >= per_job or size + len(item.value.data) > CHUNK_BYTES:
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item.value.data)
    return out


async def decode_batch(
    items: Sequence[Tagged[T, Fetched]], classifier: Classifier, pool: Executor, *, jobs: int,
    limits: Callable[[Parsed], FrameLimits], budget_s: float, hash_pdq: bool = True,
) -> AsyncIterator[list[Tagged[T, Decoded | DecodedFrames | DeadLettered]]]:
    """Decode images (not video) in about ``jobs`` concurrent pool jobs; yields each job's images (a tensor, an
    animation's frames, or a dead letter each) as the job returns, in no particular order across jobs. An
    animation is sampled by ``limits`` of its event (its policy's sampling)."""
    loop = asyncio.get_running_loop()
    running: dict[asyncio.Future[None], tuple[list[Tagged[T, Fetched]], list[_Done], float]] = {}

    def submit(chunk: list[Tagged[T, Fetched]]) -> None:
        out: list[_Done] = []
        fut = asyncio.wrap_future(pool.submit(_decode_job, [f.value.data for f in chunk], classifier,
                                              [limits(f.value.parsed) for f in chunk], hash_pdq, budget_s, out))
        running[fut] = (chunk, out, time.perf_counter())

    for chunk in _chunks(items, jobs):
        submit(chunk)
    while running:
        finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for fut in finished:
            chunk, out, submitted = running.pop(fut)
            done = list(out)  # a thread past its deadline may still append: what it finished by now counts
            results: list[Tagged[T, Decoded | DecodedFrames | DeadLettered]] = []
            exc = fut.exception()
            at = len(done)
            if exc is not None and at < len(chunk):  # the image it was on (or a refused job's first) takes it
                results.append(Tagged(chunk[at].tag, decode_failed(chunk[at].value.parsed, exc)))
                at += 1
            if at < len(chunk):  # after a timeout, or a job that stopped at its budget
                submit(chunk[at:])
            results[:0] = _ready(chunk[:len(done)], done, submitted, pool, loop)
            yield results


def _ready(chunk: Sequence[Tagged[T, Fetched]], done: Sequence[_Done], submitted: float, pool: Executor,
           loop: asyncio.AbstractEventLoop) -> list[Tagged[T, Decoded | DecodedFrames | DeadLettered]]:
    """The job's images as ready-queue values; their PDQ hashes as one more pool job, awaited by the match stage."""
    out: list[Tagged[T, Decoded | DecodedFrames | DeadLettered]] = []
    to_hash: list[int] = []
    sources: list[Any] = []
    now = time.perf_counter()
    for item, d in zip(chunk, done, strict=True):
        fetched = item.value
        metrics.IMAGE_STAGE_DURATION.labels("decode", fetched.source).observe(d.seconds)
        if d.error is not None or d.value is None:
            failed = decode_failed(fetched.parsed, d.error or RuntimeError("the decoder returned nothing"))
            out.append(Tagged(item.tag, failed))
            continue
        times = replace(fetched.times, decode_ms=(now - submitted) * 1000)
        if isinstance(d.value, FrameSet):
            out.append(Tagged(item.tag, DecodedFrames(fetched.parsed, fetched.sha256, d.value, times, ready_at=now)))
            continue
        tensor, source = d.value
        out.append(Tagged(item.tag, Decoded(fetched.parsed, fetched.sha256, tensor, times, ready_at=now)))
        if source is not None:
            to_hash.append(len(out) - 1)
            sources.append(source)
    if to_hash:
        _hash_later(out, to_hash, sources, pool, loop)
    return out


def _hash_later(out: list[Tagged[T, Decoded | DecodedFrames | DeadLettered]], at: Sequence[int], sources: Sequence[Any],
                pool: Executor, loop: asyncio.AbstractEventLoop) -> None:
    """One hash job for the job's decoded images; each image's ``pdq_pending`` resolves from it."""
    pending: list[asyncio.Future[PdqHash | None]] = [loop.create_future() for _ in at]
    for i, fut in zip(at, pending, strict=True):
        value = out[i].value
        assert isinstance(value, Decoded)  # noqa: S101 - ``at`` lists decoded entries only
        out[i] = Tagged(out[i].tag, replace(value, pdq_pending=fut))
    try:
        job = asyncio.wrap_future(pool.submit(_hash_job, sources))
    except RuntimeError:  # the pool is shutting down: the images go on unhashed
        for fut in pending:
            fut.set_result(None)
        return

    def settle(job: asyncio.Future[list[PdqHash | None]]) -> None:
        hashes: Sequence[PdqHash | None] = [None] * len(pending)
        if not job.cancelled() and job.exception() is None:
            hashes = job.result()
        for fut, h in zip(pending, hashes, strict=True):
            if not fut.done():
                fut.set_result(h)

    job.add_done_callback(settle)
