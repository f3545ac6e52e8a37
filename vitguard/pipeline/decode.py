"""The decode stage: image bytes -> the model's input tensor, in the decode thread pool; or a dead letter."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import replace

from vitguard import metrics
from vitguard.errors import InputError
from vitguard.model.types import Classifier
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Decoded, Fetched

__all__ = ["decode_image"]

_log = logging.getLogger(__name__)


async def decode_image(fetched: Fetched, classifier: Classifier, pool: Executor) -> Decoded | DeadLettered:
    parsed = fetched.parsed
    started = time.perf_counter()
    try:
        tensor = await asyncio.get_running_loop().run_in_executor(pool, classifier.prepare, fetched.data)
    except InputError as exc:
        return DeadLettered(parsed.raw, dead_letter(parsed.raw, exc.reason, exc.message, parsed.event))
    except Exception as exc:
        _log.warning("decode of %s raised %r", parsed.event.event_id, exc, exc_info=True)
        return DeadLettered(parsed.raw, dead_letter(
            parsed.raw, "internal_error", f"decode failed: {type(exc).__name__}: {exc}", parsed.event))
    finally:
        decode_s = time.perf_counter() - started
        metrics.IMAGE_STAGE_DURATION.labels("decode", fetched.source).observe(decode_s)
    return Decoded(parsed, fetched.sha256, tensor, replace(fetched.times, decode_ms=decode_s * 1000),
                   ready_at=time.perf_counter())
