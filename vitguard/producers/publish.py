"""The publish loop behind ``vitguard publish``: items in, a summary out (no terminal I/O here)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vitguard.errors import InputError
from vitguard.producers.publisher import PublishError, UploadEventPublisher
from vitguard.producers.ratelimit import RateLimiter
from vitguard.producers.sources import SourceItem

__all__ = ["PublishSummary", "publish_items"]


@dataclass
class PublishSummary:
    """What a publish run did. ``failed`` counts by reason: a local reason code (``schema_violation``,
    ``inline_too_large``, ``unreadable_file``...) or the Kafka error name of a failed delivery."""

    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def line(self) -> str:
        """``sent 5, failed 2 (inline_too_large: 1, schema_violation: 1)``"""
        text = f"sent {self.sent}, failed {self.failed_total}"
        if self.failed:
            text += " (" + ", ".join(f"{reason}: {n}" for reason, n in sorted(self.failed.items())) + ")"
        return text


def publish_items(
    publisher: UploadEventPublisher,
    items: Iterable[SourceItem],
    *,
    limiter: RateLimiter | None = None,
    on_item: Callable[[SourceItem, str | None], None] | None = None,
    flush_timeout_s: float = 60.0,
) -> PublishSummary:
    """Publish every item's event, count what failed locally and what the broker refused.

    ``on_item(item, failure_reason)`` runs after each item (for a progress bar); ``failure_reason`` is
    None when the event was handed to the producer. Deliveries are counted after the final flush, so
    ``sent`` is what the broker acknowledged, not what was queued.

    Raises:
        PublishError: messages were still unacknowledged after ``flush_timeout_s``.
    """
    summary = PublishSummary()
    for item in items:
        reason: str | None = None
        if item.event is None:
            reason = item.reason or (item.error.reason if item.error else "internal_error")
        else:
            if limiter is not None:
                limiter.acquire()
            try:
                publisher.publish(item.event)
            except InputError as exc:
                reason = exc.reason
        if reason is not None:
            summary.failed[reason] += 1
        if on_item is not None:
            on_item(item, reason)
    try:
        publisher.flush(flush_timeout_s)
    except PublishError as exc:
        if not exc.failures:  # a timeout, not individual failures: nothing to count, let it surface
            raise
    summary.sent = publisher.delivered
    summary.failed.update(publisher.failure_counts())
    return summary
