"""Subscribers and ``vitguard tail`` against the real broker: typed models out, bad messages surfaced."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from vitguard.cli import main
from vitguard.kafka.admin import TopicNotFoundError
from vitguard.schemas.events import DeadLetter, Verdict
from vitguard.settings import KafkaSettings
from vitguard.subscribers import DeadLetterSubscriber, InvalidMessageError, VerdictSubscriber

pytestmark = pytest.mark.integration


def make_verdict(i: int, label: str, score: float) -> Verdict:
    return Verdict(
        event_id=f"e{i}", content_id=f"c{i}", label=label, unsafe_score=score,
        top_class="NSFW" if score > 0.5 else "SFW",
        scores={"NSFW": score, "SFW": 1 - score}, model_name="opennsfw", model_version="test",
    )


def produce(bootstrap: str, topic: str, values: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in values:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0


@pytest.fixture
def verdict_topic(kafka_bootstrap: str, new_topic: Callable[..., str]) -> tuple[str, list[Verdict]]:
    topic = new_topic(partitions=2, prefix="verdicts")
    verdicts = [make_verdict(0, "safe", 0.1), make_verdict(1, "unsafe", 0.95), make_verdict(2, "unsafe", 0.6)]
    values = [(v.content_id, v.model_dump_json().encode()) for v in verdicts]
    values.insert(1, ("bad", json.dumps({"event_id": "x", "label": "maybe"}).encode()))
    produce(kafka_bootstrap, topic, values)
    return topic, verdicts


def test_verdict_subscriber_yields_typed_verdicts_and_raises_on_bad_ones(
    kafka_bootstrap: str, verdict_topic: tuple[str, list[Verdict]]
) -> None:
    topic, verdicts = verdict_topic
    got: list[Verdict] = []
    errors: list[InvalidMessageError] = []
    with VerdictSubscriber(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, from_beginning=True) as sub:
        while len(got) + len(errors) < 4:
            try:
                for v in sub:
                    got.append(v)
                    if len(got) + len(errors) == 4:
                        break
            except InvalidMessageError as exc:  # surfaced, and iteration can go on
                errors.append(exc)
    assert all(isinstance(v, Verdict) for v in got)
    assert sorted(got, key=lambda v: v.content_id) == verdicts
    assert len(errors) == 1
    assert errors[0].reason == "schema_violation" and errors[0].topic == topic
    assert errors[0].raw is not None and b"maybe" in errors[0].raw


def test_messages_envelopes_and_idle_timeout(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(prefix="dlq")
    letter = DeadLetter.for_payload(b"\xff\x00raw", reason="not_an_image", message="x", source_topic="in",
                                    source_partition=0, source_offset=3)
    produce(kafka_bootstrap, topic, [("k", letter.model_dump_json().encode()), ("k", b"{not json")])
    sub = DeadLetterSubscriber(KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, from_beginning=True)
    received = list(sub.messages(idle_timeout_s=2.0))
    sub.close()
    assert [r.offset for r in received] == [0, 1]
    assert received[0].value == letter and received[0].value.original_bytes() == b"\xff\x00raw"
    assert received[1].value is None and received[1].error is not None
    assert received[1].error.reason == "invalid_json"


def test_unknown_topic_is_refused(kafka_bootstrap: str) -> None:
    with pytest.raises(TopicNotFoundError):
        VerdictSubscriber(KafkaSettings(bootstrap_servers=kafka_bootstrap), "no-such-topic-here")


def test_tail_cli_filters_and_formats(kafka_bootstrap: str, verdict_topic: tuple[str, list[Verdict]]) -> None:
    topic, verdicts = verdict_topic
    base = ["tail", "verdicts", "--topic", topic, "--from-beginning", "--bootstrap-servers", kafka_bootstrap]
    runner = CliRunner()

    as_json = runner.invoke(main, [*base, "--json", "--label", "unsafe", "--min-score", "0.9", "--timeout", "2"])
    assert as_json.exit_code == 0, as_json.output
    lines = as_json.stdout.splitlines()
    assert [Verdict.model_validate_json(line) for line in lines] == [verdicts[1]]
    assert "invalid message" in as_json.stderr and "schema_violation" in as_json.stderr

    table = runner.invoke(main, [*base, "--max", "2"])
    assert table.exit_code == 0, table.output
    rows = table.stdout.splitlines()
    assert rows[0].split()[:3] == ["time", "label", "score"]
    assert len(rows) == 3  # header + --max 2

    unknown = runner.invoke(main, ["tail", "alerts", "--topic", "nope-nope", "--bootstrap-servers", kafka_bootstrap])
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().count("\n") == 0 and "does not exist" in unknown.stderr


def test_without_from_beginning_only_new_messages_arrive(
    kafka_bootstrap: str, verdict_topic: tuple[str, list[Verdict]]
) -> None:
    topic, _ = verdict_topic
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    with VerdictSubscriber(kafka, topic) as sub:
        fresh = make_verdict(7, "unsafe", 0.8)
        produce(kafka_bootstrap, topic, [(fresh.content_id, fresh.model_dump_json().encode())])
        got = [r.value for r in sub.messages(idle_timeout_s=3.0)]
    assert got == [fresh]


def test_group_mode_commits_what_was_handed_out(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(prefix="verdicts")
    verdicts = [make_verdict(i, "safe", 0.1) for i in range(5)]
    produce(kafka_bootstrap, topic, [(v.content_id, v.model_dump_json().encode()) for v in verdicts])
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    # librdkafka sends max.poll.interval.ms as the rebalance timeout; the local broker waits it out on join
    fast_join = {"max.poll.interval.ms": 6000, "session.timeout.ms": 6000}
    group = f"downstream-{uuid.uuid4().hex[:6]}"
    first = VerdictSubscriber(kafka, topic, group_id=group, from_beginning=True, consumer_overrides=fast_join)
    taken = []
    for verdict in first:
        taken.append(verdict)
        if len(taken) == 3:
            break
    first.close()  # the 3rd was handed out and the caller moved on: all 3 are committed
    second = VerdictSubscriber(kafka, topic, group_id=group, from_beginning=True, consumer_overrides=fast_join)
    rest = [r.value for r in second.messages(idle_timeout_s=8.0)]
    second.close()
    assert taken + rest == verdicts
