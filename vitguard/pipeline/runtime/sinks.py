"""Sinks outside Faust: a confluent-kafka producer sink (replay, tools) and an in-memory one (tests).

The Faust worker uses :class:`vitguard.consumers.sink.FaustSink`, which sends through the app's own
producer. Every sink answers each message with its own delivery result (see :class:`~vitguard.pipeline.types.Sink`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from vitguard.errors import ServiceUnavailableError
from vitguard.pipeline.types import OutMessage, OutputTopics
from vitguard.schemas.events import BankMatchAlert, DeadLetter, NearDuplicateAlert, Verdict
from vitguard.settings import KafkaSettings

__all__ = ["KafkaSink", "ListSink"]


class ListSink:
    """Keeps acknowledged outputs in lists, decoded by topic.

    ``fail_next`` makes the next ``send`` calls fail every message (transient); ``reject`` makes messages for
    which it returns an exception fail with it (e.g. a size rejection), every time.
    """

    def __init__(self, topics: OutputTopics | None = None) -> None:
        self.topics = topics or OutputTopics("verdicts", "alerts", "dead-letters")
        self.verdicts: list[Verdict] = []
        self.alerts: list[NearDuplicateAlert] = []
        self.bank_alerts: list[BankMatchAlert] = []
        self.dead_letters: list[DeadLetter] = []
        self.messages: list[OutMessage] = []
        self.send_calls = 0
        self.fail_next = 0
        self.reject: Callable[[OutMessage], BaseException | None] | None = None

    async def send(self, messages: Sequence[OutMessage]) -> list[BaseException | None]:
        self.send_calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return [ServiceUnavailableError("ListSink told to fail") for _ in messages]
        results: list[BaseException | None] = []
        for m in messages:
            error = self.reject(m) if self.reject is not None else None
            if error is None:
                self._keep(m)
            results.append(error)
        return results

    def _keep(self, m: OutMessage) -> None:
        if not m.topic:
            return
        self.messages.append(m)
        data = json.loads(m.value)
        if m.topic == self.topics.dead_letters and "reason" in data:
            self.dead_letters.append(DeadLetter.model_validate(data))
        elif m.topic == self.topics.alerts and data.get("alert_type") == "bank_match":
            self.bank_alerts.append(BankMatchAlert.model_validate(data))
        elif m.topic == self.topics.alerts and "matches" in data:
            self.alerts.append(NearDuplicateAlert.model_validate(data))
        else:
            self.verdicts.append(Verdict.model_validate(data))


class KafkaSink:
    """Publishes with a confluent-kafka producer (idempotent, acks=all) and waits for each delivery report.

    Args:
        kafka: brokers and security settings.
        topics: output topics (an empty name: that kind is dropped, e.g. a back-test without an alert topic).
        timeout_s: longest wait for one call's delivery reports; undelivered messages then report a timeout.
    """

    def __init__(self, kafka: KafkaSettings, topics: OutputTopics, timeout_s: float = 60.0) -> None:
        from confluent_kafka import Producer

        from vitguard.kafka.config import librdkafka_config

        self.topics = topics
        self._timeout_s = timeout_s
        conf: dict[str, Any] = {
            **librdkafka_config(kafka),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
        self._producer = Producer(conf)

    async def send(self, messages: Sequence[OutMessage]) -> list[BaseException | None]:
        if not messages:
            return []
        return await asyncio.to_thread(self._send_and_wait, list(messages))

    def _send_and_wait(self, messages: list[OutMessage]) -> list[BaseException | None]:
        from confluent_kafka import KafkaException

        results: list[BaseException | None] = [TimeoutError("not acknowledged in time")] * len(messages)

        def report_for(i: int) -> Callable[[Any, Any], None]:
            def report(err: Any, msg: Any) -> None:
                results[i] = KafkaException(err) if err is not None else None
            return report

        for i, m in enumerate(messages):
            if not m.topic:
                results[i] = None
                continue
            while True:
                try:
                    self._producer.produce(m.topic, value=m.value, key=m.key, on_delivery=report_for(i))
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self._producer.poll(0.1)
                except KafkaException as exc:  # refused locally (e.g. larger than message.max.bytes)
                    results[i] = exc
                    break
        self._producer.flush(self._timeout_s)
        return results

    def close(self) -> None:
        """Deliver what is queued (bounded by the timeout)."""
        self._producer.flush(self._timeout_s)
