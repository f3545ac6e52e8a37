"""Filters and table rows of ``vitguard tail``."""

from __future__ import annotations

from vitguard.schemas.events import DeadLetter, Match, NearDuplicateAlert, Verdict
from vitguard.subscribers.view import Filters, header, matches, render


def verdict(label: str = "unsafe", score: float = 0.9, tenant: str = "acme") -> Verdict:
    return Verdict(
        event_id="e1", content_id="c1", tenant=tenant, label=label, unsafe_score=score, top_class="NSFW",
        scores={"NSFW": score, "SFW": 1 - score}, model_name="opennsfw", model_version="v1",
    )


def alert(severity: str = "critical", sim: float = 0.97) -> NearDuplicateAlert:
    return NearDuplicateAlert(
        content_id="c2", event_id="e2", cluster_id="k1", matches=[Match(content_id="c1", similarity=sim)],
        wave_count=5, wave_window_s=600, severity=severity, model_name="opennsfw",
    )


def dead(reason: str = "fetch_timeout") -> DeadLetter:
    return DeadLetter.for_payload(b"{}", reason=reason, message="timed out\nafter 3s", source_topic="in",
                                  source_partition=1, source_offset=7)


def test_verdict_filters() -> None:
    assert matches(verdict(), Filters(labels=["unsafe"], min_score=0.5))
    assert not matches(verdict(label="safe", score=0.1), Filters(labels=["unsafe"]))
    assert not matches(verdict(score=0.6), Filters(min_score=0.7))
    assert not matches(verdict(tenant="other"), Filters(tenants=["acme"]))
    assert matches(verdict(), Filters(reasons=["fetch_timeout"]))  # dead-letter filter does not apply


def test_alert_and_dead_letter_filters() -> None:
    assert matches(alert(), Filters(severities=["critical"], min_score=0.95))
    assert not matches(alert(severity="info"), Filters(severities=["critical"]))
    assert not matches(alert(sim=0.93), Filters(min_score=0.95))
    assert matches(dead(), Filters(reasons=["fetch_timeout", "not_an_image"]))
    assert not matches(dead("not_an_image"), Filters(reasons=["fetch_timeout"]))


def test_rows_line_up_with_headers() -> None:
    row = render(verdict())
    assert row.split()[2:5] == ["unsafe", "0.900", "NSFW"]
    assert header(Verdict).split()[1:4] == ["label", "score", "top_class"]
    assert "in[1]@7" in render(dead())
    assert "\n" not in render(dead())
    assert render(alert()).split()[2:5] == ["critical", "5", "0.970"]
