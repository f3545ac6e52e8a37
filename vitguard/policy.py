"""The moderation policy: which classes are unsafe and where the threshold lies. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from vitguard.errors import ConfigError
from vitguard.settings import PolicySettings

__all__ = ["Decision", "decide", "resolve_unsafe_labels"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What a policy decided for one image (or frame) from the model's scores."""

    label: Literal["safe", "unsafe"]
    """``unsafe`` when the action is anything but ``allow``."""
    unsafe_score: float
    """The highest score among the categories the policy acts on (the review band applies to it)."""
    action: str = ""
    """allow, review, block or a custom action (empty from :func:`decide`, which knows no actions)."""
    categories: Mapping[str, float] = field(default_factory=dict)
    """Every category's score."""
    category: str | None = None
    """The category whose tier gave the action (None when allowed)."""
    policy: str | None = None
    """The policy that decided, and the version of its document."""
    policy_version: str | None = None


def resolve_unsafe_labels(model_labels: Sequence[str], policy: PolicySettings,
                          checkpoint_unsafe: Sequence[str] = ()) -> tuple[str, ...]:
    """The model's own label names that the policy counts as unsafe (matched case-insensitively).

    A checkpoint that names its unsafe classes (``vitguard finetune`` writes them) is taken at its word unless
    ``VITGUARD_POLICY_UNSAFE_LABELS`` is set: after fine-tuning, the labels need not be set by hand.

    Raises:
        ConfigError: when none of the policy's labels is a class of the model; checked at start-up so a
            policy/model mismatch never silently marks everything safe.
    """
    if checkpoint_unsafe and "unsafe_labels" not in policy.model_fields_set:
        return tuple(label for label in model_labels if label in set(checkpoint_unsafe))
    wanted = {label.casefold() for label in policy.unsafe_labels}
    found = tuple(label for label in model_labels if label.casefold() in wanted)
    if not found:
        raise ConfigError(
            f"VITGUARD_POLICY_UNSAFE_LABELS={list(policy.unsafe_labels)} matches none of the model's classes "
            f"{list(model_labels)}; set it to the classes that count as unsafe"
        )
    return found


def decide(scores: Mapping[str, float], unsafe_labels: Sequence[str], threshold: float) -> Decision:
    """Sum the unsafe classes' probabilities and compare with the threshold."""
    unsafe_score = min(1.0, max(0.0, float(sum(scores.get(label, 0.0) for label in unsafe_labels))))
    return Decision("unsafe" if unsafe_score >= threshold else "safe", unsafe_score)
