"""Filters and one-line renderings of output events, for ``vitguard tail`` (pure functions)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel

from vitguard.schemas.events import DeadLetter, NearDuplicateAlert, Verdict

__all__ = ["Filters", "header", "matches", "render"]


@dataclass(frozen=True)
class Filters:
    """What to show; an empty field means "any"."""

    labels: Collection[str] = ()
    min_score: float | None = None
    reasons: Collection[str] = ()
    severities: Collection[str] = ()
    tenants: Collection[str] = ()


def matches(event: BaseModel, filters: Filters) -> bool:
    """True when ``event`` passes every filter that applies to its type (others are ignored)."""
    tenant = getattr(event, "tenant", None)
    if filters.tenants and tenant not in filters.tenants:
        return False
    if isinstance(event, Verdict):
        return _verdict_matches(event, filters)
    if isinstance(event, NearDuplicateAlert):
        return _alert_matches(event, filters)
    if isinstance(event, DeadLetter):
        return _dead_letter_matches(event, filters)
    return True


def _verdict_matches(event: Verdict, filters: Filters) -> bool:
    if filters.labels and event.label not in filters.labels:
        return False
    if filters.min_score is not None and event.unsafe_score < filters.min_score:
        return False
    return True


def _alert_matches(event: NearDuplicateAlert, filters: Filters) -> bool:
    """``min_score`` applies to the alert's closest match."""
    if filters.severities and event.severity not in filters.severities:
        return False
    top = max((m.similarity for m in event.matches), default=0.0)
    if filters.min_score is not None and top < filters.min_score:
        return False
    return True


def _dead_letter_matches(event: DeadLetter, filters: Filters) -> bool:
    return not filters.reasons or event.reason in filters.reasons


_COLUMNS: dict[type[BaseModel], tuple[tuple[str, int], ...]] = {
    Verdict: (("time", 19), ("label", 6), ("score", 6), ("top_class", 10), ("content_id", 36), ("tenant", 10),
              ("model", 28), ("replay", 12)),
    NearDuplicateAlert: (("time", 19), ("severity", 8), ("wave", 6), ("best_sim", 8), ("content_id", 36),
                         ("cluster_id", 24), ("tenant", 10)),
    DeadLetter: (("time", 19), ("reason", 22), ("content_id", 36), ("source", 30), ("message", 60)),
}


def header(kind: type[BaseModel]) -> str:
    """The table header for ``kind``."""
    return _join((name, width) for name, width in _COLUMNS[kind])


def render(event: BaseModel) -> str:
    """One table row."""
    if isinstance(event, Verdict):
        cells = [_time(event.processed_at), event.label, f"{event.unsafe_score:.3f}", event.top_class,
                 event.content_id, event.tenant, f"{event.model_name}@{event.model_version}", event.replay_id or "-"]
    elif isinstance(event, NearDuplicateAlert):
        best = max((m.similarity for m in event.matches), default=0.0)
        cells = [_time(event.created_at), event.severity, str(event.wave_count), f"{best:.3f}", event.content_id,
                 event.cluster_id, event.tenant]
    elif isinstance(event, DeadLetter):
        source = f"{event.source_topic}[{event.source_partition}]@{event.source_offset}"
        cells = [_time(event.failed_at), event.reason, event.content_id or "-", source,
                 " ".join(event.message.split())]
    else:
        raise TypeError(f"no table layout for {type(event).__name__}")
    return _join(zip(cells, (w for _, w in _COLUMNS[type(event)]), strict=True))


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _join(cells: object) -> str:
    out = []
    for text, width in cells:  # type: ignore[attr-defined]
        text = str(text)
        out.append(text if len(text) <= width else text[: width - 1] + "…")
        out[-1] = out[-1].ljust(width)
    return "  ".join(out).rstrip()
