"""``vitguard finetune`` and ``vitguard evaluate`` from the command line: outputs, comparison, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vitguard.cli import main
from vitguard.finetune.errors import NoTrainableHeadError
from vitguard.finetune.run import load_split, run_finetune
from vitguard.testing.models import make_tiny_checkpoint

pytestmark = pytest.mark.slow  # trains and evaluates models from the command line

CPU = ["--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("cli-base"), seed=0)


def _invoke(*args: str | Path) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result: object, fragment: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    lines = [line for line in result.stderr.splitlines() if line.startswith("vitguard: error:")]  # type: ignore[attr-defined]
    assert len(lines) == 1 and fragment in lines[0], result.stderr  # type: ignore[attr-defined]


def test_finetune_then_evaluate_against_the_base_model(binary_data: Path, base: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    result = _invoke("finetune", binary_data, "--out", out, "--model", base, "--cache-dir", tmp_path / "c", *CPU)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert f"--model {out}" in result.output  # type: ignore[attr-defined]
    assert "NSFW 16 train / 4 val" in result.stderr  # type: ignore[attr-defined]
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()

    evaluation = tmp_path / "eval"
    result = _invoke("evaluate", "--model", out, "--data", binary_data, "--compare", base, "--out", evaluation, *CPU)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    tuned, untouched = metrics["models"]
    assert tuned["model"]["name"] == "dir:tuned" and untouched["model"]["name"] == f"dir:{base.name}"
    assert tuned["n_images"] == untouched["n_images"] == 40
    assert tuned["classes"]["accuracy"] >= 0.95  # all 40 images, 32 of which it was trained on
    by_metric = {row["metric"]: row for row in metrics["comparison"]}
    assert by_metric["accuracy"]["better"] == "dir:tuned"
    assert by_metric["roc_auc"]["better"] == "dir:tuned"
    assert "| accuracy |" in result.output and "Metrics won:" in result.output  # type: ignore[attr-defined]
    for png in evaluation.glob("*.png"):
        with Image.open(png) as image:
            image.load()
    assert {p.name for p in evaluation.glob("*.png")} >= {"roc_pr.png", "1_dir_tuned_confusion_matrix.png"}


def test_evaluate_works_for_an_onnx_model_with_other_labels(three_class_data: Path, tmp_path: Path) -> None:
    # open_nsfw (ONNX Runtime, labels SFW/NSFW) on data with classes NSFW/SFW/art: only the unsafe view applies
    result = _invoke("evaluate", "--model", "opennsfw", "--data", three_class_data, "--out", tmp_path, *CPU)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (model,) = metrics["models"]
    assert model["model"]["backend"] == "onnx"
    assert model["classes"] is None and "not all model classes" in model["classes_note"]
    assert model["moderation"]["unsafe_model_labels"] == ["NSFW"]
    assert model["moderation"]["n"] == 52 and model["moderation"]["n_unsafe"] == 24
    assert 0.0 <= model["moderation"]["roc_auc"] <= 1.0


def test_single_class_is_one_line(make_dataset, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", ("NSFW",), 3)
    _one_line_error(_invoke("finetune", data, "--out", tmp_path / "o", *CPU), "two or more class sub-folders")


def test_empty_class_is_one_line(make_dataset, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", ("NSFW", "SFW"), 3)
    (data / "art").mkdir()
    _one_line_error(_invoke("finetune", data, "--out", tmp_path / "o", *CPU), "class 'art' has no readable image")


def test_modes_differing_by_class_is_one_line_and_can_be_allowed(make_dataset, base: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "d", ("NSFW", "SFW"), 5)
    for path in (data / "SFW").iterdir():
        Image.open(path).convert("L").save(path)
    _one_line_error(_invoke("finetune", data, "--out", tmp_path / "o", *CPU), "image modes differ by class")
    allowed = _invoke(
        "finetune", data, "--out", tmp_path / "o", "--model", base, "--allow-mixed-modes", "--no-cache",
        "--epochs", "3", *CPU,
    )  # fmt: skip
    assert allowed.exit_code == 0, allowed.output  # type: ignore[attr-defined]


@pytest.mark.parametrize("spec", ["onnx:/models/exported.onnx", "torchscript:/models/m.pt"])
def test_model_without_trainable_head_is_one_line(spec: str, binary_data: Path, tmp_path: Path) -> None:
    _one_line_error(
        _invoke("finetune", binary_data, "--out", tmp_path / "o", "--model", spec, *CPU), "has no trainable head"
    )
    with pytest.raises(NoTrainableHeadError):
        run_finetune(load_split(binary_data), tmp_path / "o", model=spec, progress=False)


def test_data_without_an_unsafe_class_is_one_line(tmp_path: Path, make_dataset) -> None:
    data = make_dataset(tmp_path / "d", ("NSFW", "SFW"), 3)
    (data / "NSFW").rename(data / "cats")
    _one_line_error(_invoke("finetune", data, "--out", tmp_path / "o", *CPU), "pass --unsafe-label")


def test_both_targets_is_a_usage_error(binary_data: Path, tmp_path: Path) -> None:
    result = _invoke(
        "evaluate", "--data", binary_data, "--target-precision", "0.9", "--target-recall", "0.9", "--out", tmp_path
    )
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "not both" in result.stderr  # type: ignore[attr-defined]


def test_full_finetuning_from_the_command_line(binary_data: Path, base: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    result = _invoke(
        "finetune", binary_data, "--out", out, "--model", base, "--method", "full", "--unfreeze", "all",
        "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--label-smoothing", "0.05",
        "--balance", "sampler", "--target-recall", "0.9", *CPU,
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    metrics = json.loads((out / "metrics.json").read_text())
    training = metrics["training"]
    assert training["method"] == "full"
    assert training["trainable_parameters"] == training["total_parameters"]
    assert training["config"]["label_smoothing"] == 0.05 and training["config"]["balance"] == "sampler"
    assert metrics["moderation"]["chosen_threshold"]["target"] == "recall"
    bad = CliRunner().invoke(main, ["finetune", str(binary_data), "--out", str(out), "--unfreeze", "last"])
    assert bad.exit_code == 2 and "'all'" in bad.stderr
