"""Downstream helpers: typed subscribers for verdicts, alerts and dead letters."""

from __future__ import annotations

from vitguard.subscribers.subscriber import (
    AlertSubscriber,
    DeadLetterSubscriber,
    InvalidMessageError,
    Received,
    TopicSubscriber,
    VerdictSubscriber,
)
from vitguard.subscribers.view import Filters, matches

__all__ = [
    "AlertSubscriber",
    "DeadLetterSubscriber",
    "Filters",
    "InvalidMessageError",
    "Received",
    "TopicSubscriber",
    "VerdictSubscriber",
    "matches",
]
