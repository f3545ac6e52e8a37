"""Fine-tuning end to end on generated images and a tiny generated ViT checkpoint, on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitguard.finetune.full import FullConfig
from vitguard.finetune.probe import ProbeConfig
from vitguard.finetune.run import FinetuneResult, load_split, run_finetune
from vitguard.model import load_classifier, load_torch_classifier
from vitguard.pipeline.core import build_verdict, moderate_batch
from vitguard.policy import resolve_unsafe_labels
from vitguard.schemas.events import ImageEvent, Timings
from vitguard.settings import ModelSettings, PolicySettings
from vitguard.testing.models import make_tiny_checkpoint

pytestmark = pytest.mark.slow  # trains models end to end

CPU = ModelSettings(device="cpu")


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block, 64 px vit_tiny_patch16_384 in the Marqo layout (labels NSFW/SFW), random weights."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base"), seed=3)


@pytest.fixture(scope="module")
def probe_run(
    three_class_data: Path, base_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FinetuneResult, Path]:
    cache = tmp_path_factory.mktemp("cache")
    split = load_split(three_class_data, val_fraction=0.3, seed=0)
    result = run_finetune(
        split,
        tmp_path_factory.mktemp("probe") / "out",
        model=str(base_checkpoint),
        probe=ProbeConfig(seed=0),
        model_settings=CPU,
        cache_dir=cache,
        batch_size=16,
        progress=False,
    )
    return result, cache


def _probs(classifier, paths: list[Path]) -> np.ndarray:
    labels = classifier.info.labels
    return np.array([[p.scores[label] for label in labels] for p in classifier.classify(paths)])


def test_linear_probe_reaches_95_percent_on_held_out_images(probe_run) -> None:
    result, _ = probe_run
    metrics = result.metrics
    assert metrics["n_images"] == len(result.val_paths) >= 15
    assert metrics["classes"]["accuracy"] >= 0.95
    assert set(metrics["classes"]["per_class"]) == {"NSFW", "SFW", "art"}
    # the probe's validation accuracy comes from the trainer's own probabilities
    y = np.array([["NSFW", "SFW", "art"].index(Path(p).parent.name) for p in result.val_paths])
    assert (result.val_probs.argmax(axis=1) == y).mean() == metrics["classes"]["accuracy"]


def test_checkpoint_loads_through_the_factory_and_classifies_like_the_trainer(probe_run) -> None:
    result, _ = probe_run
    classifier = load_classifier(str(result.out_dir), settings=CPU)
    assert classifier.info.labels == ("NSFW", "SFW", "art")
    assert classifier.info.embedding_dim == 192
    assert classifier.info.version == result.metrics["model"]["version"]
    probs = _probs(classifier, result.val_paths)
    np.testing.assert_allclose(probs, result.val_probs, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=1), result.val_probs.argmax(axis=1))
    # and the file the trainer wrote says the same
    lines = [json.loads(line) for line in (result.out_dir / "val_predictions.jsonl").read_text().splitlines()]
    assert [Path(line["path"]) for line in lines] == result.val_paths
    np.testing.assert_allclose([[r["scores"][k] for k in ("NSFW", "SFW", "art")] for r in lines], probs, atol=1e-5)


def test_three_class_head_flows_through_the_pipelines_verdict(probe_run) -> None:
    result, _ = probe_run
    classifier = load_classifier(str(result.out_dir), settings=CPU)
    unsafe = resolve_unsafe_labels(classifier.info.labels, PolicySettings(unsafe_labels=("NSFW",)))
    predictions = classifier.classify(result.val_paths)
    decisions = moderate_batch(predictions, unsafe, 0.5)
    for path, prediction, decision in zip(result.val_paths, predictions, decisions, strict=True):
        assert set(prediction.scores) == {"NSFW", "SFW", "art"}
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert decision.unsafe_score == pytest.approx(prediction.scores["NSFW"])
        expected = "unsafe" if path.parent.name == "NSFW" else "safe"
        assert decision.label == expected
        verdict = build_verdict(
            ImageEvent(content_id=path.stem, image_ref=path.as_uri()),
            info=classifier.info,
            prediction=prediction,
            decision=decision,
            sha256=None,
            timings=Timings(),
            collection=None,
        )
        assert set(verdict.scores) == {"NSFW", "SFW", "art"}
        assert verdict.top_class == path.parent.name


def test_outputs_metrics_and_plots(probe_run) -> None:
    result, _ = probe_run
    out = result.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["labels"] == ["NSFW", "SFW", "art"]
    assert metrics["data"]["imbalance_ratio"] == pytest.approx(2.0, rel=0.2)  # 24 vs 12 before the split
    assert metrics["moderation"]["unsafe_data_labels"] == ["NSFW"]
    assert metrics["moderation"]["roc_auc"] >= 0.95
    chosen = metrics["moderation"]["chosen_threshold"]
    assert chosen["target"] == "precision" and chosen["reached"] and chosen["precision"] >= 0.95
    assert len(metrics["classes"]["confusion_matrix"]) == 3
    history = metrics["training"]["history"]
    assert history["best_epoch"] >= 1 and len(history["val_loss"]) == history["epochs_run"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_384"
    assert config["num_classes"] == 3 and config["label_names"] == ["NSFW", "SFW", "art"]
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    args = config["model_args"]  # timm's export records every constructor argument it knows
    assert args["depth"] == 2 and args["img_size"] in (64, [64, 64]) and args.get("num_classes", 3) == 3
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {
        "loss_curves.png",
        "roc_pr.png",
        "confusion_matrix.png",
        "score_histograms.png",
        "unsafe_score_histogram.png",
    }
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG"
            image.load()
    assert "accuracy" in (out / "report.md").read_text()


def test_feature_cache_makes_a_second_run_free_and_identical(probe_run, three_class_data, base_checkpoint, tmp_path):
    first, cache = probe_run
    assert len(list(cache.glob("*.npz"))) == 1
    split = load_split(three_class_data, val_fraction=0.3, seed=0)
    again = run_finetune(
        split, tmp_path / "again", model=str(base_checkpoint), model_settings=CPU, cache_dir=cache, progress=False
    )
    n = len(split.train.items) + len(split.val.items)
    assert again.metrics["training"]["feature_cache"]["hits"] == n
    np.testing.assert_array_equal(again.val_probs, first.val_probs)
    assert again.metrics["model"]["version"] == first.metrics["model"]["version"]  # same weights, byte for byte


def test_unreadable_images_are_skipped_and_counted(make_dataset, base_checkpoint, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", ("NSFW", "SFW"), 8, seed=4)
    (data / "NSFW" / "truncated.jpg").write_bytes((data / "NSFW" / "000.jpg").read_bytes()[:200])
    (data / "SFW" / "garbage.png").write_bytes(b"definitely not a png")
    split = load_split(data, val_fraction=0.25)
    result = run_finetune(
        split, tmp_path / "out", model=str(base_checkpoint), model_settings=CPU, probe=ProbeConfig(epochs=20),
        progress=False,
    )  # fmt: skip
    skipped = result.metrics["data"]["skipped"]
    assert skipped["count"] == 2
    assert set(skipped["by_reason"]) == {"not_an_image"}
    assert sum(result.metrics["data"]["train_counts"].values()) + result.metrics["n_images"] == 16


def test_full_finetuning_of_the_last_block_runs_end_to_end(binary_data, base_checkpoint, tmp_path: Path) -> None:
    split = load_split(binary_data, val_fraction=0.25)
    config = FullConfig(unfreeze=1, epochs=2, batch_size=8, max_steps_per_epoch=2, warmup_epochs=0.5, seed=1)
    result = run_finetune(
        split, tmp_path / "full", model=str(base_checkpoint), method="full", full=config, model_settings=CPU,
        progress=False,
    )  # fmt: skip
    training = result.metrics["training"]
    assert training["history"]["epochs_run"] == 2
    assert 0 < training["trainable_parameters"] < training["total_parameters"]

    # frozen layers are the base model's, byte for byte; the head and the last block changed
    base = load_torch_classifier(str(base_checkpoint), settings=CPU).module.state_dict()
    tuned = load_torch_classifier(str(result.out_dir), settings=CPU).module.state_dict()
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.attn.qkv.weight"):
        assert tuned[name].equal(base[name]), name
    assert not tuned["blocks.1.attn.qkv.weight"].equal(base["blocks.1.attn.qkv.weight"])
    assert not tuned["norm.weight"].equal(base["norm.weight"])

    classifier = load_classifier(str(result.out_dir), settings=CPU)
    assert classifier.info.labels == ("NSFW", "SFW")
    np.testing.assert_allclose(_probs(classifier, result.val_paths), result.val_probs, atol=1e-5)
    assert (result.out_dir / "plots" / "loss_curves.png").is_file()


def test_full_finetuning_is_deterministic_with_a_seed(binary_data, base_checkpoint, tmp_path: Path) -> None:
    split = load_split(binary_data, val_fraction=0.25)
    config = FullConfig(unfreeze=0, epochs=1, batch_size=8, max_steps_per_epoch=2, seed=5)
    runs = [
        run_finetune(
            split,
            tmp_path / name,
            model=str(base_checkpoint),
            method="full",
            full=config,
            model_settings=CPU,
            progress=False,
        )  # fmt: skip
        for name in ("a", "b")
    ]
    assert runs[0].metrics["training"]["history"] == runs[1].metrics["training"]["history"]
    assert (runs[0].out_dir / "model.safetensors").read_bytes() == (runs[1].out_dir / "model.safetensors").read_bytes()


@pytest.mark.gpu
def test_full_finetuning_with_mixed_precision_on_cuda(binary_data, base_checkpoint, tmp_path: Path) -> None:
    cuda = ModelSettings(device="cuda")
    split = load_split(binary_data, val_fraction=0.25)
    config = FullConfig(unfreeze=None, epochs=2, batch_size=8, max_steps_per_epoch=3, seed=1)
    result = run_finetune(
        split, tmp_path / "amp", model=str(base_checkpoint), method="full", full=config, model_settings=cuda,
        progress=False,
    )  # fmt: skip
    assert result.metrics["training"]["device"].startswith("cuda")
    assert all(np.isfinite(result.metrics["training"]["history"]["train_loss"]))
    # the checkpoint reproduces the trainer's probabilities under the classifier's own fp16 autocast
    classifier = load_classifier(str(result.out_dir), settings=cuda)
    np.testing.assert_allclose(_probs(classifier, result.val_paths), result.val_probs, atol=1e-3)
