"""Values shared by the review-loop tests (a plain module: every test directory has its own conftest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from vitguard.schemas.events import Match, NearDuplicateAlert, Verdict
from vitguard.schemas.review import ReviewDecision, ReviewRequest

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def verdict(content_id: str, score: float, **kw: Any) -> Verdict:
    fields: dict[str, Any] = {
        "event_id": f"e-{content_id}", "content_id": content_id, "label": "unsafe" if score >= 0.5 else "safe",
        "unsafe_score": score, "top_class": "NSFW" if score >= 0.5 else "SFW",
        "scores": {"NSFW": score, "SFW": 1 - score}, "model_name": "m", "model_version": "v1",
        "collection": "vitguard_m", **kw,
    }
    return Verdict(**fields)


def alert(content_id: str, *, severity: str = "info", cluster: str = "c-1") -> NearDuplicateAlert:
    return NearDuplicateAlert(
        content_id=content_id, event_id=f"e-{content_id}", cluster_id=cluster,
        matches=[Match(content_id="known-1", similarity=0.97, cluster_id=cluster)], wave_count=3 if severity ==
        "info" else 9, wave_window_s=600, severity=severity, model_name="m",  # type: ignore[arg-type]
    )


def request(content_id: str, *, at: datetime = T0, **kw: Any) -> ReviewRequest:
    fields: dict[str, Any] = {"content_id": content_id, "reasons": ["uncertain"], "requested_at": at,
                              "unsafe_score": 0.55, "label": "unsafe", "collection": "vitguard_m", **kw}
    return ReviewRequest(**fields)


def decision(content_id: str, kind: str = "overturn_safe", *, at: datetime | None = None, **kw: Any) -> ReviewDecision:
    fields: dict[str, Any] = {"content_id": content_id, "decision": kind, "reviewer": "alice",
                              "reason": "false_positive" if kind == "overturn_safe" else "explicit",
                              "decided_at": at or T0 + timedelta(minutes=5), "collection": "vitguard_m", **kw}
    return ReviewDecision(**fields)
