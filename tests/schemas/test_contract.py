"""One contract: the published JSON Schema accepts exactly what the worker's parser accepts, and the published
schemas change only deliberately (``docs/schemas/`` is regenerated and committed with the change)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vitguard.errors import InputError
from vitguard.schemas.events import MAX_METADATA_KEYS, MAX_URL_LEN, derived_event_id, parse_image_event
from vitguard.schemas.export import EVENT_MODELS, json_schema

ROOT = Path(__file__).resolve().parents[2]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
BASE = {"content_id": "img-1", "image_ref": "https://cdn.example.com/a.jpg"}

EVENTS: list[tuple[str, Any]] = [
    # (what, the JSON object a producer sends)
    ("minimal", BASE),
    ("everything", {**BASE, "event_id": "ev-1", "tenant": "acme", "created_at": "2026-11-21T10:00:00Z",
                    "metadata": {"uploader": "u1"}, "schema_version": "1.4", "replay_id": "r1"}),
    ("unknown fields", {**BASE, "x_trace": "abc", "priority": 3}),
    ("file ref", {**BASE, "image_ref": "file:///data/a.png"}),
    ("inline image", {**BASE, "image_ref": f"data:image/png;base64,{PNG}"}),
    ("inline video", {**BASE, "image_ref": f"data:video/mp4;base64,{PNG}"}),
    ("inline with parameters", {**BASE, "image_ref": f"data:image/png;name=a.png;base64,{PNG}"}),
    ("offset without colon", {**BASE, "created_at": "2026-11-21T10:00:00+0100"}),
    ("space separator", {**BASE, "created_at": "2026-11-21 10:00:00.123Z"}),
    ("no seconds", {**BASE, "created_at": "2026-11-21T10:00Z"}),
    ("ftp ref", {**BASE, "image_ref": "ftp://x/y.jpg"}),
    ("upper-case scheme", {**BASE, "image_ref": "HTTPS://x/y.jpg"}),
    ("whitespace in URL", {**BASE, "image_ref": "https://x/a b.jpg"}),
    ("URL too long", {**BASE, "image_ref": "https://x/" + "a" * MAX_URL_LEN}),
    ("text inline", {**BASE, "image_ref": "data:text/plain;base64,aGk="}),
    ("inline not base64", {**BASE, "image_ref": f"data:image/png,{PNG}"}),
    ("inline empty", {**BASE, "image_ref": "data:image/png;base64,"}),
    ("empty ref", {**BASE, "image_ref": ""}),
    ("no content id", {"image_ref": BASE["image_ref"]}),
    ("no ref", {"content_id": "img-1"}),
    ("id with space", {**BASE, "content_id": "a b"}),
    ("id too long", {**BASE, "content_id": "a" * 129}),
    ("id not a string", {**BASE, "content_id": 42}),
    ("event id empty", {**BASE, "event_id": ""}),
    ("naive time", {**BASE, "created_at": "2026-11-21T10:00:00"}),
    ("unix time", {**BASE, "created_at": 1700000000}),
    ("date only", {**BASE, "created_at": "2026-11-21"}),
    ("too many metadata keys", {**BASE, "metadata": {f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}}),
    ("metadata value too long", {**BASE, "metadata": {"k": "v" * 1025}}),
    ("metadata empty key", {**BASE, "metadata": {"": "v"}}),
    ("metadata not strings", {**BASE, "metadata": {"k": 1}}),
    ("version 2", {**BASE, "schema_version": "2.0"}),
    ("tenant null", {**BASE, "tenant": None}),
]


def _worker_accepts(event: Any) -> bool:
    try:
        parse_image_event(json.dumps(event).encode())
    except InputError:
        return False
    return True


def _schema_accepts(event: Any) -> bool:
    try:
        jsonschema.validate(event, json_schema("image-event"))
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize("what, event", EVENTS, ids=[w for w, _ in EVENTS])
def test_the_schema_and_the_worker_agree(what: str, event: Any) -> None:
    assert _schema_accepts(event) == _worker_accepts(event), what


def test_the_corpus_holds_both_answers() -> None:
    answers = [_worker_accepts(e) for _, e in EVENTS]
    assert 8 <= sum(answers) <= len(answers) - 15


def test_an_event_without_an_id_gets_one_from_its_bytes_so_a_redelivery_is_recognised() -> None:
    raw = json.dumps(BASE).encode()
    first, again = parse_image_event(raw), parse_image_event(raw)
    assert first.event_id == again.event_id == derived_event_id(raw)
    assert first.event_id.startswith("sha256-") and len(first.event_id) == 7 + 32
    other = parse_image_event(json.dumps({**BASE, "image_ref": "https://cdn.example.com/b.jpg"}).encode())
    assert other.event_id != first.event_id


def test_unknown_fields_are_kept_aside_not_refused() -> None:
    event = parse_image_event(json.dumps({**BASE, "x_trace": "abc", "future_field": [1]}).encode())
    assert event.model_extra == {"x_trace": "abc", "future_field": [1]}


@pytest.mark.parametrize("name", list(EVENT_MODELS))
def test_the_published_schemas_are_the_committed_ones(name: str) -> None:
    """A change to a published contract is deliberate: regenerate with ``vitguard schemas export docs/schemas``
    and commit it with the change (and a SCHEMA_VERSION note in vitguard/schemas/events.py)."""
    committed = json.loads((ROOT / "docs" / "schemas" / f"{name}.schema.json").read_text())
    assert committed == json_schema(name)
