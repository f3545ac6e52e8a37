"""Sinks outside Faust: a confluent-kafka producer sink (replay, tools) and an in-memory one (tests).

The Faust worker uses :class:`vitguard.consumers.sink.FaustSink`, which sends through the app's own
producer. Both return from ``publish`` only after the broker acknowledged every message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vitguard.errors import ServiceUnavailableError
from vitguard.schemas.events import DeadLetter, NearDuplicateAlert, Verdict
from vitguard.settings import KafkaSettings

__all__ = ["KafkaSink", "ListSink", "OutputTopics", "encode_outputs"]


@dataclass(frozen=True)
class OutputTopics:
    """Where a sink writes. Replay passes its own ``verdicts`` topic to keep production verdicts clean."""

    verdicts: str
    alerts: str
    dead_letters: str


def encode_outputs(
    topics: OutputTopics,
    verdicts: Sequence[Verdict],
    alerts: Sequence[NearDuplicateAlert],
    dead_letters: Sequence[DeadLetter],
) -> list[tuple[str, bytes | None, bytes]]:
    """(topic, key, value) of every output message. Verdicts and alerts are keyed by content id; dead
    letters keep the original message key, so a re-drive lands on the same partition."""
    out: list[tuple[str, bytes | None, bytes]] = []
    out.extend((topics.verdicts, v.content_id.encode(), v.model_dump_json().encode()) for v in verdicts)
    out.extend((topics.alerts, a.content_id.encode(), a.model_dump_json().encode()) for a in alerts)
    out.extend(
        (topics.dead_letters, d.key.encode() if d.key is not None else None, d.model_dump_json().encode())
        for d in dead_letters
    )
    return out


class ListSink:
    """Keeps published outputs in lists; ``fail_next`` makes the next publishes raise (retry tests)."""

    def __init__(self) -> None:
        self.verdicts: list[Verdict] = []
        self.alerts: list[NearDuplicateAlert] = []
        self.dead_letters: list[DeadLetter] = []
        self.publish_calls = 0
        self.fail_next = 0

    async def publish(
        self,
        verdicts: Sequence[Verdict],
        alerts: Sequence[NearDuplicateAlert],
        dead_letters: Sequence[DeadLetter],
    ) -> None:
        self.publish_calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ServiceUnavailableError("ListSink told to fail")
        self.verdicts.extend(verdicts)
        self.alerts.extend(alerts)
        self.dead_letters.extend(dead_letters)


class KafkaSink:
    """Publishes with a confluent-kafka producer (idempotent, acks=all) and waits for delivery reports.

    Args:
        kafka: brokers and security settings.
        topics: output topics.
        timeout_s: longest wait for a batch's delivery reports before ``publish`` raises.
    """

    def __init__(self, kafka: KafkaSettings, topics: OutputTopics, timeout_s: float = 60.0) -> None:
        from confluent_kafka import Producer

        self.topics = topics
        self._timeout_s = timeout_s
        conf: dict[str, Any] = {
            **kafka.confluent_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
        self._producer = Producer(conf)

    async def publish(
        self,
        verdicts: Sequence[Verdict],
        alerts: Sequence[NearDuplicateAlert],
        dead_letters: Sequence[DeadLetter],
    ) -> None:
        messages = encode_outputs(self.topics, verdicts, alerts, dead_letters)
        if messages:
            await asyncio.to_thread(self._send_and_wait, messages)

    def _send_and_wait(self, messages: list[tuple[str, bytes | None, bytes]]) -> None:
        errors: list[str] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{msg.topic()}: {err}")

        for topic, key, value in messages:
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, on_delivery=report)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self._producer.poll(0.1)
        remaining = self._producer.flush(self._timeout_s)
        if remaining or errors:
            raise ServiceUnavailableError(
                f"{remaining} message(s) undelivered after {self._timeout_s:.0f}s; errors: {errors[:3]}"
            )

    def close(self) -> None:
        """Deliver what is queued (bounded by the timeout)."""
        self._producer.flush(self._timeout_s)
