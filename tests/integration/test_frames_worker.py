"""Animations and video end to end through a real `vitguard worker` (broker, Redis, Milvus Lite): events
in, verdicts with ``media`` and dead letters with the new reason codes out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vitguard.demo.samples import SAMPLE_MAX_INLINE_BYTES, media_events, photo_bytes
from vitguard.schemas.events import ImageEvent
from vitguard.testing import services
from vitguard.testing.media import HIDDEN_THRESHOLD
from vitguard.testing.worker import OutputReader, WorkerProcess, publish_raw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]



def test_hidden_frames_found_and_bad_videos_dead_lettered(
    service_settings: Callable[..., Any], new_topic: Callable[..., str], tmp_path: Path,
    workers: list[WorkerProcess],
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    pictures = photo_bytes(2)
    events = media_events(root, pictures[1][1], pictures[0][1])
    (root / "still.png").write_bytes(pictures[1][1])
    settings = service_settings(
        topics={"images": new_topic(1, "img"), "verdicts": new_topic(1, "verdicts"),
                "alerts": new_topic(1, "alerts"), "dead_letters": new_topic(1, "dlq")},
        milvus={"uri": str(tmp_path / "milvus.db")},
        model={"spec": "opennsfw"},
        policy={"unsafe_threshold": HIDDEN_THRESHOLD},
        frames={"video_fps": 2, "per_batch": 2},
        fetch={"file_root": str(root), "max_inline_bytes": SAMPLE_MAX_INLINE_BYTES},
        batch={"max_size": 4, "max_wait_s": 0.2},
        web={"host": "127.0.0.1", "port": services.free_port()},
    )
    still_event = ImageEvent(event_id="still-1", content_id="still-1", image_ref=(root / "still.png").as_uri())
    publish_raw(settings.kafka, settings.topics.images,
                [(e.key, e.value) for e in events] + [(b"still-1", still_event.model_dump_json().encode())])
    worker = WorkerProcess(settings).start()
    workers.append(worker)
    t = settings.topics
    with OutputReader(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters) as out:
        outputs = out.poll_until(lambda o: o.answered() >= 5 or not worker.running, 150.0, 3.0)
    assert worker.terminate() == 0
    assert outputs.answered() == 5, worker.log_tail()
    verdicts = {v.content_id: v for v in outputs.verdicts}
    gif, mp4, plain = verdicts["clip-hidden-gif"], verdicts["clip-hidden-mp4"], verdicts["still-1"]
    assert gif.label == "unsafe" and gif.media is not None and gif.media.worst_frame.index == 4
    assert mp4.label == "unsafe" and mp4.media is not None and mp4.media.worst_frame.time_s == pytest.approx(2.0)
    assert mp4.media.unsafe_segments[0].start_s == pytest.approx(2.0)
    assert gif.embedding_id == gif.content_id and gif.collection  # one embedding per item in Milvus
    assert plain.media is None and plain.label == "safe"
    assert {d.content_id: d.reason for d in outputs.dead_letters} == {
        "clip-cut-mp4": "corrupt_video", "clip-alien-mkv": "unsupported_codec"}
