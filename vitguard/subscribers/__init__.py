"""Downstream helpers: typed subscribers for verdicts, alerts and dead letters."""

from __future__ import annotations

from vitguard.subscribers.subscriber import (
    AlertSubscriber,
    BankAlertSubscriber,
    DeadLetterSubscriber,
    InvalidMessageError,
    Received,
    RetroMatchSubscriber,
    TopicSubscriber,
    VerdictSubscriber,
)
from vitguard.subscribers.view import Filters, matches

__all__ = [
    "AlertSubscriber",
    "BankAlertSubscriber",
    "DeadLetterSubscriber",
    "Filters",
    "InvalidMessageError",
    "Received",
    "RetroMatchSubscriber",
    "TopicSubscriber",
    "VerdictSubscriber",
    "matches",
]
