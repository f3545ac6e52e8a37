"""The demo's printed report: verdicts, alerts and dead letters as plain-text tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from vitguard.demo.samples import SampleSet
from vitguard.schemas.events import DeadLetter, FrameScore, NearDuplicateAlert, Timings, Verdict
from vitguard.settings import PolicySettings, Settings
from vitguard.testing.worker import Outputs

__all__ = ["render_report", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], max_width: int = 60) -> str:
    """A left-aligned text table; cells longer than ``max_width`` are cut with an ellipsis."""
    cells = [[_cut(str(c), max_width) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def _ms(t: Timings) -> str:
    return f"{t.fetch_ms:.0f}/{t.decode_ms:.0f}/{t.infer_ms:.0f}"


def _worst(frame: FrameScore) -> str:
    return f"#{frame.index} ({frame.time_s:g} s, {frame.unsafe_score:.4f})"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_report(samples: SampleSet, outputs: Outputs, settings: Settings, *, threshold_simulated: bool,
                  elapsed_s: float) -> str:
    """The tables of what the worker answered, then a summary that says whether every event was answered once."""
    kinds = _kinds_by_content_id(samples)
    verdicts = sorted(outputs.verdicts, key=lambda v: (kinds.get(v.content_id, ""), v.content_id))
    topics = settings.topics
    parts = [f"\nVERDICTS ({len(verdicts)}) -> topic {topics.verdicts}", _verdicts_table(verdicts, kinds)]
    multi = [v for v in verdicts if v.media is not None]
    if multi:
        parts.append(f"\nANIMATIONS AND VIDEO ({len(multi)}): the verdict is the worst frame's")
        parts.append(_media_table(multi))
    parts.append(f"\nNEAR-DUPLICATE ALERTS ({len(outputs.alerts)}) -> topic {topics.alerts}")
    parts.append(_alerts_table(outputs.alerts))
    parts.append(f"\nDEAD LETTERS ({len(outputs.dead_letters)}) -> topic {topics.dead_letters}")
    parts.append(_dead_letters_table(outputs.dead_letters))
    parts.append(_summary(samples, outputs, settings, elapsed_s))
    wave_note = _wave_note(outputs, settings.policy)
    if wave_note:
        parts.append(wave_note)
    parts.append(_redelivery_line(outputs.verdicts))
    if threshold_simulated:
        parts.append(
            f"SIMULATED: unsafe threshold {settings.policy.unsafe_threshold:.4f} (instead of the configured one) so "
            "that the flagged photo family counts as unsafe; all sample photos are in fact safe."
        )
    return "\n".join(parts)


def _kinds_by_content_id(samples: SampleSet) -> dict[str, str]:
    """The sample kind of each content id; a redelivery keeps its original's kind (the first one seen)."""
    kinds: dict[str, str] = {}
    for e in samples.events:
        if e.content_id:
            kinds.setdefault(e.content_id, e.kind)
    return kinds


def _verdicts_table(verdicts: Sequence[Verdict], kinds: Mapping[str, str]) -> str:
    return table(
        ["content_id", "kind", "label", "unsafe_score", "cluster", "cached", "fetch/decode/infer ms"],
        [
            [v.content_id, kinds.get(v.content_id, "?"), v.label, f"{v.unsafe_score:.4f}", v.cluster_id or "-",
             "yes" if v.from_cache else "", _ms(v.timings)]
            for v in verdicts
        ],
    )


def _media_table(verdicts: Sequence[Verdict]) -> str:
    """Frames and unsafe segments of the animations and videos among ``verdicts`` (others are left out)."""
    return table(
        ["content_id", "kind", "label", "frames", "worst frame (time, score)", "unsafe segments"],
        [
            [v.content_id, v.media.kind, v.label, f"{v.media.frames_classified}/{v.media.frames_total or '?'}",
             _worst(v.media.worst_frame),
             ", ".join(f"{s.start_s:g}-{s.end_s:g} s" for s in v.media.unsafe_segments) or "-"]
            for v in verdicts if v.media is not None
        ],
    )


def _alerts_table(alerts: Sequence[NearDuplicateAlert]) -> str:
    return table(
        ["content_id", "severity", "cluster", "wave_count", "closest match (similarity)"],
        [
            [a.content_id, a.severity, a.cluster_id, f"{a.wave_count} in {a.wave_window_s}s",
             f"{a.matches[0].content_id} ({a.matches[0].similarity:.3f})" if a.matches else "-"]
            for a in alerts
        ],
    )


def _dead_letters_table(dead_letters: Sequence[DeadLetter]) -> str:
    return table(
        ["key / content_id", "reason", "message"],
        [[d.content_id or d.key or "-", d.reason, d.message] for d in dead_letters],
        max_width=70,
    )


def _summary(samples: SampleSet, outputs: Outputs, settings: Settings, elapsed_s: float) -> str:
    labels = Counter(v.label for v in outputs.verdicts)
    severities = Counter(a.severity for a in outputs.alerts)
    model = outputs.verdicts[0].model_name if outputs.verdicts else settings.model.spec
    return (
        f"\nSUMMARY: {len(samples.events)} events published ({samples.distinct_events} distinct + 1 redelivery) "
        f"-> {len(outputs.verdicts)} verdicts ({dict(labels)}), {len(outputs.dead_letters)} dead letters, "
        f"{len(outputs.alerts)} alerts ({dict(severities)}) in {elapsed_s:.1f}s; model {model}."
    )


def _wave_note(outputs: Outputs, policy: PolicySettings) -> str | None:
    """Why there are fewer alerts than items that joined a cluster (a wave suppresses them); None when not."""
    clustered = Counter(v.cluster_id for v in outputs.verdicts if v.cluster_id and not v.from_cache)
    joined = sum(n - 1 for n in clustered.values())
    if joined <= len(outputs.alerts):
        return None
    return (
        f"{joined} unsafe items joined an existing cluster; {joined - len(outputs.alerts)} of their alerts were "
        f"suppressed inside a wave (>= {policy.wave_threshold} items within "
        f"{policy.wave_window_s}s; cooldown {policy.wave_alert_cooldown_s}s)."
    )


def _redelivery_line(verdicts: Sequence[Verdict]) -> str:
    """Whether an event got more than one verdict (the demo publishes one redelivery to check exactly-once)."""
    redelivered = len(verdicts) - len({v.event_id for v in verdicts})
    return f"Redelivered event answered twice: {'NO' if redelivered == 0 else f'YES ({redelivered})'}."
