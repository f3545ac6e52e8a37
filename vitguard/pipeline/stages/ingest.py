"""The ingest stage: one raw message -> a valid event, or its dead letter (pure, no I/O)."""

from __future__ import annotations

import logging

from vitguard import metrics
from vitguard.errors import InputError
from vitguard.pipeline.core import dead_letter
from vitguard.pipeline.results import DeadLettered, Parsed, StageTimes
from vitguard.pipeline.types import RawMessage
from vitguard.schemas.events import parse_image_event

__all__ = ["parse"]

_log = logging.getLogger(__name__)
_unknown_seen: set[str] = set()
"""Unknown field names already logged (at most :data:`_UNKNOWN_LOGGED` of them): one line per new name."""
_UNKNOWN_LOGGED = 64


def parse(raw: RawMessage, consumed_ms: float | None = None) -> Parsed | DeadLettered:
    """Validate ``raw`` against the input contract (``invalid_json`` / ``schema_violation`` otherwise).

    Args:
        consumed_ms: wall-clock milliseconds when the message was consumed; with the broker timestamp it gives
            the event's queue time.
    """
    if raw.value is None:
        return DeadLettered(raw, dead_letter(raw, "invalid_json", "message has no value (tombstone)"))
    try:
        event = parse_image_event(raw.value)
    except InputError as exc:
        return DeadLettered(raw, dead_letter(raw, exc.reason, exc.message))
    if event.model_extra:
        _count_unknown(event.model_extra)
    queue_ms = 0.0
    if consumed_ms is not None and raw.timestamp_ms is not None and raw.timestamp_ms > 0:
        queue_ms = max(0.0, consumed_ms - raw.timestamp_ms)
    return Parsed(raw, event, StageTimes(queue_ms=queue_ms))


def _count_unknown(extra: dict[str, object]) -> None:
    """Unknown fields are accepted (producers may upgrade first) and counted; each new name is logged once."""
    metrics.INPUT_UNKNOWN_FIELDS.inc(len(extra))
    for name in extra:
        if name not in _unknown_seen and len(_unknown_seen) < _UNKNOWN_LOGGED:
            _unknown_seen.add(name)
            _log.info("input events carry a field the contract does not define, ignored: %r", name[:64])
