"""The reduce stage: the per-frame predictions of an animation or a video -> one item. Pure functions.

The item's verdict is its worst frame under the policy: the frame with the highest unsafe score gives the
label, the scores and the embedding (the first such frame on a tie). The worst frame's embedding, not a
pooled one, represents the item in Milvus: a re-upload of the offending frame (as a still, or inside another
animation) then lands on the same near-duplicate cluster, which a mean over mostly harmless frames would not.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitguard.media.frames import FrameSet
from vitguard.model.types import Prediction
from vitguard.policies.compiled import CompiledPolicy
from vitguard.policy import Decision
from vitguard.schemas.events import FrameScore, FrameSegment, MediaSummary

__all__ = ["Reduced", "frame_scores", "reduce_frames", "unsafe_segments"]

Reduced = tuple[Prediction, Decision, MediaSummary]


def frame_scores(frames: FrameSet, predictions: Sequence[Prediction],
                 policy: CompiledPolicy) -> list[tuple[FrameScore, Decision]]:
    """Each classified frame's score and decision, in frame order."""
    if len(predictions) != len(frames):
        raise ValueError(f"{len(predictions)} predictions for {len(frames)} frames")
    out = []
    for ref, p in zip(frames.frames, predictions, strict=True):
        d = policy.decide(p.scores)
        out.append((FrameScore(index=ref.index, time_s=ref.time_s, unsafe_score=d.unsafe_score), d))
    return out


def unsafe_segments(scored: Sequence[tuple[FrameScore, Decision]], end_s: float | None) -> list[FrameSegment]:
    """Maximal runs of consecutive unsafe frames, worst first; a run lasts until the next sampled frame."""
    runs: list[FrameSegment] = []
    start = None
    for i, (_, d) in enumerate([*scored, (None, None)]):
        unsafe = d is not None and d.label == "unsafe"
        if unsafe and start is None:
            start = i
        if not unsafe and start is not None:
            run = [s for s, _ in scored[start:i]]
            stop = scored[i][0].time_s if i < len(scored) else max(end_s or 0.0, run[-1].time_s)
            runs.append(FrameSegment(start_s=run[0].time_s, end_s=stop,
                                     unsafe_score=max(s.unsafe_score for s in run), frames=len(run)))
            start = None
    return sorted(runs, key=lambda r: (-r.unsafe_score, r.start_s))


def reduce_frames(frames: FrameSet, predictions: Sequence[Prediction], policy: CompiledPolicy, *,
                  worst: int = 5) -> Reduced:
    """The item's prediction and decision (its worst frame's) and the summary that goes into the verdict."""
    scored = frame_scores(frames, predictions, policy)
    order = sorted(range(len(scored)), key=lambda i: (-scored[i][0].unsafe_score, i))
    top = order[0]
    summary = MediaSummary(
        kind=frames.kind, sampling=frames.sampling, frames_total=frames.source_frames,
        frames_classified=len(frames), duration_s=frames.duration_s, truncated=frames.truncated,
        sample_rate_fps=frames.sample_rate_fps, scene_cuts=frames.scene_cuts, largest_gap_s=frames.largest_gap_s,
        worst_frame=scored[top][0], worst_frames=[scored[i][0] for i in order[:worst]],
        unsafe_segments=unsafe_segments(scored, frames.duration_s)[:worst],
    )
    return predictions[top], scored[top][1], summary
