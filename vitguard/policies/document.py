"""The policy document: what a moderation team writes (YAML or JSON), parsed and checked. Pure: no I/O.

A document names policies; each policy gives, per moderation category, tiers of ``threshold`` and
``action`` (the highest tier reached decides), and an optional review band. Tenants (and, within a tenant,
surfaces) are mapped to policies; everyone else gets ``default_policy``. ``categories`` maps the model's
labels to categories, so rules speak of categories and survive a model change. ``shadow`` pairs an active
policy with a candidate that is evaluated beside it on the live stream, with no effect but counts.

:func:`parse_document` refuses a document whole, with the line and the reason of the first problem; nothing
of a refused document is used.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from vitguard.errors import ConfigError

__all__ = [
    "ACTIONS",
    "BankRule",
    "FrameSampling",
    "NearDuplicateRule",
    "MAX_DOCUMENT_BYTES",
    "Policy",
    "PolicyDocument",
    "PolicyDocumentError",
    "ReviewBand",
    "TenantRoute",
    "Tier",
    "WaveRules",
    "parse_document",
]

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
"""A document larger than this is refused before it is parsed (100,000 tenants fit in well under it)."""

ACTIONS = ("allow", "review", "block")
"""The actions vitguard knows; any other action name is a custom action, passed through to the verdict."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]*$")]
"""A policy, category, tenant or surface name (the alphabet of the events' identifiers)."""

Action = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]

BankRule = Literal["force_unsafe", "flag_only", "ignore"]
"""What a policy makes of a hash bank's matches (a negative bank's: only ``ignore`` changes anything)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tier(_Strict):
    """One step of a category's rule: at or above ``threshold``, ``action``."""

    threshold: float = Field(ge=0, le=1, description="The category's score at or above which this tier applies.")
    action: Action = Field(
        description=(
            "allow, review (a review request; the item counts as unsafe until a reviewer decides), block, or a "
            "custom action name (e.g. age_gate, blur) passed through to the verdict. Severity: block > review > "
            "custom > allow; the most severe action reached across categories decides."
        )
    )


class ReviewBand(_Strict):
    """Scores in ``[low, high)`` of the deciding category go to human review (the model is unsure)."""

    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ReviewBand:
        if self.low > self.high:
            raise ValueError(f"review band low {self.low} is above high {self.high}")
        return self


class NearDuplicateRule(_Strict):
    """Which near-duplicate alerts a policy's items raise. Clusters are the fleet's (formed at
    VITGUARD_POLICY_NEAR_DUPLICATE_THRESHOLD); when a cluster is a wave for an item is its policy's ``waves``."""

    alert: bool = Field(True, description="False: this policy's items raise no near-duplicate alert.")
    min_similarity: float | None = Field(
        None, ge=0, le=1,
        description=(
            "Alert only when the closest match is at least this similar (above the fleet's "
            "VITGUARD_POLICY_NEAR_DUPLICATE_THRESHOLD, which forms the clusters)."
        ),
    )


class WaveRules(_Strict):
    """When a cluster is a wave for this policy's items. Counts are the fleet's: every item on the cluster within
    the window, whatever its policy. A field left out is the fleet's (``VITGUARD_POLICY_WAVE_*``)."""

    alert: bool = Field(True, description="False: this policy's items raise no wave alert (they are still counted).")
    threshold: int | None = Field(None, ge=2, le=1_000_000, description="Items on a cluster within the window.")
    window_s: int | None = Field(None, ge=1, le=7 * 86_400, description="The sliding window, in seconds.")
    cooldown_s: int | None = Field(
        None, ge=0, le=7 * 86_400,
        description="After this policy's wave alert on a cluster, its next ones are suppressed this long (0: never).",
    )


class FrameSampling(_Strict):
    """Which frames of an animation or a video are classified for this policy's items. A field left out is the
    fleet's (``VITGUARD_FRAMES_*``); the fleet's limits (source frames, pixels, duration) apply whatever this says."""

    max_frames: int | None = Field(None, ge=1, le=1024, description="Frames classified per item, at most.")
    video_fps: float | None = Field(None, gt=0, le=120, description="Video frames sampled per second.")
    video_sampling: Literal["rate", "keyframes"] | None = Field(
        None, description="rate: every frame decoded, sampled at video_fps; keyframes: key frames only.")


class Policy(_Strict):
    """What one surface's rules are."""

    description: str = Field("", max_length=1000)
    rules: dict[Name, list[Tier]] = Field(
        default_factory=dict,
        description="Per category, its tiers (any order). A category without rules is allowed whatever its score.",
    )
    review: ReviewBand | None = Field(None, description="The uncertainty band; none: no item is uncertain.")
    near_duplicates: NearDuplicateRule = Field(
        default_factory=NearDuplicateRule, description="Which near-duplicate alerts its items raise."
    )
    waves: WaveRules | None = Field(None, description="Its wave rule; none: the fleet's.")
    frames: FrameSampling | None = Field(None, description="Its frame sampling; none: the fleet's.")
    banks: dict[Name, BankRule] = Field(
        default_factory=dict,
        description=(
            "Per hash bank, what a match does for this policy: force_unsafe, flag_only (an alert, the model's "
            "label stands) or ignore (as if the bank did not exist). A bank not named acts as it was created."
        ),
    )

    @model_validator(mode="after")
    def _tiers(self) -> Policy:
        for category, tiers in self.rules.items():
            if not tiers:
                raise ValueError(f"category {category!r} has an empty rule: give at least one tier or leave it out")
            thresholds = [t.threshold for t in tiers]
            if len(set(thresholds)) != len(thresholds):
                raise ValueError(f"category {category!r} has two tiers at the same threshold")
        return self


class TenantRoute(_Strict):
    """A tenant's policy, and per surface (the event's ``surface``) an override."""

    policy: Name | None = Field(None, description="The tenant's policy; none: the default policy.")
    surfaces: dict[Name, Name] = Field(default_factory=dict, description="Surface name -> policy name.")


class PolicyDocument(_Strict):
    """The whole document, as published to the policies topic or written to VITGUARD_POLICY_FILE."""

    version: str = Field(
        min_length=1, max_length=64,
        description="The document's version, recorded in every verdict it decides (e.g. a date or a git commit).",
    )
    categories: dict[Name, list[Annotated[str, StringConstraints(min_length=1, max_length=128)]]] | None = Field(
        None,
        description=(
            "Category -> the model labels whose probabilities add up to its score (case-insensitive; labels the "
            "running model lacks are ignored). Default: one category, 'sexual', of the unsafe labels in force "
            "(VITGUARD_POLICY_UNSAFE_LABELS or the checkpoint's)."
        ),
    )
    default_policy: Name = Field(description="The policy of every tenant and surface not routed elsewhere.")
    policies: dict[Name, Policy] = Field(min_length=1, max_length=1000)
    tenants: dict[Name, Name | TenantRoute] = Field(
        default_factory=dict, max_length=200_000,
        description="Tenant -> policy name, or a route with per-surface policies.",
    )
    shadow: dict[Name, Name] = Field(
        default_factory=dict,
        description=(
            "Active policy -> candidate policy, evaluated beside it on the live stream with no effect except "
            "vitguard_policy_shadow_decisions_total."
        ),
    )

    @model_validator(mode="after")
    def _names_exist(self) -> PolicyDocument:
        known = self.policies.keys()

        def check(name: str | None, where: str) -> None:
            if name is not None and name not in known:
                raise ValueError(f"{where} names policy {name!r}, which the document does not define")

        check(self.default_policy, "default_policy")
        for tenant, route in self.tenants.items():
            if isinstance(route, str):
                check(route, f"tenant {tenant!r}")
                continue
            check(route.policy, f"tenant {tenant!r}")
            for surface, name in route.surfaces.items():
                check(name, f"tenant {tenant!r} surface {surface!r}")
        for active, candidate in self.shadow.items():
            check(active, "shadow")
            check(candidate, f"shadow of {active!r}")
            if active == candidate:
                raise ValueError(f"policy {active!r} shadows itself")
        if self.categories is not None:
            for name, policy in self.policies.items():
                unknown = sorted(set(policy.rules) - set(self.categories))
                if unknown:
                    raise ValueError(f"policy {name!r} has rules for undefined categories {unknown}")
        return self


class PolicyDocumentError(ConfigError):
    """A document that cannot be used: the line (when known) and the reason of the first problem."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(f"line {line}: {reason}" if line else reason)


def parse_document(text: str | bytes) -> PolicyDocument:
    """A checked :class:`PolicyDocument` from YAML or JSON text.

    Raises:
        PolicyDocumentError: too large, not YAML/JSON, anchors or aliases (refused: they let a few bytes
            expand into an enormous document), or not a valid policy document.
    """
    if len(text) > MAX_DOCUMENT_BYTES:
        raise PolicyDocumentError(f"document is {len(text)} bytes, over the limit of {MAX_DOCUMENT_BYTES}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyDocumentError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        root, data = _load(text)
    except RecursionError:
        raise PolicyDocumentError("the document is nested too deeply") from None
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if root is None:  # read as JSON: composed now, for the line
            root, _ = _load_yaml(text)
        line = _line_of(root, first["loc"]) if root is not None else None
        raise PolicyDocumentError(f"{where}: {message}" if where else message, line) from None


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML has it (a 100,000-tenant document in a second, not ten)."""


def _load(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's data (and its YAML node tree, None when it was read as JSON: no anchors there)."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            pass  # YAML's flow style starts with a brace too
        else:
            if isinstance(data, dict):
                return None, data
    root, data = _load_yaml(text)
    if root is None:
        raise PolicyDocumentError("the document is empty")
    if not isinstance(data, dict):
        raise PolicyDocumentError("the document must be a mapping (version, default_policy, policies, ...)",
                                  root.start_mark.line + 1)
    return root, data


def _load_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """Parse once: the node tree (aliases refused on it) and the data constructed from it."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            raise PolicyDocumentError(f"not YAML or JSON: {problem}", mark.line + 1 if mark else None) from None
        if root is None:
            return None, None
        _refuse_aliases(root)
        try:
            return root, loader.construct_document(root)
        except yaml.YAMLError as exc:  # e.g. an unhashable key
            mark = getattr(exc, "problem_mark", None)
            raise PolicyDocumentError(f"not a usable document: {getattr(exc, 'problem', exc)}",
                                      mark.line + 1 if mark else None) from None
    finally:
        loader.dispose()


def _refuse_aliases(root: yaml.Node) -> None:
    """Anchors and aliases make one node appear in several places: refused, with the alias's line."""
    seen: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise PolicyDocumentError("anchors and aliases (&, *) are not allowed", node.start_mark.line + 1)
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _line_of(root: yaml.Node, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the deepest node of ``loc`` (a pydantic error location) that the document has."""
    node = root
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1


def _child(node: yaml.Node, part: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value if not isinstance(value, yaml.ScalarNode) else key
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None
