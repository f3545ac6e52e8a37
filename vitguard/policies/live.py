"""The policy document in force in a worker, and how a new one reaches it without a restart.

:class:`PolicyHolder` holds the compiled :class:`~vitguard.policies.compiled.PolicyBook`; the hot path reads
``holder.book`` once per forward pass, so a pass finishes on the book it started with. A new document is
parsed and compiled off the hot path (:meth:`PolicyHolder.offer`) and swapped in whole; a document that
does not parse, check or compile is refused whole, logged with its line and reason, counted, and the last
good one stays in force.

Two sources (``VITGUARD_POLICY_TOPIC`` or ``VITGUARD_POLICY_FILE``), followed by :class:`PolicyFollower` in a
thread: a compacted topic whose latest record under the key ``document`` is the document (a tombstone goes
back to the built-in policy of the environment settings), or a file, read again when it changes (a mounted
Kubernetes ConfigMap is replaced in place).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vitguard import metrics
from vitguard.errors import ConfigError, VitguardError
from vitguard.policies.compiled import PolicyBook, builtin_book, compile_document, describe
from vitguard.policies.document import PolicyDocumentError, parse_document

if TYPE_CHECKING:
    from vitguard.settings import KafkaSettings, PolicySettings, TopicSettings

__all__ = [
    "DOCUMENT_KEY",
    "FileSource",
    "PolicyFollower",
    "PolicyHolder",
    "TopicSource",
    "load_initial",
    "open_source",
    "read_policies",
]

_log = logging.getLogger(__name__)

DOCUMENT_KEY = b"document"
"""The key of the document's records on the policies topic (compaction keeps the latest)."""

_FILE_POLL_S = 1.0
_TOPIC_POLL_S = 0.25


class PolicyHolder:
    """The compiled document in force, and what to do with a new one.

    Args:
        builtin: the book of the environment settings, in force until a document is accepted and again after
            the document is withdrawn.
        model_labels: the running model's classes (documents are compiled against them).
        default_unsafe_labels: the unsafe labels in force (the default category of a document without one).
    """

    def __init__(self, builtin: PolicyBook, model_labels: Sequence[str], default_unsafe_labels: Sequence[str]) -> None:
        self.builtin = builtin
        self.book = builtin
        self.model_labels = tuple(model_labels)
        self.default_unsafe_labels = tuple(default_unsafe_labels)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        _set_version_metric(builtin)

    @classmethod
    def from_settings(cls, policy: PolicySettings, model_labels: Sequence[str], unsafe_labels: Sequence[str],
                      review_band: tuple[float, float] | None) -> PolicyHolder:
        """A holder whose built-in book is the environment's policy (``review_band``: ReviewSettings' band)."""
        from vitguard.policies.document import ReviewBand

        band = ReviewBand(low=review_band[0], high=review_band[1]) if review_band else None
        return cls(builtin_book(model_labels, unsafe_labels, policy.unsafe_threshold, band), model_labels,
                   unsafe_labels)

    def compile(self, text: str | bytes) -> PolicyBook:
        """Parse, check and compile a document for this worker's model, without putting it in force.

        Raises:
            PolicyDocumentError: the document is refused (line and reason in the message).
        """
        return compile_document(parse_document(text), self.model_labels, self.default_unsafe_labels)

    def offer(self, text: str | bytes | None, *, source: str) -> bool:
        """Put a new document in force if it is good; ``None`` withdraws the document (back to the built-in).
        Whether it was accepted."""
        with self._lock:
            if text is None:
                self._swap(self.builtin, source)
                return True
            try:
                book = self.compile(text)
            except PolicyDocumentError as exc:
                self.last_error = str(exc)
                metrics.POLICY_DOCUMENTS.labels("refused").inc()
                _log.warning("policy document from %s refused (%s); version %s stays in force",
                             source, exc, self.book.version)
                return False
            self._swap(book, source)
            return True

    def _swap(self, book: PolicyBook, source: str) -> None:
        changed = book.fingerprint != self.book.fingerprint
        self.book = book
        self.last_error = None
        metrics.POLICY_DOCUMENTS.labels("applied").inc()
        _set_version_metric(book)
        if changed:
            _log.info("policy document %s in force (from %s): %s", book.version, source, describe(book))


def _set_version_metric(book: PolicyBook) -> None:
    metrics.POLICY_VERSION.clear()
    metrics.POLICY_VERSION.labels(book.version, book.fingerprint).set(1)


class DocumentSource(Protocol):
    """Where documents come from: ``initial`` once at start-up, then ``changes`` polled by the follower.
    Each yields the documents in order (``None``: withdrawn)."""

    name: str

    def initial(self, timeout_s: float) -> list[bytes | None]: ...

    def changes(self, timeout_s: float) -> list[bytes | None]: ...

    def close(self) -> None: ...


class FileSource:
    """A document file, read again when its modification time, size or inode change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"file {path}"
        self._seen: tuple[int, int, int] | None = None

    def _stamp(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def initial(self, timeout_s: float) -> list[bytes | None]:
        try:
            self._seen = self._stamp()
            return [self.path.read_bytes()]
        except OSError as exc:
            raise ConfigError(f"VITGUARD_POLICY_FILE={self.path}: cannot read it ({exc.strerror})") from None

    def changes(self, timeout_s: float) -> list[bytes | None]:
        time.sleep(timeout_s)
        try:
            stamp = self._stamp()
            if stamp == self._seen:
                return []
            data = self.path.read_bytes()
        except OSError as exc:  # replaced mid-read, or gone for a moment (a ConfigMap swap): next poll
            _log.debug("policy file %s not readable now: %s", self.path, exc)
            return []
        self._seen = stamp
        return [data]

    def close(self) -> None:
        return None


class TopicSource:
    """The compacted policies topic: records under :data:`DOCUMENT_KEY` (others are ignored, with a warning)."""

    def __init__(self, kafka: KafkaSettings, topic: str, topics: TopicSettings | None = None, *,
                 connect_timeout_s: float = 20.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.topics = topics
        self.name = f"topic {topic}"
        self._connect_timeout_s = connect_timeout_s
        self._reader: object | None = None

    def initial(self, timeout_s: float) -> list[bytes | None]:
        from vitguard.kafka.admin import ensure_state_topic
        from vitguard.kafka.reader import TopicReader

        ensure_state_topic(self.kafka, self.topic, self.topics.replication_factor if self.topics else 1)
        reader = TopicReader(self.kafka, self.topic, connect_timeout_s=self._connect_timeout_s)
        self._reader = reader
        return [v for r in reader.read_to_end(timeout_s) if (v := _document_value(r.key, r.value)) is not _SKIP]

    def changes(self, timeout_s: float) -> list[bytes | None]:
        from vitguard.kafka.reader import TopicReader

        reader = self._reader
        assert isinstance(reader, TopicReader)  # noqa: S101 - initial() ran
        record = reader.next_record(timeout_s)
        if record is None:
            return []
        value = _document_value(record.key, record.value)
        return [] if value is _SKIP else [value]

    def close(self) -> None:
        from vitguard.kafka.reader import TopicReader

        if isinstance(self._reader, TopicReader):
            self._reader.close()
        self._reader = None


_SKIP = b"\0skip"


def _document_value(key: bytes | None, value: bytes | None) -> bytes | None:
    if key != DOCUMENT_KEY:
        _log.warning("policies topic: a record with key %r ignored (documents go under %r)", key, DOCUMENT_KEY)
        return _SKIP
    return value


def load_initial(holder: PolicyHolder, source: DocumentSource, timeout_s: float) -> None:
    """Offer ``holder`` every document ``source`` holds now, in order.

    Raises:
        ConfigError: a file source that cannot be read, or whose document is refused: no document was in
            force before it, and the built-in policy would quietly judge every tenant by the environment's
            rules (a topic's refused documents are skipped as running workers skip them).
    """
    for document in source.initial(timeout_s):
        holder.offer(document, source=source.name)
    if isinstance(source, FileSource) and holder.last_error is not None:
        raise ConfigError(f"VITGUARD_POLICY_FILE={source.path}: {holder.last_error}")


class PolicyFollower:
    """Reads a source's documents into a :class:`PolicyHolder`: all of them at start-up (before the worker
    judges anything), then each change as it comes, in a thread."""

    def __init__(self, holder: PolicyHolder, source: DocumentSource, *, load_timeout_s: float = 20.0) -> None:
        self.holder = holder
        self.source = source
        self.load_timeout_s = load_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Apply the source's documents so far, then follow it.

        Raises:
            ConfigError: a file source that cannot be read, or whose document is refused (a topic's refused
                documents are skipped as running workers skip them: the last good one, or the built-in policy).
            ServiceUnavailableError: the topic could not be read to its end in time.
        """
        load_initial(self.holder, self.source, self.load_timeout_s)
        self._thread = threading.Thread(target=self._run, name="vitguard-policy-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poll_s = _FILE_POLL_S if isinstance(self.source, FileSource) else _TOPIC_POLL_S
        while not self._stop.is_set():
            try:
                for document in self.source.changes(poll_s):
                    self.holder.offer(document, source=self.source.name)
            except VitguardError as exc:
                _log.warning("policy follower: %s; version %s stays in force", exc, self.holder.book.version)
                self._stop.wait(1.0)
            except Exception:  # a bug must not end following silently: log it, keep the document in force
                _log.exception("policy follower failed; version %s stays in force", self.holder.book.version)
                self._stop.wait(1.0)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.source.close()


def open_source(settings: PolicySettings, kafka: KafkaSettings, topics: TopicSettings | None = None
                ) -> DocumentSource | None:
    """The document source the settings name, or None (the built-in policy only)."""
    if settings.file is not None:
        return FileSource(settings.file)
    if settings.topic:
        return TopicSource(kafka, settings.topic, topics, connect_timeout_s=settings.load_timeout_s)
    return None


def read_policies(policy: PolicySettings, kafka: KafkaSettings, model_labels: Sequence[str],
                  unsafe_labels: Sequence[str], review_band: tuple[float, float] | None) -> PolicyHolder:
    """The policy document in force now, read once (``vitguard classify``, ``vitguard policy``): the last good
    document of the topic, or the file's.

    Raises:
        ConfigError: the file cannot be read or its document is refused.
    """
    holder = PolicyHolder.from_settings(policy, model_labels, unsafe_labels, review_band)
    source = open_source(policy, kafka)
    if source is None:
        return holder
    try:
        load_initial(holder, source, policy.load_timeout_s)
    finally:
        source.close()
    return holder
