"""Loading the Marqo/timm checkpoint layout through the public factory, and writing it back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vitguard.errors import ModelLoadError
from vitguard.model import (
    Classifier,
    create_timm_model,
    load_classifier,
    load_torch_model,
    read_checkpoint_config,
    save_checkpoint,
)
from vitguard.model.torch_backend import TorchClassifier
from vitguard.testing.models import make_tiny_checkpoint


def _batch(classifier: Classifier, photos: list[Path]) -> np.ndarray:
    return np.stack([classifier.prepare(p.read_bytes()) for p in photos])


def test_marqo_layout_on_disk(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == ["config.json", "model.safetensors"]
    assert config["architecture"] == "vit_tiny_patch16_384"
    assert config["num_classes"] == 2
    assert config["num_features"] == 192
    assert config["label_names"] == ["NSFW", "SFW"]
    cfg = config["pretrained_cfg"]
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.5, 0.5, 0.5]
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 1.0
    assert cfg["input_size"] == [3, 64, 64]
    # timm's export (save_for_hf) records every constructor argument it knows; ours are among them
    args = config["model_args"]
    assert args["depth"] == 2 and args["img_size"] in (64, [64, 64]) and args.get("num_classes", 2) == 2


def test_factory_loads_checkpoint_with_marqo_facts(tiny_checkpoint: Path, sample_photos: list[Path]) -> None:
    classifier = load_classifier(str(tiny_checkpoint))
    assert isinstance(classifier, Classifier)
    info = classifier.info
    assert info.labels == ("NSFW", "SFW")
    assert info.embedding_dim == 192
    assert info.input_size == (3, 64, 64)
    assert info.backend == "torch" and not info.untrained
    assert len(info.version) == 12
    predictions = classifier.classify(sample_photos[:3])
    assert len(predictions) == 3
    for prediction in predictions:
        assert list(prediction.scores) == ["NSFW", "SFW"]
        assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert prediction.embedding.shape == (192,) and prediction.embedding.dtype == np.float32
        assert float(np.linalg.norm(prediction.embedding)) == pytest.approx(1.0, abs=1e-5)
    # different photos, different answers: the head is not degenerate
    assert len({round(p.scores["NSFW"], 4) for p in predictions}) == 3


def test_probabilities_and_embedding_equal_timm_forward(
    tiny_classifier: TorchClassifier, sample_photos: list[Path]
) -> None:
    batch = _batch(tiny_classifier, sample_photos[:4])
    predictions = tiny_classifier.predict(batch)
    module = tiny_classifier.module
    with torch.no_grad():
        x = torch.from_numpy(batch)
        expected = torch.softmax(module(x), dim=1).numpy()  # timm's own forward
        pre_logits = module.forward_head(module.forward_features(x), pre_logits=True).numpy()
    got = np.array([[p.scores[label] for label in tiny_classifier.info.labels] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    unit = pre_logits / np.linalg.norm(pre_logits, axis=1, keepdims=True)
    np.testing.assert_allclose(np.stack([p.embedding for p in predictions]), unit, atol=1e-6)


def test_label_order_follows_config(tmp_path: Path, sample_photos: list[Path]) -> None:
    """Same weights, label names reversed in config.json: the scores swap names, not values."""
    original = load_classifier(str(make_tiny_checkpoint(tmp_path / "a", seed=3)))
    swapped_dir = make_tiny_checkpoint(tmp_path / "b", labels=("SFW", "NSFW"), seed=3)
    swapped = load_classifier(str(swapped_dir))
    assert swapped.info.labels == ("SFW", "NSFW")
    a = original.classify_one(sample_photos[0]).scores
    b = swapped.classify_one(sample_photos[0]).scores
    assert b["SFW"] == pytest.approx(a["NSFW"], abs=1e-6)  # index 0 whatever it is called
    assert list(b) == ["SFW", "NSFW"]


def test_multiclass_head(tmp_path: Path, sample_photos: list[Path]) -> None:
    labels = ("drawing", "hentai", "neutral", "porn", "sexy")
    classifier = load_classifier(str(make_tiny_checkpoint(tmp_path / "m", labels=labels)))
    prediction = classifier.classify_one(sample_photos[1])
    assert tuple(prediction.scores) == labels
    assert sum(prediction.scores.values()) == pytest.approx(1.0, abs=1e-6)


def test_save_checkpoint_round_trip(tmp_path: Path, sample_photos: list[Path]) -> None:
    module, info, data_config = load_torch_model("timm:vit_tiny_patch16_384")
    assert info.untrained and info.embedding_dim == module.num_features == 192
    assert data_config["input_size"] == (3, 384, 384)
    small = create_timm_model("vit_tiny_patch16_384", num_classes=3, model_args={"depth": 1, "img_size": 32})
    cfg = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.4] * 3, "std": [0.3] * 3, "crop_pct": 0.9}
    out = save_checkpoint(
        small, tmp_path / "ft", architecture="vit_tiny_patch16_384", label_names=["a", "b", "c"],
        pretrained_cfg=cfg, model_args={"depth": 1, "img_size": 32},
    )
    loaded, info2, data2 = load_torch_model(str(out))
    assert info2.labels == ("a", "b", "c") and info2.input_size == (3, 32, 32)
    assert data2["interpolation"] == "bilinear" and data2["crop_pct"] == 0.9 and tuple(data2["mean"]) == (0.4,) * 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x))
    args = read_checkpoint_config(out).model_args  # timm's export records every constructor argument it knows
    assert args["depth"] == 1 and args["img_size"] in (32, [32, 32])


def test_random_timm_spec_is_flagged_and_deterministic() -> None:
    a, info, _ = load_torch_model("timm:vit_tiny_patch16_384")
    b, _, _ = load_torch_model("timm:vit_tiny_patch16_384")
    assert info.untrained and info.version == "random-seed0" and info.name == "timm:vit_tiny_patch16_384"
    torch.testing.assert_close(a.state_dict()["head.weight"], b.state_dict()["head.weight"])


# --- failures: one clear line saying what was expected ------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _error(spec: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_classifier(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_directory_and_files(tmp_path: Path, tiny_checkpoint: Path) -> None:
    assert "expected a checkpoint directory" in _error(f"dir:{tmp_path / 'nope'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in _error(str(empty))
    no_weights = _copy(tiny_checkpoint, tmp_path / "nw")
    (no_weights / "model.safetensors").unlink()
    (no_weights / "pytorch_model.bin").write_bytes(b"pickle")
    message = _error(str(no_weights))
    assert "model.safetensors" in message and "never pickle" in message


def test_corrupt_weights(tmp_path: Path, tiny_checkpoint: Path) -> None:
    broken = _copy(tiny_checkpoint, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "expected a valid safetensors file" in _error(str(broken))
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "expected a valid safetensors file" in _error(str(broken))


def test_corrupt_config(tmp_path: Path, tiny_checkpoint: Path) -> None:
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    (bad / "config.json").write_text("{not json")
    assert "expected a JSON object" in _error(str(bad))
    (bad / "config.json").write_text(json.dumps({"num_classes": 2}))
    assert "'architecture' and 'pretrained_cfg'" in _error(str(bad))


def test_mismatched_checkpoints(tmp_path: Path, tiny_checkpoint: Path) -> None:
    base = json.loads((tiny_checkpoint / "config.json").read_text())

    def variant(name: str, **changes: object) -> str:
        directory = _copy(tiny_checkpoint, tmp_path / name)
        (directory / "config.json").write_text(json.dumps({**base, **changes}))
        return _error(str(directory))

    message = variant("classes", num_classes=3, label_names=["a", "b", "c"])
    assert "head.weight" in message and "[2, 192]" in message and "expected [3, 192]" in message
    assert "missing tensors" in variant("deeper", model_args={"depth": 3, "img_size": 64})
    assert "label_names" in variant("labels", label_names=["NSFW"])
    assert "unknown timm architecture" in variant("arch", architecture="no_such_net")
    assert "cannot build" in variant("args", model_args={"no_such_arg": 1})


def test_unknown_spec() -> None:
    assert "is not one of" in _error("marqo")
    assert "use hf-hub:ORG/NAME" in _error("Marqo/nsfw-image-detection-384")
    assert "names nothing" in _error("onnx:")


def test_a_checkpoint_carries_its_untrained_flag_and_unsafe_classes_to_the_worker_policy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 30: a probe trained on a random backbone was reported ``untrained: false``, and after fine-tuning
    the unsafe labels had to be set by hand."""
    from vitguard.policy import resolve_unsafe_labels
    from vitguard.settings import load_settings

    small = create_timm_model("vit_tiny_patch16_384", num_classes=3, model_args={"depth": 1, "img_size": 32})
    cfg = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    out = save_checkpoint(small, tmp_path / "ft", architecture="vit_tiny_patch16_384",
                          label_names=["nudity", "violence", "fine"], pretrained_cfg=cfg,
                          model_args={"depth": 1, "img_size": 32}, untrained=True,
                          unsafe_labels=["nudity", "violence"])
    _, info, _ = load_torch_model(str(out))
    assert info.untrained and info.unsafe_labels == ("nudity", "violence")
    assert resolve_unsafe_labels(info.labels, load_settings().policy, info.unsafe_labels) == ("nudity", "violence")
    monkeypatch.setenv("VITGUARD_POLICY_UNSAFE_LABELS", "violence")  # the operator's word wins
    assert resolve_unsafe_labels(info.labels, load_settings().policy, info.unsafe_labels) == ("violence",)
    with pytest.raises(ValueError, match="not among the label_names"):
        save_checkpoint(small, tmp_path / "bad", architecture="vit_tiny_patch16_384", label_names=["a", "b", "c"],
                        pretrained_cfg=cfg, unsafe_labels=["NSFW"])


@pytest.mark.parametrize("block", [[1], {"untrained": "yes"}, {"unsafe_labels": ["absent"]}, {"unsafe_labels": "a"}])
def test_a_bad_vitguard_block_in_config_json_is_refused_with_the_file_named(
        tmp_path: Path, tiny_checkpoint: Path, block: object) -> None:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "vitguard": block}))
    with pytest.raises(ModelLoadError, match="config.json"):
        read_checkpoint_config(copy)
