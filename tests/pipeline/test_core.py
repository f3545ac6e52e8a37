"""The pure moderation functions: parsing into dead letters, policy, verdict/alert building."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from vitguard.banks.signal import PdqHash
from vitguard.model.types import ModelInfo, Prediction
from vitguard.pipeline.core import (
    CachedVerdict,
    alert_severity,
    answer_key,
    build_alert,
    build_verdict,
    cache_key,
    dead_letter,
    encode_cached_verdict,
    moderate_batch,
    parse_cached_verdict,
    verdict_from_cache,
)
from vitguard.pipeline.results import DeadLettered, Parsed
from vitguard.pipeline.stages.ingest import parse
from vitguard.pipeline.types import RawMessage
from vitguard.policy import Decision
from vitguard.schemas.events import ImageEvent, Timings
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import SearchHit, WaveRule, WaveState

INFO = ModelInfo("opennsfw", "v1", ("SFW", "NSFW"), 4, (3, 8, 8), backend="onnx")


def raw(value: bytes | None, offset: int = 0, key: bytes | None = b"k") -> RawMessage:
    return RawMessage(value=value, key=key, topic="image-events", partition=2, offset=offset)


def event_bytes(**fields: object) -> bytes:
    return ImageEvent(content_id="c1", image_ref="https://example.com/a.jpg", **fields).model_dump_json().encode()


def test_ingest_splits_valid_and_invalid_messages_into_dead_letters() -> None:
    good = event_bytes(event_id="e1")
    schema_bad = json.dumps({"content_id": "c2", "event_id": "e2", "image_ref": "ftp://x"}).encode()
    messages = [raw(good, 0), raw(b"\xff\xfe not json", 1, key=b"\xff"), raw(schema_bad, 2), raw(None, 3)]
    results = [parse(m) for m in messages]
    parsed = SimpleNamespace(dead_letters=[r.dead_letter for r in results if isinstance(r, DeadLettered)])

    assert [r.event.event_id for r in results if isinstance(r, Parsed)] == ["e1"]
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
    assert entry is not None and entry.frames == () and entry.fits("8/1/rate", "32/1/rate")  # any sampling
    again = ImageEvent(content_id="copy", image_ref="https://example.com/b.jpg", tenant="t2")
    copy = verdict_from_cache(entry.verdict, again, "a" * 64, Timings(fetch_ms=3.0))
    assert (copy.content_id, copy.event_id, copy.tenant) == ("copy", again.event_id, "t2")
    assert copy.from_cache and copy.label == "unsafe" and copy.cluster_id == "c-1"
    assert copy.embedding_id is None and copy.metadata == {}
    frames = ((0, PdqHash("ab" * 32, 90)), (6, None))  # a video's entry: every frame's hash too
    video = parse_cached_verdict(encode_cached_verdict(verdict, frames, "64/2/rate"))
    assert video == CachedVerdict(verdict, frames, "64/2/rate")
    # issue 32: a multi-frame verdict answers only an event sampled the same way (its policy's frames)
    assert video.fits("64/2/rate", "32/1/rate") and not video.fits("32/1/rate", "32/1/rate")
    older = parse_cached_verdict(json.dumps({"verdict": verdict.model_dump(mode="json"), "frames": [[0, None, None]]}))
    assert older is not None and older.fits("32/1/rate", "32/1/rate")  # written before: the fleet's sampling
    assert not older.fits("8/1/rate", "32/1/rate")
    for junk in ("{not a verdict", "[]", '{"verdict": {}, "frames": []}', '{"verdict": 1}', "null"):
        assert parse_cached_verdict(junk) is None, junk


def test_alert_severity_and_matches() -> None:
    policy = PolicySettings(max_matches=2)
    wave = WaveRule(threshold=4, window_s=60, cooldown_s=0)
    assert alert_severity(WaveState(1, False, True), wave) == "info"
    assert alert_severity(WaveState(2, False, True), wave) == "warning"
    assert alert_severity(WaveState(4, True, True), wave) == "critical"
    event = ImageEvent(content_id="new", image_ref="https://example.com/a.jpg")
    alert = build_alert(
        event, cluster_id="c-1", state=WaveState(4, True, True), policy=policy, model_name="opennsfw", wave=wave,
        matches=[SearchHit("a", 0.93, "c-1"), SearchHit("b", 0.99, "c-1"), SearchHit("c", 0.95, "")],
        policy_name="kids",
    )
    assert (alert.wave_window_s, alert.policy) == (60, "kids")
    assert [m.content_id for m in alert.matches] == ["b", "c"]  # most similar first, at most max_matches
    assert alert.matches[1].cluster_id is None
    assert (alert.severity, alert.wave_count, alert.cluster_id) == ("critical", 4, "c-1")


def test_answer_key_tells_a_reused_event_id_from_a_redelivery() -> None:
    def event(**fields: object) -> ImageEvent:
        base: dict[str, object] = {"event_id": "e1", "content_id": "c1", "image_ref": "https://example.com/a.jpg"}
        return ImageEvent.model_validate({**base, **fields})

    key = answer_key(event())
    assert key.startswith("e1#") and answer_key(event()) == key  # the same event, sent again
    assert answer_key(event(created_at="2020-01-01T00:00:00Z", metadata={"retry": "2"})) == key
    others = [event(image_ref="https://example.com/b.jpg"), event(content_id="c2"), event(tenant="t2"),
              event(event_id="e2")]
    assert len({key, *(answer_key(e) for e in others)}) == 5
