"""Feature cache, trainable-parameter selection, comparison and data-split plumbing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitguard.errors import ConfigError
from vitguard.finetune.cache import FeatureCache, model_cache_key
from vitguard.finetune.full import select_trainable
from vitguard.finetune.report import compare_metrics, match_labels, resolve_unsafe
from vitguard.finetune.run import load_split
from vitguard.model import create_timm_model
from vitguard.settings import PolicySettings


def test_feature_cache_round_trip_and_model_keys(tmp_path: Path) -> None:
    key = model_cache_key({"name": "dir:m", "version": "abc", "input_size": [3, 64, 64]})
    assert key != model_cache_key({"name": "dir:m", "version": "abd", "input_size": [3, 64, 64]})
    assert key == model_cache_key({"input_size": [3, 64, 64], "version": "abc", "name": "dir:m"})
    cache = FeatureCache(tmp_path, key)
    vectors = {f"{i:064x}": np.full(4, i, dtype=np.float32) for i in range(3)}
    cache.put_many(vectors.items())
    cache.save()
    again = FeatureCache(tmp_path, key)
    assert len(again) == 3
    np.testing.assert_array_equal(again.get(f"{2:064x}"), vectors[f"{2:064x}"])
    assert FeatureCache(tmp_path, "other-model").get(f"{2:064x}") is None


def test_corrupt_feature_cache_starts_over(tmp_path: Path) -> None:
    (tmp_path / "m.npz").write_bytes(b"truncated")
    cache = FeatureCache(tmp_path, "m")
    assert len(cache) == 0
    cache.put_many([("a" * 64, np.ones(2, np.float32))])
    cache.save()
    assert len(FeatureCache(tmp_path, "m")) == 1


def test_select_trainable_counts_blocks_from_the_output_end() -> None:
    module = create_timm_model("vit_tiny_patch16_384", num_classes=3, model_args={"depth": 3, "img_size": 32})
    names = {name for name, _ in module.named_parameters()}
    head = select_trainable(module, 0)
    assert head == {"head.weight", "head.bias"}
    last = select_trainable(module, 1) - head
    assert last and all(n.startswith(("blocks.2.", "norm.")) for n in last)
    assert {n for n in select_trainable(module, 2) - head if n.startswith("blocks.")} == {
        n for n in names if n.startswith(("blocks.1.", "blocks.2."))
    }
    assert select_trainable(module, None) == names
    assert select_trainable(module, 99) == names  # more blocks than there are: everything


def test_unsafe_labels_match_case_insensitively_and_fall_back_to_the_policy() -> None:
    assert match_labels(["NSFW", "SFW", "art"], ["nsfw"]) == ("NSFW",)
    policy = PolicySettings(unsafe_labels=("NSFW",))
    # data says "nudity" is unsafe; a model without that class uses the policy's unsafe classes
    unsafe = resolve_unsafe(["nudity", "safe"], ["SFW", "NSFW"], ["nudity"], policy)
    assert (unsafe.data, unsafe.model) == (("nudity",), ("NSFW",))
    with pytest.raises(ConfigError, match="pass --unsafe-label"):
        resolve_unsafe(["cats", "dogs"], ["cats", "dogs"], ["NSFW"], policy)


def _evaluation(name: str, accuracy: float | None, auc: float, recall: float, reached: bool) -> dict:
    return {
        "model": {"name": name},
        "classes": None if accuracy is None else {"accuracy": accuracy, "balanced_accuracy": accuracy, "macro_f1": 0.5},
        "moderation": {
            "roc_auc": auc,
            "average_precision": 0.7,
            "at_policy_threshold": {"f1": 0.5, "precision": 0.5, "recall": 0.5},
            "chosen_threshold": {
                "target": "precision",
                "target_value": 0.95,
                "reached": reached,
                "precision": 0.96,
                "recall": recall,
            },
        },
    }


def test_comparison_names_the_better_model_per_metric() -> None:
    rows = compare_metrics(_evaluation("a", 0.9, 0.80, 0.7, True), _evaluation("b", None, 0.85, 0.9, False))
    better = {row["metric"]: row["better"] for row in rows}
    assert better["accuracy"] == "n/a"  # b has no class view: not a win for a (issue 30: it was)
    assert better["roc_auc"] == "b"
    assert better["average_precision"] == "tie"
    assert better["recall_at_precision_0.95"] == "a"  # b never reaches the target precision: 0 recall there
    assert {r["metric"]: r["b"] for r in rows}["recall_at_precision_0.95"] == 0.0
    same = compare_metrics(_evaluation("m", 0.9, 0.8, 0.7, True), _evaluation("m", 0.8, 0.8, 0.7, True))
    assert {row["better"] for row in same} >= {"m (1)", "tie"}


def test_explicit_validation_folder(make_dataset, tmp_path: Path) -> None:
    make_dataset(tmp_path / "train", ("NSFW", "SFW"), 6)
    make_dataset(tmp_path / "val", ("NSFW", "SFW"), 2, seed=9)
    split = load_split(tmp_path / "train", val_dir=tmp_path / "val")
    assert split.train.counts() == {"NSFW": 6, "SFW": 6}
    assert split.val.counts() == {"NSFW": 2, "SFW": 2}
    assert split.source == {"train_dir": str(tmp_path / "train"), "val_dir": str(tmp_path / "val")}
