"""The pure moderation functions: parsing into dead letters, policy, verdict/alert building."""

from __future__ import annotations

import json

import numpy as np

from vitguard.banks.signal import PdqHash
from vitguard.model.types import ModelInfo, Prediction
from vitguard.pipeline.core import (
    alert_severity,
    build_alert,
    build_verdict,
    cache_key,
    dead_letter,
    encode_cached_verdict,
    moderate_batch,
    parse_batch,
    parse_cached_verdict,
    verdict_from_cache,
)
from vitguard.pipeline.types import RawMessage
from vitguard.policy import Decision
from vitguard.schemas.events import ImageEvent, Timings
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import SearchHit, WaveState

INFO = ModelInfo("opennsfw", "v1", ("SFW", "NSFW"), 4, (3, 8, 8), backend="onnx")


def raw(value: bytes | None, offset: int = 0, key: bytes | None = b"k") -> RawMessage:
    return RawMessage(value=value, key=key, topic="image-events", partition=2, offset=offset)


def event_bytes(**fields: object) -> bytes:
    return ImageEvent(content_id="c1", image_ref="https://example.com/a.jpg", **fields).model_dump_json().encode()


def test_parse_batch_splits_valid_invalid_and_repeats() -> None:
    good = event_bytes(event_id="e1")
    schema_bad = json.dumps({"content_id": "c2", "event_id": "e2", "image_ref": "ftp://x"}).encode()
    messages = [raw(good, 0), raw(b"\xff\xfe not json", 1, key=b"\xff"), raw(schema_bad, 2), raw(None, 3),
                raw(good, 4)]
    parsed = parse_batch(messages)

    assert [e.event_id for _, e in parsed.events] == ["e1"]
    assert [r.offset for r in parsed.repeats] == [4]
    reasons = {d.source_offset: d.reason for d in parsed.dead_letters}
    assert reasons == {1: "invalid_json", 2: "schema_violation", 3: "invalid_json"}
    bad_bytes = next(d for d in parsed.dead_letters if d.source_offset == 1)
    assert bad_bytes.original_bytes() == b"\xff\xfe not json"  # payload kept byte for byte
    assert bad_bytes.payload_encoding == "base64"
    schema = next(d for d in parsed.dead_letters if d.source_offset == 2)
    assert (schema.event_id, schema.content_id) == ("e2", "c2")  # ids recovered for the operator
    assert schema.source_partition == 2 and schema.source_topic == "image-events"
    assert "image_ref" in schema.message


def test_dead_letter_keeps_event_identity() -> None:
    event = ImageEvent(content_id="c9", image_ref="https://example.com/x.jpg", event_id="e9")
    letter = dead_letter(raw(event.model_dump_json().encode(), 7), "fetch_timeout", "slow server", event)
    assert (letter.reason, letter.event_id, letter.content_id, letter.source_offset) == ("fetch_timeout", "e9", "c9", 7)
    assert ImageEvent.model_validate_json(letter.original_bytes()) == event


def test_policy_decisions_sum_unsafe_labels() -> None:
    preds = [Prediction({"SFW": 0.3, "NSFW": 0.7}, np.zeros(4, np.float32)),
             Prediction({"SFW": 0.9, "NSFW": 0.1}, np.zeros(4, np.float32))]
    decisions = moderate_batch(preds, ["NSFW"], 0.5)
    assert [d.label for d in decisions] == ["unsafe", "safe"]
    assert decisions[0].unsafe_score == 0.7


def test_cache_key_changes_with_model_and_policy() -> None:
    key = cache_key(INFO, ["NSFW"], 0.5)
    assert key == cache_key(INFO, ["NSFW"], 0.5)
    assert key != cache_key(INFO, ["NSFW"], 0.6)
    assert key != cache_key(ModelInfo("opennsfw", "v2", ("SFW", "NSFW"), 4, (3, 8, 8)), ["NSFW"], 0.5)
    sampled = cache_key(INFO, ["NSFW"], 0.5, (32, 1.0, "rate", 5))  # a video judged on other frames: another key
    assert sampled != key and sampled != cache_key(INFO, ["NSFW"], 0.5, (32, 2.0, "rate", 5))


def test_verdict_from_cache_takes_identity_from_the_new_event() -> None:
    first = ImageEvent(content_id="orig", image_ref="https://example.com/a.jpg", metadata={"a": "1"})
    verdict = build_verdict(
        first, info=INFO, prediction=Prediction({"SFW": 0.2, "NSFW": 0.8}, np.zeros(4, np.float32)),
        decision=Decision("unsafe", 0.8), sha256="a" * 64, timings=Timings(), collection="col", cluster_id="c-1",
    )
    assert (verdict.embedding_id, verdict.cluster_id, verdict.top_class) == ("orig", "c-1", "NSFW")
    entry = parse_cached_verdict(verdict.model_dump_json())  # a still image's entry: the verdict alone
    assert entry is not None and entry[1] == ()
    again = ImageEvent(content_id="copy", image_ref="https://example.com/b.jpg", tenant="t2")
    copy = verdict_from_cache(entry[0], again, "a" * 64, Timings(fetch_ms=3.0))
    assert (copy.content_id, copy.event_id, copy.tenant) == ("copy", again.event_id, "t2")
    assert copy.from_cache and copy.label == "unsafe" and copy.cluster_id == "c-1"
    assert copy.embedding_id is None and copy.metadata == {}
    frames = ((0, PdqHash("ab" * 32, 90)), (6, None))  # a video's entry: every frame's hash too
    assert parse_cached_verdict(encode_cached_verdict(verdict, frames)) == (verdict, frames)
    for junk in ("{not a verdict", "[]", '{"verdict": {}, "frames": []}', '{"verdict": 1}', "null"):
        assert parse_cached_verdict(junk) is None, junk


def test_alert_severity_and_matches() -> None:
    policy = PolicySettings(wave_threshold=4, max_matches=2)
    assert alert_severity(WaveState(1, False, True), policy) == "info"
    assert alert_severity(WaveState(2, False, True), policy) == "warning"
    assert alert_severity(WaveState(4, True, True), policy) == "critical"
    event = ImageEvent(content_id="new", image_ref="https://example.com/a.jpg")
    alert = build_alert(
        event, cluster_id="c-1", state=WaveState(4, True, True), policy=policy, model_name="opennsfw",
        matches=[SearchHit("a", 0.93, "c-1"), SearchHit("b", 0.99, "c-1"), SearchHit("c", 0.95, "")],
    )
    assert [m.content_id for m in alert.matches] == ["b", "c"]  # most similar first, at most max_matches
    assert alert.matches[1].cluster_id is None
    assert (alert.severity, alert.wave_count, alert.cluster_id) == ("critical", 4, "c-1")
