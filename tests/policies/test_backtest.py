"""Back-testing a candidate on verdicts already made (pure)."""

from __future__ import annotations

from vitguard.policies.backtest import BackTest
from vitguard.policies.compiled import builtin_book, compile_document
from vitguard.policies.document import parse_document
from vitguard.schemas.events import Verdict

LABELS = ("NSFW", "SFW")
CANDIDATE = compile_document(parse_document("""
version: cand
default_policy: p
policies:
  p: {rules: {sexual: [{threshold: 0.3, action: block}, {threshold: 0.2, action: review}]}}
  kids: {rules: {sexual: [{threshold: 0.05, action: block}]}}
tenants: {kids-app: kids}
"""), LABELS, ["NSFW"])


def _verdict(cid: str, nsfw: float, tenant: str = "acme", **extra: object) -> Verdict:
    label = "unsafe" if nsfw >= 0.5 else "safe"
    fields = {"event_id": f"e-{cid}", "content_id": cid, "tenant": tenant, "label": label, "unsafe_score": nsfw,
              "top_class": "NSFW" if nsfw >= 0.5 else "SFW", "scores": {"NSFW": nsfw, "SFW": 1 - nsfw},
              "model_name": "m", "model_version": "1", "action": "block" if label == "unsafe" else "allow",
              "policy": "default", "policy_version": "builtin"}
    return Verdict.model_validate({**fields, **extra})


def test_changes_are_counted_by_action_tenant_and_category_with_examples() -> None:
    bt = BackTest(CANDIDATE, examples_per_change=1)
    for v in (_verdict("a", 0.9), _verdict("b", 0.4), _verdict("c", 0.25), _verdict("d", 0.1),
              _verdict("e", 0.1, tenant="kids-app"), _verdict("f", 0.35, tenant="kids-app"),
              _verdict("g", 0.9, label_source="bank", label="safe", action="allow")):
        bt.add_record(v.model_dump_json().encode())
    bt.add_record(b"not a verdict")
    bt.add_record(None)
    r = bt.report()
    assert (r["read"], r["judged"], r["bank_decided"], r["unreadable"], r["changed"]) == (9, 6, 1, 2, 4)
    assert r["actions"] == {"allow->block": 3, "allow->review": 1}
    assert r["labels"] == {"safe->unsafe": 4, "unsafe->unsafe": 1, "safe->safe": 1}
    assert r["by_tenant"] == {"acme": 2, "kids-app": 2}
    assert r["by_category"] == {"sexual": 4}
    assert [e["content_id"] for e in r["examples"]["allow->block"]] == ["b"]
    assert any("allow ->" in line and "review" in line for line in bt.lines())


def test_against_another_document_instead_of_the_recorded_decisions() -> None:
    same = BackTest(CANDIDATE, against=CANDIDATE)
    old = BackTest(CANDIDATE, against=builtin_book(LABELS, ["NSFW"], 0.5))
    for v in (_verdict("a", 0.9), _verdict("b", 0.4, action="quarantine")):
        same.add(v)
        old.add(v)
    assert same.changed == 0
    assert old.report()["actions"] == {"allow->block": 1}  # the recorded custom action is not what is compared


def test_verdicts_from_before_policies_count_their_label_as_the_action() -> None:
    bt = BackTest(CANDIDATE)
    bt.add(_verdict("a", 0.4, action=None, policy=None, policy_version=None))
    assert bt.report()["actions"] == {"allow->block": 1}
