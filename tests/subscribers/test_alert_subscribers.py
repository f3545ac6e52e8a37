"""The alerts topic carries three kinds (near-duplicate, bank-match and retro-match alerts): each subscriber of it
yields its own kind and reads past the others, and a record that is no alert at all is reported to every one of
them as invalid. Real broker."""

from __future__ import annotations

from collections.abc import Callable

from tests.retro.test_hunter import _bank_alert
from tests.review.review_values import alert
from vitguard.schemas.retro import RetroMatch, RetroTrigger, retro_match_id
from vitguard.settings import load_settings
from vitguard.subscribers import AlertSubscriber, BankAlertSubscriber, RetroMatchSubscriber
from vitguard.testing.worker import publish_raw


def _retro_match() -> bytes:
    trigger = RetroTrigger(kind="on_demand", trigger_id="h", content_id="bad-1")
    return RetroMatch(retro_match_id=retro_match_id(trigger, "copy-1"), trigger=trigger, content_id="copy-1",
                      tenant="t", similarity=0.97, threshold=0.92, old_label="safe", old_unsafe_score=0.1,
                      model_version="v", collection="c", uploaded_at="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
                      judged_at="2026-01-01T00:00:01Z").model_dump_json().encode()  # type: ignore[arg-type]


def test_each_alert_subscriber_yields_its_kind_and_reads_past_the_others(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    kafka = load_settings(kafka={"bootstrap_servers": kafka_bootstrap}).kafka
    topic = new_topic(1, "alerts")
    near = alert("u-1", severity="critical", cluster="c-1").model_dump_json().encode()
    legacy = near.replace(b'"alert_type":"near_duplicate",', b"")  # a 1.1 alert: no alert_type
    publish_raw(kafka, topic, [(b"a", near), (b"b", _bank_alert()), (b"c", _retro_match()), (b"d", legacy),
                               (b"e", b"not json")])
    seen = {}
    for cls in (AlertSubscriber, BankAlertSubscriber, RetroMatchSubscriber):
        with cls(kafka, topic, from_beginning=True) as subscriber:
            got = list(subscriber.messages(idle_timeout_s=3))
        seen[cls.__name__] = [type(r.value).__name__ if r.value is not None else r.error.reason  # type: ignore[union-attr]
                              for r in got]
    assert b'"alert_type"' not in legacy
    assert seen == {
        "AlertSubscriber": ["NearDuplicateAlert", "NearDuplicateAlert", "invalid_json"],
        "BankAlertSubscriber": ["BankMatchAlert", "invalid_json"],
        "RetroMatchSubscriber": ["RetroMatch", "invalid_json"],
    }
