"""Applying reviewers' decisions: idempotently, in a fixed order, with an audit record for each.

What a decision does:

- ``overturn_safe``: the item's row in its vector collection is re-upserted with label ``overturned``, so it
  leaves the unsafe set and no later near-duplicate search matches it; where hash banks are deployed it goes
  into a negative bank (:class:`ReviewBanks`); a :class:`~vitguard.schemas.review.VerdictCorrection` with
  label ``safe`` is published.
- ``confirm_unsafe``: the row is labelled ``unsafe`` (an uncertain item judged safe by the model joins the
  unsafe set, in a cluster of its own if it had none); with ``add_to_bank`` it is added to a bank; a
  correction with label ``unsafe`` is published.

Idempotency is keyed by decision id: the :class:`Ledger` knows every decision id the audit topic records
(it is rebuilt from that topic at start-up), and a decision already there is skipped. Decisions on one item
are applied in ``decided_at`` order: one older than the item's last applied decision is recorded as
``superseded`` and changes nothing (decisions are keyed by decision id, so two decisions on one item may
sit on different partitions and arrive in either order).

Order of side effects, and why: the Milvus upsert (idempotent) first; then the correction and the audit
record are published and acknowledged together; only then does the ledger remember the decision. A crash
in between re-applies the decision on restart: the upsert is the same, and the correction is published
again with the same content (downstream sees a duplicate, never a loss).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from vitguard.review import metrics
from vitguard.schemas.review import ReviewAuditRecord, ReviewDecision, ReviewOutcome, VerdictCorrection
from vitguard.stores.interfaces import EmbeddingRecord, default_cluster_id

__all__ = [
    "OVERTURNED_LABEL",
    "Applied",
    "Ledger",
    "RecordStore",
    "ReviewBanks",
    "apply_decision",
]

_log = logging.getLogger(__name__)

OVERTURNED_LABEL = "overturned"
"""The Milvus label of an item a reviewer judged safe: not ``unsafe``, so near-duplicate search (which only
looks at ``label == "unsafe"``) never matches it again, and still telling a human decision from the model's
``safe``."""


class RecordStore(Protocol):
    """The slice of the vector store the applier needs (the Milvus adapter and the in-memory index fit)."""

    def get(self, collection: str, content_ids: Sequence[str]) -> Mapping[str, EmbeddingRecord]: ...

    def upsert(self, collection: str, records: Sequence[EmbeddingRecord]) -> None: ...


class ReviewBanks(Protocol):
    """The seam to hash banks: where they are deployed, reviewed items are added to them.

    Each method returns an effect code for the audit record (``negative_bank``, ``bank_added``, or why
    nothing was added, e.g. ``bank_no_hash`` when the item was never hashed).
    """

    def add_negative(self, decision: ReviewDecision) -> str: ...

    def add_positive(self, decision: ReviewDecision) -> str: ...


@dataclass
class Ledger:
    """Which decisions were handled, and each item's last applied decision time."""

    handled: set[str] = field(default_factory=set)
    latest: dict[str, datetime] = field(default_factory=dict)

    @classmethod
    def from_audit(cls, records: Iterable[ReviewAuditRecord]) -> Ledger:
        """The ledger the audit trail adds up to."""
        ledger = cls()
        for r in records:
            ledger.remember(r)
        return ledger

    def verdict(self, decision: ReviewDecision) -> ReviewOutcome | None:
        """``duplicate`` or ``superseded`` when ``decision`` must not be applied; None when it must."""
        if decision.decision_id in self.handled:
            return "duplicate"
        last = self.latest.get(decision.content_id)
        if last is not None and last > decision.decided_at:
            return "superseded"
        return None

    def remember(self, record: ReviewAuditRecord) -> None:
        self.handled.add(record.decision_id)
        if record.outcome == "applied":
            last = self.latest.get(record.content_id)
            if last is None or record.decision.decided_at >= last:
                self.latest[record.content_id] = record.decision.decided_at


@dataclass(frozen=True)
class Applied:
    """What handling one decision produced: its audit record and, when applied, the correction to publish."""

    audit: ReviewAuditRecord
    correction: VerdictCorrection | None


def apply_decision(
    decision: ReviewDecision,
    *,
    ledger: Ledger,
    records: RecordStore | None,
    banks: ReviewBanks | None,
    default_collection: str | None = None,
    applier: str = "vitguard",
) -> Applied | None:
    """Apply one decision's store effects and build what must be published; None for a duplicate.

    The caller publishes ``correction`` and ``audit`` (acknowledged) and then calls
    ``ledger.remember(audit)``; see the module docstring for why in that order.

    Raises:
        ServiceUnavailableError: the vector store did not answer (nothing is remembered: retry later).
        ConfigError: the vector store refused the change for good.
    """
    outcome = ledger.verdict(decision)
    if outcome == "duplicate":
        metrics.DECISIONS_HANDLED.labels("duplicate").inc()
        return None
    if outcome == "superseded":
        metrics.DECISIONS_HANDLED.labels("superseded").inc()
        audit = ReviewAuditRecord(decision_id=decision.decision_id, content_id=decision.content_id,
                                  outcome="superseded", decision=decision, applier=applier)
        return Applied(audit, None)

    effects = [_relabel(decision, records, decision.collection or default_collection)]
    overturn = decision.decision == "overturn_safe"
    if overturn:
        effects.append(banks.add_negative(decision) if banks is not None else "bank_skipped")
    elif decision.add_to_bank:
        effects.append(banks.add_positive(decision) if banks is not None else "bank_skipped")
    correction = VerdictCorrection(
        content_id=decision.content_id, tenant=decision.tenant, label="safe" if overturn else "unsafe",
        previous_label=decision.previous_label, decision_id=decision.decision_id, decision=decision.decision,
        reviewer=decision.reviewer, reason=decision.reason, model_name=decision.model_name,
        model_version=decision.model_version, decided_at=decision.decided_at,
    )
    effects.append("correction_published")
    audit = ReviewAuditRecord(decision_id=decision.decision_id, content_id=decision.content_id, outcome="applied",
                              effects=effects, decision=decision, applier=applier)
    return Applied(audit, correction)


def _relabel(decision: ReviewDecision, records: RecordStore | None, collection: str | None) -> str:
    if records is None or collection is None:
        return "milvus_no_collection"
    row = records.get(collection, [decision.content_id]).get(decision.content_id)
    if row is None:
        _log.warning("review decision %s: %s has no row in %s (never indexed, or indexed by another model)",
                     decision.decision_id, decision.content_id, collection)
        return "milvus_missing"
    if decision.decision == "overturn_safe":
        updated = dataclasses.replace(row, label=OVERTURNED_LABEL)
    else:
        updated = dataclasses.replace(row, label="unsafe",
                                      cluster_id=row.cluster_id or default_cluster_id(row.content_id))
    if (updated.label, updated.cluster_id) == (row.label, row.cluster_id):  # embeddings are arrays: no ==
        return "milvus_unchanged"
    records.upsert(collection, [updated])
    return "milvus_relabelled"
