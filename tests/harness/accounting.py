"""What was published and what came out: exactly one answer per event, duplicates, losses and the longest stall of
the outputs.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.harness.events import ChaosEvent
from vitguard.schemas.events import DeadLetter, Verdict
from vitguard.settings import KafkaSettings, Settings
from vitguard.testing.worker import OutputReader, Outputs

if TYPE_CHECKING:
    from vitguard.kafka.reader import RawRecord

__all__ = [
    "MAX_TEST_MESSAGE_BYTES",
    "Accounting",
    "Ledger",
    "Published",
    "TimedOutputReader",
    "answer_kind",
    "longest_stall",
]

MAX_TEST_MESSAGE_BYTES = 4 * 1024 * 1024
"""The test producer's ``message.max.bytes``: poison pills are over 1 MiB, and must reach the broker."""


@dataclass
class Published:
    event: ChaosEvent
    partition: int
    offset: int
    at: float
    """Wall-clock time the broker acknowledged it."""


@dataclass
class Accounting:
    """The invariant after deduplication: every published message answered exactly once."""

    published: int
    answered: int
    lost: list[Published]
    duplicates: int
    """Outputs beyond the first for one message (redeliveries the guard did not catch)."""
    wrong: list[tuple[Published, str]]
    """Messages whose first answer is not what their kind must get (expected, got)."""
    by_expect: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        lost = ", ".join(f"{p.event.kind}@{p.partition}:{p.offset}" for p in self.lost[:10])
        wrong = ", ".join(f"{p.event.kind}@{p.partition}:{p.offset}->{got}" for p, got in self.wrong[:10])
        return (f"{self.published} published, {self.answered} answered, {len(self.lost)} lost [{lost}], "
                f"{self.duplicates} duplicate output(s), {len(self.wrong)} wrong [{wrong}]")


class Ledger:
    """Publishes :class:`ChaosEvent` s to the input topic and accounts for their answers.

    Args:
        kafka: brokers.
        topic: the worker's input topic.
    """

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        from confluent_kafka import Producer

        from vitguard.kafka.config import librdkafka_config
        from vitguard.kafka.produce import DEFAULT_PRODUCER_CONFIG

        self.topic = topic
        self._producer = Producer(librdkafka_config(
            kafka, **{**DEFAULT_PRODUCER_CONFIG, "message.max.bytes": MAX_TEST_MESSAGE_BYTES}))
        self.published: list[Published] = []
        self._by_offset: dict[tuple[int, int], Published] = {}
        self._by_event: dict[str, Published] = {}

    def publish(self, events: Sequence[ChaosEvent], timeout_s: float = 30.0) -> list[Published]:
        """Publish and wait for every acknowledgement.

        Raises:
            AssertionError: the broker did not take one (the test cannot account for it).
        """
        from vitguard.kafka.produce import OutboundMessage, produce_and_wait

        results = produce_and_wait(self._producer, [OutboundMessage(self.topic, e.value, e.key) for e in events],
                                   timeout_s)
        out = []
        now = time.time()
        for event, result in zip(events, results, strict=True):
            if not result.ok or result.partition is None or result.offset is None:
                raise AssertionError(f"the broker did not take a {event.kind} event: {result.error} "
                                     f"{result.error_message}")
            p = Published(event, result.partition, result.offset, now)
            self.published.append(p)
            self._by_offset[(p.partition, p.offset)] = p
            if event.event_id is not None:
                self._by_event[event.event_id] = p
            out.append(p)
        return out

    def answers(self, outputs: Outputs) -> dict[tuple[int, int], list[Verdict | DeadLetter]]:
        """Every output that answers a published message, by the message's (partition, offset)."""
        found: dict[tuple[int, int], list[Verdict | DeadLetter]] = defaultdict(list)
        for v in outputs.verdicts:
            p = self._by_event.get(v.event_id)
            if p is not None:
                found[(p.partition, p.offset)].append(v)
        for d in outputs.dead_letters:
            q = self._by_event.get(d.event_id) if d.event_id else None
            if q is None and d.source_topic == self.topic:
                q = self._by_offset.get((d.source_partition, d.source_offset))
            if q is not None:
                found[(q.partition, q.offset)].append(d)
        return found

    def account(self, outputs: Outputs) -> Accounting:
        found = self.answers(outputs)
        lost = [p for p in self.published if (p.partition, p.offset) not in found]
        wrong: list[tuple[Published, str]] = []
        by_expect: Counter[str] = Counter()
        for p in self.published:
            got = found.get((p.partition, p.offset))
            if not got:
                continue
            kind = answer_kind(got[0])
            by_expect[kind] += 1
            if kind != p.event.expect:
                wrong.append((p, kind))
        duplicates = sum(len(v) - 1 for v in found.values())
        return Accounting(len(self.published), len(found), lost, duplicates, wrong, by_expect)

    def close(self) -> None:
        self._producer.flush(5)


class TimedOutputReader(OutputReader):
    """An :class:`OutputReader` that keeps every output's broker timestamp (seconds) and when it was read."""

    def __init__(self, kafka: KafkaSettings, *, verdicts: str, alerts: str, dead_letters: str) -> None:
        super().__init__(kafka, verdicts=verdicts, alerts=alerts, dead_letters=dead_letters)
        self.output_times: list[float] = []
        self.first_answer_at: dict[str, float] = {}
        """Event id -> broker timestamp of its first verdict or dead letter."""

    @classmethod
    def for_settings(cls, settings: Settings) -> TimedOutputReader:
        t = settings.topics
        return cls(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters)

    def _add(self, record: RawRecord) -> None:
        super()._add(record)
        kind = self._kinds[record.topic]
        if kind == "alerts":
            return
        at = (record.timestamp_ms or 0) / 1000 or time.time()
        self.output_times.append(at)
        last: Verdict | DeadLetter = getattr(self.outputs, kind)[-1]
        if last.event_id is not None:
            self.first_answer_at.setdefault(last.event_id, at)


def longest_stall(output_times: Iterable[float], windows: Iterable[tuple[float, float]], start: float,
                  end: float) -> tuple[float, float]:
    """The longest time in [``start``, ``end``] with no output, not counting fault ``windows``.

    Returns:
        (seconds, when the gap began).
    """
    times = sorted(t for t in output_times if start <= t <= end)
    merged: list[list[float]] = []
    for a, b in sorted(windows):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    best, best_at = 0.0, start
    for a, b in zip([start, *times], [*times, end], strict=True):
        gap = b - a
        for wa, wb in merged:
            gap -= max(0.0, min(b, wb) - max(a, wa))
        if gap > best:
            best, best_at = gap, a
    return best, best_at


def answer_kind(answer: Verdict | DeadLetter) -> str:
    return "verdict" if isinstance(answer, Verdict) else answer.reason
