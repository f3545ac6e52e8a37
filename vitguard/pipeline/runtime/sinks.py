"""An in-memory sink (tests, tools). The worker and the replay tools publish with
:class:`vitguard.consumers.sink.KafkaSink` (librdkafka). Every sink answers each message with its own delivery
result (see :class:`~vitguard.pipeline.types.Sink`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from vitguard.errors import ServiceUnavailableError
from vitguard.pipeline.types import OutMessage, OutputTopics
from vitguard.schemas.events import BankMatchAlert, DeadLetter, NearDuplicateAlert, Verdict

__all__ = ["ListSink"]


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
