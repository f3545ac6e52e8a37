"""The front half's stages: ingest -> redelivery guard -> fetch -> verdict cache -> expand (a still image: decode;
an animation or a video: its sampled frames, decoded), taken a batch at a time
(:mod:`~vitguard.pipeline.runtime.intake` decides the batches).

A batch is screened at once (:meth:`FrontHalf.screen`: parse, the in-memory guard, ONE Redis lookup); local
references are read in one thread hop and looked up in the verdict cache at once (:meth:`FrontHalf.fetch_local`),
and images, still or animated, decoded a few pool jobs at a time (:meth:`FrontHalf.decode_batch`). What may
take long runs on its own so that it holds nobody: a remote fetch (:meth:`FrontHalf.finish`), a video
(:meth:`FrontHalf.expand`). What each returns (decoded, a cache hit, a dead letter, or skipped) joins the ready
queue.

The redelivery guard is two layers: the events this worker answered recently or has in flight (in memory;
works while Redis is down), then Redis (shared by all workers). An event is known by its id and a digest of what
it asks about (:func:`~vitguard.pipeline.core.answer_key`), so an id reused for another image is judged again.
Only events that got a verdict are remembered, so a re-driven dead letter (a new record, the same event) is
processed again. Before both, the records this worker answered recently are remembered by position (topic,
partition, offset): the same record delivered again (a rewind after a rebalance or a pause) is skipped whatever
its answer was, including a dead letter for a message with no event id (invalid JSON).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from vitguard import metrics
from vitguard.errors import InputError
from vitguard.fetch import ImageFetcher
from vitguard.fetch.fetcher import is_local
from vitguard.media import FrameLimits, media_kind
from vitguard.media.sniff import SNIFF_BYTES
from vitguard.model.types import Classifier
from vitguard.pipeline.core import answer_key, parse_cached_verdict, verdict_from_cache
from vitguard.pipeline.results import (
    CacheHit,
    DeadLettered,
    Decoded,
    DecodedFrames,
    Fetched,
    Parsed,
    Ready,
    Skipped,
    Tagged,
)
from vitguard.pipeline.runtime.coalesce import Coalescer
from vitguard.pipeline.runtime.failure import RedisPolicy
from vitguard.pipeline.runtime.finishing import timings
from vitguard.pipeline.stages.decode_batch import decode_batch
from vitguard.pipeline.stages.expand import expand_item
from vitguard.pipeline.stages.fetch import fetch_failed, fetch_image, fetch_timed_out, fetched_from, sha256_hex
from vitguard.pipeline.stages.ingest import parse
from vitguard.pipeline.types import ImageRequest, RawMessage
from vitguard.policies.compiled import CompiledPolicy
from vitguard.policies.live import PolicyHolder
from vitguard.schemas.events import ImageEvent
from vitguard.stores.interfaces import DedupStore

__all__ = ["RECENT_EVENT_IDS", "FrontHalf", "Intake", "LocalFetch", "Screened"]

RECENT_EVENT_IDS = 100_000
"""Events (answer keys) and records this worker answered most recently, remembered in memory."""

_CLASSIFY_TOPIC = "(classify)"


class Intake(Protocol):
    """A record as the stream hands it to the front half (the runner's entry for it)."""

    @property
    def raw(self) -> RawMessage: ...

    @property
    def consumed_ms(self) -> float | None: ...


E = TypeVar("E", bound=Intake)


@dataclass(frozen=True)
class Screened(Generic[E]):
    """A batch after :meth:`FrontHalf.screen`."""

    done: list[Tagged[E, Ready]]
    """Answered already: skipped (redelivered, repeated) or dead-lettered (unparsable)."""
    local: list[Tagged[E, Parsed]]
    """References read without the network (``data:``, ``file:``): for :meth:`FrontHalf.fetch_local`."""
    remote: list[Tagged[E, Parsed]]
    """Fetched each on its own: for :meth:`FrontHalf.finish`."""


@dataclass(frozen=True)
class LocalFetch(Generic[E]):
    """Local references after :meth:`FrontHalf.fetch_local`."""

    done: list[Tagged[E, Ready]]
    """Dead letters (unreadable) and cache hits."""
    images: list[Tagged[E, Fetched]]
    """Images, still or animated (GIF, PNG, WebP), for :meth:`FrontHalf.decode_batch`."""
    videos: list[Tagged[E, Fetched]]
    """Video (its decode may take seconds), for :meth:`FrontHalf.expand` one by one."""


def _record_of(raw: RawMessage) -> tuple[str, int, int]:
    return raw.topic, raw.partition, raw.offset


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
        decode_jobs: int = 1,
        decode_budget_s: float = 1.0,
        policies: PolicyHolder | None = None,
    ) -> None:
        self.classifier = classifier
        self.policies = policies
        """The policy document in force: a cache hit is judged again under its event's policy."""
        self.fetcher = fetcher
        self.dedup = dedup
        self.redis = redis
        self.cache_key = cache_key
        self.pool = pool
        self.request_pool = request_pool or pool
        """Where a ``POST /classify`` request's fetch, decode and hash run (the decode pool's urgent lane)."""
        self.fetch_timeout_s = fetch_timeout_s
        self.decode_jobs = decode_jobs
        """Pool jobs a batch of images is cut into (one per decode thread)."""
        self.decode_budget_s = decode_budget_s
        """Running time after which a decode job leaves its remaining images to a new job."""
        self.frames = frames or FrameLimits()
        self.hash_pdq = hash_pdq
        """PDQ-hash every image and frame (for the hash banks); off when the banks are."""
        self._recent_keys: OrderedDict[str, None] = OrderedDict()
        self._active_keys: set[str] = set()
        self._active_records: dict[tuple[str, int, int], str] = {}
        """The answer key of each record in flight (what :meth:`settled` releases)."""
        self._recent_records: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        # a remote reference asks the verdict cache on its own, once fetched: concurrent ones share a round trip
        self._cached: Coalescer[str, str] = Coalescer(self._cached_verdicts)

    async def _seen_events(self, keys: Sequence[str]) -> Mapping[str, bool]:
        """Which of ``keys`` Redis remembers as answered (none while Redis is down: the guard degrades)."""
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
        record = _record_of(raw)
        _remember(self._recent_records, record)
        key = self._release(record)
        if key is not None and answered:
            _remember(self._recent_keys, key)

    def _admit(self, raw: RawMessage, consumed_ms: float | None) -> Parsed | DeadLettered | Skipped:
        """The checks that need no I/O: a record answered recently, the parse, an event answered recently or in
        flight. A parsed event is in flight from here on (until :meth:`settled`)."""
        record = _record_of(raw)
        if record in self._recent_records:
            return Skipped(raw, "redelivered")
        parsed = parse(raw, consumed_ms)
        if isinstance(parsed, DeadLettered):
            return parsed
        if parsed.times.queue_ms:
            metrics.QUEUE_TIME.observe(parsed.times.queue_ms / 1000)
        key = answer_key(parsed.event)
        if key in self._recent_keys or key in self._active_keys:
            return Skipped(raw, "repeat" if key in self._active_keys else "redelivered")
        self._active_keys.add(key)
        self._active_records[record] = key
        return parsed

    async def finish(self, parsed: Parsed) -> Ready:
        """fetch -> verdict cache -> expand, for one event past the redelivery guard (a remote reference, whose
        fetch may take seconds: on its own, so it holds nobody)."""
        try:
            fetched = await fetch_image(parsed, self.fetcher, self.pool, self.fetch_timeout_s)
            if isinstance(fetched, DeadLettered):
                return fetched
            cached = await self._cached.get(fetched.sha256)
            hit = self._cache_hit(fetched, cached)
            if hit is not None:
                return hit
            return await self.expand(fetched)
        except BaseException:
            self._release(_record_of(parsed.raw))
            raise

    async def expand(self, fetched: Fetched) -> Ready:
        """The expand stage for one fetched item (a video, or an image of a remote reference)."""
        try:
            return await expand_item(fetched, self.classifier, self.pool, self.limits_for(fetched.parsed),
                                     hash_pdq=self.hash_pdq)
        except BaseException:
            self._release(_record_of(fetched.parsed.raw))
            raise

    def _cache_hit(self, fetched: Fetched, cached: str | None) -> CacheHit | None:
        """The event answered from the verdict cache, judged under its own policy; None when there is no entry,
        or when the entry's frames were sampled otherwise than the event's policy samples (decoded again)."""
        entry = parse_cached_verdict(cached) if cached is not None else None
        if entry is None:
            return None
        parsed = fetched.parsed
        policy = parsed.policy_in(self.policies.book) if self.policies is not None else None
        if entry.frames and not entry.fits(self._limits(policy).sampling_key, self.frames.sampling_key):
            return None
        original = entry.verdict
        verdict = verdict_from_cache(original, parsed.event, fetched.sha256, timings(fetched.times), policy)
        return CacheHit(parsed, verdict, original.content_id, entry.frames)

    def limits_for(self, parsed: Parsed) -> FrameLimits:
        """The frame limits of the event's policy (its sampling, the fleet's limits)."""
        return self._limits(parsed.policy_in(self.policies.book) if self.policies is not None else None)

    def _limits(self, policy: CompiledPolicy | None) -> FrameLimits:
        return self.frames if policy is None else policy.frame_limits(self.frames)

    # ------------------------------------------------------------------ the stream, a batch at a time

    async def screen(self, items: Sequence[E]) -> Screened[E]:
        """The first steps for a batch of records: :meth:`_admit` each, then ONE Redis lookup for the redelivery
        guard of all of them; the events left are split by reference: read locally in one hop
        (:meth:`fetch_local`) or fetched each on its own (:meth:`finish`)."""
        done: list[Tagged[E, Ready]] = []
        admitted: list[Tagged[E, Parsed]] = []
        for item in items:
            value = self._admit(item.raw, item.consumed_ms)
            if isinstance(value, Parsed):
                admitted.append(Tagged(item, value))
            else:
                done.append(Tagged(item, value))
        if not admitted:
            return Screened(done, [], [])
        try:
            seen = await self._seen_events([self._active_records[_record_of(a.value.raw)] for a in admitted])
        except BaseException:
            for a in admitted:
                self._release(_record_of(a.value.raw))
            raise
        local: list[Tagged[E, Parsed]] = []
        remote: list[Tagged[E, Parsed]] = []
        for a in admitted:
            record = _record_of(a.value.raw)
            if seen.get(self._active_records[record]):
                self._release(record)
                done.append(Tagged(a.tag, Skipped(a.value.raw, "redelivered")))
            else:
                (local if is_local(a.value.event.image_ref) else remote).append(a)
        return Screened(done, local, remote)

    async def fetch_local(self, items: Sequence[Tagged[E, Parsed]]) -> LocalFetch[E]:
        """Read and hash local references (``data:``, ``file:``) in one thread hop, then ONE verdict-cache lookup
        for all of them; images are left for :meth:`decode_batch`, video for :meth:`expand`."""
        out = LocalFetch[E]([], [], [])
        try:
            async with asyncio.timeout(self.fetch_timeout_s):
                results = await self.fetcher.fetch_local([t.value.event.image_ref for t in items])
        except TimeoutError:
            for t in items:
                out.done.append(Tagged(t.tag, fetch_timed_out(t.value, self.fetch_timeout_s)))
            return out
        except BaseException:
            for t in items:
                self._release(_record_of(t.value.raw))
            raise
        fetched: list[Tagged[E, Fetched]] = []
        for t, result in zip(items, results, strict=True):
            value = fetch_failed(t.value, result) if isinstance(result, InputError) else fetched_from(t.value, result)
            if isinstance(value, DeadLettered):
                out.done.append(Tagged(t.tag, value))
            else:
                fetched.append(Tagged(t.tag, value))
        if not fetched:
            return out
        cached = await self._cached_verdicts(list(dict.fromkeys(f.value.sha256 for f in fetched)))
        for f in fetched:
            hit = self._cache_hit(f.value, cached.get(f.value.sha256))
            if hit is not None:
                out.done.append(Tagged(f.tag, hit))
            elif media_kind(f.value.data[:SNIFF_BYTES]) == "video":
                out.videos.append(f)
            else:
                out.images.append(f)
        return out

    def decode_batch(
        self, items: Sequence[Tagged[E, Fetched]]
    ) -> AsyncIterator[list[Tagged[E, Decoded | DecodedFrames | DeadLettered]]]:
        """Decode images a few pool jobs at a time (:func:`~vitguard.pipeline.stages.decode_batch.decode_batch`);
        yields each job's images as it returns."""
        return decode_batch(items, self.classifier, self.pool, jobs=self.decode_jobs, limits=self.limits_for,
                            budget_s=self.decode_budget_s, hash_pdq=self.hash_pdq)

    def release(self, raw: RawMessage) -> None:
        """The record is out of flight unanswered (to be prepared again: its guard must not call it a repeat)."""
        self._release(_record_of(raw))

    def _release(self, record: tuple[str, int, int]) -> str | None:
        """The record is out of flight: its event's answer key (None if it had none in flight) is released."""
        key = self._active_records.pop(record, None)
        if key is not None:
            self._active_keys.discard(key)
        return key

    async def prepare_request(self, request: ImageRequest) -> Decoded | DecodedFrames:
        """The same fetch and decode for a ``POST /classify`` request (no guard, no cache), ahead of the
        stream's queued decodes.

        Raises:
            InputError: the reference or the bytes are unusable, or no policy has the name asked for.
        """
        book = self.policies.book if self.policies is not None else None
        if request.policy is not None and (book is None or book.named(request.policy) is None):
            raise InputError("schema_violation", f"policy {request.policy!r}: the policy document in force "
                                                 f"({book.version if book else 'none'}) has no such policy")
        event_id = uuid.uuid4().hex
        data, image_ref = request.data, request.image_ref
        who: dict[str, Any] = {"event_id": event_id, "content_id": request.content_id or f"classify-{event_id}",
               "tenant": request.tenant, "surface": request.surface}
        # bytes sent in the request body have no reference: the event is internal, built without validation
        event = (ImageEvent(**who, image_ref=image_ref) if image_ref is not None
                 else ImageEvent.model_construct(**who, image_ref="(request body)"))
        parsed = Parsed(RawMessage(None, None, _CLASSIFY_TOPIC, 0, 0), event, policy=request.policy)
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
            fetched, self.classifier, self.request_pool, self.limits_for(parsed), hash_pdq=self.hash_pdq)
        if isinstance(decoded, DeadLettered):
            raise InputError(decoded.dead_letter.reason, decoded.dead_letter.message)
        return decoded
