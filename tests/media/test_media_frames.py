"""vitguard.media on real media made from real photos: sampling, limits and bad media, no model needed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from vitguard.errors import InputError
from vitguard.media import FrameLimits, expand_frames, media_kind, sample_indices
from vitguard.media.sniff import SNIFF_BYTES
from vitguard.testing.media import (
    animated_image,
    negative_time_video,
    photo_frames,
    restate_duration,
    truncated,
    unknown_codec_video,
    video_bytes,
    zero_frame_video,
)


def prepare(image: Image.Image) -> NDArray[np.float32]:
    """A stand-in preprocessor: the frame's mean colour and its index hidden in the pixels do not matter."""
    return np.asarray(image.convert("RGB").resize((8, 8)), np.float32).transpose(2, 0, 1) / 255


@pytest.fixture(scope="module")
def clip(sample_photos: list[Path]) -> list[Image.Image]:
    return photo_frames(sample_photos[1], 9, hidden=sample_photos[0])


def test_sample_indices_all_then_even_with_first_and_last() -> None:
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]
    picked = sample_indices(1000, 8)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 999
    assert sample_indices(0, 8) == [] and sample_indices(10, 1) == [0]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_every_frame_of_an_animation_with_its_time(clip: list[Image.Image], fmt: str) -> None:
    data = animated_image(clip, fmt, duration_ms=100)
    assert media_kind(data) == "maybe_animated"
    frames = expand_frames(data, FrameLimits(), prepare)
    assert frames is not None and frames.kind == "animation" and frames.sampling == "all"
    assert [f.index for f in frames.frames] == list(range(9))
    assert [f.time_s for f in frames.frames] == pytest.approx([i / 10 for i in range(9)])
    assert frames.duration_s == pytest.approx(0.9) and frames.tensors.shape == (9, 3, 8, 8)
    # the hidden frame is different from its neighbours: its pixels made it through
    diffs = np.abs(np.diff(frames.tensors, axis=0)).mean(axis=(1, 2, 3))
    assert int(np.argmax(diffs)) in (3, 4)


def test_long_animation_sampled_evenly_first_and_last(clip: list[Image.Image]) -> None:
    frames = expand_frames(animated_image(clip * 5), FrameLimits(max_frames=6), prepare)
    assert frames is not None and frames.sampling == "even" and frames.source_frames == 45
    assert [f.index for f in frames.frames] == sample_indices(45, 6)


def test_still_images_are_not_expanded(sample_photos: list[Path], clip: list[Image.Image]) -> None:
    assert expand_frames(sample_photos[0].read_bytes(), FrameLimits(), prepare) is None  # PNG
    single = animated_image(clip[:1])
    assert expand_frames(single, FrameLimits(), prepare) is None  # a one-frame GIF is a still


@pytest.mark.slow  # encodes a many-frame animation
def test_many_frame_bomb_refused_from_the_header(clip: list[Image.Image]) -> None:
    many = animated_image(clip * 7)  # 63 frames
    with pytest.raises(InputError) as exc:
        expand_frames(many, FrameLimits(max_source_frames=50), prepare)
    assert exc.value.reason == "too_many_frames"
    big = [Image.new("RGB", (600, 600), (i % 2 * 255, 0, 0)) for i in range(120)]  # 43 Mpx in all
    data = animated_image(big)
    started = time.perf_counter()
    with pytest.raises(InputError) as exc:
        expand_frames(data, FrameLimits(max_decoded_pixels=20_000_000), prepare)
    assert exc.value.reason == "decompression_bomb" and time.perf_counter() - started < 1.0
    # one frame over the still-image limit (40 Mpx), even when the frames together are within the total
    huge = animated_image([Image.new("L", (6400, 6400), v) for v in (0, 255)], "PNG")
    started = time.perf_counter()
    with pytest.raises(InputError) as exc:
        expand_frames(huge, FrameLimits(max_decoded_pixels=200_000_000), prepare)
    assert exc.value.reason == "decompression_bomb" and "6400x6400" in exc.value.message
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("container", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("mov", "libx264")])
def test_video_sampled_at_a_fixed_rate(clip: list[Image.Image], container: str, codec: str) -> None:
    data = video_bytes(clip, fps=10, container=container, codec=codec, repeat=5)  # 4.5 s
    assert media_kind(data) == "video"
    frames = expand_frames(data, FrameLimits(video_fps=2), prepare)
    assert frames is not None and frames.kind == "video" and frames.sampling == "rate"
    assert frames.duration_s == pytest.approx(4.5) and frames.source_frames == 45 and not frames.truncated
    times = [f.time_s for f in frames.frames]
    assert times[:9] == pytest.approx([i / 2 for i in range(9)]) and times[-1] == pytest.approx(4.4)  # last frame


def test_video_over_budget_spread_and_keyframes(clip: list[Image.Image]) -> None:
    data = video_bytes(clip, fps=10, repeat=5)
    spread = expand_frames(data, FrameLimits(video_fps=10, max_frames=5), prepare)
    assert spread is not None and 3 <= len(spread) <= 5
    times = [f.time_s for f in spread.frames]
    assert times[0] == 0.0 and times[-1] == pytest.approx(4.4)  # the whole decoded stream, its last frame too
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 2 * 4.4 / 4 + 1e-6  # <= 2x an even spread
    keys = expand_frames(data, FrameLimits(video_sampling="keyframes"), prepare)
    assert keys is not None and keys.sampling == "keyframes" and keys.frames[0].index == 0


def test_video_limits(clip: list[Image.Image]) -> None:
    data = video_bytes(clip, fps=10, repeat=5)  # 4.5 s, 45 frames
    for limits, reason in [
        (FrameLimits(max_duration_s=2.0), "video_too_long"),
        (FrameLimits(max_source_frames=30), "too_many_frames"),
        (FrameLimits(max_decoded_pixels=100_000), "decompression_bomb"),
    ]:
        with pytest.raises(InputError) as exc:
            expand_frames(data, limits, prepare)
        assert exc.value.reason == reason


def test_bad_video(clip: list[Image.Image]) -> None:
    cases = {
        "corrupt_video": truncated(video_bytes(clip)),  # MP4 cut in half: its index (moov) is gone
        "unsupported_codec": unknown_codec_video(clip),
        "no_frames": zero_frame_video(),
    }
    for reason, data in cases.items():
        with pytest.raises(InputError) as exc:
            expand_frames(data, FrameLimits(), prepare)
        assert exc.value.reason == reason, exc.value
        assert "Errno" not in exc.value.message and "<none>" not in exc.value.message, exc.value  # issue 28


def test_cut_off_webm_keeps_the_frames_before_the_cut(clip: list[Image.Image]) -> None:
    data = truncated(video_bytes(clip, container="webm", codec="libvpx-vp9", repeat=5), 0.6)
    frames = expand_frames(data, FrameLimits(video_fps=2), prepare)
    assert frames is not None and frames.truncated and 1 <= len(frames) < 10


def test_video_times_count_from_its_first_frame(clip: list[Image.Image]) -> None:
    """A codec delay that puts every frame before zero, and a live stream's segment stamped an hour in, are
    sampled from their first frame as any video: times from 0, never negative, not 'too long'."""
    early = expand_frames(negative_time_video(clip, 3.0), FrameLimits(video_fps=10), prepare)  # 9 frames, 0.9 s
    assert early is not None and [f.time_s for f in early.frames] == pytest.approx([i / 10 for i in range(9)])
    for container, codec in [("matroska", "libx264"), ("mpegts", "mpeg4")]:  # copied timestamps; an HLS segment
        live = video_bytes(clip, fps=10, container=container, codec=codec, repeat=5, start_s=3600.0)  # 4.5 s
        assert media_kind(live[:SNIFF_BYTES]) == "video"
        frames = expand_frames(live, FrameLimits(video_fps=2, max_duration_s=60.0), prepare)
        assert frames is not None and frames.duration_s == pytest.approx(4.5, abs=0.11), container
        times = [f.time_s for f in frames.frames]
        assert times[:9] == pytest.approx([i / 2 for i in range(9)]) and times[-1] == pytest.approx(4.4), container


@pytest.mark.parametrize("container", ["matroska", "mp4"])
@pytest.mark.parametrize("stated_s", [5.0, 1000.0])
def test_a_container_that_lies_about_its_length_is_sampled_to_its_real_end(
    clip: list[Image.Image], container: str, stated_s: float
) -> None:
    """Issue 28: a 120 s video whose header said 5 s was judged on its first 5 s (6 frames of 600 decoded),
    and a 6 s Matroska claiming 1,000 s was refused while the same MP4 was judged. Sampling now follows the
    decoded timestamps to the real end, and the stated length is only a hint, on every container alike."""
    hidden = Image.new("RGB", clip[0].size, (255, 0, 255))
    frames = [clip[i % len(clip)] for i in range(12)] + [hidden, hidden] + [clip[i % len(clip)] for i in range(6)]
    honest = video_bytes(frames, fps=10, container=container, repeat=10)  # 20 s; the insert from 12 to 14 s
    lying = restate_duration(honest, stated_s)
    limits = FrameLimits(video_fps=1.0, max_duration_s=300.0)
    for data in (honest, lying):
        got = expand_frames(data, limits, prepare)
        assert got is not None and got.duration_s == pytest.approx(20.0, abs=0.11)
        times = [f.time_s for f in got.frames]
        assert times[-1] == pytest.approx(19.9) and any(12.0 <= t < 14.0 for t in times), times
        assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 1.0 + 1e-6
    with pytest.raises(InputError) as exc:  # the limit holds on what is decoded, whatever the header says
        expand_frames(lying, FrameLimits(video_fps=1.0, max_duration_s=10.0), prepare)
    assert exc.value.reason == "video_too_long"


@pytest.mark.parametrize("fmt", ["WEBP", "GIF", "PNG"])
def test_an_animation_over_the_budget_reports_its_real_times_and_duration(fmt: str) -> None:
    """Issue 28: an animated WebP over 32 frames took its frame times and duration from the loaded frames only
    (10,000 frames of 100 ms reported as 0.32 s), so its sampling and segments were wrong."""
    frames = [Image.new("RGB", (64, 64), (i * 2, 255 - i * 2, 0)) for i in range(100)]
    data = animated_image(frames, fmt, duration_ms=100)
    got = expand_frames(data, FrameLimits(), prepare)
    assert got is not None and got.source_frames == 100 and len(got) == 32
    assert got.duration_s == pytest.approx(10.0)
    assert got.frames[-1].index == 99 and got.frames[-1].time_s == pytest.approx(9.9)
    assert all(f.time_s == pytest.approx(f.index / 10) for f in got.frames)
