"""The front half of the batch path, per event: ingest -> redelivery guard -> fetch -> verdict cache -> expand
(a still image: decode; an animation or a video: its sampled frames, decoded).

Every event runs it on its own task, concurrently with the others, so a slow image holds nobody; what it
returns (decoded, a cache hit, a dead letter, or skipped) joins the ready queue. The redelivery guard is two
layers: the events this worker answered recently or has in flight (in memory; works while Redis is down), then
Redis (shared by all workers). An event is known by its id and a digest of what it asks about
(:func:`~vitguard.pipeline.core.answer_key`), so an id reused for another image is judged again. Only events
that got a verdict are remembered, so a re-driven dead letter (a new record, the same event) is processed
again. Before both, the records this worker answered recently are remembered by position (topic, partition,
offset): the same record delivered again (a rewind after a rebalance or a pause) is skipped whatever its answer
was, including a dead letter for a message with no event id (invalid JSON).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from vitguard import metrics
from vitguard.errors import InputError
from vitguard.fetch import ImageFetcher
from vitguard.media import FrameLimits
from vitguard.model.types import Classifier
from vitguard.pipeline.core import answer_key, parse_cached_verdict, verdict_from_cache
from vitguard.pipeline.results import CacheHit, DeadLettered, Decoded, DecodedFrames, Fetched, Parsed, Ready, Skipped
from vitguard.pipeline.runtime.coalesce import Coalescer
from vitguard.pipeline.runtime.completion import timings
from vitguard.pipeline.runtime.failure import RedisPolicy
from vitguard.pipeline.stages.expand import expand_item
from vitguard.pipeline.stages.fetch import fetch_image, sha256_hex
from vitguard.pipeline.stages.ingest import parse
from vitguard.pipeline.types import RawMessage
from vitguard.schemas.events import ImageEvent
from vitguard.stores.interfaces import DedupStore

__all__ = ["RECENT_EVENT_IDS", "FrontHalf"]

RECENT_EVENT_IDS = 100_000
"""Events (answer keys) and records this worker answered most recently, remembered in memory."""

_CLASSIFY_TOPIC = "(classify)"


def _remember(recent: OrderedDict[Any, None], key: Any) -> None:
    recent[key] = None
    while len(recent) > RECENT_EVENT_IDS:
        recent.popitem(last=False)


class FrontHalf:
    def __init__(
        self,
        *,
        classifier: Classifier,
        fetcher: ImageFetcher,
        dedup: DedupStore,
        redis: RedisPolicy,
        cache_key: str,
        pool: Executor,
        fetch_timeout_s: float,
        frames: FrameLimits | None = None,
        hash_pdq: bool = True,
        request_pool: Executor | None = None,
    ) -> None:
        self.classifier = classifier
        self.fetcher = fetcher
        self.dedup = dedup
        self.redis = redis
        self.cache_key = cache_key
        self.pool = pool
        self.request_pool = request_pool or pool
        """Where a ``POST /classify`` request's fetch, decode and hash run (the decode pool's urgent lane)."""
        self.fetch_timeout_s = fetch_timeout_s
        self.frames = frames or FrameLimits()
        self.hash_pdq = hash_pdq
        """PDQ-hash every image and frame (for the hash banks); off when the banks are."""
        self._recent_keys: OrderedDict[str, None] = OrderedDict()
        self._active_keys: set[str] = set()
        self._active_records: dict[tuple[str, int, int], str] = {}
        """The answer key of each record in flight (what :meth:`settled` releases)."""
        self._recent_records: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        # each event asks Redis two questions; concurrent events share one round trip (group commit)
        self._seen: Coalescer[str, bool] = Coalescer(self._seen_events)
        self._cached: Coalescer[str, str] = Coalescer(self._cached_verdicts)

    async def _seen_events(self, keys: Sequence[str]) -> Mapping[str, bool]:
        metrics.REDIS_LOOKUP_KEYS.labels("seen_events").observe(len(keys))
        none_seen: set[str] = set()
        seen = await self.redis.call("seen_events", lambda: self.dedup.seen_events(keys), none_seen)
        return dict.fromkeys(seen, True)

    async def _cached_verdicts(self, sha256s: Sequence[str]) -> Mapping[str, str]:
        metrics.REDIS_LOOKUP_KEYS.labels("cached_verdicts").observe(len(sha256s))
        nothing: Mapping[str, str] = {}
        return await self.redis.call(
            "cached_verdicts", lambda: self.dedup.cached_verdicts(sha256s, self.cache_key), nothing)

    def settled(self, raw: RawMessage | None, answered: bool) -> None:
        """The stream record ``raw`` is out of flight and answered (a verdict or a dead letter, acknowledged);
        ``answered`` when it got a verdict (then its event is remembered and redeliveries are skipped)."""
        if raw is None:
            return
        record = (raw.topic, raw.partition, raw.offset)
        _remember(self._recent_records, record)
        key = self._release(record)
        if key is not None and answered:
            _remember(self._recent_keys, key)

    async def prepare(self, raw: RawMessage, consumed_ms: float | None) -> Ready:
        if (raw.topic, raw.partition, raw.offset) in self._recent_records:
            return Skipped(raw, "redelivered")
        parsed = parse(raw, consumed_ms)
        if isinstance(parsed, DeadLettered):
            return parsed
        if parsed.times.queue_ms:
            metrics.QUEUE_TIME.observe(parsed.times.queue_ms / 1000)
        key = answer_key(parsed.event)
        if key in self._recent_keys or key in self._active_keys:
            return Skipped(raw, "repeat" if key in self._active_keys else "redelivered")
        record = (raw.topic, raw.partition, raw.offset)
        self._active_keys.add(key)
        self._active_records[record] = key
        try:
            if await self._seen.get(key):
                self._release(record)
                return Skipped(raw, "redelivered")
            fetched = await fetch_image(parsed, self.fetcher, self.pool, self.fetch_timeout_s)
            if isinstance(fetched, DeadLettered):
                return fetched
            cached = await self._cached.get(fetched.sha256)
            entry = parse_cached_verdict(cached) if cached is not None else None
            if entry is not None:
                original, frame_hashes = entry
                verdict = verdict_from_cache(original, parsed.event, fetched.sha256, timings(fetched.times))
                return CacheHit(parsed, verdict, original.content_id, frame_hashes)
            return await expand_item(fetched, self.classifier, self.pool, self.frames, hash_pdq=self.hash_pdq)
        except BaseException:
            self._release(record)
            raise

    def _release(self, record: tuple[str, int, int]) -> str | None:
        """The record is out of flight: its event's answer key (None if it had none in flight) is released."""
        key = self._active_records.pop(record, None)
        if key is not None:
            self._active_keys.discard(key)
        return key

    async def prepare_request(
        self, *, data: bytes | None, image_ref: str | None, content_id: str | None, tenant: str
    ) -> Decoded | DecodedFrames:
        """The same fetch and decode for a ``POST /classify`` request (no guard, no cache), ahead of the
        stream's queued decodes.

        Raises:
            InputError: the reference or the bytes are unusable; ``reason`` says why.
        """
        event_id = uuid.uuid4().hex
        cid = content_id or f"classify-{event_id}"
        # bytes sent in the request body have no reference: the event is internal, built without validation
        event = (ImageEvent(event_id=event_id, content_id=cid, tenant=tenant, image_ref=image_ref)
                 if image_ref is not None
                 else ImageEvent.model_construct(event_id=event_id, content_id=cid, tenant=tenant,
                                                 image_ref="(request body)"))
        parsed = Parsed(RawMessage(None, None, _CLASSIFY_TOPIC, 0, 0), event)
        fetched: Fetched | DeadLettered
        max_bytes = self.fetcher.settings.max_bytes
        if image_ref is not None:
            fetched = await fetch_image(parsed, self.fetcher, self.request_pool, self.fetch_timeout_s, lane="request")
        elif not data:
            raise InputError("schema_violation", "send image bytes, or JSON with an image_ref")
        elif len(data) > max_bytes:
            raise InputError("fetch_too_large", f"image of {len(data)} bytes exceeds the limit of {max_bytes}")
        else:
            fetched = Fetched(parsed, data, sha256_hex(data), "body", parsed.times)
        decoded = fetched if isinstance(fetched, DeadLettered) else await expand_item(
            fetched, self.classifier, self.request_pool, self.frames, hash_pdq=self.hash_pdq)
        if isinstance(decoded, DeadLettered):
            raise InputError(decoded.dead_letter.reason, decoded.dead_letter.message)
        return decoded
