"""The human review loop: review requests out, reviewers' decisions back in.

- :mod:`~vitguard.review.requests`: which verdicts and alerts need a person (pure).
- :mod:`~vitguard.review.apply`: what a decision changes, idempotently (pure over narrow store seams).
- :mod:`~vitguard.review.applier`: ``vitguard review apply``, following the decisions topic.
- :mod:`~vitguard.review.queue`: the pending queue the console shows (pure).
- :mod:`~vitguard.review.console`: ``vitguard review console``, the reviewers' web page.
- :mod:`~vitguard.review.dataset`: decisions as a labelled folder for ``vitguard finetune``.
- :mod:`~vitguard.review.topics`: the review topics and their cleanup policies.
"""

from __future__ import annotations

from vitguard.review.apply import OVERTURNED_LABEL, Applied, Ledger, RecordStore, ReviewBanks, apply_decision
from vitguard.review.queue import QueueItem, ReviewQueue, item_key
from vitguard.review.requests import appeal_request, build_review_requests, is_uncertain, reviewable_ref
from vitguard.review.topics import ensure_review_topics, review_topic_specs

__all__ = [
    "OVERTURNED_LABEL",
    "Applied",
    "Ledger",
    "QueueItem",
    "RecordStore",
    "ReviewBanks",
    "ReviewQueue",
    "appeal_request",
    "apply_decision",
    "build_review_requests",
    "ensure_review_topics",
    "is_uncertain",
    "item_key",
    "review_topic_specs",
    "reviewable_ref",
]
