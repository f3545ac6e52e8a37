"""``vitguard classify``, ``vitguard embed`` and ``vitguard model ...``: the model from the command line.

Heavy imports (torch, timm, onnxruntime) happen inside the commands so ``vitguard --help`` stays fast.
A bad image is one line on stderr and exit code 1; the other images are still classified.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from vitguard.media import FrameSet
    from vitguard.model.types import Classifier, ModelInfo
    from vitguard.policies.compiled import CompiledPolicy
    from vitguard.policy import Decision
    from vitguard.settings import Settings

__all__ = ["register"]

_MODEL_HELP = "Model spec: auto | opennsfw | hf-hub:ORG/NAME | DIR | timm:ARCH | onnx:PATH | torchscript:PATH."
_EXIT_BAD_INPUT = 1


def _load(spec: str | None) -> tuple[Classifier, Settings]:
    from vitguard.model import load_classifier
    from vitguard.settings import load_settings

    settings = load_settings(model={"spec": spec} if spec else {})
    return load_classifier(settings.model), settings


def _prepare_all(
    classifier: Classifier, paths: tuple[Path, ...]
) -> tuple[list[tuple[Path, NDArray[np.float32], float]], list[tuple[Path, str]]]:
    """Decode every file; bad ones become (path, one-line reason) instead of stopping the run."""
    from vitguard.model.folder import decode_files

    result = decode_files(classifier.prepare, paths)
    good = [(d.path, d.array, d.decode_ms) for d in result.decoded]
    bad = [(f.path, f.message) for f in result.failed]
    return good, bad


def _pdq_fields(path: Path) -> dict[str, Any]:
    """``pdq_hash`` and ``pdq_quality`` of an image file, from its full-resolution pixels (what banks hold and
    ``vitguard banks hash`` prints), for matching against banks elsewhere; None when it cannot be hashed."""
    from vitguard.banks.signal import PdqSignal

    try:
        pdq = PdqSignal.hash_bytes(path.read_bytes())
    except Exception:  # the model's decode succeeded: the hash is extra
        return {"pdq_hash": None, "pdq_quality": None}
    return {"pdq_hash": pdq.hex, "pdq_quality": pdq.quality}


def _report_bad(bad: list[tuple[Path, str]]) -> None:
    for path, reason in bad:
        click.echo(f"vitguard: {path}: {reason}", err=True)


@click.command("classify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "spec", default=None, help=f"{_MODEL_HELP} Default: VITGUARD_MODEL_SPEC (auto).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image instead of a table.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 1024), help="Images per pass.")
@click.option("--tenant", default="default", show_default=True, help="Judge under this tenant's policy.")
@click.option("--surface", default=None, help="... and this surface's (the event field surface).")
@click.option("--policy", "policy_name", default=None,
              help="Judge under this policy of the document in force instead of the tenant's.")
def classify(paths: tuple[Path, ...], spec: str | None, as_json: bool, batch_size: int, tenant: str,
             surface: str | None, policy_name: str | None) -> None:
    """Classify image files: label and action (by the policy in force: VITGUARD_POLICY_FILE or _TOPIC, else
    the policy settings), unsafe score and timing per image.

    Animated GIF/WebP/APNG and videos (MP4, MOV, WebM, ...) are judged by their worst sampled frame; with
    --json their record also lists every classified frame (``frames``: index, time_s, unsafe_score).
    """
    from vitguard.policies.live import read_policies
    from vitguard.policy import resolve_unsafe_labels

    classifier, settings = _load(spec)
    info = classifier.info
    unsafe = resolve_unsafe_labels(info.labels, settings.policy, info.unsafe_labels)  # a checkpoint's own, unless set
    review = settings.review
    book = read_policies(settings.policy, settings.kafka, info.labels, unsafe,
                         (review.uncertain_low, review.uncertain_high)).book
    if policy_name is not None and book.named(policy_name) is None:
        raise click.UsageError(f"--policy {policy_name}: the document in force ({book.version}) has no such policy "
                               f"(it has: {', '.join(sorted(book.policies))})")
    run = _ClassifyRun(classifier, settings, book.pick(tenant, surface, policy_name), batch_size, as_json)
    stills, multi, failed = _split_media(classifier, paths, settings)
    good, bad = _prepare_all(classifier, stills)
    bad = failed + bad
    if not as_json and (good or multi):
        click.echo(f"# model {info.name}@{info.version} ({info.backend}){' UNTRAINED' if info.untrained else ''}")
        click.echo(f"{'label':<7} {'unsafe':>7} {'top class':<14} {'decode ms':>9} {'model ms':>9}  path")
    _classify_stills(run, good)
    _classify_multi_frame(run, multi)
    _report_bad(bad)
    if bad:
        sys.exit(_EXIT_BAD_INPUT)


@dataclass(frozen=True)
class _ClassifyRun:
    """What every file of one ``vitguard classify`` run is judged by and printed with."""

    classifier: Classifier
    settings: Settings
    policy: CompiledPolicy
    """The policy every file is judged under."""
    batch_size: int
    as_json: bool


def _classify_stills(run: _ClassifyRun, good: list[tuple[Path, NDArray[np.float32], float]]) -> None:
    """Classify decoded still images ``batch_size`` at a time and print one line each; its model time is the
    batch's, shared out evenly."""
    import numpy as np

    for start in range(0, len(good), run.batch_size):
        chunk = good[start : start + run.batch_size]
        started = time.perf_counter()
        predictions = run.classifier.predict(np.stack([array for _, array, _ in chunk]))
        model_ms = (time.perf_counter() - started) * 1000 / len(chunk)
        for (path, _, decode_ms), prediction in zip(chunk, predictions, strict=True):
            decision = run.policy.decide(prediction.scores)
            if run.as_json:
                record = _record(run.classifier.info, path, decision, prediction.scores, decode_ms, model_ms)
                click.echo(json.dumps({**record, **_pdq_fields(path)}))
            else:
                click.echo(_row(decision, prediction.top_class, decode_ms, model_ms, path))


def _classify_multi_frame(run: _ClassifyRun, multi: list[tuple[Path, FrameSet, float]]) -> None:
    """Classify each animation or video by its worst sampled frame and print one line each (with --json, one
    record that also lists every classified frame)."""
    from vitguard.pipeline.stages.reduce import frame_scores, reduce_frames

    for path, frames, decode_ms in multi:
        started = time.perf_counter()
        predictions = [p for s in range(0, len(frames), run.batch_size)
                       for p in run.classifier.predict(frames.tensors[s : s + run.batch_size])]
        model_ms = (time.perf_counter() - started) * 1000
        top, decision, media = reduce_frames(frames, predictions, run.policy,
                                             worst=run.settings.frames.worst_frames)
        if run.as_json:
            record = {
                **_record(run.classifier.info, path, decision, top.scores, decode_ms, model_ms),
                "frames": [{"index": f.index, "time_s": f.time_s, "unsafe_score": round(d.unsafe_score, 6)}
                           for f, d in frame_scores(frames, predictions, run.policy)],
                "media": media.model_dump(mode="json", exclude={"worst_frames"}),
            }
            click.echo(json.dumps(record))
        else:
            worst = media.worst_frame
            click.echo(
                f"{_row(decision, top.top_class, decode_ms, model_ms, path)} ({media.kind}, {len(frames)} frames, "
                f"worst #{worst.index} at {worst.time_s:g} s)"
            )


def _record(info: ModelInfo, path: Path, decision: Decision, scores: dict[str, float], decode_ms: float,
            model_ms: float) -> dict[str, Any]:
    """The fields every --json record starts with, stills and multi-frame media alike."""
    return {
        "path": str(path),
        "label": decision.label,
        "unsafe_score": round(decision.unsafe_score, 6),
        "action": decision.action,
        "categories": {k: round(v, 6) for k, v in decision.categories.items()},
        "policy": decision.policy,
        "policy_version": decision.policy_version,
        "scores": {k: round(v, 6) for k, v in scores.items()},
        "model": info.name,
        "model_version": info.version,
        "untrained": info.untrained,
        "decode_ms": round(decode_ms, 2),
        "model_ms": round(model_ms, 2),
    }


def _row(decision: Decision, top_class: str, decode_ms: float, model_ms: float, path: Path) -> str:
    """One line of the table (multi-frame media add what their worst frame was)."""
    return (f"{decision.label:<7} {decision.unsafe_score:>7.4f} {top_class:<14} "
            f"{decode_ms:>9.1f} {model_ms:>9.1f}  {path}")


def _split_media(
    classifier: Classifier, paths: tuple[Path, ...], settings: Settings
) -> tuple[tuple[Path, ...], list[tuple[Path, FrameSet, float]], list[tuple[Path, str]]]:
    """Still images (decoded by the pooled decoder) apart from animations and videos (expanded here, one by
    one: each is already many frames)."""
    from vitguard.errors import InputError
    from vitguard.media import FrameLimits, expand_frames, media_kind
    from vitguard.media.sniff import SNIFF_BYTES

    limits = FrameLimits.from_settings(settings.frames)
    stills: list[Path] = []
    multi: list[tuple[Path, FrameSet, float]] = []
    failed: list[tuple[Path, str]] = []
    for path in paths:
        try:
            with path.open("rb") as fh:
                head = fh.read(SNIFF_BYTES)
        except OSError:
            stills.append(path)  # the decoder reports it
            continue
        if media_kind(head) == "still":
            stills.append(path)
            continue
        started = time.perf_counter()
        try:
            frames = expand_frames(path.read_bytes(), limits, classifier.prepare_image)
        except InputError as exc:
            failed.append((path, str(exc)))
            continue
        if frames is None:
            stills.append(path)
        else:
            multi.append((path, frames, (time.perf_counter() - started) * 1000))
    return tuple(stills), multi, failed


@click.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npy file.")
@click.option("--model", "spec", default=None, help=f"{_MODEL_HELP} Default: VITGUARD_MODEL_SPEC (auto).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024), help="Images per pass.")
def embed(paths: tuple[Path, ...], out: Path, spec: str | None, batch_size: int) -> None:
    """Write the L2-normalised embeddings of image files as an (N, dim) float32 .npy file.

    Row i belongs to the i-th path. OUT.json next to it records the model and the paths. Any undecodable
    image is reported and nothing is written, so rows never shift.
    """
    import numpy as np
    from tqdm import tqdm

    classifier, _ = _load(spec)
    info = classifier.info
    good, bad = _prepare_all(classifier, paths)
    if bad:
        _report_bad(bad)
        click.echo(f"vitguard: {len(bad)} of {len(paths)} images could not be decoded; nothing written", err=True)
        sys.exit(_EXIT_BAD_INPUT)
    rows: list[NDArray[np.float32]] = []
    with tqdm(total=len(good), unit="img", disable=len(good) < 64, file=sys.stderr) as bar:
        for start in range(0, len(good), batch_size):
            chunk = good[start : start + batch_size]
            rows.extend(p.embedding for p in classifier.predict(np.stack([a for _, a, _ in chunk])))
            bar.update(len(chunk))
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, info.embedding_dim), np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        np.save(fh, matrix)
    meta = {"model": asdict(info), "paths": [str(p) for p, _, _ in good]}
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {matrix.shape[0]}x{matrix.shape[1]} embeddings from {info.name}@{info.version} to {out}")


@click.group("model")
def model() -> None:
    """Inspect and export the classification model."""


@model.command("info")
@click.option("--model", "spec", default=None, help=f"{_MODEL_HELP} Default: VITGUARD_MODEL_SPEC (auto).")
def info_cmd(spec: str | None) -> None:
    """Print the loaded model's identity (name, version, labels, embedding size, backend) as JSON."""
    classifier, _ = _load(spec)
    click.echo(json.dumps(asdict(classifier.info), indent=2))


@model.command("export")
@click.option("--model", "spec", required=True, help="Torch model to export: hf-hub:ORG/NAME | DIR | timm:ARCH.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--int8", is_flag=True, help="ONNX only: dynamic int8 weights (smaller, approximate).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Model file.")
def export_cmd(spec: str, fmt: str, int8: bool, out: Path) -> None:
    """Export a model to ONNX or TorchScript; load it back with --model onnx:OUT or torchscript:OUT."""
    from vitguard.model.exported import export_model, sidecar_path
    from vitguard.model.factory import load_torch_classifier
    from vitguard.settings import load_settings

    if int8 and fmt != "onnx":
        raise click.UsageError("--int8 needs --format onnx")
    settings = load_settings(model={"spec": spec, "device": "cpu"})
    classifier = load_torch_classifier(settings.model)
    path = export_model(classifier, out, fmt="onnx" if fmt == "onnx" else "torchscript", int8=int8)
    click.echo(f"wrote {path} and {sidecar_path(path).name}; load it with --model {fmt}:{path}")


def register(group: click.Group) -> None:
    group.add_command(classify)
    group.add_command(embed)
    group.add_command(model)
