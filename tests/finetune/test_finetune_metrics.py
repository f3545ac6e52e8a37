from __future__ import annotations

import numpy as np
import pytest

from vitguard.finetune.metrics import (
    average_precision,
    choose_threshold,
    class_metrics,
    moderation_metrics,
    pr_curve,
    roc_auc,
)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    """The definition: P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = s[y], s[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    score = np.round(rng.random(200) * 0.5 + 0.4 * y, 1)  # rounded: many ties
    assert roc_auc(y, score) == pytest.approx(_pairwise_auc(y, score))


def test_roc_auc_is_none_with_one_class() -> None:
    assert roc_auc(np.ones(4, dtype=bool), np.arange(4.0)) is None


def test_average_precision_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # positives at ranks 1, 3, 6: precision 1, 2/3, 3/6, each gaining recall 1/3
    assert average_precision(y, score) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    precision, recall, thresholds = pr_curve(y, score)
    assert thresholds.tolist() == score.tolist()
    assert recall[-1] == 1.0


def test_threshold_for_target_precision_maximises_recall() -> None:
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    score = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1])
    choice = choose_threshold(y, score, target_precision=0.75)
    assert choice is not None and choice.reached
    # at 0.7: 3 of 4 flagged are unsafe (0.75), recall 3/4; lower thresholds drop below 0.75
    assert (choice.threshold, choice.precision, choice.recall) == (0.7, 0.75, 0.75)
    flagged = score >= choice.threshold
    assert (flagged & y).sum() / flagged.sum() >= 0.75


def test_threshold_for_target_recall_maximises_precision() -> None:
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0], dtype=bool)
    score = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1])
    choice = choose_threshold(y, score, target_recall=1.0)
    assert choice is not None and choice.reached
    assert (choice.threshold, choice.recall) == (0.4, 1.0)
    assert choice.precision == pytest.approx(4 / 7)


def test_unreachable_target_says_so() -> None:
    y = np.array([0, 1, 0, 1], dtype=bool)
    score = np.array([0.9, 0.8, 0.7, 0.6])
    choice = choose_threshold(y, score, target_precision=0.99)
    assert choice is not None and not choice.reached


def test_class_metrics_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1, 0])
    probs = np.eye(3)[pred] * 0.8 + 0.2 / 3
    m = class_metrics(y, probs, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_moderation_metrics_uses_the_pipelines_threshold_rule() -> None:
    y = np.array([1, 0, 1, 0], dtype=bool)
    score = np.array([0.5, 0.49, 0.8, 0.1])
    m = moderation_metrics(y, score, policy_threshold=0.5)
    # score == threshold is unsafe, as in vitguard.policy.decide
    assert m["at_policy_threshold"]["recall"] == 1.0
    assert m["at_policy_threshold"]["precision"] == 1.0
    assert m["roc_auc"] == 1.0
    assert m["chosen_threshold"]["target"] == "precision"
