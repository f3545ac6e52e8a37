"""The document in force: accepted whole or refused whole, followed from a file, and read once for the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vitguard import metrics
from vitguard.errors import ConfigError
from vitguard.policies.compiled import BUILTIN_VERSION
from vitguard.policies.live import FileSource, PolicyFollower, PolicyHolder, read_policies
from vitguard.settings import KafkaSettings, PolicySettings

LABELS = ("NSFW", "SFW")


def _doc(version: str, threshold: float = 0.5) -> str:
    return (f"version: {version}\ndefault_policy: p\n"
            f"policies: {{p: {{rules: {{sexual: [{{threshold: {threshold}, action: block}}]}}}}}}\n")


def _holder() -> PolicyHolder:
    return PolicyHolder.from_settings(PolicySettings(unsafe_threshold=0.7), LABELS, ["NSFW"], (0.4, 0.6))


def _refused() -> float:
    return metrics.REGISTRY.get_sample_value("vitguard_policy_documents_total", {"outcome": "refused"}) or 0.0


def test_the_builtin_book_is_the_settings_until_a_document_is_accepted_and_after_it_is_withdrawn() -> None:
    holder = _holder()
    assert holder.book.version == BUILTIN_VERSION
    assert holder.book.default.decide({"NSFW": 0.69, "SFW": 0.31}).label == "safe"
    assert holder.book.default.uncertain(0.5) and not holder.book.default.uncertain(0.6)
    assert holder.offer(_doc("v1", 0.2), source="test")
    assert holder.book.version == "v1"
    assert holder.book.default.decide({"NSFW": 0.3, "SFW": 0.7}).action == "block"
    assert metrics.REGISTRY.get_sample_value("vitguard_policy_version", {"version": "v1",
                                                                        "fingerprint": holder.book.fingerprint}) == 1
    assert holder.offer(None, source="test")
    assert holder.book.version == BUILTIN_VERSION


def test_a_bad_document_is_refused_whole_and_the_last_good_one_stays() -> None:
    holder = _holder()
    holder.offer(_doc("v1"), source="test")
    before, good = _refused(), holder.book
    for bad in (_doc("v2", 7.0), "version: v3\ndefault_policy: p\npolicies: {}\n", b"\xff", "{{{"):
        assert not holder.offer(bad, source="test")
        assert holder.book is good
    assert _refused() == before + 4
    assert holder.last_error is not None and holder.last_error.startswith("line ")


def test_a_file_is_followed_and_a_broken_edit_keeps_the_document_in_force(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(_doc("v1"))
    holder = _holder()
    follower = PolicyFollower(holder, FileSource(path))
    follower.start()
    try:
        assert holder.book.version == "v1"
        path.write_text(_doc("v2", 0.1))
        _wait(lambda: holder.book.version == "v2")
        path.write_text("version: v3\npolicies: [\n")  # an editor's half-saved file
        _wait(lambda: holder.last_error is not None)
        assert holder.book.version == "v2"
        path.unlink()  # gone for a moment (a ConfigMap swap): nothing changes
        time.sleep(1.5)
        assert holder.book.version == "v2" and follower.running
        path.write_text(_doc("v4"))
        _wait(lambda: holder.book.version == "v4")
    finally:
        follower.stop()
    assert not follower.running


def test_a_worker_does_not_start_on_a_bad_or_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(_doc("v1", 2.0))
    with pytest.raises(ConfigError, match=r"VITGUARD_POLICY_FILE=.*bad.yaml: line 3"):
        PolicyFollower(_holder(), FileSource(bad)).start()
    with pytest.raises(ConfigError, match="cannot read it"):
        PolicyFollower(_holder(), FileSource(tmp_path / "missing.yaml")).start()
    with pytest.raises(ConfigError, match="line 3"):
        read_policies(PolicySettings(file=bad), KafkaSettings(), LABELS, ["NSFW"], None)
    good = tmp_path / "good.yaml"
    good.write_text(_doc("g1"))
    assert read_policies(PolicySettings(file=good), KafkaSettings(), LABELS, ["NSFW"], None).book.version == "g1"
    assert read_policies(PolicySettings(), KafkaSettings(), LABELS, ["NSFW"], None).book.version == BUILTIN_VERSION


def test_one_document_source_at_a_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one document source"):
        PolicySettings(file=tmp_path / "p.yaml", topic="policies")


def _wait(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.1)
    assert condition(), "condition not met in time"  # type: ignore[operator]
