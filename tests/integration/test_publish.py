"""``UploadEventPublisher`` and ``vitguard publish`` against the real broker."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitguard.cli import main
from vitguard.kafka.reader import read_to_end
from vitguard.producers import PublishError, UploadEventPublisher
from vitguard.schemas.events import ImageEvent
from vitguard.settings import KafkaSettings
from vitguard.testing.services import free_port

pytestmark = pytest.mark.integration


def read_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 20.0) -> list[tuple[int, bytes, bytes]]:
    """Every record of ``topic`` as (partition, key, value), read to the end of each partition."""
    records = read_to_end(KafkaSettings(bootstrap_servers=bootstrap), topic, timeout_s)
    assert {r.partition for r in records} <= set(range(partitions))
    return [(r.partition, r.key or b"", r.value or b"") for r in records]


@pytest.fixture
def photo_dir(tmp_path: Path, sample_photos: list[Path]) -> Path:
    d = tmp_path / "upload"
    d.mkdir()
    for p in sample_photos:
        shutil.copy(p, d / p.name)
    return d


def test_publish_directory_cli_delivers_every_image_keyed_by_content_id(
    kafka_bootstrap: str, new_topic: Callable[..., str], photo_dir: Path
) -> None:
    topic = new_topic(partitions=3)
    result = CliRunner().invoke(
        main,
        ["publish", "--dir", str(photo_dir), "--topic", topic, "--bootstrap-servers", kafka_bootstrap,
         "--tenant", "acme", "--no-progress"],
        env={"VITGUARD_FETCH_FILE_ROOT": str(photo_dir.parent)},
    )
    files = sorted(photo_dir.iterdir())
    assert result.exit_code == 0, result.output
    assert f"sent {len(files)}, failed 0" in result.stdout

    records = read_topic(kafka_bootstrap, topic, 3)
    assert len(records) == len(files)
    by_key = {key.decode(): ImageEvent.model_validate_json(value) for _, key, value in records}
    expected = {"sha256-" + hashlib.sha256(f.read_bytes()).hexdigest()[:32]: f for f in files}
    assert set(by_key) == set(expected)
    for content_id, event in by_key.items():
        assert event.content_id == content_id
        assert event.image_ref == expected[content_id].resolve().as_uri()
        assert event.tenant == "acme"
    # key-based partitioning: the same key always lands on the same partition
    partition_of = {key: p for p, key, _ in records}
    assert len(partition_of) == len(files)


def test_publisher_library_inline_and_delivery_results(
    kafka_bootstrap: str, new_topic: Callable[..., str], sample_photos: list[Path]
) -> None:
    import base64
    import io

    from PIL import Image

    topic = new_topic(partitions=2)
    with Image.open(sample_photos[0]) as img:
        img.thumbnail((64, 64))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG")
    inline_ref = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    event = ImageEvent(content_id="inline-1", image_ref=inline_ref)
    huge = ImageEvent(content_id="huge-1", image_ref="data:image/png;base64," + "A" * 1_500_000)
    results = []
    with pytest.raises(PublishError, match="MSG_SIZE_TOO_LARGE"), UploadEventPublisher(
        KafkaSettings(bootstrap_servers=kafka_bootstrap), topic, on_delivery=results.append
    ) as publisher:
        publisher.publish(event)
        publisher.publish(huge)  # refused by the client: reported, not raised here
        publisher.publish({"content_id": "url-1", "image_ref": "https://cdn.example.com/1.jpg"})
        publisher.flush()
    assert sorted((r.key, r.ok) for r in results) == [("huge-1", False), ("inline-1", True), ("url-1", True)]
    assert publisher.delivered == 2
    assert publisher.failure_counts() == {"MSG_SIZE_TOO_LARGE": 1}
    records = read_topic(kafka_bootstrap, topic, 2)
    got = {key.decode(): ImageEvent.model_validate_json(value) for _, key, value in records}
    assert set(got) == {"inline-1", "url-1"}
    assert got["inline-1"] == event
    assert got["url-1"].image_ref == "https://cdn.example.com/1.jpg"
    assert {r.partition for r in results if r.ok} == {p for p, _, _ in records}


def test_publish_jsonl_counts_bad_lines_and_exits_1(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = new_topic()
    lines = [ImageEvent(content_id=f"c{i}", image_ref=f"https://x/{i}.png").model_dump_json() for i in range(3)]
    lines.insert(1, json.dumps({"content_id": "c9", "image_ref": "nope"}))
    lines.append("{oops")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        main,
        ["publish", "--jsonl", str(path), "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--rate", "50"],
    )
    assert result.exit_code == 1, result.output
    assert "sent 3, failed 2 (invalid_json: 1, schema_violation: 1)" in result.stdout
    assert f"failed {path}:2: schema_violation" in result.stderr
    assert sorted(k.decode() for _, k, _ in read_topic(kafka_bootstrap, topic, 1)) == ["c0", "c1", "c2"]


def _one_line_error(result_stderr: str) -> str:
    lines = [line for line in result_stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result_stderr
    assert lines[0].startswith("vitguard: error: ")
    return lines[0]


def test_cli_errors_are_one_line_and_non_zero(kafka_bootstrap: str, tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(main, ["publish", "https://x/1.png", "--topic", f"missing-{uuid.uuid4().hex[:6]}",
                                   "--bootstrap-servers", kafka_bootstrap])
    assert unknown.exit_code == 2
    assert "does not exist" in _one_line_error(unknown.stderr)

    missing = runner.invoke(main, ["publish", "--jsonl", str(tmp_path / "nope.jsonl"),
                                   "--bootstrap-servers", kafka_bootstrap])
    assert missing.exit_code == 2
    assert "cannot read" in _one_line_error(missing.stderr)


def test_unreachable_broker_is_one_line_within_the_timeout(tmp_path: Path) -> None:
    """Run as a real process: librdkafka's own log lines must not leak onto stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "vitguard", "publish", "https://x/1.png",
         "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--connect-timeout", "1.5"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "did not answer within 1.5s" in line
