"""``vitguard classify``, ``embed`` and ``model export`` end to end, on real image files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vitguard.cli import main
from vitguard.model import load_classifier


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_classify_table_and_json(runner: CliRunner, tiny_checkpoint: Path, sample_photos: list[Path]) -> None:
    paths = [str(p) for p in sample_photos[:2]]
    table = runner.invoke(main, ["classify", *paths, "--model", str(tiny_checkpoint)])
    assert table.exit_code == 0, table.output
    lines = table.output.strip().splitlines()
    assert lines[0].startswith("# model dir:tiny@")
    assert len(lines) == 4 and all(line.split()[0] in ("safe", "unsafe") for line in lines[2:])

    result = runner.invoke(main, ["classify", *paths, "--model", str(tiny_checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.strip().splitlines()]
    expected = load_classifier(str(tiny_checkpoint)).classify(sample_photos[:2])
    for record, prediction in zip(records, expected, strict=True):
        assert record["unsafe_score"] == pytest.approx(prediction.scores["NSFW"], abs=1e-5)  # policy: ["NSFW"]
        assert record["label"] == ("unsafe" if prediction.scores["NSFW"] >= 0.5 else "safe")
        assert record["model"] == "dir:tiny" and record["decode_ms"] >= 0 and record["model_ms"] > 0
    from vitguard.banks.signal import PdqSignal

    for record, photo in zip(records, sample_photos[:2], strict=True):  # the hash banks hold (issue 28)
        assert record["pdq_hash"] == PdqSignal.hash_bytes(photo.read_bytes()).hex and record["pdq_quality"] > 0


def test_classify_bad_image_is_one_line_and_nonzero_exit(
    runner: CliRunner, tiny_checkpoint: Path, sample_photos: list[Path], tmp_path: Path
) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    result = runner.invoke(main, ["classify", str(sample_photos[0]), str(bad), "--model", str(tiny_checkpoint)])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line]
    assert errors == [f"vitguard: {bad}: not_an_image: data is not in any image format Pillow recognises"]
    assert "safe" in result.stdout  # the good image was still classified


def test_classify_policy_mismatch_is_a_config_error(
    runner: CliRunner, tiny_checkpoint: Path, sample_photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITGUARD_POLICY_UNSAFE_LABELS", '["porn"]')
    result = runner.invoke(main, ["classify", str(sample_photos[0]), "--model", str(tiny_checkpoint)])
    assert result.exit_code == 2
    assert "matches none of the model's classes" in result.stderr


def test_embed_writes_rows_in_path_order(
    runner: CliRunner, tiny_checkpoint: Path, sample_photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "emb.npy"
    paths = sample_photos[:3]
    result = runner.invoke(main, ["embed", *map(str, paths), "--out", str(out), "--model", str(tiny_checkpoint)])
    assert result.exit_code == 0, result.output
    matrix = np.load(out)
    assert matrix.shape == (3, 192) and matrix.dtype == np.float32
    expected = np.stack([p.embedding for p in load_classifier(str(tiny_checkpoint)).classify(paths)])
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    meta = json.loads(out.with_name("emb.npy.json").read_text())
    assert meta["paths"] == [str(p) for p in paths] and meta["model"]["embedding_dim"] == 192

    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    out2 = tmp_path / "none.npy"
    args = ["embed", str(paths[0]), str(bad), "--out", str(out2), "--model", str(tiny_checkpoint)]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and not out2.exists()
    assert f"{bad}: not_an_image: empty image data" in result.stderr


def test_model_export_then_classify_with_onnx_spec(
    runner: CliRunner, tiny_checkpoint: Path, sample_photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "tiny.onnx"
    result = runner.invoke(main, ["model", "export", "--model", str(tiny_checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    direct = runner.invoke(main, ["classify", str(sample_photos[0]), "--model", str(tiny_checkpoint), "--json"])
    onnx = runner.invoke(main, ["classify", str(sample_photos[0]), "--model", f"onnx:{out}", "--json"])
    assert onnx.exit_code == 0, onnx.output
    a, b = json.loads(direct.output), json.loads(onnx.output)
    assert b["unsafe_score"] == pytest.approx(a["unsafe_score"], abs=1e-4)
    assert (b["model"], b["model_version"]) == (a["model"], a["model_version"])

    info = runner.invoke(main, ["model", "info", "--model", f"onnx:{out}"])
    assert json.loads(info.output)["backend"] == "onnx"

    bad = runner.invoke(main, ["model", "export", "--model", str(tiny_checkpoint), "--out", str(out), "--format",
                               "torchscript", "--int8"])
    assert bad.exit_code == 2 and "--int8 needs --format onnx" in bad.output
