"""Replay options and the checkpoint file: parsing, validation, atomic persistence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vitguard.producers.replay import ReplayRequest, new_replay_id, replay_event_id
from vitguard.producers.replay_state import (
    PartitionProgress,
    ReplaySpecError,
    ReplayState,
    ReplayStateError,
    ReplayStateStore,
    check_replay_id,
    parse_offsets,
    parse_timestamp,
)
from vitguard.schemas.events import ImageEvent

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T11:00:00Z", int(datetime(2026, 3, 1, 11, tzinfo=UTC).timestamp() * 1000)),
        ("2026-03-01T13:00:00+02:00", int(datetime(2026, 3, 1, 11, tzinfo=UTC).timestamp() * 1000)),
        ("1700000000123", 1700000000123),
        ("-30m", int(NOW.timestamp() * 1000) - 30 * 60 * 1000),
        ("-2h", int(NOW.timestamp() * 1000) - 2 * 3600 * 1000),
        ("-1d", int(NOW.timestamp() * 1000) - 86400 * 1000),
    ],
)
def test_timestamps(text: str, expected: int) -> None:
    assert parse_timestamp(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-03-01T11:00:00", "-5w", "", "2026-13-01T00:00:00Z",
                                  "-999999d", "-99999999999999d", "99999999999999999999"])
def test_bad_timestamps_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ReplaySpecError, match="ISO 8601"):
        parse_timestamp(text, NOW)


def test_offsets() -> None:
    assert parse_offsets(["100"]) == {None: 100}
    assert parse_offsets(["0:5", "2:7", "9"]) == {0: 5, 2: 7, None: 9}
    for bad in (["x"], ["1:-3"], ["0:1", "0:2"], ["a:1"]):
        with pytest.raises(ReplaySpecError):
            parse_offsets(bad)


def test_replay_ids() -> None:
    assert check_replay_id(new_replay_id()) .startswith("r-")
    for bad in ("", "../etc", "a b", "-x", "x" * 65):
        with pytest.raises(ReplaySpecError):
            check_replay_id(bad)


def test_replayed_event_ids_are_deterministic_and_valid() -> None:
    assert replay_event_id("r1", "abc") == "r1:abc"
    long_id = "e" * 128
    derived = replay_event_id("r-20260301T120000-abcdef", long_id)
    assert derived == replay_event_id("r-20260301T120000-abcdef", long_id) and len(derived) <= 128
    ImageEvent(event_id=derived, content_id="c", image_ref="https://x/y.png")  # a valid Identifier


def test_request_validation() -> None:
    with pytest.raises(ReplaySpecError, match="not both"):
        ReplayRequest(topic="t", mode="republish", from_timestamp="-1h", from_offsets=("3",))
    with pytest.raises(ReplaySpecError, match="unknown reason"):
        ReplayRequest(topic="t", mode="redrive", reasons=("nope",))


def test_store_round_trip_and_atomic_files(tmp_path: Path) -> None:
    store = ReplayStateStore(tmp_path / "replays")
    assert store.load("r1") is None
    state = ReplayState("r1", "events", {"topic": "events"}, {0: PartitionProgress(0, 10, 4, 4, 3),
                                                               1: PartitionProgress(5, 5, 5)})
    state.partitions[0].skipped["schema_violation"] = 1
    store.save(state)
    loaded = store.load("r1")
    assert loaded is not None
    assert loaded.partitions == state.partitions and loaded.request == state.request
    assert not loaded.done and loaded.partitions[1].done
    assert [p.name for p in store.directory.iterdir()] == ["r1.json"]  # no temp files left
    assert json.loads(store.path("r1").read_text())["done"] is False


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    store = ReplayStateStore(tmp_path)
    for text in ("{half", "[]", "null", '"text"'):
        store.path("r1").write_text(text)
        with pytest.raises(ReplayStateError, match="corrupt"):
            store.load("r1")
