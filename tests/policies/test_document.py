"""Policy documents: parsing, checks with lines and reasons, compiling, deciding (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitguard.policies.compiled import BUILTIN_VERSION, builtin_book, compile_document, severity
from vitguard.policies.document import MAX_DOCUMENT_BYTES, PolicyDocumentError, parse_document
from vitguard.policy import decide

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "policies.example.yaml"
LABELS = ("NSFW", "SFW")


def _scores(nsfw: float) -> dict[str, float]:
    return {"NSFW": nsfw, "SFW": 1 - nsfw}


def _book(text: str):  # type: ignore[no-untyped-def]
    return compile_document(parse_document(text), LABELS, ["NSFW"])


def test_the_documented_example_parses_and_routes_tenants_and_surfaces() -> None:
    book = _book(EXAMPLE.read_text())
    assert book.version == "2026-12-07.1"
    assert book.resolve("kids-app").name == "kids"
    assert book.resolve("dating").name == "standard"
    assert book.resolve("dating", "profile").name == "kids"
    assert book.resolve("dating", "chat").name == "standard"
    assert book.resolve("community", "profile").name == "adult"
    assert book.resolve("someone-else").name == "standard"
    assert book.shadow_of(book.resolve("x")) is book.policies["standard-next"]
    assert book.pick("kids-app", None, "adult").name == "adult"
    assert book.pick("kids-app", None, "no-such").name == "kids"


@pytest.mark.parametrize(("tenant", "nsfw", "label", "action"), [
    ("x", 0.49, "safe", "allow"),
    ("x", 0.5, "unsafe", "block"),
    ("kids-app", 0.09, "safe", "allow"),
    ("kids-app", 0.1, "unsafe", "review"),
    ("kids-app", 0.3, "unsafe", "block"),
    ("community", 0.79, "safe", "allow"),
    ("community", 0.95, "unsafe", "age_gate"),
])
def test_the_highest_tier_reached_decides_and_anything_but_allow_is_unsafe(
        tenant: str, nsfw: float, label: str, action: str) -> None:
    d = _book(EXAMPLE.read_text()).resolve(tenant).decide(_scores(nsfw))
    assert (d.label, d.action) == (label, action)
    assert d.categories == {"sexual": pytest.approx(nsfw)}
    assert d.policy_version == "2026-12-07.1"
    assert d.category == ("sexual" if action != "allow" else None)


def test_an_allowed_category_does_not_count_toward_the_unsafe_score() -> None:
    book = _book("""
version: v1
categories: {sexual: [NSFW], other: [SFW]}
default_policy: p
policies:
  p: {rules: {sexual: [{threshold: 0.9, action: allow}], other: [{threshold: 0.5, action: flag}]}}
""")
    d = book.default.decide(_scores(0.95))
    assert d.unsafe_score == pytest.approx(0.05)  # only 'other' is acted on
    assert (d.label, d.action) == ("safe", "allow")
    d = book.default.decide(_scores(0.2))
    assert (d.label, d.action, d.category) == ("unsafe", "flag", "other")


def test_the_most_severe_action_across_categories_wins() -> None:
    book = _book("""
version: v1
categories: {a: [NSFW], b: [SFW]}
default_policy: p
policies:
  p: {rules: {a: [{threshold: 0.1, action: blur}], b: [{threshold: 0.1, action: review}]}}
""")
    d = book.default.decide(_scores(0.5))
    assert (d.action, d.category) == ("review", "b")
    assert severity("block") > severity("review") > severity("blur") > severity("allow")


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("nsfw", [0.0, 0.19, 0.2, 0.5, 0.76, 0.77, 0.99, 1.0])
def test_the_builtin_policy_decides_exactly_as_the_settings_did(threshold: float, nsfw: float) -> None:
    d = builtin_book(LABELS, ["NSFW"], threshold).default.decide(_scores(nsfw))
    old = decide(_scores(nsfw), ["NSFW"], threshold)
    assert (d.label, d.unsafe_score) == (old.label, old.unsafe_score)
    assert d.action == ("block" if old.label == "unsafe" else "allow")
    assert (d.policy, d.policy_version) == ("default", BUILTIN_VERSION)


def test_category_labels_match_case_insensitively_and_labels_the_model_lacks_are_ignored() -> None:
    book = _book("""
version: v1
categories: {sexual: [nsfw, porn, hentai]}
default_policy: p
policies: {p: {rules: {sexual: [{threshold: 0.5, action: block}]}}}
""")
    assert book.default.categories == (("sexual", ("NSFW",)),)
    assert book.default.decide(_scores(0.6)).action == "block"


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("version: v1\ndefault_policy: p\npolicies:\n  p:\n    rules:\n      sexual:\n"
     "        - {threshold: 1.5, action: block}\n", 7, "less than or equal to 1"),
    ("version: v1\ndefault_policy: nope\npolicies:\n  p: {}\n", None, "default_policy names policy 'nope'"),
    ("version: v1\ndefault_policy: p\npolicies:\n  p: {}\ntenants:\n  acme: missing\n", None, "tenant 'acme'"),
    ("version: v1\ndefault_policy: p\npolicies:\n  p: {rulez: {}}\n", 4, "Extra inputs are not permitted"),
    ("version: v1\ndefault_policy: p\npolicies:\n  p: {rules: {sexual: [{threshold: 0.5, action: Block!}]}}\n",
     4, "should match pattern"),
    ("version: v1\ndefault_policy: p\npolicies:\n  p: {review: {low: 0.6, high: 0.4}}\n", 4, "above high"),
    ("version: v1\ndefault_policy: p\npolicies: {p: {}}\nshadow: {p: p}\n", None, "shadows itself"),
    ("version: v1\ndefault_policy: p\npolicies:\n  p: {rules: {sexual: []}}\n", 4, "empty rule"),
    ("version: v1\ndefault_policy: p\npolicies: [p]\n", 3, "valid dictionary"),
    ("version: [v1\n", 2, "not YAML or JSON"),
    ("- just\n- a list\n", 1, "must be a mapping"),
    ("", None, "empty"),
    ("a: &x [1, 2]\nb: *x\n", 1, "aliases"),  # the line of the anchored node
    ("version: v1\ndefault_policy: p\npolicies:\n  p:\n    waves: {threshold: 1}\n", 5, "greater than or equal to 2"),
    ("version: v1\ndefault_policy: p\npolicies:\n  p:\n    frames: {max_frames: 0}\n", 5, "greater than or equal to 1"),
    ("version: v1\ndefault_policy: p\npolicies:\n  p:\n    frames: {video_sampling: all}\n", 5, "'rate' or"),
])
def test_a_bad_document_is_refused_with_its_line_and_reason(text: str, line: int | None, reason: str) -> None:
    with pytest.raises(PolicyDocumentError) as info:
        parse_document(text)
    assert reason in str(info.value)
    if line is not None:
        assert info.value.line == line, str(info.value)


def test_wave_rules_and_frame_sampling_take_the_fleets_values_for_what_they_leave_out() -> None:
    from vitguard.media import FrameLimits
    from vitguard.stores import WaveRule

    book = _book("""
version: v1
default_policy: p
policies:
  p: {waves: {threshold: 3}, frames: {max_frames: 4}}
  q: {waves: {window_s: 3600, cooldown_s: 0, alert: false}, frames: {video_sampling: keyframes, video_fps: 0.5}}
  fleet: {}
""")
    fleet_wave, fleet_frames = WaveRule(5, 600, 300), FrameLimits(max_frames=32, video_fps=1.0)
    p, q, plain = book.policies["p"], book.policies["q"], book.policies["fleet"]
    assert p.wave_rule(fleet_wave) == WaveRule(3, 600, 300) and p.wave_alerts
    assert q.wave_rule(fleet_wave) == WaveRule(5, 3600, 0) and not q.wave_alerts
    assert plain.wave_rule(fleet_wave) is fleet_wave and plain.frame_limits(fleet_frames) is fleet_frames
    assert (p.frame_limits(fleet_frames).max_frames, p.frame_limits(fleet_frames).video_fps) == (4, 1.0)
    q_frames = q.frame_limits(fleet_frames)
    assert (q_frames.max_frames, q_frames.video_fps, q_frames.video_sampling) == (32, 0.5, "keyframes")
    assert book.longest_wave_window_s == 3600


def test_json_documents_are_read_too() -> None:
    doc = {"version": "j1", "default_policy": "p",
           "policies": {"p": {"rules": {"sexual": [{"threshold": 0.7, "action": "block"}]}}}}
    book = compile_document(parse_document(json.dumps(doc).encode()), LABELS, ["NSFW"])
    assert book.default.decide(_scores(0.71)).action == "block"
    assert book.default.decide(_scores(0.69)).action == "allow"


def test_rules_on_a_category_the_model_cannot_score_are_refused_at_compile_time() -> None:
    doc = parse_document("""
version: v1
categories: {drawing: [hentai, drawings]}
default_policy: p
policies: {p: {rules: {drawing: [{threshold: 0.5, action: block}]}}}
""")
    with pytest.raises(PolicyDocumentError, match="names none of the model's classes"):
        compile_document(doc, LABELS, ["NSFW"])
    undefined = parse_document("version: v1\ndefault_policy: p\npolicies: {p: {rules: {violence: "
                               "[{threshold: 0.5, action: block}]}}}\n")
    with pytest.raises(PolicyDocumentError, match="does not define"):
        compile_document(undefined, LABELS, ["NSFW"])


def test_oversized_and_non_utf8_documents_are_refused_before_parsing() -> None:
    with pytest.raises(PolicyDocumentError, match="over the limit"):
        parse_document(b" " * (MAX_DOCUMENT_BYTES + 1))
    with pytest.raises(PolicyDocumentError, match="not UTF-8"):
        parse_document(b"version: \xff\n")


def test_a_thousand_tenants_resolve_by_dictionary_lookup() -> None:
    tenants = "\n".join(f"  t{i}: {'kids' if i % 2 else 'standard'}" for i in range(1000))
    book = _book(EXAMPLE.read_text().split("tenants:")[0] + "tenants:\n" + tenants + "\n")
    assert len(book.tenants) == 1000
    assert book.resolve("t7").name == "kids" and book.resolve("t8").name == "standard"


def test_the_published_schema_is_the_committed_one() -> None:
    """Regenerate with ``vitguard policy schema > docs/schemas/policy-document.schema.json``."""
    from click.testing import CliRunner

    from vitguard.cli import main

    result = CliRunner().invoke(main, ["policy", "schema"])
    committed = json.loads((ROOT / "docs" / "schemas" / "policy-document.schema.json").read_text())
    assert result.exit_code == 0 and json.loads(result.output) == committed


def test_the_example_validates_against_the_published_schema() -> None:
    import jsonschema
    import yaml

    schema = json.loads((ROOT / "docs" / "schemas" / "policy-document.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(EXAMPLE.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": "v", "default_policy": "p", "policies": {"p": {"rulez": {}}}}, schema)


@pytest.mark.parametrize("doc", ["README.md", "docs/policies.md"])
def test_the_examples_in_the_docs_are_documents(doc: str) -> None:
    text = (ROOT / doc).read_text()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    assert blocks
    for block in blocks:
        book = _book(block)
        assert book.resolve("kids-app").name == "kids" and book.resolve("dating", "profile").name == "kids"
