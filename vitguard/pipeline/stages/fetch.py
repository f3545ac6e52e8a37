"""The fetch stage: an event's image bytes by reference, hashed; or its dead letter.

The fetcher enforces connect, read and total deadlines per image (:class:`~vitguard.fetch.ImageFetcher`);
this stage adds one outer deadline as a safety net, so no reference can hold its event longer than
``total_timeout_s``. Each image is fetched on its own: a slow one never holds the others (the batcher takes
whatever is decoded; see :mod:`vitguard.pipeline.runtime.runner`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import Executor
from dataclasses import replace

from vitguard import metrics
from vitguard.errors import InputError
from vitguard.fetch import ImageFetcher
from vitguard.fetch.fetcher import FetchResult, Lane
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Fetched, Parsed

__all__ = [
    "HASH_IN_THREAD_BYTES", "fetch_failed", "fetch_image", "fetch_timed_out", "fetched_from", "sha256_hex",
]

_log = logging.getLogger(__name__)

HASH_IN_THREAD_BYTES = 1 << 20
"""Images larger than this are hashed in the decode pool instead of on the event loop."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_failed(parsed: Parsed, exc: InputError) -> DeadLettered:
    """The dead letter of a reference the fetcher refused (its reason code)."""
    return DeadLettered(parsed.raw, dead_letter(parsed.raw, exc.reason, exc.message, parsed.event))


def fetch_timed_out(parsed: Parsed, total_timeout_s: float) -> DeadLettered:
    return DeadLettered(parsed.raw, dead_letter(
        parsed.raw, "fetch_timeout", f"no complete image within {total_timeout_s:g} s", parsed.event))


def fetched_from(parsed: Parsed, result: FetchResult, sha256: str | None = None) -> Fetched:
    """The fetched image, timed (``sha256``: when the caller hashed it; else the fetcher must have)."""
    metrics.IMAGE_STAGE_DURATION.labels("fetch", result.source).observe(result.elapsed_ms / 1000)
    sha = sha256 or result.sha256
    if sha is None:
        raise ValueError("fetched_from needs the bytes' SHA-256")
    times = replace(parsed.times, fetch_ms=float(result.elapsed_ms))
    return Fetched(parsed, result.data, sha, str(result.source), times)


async def fetch_image(
    parsed: Parsed, fetcher: ImageFetcher, pool: Executor, total_timeout_s: float, *, lane: Lane = "stream"
) -> Fetched | DeadLettered:
    """One reference fetched and hashed (large bytes hashed in ``pool``), or its dead letter."""
    event = parsed.event
    try:
        async with asyncio.timeout(total_timeout_s):
            result = await fetcher.fetch(event.image_ref, lane=lane)
    except InputError as exc:
        return fetch_failed(parsed, exc)
    except TimeoutError:
        return fetch_timed_out(parsed, total_timeout_s)
    except Exception as exc:
        _log.warning("fetch of %s raised %r", event.event_id, exc, exc_info=True)
        return DeadLettered(parsed.raw, dead_letter(
            parsed.raw, "internal_error", f"fetch failed: {type(exc).__name__}: {exc}", event))
    data = result.data
    if result.sha256 is not None:
        sha = result.sha256
    elif len(data) > HASH_IN_THREAD_BYTES:
        sha = await asyncio.get_running_loop().run_in_executor(pool, sha256_hex, data)
    else:
        sha = sha256_hex(data)
    return fetched_from(parsed, result, sha)
