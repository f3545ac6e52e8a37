"""The decision applier: follows review-decisions and applies each one (``vitguard review apply``).

It runs as its own process (one replica per cluster; it is not part of the worker), reading every partition
of the decisions topic from the beginning without a consumer group: the ledger rebuilt from the audit
topic says which decisions were already handled, so a restart re-reads and skips them. See
:mod:`vitguard.review.apply` for what a decision does and the order of its side effects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from pydantic import BaseModel

from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.produce import DEFAULT_PRODUCER_CONFIG, OutboundMessage, produce_and_wait, raise_on_failures
from vitguard.kafka.reader import RawRecord, TopicReader, decode, read_models
from vitguard.review import metrics
from vitguard.review.apply import Applied, Ledger, RecordStore, ReviewBanks, apply_decision
from vitguard.schemas.review import ReviewAuditRecord, ReviewDecision
from vitguard.settings import Settings

__all__ = ["DecisionApplier", "encode"]

_log = logging.getLogger(__name__)


def encode(topic: str, key: str, model: BaseModel) -> OutboundMessage:
    """One event as a message: JSON value, UTF-8 key."""
    return OutboundMessage(topic, model.model_dump_json().encode(), key.encode())


class DecisionApplier:
    """Applies decisions from the decisions topic; publishes corrections and audit records.

    Args:
        settings: Kafka connection and topic names.
        records: the vector store (None: no Milvus effects, recorded as such in the audit).
        banks: the hash-bank seam (None: no banks deployed).
        default_collection: collection for decisions that name none.
        publish_timeout_s: how long a publish may wait for its acknowledgements.
        producer: a confluent-kafka producer to use (the I/O seam); default: an idempotent one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        records: RecordStore | None,
        banks: ReviewBanks | None = None,
        default_collection: str | None = None,
        publish_timeout_s: float = 30.0,
        producer: Any = None,
    ) -> None:
        self.settings = settings
        self.records = records
        self.banks = banks
        self.default_collection = default_collection
        self.publish_timeout_s = publish_timeout_s
        self.ledger = Ledger()
        self._producer = producer or Producer(librdkafka_config(settings.kafka, **DEFAULT_PRODUCER_CONFIG))

    def load_ledger(self, timeout_s: float = 30.0) -> int:
        """Rebuild the ledger from the audit topic; returns how many audit records it read."""
        t = self.settings.topics
        records = [r.value for r in read_models(self.settings.kafka, t.review_audit, ReviewAuditRecord, timeout_s)
                   if r.value is not None]
        self.ledger = Ledger.from_audit(records)
        return len(records)

    def handle(self, decision: ReviewDecision) -> Applied | None:
        """Apply one decision and publish what it produced (acknowledged); None for a duplicate."""
        applied = apply_decision(
            decision, ledger=self.ledger, records=self.records, banks=self.banks,
            default_collection=self.default_collection, applier=self.settings.kafka.client_id,
        )
        if applied is None:
            return None
        t = self.settings.topics
        messages = []
        if applied.correction is not None:
            messages.append(encode(t.verdict_corrections, decision.content_id, applied.correction))
        messages.append(encode(t.review_audit, decision.decision_id, applied.audit))
        raise_on_failures(produce_and_wait(self._producer, messages, self.publish_timeout_s))
        self.ledger.remember(applied.audit)
        metrics.DECISIONS_HANDLED.labels(applied.audit.outcome).inc()
        if applied.audit.outcome == "applied":
            metrics.DECISIONS.labels(decision.decision, decision.reason, decision.model_version or "").inc()
            if decision.requested_at is not None:
                latency = (decision.decided_at - decision.requested_at).total_seconds()
                metrics.DECISION_LATENCY.observe(max(0.0, latency))
        _log.info("review decision %s on %s: %s (%s)", decision.decision_id, decision.content_id,
                  applied.audit.outcome, ", ".join(applied.audit.effects) or "no effects")
        return applied

    def handle_record(self, record: RawRecord) -> Applied | None:
        """Decode and handle one record of the decisions topic; an invalid one is logged and skipped."""
        decoded = decode(record, ReviewDecision)
        if decoded.value is None:
            metrics.DECISIONS_HANDLED.labels("invalid").inc()
            _log.error("skipping an invalid review decision: %s", decoded.error)
            return None
        return self.handle(decoded.value)

    def run(
        self,
        *,
        once: bool = False,
        idle_timeout_s: float | None = None,
        stop: threading.Event | None = None,
        on_applied: Callable[[Applied], None] | None = None,
        connect_timeout_s: float = 10.0,
    ) -> int:
        """Load the ledger, then handle decisions until stopped; returns how many were applied.

        Args:
            once: handle what the topic holds now, then return.
            idle_timeout_s: return after this long with no new decision (None: follow forever).
            stop: return soon after this is set.
            on_applied: called with each applied or superseded decision's result.
        """
        self.load_ledger(max(connect_timeout_s, 10.0))
        applied = 0
        topic = self.settings.topics.review_decisions
        with TopicReader(self.settings.kafka, topic, connect_timeout_s=connect_timeout_s,
                         poll_interval_s=0.2) as reader:
            def handle(record: RawRecord) -> None:
                nonlocal applied
                result = self.handle_record(record)
                if result is not None:
                    applied += result.audit.outcome == "applied"
                    if on_applied is not None:
                        on_applied(result)

            if once:
                for record in reader.read_to_end(max(connect_timeout_s, 10.0)):
                    handle(record)
            else:
                last = time.monotonic()
                while stop is None or not stop.is_set():
                    polled = reader.next_record(0.2)
                    if polled is None:
                        if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                            break
                        continue
                    last = time.monotonic()
                    handle(polled)
        self._producer.flush(5)
        return applied
