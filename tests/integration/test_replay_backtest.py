"""``vitguard replay --model SPEC --verdict-topic T``: a back-test through the real pipeline processor
(open_nsfw weights bundled offline, real Redis, Milvus Lite), writing only to the back-test topic."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitguard.cli import main
from vitguard.kafka.reader import read_to_end
from vitguard.producers import UploadEventPublisher
from vitguard.schemas.events import ImageEvent, Verdict
from vitguard.settings import KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def read_values(bootstrap: str, topic: str, partitions: int = 1, timeout_s: float = 20.0) -> list[bytes | None]:
    """Every value of ``topic`` (all ``partitions`` of it), read to the end of each partition."""
    return [m.value for m in read_to_end(KafkaSettings(bootstrap_servers=bootstrap), topic, timeout_s)]


def test_backtest_replay_writes_verdicts_only_to_its_own_topic(
    kafka_bootstrap: str, redis_url: str, milvus_uri: str, redis_prefix: str, new_topic: Callable[..., str],
    sample_photos: list[Path], tmp_path: Path,
) -> None:
    source = new_topic(partitions=2, prefix="src")
    prod_verdicts, prod_alerts, prod_dlq = (new_topic(prefix=p) for p in ("verdicts", "alerts", "dlq"))
    backtest = new_topic(prefix="backtest")
    root = tmp_path / "images"
    root.mkdir()
    events = []
    for i, photo in enumerate(sample_photos[:3]):
        shutil.copy(photo, root / photo.name)
        events.append(ImageEvent(event_id=f"ev{i}", content_id=f"bt-{uuid.uuid4().hex[:8]}",
                                 image_ref=(root / photo.name).as_uri(), metadata={"n": str(i)}))
    with UploadEventPublisher(KafkaSettings(bootstrap_servers=kafka_bootstrap), source) as publisher:
        for event in events:
            publisher.publish(event)
        publisher.send_raw(b'{"content_id": "broken"}', key=b"broken")  # becomes a dead letter

    env = {
        "VITGUARD_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "VITGUARD_TOPIC_IMAGES": source,
        "VITGUARD_TOPIC_VERDICTS": prod_verdicts,
        "VITGUARD_TOPIC_ALERTS": prod_alerts,
        "VITGUARD_TOPIC_DEAD_LETTERS": prod_dlq,
        "VITGUARD_REDIS_URL": redis_url,
        "VITGUARD_REDIS_KEY_PREFIX": redis_prefix,
        "VITGUARD_MILVUS_URI": milvus_uri,
        "VITGUARD_FETCH_FILE_ROOT": str(root),
    }
    args = ["replay", "--model", "opennsfw", "--verdict-topic", backtest, "--replay-id", "bt1",
            "--state-dir", str(tmp_path / "state"), "--batch-size", "2", "--no-progress"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "complete" in result.stdout
    assert "verdicts: 3" in result.stdout and "dead_letters_not_published: 1" in result.stdout

    verdicts = [Verdict.model_validate_json(v) for v in read_values(kafka_bootstrap, backtest)]
    assert sorted(v.event_id for v in verdicts) == ["ev0", "ev1", "ev2"]  # joinable with production verdicts
    by_event = {e.event_id: e for e in events}
    for verdict in verdicts:
        assert verdict.replay_id == "bt1"
        assert verdict.model_name == "opennsfw" and verdict.model_version
        assert verdict.content_id == by_event[verdict.event_id].content_id
        assert verdict.metadata == by_event[verdict.event_id].metadata
        assert verdict.label == "safe"  # scikit-image photos score < 0.2 on open_nsfw
    for production in (prod_verdicts, prod_alerts, prod_dlq):
        assert read_values(kafka_bootstrap, production) == [], f"back-test wrote to production topic {production}"

    again = CliRunner().invoke(main, args, env=env)  # same replay id: nothing left, nothing re-sent
    assert again.exit_code == 0, again.output
    assert "resuming, 0 record(s) left" in again.stderr
    assert len(read_values(kafka_bootstrap, backtest)) == 3
