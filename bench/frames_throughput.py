"""Multi-frame throughput next to still-image throughput, one run, JSON on stdout.

The pipeline's Runner (the worker's stages, in-memory stores and a list sink, so only fetch, expand/decode,
inference and reduce are measured) moderates, in this order:

1. **stills**: distinct JPEG uploads cut from real photos -> images/s;
2. **video**: MP4 (H.264) clips made from real photos (``--video-s`` seconds at 24 fps, 320x240) ->
   video seconds moderated per second, frames decoded per second and frames classified per second;
3. **mixed**: the same stills submitted behind the videos, so fair batching (VITGUARD_FRAMES_PER_BATCH)
   is visible: the stills' latency (p50/p95) while videos are in flight, against the stills-alone run;
4. **coverage**: whether a 0.3 s insert in a 6 s clip is classified at the defaults with scene cuts and with the
   rate alone, and the decoder's frames/s both ways (the cost of the cut test).

Run: ``.venv/bin/python bench/frames_throughput.py [--stills 64] [--videos 4] [--video-s 10] [--spec opennsfw]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from vitguard.fetch import ImageFetcher
from vitguard.model import load_classifier
from vitguard.pipeline import ListSink, RawMessage, Runner
from vitguard.schemas.events import ImageEvent
from vitguard.settings import load_settings
from vitguard.stores import InMemoryDedupStore, InMemoryEmbeddingIndex, InMemoryWaveCounter
from vitguard.testing.media import photo_frames, video_bytes


def _photos() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    return [data / n for n in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")]


def _stills(root: Path, count: int) -> list[Path]:
    photos = [Image.open(p).convert("RGB") for p in _photos()]
    out = []
    for i in range(count):
        img = photos[i % len(photos)]
        w, h = img.size
        cut = img.crop((i % 17, i % 13, w - i % 11, h - i % 7)).resize((480, 360))
        path = root / f"still-{i}.jpg"
        buf = io.BytesIO()
        cut.save(buf, "JPEG", quality=88)
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def _videos(root: Path, count: int, seconds: int) -> list[Path]:
    photos = _photos()
    out = []
    for i in range(count):
        frames = photo_frames(photos[i % len(photos)], seconds * 4, hidden=photos[(i + 1) % len(photos)],
                              size=(320, 240))
        path = root / f"clip-{i}.mp4"
        path.write_bytes(video_bytes(frames, fps=24, repeat=6))  # 4 distinct pictures a second
        out.append(path)
    return out


def _messages(paths: list[Path], start: int) -> list[RawMessage]:
    return [RawMessage(ImageEvent(event_id=f"e{start + i}", content_id=f"c{start + i}", image_ref=p.as_uri())
                       .model_dump_json().encode(), None, "bench", 0, start + i) for i, p in enumerate(paths)]


def _runner(classifier: Any, root: Path, sink: ListSink | None = None) -> Runner:
    settings = load_settings(fetch={"file_root": str(root), "max_bytes": 100 * 1024 * 1024})
    return Runner(
        classifier=classifier, fetcher=ImageFetcher(settings.fetch), index=InMemoryEmbeddingIndex(),
        dedup=InMemoryDedupStore(), waves=InMemoryWaveCounter(settings.policy), sink=sink or ListSink(),
        policy=settings.policy, batch=settings.batch, milvus=settings.milvus, frames=settings.frames,
        max_in_flight=256,
    )


async def _timed(runner: Runner, raws: list[RawMessage]) -> tuple[float, dict[int, float]]:
    """Submit all, wait for all; (wall seconds, offset -> seconds to its answer)."""
    started = time.perf_counter()
    done: dict[int, float] = {}

    async def one(fut: asyncio.Future[Any], offset: int) -> None:
        await fut
        done[offset] = time.perf_counter() - started

    futures = [(await runner.submit(r), r.offset) for r in raws]
    await asyncio.gather(*(one(f, o) for f, o in futures))
    return time.perf_counter() - started, done


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    classifier = load_classifier(args.spec)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stills, videos = _stills(root, args.stills), _videos(root, args.videos, args.video_s)
        runner = _runner(classifier, root)
        await runner.process(_messages(stills[:4], 10_000))  # warm-up: model, pools
        wall_s, still_done = await _timed(runner, _messages(stills, 0))
        await runner.close()

        sink = ListSink()
        runner = _runner(classifier, root, sink)
        video_wall, _ = await _timed(runner, _messages(videos, 1000))
        await runner.close()
        frames_classified = sum(v.media.frames_classified for v in sink.verdicts if v.media is not None)
        frames_decoded = args.videos * args.video_s * 24

        runner = _runner(classifier, root)
        _, mixed_done = await _timed(runner, _messages(videos, 2000) + _messages(stills, 3000))
        await runner.close()
    mixed_stills = [t for o, t in mixed_done.items() if o >= 3000]
    return {
        "benchmark": "frames_throughput",
        "model": classifier.info.name,
        "backend": classifier.info.backend,
        "cpus": os.cpu_count(),
        "batch_max_size": runner.batch.max_size,
        "frames_per_item_per_batch": runner.frames.per_batch,
        "video_fps_sampled": runner.frames.video_fps,
        "stills": {"images": args.stills, "images_per_s": round(args.stills / wall_s, 1)},
        "video": {
            "videos": args.videos, "seconds_each": args.video_s, "source": "320x240 H.264 24 fps",
            "video_seconds_per_s": round(args.videos * args.video_s / video_wall, 2),
            "frames_decoded_per_s": round(frames_decoded / video_wall, 1),
            "frames_classified_per_s": round(frames_classified / video_wall, 1),
        },
        "mixed": {
            "stills_behind_videos_p50_ms": _pct(mixed_stills, 0.5),
            "stills_behind_videos_p95_ms": _pct(mixed_stills, 0.95),
            "stills_alone_p50_ms": _pct(list(still_done.values()), 0.5),
            "stills_alone_p95_ms": _pct(list(still_done.values()), 0.95),
        },
    }


def coverage() -> dict[str, Any]:
    """What scene-cut sampling buys and costs, on the decoder alone (no model): whether a 0.3 s insert in a
    6 s clip gets a classified frame at the default 1 frame/s, with and without the cut test, and the frames
    decoded per second of a 30 s 320x240 clip both ways (best of 3)."""
    import numpy as np

    import vitguard.media.video as video
    from vitguard.media import FrameLimits, expand_frames

    photos = _photos()
    base = Image.open(photos[0]).convert("RGB").resize((320, 240))
    other = Image.open(photos[1]).convert("RGB").resize((320, 240))
    insert = video_bytes([base] * 32 + [other] * 3 + [base] * 25, fps=10)  # the insert from 3.2 to 3.5 s
    long_clip = video_bytes(photo_frames(photos[2], 30, hidden=photos[3]), fps=24, repeat=24)  # 30 s, 720 frames

    def prepare(_image: Any) -> Any:
        return np.zeros((3, 8, 8), dtype=np.float32)

    def measure() -> tuple[bool, float]:
        got = expand_frames(insert, FrameLimits(), prepare)
        caught = got is not None and any(3.2 <= f.time_s < 3.5 for f in got.frames)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            expand_frames(long_clip, FrameLimits(), prepare)
            best = min(best, time.perf_counter() - started)
        return caught, 720 / best

    with_cuts = measure()
    thumbnail, video._thumbnail = video._thumbnail, lambda frame: np.zeros((16, 16), dtype=np.float32)
    try:
        without = measure()
    finally:
        video._thumbnail = thumbnail
    return {
        "insert_0_3_s_in_6_s_caught": {"scene_cuts": with_cuts[0], "rate_only": without[0]},
        "frames_decoded_per_s_320x240": {"scene_cuts": round(with_cuts[1], 1), "rate_only": round(without[1], 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stills", type=int, default=64)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--video-s", type=int, default=10)
    parser.add_argument("--spec", default="opennsfw")
    report = asyncio.run(run(parser.parse_args()))
    report["coverage"] = coverage()
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
