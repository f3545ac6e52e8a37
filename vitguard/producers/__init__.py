"""The other ends of the topics: publishing upload events, replaying topics, re-driving dead letters."""

from __future__ import annotations

from vitguard.producers.publish import PublishSummary, publish_items
from vitguard.producers.publisher import (
    DeliveryResult,
    InvalidEventError,
    PublishError,
    UploadEventPublisher,
    validate_event,
)
from vitguard.producers.ratelimit import RateLimiter
from vitguard.producers.sources import SourceError, SourceItem, items_from_directory, items_from_jsonl, items_from_urls

__all__ = [
    "DeliveryResult",
    "InvalidEventError",
    "PublishError",
    "PublishSummary",
    "RateLimiter",
    "SourceError",
    "SourceItem",
    "UploadEventPublisher",
    "items_from_directory",
    "items_from_jsonl",
    "items_from_urls",
    "publish_items",
    "validate_event",
]
