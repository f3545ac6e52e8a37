"""Banks on a real broker: the CLI end to end, and a running follower seeing changes within seconds."""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.banks.conftest import flip, random_pdq
from vitguard.banks import Bank, BankEntry, BankFollower, KafkaBankStore, matcher_for
from vitguard.cli import main
from vitguard.kafka.admin import TopicAdmin
from vitguard.settings import BankSettings, KafkaSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def banks_topic() -> str:
    return f"banks-{uuid.uuid4().hex[:10]}"


def _cli(kafka_bootstrap: str, topic: str, *args: str, input: str | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(main, ["banks", *args], input=input, catch_exceptions=False, env={
        "VITGUARD_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "VITGUARD_BANKS_TOPIC": topic})
    return result.exit_code, result.stdout, result.stderr


def test_cli_create_import_list_export_add_remove(kafka_bootstrap: str, banks_topic: str, tmp_path: Path,
                                                  sample_photos: list[Path]) -> None:
    rng = random.Random(7)
    good = [random_pdq(rng) for _ in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a list\n{good[0]}\tx-1\tcsam\n{good[1]}\nnot-a-hash\n{good[2]},x-3\n")

    code, out, _ = _cli(kafka_bootstrap, banks_topic, "create", "known-bad", "--action", "force_unsafe")
    assert code == 0 and "created bank known-bad" in out
    config = TopicAdmin(KafkaSettings(bootstrap_servers=kafka_bootstrap)).topic_config(banks_topic)
    assert config.get("cleanup.policy") == "compact"
    code, _, err = _cli(kafka_bootstrap, banks_topic, "create", "known-bad")
    assert code == 2 and "exists; pass --update" in err

    code, out, err = _cli(kafka_bootstrap, banks_topic, "import", "known-bad", str(listing), "--strict")
    assert code == 1 and "line 4: not a PDQ hash" in err and "nothing imported" in err
    code, out, err = _cli(kafka_bootstrap, banks_topic, "import", "known-bad", str(listing), "--tag", "list-1")
    assert code == 0 and "line 4: not a PDQ hash" in err and "3 imported into known-bad" in out
    code, _, err = _cli(kafka_bootstrap, banks_topic, "import", "nope", str(listing))
    assert code == 2 and "no bank 'nope'" in err

    code, out, _ = _cli(kafka_bootstrap, banks_topic, "add", "known-bad", str(sample_photos[0]), "--id", "photo-0")
    assert code == 0 and "added photo-0" in out
    code, out, _ = _cli(kafka_bootstrap, banks_topic, "list", "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (row["name"], row["action"], row["match_distance"], row["entries"]) == ("known-bad", "force_unsafe", 31, 4)

    code, out, _ = _cli(kafka_bootstrap, banks_topic, "export", "known-bad")
    lines = out.strip().splitlines()
    assert lines[0].startswith("signal_type,signal_str,entry_id") and len(lines) == 5
    assert any(good[0] in line and "x-1" in line and "csam list-1" in line for line in lines)

    code, out, err = _cli(kafka_bootstrap, banks_topic, "remove", "known-bad", "x-1", good[1], "missing-id")
    assert code == 2 and "removed 2 entries" in out and "not in known-bad: missing-id" in err
    code, out, _ = _cli(kafka_bootstrap, banks_topic, "remove", "known-bad", "--bank")
    assert code == 0 and "deleted bank known-bad and its 2 entries" in out
    code, out, _ = _cli(kafka_bootstrap, banks_topic, "list")
    assert "no banks yet" in out


def test_follower_sees_additions_and_removals_within_seconds(kafka_bootstrap: str, banks_topic: str) -> None:
    rng = random.Random(11)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    settings = BankSettings(topic=banks_topic, rebuild_interval_s=0.2)
    store = KafkaBankStore(kafka, settings)
    first, later = random_pdq(rng), random_pdq(rng)
    store.create_bank(Bank(name="b", action="force_unsafe"))
    store.add_entries([BankEntry(bank="b", entry_id="e1", signal=first)])

    matcher = matcher_for(settings)
    follower = BankFollower(kafka, settings, matcher)
    follower.start()
    try:
        assert [m.entry_id for m in matcher.match_batch([flip(first, 10, rng)], [100])[0]] == ["e1"]

        def seen(signal: str, want: bool, timeout_s: float = 10.0) -> float:
            started = time.monotonic()
            while time.monotonic() - started < timeout_s:
                if bool(matcher.match_batch([signal], [100])[0]) == want:
                    return time.monotonic() - started
                time.sleep(0.05)
            raise AssertionError(f"the follower did not see the change within {timeout_s}s")

        store.add_entries([BankEntry(bank="b", entry_id="e2", signal=later)])
        assert seen(later, True) < 5.0
        store.remove_entries("b", ["e1"])
        assert seen(first, False) < 5.0
        store.create_bank(Bank(name="b", action="force_unsafe", enabled=False), update=True)
        assert seen(later, False) < 5.0
        assert follower.running and follower.last_error is None
    finally:
        follower.stop()


def test_a_record_whose_key_and_value_disagree_is_ignored(kafka_bootstrap: str, banks_topic: str) -> None:
    """Key ``e|known-bad|X`` holding entry ``other/Y``: it matched as known-bad/Y, ``remove known-bad Y``
    called it missing, a bank delete tombstoned ``Y`` and left ``X``; recreated, the bank matched it again."""
    from vitguard.banks.state import BankRecord

    rng = random.Random(5)
    signal = random_pdq(rng)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    store = KafkaBankStore(kafka, BankSettings(topic=banks_topic))
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    stray = BankEntry(bank="other", entry_id="Y", signal=signal)
    store._write([BankRecord(b"e|known-bad|X", stray.model_dump_json().encode()),
                  BankRecord(b"b|renamed", Bank(name="known-bad").model_dump_json().encode())])
    state = store.read()
    assert state.entries == {} and set(state.banks) == {"known-bad"} and state.invalid == 2
    code, out, _ = _cli(kafka_bootstrap, banks_topic, "list", "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["entries"] == 0
    from vitguard.banks import BankMatcher, build_snapshot

    assert BankMatcher(build_snapshot(state)).match_batch([signal], [100]) == [[]]


def test_an_operator_releases_a_quarantined_entry_on_every_worker(kafka_bootstrap: str, banks_topic: str) -> None:
    """Issue 28: quarantines left no way out but waiting an hour. `vitguard banks release` writes a record on
    the banks topic; each worker's follower ends the entry's quarantine within seconds."""
    from vitguard.banks import FloodRule

    rng = random.Random(12)
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    settings = BankSettings(topic=banks_topic, rebuild_interval_s=0.2)
    store = KafkaBankStore(kafka, settings)
    entry = random_pdq(rng)
    store.create_bank(Bank(name="b", action="force_unsafe"))
    store.add_entries([BankEntry(bank="b", entry_id="e1", signal=entry)])
    matchers = [matcher_for(settings) for _ in range(2)]  # two workers
    followers = [BankFollower(kafka, settings, m) for m in matchers]
    for matcher, follower in zip(matchers, followers, strict=True):
        matcher.flood = type(matcher.flood)(FloodRule(min_matches=3))
        follower.start()
    try:
        for matcher in matchers:  # unrelated images flood the entry on both: quarantined
            got = matcher.match_batch([flip(entry, 24, rng) for _ in range(4)], [100] * 4)
            assert got[-1][0].quarantined
        code, out, err = _cli(kafka_bootstrap, banks_topic, "release", "b", "e1")
        assert code == 0 and "released b/e1" in out, err
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(m.flood.quarantined("b|e1", time.time()) for m in matchers):
            time.sleep(0.05)
        assert not any(m.flood.quarantined("b|e1", time.time()) for m in matchers)
        assert not matchers[0].match_batch([flip(entry, 24, rng)], [100])[0][0].quarantined  # force_unsafe again
        code, _, err = _cli(kafka_bootstrap, banks_topic, "release", "b", "nope")
        assert code == 2 and "no entry 'nope'" in err
        assert all(f.running and f.last_error is None for f in followers)
    finally:
        for follower in followers:
            follower.stop()
