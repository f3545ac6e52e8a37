"""Video (MP4, MOV, WebM, Matroska, AVI) with PyAV: sampled frames, streamed, limits first.

PyAV demuxes from a file-like object over the encoded bytes, which the fetch stage holds in memory up to
``VITGUARD_FETCH_MAX_BYTES``; frames are decoded one at a time, a sampled one becomes its tensor at once and
every decoded frame is dropped before the next, so memory never holds more than ``max_frames`` tensors and
one decoded frame. The frame count and pixels the container header declares are checked before any frame is
decoded (a bomb costs nothing); the frames, pixels and duration are counted again while decoding, since headers
can lie.

Sampling follows the decoded stream's own timestamps to its real end; the container's stated duration is never
trusted for it (a 120 s video whose header says 5 s was judged on its first 5 s). ``rate`` decodes every frame and
keeps one every ``1 / video_fps`` s, and every frame where the picture changes (a scene cut:
:data:`SCENE_CUT_DIFF`), so a short insert between two samples is still seen; ``keyframes`` decodes only key frames
(much cheaper) and keeps them at the same rate. Each time the budget (``max_frames``) fills, every other frame kept
at the rate is dropped and the interval doubles, so the sample always spans the whole decoded stream, at most twice
as sparse as an even spread; cuts keep up to half the budget; the last frame is classified too. The verdict states
the final rate, the cuts and the largest gap between classified frames. The limits are checked on what is decoded:
a stream that runs past ``max_duration_s`` is ``video_too_long`` whatever its header says, on every container alike
(a header that over-states its length is only a hint, no refusal). A demux or decode error after at least one frame
ends the video there (``truncated``); so does data that stops well before the stated end.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import InputError
from vitguard.media.frames import MAX_FRAME_PIXELS, FrameRef, FrameSet, HashImage, PrepareImage
from vitguard.media.sampling import FrameLimits

__all__ = ["MAX_FRAME_PIXELS", "SCENE_CUT_DIFF", "read_video"]


def read_video(data: bytes, limits: FrameLimits, prepare: PrepareImage,
               hash_frame: HashImage | None = None) -> FrameSet:
    """The sampled frames of a video.

    Raises:
        InputError: ``corrupt_video`` (the container cannot be opened), ``unsupported_codec`` (FFmpeg has no
            decoder for the video stream), ``no_frames`` (no video stream, the data ends before the first
            frame, or not one frame decodes),
            ``video_too_long``, ``too_many_frames``, ``decompression_bomb``.
    """
    import av  # heavy (FFmpeg): only when a video arrives

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except av.error.EOFError as exc:
        raise InputError("no_frames", "the video container ends before its first frame") from exc
    except av.error.FFmpegError as exc:
        raise InputError("corrupt_video", f"cannot open the video container: {_brief(exc)}") from exc
    try:
        return _read(av, container, limits, prepare, hash_frame)
    finally:
        container.close()


def _read(av: Any, container: Any, limits: FrameLimits, prepare: PrepareImage,
          hash_frame: HashImage | None) -> FrameSet:
    stream, declared, keyframes = _checked_stream(av, container, limits)
    stated = _duration_s(container, stream)  # a hint only: see the module docstring
    sampler = _Sampler(limits, prepare, hash_frame)
    decoded, truncated = _decode_all(av, container, stream, limits, sampler)
    sampler.finish()
    if not sampler.refs or sampler.last_time is None:
        raise InputError("no_frames", "the video stream holds no frame")
    frame_s = 1.0 / float(stream.average_rate) if stream.average_rate else 0.1
    if stated is not None and not keyframes:  # the data stopped well before the stated end: a cut-off upload
        truncated = truncated or sampler.last_time + 2 * frame_s < stated - 0.25
    duration = sampler.last_time + frame_s if not keyframes or stated is None else max(stated, sampler.last_time)
    return FrameSet(
        kind="video", tensors=np.stack(sampler.tensors), frames=tuple(sampler.refs),
        sampling="keyframes" if keyframes else "rate",
        source_frames=declared if keyframes else decoded, duration_s=round(duration, 3), truncated=truncated,
        sample_rate_fps=round(1.0 / sampler.interval, 4), scene_cuts=sum(sampler.cuts),
        largest_gap_s=round(sampler.largest_gap(sampler.last_time + frame_s), 3),
        sampled_with=limits.sampling_key,
    )


def _checked_stream(av: Any, container: Any, limits: FrameLimits) -> tuple[Any, int | None, bool]:
    """The first video stream, refused from its header alone where it can be (no decoder, too many declared
    frames, frames too large, declared pixels over the budget); returns it, its declared frame count (None:
    not declared) and whether only keyframes are decoded."""
    if not container.streams.video:
        raise InputError("no_frames", f"{container.format.name} container has no video stream")
    stream = container.streams.video[0]
    codec = getattr(stream.codec_context, "name", None) if _has_decoder(av, stream) else None
    if codec is None:
        raise InputError("unsupported_codec", f"no decoder for the video codec ({_codec_tag(stream)})")
    declared = int(stream.frames or 0) or None
    if declared is not None and declared > limits.max_source_frames:
        raise InputError("too_many_frames", f"video of {declared} frames, limit {limits.max_source_frames}")
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if width * height > MAX_FRAME_PIXELS:
        raise InputError("decompression_bomb", f"{width}x{height} frames exceed {MAX_FRAME_PIXELS} pixels")
    keyframes = limits.video_sampling == "keyframes"
    if keyframes:
        stream.codec_context.skip_frame = "NONKEY"
    elif declared is not None and width * height * declared > limits.max_decoded_pixels:
        raise InputError("decompression_bomb", f"{declared} frames of {width}x{height} are more than the "
                         f"{limits.max_decoded_pixels} pixels allowed")
    return stream, declared, keyframes


def _decode_all(av: Any, container: Any, stream: Any, limits: FrameLimits, sampler: _Sampler) -> tuple[int, bool]:
    """Decode the stream, offering every frame to ``sampler``, within the frame, pixel and duration limits
    counted as the frames come (the header may lie); returns the frames decoded and whether the data broke off."""
    decoded = pixels = 0
    start: float | None = None
    try:
        for frame in container.decode(stream):
            decoded += 1
            pixels += frame.width * frame.height
            if decoded > limits.max_source_frames:
                raise InputError("too_many_frames", f"video has more than {limits.max_source_frames} frames")
            if pixels > limits.max_decoded_pixels:
                raise InputError("decompression_bomb",
                                 f"more than {limits.max_decoded_pixels} pixels decoded after {decoded} frames")
            if frame.time is None:
                time_s = (decoded - 1) / limits.video_fps
            else:  # from the first frame: a live stream's segment starts hours in, a codec delay below zero
                start = float(frame.time) if start is None else start
                time_s = max(0.0, float(frame.time) - start)
            if time_s > limits.max_duration_s:
                raise InputError("video_too_long", f"video runs past {limits.max_duration_s:g} s")
            sampler.offer(decoded - 1, time_s, frame)
    except av.error.FFmpegError:
        if not sampler.refs:
            raise InputError("no_frames", "no frame of the video decodes (corrupt or truncated data)") from None
        return decoded, True
    return decoded, False


SCENE_CUT_DIFF = 24.0
"""Mean absolute difference of two consecutive frames' 16 x 16 grey thumbnails (0-255) at or above which the
picture changed: a scene cut. A cut is classified whatever the rate (a 0.3 s insert in a 6 s clip fell between
two samples at 1 frame/s); compression noise and motion within a shot stay well under it."""

_THUMB = 16


class _Sampler:
    """Keeps the frames to classify as they stream past, at most ``max_frames`` tensors, spanning the whole
    decoded stream: at the rate, twice as sparse each time the budget fills, and every scene cut (cuts keep up
    to half the budget; past it they are thinned too)."""

    def __init__(self, limits: FrameLimits, prepare: PrepareImage, hash_frame: HashImage | None = None) -> None:
        self.limits = limits
        self.prepare = prepare
        self.hash_frame = hash_frame
        self.interval = 1.0 / limits.video_fps
        self.next_t = 0.0
        self.tensors: list[NDArray[np.float32]] = []
        self.refs: list[FrameRef] = []
        self.cuts: list[bool] = []
        """Per kept frame: kept because the picture changed (not for the rate)."""
        self._last: tuple[int, float, Any] | None = None
        self._last_taken = -1
        self._thumb: NDArray[np.float32] | None = None
        self.last_time: float | None = None

    def offer(self, index: int, time_s: float, frame: Any) -> None:
        self._last = (index, time_s, frame)
        self.last_time = time_s if self.last_time is None else max(self.last_time, time_s)
        thumb = _thumbnail(frame)
        cut = self._thumb is not None and float(np.abs(thumb - self._thumb).mean()) >= SCENE_CUT_DIFF
        self._thumb = thumb
        on_rate = time_s + 1e-6 >= self.next_t
        if not on_rate and not cut:
            return
        self._take(index, time_s, frame, cut=not on_rate)
        if on_rate:
            self.next_t = time_s + self.interval
        if len(self.refs) >= self.limits.max_frames:
            self._thin()

    def _thin(self) -> None:
        """Every other frame kept at the rate goes and the interval doubles; cuts stay while they hold at most
        half the budget, else every other one goes too."""
        at_rate = [i for i, c in enumerate(self.cuts) if not c]
        at_cuts = [i for i, c in enumerate(self.cuts) if c]
        if len(at_cuts) > self.limits.max_frames // 2:
            at_cuts = at_cuts[::2]
        keep = sorted({*at_rate[::2], *at_cuts})
        self.tensors = [self.tensors[i] for i in keep]
        self.refs = [self.refs[i] for i in keep]
        self.cuts = [self.cuts[i] for i in keep]
        self.interval *= 2
        last_at_rate = max((r.time_s for r, c in zip(self.refs, self.cuts, strict=True) if not c), default=0.0)
        self.next_t = last_at_rate + self.interval

    def finish(self) -> None:
        """The last frame is classified too (the end of the stream), in place of the last kept one when the
        budget is full."""
        if self._last is None or self._last[0] == self._last_taken:
            return
        if len(self.refs) >= self.limits.max_frames:
            self.tensors.pop()
            self.refs.pop()
            self.cuts.pop()
        self._take(*self._last)
        self._last = None

    def largest_gap(self, end_s: float) -> float:
        """The longest stretch from the start to ``end_s`` with no kept frame."""
        times = [0.0, *(r.time_s for r in self.refs), end_s]
        return max(b - a for a, b in zip(times, times[1:], strict=False))

    def _take(self, index: int, time_s: float, frame: Any, *, cut: bool = False) -> None:
        image = frame.to_image()
        self.tensors.append(self.prepare(image))
        self.refs.append(FrameRef(index, round(time_s, 3), self.hash_frame(image) if self.hash_frame else None))
        self.cuts.append(cut)
        self._last_taken = index


def _thumbnail(frame: Any) -> NDArray[np.float32]:
    """A 16 x 16 grey thumbnail of a decoded frame, for the scene-cut test: 2 x 2 means of a 32 x 32 grid of
    luma samples read in place from the decoded Y plane (~20 us; FFmpeg's scaler took ~0.45 ms, a 4x slower
    decode); frames of other pixel formats go through the scaler."""
    name = frame.format.name
    if name.startswith(("yuv", "yuvj", "nv")) or name == "gray":
        plane = frame.planes[0]
        height, width = frame.height, frame.width
        luma = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[:height, :width]
        rows = (np.arange(2 * _THUMB) * height) // (2 * _THUMB)
        cols = (np.arange(2 * _THUMB) * width) // (2 * _THUMB)
        grid = luma[rows[:, None], cols[None, :]].astype(np.float32)
        thumb: NDArray[np.float32] = grid.reshape(_THUMB, 2, _THUMB, 2).mean(axis=(1, 3), dtype=np.float32)
        return thumb
    small = frame.reformat(width=_THUMB, height=_THUMB, format="gray").to_ndarray()
    return np.asarray(small[:_THUMB, :_THUMB], dtype=np.float32)


def _duration_s(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        total = float(container.duration) / 1_000_000  # AV_TIME_BASE
        start = float(container.start_time or 0) / 1_000_000
        # Matroska written with copied timestamps (a live stream's segment) declares its end, not its length;
        # frame times count from the first frame, so the length is the end less the start
        return total - start if 0 < start < total else total
    return None


def _has_decoder(av: Any, stream: Any) -> bool:
    try:
        ctx = stream.codec_context
    except Exception:
        return False
    return ctx is not None and ctx.codec is not None and bool(getattr(ctx.codec, "is_decoder", True))


def _codec_tag(stream: Any) -> str:
    try:
        return str(stream.codec_context.codec_tag or stream.codec_context.name)
    except Exception:
        return "unknown"


def _brief(exc: BaseException, limit: int = 200) -> str:
    """FFmpeg's own words (``strerror``), without PyAV's ``[Errno 1094995529] ...: '<none>'`` wrapping."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
