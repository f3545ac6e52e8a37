"""The bank follower: reads the banks topic into memory and keeps a worker's matcher current.

:meth:`BankFollower.start` reads the topic to its end (so a worker never starts matching against half its
banks), builds the first index, and then follows the topic in a thread: records are applied as they
arrive, and once changes stop arriving (or ``rebuild_interval_s`` after the first of a long run) a new
snapshot is built in that thread and swapped into the matcher. Building never happens on the stream's
hot path; a batch in flight finishes on the snapshot it started with. Any record source with
``read_to_end``/``next_record`` works (the I/O seam), so unit tests feed records without a broker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from vitguard.banks.index import IndexKind
from vitguard.banks.matcher import BankMatcher, build_snapshot
from vitguard.banks.state import BankState
from vitguard.errors import VitguardError
from vitguard.settings import BankSettings, KafkaSettings, TopicSettings

if TYPE_CHECKING:
    from vitguard.kafka.reader import RawRecord

__all__ = ["BankFollower", "RecordSource"]

_log = logging.getLogger(__name__)

_QUIET_POLL_S = 0.05
_IDLE_POLL_S = 0.25


class RecordSource(Protocol):
    """What the follower reads (a :class:`~vitguard.kafka.reader.TopicReader`)."""

    def read_to_end(self, timeout_s: float) -> list[RawRecord]: ...

    def next_record(self, timeout_s: float) -> RawRecord | None: ...

    def close(self) -> None: ...


class BankFollower:
    """Follows the banks topic for one :class:`~vitguard.banks.matcher.BankMatcher`.

    Args:
        kafka: connection settings.
        banks: bank settings (topic, index kind, rebuild interval, load timeout).
        matcher: the matcher to keep current.
        topics: replication factor when the banks topic has to be created.
        source: a record source to use instead of a TopicReader (the I/O seam).
    """

    def __init__(
        self, kafka: KafkaSettings, banks: BankSettings, matcher: BankMatcher, *,
        topics: TopicSettings | None = None, source: RecordSource | None = None,
    ) -> None:
        self.kafka = kafka
        self.settings = banks
        self.matcher = matcher
        self.topics = topics
        self.state = BankState()
        self._source = source
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.rebuilds = 0

    @property
    def kind(self) -> IndexKind:
        return self.settings.index

    def start(self) -> None:
        """Read the topic to its end, build the first index, follow in a thread.

        Raises:
            ServiceUnavailableError: the topic could not be read to its end within ``load_timeout_s``.
        """
        if self._source is None:
            from vitguard.banks.store import ensure_bank_topic
            from vitguard.kafka.reader import TopicReader

            ensure_bank_topic(self.kafka, self.settings, self.topics)
            self._source = TopicReader(self.kafka, self.settings.topic,
                                       connect_timeout_s=self.settings.load_timeout_s)
        started = time.perf_counter()
        assert self._source is not None  # noqa: S101
        for r in self._source.read_to_end(self.settings.load_timeout_s):
            self.state.apply(r.key, r.value)
        self.rebuild()
        snap = self.matcher.snapshot
        _log.info("banks loaded from %s: %d bank(s), %d hash(es) in %.2fs", self.settings.topic, len(snap.banks),
                  len(snap), time.perf_counter() - started)
        self._thread = threading.Thread(target=self._run, name="vitguard-bank-follower", daemon=True)
        self._thread.start()

    def rebuild(self) -> None:
        """Build a snapshot of the state now and hand it to the matcher."""
        snap = build_snapshot(self.state, kind=self.kind, multihash_min=self.settings.multihash_min)
        self.matcher.update(snap)
        self.rebuilds += 1
        _log.debug("bank index rebuilt: version %d, %d hash(es), %.3fs", snap.version, len(snap), snap.build_s)

    def _run(self) -> None:
        assert self._source is not None  # noqa: S101 - set by start()
        pending_since: float | None = None
        while not self._stop.is_set():
            try:
                record = self._source.next_record(_QUIET_POLL_S if pending_since else _IDLE_POLL_S)
                now = time.monotonic()
                if record is not None and self.state.apply(record.key, record.value):
                    pending_since = pending_since or now
                for key, released_at in self.state.take_releases():  # an operator's release from quarantine
                    self.matcher.release(key, released_at)
                if pending_since is not None and (
                    record is None or now - pending_since >= self._max_pending_s()
                ):
                    self.rebuild()
                    pending_since = None
                self.last_error = None
            except VitguardError as exc:
                self.last_error = str(exc)
                _log.warning("bank follower: %s; the last index stays in use", exc)
                self._stop.wait(1.0)
            except Exception as exc:  # a bug must not kill the thread silently: log it, keep the last index
                self.last_error = f"{type(exc).__name__}: {exc}"
                _log.exception("bank follower failed; the last index stays in use")
                self._stop.wait(1.0)

    def _max_pending_s(self) -> float:
        """A long run of changes (a big import) rebuilds at most this often: the interval, or 5x a build."""
        return max(self.settings.rebuild_interval_s, 5 * self.matcher.snapshot.build_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop following and close the reader."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._source is not None:
            self._source.close()
            self._source = None
