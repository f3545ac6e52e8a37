"""Which outputs become review requests (pure)."""

from __future__ import annotations

import pytest
from review_values import alert, request, verdict

from vitguard.review.requests import appeal_request, build_review_requests, is_uncertain
from vitguard.schemas.events import ImageEvent, Verdict
from vitguard.schemas.review import ReviewRequest
from vitguard.settings import ReviewSettings

BAND = ReviewSettings(uncertain_low=0.4, uncertain_high=0.6)


def _uncertain(v: Verdict) -> bool:
    return is_uncertain(v.unsafe_score, BAND)


def _event(cid: str, ref: str = "https://cdn.example/img.jpg") -> ImageEvent:
    return ImageEvent(event_id=f"e-{cid}", content_id=cid, image_ref=ref)


@pytest.mark.parametrize(("score", "expected"), [(0.39, False), (0.4, True), (0.59, True), (0.6, False)])
def test_band_is_half_open(score: float, expected: bool) -> None:
    assert is_uncertain(score, BAND) is expected


def test_uncertain_verdicts_and_every_alert_go_to_review() -> None:
    answered = [(_event(c), verdict(c, s)) for c, s in [("sure-safe", 0.02), ("unsure", 0.5), ("dup", 0.97),
                                                        ("wave", 0.99), ("sure-unsafe", 0.98)]]
    alerts = [alert("dup"), alert("wave", severity="critical")]
    out = {r.content_id: r for r in build_review_requests(answered, alerts, _uncertain)}
    assert set(out) == {"unsure", "dup", "wave"}
    assert out["unsure"].reasons == ["uncertain"]
    assert out["dup"].reasons == ["near_duplicate"] and out["wave"].reasons == ["wave"]
    assert out["wave"].wave_count == 9 and out["wave"].cluster_id == "c-1"
    assert out["dup"].matches[0].content_id == "known-1"
    assert out["unsure"].image_ref == "https://cdn.example/img.jpg"
    assert out["unsure"].scores == {"NSFW": 0.5, "SFW": 0.5} and out["unsure"].collection == "vitguard_m"


def test_one_request_per_item_with_every_reason() -> None:
    [r] = build_review_requests([(_event("x"), verdict("x", 0.55))], [alert("x")], _uncertain)
    assert r.reasons == ["uncertain", "near_duplicate"]


def test_inline_images_and_replays_are_not_copied() -> None:
    inline = _event("i", "data:image/png;base64,AAAA")
    [r] = build_review_requests([(inline, verdict("i", 0.5))], [], _uncertain)
    assert r.image_ref is None  # the request carries no image bytes
    assert build_review_requests([(_event("r"), verdict("r", 0.5, replay_id="rp-1"))], [], _uncertain) == []


def test_appeal_carries_the_previous_context_forward() -> None:
    previous = request("a", cluster_id="c-9", image_ref="https://cdn.example/a.jpg")
    r = appeal_request("a", tenant="t1", note="this is a statue", image_ref=None, previous=previous)
    assert r.reasons == ["uncertain", "appeal"] and r.cluster_id == "c-9" and r.appeal_note == "this is a statue"
    assert r.image_ref == "https://cdn.example/a.jpg" and r.request_id != previous.request_id
    fresh = appeal_request("b", tenant="t1", note=None, image_ref="https://cdn.example/b.jpg", previous=None)
    assert fresh.reasons == ["appeal"] and fresh.label is None


def test_contract_refuses_markup_in_ids() -> None:
    with pytest.raises(ValueError):
        ReviewRequest(content_id="<script>alert(1)</script>", reasons=["appeal"])
