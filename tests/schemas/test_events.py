"""Event contracts: strict validation, limits, byte-exact dead letters, JSON Schema export."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from vitguard.errors import InputError
from vitguard.schemas import (
    SCHEMA_VERSION,
    DeadLetter,
    NearDuplicateAlert,
    Verdict,
    export_json_schemas,
    parse_image_event,
)

GOOD = {
    "event_id": "ev-1",
    "content_id": "img/42",
    "image_ref": "https://cdn.example.com/a.jpg",
    "tenant": "acme",
    "created_at": "2026-11-21T10:00:00Z",
    "metadata": {"uploader": "u1"},
}


def _raw(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_good_event_parses() -> None:
    event = parse_image_event(_raw())
    assert event.content_id == "img/42"
    assert event.created_at == datetime(2026, 11, 21, 10, tzinfo=UTC)
    assert event.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize(
    "ref",
    ["file:///data/images/a.png", "http://x/y.jpg", "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()],
)
def test_accepted_references(ref: str) -> None:
    assert parse_image_event(_raw(image_ref=ref)).image_ref == ref


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (_raw(image_ref="ftp://x/y.jpg"), "schema_violation"),
        (_raw(image_ref="data:text/plain;base64,aGk="), "schema_violation"),
        (_raw(image_ref="https://x/" + "a" * 5000), "schema_violation"),
        (_raw(content_id=""), "schema_violation"),
        (_raw(content_id="x" * 200), "schema_violation"),
        (_raw(content_id="bad id with spaces"), "schema_violation"),
        (_raw(created_at="2026-11-21T10:00:00"), "schema_violation"),
        (_raw(metadata={f"k{i}": "v" for i in range(40)}), "schema_violation"),
        (_raw(metadata={"k": "v" * 2000}), "schema_violation"),
        (_raw(schema_version="2.0"), "schema_violation"),
    ],
)
def test_bad_events_raise_reason_codes(raw: bytes, reason: str) -> None:
    with pytest.raises(InputError) as info:
        parse_image_event(raw)
    assert info.value.reason == reason
    assert "\n" not in str(info.value)


def test_missing_field_is_named() -> None:
    raw = json.dumps({k: v for k, v in GOOD.items() if k != "content_id"}).encode()
    with pytest.raises(InputError, match="content_id"):
        parse_image_event(raw)


def test_events_are_frozen() -> None:
    event = parse_image_event(_raw())
    with pytest.raises(ValidationError):
        event.content_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("raw", [b'{"ok": "text \xe2\x9c\x93"}', b"\x00\xffbinary\x80"])
def test_dead_letter_preserves_payload_bytes(raw: bytes) -> None:
    dl = DeadLetter.for_payload(
        raw, reason="not_an_image", message="m", source_topic="t", source_partition=0, source_offset=5
    )
    again = DeadLetter.model_validate_json(dl.model_dump_json())
    assert again.original_bytes() == raw
    assert again.payload_encoding == ("utf-8" if raw.startswith(b"{") else "base64")


def test_dead_letter_rejects_unknown_reason() -> None:
    with pytest.raises(ValidationError):
        DeadLetter.for_payload(b"x", reason="because", message="m", source_topic="t", source_partition=0,
                               source_offset=0)


def test_verdict_round_trip() -> None:
    verdict = Verdict(
        event_id="e", content_id="c", label="unsafe", unsafe_score=0.9, top_class="NSFW",
        scores={"NSFW": 0.9, "SFW": 0.1}, model_name="m", model_version="v",
    )
    assert Verdict.model_validate_json(verdict.model_dump_json()) == verdict
    with pytest.raises(ValidationError):
        Verdict(event_id="e", content_id="c", label="maybe", unsafe_score=0.5, top_class="x", scores={},
                model_name="m", model_version="v")  # type: ignore[arg-type]


def test_json_schema_export_is_valid_json_schema(tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path)
    assert sorted(p.name for p in paths) == [
        "bank-match-alert.schema.json", "dead-letter.schema.json", "image-event.schema.json",
        "near-duplicate-alert.schema.json", "retro-match.schema.json", "review-audit-record.schema.json",
        "review-decision.schema.json", "review-request.schema.json", "verdict-correction.schema.json",
        "verdict.schema.json",
    ]
    for path in paths:
        schema = json.loads(path.read_text())
        assert schema["$schema"].endswith("2020-12/schema")
        assert schema["type"] == "object" and "schema_version" in schema["properties"]
        for prop in schema["properties"].values():
            assert prop.get("description"), (path.name, prop)
    alert = json.loads((tmp_path / "near-duplicate-alert.schema.json").read_text())
    assert alert["properties"]["severity"]["enum"] == ["info", "warning", "critical"]
    assert NearDuplicateAlert.model_fields["severity"].description
    image_event = json.loads((tmp_path / "image-event.schema.json").read_text())
    assert image_event.get("additionalProperties", True) is not False  # producers may add fields first
    assert image_event["required"] == ["content_id", "image_ref"]  # the worker fills in the rest


def test_exported_schema_validates_real_events(tmp_path: Path) -> None:
    import jsonschema
    export_json_schemas(tmp_path)
    schema = json.loads((tmp_path / "image-event.schema.json").read_text())
    jsonschema.validate(json.loads(_raw()), schema)
    jsonschema.validate({**GOOD, "unexpected": 1}, schema)  # ignored and counted, as the worker does
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**GOOD, "image_ref": "ftp://x/y.jpg"}, schema)


def test_bank_fields_are_optional_and_alerts_say_their_type() -> None:
    from vitguard.schemas import BankMatch, BankMatchAlert

    verdict = Verdict(event_id="e", content_id="c", label="safe", unsafe_score=0.1, top_class="SFW",
                      scores={"SFW": 0.9, "NSFW": 0.1}, model_name="m", model_version="v")
    assert verdict.bank_matches == [] and verdict.pdq_hash is None and verdict.label_source == "model"
    match = BankMatch(bank="b", entry_id="x", distance=3, action="force_unsafe")
    alert = BankMatchAlert(content_id="c", event_id="e", matches=[match], action_taken="force_unsafe",
                           severity="critical", label="unsafe", pdq_hash="a" * 64, pdq_quality=90)
    assert alert.alert_type == "bank_match" and alert.schema_version == SCHEMA_VERSION
    assert BankMatchAlert.model_validate_json(alert.model_dump_json()) == alert
