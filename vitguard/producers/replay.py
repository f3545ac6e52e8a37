"""Replay: re-read a range of a topic and hand every record to a handler, resumably.

``plan_replay`` turns a :class:`ReplayRequest` into per-partition ranges ``[start, end)``: the start from
a timestamp (``offsets_for_times``, confirmed by reading, see :mod:`vitguard.kafka.coarse_offsets`), from explicit
offsets, or the oldest record; the end from a timestamp, explicit offsets, or the partition's end *as it
was when the replay started*. ``run_replay`` reads those ranges with an assign-only consumer (no group
join, nothing committed on the source) and gives each record to a :class:`RecordHandler`:

* :class:`RepublishHandler` re-publishes input events with ``replay_id`` set (to the input topic or
  another one);
* :class:`RedriveHandler` re-submits the original bytes of dead letters, filtered by reason code;
* :class:`vitguard.producers.replay_process.ProcessHandler` moderates them in-process with another model
  and writes verdicts to a back-test topic.

Checkpoints, in this order: the handler delivers everything handed to it so far (broker acks), *then*
the per-partition next offsets are saved (:mod:`vitguard.producers.replay_state`). A replay stopped
gracefully (``max_messages``, Ctrl-C, SIGTERM) checkpoints exactly what was delivered, so the same
replay id resumes with neither gap nor repeat. After a crash or a failed delivery the records since the
last checkpoint are handed out again (at-least-once); republished events keep a deterministic event id
(:func:`replay_event_id`), so the pipeline's redelivery guard drops such repeats.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from confluent_kafka import Consumer, KafkaError, TopicPartition
from pydantic import ValidationError

from vitguard.errors import REASON_CODES, InputError, ServiceUnavailableError
from vitguard.kafka.offsets import consumer_config, end_offsets, offsets_for_timestamp, start_offsets, topic_partitions
from vitguard.producers.publisher import UploadEventPublisher
from vitguard.producers.replay_state import (
    PartitionProgress,
    ReplaySpecError,
    ReplayState,
    ReplayStateError,
    ReplayStateStore,
    check_replay_id,
    parse_offsets,
    parse_timestamp,
)
from vitguard.schemas.events import MAX_ID_LEN, DeadLetter, parse_image_event
from vitguard.settings import KafkaSettings

__all__ = [
    "REPLAY_HEADER",
    "REPLAY_SOURCE_HEADER",
    "RecordHandler",
    "RedriveHandler",
    "ReplayMode",
    "ReplayReport",
    "ReplayRequest",
    "RepublishHandler",
    "SourceRecord",
    "new_replay_id",
    "open_replay",
    "plan_replay",
    "replay_event_id",
    "run_replay",
]

ReplayMode = Literal["republish", "redrive", "process", "policy_test"]

REPLAY_HEADER = "vitguard-replay-id"
"""Kafka header on every message a replay or re-drive writes: the replay id."""
REPLAY_SOURCE_HEADER = "vitguard-replay-source"
"""Kafka header: ``topic:partition:offset`` of the record that was replayed."""


def new_replay_id(now: datetime | None = None) -> str:
    """``r-20260101T120000-1a2b3c``: sortable, unique, valid as a file name and an id prefix."""
    stamp = (now or datetime.now()).strftime("%Y%m%dT%H%M%S")
    return f"r-{stamp}-{uuid.uuid4().hex[:6]}"


def replay_event_id(replay_id: str, event_id: str) -> str:
    """The event id a replayed event gets: deterministic, so a record replayed twice by the same replay
    (after a crash) is recognised by the pipeline's redelivery guard, while a new replay id is new work."""
    candidate = f"{replay_id}:{event_id}"
    if len(candidate) <= MAX_ID_LEN:
        return candidate
    return f"{replay_id}:{hashlib.sha256(event_id.encode()).hexdigest()[:40]}"


@dataclass(frozen=True)
class ReplayRequest:
    """What the operator asked for, as given (relative times unresolved): compared on resume."""

    topic: str
    mode: ReplayMode
    from_timestamp: str | None = None
    from_offsets: tuple[str, ...] = ()
    to_timestamp: str | None = None
    to_offsets: tuple[str, ...] = ()
    partitions: tuple[int, ...] = ()
    target_topic: str | None = None
    reasons: tuple[str, ...] = ()
    model_spec: str | None = None
    verdict_topic: str | None = None

    def __post_init__(self) -> None:
        if self.from_timestamp and self.from_offsets:
            raise ReplaySpecError("give --from-timestamp or --from-offset, not both")
        if self.to_timestamp and self.to_offsets:
            raise ReplaySpecError("give --to-timestamp or --to-offset, not both")
        unknown = sorted(set(self.reasons) - set(REASON_CODES))
        if unknown:
            raise ReplaySpecError(f"unknown reason code(s): {', '.join(unknown)}")
        # Malformed values fail here, before anything talks to Kafka.
        for text in (self.from_timestamp, self.to_timestamp):
            if text:
                parse_timestamp(text)
        parse_offsets(self.from_offsets)
        parse_offsets(self.to_offsets)

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


@dataclass(frozen=True)
class SourceRecord:
    """One record read from the replayed topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class RecordHandler(Protocol):
    """Where replayed records go. ``handle`` returns None when the record was taken (sent or queued for
    processing) and a short reason when it was skipped; ``flush`` returns only once everything taken so
    far is delivered, and raises otherwise."""

    def handle(self, record: SourceRecord) -> str | None: ...

    def flush(self) -> None: ...


@dataclass
class ReplayReport:
    """Per-partition counts of a replay (cumulative over all its runs)."""

    replay_id: str
    topic: str
    partitions: dict[int, PartitionProgress]
    complete: bool
    read_this_run: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return sum(p.read for p in self.partitions.values())

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.partitions.values())

    @property
    def skipped(self) -> int:
        return sum(sum(p.skipped.values()) for p in self.partitions.values())

    def lines(self) -> list[str]:
        """A plain-text table, one row per partition, then totals."""
        rows = [f"replay {self.replay_id} of {self.topic}: {'complete' if self.complete else 'interrupted'}",
                f"{'partition':>9}  {'start':>10}  {'end':>10}  {'next':>10}  {'read':>8}  {'sent':>8}  skipped"]
        for p, prog in sorted(self.partitions.items()):
            skipped = ", ".join(f"{k}: {v}" for k, v in sorted(prog.skipped.items())) or "0"
            rows.append(f"{p:>9}  {prog.start:>10}  {prog.end:>10}  {prog.next:>10}  {prog.read:>8}  "
                        f"{prog.sent:>8}  {skipped}")
        rows.append(f"{'total':>9}  {'':>10}  {'':>10}  {'':>10}  {self.read:>8}  {self.sent:>8}  {self.skipped}")
        rows.extend(f"{name}: {count}" for name, count in sorted(self.extra.items()))
        return rows


# ---------------------------------------------------------------------------------------------- planning


def plan_replay(
    kafka: KafkaSettings,
    request: ReplayRequest,
    replay_id: str,
    *,
    timeout_s: float = 10.0,
    now: datetime | None = None,
) -> ReplayState:
    """Resolve ``request`` into per-partition ranges against the cluster, now.

    Raises:
        TopicNotFoundError, ServiceUnavailableError: the topic or the broker is not there.
        ReplaySpecError: a timestamp or offset is malformed, a partition does not exist, or the range ends
            before it starts.
    """
    check_replay_id(replay_id)
    bounds = _parse_bounds(request, now)
    partitions = _checked_partitions(request, bounds, topic_partitions(kafka, request.topic, timeout_s))
    consumer = Consumer(consumer_config(kafka, f"vitguard-replay-plan-{replay_id}"))
    try:
        progress = _locate_ranges(consumer, request.topic, partitions, bounds, timeout_s)
    finally:
        consumer.close()
    return ReplayState(replay_id=replay_id, topic=request.topic, request=request.as_json(), partitions=progress)


@dataclass(frozen=True)
class _Bounds:
    """Where a replay starts and stops, parsed: timestamps in epoch ms (relative ones resolved), offsets by
    partition (key None: every other partition)."""

    from_ts: int | None
    to_ts: int | None
    from_offsets: dict[int | None, int]
    to_offsets: dict[int | None, int]


def _parse_bounds(request: ReplayRequest, now: datetime | None) -> _Bounds:
    """The request's bounds, relative times resolved against ``now`` (default: the clock).

    Raises:
        ReplaySpecError: a malformed timestamp or offset, or a time range that ends before it starts.
    """
    from_ts = parse_timestamp(request.from_timestamp, now) if request.from_timestamp else None
    to_ts = parse_timestamp(request.to_timestamp, now) if request.to_timestamp else None
    if from_ts is not None and to_ts is not None and to_ts <= from_ts:
        raise ReplaySpecError("--to-timestamp must be later than --from-timestamp")
    return _Bounds(from_ts, to_ts, parse_offsets(request.from_offsets), parse_offsets(request.to_offsets))


def _checked_partitions(request: ReplayRequest, bounds: _Bounds, existing: list[int]) -> list[int]:
    """The partitions to replay (all ``existing`` ones unless the request names some), after checking that
    every partition the request names, in ``--partition`` or an offset, exists."""
    partitions = list(request.partitions) or existing
    missing = sorted(set(partitions) - set(existing)) + sorted(
        {p for p in (*bounds.from_offsets, *bounds.to_offsets) if p is not None} - set(existing)
    )
    if missing:
        raise ReplaySpecError(f"topic {request.topic!r} has partitions {existing}, not {sorted(set(missing))}")
    return partitions


def _locate_ranges(
    consumer: Consumer, topic: str, partitions: list[int], bounds: _Bounds, timeout_s: float
) -> dict[int, PartitionProgress]:
    """Each partition's range ``[start, end)`` against the cluster now, kept within the records that exist;
    a range that would end before its start is empty."""
    ends = end_offsets(consumer, topic, partitions, timeout_s)
    lows = start_offsets(consumer, topic, partitions, timeout_s)
    if bounds.from_ts is not None:
        starts = offsets_for_timestamp(
            consumer, topic, bounds.from_ts, {p: (lows[p], ends[p]) for p in partitions}, timeout_s
        )
    else:
        starts = {p: min(max(_pick(bounds.from_offsets, p, lows[p]), lows[p]), ends[p]) for p in partitions}
    if bounds.to_ts is not None:
        stops = offsets_for_timestamp(
            consumer, topic, bounds.to_ts, {p: (starts[p], ends[p]) for p in partitions}, timeout_s
        )
    else:
        stops = {p: min(_pick(bounds.to_offsets, p, ends[p]), ends[p]) for p in partitions}
    return {p: PartitionProgress(start=starts[p], end=max(stops[p], starts[p]), next=starts[p]) for p in partitions}


def _pick(offsets: dict[int | None, int], partition: int, default: int) -> int:
    if partition in offsets:
        return offsets[partition]
    return offsets.get(None, default)


def open_replay(
    kafka: KafkaSettings,
    request: ReplayRequest,
    replay_id: str,
    store: ReplayStateStore,
    *,
    timeout_s: float = 10.0,
) -> tuple[ReplayState, bool]:
    """The saved state of ``replay_id`` (resumed=True), or a new plan saved under it (resumed=False).

    Raises:
        ReplayStateError: a state exists for this id but was made for a different request.
    """
    state = store.load(replay_id)
    if state is not None:
        if state.request != request.as_json():
            differs = sorted(k for k, v in request.as_json().items() if state.request.get(k) != v)
            raise ReplayStateError(
                f"replay {replay_id!r} exists with different options ({', '.join(differs)}): repeat its options "
                f"to resume, or use a new --replay-id (state: {store.path(replay_id)})"
            )
        return state, True
    state = plan_replay(kafka, request, replay_id, timeout_s=timeout_s)
    store.save(state)
    return state, False


# ---------------------------------------------------------------------------------------------- running


def run_replay(
    kafka: KafkaSettings,
    state: ReplayState,
    store: ReplayStateStore,
    handler: RecordHandler,
    *,
    max_messages: int | None = None,
    on_progress: Callable[[int, PartitionProgress], None] | None = None,
    checkpoint_every: int = 500,
    checkpoint_interval_s: float = 2.0,
    stall_timeout_s: float = 60.0,
    poll_timeout_s: float = 0.5,
) -> ReplayReport:
    """Read the unfinished part of every partition of ``state`` and hand each record to ``handler``.

    Stops when every partition reached its end, or after ``max_messages`` records this run (then the
    report says ``complete=False`` and the same replay id resumes). ``on_progress(partition, progress)``
    is called after every record (progress bars).

    Raises:
        ServiceUnavailableError: a partition yielded nothing for ``stall_timeout_s`` before its end.
        PublishError, ...: from the handler; the state keeps the last successful checkpoint.
    """
    state.runs += 1
    run = _ReplayRun(state, store, handler, Consumer(consumer_config(kafka, f"vitguard-replay-{state.replay_id}")),
                     checkpoint_every=checkpoint_every, checkpoint_interval_s=checkpoint_interval_s)
    try:
        run.start()
        while run.open_parts and (max_messages is None or run.read_this_run < max_messages):
            msg = run.consumer.poll(poll_timeout_s)
            now = time.monotonic()
            run.checkpoint_if_due(now)
            if msg is None:
                run.check_stall(now, stall_timeout_s)
                continue
            p = run.take(msg, now)
            if p is not None and on_progress is not None:
                on_progress(p, state.partitions[p])
        run.checkpoint()
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM as KeyboardInterrupt/SystemExit) or failed: keep what was delivered.
        try:
            run.checkpoint()
        except Exception:  # noqa: S110 - the original exception matters more; the last checkpoint stands
            pass
        raise
    finally:
        run.consumer.close()
    return ReplayReport(state.replay_id, state.topic, state.partitions, state.done, run.read_this_run)


class _ReplayRun:
    """One run of :func:`run_replay`: the positions handed over so far, and when the state was last saved."""

    def __init__(self, state: ReplayState, store: ReplayStateStore, handler: RecordHandler, consumer: Consumer, *,
                 checkpoint_every: int, checkpoint_interval_s: float) -> None:
        self.state, self.store, self.handler, self.consumer = state, store, handler, consumer
        self.checkpoint_every, self.checkpoint_interval_s = checkpoint_every, checkpoint_interval_s
        self.pending = {p: prog.next for p, prog in state.partitions.items()}
        """Per partition, the next offset to read (what a checkpoint saves)."""
        self.open_parts = {p for p, prog in state.partitions.items() if not prog.done}
        self.read_this_run = 0
        self.since_checkpoint = 0
        self.last_checkpoint = self.last_record = time.monotonic()

    def start(self) -> None:
        if self.open_parts:
            self.consumer.assign([TopicPartition(self.state.topic, p, self.state.partitions[p].next)
                                  for p in sorted(self.open_parts)])

    def checkpoint(self) -> None:
        self.handler.flush()
        for p, offset in self.pending.items():
            self.state.partitions[p].next = offset
        self.store.save(self.state)
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()

    def checkpoint_if_due(self, now: float) -> None:
        due = (self.since_checkpoint >= self.checkpoint_every
               or now - self.last_checkpoint >= self.checkpoint_interval_s)
        if self.since_checkpoint and due:
            self.checkpoint()

    def check_stall(self, now: float, stall_timeout_s: float) -> None:
        if now - self.last_record > stall_timeout_s:
            stuck = {p: (self.pending[p], self.state.partitions[p].end) for p in sorted(self.open_parts)}
            raise ServiceUnavailableError(
                f"replay of {self.state.topic!r} got nothing for {stall_timeout_s:g}s; (next, end) by partition: "
                f"{stuck}"
            )

    def take(self, msg: Any, now: float) -> int | None:
        """One polled message: an error, the end of a partition, or a record for the handler; returns the
        partition whose progress changed by a record (None otherwise)."""
        p: int | None = msg.partition()
        if p is None or p not in self.open_parts:
            return None
        err = msg.error()
        if err is not None:
            self._on_error(err, msg, p)
            return None
        self.last_record = now
        offset = msg.offset()
        if offset is None:
            return None
        prog = self.state.partitions[p]
        if offset >= prog.end:
            self._finished(p)
            return None
        ts_type, ts = msg.timestamp()
        skipped = self.handler.handle(
            SourceRecord(self.state.topic, p, offset, msg.key(), msg.value(), ts if ts_type else None))
        prog.read += 1
        if skipped is None:
            prog.sent += 1
        else:
            prog.skipped[skipped] += 1
        self.pending[p] = offset + 1
        self.read_this_run += 1
        self.since_checkpoint += 1
        if self.pending[p] >= prog.end:
            self._close(p)
        return p

    def _on_error(self, err: Any, msg: Any, p: int) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            # The end snapshot may lie past a gap (transaction markers, compaction): reaching the
            # partition's end at or beyond it finishes the partition.
            if (msg.offset() or 0) >= self.state.partitions[p].end:
                self._finished(p)
            return
        if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            raise ServiceUnavailableError(f"reading {self.state.topic!r} failed: {err.str()}")

    def _finished(self, p: int) -> None:
        self.pending[p] = self.state.partitions[p].end
        self.since_checkpoint += 1
        self._close(p)

    def _close(self, p: int) -> None:
        self.open_parts.discard(p)
        self.consumer.pause([TopicPartition(self.state.topic, p)])


# ---------------------------------------------------------------------------------------------- handlers


def _headers(replay_id: str, record: SourceRecord) -> list[tuple[str, bytes | str]]:
    return [(REPLAY_HEADER, replay_id), (REPLAY_SOURCE_HEADER, f"{record.topic}:{record.partition}:{record.offset}")]


class RepublishHandler:
    """Re-publishes input events with ``replay_id`` set and a deterministic new event id.

    Records that are not valid events are skipped (by reason code): they were dead-lettered when first
    read, and the re-drive is the way to resubmit those.
    """

    def __init__(self, publisher: UploadEventPublisher, replay_id: str) -> None:
        self.publisher = publisher
        self.replay_id = replay_id

    def handle(self, record: SourceRecord) -> str | None:
        if record.value is None:
            return "invalid_json"
        try:
            event = parse_image_event(record.value)
        except InputError as exc:
            return exc.reason
        replayed = event.model_copy(
            update={"replay_id": self.replay_id, "event_id": replay_event_id(self.replay_id, event.event_id)}
        )
        self.publisher.publish(replayed, headers=_headers(self.replay_id, record))
        return None

    def flush(self) -> None:
        self.publisher.flush()


class RedriveHandler:
    """Re-submits the original bytes of dead letters (optionally only some reason codes), keyed by the
    original message key so they land on the partition the original did."""

    def __init__(self, publisher: UploadEventPublisher, replay_id: str, reasons: Sequence[str] = ()) -> None:
        self.publisher = publisher
        self.replay_id = replay_id
        self.reasons = frozenset(reasons)

    def handle(self, record: SourceRecord) -> str | None:
        if record.value is None:
            return "invalid_dead_letter"
        try:
            letter = DeadLetter.model_validate_json(record.value)
        except ValidationError:
            return "invalid_dead_letter"
        if self.reasons and letter.reason not in self.reasons:
            return f"filtered:{letter.reason}"
        if letter.payload_truncated:  # the original is not in the letter; its source offset says where it is
            return "truncated_payload"
        try:
            original = letter.original_bytes()
        except ValueError:  # a payload that is not the base64 it says it is (a hand-made or damaged letter)
            return "invalid_dead_letter"
        key = letter.key if letter.key is not None else letter.content_id
        self.publisher.send_raw(
            original,
            key=key.encode("utf-8") if key is not None else None,
            headers=_headers(self.replay_id, record),
            event_id=letter.event_id,
        )
        return None

    def flush(self) -> None:
        self.publisher.flush()
