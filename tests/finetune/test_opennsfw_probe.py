"""Fine-tuning offline on a real backbone: a linear probe on the bundled open_nsfw network's pooled features
(``vitguard finetune --model opennsfw``), written as a head directory that loads like any checkpoint and
classifies exactly as it did in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vitguard.cli import main
from vitguard.errors import ModelLoadError
from vitguard.finetune.errors import NoTrainableHeadError
from vitguard.finetune.run import load_split, run_finetune
from vitguard.model import load_classifier
from vitguard.model.opennsfw_head import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME

pytestmark = pytest.mark.slow  # extracts open_nsfw features and trains a head


@pytest.fixture(scope="module")
def tuned(binary_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("opennsfw") / "head"
    result = run_finetune(load_split(binary_data), out, model="opennsfw", progress=False)
    return out, result


def test_a_probe_on_open_nsfw_writes_a_head_that_loads_and_classifies_as_trained(tuned: tuple[Path, object]) -> None:
    out, result = tuned
    assert (out / HEAD_CONFIG_NAME).is_file() and (out / HEAD_WEIGHTS_NAME).is_file()
    assert not (out / "model.safetensors").exists()  # no torch network: only the head
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["method"] == "linear_probe" and metrics["training"]["device"] == "cpu"
    assert metrics["classes"]["accuracy"] >= 0.95  # red squares against blue stripes, on held-out images

    classifier = load_classifier(str(out))
    info = classifier.info
    assert (info.name, info.backend, info.labels, info.unsafe_labels, info.untrained) == (
        "dir:head", "onnx", ("NSFW", "SFW"), ("NSFW",), False)
    assert info.embedding_dim == 1024
    # the loaded head gives the probabilities the trainer measured, image for image
    paths = result.val_paths  # type: ignore[attr-defined]
    batch = np.stack([classifier.prepare(Path(p).read_bytes()) for p in paths])
    loaded = np.array([[p.scores[label] for label in info.labels] for p in classifier.predict(batch)])
    np.testing.assert_allclose(loaded, result.val_probs, atol=1e-4)  # type: ignore[attr-defined]
    # the embedding is open_nsfw's own: the same vector as the bundled model gives
    bundled = load_classifier("opennsfw").predict(batch[:2])
    np.testing.assert_allclose([p.embedding for p in classifier.predict(batch[:2])], [p.embedding for p in bundled],
                               atol=1e-5)


def test_model_info_reports_the_head(tuned: tuple[Path, object]) -> None:
    out, _ = tuned
    shown = CliRunner().invoke(main, ["model", "info", "--model", str(out)], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert '"untrained": false' in shown.output and '"backend": "onnx"' in shown.output, shown.output


def test_a_head_of_another_open_nsfw_build_or_a_broken_one_is_refused_in_one_line(
    tuned: tuple[Path, object], tmp_path: Path
) -> None:
    out, _ = tuned
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((out / HEAD_CONFIG_NAME).read_text())
    (other / HEAD_CONFIG_NAME).write_text(json.dumps({**config, "base_version": "0123456789ab"}))
    (other / HEAD_WEIGHTS_NAME).write_bytes((out / HEAD_WEIGHTS_NAME).read_bytes())
    with pytest.raises(ModelLoadError, match="trained on open_nsfw 0123456789ab"):
        load_classifier(str(other))
    (other / HEAD_WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=HEAD_WEIGHTS_NAME):
        load_classifier(str(other))
    (other / HEAD_CONFIG_NAME).write_text("{")
    with pytest.raises(ModelLoadError, match=HEAD_CONFIG_NAME):
        load_classifier(str(other))


def test_open_nsfw_trains_only_a_probe(binary_data: Path, tmp_path: Path) -> None:
    with pytest.raises(NoTrainableHeadError, match="--method probe"):
        run_finetune(load_split(binary_data), tmp_path / "o", model="opennsfw", method="full", progress=False)


def test_the_checkpoints_unsafe_class_is_what_classify_calls_unsafe(make_dataset, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A head whose unsafe class the policy does not name (``art``): ``vitguard classify`` takes the
    checkpoint's (the policy's default, NSFW, is not a label of this model)."""
    monkeypatch.delenv("VITGUARD_POLICY_UNSAFE_LABELS", raising=False)
    data = make_dataset(tmp_path / "d", ("art", "SFW"), 12, size=96, seed=3)
    out = tmp_path / "art-head"
    run_finetune(load_split(data), out, model="opennsfw", unsafe_labels=["art"], progress=False)
    shown = CliRunner().invoke(main, ["classify", "--model", str(out), "--json", str(data / "art" / "000.jpg"),
                                      str(data / "SFW" / "000.jpg")], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    answers = [json.loads(line) for line in shown.stdout.splitlines() if line.startswith("{")]
    assert [a["label"] for a in answers] == ["unsafe", "safe"], answers
