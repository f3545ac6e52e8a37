"""Dead letters re-driven by reason come back through the pipeline: a fetch failure is dead-lettered by the
real pipeline runner, the cause is fixed, ``vitguard replay --from-dead-letters --reason`` re-submits the
original bytes, and the processor now answers them with verdicts (real broker, Redis, Milvus Lite,
open_nsfw)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, TopicPartition

from vitguard.cli import main
from vitguard.consumers.sink import KafkaSink
from vitguard.pipeline import OutputTopics, RawMessage, build_runner
from vitguard.producers import UploadEventPublisher
from vitguard.schemas.events import DeadLetter, ImageEvent, Verdict

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def read_raw(bootstrap: str, topic: str, start: int = 0, timeout_s: float = 20.0) -> list[RawMessage]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, start)])
    out: list[RawMessage] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return out
                continue
            out.append(RawMessage(msg.value(), msg.key(), topic, msg.partition(), msg.offset()))
    finally:
        consumer.close()
    raise AssertionError(f"did not reach the end of {topic}")


async def test_redriven_dead_letters_get_verdicts_after_the_cause_is_fixed(
    kafka_bootstrap: str, service_settings: Callable[..., Any], new_topic: Callable[..., str],
    sample_photos: list[Path], tmp_path: Path,
) -> None:
    topics = {name: new_topic(prefix=name) for name in ("images", "verdicts", "alerts", "dlq")}
    root = tmp_path / "images"
    root.mkdir()
    present, late = root / "present.png", root / "late.png"
    shutil.copy(sample_photos[0], present)
    settings = service_settings(
        topics={"images": topics["images"], "verdicts": topics["verdicts"], "alerts": topics["alerts"],
                "dead_letters": topics["dlq"]},
        fetch={"file_root": root},
        model={"spec": "opennsfw"},
    )
    events = {
        "ok": ImageEvent(content_id="rd-ok", image_ref=present.as_uri()),
        "late": ImageEvent(content_id="rd-late", image_ref=late.as_uri()),  # not there yet: fetch_not_found
        "b64": ImageEvent(content_id="rd-b64", image_ref="data:image/png;base64,@@@@"),  # invalid_base64
    }
    with UploadEventPublisher(settings.kafka, topics["images"]) as publisher:
        for event in events.values():
            publisher.publish(event)

    sink = KafkaSink(settings.kafka, OutputTopics(topics["verdicts"], topics["alerts"], topics["dlq"]))
    processor = build_runner(settings, sink, topics=OutputTopics(topics["verdicts"], topics["alerts"], topics["dlq"]))
    try:
        first = await processor.process(read_raw(kafka_bootstrap, topics["images"]))
        assert [v.content_id for v in first.verdicts] == ["rd-ok"]
        assert sorted(d.reason for d in first.dead_letters) == ["fetch_not_found", "invalid_base64"]

        shutil.copy(sample_photos[1], late)  # the outage is over
        env = {"VITGUARD_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "VITGUARD_TOPIC_IMAGES": topics["images"],
               "VITGUARD_TOPIC_DEAD_LETTERS": topics["dlq"]}
        result = CliRunner().invoke(
            main, ["replay", "--from-dead-letters", "--reason", "fetch_not_found", "--state-dir",
                   str(tmp_path / "state"), "--no-progress"], env=env,
        )
        assert result.exit_code == 0, result.output
        assert "filtered:invalid_base64: 1" in result.stdout

        redriven = read_raw(kafka_bootstrap, topics["images"], start=len(events))
        assert [r.value for r in redriven] == [events["late"].model_dump_json().encode()]  # original bytes
        second = await processor.process(redriven)
    finally:
        await processor.close()  # and its sink
    letters = [DeadLetter.model_validate_json(r.value) for r in read_raw(kafka_bootstrap, topics["dlq"])]
    assert sorted(d.content_id or "" for d in letters) == ["rd-b64", "rd-late"]
    assert [(v.content_id, v.event_id) for v in second.verdicts] == [("rd-late", events["late"].event_id)]
    assert second.dead_letters == [] and second.skipped == []
    verdicts = [Verdict.model_validate_json(r.value) for r in read_raw(kafka_bootstrap, topics["verdicts"])]
    assert sorted(v.content_id for v in verdicts) == ["rd-late", "rd-ok"]
