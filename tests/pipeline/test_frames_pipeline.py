"""Animations and video through the stages: expand, fair batching, infer, reduce, the verdict's ``media``.

Real media made from real photos (scikit-image), the real open_nsfw model, and a test policy
(``HIDDEN_THRESHOLD``) under which only the photo cut into the middle of each clip counts as unsafe.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vitguard.fetch import ImageFetcher
from vitguard.media import FrameLimits, FrameRef, FrameSet
from vitguard.model.types import Prediction
from vitguard.pipeline import ListSink, RawMessage, Runner
from vitguard.pipeline.results import Decoded, DecodedFrames, Parsed, StageTimes
from vitguard.pipeline.runtime.batcher import ReadyQueue, Work
from vitguard.pipeline.stages.reduce import reduce_frames
from vitguard.policies.compiled import builtin_book
from vitguard.schemas.events import ImageEvent, Verdict
from vitguard.settings import load_settings
from vitguard.stores import InMemoryDedupStore, InMemoryEmbeddingIndex, InMemoryWaveCounter
from vitguard.testing.media import (
    HIDDEN_BASE,
    HIDDEN_PHOTO,
    HIDDEN_THRESHOLD,
    animated_image,
    negative_time_video,
    photo_frames,
    truncated,
    unknown_codec_video,
    video_bytes,
    zero_frame_video,
)

TEST_POLICY = {"unsafe_threshold": HIDDEN_THRESHOLD}


class CountingClassifier:
    """The real classifier, recording the size of every forward pass."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.info = inner.info
        self.predict_calls: list[int] = []

    def prepare(self, data: bytes) -> Any:
        return self.inner.prepare(data)

    def prepare_image(self, image: Image.Image) -> Any:
        return self.inner.prepare_image(image)

    def predict(self, batch: Any) -> Any:
        self.predict_calls.append(len(batch))
        return self.inner.predict(batch)


@pytest.fixture(scope="module")
def clip(sample_photos: list[Path]) -> list[Image.Image]:
    by_name = {p.name: p for p in sample_photos}
    return photo_frames(by_name[HIDDEN_BASE], 9, hidden=by_name[HIDDEN_PHOTO])  # the hidden frame is index 4


@pytest.fixture(scope="module")
def media_files(clip: list[Image.Image]) -> dict[str, bytes]:
    """The media, encoded once for the module (encoding the videos took ~2 s a test)."""
    return {
        "clip.gif": animated_image(clip, "GIF"),
        "clip.webp": animated_image(clip, "WEBP"),
        "clip.png": animated_image(clip, "PNG"),
        "clip.mp4": video_bytes(clip, fps=10, repeat=5),
        "clip.webm": video_bytes(clip, fps=10, container="webm", codec="libvpx-vp9", repeat=5),
        "cut.mp4": truncated(video_bytes(clip, repeat=5)),
        "alien.mkv": unknown_codec_video(clip),
        "empty.webm": zero_frame_video(),
        "long.gif": animated_image(clip * 8),  # 72 frames: over the test's max_source_frames
        "early.mkv": negative_time_video(clip, 4.0, fps=10, repeat=4),  # 3.6 s, every frame stamped below zero
    }


@pytest.fixture
def media_root(image_root: Path, media_files: dict[str, bytes]) -> Path:
    for name, data in media_files.items():
        (image_root / name).write_bytes(data)
    return image_root


def make_runner(classifier: Any, root: Path, **frames: Any) -> tuple[Runner, ListSink, InMemoryEmbeddingIndex]:
    settings = load_settings(fetch={"file_root": str(root)}, policy=TEST_POLICY,
                             frames={"video_fps": 2, "max_source_frames": 60, **frames})
    sink, index = ListSink(), InMemoryEmbeddingIndex()
    runner = Runner(
        classifier=classifier, fetcher=ImageFetcher(settings.fetch), index=index, dedup=InMemoryDedupStore(),
        waves=InMemoryWaveCounter(settings.policy), sink=sink, policy=settings.policy, batch=settings.batch,
        milvus=settings.milvus, frames=settings.frames,
    )
    return runner, sink, index


def messages(root: Path, names: list[str]) -> list[RawMessage]:
    return [
        RawMessage(ImageEvent(event_id=f"e{i}", content_id=f"c{i}", image_ref=(root / n).as_uri())
                   .model_dump_json().encode(), f"c{i}".encode(), "in", 0, i)
        for i, n in enumerate(names)
    ]


async def test_the_hidden_frame_is_found_in_every_format(opennsfw: Any, media_root: Path) -> None:
    counting = CountingClassifier(opennsfw)
    runner, sink, index = make_runner(counting, media_root)
    names = ["clip.gif", "clip.webp", "clip.png", "clip.mp4", "clip.webm", HIDDEN_BASE, "rocket.jpg"]
    outcome = await runner.process(messages(media_root, names))
    await runner.close()
    by_id = {v.content_id: v for v in outcome.verdicts}
    assert len(by_id) == len(names) and not outcome.dead_letters
    for i in range(3):  # animations: all 9 frames, the worst is the hidden one
        v = by_id[f"c{i}"]
        assert v.label == "unsafe" and v.media is not None and v.media.kind == "animation"
        assert v.media.frames_classified == 9 and v.media.sampling == "all"
        assert v.media.worst_frame.index == 4 and v.media.worst_frame.time_s == pytest.approx(0.4)
        assert v.unsafe_score == v.media.worst_frame.unsafe_score == v.media.worst_frames[0].unsafe_score
        assert [s.frames for s in v.media.unsafe_segments] == [1]
        assert v.media.unsafe_segments[0].start_s == pytest.approx(0.4)
    for i in (3, 4):  # videos: 4.5 s at 2 fps; the photo is on screen from 2.0 to 2.5 s
        v = by_id[f"c{i}"]
        assert v.label == "unsafe" and v.media is not None and v.media.kind == "video"
        assert v.media.frames_classified == 10 and v.media.duration_s == pytest.approx(4.5)
        assert v.media.worst_frame.time_s == pytest.approx(2.0) and v.media.worst_frame.index == 20
        seg = v.media.unsafe_segments[0]
        assert seg.start_s == pytest.approx(2.0) and seg.end_s == pytest.approx(2.5)
    for i in (5, 6):  # still images: no media, safe under the same policy
        assert by_id[f"c{i}"].media is None and by_id[f"c{i}"].label == "safe"
        assert "media" not in by_id[f"c{i}"].model_dump_json()
    # every frame and every still image shared the same micro-batches (max_size 16)
    assert sum(counting.predict_calls) == 3 * 9 + 2 * 10 + 2 and max(counting.predict_calls) == 16
    # one embedding per item, the worst frame's
    stored = index.records(runner.collection)
    assert set(stored) == set(by_id)
    gif_worst = opennsfw.predict(np.stack([opennsfw.prepare_image(Image.open(media_root / "clip.gif"))]))
    assert stored["c0"].embedding.shape == gif_worst[0].embedding.shape


async def test_bad_media_dead_letters_with_their_reason(opennsfw: Any, media_root: Path) -> None:
    runner, _, _ = make_runner(opennsfw, media_root)
    names = ["cut.mp4", "alien.mkv", "empty.webm", "long.gif", "clip.mp4"]
    outcome = await runner.process(messages(media_root, names))
    await runner.close()
    reasons = {d.content_id: d.reason for d in outcome.dead_letters}
    assert reasons == {"c0": "corrupt_video", "c1": "unsupported_codec", "c2": "no_frames", "c3": "too_many_frames"}
    assert [v.content_id for v in outcome.verdicts] == ["c4"]


async def test_a_video_stamped_before_zero_gets_its_verdict(opennsfw: Any, media_root: Path) -> None:
    """Once, such a video's frame times reached the verdict's schema (times >= 0) and the failure stopped the
    batch loop: the worker exited, and the uncommitted event crashed every restart (a partition stalled)."""
    runner, _, _ = make_runner(opennsfw, media_root, video_fps=5)
    outcome = await runner.process(messages(media_root, ["early.mkv", "rocket.jpg"]))
    verdict = await runner.classify(data=(media_root / "early.mkv").read_bytes())
    await runner.close()
    assert not outcome.dead_letters and [v.content_id for v in outcome.verdicts] == ["c0", "c1"]
    media = outcome.verdicts[0].media  # times from its first frame: the photo on screen from 1.6 s
    assert outcome.verdicts[0].label == "unsafe" and media is not None and media.frames_classified == 19  # and the last
    assert media.worst_frame.time_s == pytest.approx(1.6) and media.duration_s == pytest.approx(3.6)
    assert verdict.media == media


async def test_a_failing_reduce_dead_letters_only_its_item(opennsfw: Any, media_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: an item the reduce stage fails on (a bug, an input nobody foresaw) is a dead letter;
    the pass's other items get their verdicts and the runner goes on."""
    import vitguard.pipeline.stages.infer as infer

    real = infer.reduce_frames

    def reduce_or_fail(frames: FrameSet, *args: Any, **kwargs: Any) -> Any:
        if frames.kind == "animation":
            raise ValueError("a bug in the reduce stage")
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(infer, "reduce_frames", reduce_or_fail)
    runner, _, _ = make_runner(opennsfw, media_root)
    outcome = await runner.process(messages(media_root, ["clip.gif", "clip.mp4", "rocket.jpg"]))
    later = await runner.process([RawMessage(
        ImageEvent(event_id="e9", content_id="c9", image_ref=(media_root / "rocket.jpg").as_uri())
        .model_dump_json().encode(), b"c9", "in", 0, 9)])
    await runner.close()
    assert [(d.content_id, d.reason) for d in outcome.dead_letters] == [("c0", "internal_error")]
    assert "reducing its frames failed: ValueError: a bug in the reduce stage" in outcome.dead_letters[0].message
    assert sorted(v.content_id for v in outcome.verdicts) == ["c1", "c2"]
    assert [v.content_id for v in later.verdicts] == ["c9"]


async def test_video_over_the_duration_limit(opennsfw: Any, media_root: Path) -> None:
    runner, _, _ = make_runner(opennsfw, media_root, max_duration_s=3.0)
    outcome = await runner.process(messages(media_root, ["clip.webm"]))
    await runner.close()
    assert [d.reason for d in outcome.dead_letters] == ["video_too_long"]


async def test_classify_request_of_an_animation(opennsfw: Any, media_root: Path) -> None:
    runner, _, _ = make_runner(opennsfw, media_root)
    verdict = await runner.classify(data=(media_root / "clip.gif").read_bytes())
    await runner.close()
    assert isinstance(verdict, Verdict) and verdict.label == "unsafe"
    assert verdict.media is not None and verdict.media.worst_frame.index == 4


async def test_repeated_animation_is_answered_from_the_cache_with_its_frames(opennsfw: Any, media_root: Path) -> None:
    runner, _, _ = make_runner(opennsfw, media_root)
    first = await runner.process(messages(media_root, ["clip.gif"]))
    again = await runner.process([RawMessage(
        ImageEvent(event_id="e9", content_id="c9", image_ref=(media_root / "clip.gif").as_uri())
        .model_dump_json().encode(), b"c9", "in", 0, 9)])
    await runner.close()
    assert again.verdicts[0].from_cache and again.verdicts[0].media == first.verdicts[0].media


async def test_each_policy_samples_frames_its_own_way_and_the_cache_keeps_them_apart(opennsfw: Any,
                                                                                     media_root: Path) -> None:
    """Issue 32: a policy's frame sampling decides how many frames of its items are classified (animations and
    video alike); a verdict cached for one sampling is not the answer for an event whose policy samples otherwise."""
    runner, _, _ = make_runner(opennsfw, media_root)
    assert runner.policies.offer("""
version: f1
default_policy: fleet
policies:
  fleet: {rules: {sexual: [{threshold: 0.5, action: block}]}}
  sparse: {rules: {sexual: [{threshold: 0.5, action: block}]}, frames: {max_frames: 3, video_fps: 0.5}}
tenants: {cheap: sparse}
""", source="test")

    def event(n: int, name: str, tenant: str) -> RawMessage:
        return RawMessage(ImageEvent(event_id=f"e{n}", content_id=f"c{n}", tenant=tenant,
                                     image_ref=(media_root / name).as_uri()).model_dump_json().encode(),
                          f"c{n}".encode(), "in", 0, n)

    sparse = (await runner.process([event(0, "clip.gif", "cheap"), event(1, "clip.mp4", "cheap")])).verdicts
    again = (await runner.process([event(2, "clip.gif", "cheap")])).verdicts
    fleet = (await runner.process([event(3, "clip.gif", "acme"), event(4, "clip.mp4", "acme")])).verdicts
    await runner.close()
    by_id = {v.content_id: v for v in [*sparse, *again, *fleet]}
    media = {c: v.media for c, v in by_id.items()}
    assert all(m is not None for m in media.values())
    assert media["c0"].frames_classified == 3 and media["c3"].frames_classified == 9  # type: ignore[union-attr]
    assert media["c1"].sample_rate_fps < media["c4"].sample_rate_fps  # type: ignore[union-attr]
    assert by_id["c2"].from_cache and media["c2"] == media["c0"]  # same policy: answered from the cache
    assert not by_id["c3"].from_cache and not by_id["c4"].from_cache  # another sampling: decoded again


# ---------------------------------------------------------------- fair batching, on its own


def _frames_work(i: int, n: int) -> Work:
    raw = RawMessage(b"{}", None, "in", 0, i)
    event = ImageEvent(event_id=f"v{i}", content_id=f"v{i}", image_ref="https://example.test/v.mp4")
    frames = FrameSet("video", np.zeros((n, 3, 4, 4), np.float32), tuple(FrameRef(k, k / 10) for k in range(n)),
                      "rate", n, n / 10)
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return Work(DecodedFrames(Parsed(raw, event), "0" * 64, frames, StageTimes()), fut)


def _still(i: int) -> Work:
    raw = RawMessage(b"{}", None, "in", 0, i)
    event = ImageEvent(event_id=f"e{i}", content_id=f"c{i}", image_ref="https://example.test/x.jpg")
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return Work(Decoded(Parsed(raw, event), "0" * 64, np.zeros((3, 4, 4), np.float32), StageTimes()), fut)


def _sizes(taken: list[Work]) -> list[tuple[str, int]]:
    out = []
    for w in taken:
        p = w.progress
        out.append((w.value.parsed.event.event_id, 1 if p is None else p.stop - p.start))  # type: ignore[union-attr]
    return out


async def test_a_long_video_does_not_hog_the_batches_stills_wait_for() -> None:
    """Rule: at most ``per_item`` frames of one item per turn; turns repeat while the batch has room; an
    item with frames left goes to the end of the queue."""
    q = ReadyQueue(8, 0.0, lambda: 0, per_item=2)
    q.put(_frames_work(0, 100))
    for i in range(1, 7):
        q.put(_still(i))
    first = q.take()
    assert _sizes(first) == [("v0", 2)] + [(f"e{i}", 1) for i in range(1, 7)]  # every still in the first pass
    q.put(_still(7))
    second = q.take()
    assert _sizes(second) == [("v0", 7), ("e7", 1)]  # the still that came later: in the next pass
    assert all(sum(n for _, n in _sizes(q.take())) == 8 for _ in range(5))  # alone, the video fills batches


async def test_two_videos_take_turns() -> None:
    q = ReadyQueue(8, 0.0, lambda: 0, per_item=2)
    q.put(_frames_work(0, 10))
    q.put(_frames_work(1, 10))
    assert _sizes(q.take()) == [("v0", 4), ("v1", 4)]
    assert _sizes(q.take()) == [("v0", 4), ("v1", 4)]
    assert _sizes(q.take()) == [("v0", 2), ("v1", 2)] and q.take() == []


def test_reduce_takes_the_worst_frame_and_its_embedding() -> None:
    frames = FrameSet("video", np.zeros((4, 3, 2, 2), np.float32),
                      tuple(FrameRef(k * 10, k * 1.0) for k in range(4)), "rate", 40, 4.0)
    scores = [0.1, 0.7, 0.9, 0.2]
    predictions = [Prediction({"NSFW": s, "SFW": 1 - s}, np.full(3, k, np.float32)) for k, s in enumerate(scores)]
    policy = builtin_book(["NSFW", "SFW"], ["NSFW"], 0.5).default
    prediction, decision, media = reduce_frames(frames, predictions, policy, worst=2)
    assert decision.label == "unsafe" and decision.unsafe_score == pytest.approx(0.9)
    assert prediction.embedding[0] == 2  # the worst frame's embedding represents the item
    assert [f.index for f in media.worst_frames] == [20, 10] and media.worst_frame.time_s == 2.0
    (segment,) = media.unsafe_segments
    assert (segment.start_s, segment.end_s, segment.frames) == (1.0, 3.0, 2)
    assert segment.unsafe_score == pytest.approx(0.9)


def test_frame_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        FrameLimits(max_frames=0)


async def test_an_inline_video_labelled_as_video_is_judged_like_any_other(opennsfw: Any, media_root: Path) -> None:
    """Issue 28: ``data:video/mp4;base64,...`` was a schema violation (only ``data:image/...`` passed); the
    media kind is read from the bytes either way."""
    import base64

    inline = f"data:video/mp4;base64,{base64.b64encode((media_root / 'clip.mp4').read_bytes()).decode()}"
    raw = RawMessage(ImageEvent(event_id="e0", content_id="c0", image_ref=inline).model_dump_json().encode(),
                     b"c0", "in", 0, 0)
    runner, _, _ = make_runner(opennsfw, media_root)
    outcome = await runner.process([raw])
    await runner.close()
    (verdict,) = outcome.verdicts
    assert verdict.label == "unsafe" and verdict.media is not None and verdict.media.kind == "video"


async def test_classify_requests_change_no_shared_state(opennsfw: Any, media_root: Path, image_root: Path) -> None:
    """Issue 28 / design: POST /classify and vitguard classify read state and never change it: no Milvus row
    (so no cluster a later upload could join), no verdict cache entry, no redelivery mark, no wave count, no
    flood count; a stream event then is judged from scratch and founds its own cluster."""
    from vitguard.banks import Bank, BankEntry, BankMatcher, FloodRule, MemoryBankStore, PdqSignal, build_snapshot

    runner, sink, index = make_runner(opennsfw, media_root)
    hidden = (media_root / "clip.gif").read_bytes()  # unsafe under the test policy: would cluster and count
    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    store.add_entries([BankEntry(bank="known-bad", entry_id="kb", signal=PdqSignal.hash_bytes(hidden).hex)])
    matcher = BankMatcher(build_snapshot(store.read()), flood=FloodRule(min_matches=2, min_spread_bits=0))
    runner.completer.matcher = matcher
    for i in range(5):
        verdict = await runner.classify(data=hidden, content_id=f"req-{i}")
        assert verdict.label == "unsafe"
    dedup, waves = runner.dedup, runner.completer.waves
    assert all(not rows for rows in index._rows.values())  # no embedding stored, no cluster to join
    assert not dedup._verdicts and not dedup._events  # type: ignore[attr-defined]  # no cache, no guard
    assert not waves._members and not waves._cooldown_until  # type: ignore[attr-defined]  # no wave counts
    assert matcher.flood._tracks == {}  # no flood counts
    assert sink.verdicts == [] and sink.alerts == []  # nothing published
    await runner.close()


async def test_a_short_insert_between_two_samples_is_caught_at_the_defaults(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    """Issue 28: a 6 s clip with the unsafe picture only from 3.2 to 3.5 s was safe at the default 1 frame/s
    (samples at 3 and 4 s). Every scene cut is classified now, and the verdict states how it sampled."""
    by_name = {p.name: p for p in sample_photos}
    base = Image.open(by_name[HIDDEN_BASE]).convert("RGB").resize((160, 120))
    hidden = Image.open(by_name[HIDDEN_PHOTO]).convert("RGB").resize((160, 120))
    frames = [base] * 32 + [hidden] * 3 + [base] * 25  # 10 fps: the insert from 3.2 to 3.5 s of 6 s
    (image_root / "insert.mp4").write_bytes(video_bytes(frames, fps=10))
    settings = load_settings(fetch={"file_root": str(image_root)}, policy=TEST_POLICY)  # default frame settings
    sink = ListSink()
    runner = Runner(
        classifier=opennsfw, fetcher=ImageFetcher(settings.fetch), index=InMemoryEmbeddingIndex(),
        dedup=InMemoryDedupStore(), waves=InMemoryWaveCounter(settings.policy), sink=sink, policy=settings.policy,
        batch=settings.batch, milvus=settings.milvus, frames=settings.frames,
    )
    outcome = await runner.process(messages(image_root, ["insert.mp4"]))
    await runner.close()
    (verdict,) = outcome.verdicts
    media = verdict.media
    assert verdict.label == "unsafe" and media is not None, verdict
    assert 3.2 <= media.worst_frame.time_s < 3.5
    assert media.sample_rate_fps == 1.0 and media.scene_cuts is not None and media.scene_cuts >= 1
    assert media.largest_gap_s is not None and media.largest_gap_s <= 1.0 + 1e-6
