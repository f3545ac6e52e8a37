"""The review loop's Prometheus metrics, in vitguard's one registry (:data:`vitguard.metrics.REGISTRY`).

Overturn rate, by reason or by model version, is ``rate(vitguard_review_decisions_total{decision=
"overturn_safe"}[1h]) / rate(vitguard_review_decisions_total[1h])`` summed over the label of interest.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from vitguard.metrics import REGISTRY

__all__ = ["DECISIONS", "DECISIONS_HANDLED", "DECISION_LATENCY", "QUEUE_DEPTH", "RECORDS_SKIPPED", "REQUESTS"]

REQUESTS = Counter(
    "vitguard_review_requests", "Review requests published, by reason (one request may have several).",
    ["reason"], registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "vitguard_review_queue_depth", "Items waiting for a reviewer, as the review console sees them.", registry=REGISTRY
)
RECORDS_SKIPPED = Counter(
    "vitguard_review_records_skipped",
    "Records of the review topics the console's queue feed skipped (invalid, or refused by the queue), by topic.",
    ["topic"], registry=REGISTRY,
)
DECISIONS = Counter(
    "vitguard_review_decisions",
    "Decisions applied, by decision, reason code and the reviewed model's version (overturn rate).",
    ["decision", "reason", "model_version"], registry=REGISTRY,
)
DECISIONS_HANDLED = Counter(
    "vitguard_review_decisions_handled",
    "Decisions read by the applier, by outcome (applied, duplicate, superseded, invalid).", ["outcome"],
    registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "vitguard_review_decision_latency_seconds", "From the review request to the reviewer's decision.",
    buckets=(60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 3 * 24 * 3600, 7 * 24 * 3600),
    registry=REGISTRY,
)
