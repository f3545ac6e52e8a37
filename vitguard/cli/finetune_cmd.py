"""``vitguard finetune`` and ``vitguard evaluate``: adapt a model to a labelled folder, and measure any model.

Heavy imports (torch, timm, matplotlib) happen inside the commands so ``vitguard --help`` stays fast.
Bad input (an empty or single class, modes that differ by class, an untrainable model) is one line on
stderr and exit code 2, through the group's :class:`~vitguard.errors.VitguardError` handling.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])

_MODEL_HELP = "hf-hub:ORG/NAME | DIR | timm:ARCH | auto (the default hub checkpoint)"
_DATA_HELP = "Labelled image folder: DATA/<label>/*.jpg, two or more labels."


def _settings(device: str | None) -> Any:
    from vitguard.settings import load_settings

    return load_settings(model={"device": device} if device else {})


def _unfreeze(_ctx: click.Context, _param: click.Parameter, value: str) -> int | None:
    """``--unfreeze``: a block count or ``all`` (None), checked before any work starts."""
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        raise click.BadParameter("a number of blocks (0 = head only) or 'all'") from None
    if count < 0:
        raise click.BadParameter("must be 0 or more")
    return count


def _targets(precision: float | None, recall: float | None) -> None:
    if precision is not None and recall is not None:
        raise click.UsageError("give --target-precision or --target-recall, not both")


def _default_cache_dir() -> Path:
    return Path(click.get_app_dir("vitguard", force_posix=True)) / "features"


_common_report: list[Callable[[F], F]] = [
    click.option(
        "--unsafe-label",
        "unsafe_labels",
        multiple=True,
        help="Data class that counts as unsafe (repeatable). Default: VITGUARD_POLICY_UNSAFE_LABELS (NSFW).",
    ),
    click.option(
        "--target-precision",
        type=click.FloatRange(0, 1),
        default=None,
        help="Choose the unsafe threshold with at least this precision (default 0.95 when no target is given).",
    ),
    click.option("--target-recall", type=click.FloatRange(0, 1), default=None, help="...or at least this recall."),
    click.option("--batch-size", default=32, type=click.IntRange(1, 4096), help="Images per forward pass."),
    click.option("--workers", default=2, type=click.IntRange(1, 256), help="Decode threads."),
    click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: VITGUARD_MODEL_DEVICE."
    ),
    click.option("--progress/--no-progress", default=True, help="Progress bars on stderr."),
]


def _with(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


@click.command("finetune")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Checkpoint directory to write.",
)
@click.option("--model", "spec", default="auto", help=f"Base model: {_MODEL_HELP}.")
@click.option(
    "--method",
    type=click.Choice(["probe", "full"]),
    default="probe",
    help="probe: frozen backbone, new linear head (fast). full: train the head and the last --unfreeze blocks.",
)
@click.option(
    "--unfreeze",
    default="1",
    callback=_unfreeze,
    help="--method full: blocks trained besides the head (0 = head only) or 'all'.",
)
@click.option(
    "--val-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Validation folder with the same labels (instead of a split).",
)
@click.option(
    "--val-fraction",
    default=0.2,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Stratified validation share when no --val-dir is given.",
)
@click.option("--epochs", type=click.IntRange(1), default=None, help="Default: 200 (probe), 10 (full).")
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Default: 1e-2 (probe head), 5e-5 (full: pretrained blocks).",
)
@click.option(
    "--head-lr",
    type=click.FloatRange(0, min_open=True),
    default=1e-3,
    help="--method full: learning rate of the new head.",
)
@click.option("--weight-decay", type=click.FloatRange(0), default=None, help="Default: 1e-4 (probe), 0.05 (full).")
@click.option("--warmup-epochs", type=click.FloatRange(0), default=None, help="Default: 2 (probe), 1 (full).")
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=None,
    help="Early-stopping patience in epochs, 0 = off. Default: 20 (probe), 3 (full).",
)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Default: 0 (probe), 0.1 (full).",
)
@click.option(
    "--balance",
    type=click.Choice(["loss", "sampler", "none"]),
    default="loss",
    help="Class imbalance: weighted loss, balanced sampler, or nothing.",
)
@click.option(
    "--grad-clip", type=click.FloatRange(0), default=1.0, help="--method full: largest gradient norm, 0 = off."
)
@click.option("--no-amp", is_flag=True, help="--method full: train in float32 on CUDA too.")
@click.option(
    "--max-steps-per-epoch",
    type=click.IntRange(1),
    default=None,
    help="--method full: cap steps per epoch (smoke runs).",
)
@click.option("--seed", default=0, type=int, help="Seed of the split, the initialisation and the data order.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Feature cache for the probe. Default: ~/.vitguard/features.",
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache.")
@click.option(
    "--allow-mixed-modes", is_flag=True, help="Train even when image modes (greyscale/colour) differ by class."
)
@_with(_common_report)
def finetune(
    data: Path,
    out_dir: Path,
    spec: str,
    method: str,
    unfreeze: int | None,
    val_dir: Path | None,
    val_fraction: float,
    epochs: int | None,
    lr: float | None,
    head_lr: float,
    weight_decay: float | None,
    warmup_epochs: float | None,
    patience: int | None,
    label_smoothing: float | None,
    balance: str,
    grad_clip: float,
    no_amp: bool,
    max_steps_per_epoch: int | None,
    seed: int,
    cache_dir: Path | None,
    no_cache: bool,
    allow_mixed_modes: bool,
    unsafe_labels: tuple[str, ...],
    target_precision: float | None,
    target_recall: float | None,
    batch_size: int,
    workers: int,
    device: str | None,
    progress: bool,
) -> None:
    """Adapt a model to DATA and write a checkpoint that --model OUT loads everywhere in vitguard.

    DATA is a labelled image folder (DATA/<label>/*.jpg). Writes config.json + model.safetensors,
    metrics.json, report.md, val_predictions.jsonl and plots/*.png into OUT.
    """
    from dataclasses import replace

    from vitguard.finetune.plots import require_plotting

    require_plotting("vitguard finetune")
    from vitguard.finetune.full import FullConfig
    from vitguard.finetune.probe import ProbeConfig
    from vitguard.finetune.run import load_split, run_finetune

    _targets(target_precision, target_recall)
    settings = _settings(device)
    split = load_split(data, val_dir=val_dir, val_fraction=val_fraction, seed=seed, allow_mixed_modes=allow_mixed_modes)
    _echo_data(split)
    common: dict[str, Any] = {"balance": balance, "seed": seed}
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs,
            "patience": patience, "label_smoothing": label_smoothing,
        }.items()
        if v is not None
    }  # fmt: skip
    probe = replace(ProbeConfig(), **common, **overrides)
    full = replace(
        FullConfig(),
        **common,
        **overrides,
        unfreeze=unfreeze,
        head_lr=head_lr,
        grad_clip=grad_clip,
        amp=not no_amp,
        batch_size=batch_size,
        max_steps_per_epoch=max_steps_per_epoch,
    )
    result = run_finetune(
        split,
        out_dir,
        model=spec,
        method="probe" if method == "probe" else "full",
        probe=probe,
        full=full,
        unsafe_labels=unsafe_labels or None,
        target_precision=target_precision,
        target_recall=target_recall,
        model_settings=settings.model,
        policy=settings.policy,
        cache_dir=None if no_cache else (cache_dir or _default_cache_dir()),
        batch_size=batch_size,
        workers=workers,
        progress=progress,
    )
    click.echo(result.report, nl=False)
    click.echo(f"wrote {out_dir} (load it with --model {out_dir})")


def _echo_data(split: Any) -> None:
    from vitguard.finetune.data import imbalance_ratio

    train_counts, val_counts = split.train.counts(), split.val.counts()
    click.echo(
        "classes: "
        + ", ".join(f"{label} {train_counts[label]} train / {val_counts[label]} val" for label in split.train.labels),
        err=True,
    )
    skipped = (*split.train.skipped, *split.val.skipped)
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0].path}", err=True)
    ratio = imbalance_ratio(train_counts)
    if ratio >= 1.5:
        click.echo(f"class imbalance: largest/smallest class = {ratio:.1f}; handled by --balance", err=True)


@click.command("evaluate")
@click.option(
    "--model",
    "spec",
    default="auto",
    help="Model spec: auto | opennsfw | hf-hub:ORG/NAME | DIR | timm:ARCH | onnx:PATH | torchscript:PATH.",
)
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help=_DATA_HELP)
@click.option("--compare", "compare_spec", default=None, help="A second model spec, evaluated on the same images.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("vitguard-evaluation"),
    help="Where metrics.json, report.md and plots go.",
)
@_with(_common_report)
def evaluate(
    spec: str,
    data: Path,
    compare_spec: str | None,
    out_dir: Path,
    unsafe_labels: tuple[str, ...],
    target_precision: float | None,
    target_recall: float | None,
    batch_size: int,
    workers: int,
    device: str | None,
    progress: bool,
) -> None:
    """Metrics and plots of a model on a labelled folder; with --compare, which model is better on what."""
    from vitguard.finetune.plots import require_plotting

    require_plotting("vitguard evaluate")
    from vitguard.finetune.evaluate import run_evaluate

    _targets(target_precision, target_recall)
    settings = _settings(device)
    specs = [spec] if compare_spec is None else [spec, compare_spec]
    result = run_evaluate(
        specs,
        data,
        out_dir,
        unsafe_labels=unsafe_labels or None,
        target_precision=target_precision,
        target_recall=target_recall,
        model_settings=settings.model,
        policy=settings.policy,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
    )
    click.echo(result.report, nl=False)
    click.echo(f"wrote {out_dir}/metrics.json, report.md and plots")


def register(group: click.Group) -> None:
    group.add_command(finetune)
    group.add_command(evaluate)
