"""``vitguard retro-hunt`` as a real process on a real Milvus Lite file and broker: the follower killed (SIGKILL)
in the middle of its hunts and started again loses none and adds no other match (a repeated hunt publishes the
same ids), and stops on SIGTERM with exit 0; a hunt on demand prints and publishes, and refuses in one line."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.retro.test_hunter import _audit
from tests.review.review_services import INFO
from vitguard.kafka.reader import read_to_end
from vitguard.schemas.retro import RetroMatch
from vitguard.settings import MilvusSettings, Settings
from vitguard.stores import EmbeddingRecord
from vitguard.stores.milvus import MilvusEmbeddingIndex
from vitguard.stores.naming import collection_name
from vitguard.testing.worker import publish_raw, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ITEMS = 5


def _seed_rows(milvus: MilvusSettings) -> None:
    """Five unsafe items, each with two safe near-copies stored earlier (run in a child process: Milvus Lite
    keeps its file locked for as long as the process that opened it lives)."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(ITEMS):
        base = rng.normal(size=INFO.embedding_dim).astype(np.float32)
        rows.append(EmbeddingRecord(f"bad-{i}", base, "unsafe", 0.95, f"c-{i}", "t1", "v1", 1_000, 1_040))
        for j in range(2):
            copy = base + rng.normal(scale=0.05, size=base.shape).astype(np.float32)
            rows.append(EmbeddingRecord(f"copy-{i}-{j}", copy, "safe", 0.1, "", "t2", "v1", 500, 540))
    index = MilvusEmbeddingIndex(milvus)
    try:
        index.upsert(index.ensure_collection(INFO), rows)
    finally:
        index.close()


def _seed(settings: Settings) -> str:
    """:func:`_seed_rows` in a child process; returns the collection."""
    child = multiprocessing.get_context("spawn").Process(target=_seed_rows, args=(settings.milvus,))
    child.start()
    child.join(120)
    assert child.exitcode == 0
    return collection_name(settings.milvus.collection_prefix, INFO)


def _cli(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings_env(settings)}


def _matches(settings: Settings) -> list[RetroMatch]:
    return [RetroMatch.model_validate_json(r.value or b"") for r in read_to_end(settings.kafka, settings.topics.alerts)
            if b'"retro_match"' in (r.value or b"")]


def _wait(settings: Settings, done: Callable[[list[RetroMatch]], bool], timeout_s: float) -> list[RetroMatch]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = _matches(settings)
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture
def settings(service_settings: Callable[..., Settings], new_topic: Callable[..., str]) -> Settings:
    return service_settings(topics={"alerts": new_topic(1, "alerts"), "review_audit": new_topic(2, "audit")},
                            kafka={"session_timeout_s": 6.0}, banks={"enabled": False},  # hash hunts: test_hunter
                            retro={"hunts_per_s": 1.0, "max_poll_interval_s": 6.0,
                                   "group_id": new_topic(1, "group")})


def test_a_follower_killed_mid_hunt_and_restarted_publishes_every_match_and_no_other(settings: Settings) -> None:
    collection = _seed(settings)
    publish_raw(settings.kafka, settings.topics.review_audit,
                [(f"d{i}".encode(), _audit(f"bad-{i}", "confirm_unsafe")) for i in range(ITEMS)])
    env = _cli(settings)
    argv = [sys.executable, "-m", "vitguard", "retro-hunt", "--follow", "--collection", collection,
            "--threshold", "0.9"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    try:
        early = _wait(settings, lambda found: len(found) >= 1, 60)
        first.send_signal(signal.SIGKILL)  # one hunt a second: most are still to run
    finally:
        first.kill()
        first.wait(10)
    first_log = first.stderr.read().decode() if first.stderr else ""
    assert 1 <= len({m.retro_match_id for m in early}) < 2 * ITEMS, first_log

    second = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    try:
        found = _wait(settings, lambda f: len({m.retro_match_id for m in f}) >= 2 * ITEMS, 90)
        time.sleep(2)  # anything more it would publish
        second.send_signal(signal.SIGTERM)
        code = second.wait(20)
    finally:
        second.kill()
    stderr = second.stderr.read().decode() if second.stderr else ""
    assert code == 0, stderr
    found = _matches(settings)
    pairs = {(m.trigger.content_id, m.content_id) for m in found}
    assert pairs == {(f"bad-{i}", f"copy-{i}-{j}") for i in range(ITEMS) for j in range(2)}, pairs
    assert len({m.retro_match_id for m in found}) == 2 * ITEMS  # repeats of a hunt carry the same ids
    assert all(m.trigger.kind == "review_confirmed" and m.tenant == "t2" and m.similarity >= 0.9 for m in found)


def test_a_hunt_on_demand_prints_and_publishes_and_refuses_in_one_line(settings: Settings) -> None:
    collection = _seed(settings)
    env = _cli(settings)
    base = [sys.executable, "-m", "vitguard", "retro-hunt", "--collection", collection]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603

    printed = run("--from-content-id", "bad-2", "--threshold", "0.9", "--json")
    assert printed.returncode == 0, printed.stderr
    lines = [RetroMatch.model_validate_json(line) for line in printed.stdout.splitlines()]
    assert {m.content_id for m in lines} == {"copy-2-0", "copy-2-1"} and _matches(settings) == []

    published = run("--from-content-id", "bad-2", "--threshold", "0.9", "--publish")
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("# 2 item(s) judged safe") and "copy-2-0" in published.stdout
    on_topic = _matches(settings)
    assert {m.retro_match_id for m in on_topic} == {m.retro_match_id for m in lines}  # the same hunt, the same ids
    assert all(m.trigger.kind == "on_demand" for m in on_topic)

    refusals = {
        "not stored": run("--from-content-id", "never-stored"),
        "bad time": run("--from-content-id", "bad-2", "--since", "yesterday"),
        "both modes": run("--from-content-id", "bad-2", "--follow"),
        "bad threshold": run("--from-content-id", "bad-2", "--threshold", "2"),
    }
    for name, done in refusals.items():
        last = done.stderr.strip().splitlines()[-1]  # click's usage lines, then the one line that says why
        assert done.returncode != 0 and last.startswith(("Error: ", "vitguard: error: ")), (name, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
    assert refusals["not stored"].returncode == 1 and "never-stored" in refusals["not stored"].stderr


def test_a_hunt_by_hash_on_demand_reads_the_verdicts_and_prints_and_publishes(
    service_settings: Callable[..., Settings], new_topic: Callable[..., str],
) -> None:
    """Issue 31: ``--hash`` hunts once by a PDQ hash over the hashes of the items judged safe on the verdicts
    topic (an unsafe item and a replay are not hunted), within ``--distance``, from ``--since``; ``--publish``
    publishes the matches (trigger on_demand with the hash; the same hunt, the same ids); bad input and a missing
    topic are refused in one line."""
    from vitguard.schemas.events import Verdict

    settings = service_settings(topics={"alerts": new_topic(1, "alerts"), "verdicts": new_topic(2, "verdicts")})
    query = "f0" * 32
    near = "f0" * 30 + "0f0f"  # 16 bits away

    def verdict(cid: str, pdq: str, label: str = "safe", uploaded: str = "2026-12-01T00:00:00Z",
                **extra: object) -> tuple[bytes, bytes]:
        v = Verdict.model_validate({
            "event_id": f"e-{cid}", "content_id": cid, "tenant": "t9", "label": label, "unsafe_score": 0.2,
            "top_class": "SFW", "scores": {"NSFW": 0.2, "SFW": 0.8}, "model_name": "m", "model_version": "v1",
            "pdq_hash": pdq, "pdq_quality": 90, "created_at": uploaded, **extra})
        return cid.encode(), v.model_dump_json().encode()

    publish_raw(settings.kafka, settings.topics.verdicts, [
        verdict("same", query), verdict("close", near, uploaded="2026-11-01T00:00:00Z"), verdict("far", "0f" * 32),
        verdict("bad", query, label="unsafe"), verdict("replayed", query, replay_id="rp-1"),
        (b"junk", b"{not a verdict"),
    ])
    env = _cli(settings)

    def run(*args: str, environ: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vitguard", "retro-hunt", *args], env=environ,  # noqa: S603
                              capture_output=True, text=True, timeout=120, check=False)

    printed = run("--hash", query.upper(), "--distance", "20", "--json")
    assert printed.returncode == 0, printed.stderr
    found = [RetroMatch.model_validate_json(line) for line in printed.stdout.splitlines()]
    assert [(m.content_id, m.hash_distance) for m in found] == [("same", 0), ("close", 16)]
    assert _matches(settings) == []
    assert run("--hash", query, "--distance", "8", "--json").stdout.count("retro_match_id") == 1  # "same" only
    recent = run("--hash", query, "--since", "2026-11-15T00:00:00Z", "--json")
    assert [RetroMatch.model_validate_json(x).content_id for x in recent.stdout.splitlines()] == ["same"]

    published = run("--hash", query, "--distance", "20", "--publish")
    assert published.returncode == 0, published.stderr
    on_topic = _matches(settings)
    assert {m.retro_match_id for m in on_topic} == {m.retro_match_id for m in found}
    assert all(m.trigger.kind == "on_demand" and m.trigger.pdq_hash == query for m in on_topic)

    missing = {**env, "VITGUARD_TOPIC_VERDICTS": "never-created-verdicts"}
    refusals = {
        "bad hash": run("--hash", "xyz"),
        "degenerate hash": run("--hash", "0" * 64),
        "distance without hash": run("--from-content-id", "a", "--distance", "3"),
        "two modes": run("--hash", query, "--follow"),
        "no topic": run("--hash", query, environ=missing),
    }
    for name, done in refusals.items():
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode != 0 and last.startswith(("Error: ", "vitguard: error: ")), (name, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
    assert refusals["no topic"].returncode == 1 and "never-created-verdicts" in refusals["no topic"].stderr
