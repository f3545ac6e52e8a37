"""The in-memory stores behave like the real adapters (the integration tests hold the real ones to it)."""

from __future__ import annotations

import numpy as np
import pytest

from vitguard.errors import ConfigError
from vitguard.model.types import ModelInfo
from vitguard.settings import PolicySettings
from vitguard.stores import (
    EmbeddingRecord,
    InMemoryDedupStore,
    InMemoryEmbeddingIndex,
    InMemoryWaveCounter,
    collection_name,
    wave_decision,
)

MODEL = ModelInfo("timm:test-model", "abc123", ("NSFW", "SFW"), 4, (3, 8, 8))


def record(cid: str, vec: list[float], label: str = "unsafe", cluster: str = "") -> EmbeddingRecord:
    v = np.asarray(vec, dtype=np.float32)
    return EmbeddingRecord(cid, v / np.linalg.norm(v), label, 0.9, cluster, "t", "abc123", 1, 2)


def test_collection_names_are_valid_and_distinct_per_model() -> None:
    other = ModelInfo("opennsfw", "v1", ("NSFW", "SFW"), 1024, (3, 224, 224))
    a, b = collection_name("vitguard_", MODEL), collection_name("vitguard_", other)
    assert a != b
    for name in (a, b):
        assert name.replace("_", "a").isalnum() and not name[0].isdigit() and len(name) <= 255
    long_model = ModelInfo("x" * 190, "v" * 190, ("a",), 8, (3, 8, 8))
    long_a = collection_name("p" * 100, long_model)
    assert len(long_a) == 255
    assert long_a != collection_name("p" * 100, ModelInfo("x" * 190, "w" * 190, ("a",), 8, (3, 8, 8)))
    with pytest.raises(ConfigError):
        collection_name("9bad_", MODEL)


def test_index_upsert_is_idempotent_and_search_sees_only_unsafe() -> None:
    index = InMemoryEmbeddingIndex()
    name = index.ensure_collection(MODEL)
    index.upsert(name, [record("a", [1, 0, 0, 0], cluster="c-a"), record("s", [1, 0.01, 0, 0], label="safe")])
    index.upsert(name, [record("a", [1, 0, 0, 0], cluster="c-a2")])
    assert set(index.records(name)) == {"a", "s"}
    assert index.records(name)["a"].cluster_id == "c-a2"
    hits = index.search_unsafe(name, np.asarray([[1, 0.05, 0, 0], [0, 1, 0, 0]], dtype=np.float32), 5, 0.9)
    assert [h.content_id for h in hits[0]] == ["a"] and hits[0][0].cluster_id == "c-a2"
    assert hits[1] == []
    assert index.upsert_calls == 2 and index.search_calls == 1
    with pytest.raises(ValueError):
        index.upsert(name, [record("bad", [1, 0, 0])])


async def test_dedup_ttls_and_nx() -> None:
    now = [1000.0]
    store = InMemoryDedupStore(event_ttl_s=60, verdict_cache_ttl_s=120, clock=lambda: now[0])
    await store.mark_events(["e1"])
    assert await store.seen_events(["e1", "e2"]) == {"e1"}
    now[0] += 30
    await store.mark_events(["e1"])  # NX: does not extend the TTL
    now[0] += 31
    assert await store.seen_events(["e1"]) == set()
    await store.cache_verdicts({"h1": '{"label":"safe"}'}, "m1")
    assert await store.cached_verdicts(["h1", "h2"], "m1") == {"h1": '{"label":"safe"}'}
    assert await store.cached_verdicts(["h1"], "m2") == {}
    now[0] += 121
    assert await store.cached_verdicts(["h1"], "m1") == {}


def test_wave_decision_rule() -> None:
    assert wave_decision(1, 3, 60, cooldown_free=False).alert  # not a wave: always an (info) alert
    assert wave_decision(3, 3, 60, cooldown_free=True).alert
    assert not wave_decision(4, 3, 60, cooldown_free=False).alert
    assert wave_decision(4, 3, 0, cooldown_free=False).alert  # cooldown 0: no suppression
    assert wave_decision(4, 3, 60, cooldown_free=False).is_wave


async def test_memory_wave_counter_window_and_suppression() -> None:
    counter = InMemoryWaveCounter(PolicySettings(wave_window_s=10, wave_threshold=3, wave_alert_cooldown_s=5))
    states = [await counter.record("c", f"x{i}", t) for i, t in enumerate([0, 1, 2, 3, 4, 7.5])]
    assert [s.count for s in states] == [1, 2, 3, 4, 5, 6]
    assert [s.is_wave for s in states] == [False, False, True, True, True, True]
    assert [s.alert for s in states] == [True, True, True, False, False, True]  # cooldown 2..7 then again
    assert (await counter.record("c", "x0", 7.6)).count == 6  # a redelivered member counts once
    late = await counter.record("c", "y", 20.0)  # everything before t=10 left the window
    assert late.count == 1 and not late.is_wave and late.alert
    assert (await counter.record("other", "z", 20.0)).count == 1
