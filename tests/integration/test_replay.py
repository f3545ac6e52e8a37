"""``vitguard replay`` against the real broker: ranges by timestamp and offset, resume, re-drive, errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from vitguard.cli import main
from vitguard.kafka.reader import RawRecord, read_to_end
from vitguard.producers import UploadEventPublisher
from vitguard.producers.replay import (
    REPLAY_HEADER,
    ReplayRequest,
    RepublishHandler,
    open_replay,
    replay_event_id,
    run_replay,
)
from vitguard.producers.replay_state import ReplayStateStore
from vitguard.schemas.events import DeadLetter, ImageEvent
from vitguard.settings import KafkaSettings

pytestmark = pytest.mark.integration

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def read_all(bootstrap: str, topic: str, partitions: int, timeout_s: float = 20.0) -> list[RawRecord]:
    records = read_to_end(KafkaSettings(bootstrap_servers=bootstrap), topic, timeout_s)
    assert {r.partition for r in records} <= set(range(partitions))
    return records


def produce_events(bootstrap: str, topic: str, partitions: int, count: int, start: int = 0) -> list[ImageEvent]:
    """``count`` events spread round-robin over the partitions; event i has record timestamp BASE + i s.
    Produced without per-message flushes, so records share batches (a coarse broker time index shows)."""
    events = []
    with UploadEventPublisher(KafkaSettings(bootstrap_servers=bootstrap), topic) as publisher:
        for i in range(start, start + count):
            event = ImageEvent(event_id=f"ev{i}", content_id=f"c{i}", image_ref=f"https://img.example.com/{i}.jpg")
            publisher.publish(event, timestamp_ms=BASE_MS + i * 1000, partition=i % partitions)
            events.append(event)
    return events


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_replay_from_timestamp_redelivers_exactly_the_events_at_or_after_it(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    source, target = new_topic(partitions=3, prefix="src"), new_topic(partitions=3, prefix="dst")
    events = produce_events(kafka_bootstrap, source, 3, 30)
    cutoff = 17  # events 17..29 are at or after the cutoff, on every partition
    code, out, err = cli(
        "replay", "--topic", source, "--to-topic", target, "--from-timestamp", str(BASE_MS + cutoff * 1000),
        "--replay-id", "ts1", "--state-dir", str(tmp_path), "--bootstrap-servers", kafka_bootstrap, "--no-progress",
    )
    assert code == 0, err
    replayed = read_all(kafka_bootstrap, target, 3)
    got = {ImageEvent.model_validate_json(m.value).event_id: m for m in replayed}
    assert sorted(got) == sorted(replay_event_id("ts1", e.event_id) for e in events[cutoff:])
    for event in events[cutoff:]:
        msg = got[replay_event_id("ts1", event.event_id)]
        again = ImageEvent.model_validate_json(msg.value)
        assert again.replay_id == "ts1"
        assert again.model_copy(update={"replay_id": None, "event_id": event.event_id}) == event
        assert msg.key == event.content_id.encode()
        assert dict(msg.headers)[REPLAY_HEADER] == b"ts1"
    per_partition = {p: sum(1 for i in range(cutoff, 30) if i % 3 == p) for p in range(3)}
    assert "complete" in out
    for p, n in per_partition.items():
        row = next(line.split() for line in out.splitlines() if line.split()[:1] == [str(p)])
        assert int(row[4]) == n and int(row[5]) == n  # read, sent


def test_replay_between_iso_timestamps_and_by_offsets(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    source = new_topic(partitions=2, prefix="src")
    produce_events(kafka_bootstrap, source, 2, 20)
    first = new_topic(partitions=1, prefix="dst")
    code, _, err = cli(
        "replay", "--topic", source, "--to-topic", first, "--from-timestamp", "2026-01-01T00:00:04Z",
        "--to-timestamp", "2026-01-01T00:00:09Z", "--state-dir", str(tmp_path), "--bootstrap-servers",
        kafka_bootstrap, "--no-progress",
    )
    assert code == 0, err
    ids = sorted(ImageEvent.model_validate_json(m.value).content_id for m in read_all(kafka_bootstrap, first, 1))
    assert ids == sorted(f"c{i}" for i in range(4, 9))

    second = new_topic(partitions=1, prefix="dst")
    code, _, err = cli(
        "replay", "--topic", source, "--to-topic", second, "--from-offset", "0:3", "--from-offset", "1:8",
        "--to-offset", "0:5", "--state-dir", str(tmp_path), "--bootstrap-servers", kafka_bootstrap, "--no-progress",
    )
    assert code == 0, err
    ids = sorted(ImageEvent.model_validate_json(m.value).content_id for m in read_all(kafka_bootstrap, second, 1))
    # partition 0 holds events 0,2,4,..: offsets 3,4 are events 6, 8; partition 1 offsets 8, 9 are events 17, 19
    assert ids == sorted(["c6", "c8", "c17", "c19"])


def test_interrupted_replay_resumes_without_gap_or_repeat(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    source, target = new_topic(partitions=3, prefix="src"), new_topic(partitions=2, prefix="dst")
    events = produce_events(kafka_bootstrap, source, 3, 40)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    store = ReplayStateStore(tmp_path)
    request = ReplayRequest(topic=source, mode="republish", target_topic=target)

    state, resumed = open_replay(kafka, request, "resume1", store)
    assert not resumed and sum(p.total for p in state.partitions.values()) == 40
    with UploadEventPublisher(kafka, target) as publisher:
        report = run_replay(kafka, state, store, RepublishHandler(publisher, "resume1"), max_messages=13)
    assert not report.complete and report.read_this_run == 13
    saved = store.load("resume1")
    assert saved is not None and sum(p.next - p.start for p in saved.partitions.values()) == 13

    produce_events(kafka_bootstrap, source, 3, 9, start=40)  # after the start: must not be replayed

    code, out, err = cli(
        "replay", "--topic", source, "--to-topic", target, "--replay-id", "resume1", "--state-dir", str(tmp_path),
        "--bootstrap-servers", kafka_bootstrap, "--no-progress",
    )
    assert code == 0, err
    assert "resuming, 27 record(s) left" in err
    delivered = [ImageEvent.model_validate_json(m.value).event_id for m in read_all(kafka_bootstrap, target, 2)]
    assert len(delivered) == 40, "a record was repeated or skipped"
    assert sorted(delivered) == sorted(replay_event_id("resume1", e.event_id) for e in events)
    final = store.load("resume1")
    assert final is not None and final.done and final.runs == 2
    assert sum(p.read for p in final.partitions.values()) == 40

    # the same id with different options is refused, not silently mixed
    code, _, err = cli("replay", "--topic", source, "--to-topic", target, "--from-offset", "1", "--replay-id",
                       "resume1", "--state-dir", str(tmp_path), "--bootstrap-servers", kafka_bootstrap)
    assert code == 2 and "exists with different options (from_offsets)" in err


def test_dead_letters_redriven_by_reason_come_back_with_their_original_bytes(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    dlq, inputs = new_topic(partitions=2, prefix="dlq"), new_topic(partitions=2, prefix="in")
    originals = {
        "timeout-1": (b'{"content_id": "c1", "image_ref": "https://slow.example.com/1.jpg"}', "fetch_timeout"),
        "timeout-2": (b'{"content_id": "c2", "image_ref": "https://slow.example.com/2.jpg", "x": 1}', "fetch_timeout"),
        "bytes-3": (b"\xff\xd8\xff not utf-8", "fetch_timeout"),
        "bad-4": (b'{"content_id": "c4", "image_ref": "https://x/notimage.txt"}', "not_an_image"),
    }
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i, (key, (raw, reason)) in enumerate(originals.items()):
        letter = DeadLetter.for_payload(raw, reason=reason, message="m", key=key, source_topic="image-events",
                                        source_partition=0, source_offset=i)
        producer.produce(dlq, key=key, value=letter.model_dump_json().encode())
    producer.produce(dlq, key="junk", value=b"not a dead letter")
    for i, payload in enumerate(("abc", "!!!!")):  # hand-made letters whose base64 is not base64
        bad = DeadLetter.for_payload(b"x", reason="fetch_timeout", message="m", key=f"bad-b64-{i}",
                                     source_topic="image-events", source_partition=0, source_offset=10 + i)
        bad = bad.model_copy(update={"payload": payload, "payload_encoding": "base64"})
        producer.produce(dlq, key=f"bad-b64-{i}", value=bad.model_dump_json().encode())
    assert producer.flush(10) == 0

    code, out, err = cli(
        "replay", "--from-dead-letters", "--topic", dlq, "--reason", "fetch_timeout", "--to-topic", inputs,
        "--state-dir", str(tmp_path), "--bootstrap-servers", kafka_bootstrap, "--no-progress",
    )
    assert code == 0, err
    back = {m.key.decode(): m.value for m in read_all(kafka_bootstrap, inputs, 2)}
    assert back == {k: raw for k, (raw, reason) in originals.items() if reason == "fetch_timeout"}
    skipped = [int(n) for n in re.findall(r"invalid_dead_letter: (\d+)", out)]  # per partition
    assert "filtered:not_an_image: 1" in out and sum(skipped) == 3, out  # the bad base64 stopped nothing


def test_replay_cli_errors_are_one_line(kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    source = new_topic(prefix="src")
    base = ["--state-dir", str(tmp_path), "--bootstrap-servers", kafka_bootstrap, "--no-progress"]
    common = [*base, "--to-topic", source]
    cases = {
        "bad timestamp": (["replay", "--topic", source, "--from-timestamp", "yesterday", *common], "bad timestamp"),
        "naive timestamp": (["replay", "--topic", source, "--from-timestamp", "2026-01-01T00:00:00", *common],
                            "no timezone"),
        "unknown topic": (["replay", "--topic", "no-such-topic-xyz", *common], "does not exist"),
        "unknown target": (["replay", "--topic", source, "--to-topic", "no-such-target", *base], "does not exist"),
        "bad partition": (["replay", "--topic", source, "--partition", "7", *common], "has partitions [0]"),
        "bad replay id": (["replay", "--topic", source, "--replay-id", "../x", *common], "bad replay id"),
        "production verdicts": (["replay", "--topic", source, "--model", "opennsfw", "--verdict-topic",
                                 "image-verdicts", *base], "production topic"),
    }
    for name, (args, expected) in cases.items():
        code, _, err = cli(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("vitguard: error: ") and expected in lines[0], (name, err)
    code, _, err = cli("replay", "--topic", source, "--bootstrap-servers", "127.0.0.1:1", "--connect-timeout", "1",
                       "--state-dir", str(tmp_path))
    assert code == 2 and "did not answer within 1s" in err and len(err.strip().splitlines()) == 1


class InterruptAfter:
    """Wraps a handler; the n-th record raises KeyboardInterrupt before it is handed on (a Ctrl-C)."""

    def __init__(self, inner: RepublishHandler, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0

    def handle(self, record):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.inner.handle(record)

    def flush(self) -> None:
        self.inner.flush()


def test_ctrl_c_mid_replay_checkpoints_exactly_what_was_delivered(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    source, target = new_topic(partitions=2, prefix="src"), new_topic(partitions=1, prefix="dst")
    events = produce_events(kafka_bootstrap, source, 2, 25)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    store = ReplayStateStore(tmp_path)
    request = ReplayRequest(topic=source, mode="republish", target_topic=target)
    state, _ = open_replay(kafka, request, "ctrlc", store)
    with UploadEventPublisher(kafka, target) as publisher, pytest.raises(KeyboardInterrupt):
        run_replay(kafka, state, store, InterruptAfter(RepublishHandler(publisher, "ctrlc"), 10),
                   checkpoint_every=4)
    saved = store.load("ctrlc")
    assert saved is not None and sum(p.next - p.start for p in saved.partitions.values()) == 9
    assert len(read_all(kafka_bootstrap, target, 1)) == 9

    state, resumed = open_replay(kafka, request, "ctrlc", store)
    assert resumed
    with UploadEventPublisher(kafka, target) as publisher:
        assert run_replay(kafka, state, store, RepublishHandler(publisher, "ctrlc")).complete
    delivered = [ImageEvent.model_validate_json(m.value).event_id for m in read_all(kafka_bootstrap, target, 1)]
    assert sorted(delivered) == sorted(replay_event_id("ctrlc", e.event_id) for e in events)
