"""The retro-hunter: follows the review-audit and alerts topics and hunts for every trigger it reads
(``vitguard retro-hunt --follow``).

It runs off the worker's hot path, as its own process, in a consumer group
(:attr:`~vitguard.settings.RetroSettings.group_id`): several replicas share the partitions, and the group's
committed offsets are the hunts' progress. A record's offset is stored only after its matches were published
and acknowledged, so a restart never loses a hunt; one interrupted between the publish and the commit runs
again and publishes the same ``retro_match_id`` s (consumers deduplicate on them).

Bounded: at most :attr:`~vitguard.settings.RetroSettings.hunts_per_s` hunts start a second, and a wave's
cluster is hunted once per wave window however many critical alerts it raises (a later alert of the same wave
would find the same items). When the store or the broker is down, the hunt waits and retries (backing off up
to 30 s) rather than skip: the partition waits, nothing is lost. A record that is not a valid event is logged,
counted and skipped; one whose item is not stored is counted (``not_stored``) and skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from prometheus_client import Counter

from vitguard.banks.state import BankState, entry_of_key
from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.produce import DEFAULT_PRODUCER_CONFIG, OutboundMessage, produce_and_wait, raise_on_failures
from vitguard.kafka.reader import RawRecord, TopicReader, decode
from vitguard.metrics import REGISTRY
from vitguard.retro.hashes import HashCatalog
from vitguard.retro.hunt import Hunt, Searcher, entry_trigger, hash_hunt, hunt, trigger_of
from vitguard.schemas.events import NearDuplicateAlert, Verdict, alert_type_of
from vitguard.schemas.retro import RetroMatch, RetroTrigger
from vitguard.schemas.review import ReviewAuditRecord
from vitguard.search import NotStoredError
from vitguard.settings import Settings

__all__ = ["HUNTS", "MATCHES", "RECORDS_SKIPPED", "RetroHunter", "encode_match", "fold_verdict", "read_hashes"]

_log = logging.getLogger(__name__)

HUNTS = Counter(
    "vitguard_retro_hunts", "Retro-hunts run, by trigger and outcome (matched, clean, not_stored, repeat).",
    ["trigger", "outcome"], registry=REGISTRY,
)
MATCHES = Counter("vitguard_retro_matches", "Retro matches published, by trigger.", ["trigger"], registry=REGISTRY)
RECORDS_SKIPPED = Counter(
    "vitguard_retro_records_skipped", "Records the retro-hunter could not read (invalid events), by topic.",
    ["topic"], registry=REGISTRY,
)

_MAX_BACKOFF_S = 30.0
_WAVES_KEPT = 4096
"""Clusters hunted in the current wave window, remembered before the expired ones are dropped."""


def encode_match(topic: str, match: RetroMatch) -> OutboundMessage:
    """One match as a message on the alerts topic, keyed by the matched item (its other events' key)."""
    return OutboundMessage(topic, match.model_dump_json().encode(), match.content_id.encode())


class RetroHunter:
    """Turns trigger records into published matches (see the module docstring).

    Args:
        settings: Kafka connection, topic names, the retro settings and the policy's wave window.
        searcher: where hunts search (the store, or a worker).
        reach: the threshold, the most matches a hunt reports, and the oldest upload hunted.
        producer: a confluent-kafka producer (the I/O seam); default: an idempotent one.
        clock, sleep: the rate bound's time (tests).
    """

    def __init__(self, settings: Settings, searcher: Searcher, reach: Hunt, *, producer: Any = None,
                 publish_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, catalog: HashCatalog | None = None) -> None:
        self.settings = settings
        self.searcher = searcher
        self.reach = reach
        self.catalog = catalog
        """The PDQ hashes of the items judged safe (hash hunts for new bank entries); None: no hash hunts."""
        self.banks = BankState()
        """The banks as the banks topic says (a new entry is hunted with its bank's match distance)."""
        self.publish_timeout_s = publish_timeout_s
        self._producer = producer or Producer(librdkafka_config(settings.kafka, **DEFAULT_PRODUCER_CONFIG))
        self._clock = clock
        self._sleep = sleep
        self._interval_s = 1.0 / settings.retro.hunts_per_s
        self._next_start = 0.0
        self._waves: dict[str, float] = {}
        self.published = 0

    # -- one record ------------------------------------------------------------------------------------

    def trigger(self, record: RawRecord) -> RetroTrigger | None:
        """The hunt ``record`` starts, or None (not a trigger, invalid, or a wave hunted this window)."""
        t = self.settings.topics
        if self.catalog is not None and record.topic == self.settings.banks.topic:
            return self._entry_trigger(record)
        if record.topic == t.review_audit:
            decoded = decode(record, ReviewAuditRecord)
        elif record.topic == t.alerts and alert_type_of(record.value) in ("near_duplicate", None):
            decoded = decode(record, NearDuplicateAlert)  # type: ignore[arg-type]
        else:
            return None
        if decoded.value is None:
            RECORDS_SKIPPED.labels(record.topic).inc()
            _log.error("retro-hunt: skipping an invalid record: %s", decoded.error)
            return None
        found = trigger_of(decoded.value)
        if found is not None and found.kind == "review_confirmed" and self.catalog is not None:
            self.catalog.remove(found.content_id)  # no longer safe: nothing to take down by hash
        if found is not None and found.kind == "wave" and found.cluster_id:
            return found if self._first_of_wave(found.cluster_id) else None
        return found

    def _first_of_wave(self, cluster_id: str) -> bool:
        """Whether this wave alert is the first of its cluster in the wave window (a later one is a repeat)."""
        now = self._clock()
        last = self._waves.get(cluster_id)
        if last is not None and now - last < self.settings.policy.wave_window_s:
            HUNTS.labels("wave", "repeat").inc()
            return False
        self._waves[cluster_id] = now
        if len(self._waves) > _WAVES_KEPT:  # a follower runs for months: forget waves whose window is over
            window = self.settings.policy.wave_window_s
            self._waves = {c: t for c, t in self._waves.items() if now - t < window}
        return True

    def _entry_trigger(self, record: RawRecord) -> RetroTrigger | None:
        """A banks topic record: applied to the banks; a new entry of a positive bank starts a hash hunt."""
        self.banks.apply(record.key, record.value)
        found = entry_of_key(record.key)
        entry = self.banks.entries.get(found) if found is not None and record.value is not None else None
        return entry_trigger(entry, self.banks.banks.get(entry.bank)) if entry is not None else None

    def fold_verdict(self, record: RawRecord) -> None:
        """A verdicts topic record into the hash catalog (an invalid one is counted and skipped)."""
        if self.catalog is not None:
            fold_verdict(self.catalog, record)

    def run_hunt(self, trigger: RetroTrigger, *, stop: threading.Event | None = None) -> list[RetroMatch]:
        """Hunt once (at the rate bound) and publish what it found, acknowledged; retry while the store or
        the broker is unavailable. Returns the matches ([] when the item is not stored). A hash hunt is a scan
        in memory: not held to the rate bound, which spares the store."""
        if trigger.kind != "bank_entry":
            self._wait_turn()
        attempt = 0
        while True:
            try:
                return self._hunt_and_publish(trigger)
            except ServiceUnavailableError as exc:
                attempt += 1
                delay = min(_MAX_BACKOFF_S, 0.5 * 2 ** min(attempt, 6))
                _log.warning("retro-hunt from %s waits %.1fs and tries again: %s", trigger.content_id, delay, exc)
                if stop is not None and stop.wait(delay):
                    raise
                if stop is None:
                    self._sleep(delay)

    def _hunt_and_publish(self, trigger: RetroTrigger) -> list[RetroMatch]:
        try:
            if trigger.kind == "bank_entry":
                bank = self.banks.banks.get(trigger.bank or "")
                distance = bank.match_distance if bank is not None else self.settings.banks.default_match_distance
                matches = hash_hunt(self.catalog or HashCatalog(), trigger, distance, self.reach.limit)
            else:
                matches = hunt(self.searcher, trigger, self.reach)
        except NotStoredError:
            HUNTS.labels(trigger.kind, "not_stored").inc()
            _log.warning("retro-hunt: %s is not stored; nothing to hunt from (%s)", trigger.content_id, trigger.kind)
            return []
        if matches:
            topic = self.settings.topics.alerts
            raise_on_failures(produce_and_wait(self._producer, [encode_match(topic, m) for m in matches],
                                               self.publish_timeout_s))
            MATCHES.labels(trigger.kind).inc(len(matches))
            self.published += len(matches)
        HUNTS.labels(trigger.kind, "matched" if matches else "clean").inc()
        _log.info("retro-hunt (%s %s) from %s: %d item(s) judged safe are within %.3f", trigger.kind,
                  trigger.trigger_id, trigger.content_id, len(matches), self.reach.threshold)
        return matches

    def _wait_turn(self) -> None:
        now = self._clock()
        if self._next_start > now:
            self._sleep(self._next_start - now)
            now = self._clock()
        self._next_start = max(now, self._next_start) + self._interval_s

    # -- following -------------------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None, idle_timeout_s: float | None = None,
            consumer_overrides: dict[str, Any] | None = None, connect_timeout_s: float = 10.0) -> int:
        """Follow the trigger topics in the group until ``stop`` is set (or nothing arrived for
        ``idle_timeout_s``); returns how many matches were published."""
        t = self.settings.topics
        retro = self.settings.retro
        overrides = {"max.poll.interval.ms": int(retro.max_poll_interval_s * 1000), **(consumer_overrides or {})}
        topics = [t.review_audit, t.alerts]
        verdicts = None
        if self.catalog is not None:  # hash hunts: the banks in the group; the hashes from the verdicts' start
            verdicts = self._load_catalog(connect_timeout_s)
            if verdicts is None:
                self.catalog = None
            else:
                topics.append(self.settings.banks.topic)
        with TopicReader(self.settings.kafka, topics, group_id=retro.group_id,
                         connect_timeout_s=connect_timeout_s, poll_interval_s=0.2,
                         consumer_overrides=overrides) as reader:
            last = time.monotonic()
            while stop is None or not stop.is_set():
                if verdicts is not None:
                    self._follow_verdicts(verdicts)
                record = reader.next_record(0.2)
                if record is None:
                    if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                        break
                    continue
                last = time.monotonic()
                found = self.trigger(record)
                if found is not None:
                    try:
                        self.run_hunt(found, stop=stop)
                    except ServiceUnavailableError:
                        break  # stopped while waiting to retry: the record stays unstored, so it runs again
                reader.store(record)
        if verdicts is not None:
            verdicts.close()
        self._producer.flush(5)
        return self.published

    def _load_catalog(self, connect_timeout_s: float) -> TopicReader | None:
        """Read the verdicts topic from its beginning into the hash catalog (and the banks topic, for the
        banks' settings), before any hunt: returns the verdicts reader, to follow; None when either topic does
        not exist (no worker has run with banks yet): no hash hunts this run, said once."""
        from vitguard.kafka.admin import TopicNotFoundError
        from vitguard.kafka.offsets import topic_partitions

        started = time.perf_counter()
        for topic in (self.settings.banks.topic, self.settings.topics.verdicts):
            try:
                topic_partitions(self.settings.kafka, topic, connect_timeout_s)
            except TopicNotFoundError:
                _log.warning("retro-hunt: topic %s does not exist: no hunts by hash for new bank entries", topic)
                return None
        with TopicReader(self.settings.kafka, self.settings.banks.topic, connect_timeout_s=connect_timeout_s) as banks:
            for r in banks.read_to_end(self.settings.banks.load_timeout_s):
                self.banks.apply(r.key, r.value)
        verdicts = TopicReader(self.settings.kafka, self.settings.topics.verdicts, connect_timeout_s=connect_timeout_s)
        if self.catalog is not None:
            read_hashes(self.settings, verdicts, self.catalog)
        _log.info("retro-hunt: %d stored hash(es) of items judged safe, %d bank(s), read in %.1fs",
                  len(self.catalog or ()), len(self.banks.banks), time.perf_counter() - started)
        return verdicts

    def _follow_verdicts(self, verdicts: TopicReader, most: int = 2000) -> None:
        for _ in range(most):
            record = verdicts.next_record(0)
            if record is None:
                return
            self.fold_verdict(record)


def fold_verdict(catalog: HashCatalog, record: RawRecord) -> None:
    """A verdicts topic record into ``catalog`` (an invalid one is counted and skipped)."""
    decoded = decode(record, Verdict)
    if decoded.value is None:
        RECORDS_SKIPPED.labels(record.topic).inc()
        return
    catalog.add(decoded.value)


def read_hashes(settings: Settings, verdicts: TopicReader, catalog: HashCatalog) -> None:
    """Every verdict on the verdicts topic up to its end, folded into ``catalog``."""
    for r in verdicts.read_to_end(max(60.0, settings.banks.load_timeout_s)):
        fold_verdict(catalog, r)
