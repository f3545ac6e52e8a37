"""Policy documents compiled for the hot path: one :class:`PolicyBook` per document version. Pure: no I/O.

Compiling resolves category labels against the running model's classes once, sorts each category's tiers
and turns tenant and surface routes into dictionaries, so that resolving an event's policy is one or two
dictionary lookups and deciding is a few additions and comparisons.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from vitguard.media.sampling import FrameLimits
from vitguard.policies.document import (
    BankRule,
    FrameSampling,
    NearDuplicateRule,
    Policy,
    PolicyDocument,
    PolicyDocumentError,
    ReviewBand,
    Tier,
    WaveRules,
)
from vitguard.policy import Decision
from vitguard.stores.interfaces import WaveRule

__all__ = [
    "BUILTIN_VERSION",
    "DEFAULT_CATEGORY",
    "CompiledPolicy",
    "PolicyBook",
    "builtin_book",
    "builtin_document",
    "compile_document",
    "describe",
    "severity",
    "threshold_policy",
]

DEFAULT_CATEGORY = "sexual"
"""The one category of a document that defines none: the unsafe labels in force."""

BUILTIN_VERSION = "builtin"
"""The version of the document made from the environment settings when no document is given."""

_SEVERITY = {"allow": 0, "review": 2, "block": 3}


def severity(action: str) -> int:
    """block 3 > review 2 > a custom action 1 > allow 0."""
    return _SEVERITY.get(action, 1)


@dataclass(frozen=True, slots=True)
class _Rule:
    category: str
    labels: tuple[str, ...]
    tiers: tuple[Tier, ...]
    """Highest threshold first."""
    enforced: bool
    """Some tier's action is not allow: the category counts toward the unsafe score."""


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy of one document version, ready to decide."""

    name: str
    version: str
    categories: tuple[tuple[str, tuple[str, ...]], ...]
    """Every category of the document and its labels among the model's classes."""
    rules: tuple[_Rule, ...]
    review: ReviewBand | None
    banks: Mapping[str, BankRule] = field(default_factory=dict)
    """Per bank, what its matches do under this policy (a bank not named: its own action)."""
    near_duplicates: NearDuplicateRule = field(default_factory=NearDuplicateRule)
    """Which near-duplicate alerts its items raise."""
    waves: WaveRules | None = None
    """Its wave rule, where it differs from the fleet's."""
    frames: FrameSampling | None = None
    """Its frame sampling, where it differs from the fleet's."""

    def wave_rule(self, fleet: WaveRule) -> WaveRule:
        """When a cluster is a wave for this policy's items: its own fields, the fleet's for the rest."""
        w = self.waves
        if w is None:
            return fleet
        return WaveRule(threshold=w.threshold or fleet.threshold, window_s=w.window_s or fleet.window_s,
                        cooldown_s=fleet.cooldown_s if w.cooldown_s is None else w.cooldown_s)

    @property
    def wave_alerts(self) -> bool:
        """Whether this policy's items raise wave alerts."""
        return self.waves is None or self.waves.alert

    def frame_limits(self, fleet: FrameLimits) -> FrameLimits:
        """The fleet's frame limits with this policy's sampling."""
        f = self.frames
        if f is None:
            return fleet
        return replace(fleet, max_frames=f.max_frames or fleet.max_frames, video_fps=f.video_fps or fleet.video_fps,
                       video_sampling=f.video_sampling or fleet.video_sampling)

    def alerts_on(self, best_similarity: float) -> bool:
        """Whether an item of this policy whose closest match is ``best_similarity`` raises its alert."""
        rule = self.near_duplicates
        return rule.alert and (rule.min_similarity is None or best_similarity >= rule.min_similarity)

    def decide(self, scores: Mapping[str, float]) -> Decision:
        """The policy's decision on one image's (or frame's) model scores."""
        by_category = {c: _clamp(sum(scores.get(label, 0.0) for label in labels)) for c, labels in self.categories}
        action, decisive, unsafe = "allow", None, 0.0
        for rule in self.rules:
            score = by_category[rule.category]
            if rule.enforced and score > unsafe:
                unsafe = score
            for tier in rule.tiers:
                if score >= tier.threshold:
                    if severity(tier.action) > severity(action):
                        action, decisive = tier.action, rule.category
                    break
        return Decision("safe" if action == "allow" else "unsafe", unsafe, action, by_category, decisive,
                        self.name, self.version)

    def uncertain(self, unsafe_score: float) -> bool:
        """Whether ``unsafe_score`` lies in this policy's review band."""
        return self.review is not None and self.review.low <= unsafe_score < self.review.high


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


@dataclass(frozen=True, slots=True)
class PolicyBook:
    """A compiled document: which policy judges an event, and which candidate shadows it."""

    version: str
    fingerprint: str
    """A digest of the document's content (two publications of one document have the same)."""
    default: CompiledPolicy
    policies: Mapping[str, CompiledPolicy]
    tenants: Mapping[str, CompiledPolicy]
    surfaces: Mapping[tuple[str, str], CompiledPolicy]
    shadows: Mapping[str, CompiledPolicy]
    longest_wave_window_s: int = 0
    """The longest wave window of its policies (0: none has its own): how long the counter keeps a cluster's items."""

    def resolve(self, tenant: str, surface: str | None = None) -> CompiledPolicy:
        """The policy for an event of ``tenant`` (on ``surface``): surface route, tenant route, or the default."""
        if surface is not None and self.surfaces:
            found = self.surfaces.get((tenant, surface))
            if found is not None:
                return found
        return self.tenants.get(tenant, self.default)

    def pick(self, tenant: str, surface: str | None = None, name: str | None = None) -> CompiledPolicy:
        """The policy named ``name`` when there is one (a request may ask for it), else :meth:`resolve`'s."""
        if name is not None:
            found = self.policies.get(name)
            if found is not None:
                return found
        return self.resolve(tenant, surface)

    def named(self, name: str | None) -> CompiledPolicy | None:
        return self.policies.get(name) if name is not None else None

    def shadow_of(self, policy: CompiledPolicy) -> CompiledPolicy | None:
        """The candidate evaluated beside ``policy``, if the document names one."""
        return self.shadows.get(policy.name) if self.shadows else None


def builtin_document(unsafe_labels: Sequence[str], threshold: float, review: ReviewBand | None) -> PolicyDocument:
    """The document that stands for the environment settings: one policy, ``default``, blocking the default
    category at ``threshold`` (what vitguard decided before policy documents existed)."""
    return PolicyDocument(
        version=BUILTIN_VERSION,
        categories={DEFAULT_CATEGORY: list(unsafe_labels)},
        default_policy="default",
        policies={"default": Policy(rules={DEFAULT_CATEGORY: [Tier(threshold=threshold, action="block")]},
                                    review=review)},
    )


def builtin_book(model_labels: Sequence[str], unsafe_labels: Sequence[str], threshold: float,
                 review: ReviewBand | None = None) -> PolicyBook:
    """The compiled :func:`builtin_document` for a model with classes ``model_labels``."""
    return compile_document(builtin_document(unsafe_labels, threshold, review), model_labels, unsafe_labels)


def threshold_policy(model_labels: Sequence[str], unsafe_labels: Sequence[str], threshold: float) -> CompiledPolicy:
    """The built-in policy at any ``threshold`` (above 1: nothing is blocked; a caller's explicit line, not a
    document's, so not held to a document's 0-1 range)."""
    labels = tuple(label for label in model_labels if label in set(unsafe_labels))
    tier = Tier.model_construct(threshold=threshold, action="block")
    return CompiledPolicy("threshold", BUILTIN_VERSION, ((DEFAULT_CATEGORY, labels),),
                          (_Rule(DEFAULT_CATEGORY, labels, (tier,), True),), None)


def compile_document(document: PolicyDocument, model_labels: Sequence[str],
                     default_unsafe_labels: Sequence[str]) -> PolicyBook:
    """Compile ``document`` for a model with classes ``model_labels``.

    Raises:
        PolicyDocumentError: a rule acts on a category none of whose labels the model has (it would allow
            everything without a word).
    """
    categories = _resolve_categories(document, model_labels, default_unsafe_labels)
    compiled = {name: _compile_policy(name, document.version, p, categories) for name, p in document.policies.items()}
    tenants: dict[str, CompiledPolicy] = {}
    surfaces: dict[tuple[str, str], CompiledPolicy] = {}
    for tenant, route in document.tenants.items():
        if isinstance(route, str):
            tenants[tenant] = compiled[route]
            continue
        if route.policy:  # else the default, as for a tenant not named
            tenants[tenant] = compiled[route.policy]
        for surface, name in route.surfaces.items():
            surfaces[(tenant, surface)] = compiled[name]
    return PolicyBook(
        version=document.version,
        fingerprint=hashlib.sha256(document.model_dump_json().encode()).hexdigest()[:16],
        default=compiled[document.default_policy],
        policies=compiled,
        tenants=tenants,
        surfaces=surfaces,
        shadows={active: compiled[candidate] for active, candidate in document.shadow.items()},
        longest_wave_window_s=max((p.waves.window_s or 0 for p in document.policies.values() if p.waves), default=0),
    )


def _resolve_categories(document: PolicyDocument, model_labels: Sequence[str],
                        default_unsafe_labels: Sequence[str]) -> dict[str, tuple[str, ...]]:
    wanted = document.categories if document.categories is not None else {DEFAULT_CATEGORY: default_unsafe_labels}
    out: dict[str, tuple[str, ...]] = {}
    for category, labels in wanted.items():
        folded = {label.casefold() for label in labels}
        out[category] = tuple(label for label in model_labels if label.casefold() in folded)
    used = {category for p in document.policies.values() for category in p.rules}
    for category in sorted(used):
        if category not in out:
            raise PolicyDocumentError(
                f"rules act on category {category!r}, which the document does not define (categories: "
                f"{sorted(out)})")
        if not out[category]:
            raise PolicyDocumentError(
                f"category {category!r} ({list(wanted[category])}) names none of the model's classes "
                f"{list(model_labels)}: its rules could never apply")
    return out


def _compile_policy(name: str, version: str, policy: Policy,
                    categories: Mapping[str, tuple[str, ...]]) -> CompiledPolicy:
    rules = tuple(
        _Rule(category, categories[category], tuple(sorted(tiers, key=lambda t: -t.threshold)),
              any(t.action != "allow" for t in tiers))
        for category, tiers in sorted(policy.rules.items())
    )
    return CompiledPolicy(name, version, tuple(sorted(categories.items())), rules, policy.review, dict(policy.banks),
                          policy.near_duplicates, policy.waves, policy.frames)


def describe(book: PolicyBook) -> dict[str, object]:
    """A short JSON-able summary of a compiled document (logs, ``vitguard policy check``)."""
    return {
        "version": book.version, "fingerprint": book.fingerprint, "default_policy": book.default.name,
        "policies": sorted(book.policies), "tenants": len(book.tenants), "surfaces": len(book.surfaces),
        "shadows": {a: c.name for a, c in book.shadows.items()},
        "categories": {c: list(labels) for c, labels in book.default.categories},
    }
