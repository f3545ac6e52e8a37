"""Back-testing a candidate policy document on verdicts already made. Pure: no I/O.

A verdict carries the model's scores for every class, so a candidate document can judge it again without the
image or the model: :class:`BackTest` takes verdicts (read from a replayed range of the verdicts topic by
``vitguard policy test``) and counts what the candidate would change against what was decided (or against
another document), by action transition, tenant and category, with a few examples of each transition.
Verdicts a hash bank decided are counted apart: a policy does not overrule a bank.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from vitguard.policies.compiled import PolicyBook
from vitguard.schemas.events import Verdict

__all__ = ["BackTest", "Change"]

_NONE = "(none)"


@dataclass(frozen=True, slots=True)
class Change:
    """One verdict whose action the candidate changes."""

    content_id: str
    tenant: str
    before: str
    after: str
    policy_before: str | None
    policy_after: str
    category: str
    scores: dict[str, float]


@dataclass
class BackTest:
    """Counts of what ``candidate`` changes on the verdicts fed to :meth:`add` (``against``: the document to
    compare with; None: what each verdict recorded)."""

    candidate: PolicyBook
    against: PolicyBook | None = None
    examples_per_change: int = 5
    read: int = 0
    judged: int = 0
    unreadable: int = 0
    bank_decided: int = 0
    changed: int = 0
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    labels: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)
    examples: dict[tuple[str, str], list[Change]] = field(default_factory=dict)

    def add_record(self, value: bytes | None) -> None:
        """A record of the verdicts topic (anything that is not a verdict is counted as unreadable)."""
        self.read += 1
        try:
            verdict = Verdict.model_validate_json(value or b"")
        except (ValidationError, ValueError):
            self.unreadable += 1
            return
        self.add(verdict, counted=True)

    def add(self, verdict: Verdict, *, counted: bool = False) -> None:
        if not counted:
            self.read += 1
        if verdict.label_source != "model":
            self.bank_decided += 1
            return
        self.judged += 1
        before_action, before_label, before_policy = self._before(verdict)
        after = self.candidate.resolve(verdict.tenant, verdict.surface).decide(verdict.scores)
        self.labels[(before_label, after.label)] += 1
        if after.action == before_action:
            return
        self.changed += 1
        key = (before_action, after.action)
        self.transitions[key] += 1
        self.by_tenant[verdict.tenant] += 1
        category = after.category or _top(after.categories)
        self.by_category[category] += 1
        shown = self.examples.setdefault(key, [])
        if len(shown) < self.examples_per_change:
            shown.append(Change(verdict.content_id, verdict.tenant, before_action, after.action, before_policy,
                                after.policy or "", category, dict(verdict.scores)))

    def _before(self, verdict: Verdict) -> tuple[str, str, str | None]:
        """What was decided (or what ``against`` decides): action, label and policy."""
        if self.against is not None:
            d = self.against.resolve(verdict.tenant, verdict.surface).decide(verdict.scores)
            return d.action, d.label, d.policy
        action = verdict.action or ("block" if verdict.label == "unsafe" else "allow")  # verdicts before 1.6
        return action, verdict.label, verdict.policy

    def report(self) -> dict[str, Any]:
        """The counts as JSON-able values (what ``vitguard policy test --json`` prints)."""
        return {
            "candidate_version": self.candidate.version,
            "against": self.against.version if self.against is not None else "recorded verdicts",
            "read": self.read, "judged": self.judged, "unreadable": self.unreadable,
            "bank_decided": self.bank_decided, "changed": self.changed,
            "labels": {f"{a}->{b}": n for (a, b), n in sorted(self.labels.items())},
            "actions": {f"{a}->{b}": n for (a, b), n in self.transitions.most_common()},
            "by_tenant": dict(self.by_tenant.most_common()),
            "by_category": dict(self.by_category.most_common()),
            "examples": {f"{a}->{b}": [_example(c) for c in changes] for (a, b), changes in self.examples.items()},
        }

    def lines(self) -> list[str]:
        """The report for a person."""
        r = self.report()
        out = [f"candidate {r['candidate_version']} against {r['against']}: {self.read} verdict(s) read, "
               f"{self.judged} judged, {self.changed} would change "
               f"({self.bank_decided} decided by a bank, {self.unreadable} unreadable)"]
        for (a, b), n in self.transitions.most_common():
            out.append(f"  {a:>10} -> {b:<10} {n:>8}")
            for c in self.examples.get((a, b), []):
                out.append(f"      e.g. {c.content_id} (tenant {c.tenant}, {c.category}: "
                           f"{', '.join(f'{k}={v:.3f}' for k, v in c.scores.items())})")
        if self.by_tenant:
            out.append("  by tenant: " + ", ".join(f"{t} {n}" for t, n in self.by_tenant.most_common(20)))
        if self.by_category:
            out.append("  by category: " + ", ".join(f"{c} {n}" for c, n in self.by_category.most_common()))
        return out


def _top(categories: Mapping[str, float]) -> str:
    """The highest-scoring category (what a change that no tier decided is filed under)."""
    return max(categories.items(), key=lambda kv: kv[1])[0] if categories else _NONE


def _example(c: Change) -> dict[str, Any]:
    return {"content_id": c.content_id, "tenant": c.tenant, "policy_before": c.policy_before,
            "policy_after": c.policy_after, "category": c.category, "scores": c.scores}
