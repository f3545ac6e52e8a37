"""``vitguard dev up`` / ``dev down`` as a developer runs them: real processes left running between commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitguard.kafka.admin import TopicAdmin
from vitguard.settings import KafkaSettings, load_settings
from vitguard.testing.services import kafka_reachable, redis_reachable

pytestmark = pytest.mark.integration

VITGUARD = [sys.executable, "-m", "vitguard"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VITGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _exports(stdout: str) -> dict[str, str]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert all(line.startswith("export VITGUARD_") for line in lines), stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


def test_up_starts_the_stack_once_and_down_stops_it(tmp_path: Path) -> None:
    first = _run("dev", "up", "--dir", "stack", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    env = _exports(first.stdout)
    try:
        bootstrap, redis_url = env["VITGUARD_KAFKA_BOOTSTRAP_SERVERS"], env["VITGUARD_REDIS_URL"]
        assert bootstrap.startswith("127.0.0.1:") and redis_url.startswith("redis://127.0.0.1:")
        assert env["VITGUARD_MILVUS_URI"] == str(tmp_path / "stack" / "milvus.db")
        assert kafka_reachable(bootstrap) and redis_reachable(redis_url)  # still up after the command exited
        topics = load_settings().topics
        existing = TopicAdmin(KafkaSettings(bootstrap_servers=bootstrap)).topics()
        assert set(topics.all()) | set(topics.review()) <= set(existing)

        again = _run("dev", "up", "--dir", "stack", cwd=tmp_path)  # the same stack, not a second one
        assert again.returncode == 0 and _exports(again.stdout) == env
    finally:
        down = _run("dev", "down", "--dir", "stack", cwd=tmp_path)
    assert down.returncode == 0 and "stopped broker, redis" in down.stderr
    assert not kafka_reachable(bootstrap, 1.0) and not redis_reachable(redis_url)
    assert not (tmp_path / "stack" / "stack.json").exists()
    assert "nothing was running" in _run("dev", "down", "--dir", "stack", cwd=tmp_path).stderr


def test_down_never_signals_a_process_that_reused_a_recorded_pid(tmp_path: Path) -> None:
    """A stale state file whose pid now belongs to another program: that program is left alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # noqa: S603
    try:
        state = tmp_path / "stack"
        state.mkdir()
        (state / "stack.json").write_text(json.dumps({
            "directory": str(state), "bootstrap_servers": "127.0.0.1:1", "redis_url": "redis://127.0.0.1:1/0",
            "milvus_uri": "x",
            "processes": {"broker": {"pid": bystander.pid, "cmdline": "/nonexistent/tansu --listener-url"}}}))
        result = _run("dev", "down", "--dir", "stack", cwd=tmp_path)
        assert result.returncode == 0 and "nothing was running" in result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert os.path.exists(state) and not (state / "stack.json").exists()
