"""A local stack for development: the embedded broker and a private Redis on free loopback ports, left
running between commands, and the ``export`` lines that point vitguard at them.

``up`` starts what is not running yet (a second ``up`` answers the same addresses), creates vitguard's topics
and records the processes in ``DIR/stack.json``; ``down`` stops exactly those processes (a pid is only
signalled while its command line is still the one recorded, so a reused pid is never hit).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["STATE_FILE", "DevStack", "Process", "down", "up"]

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class Process:
    """One process of the stack, as recorded when it started."""

    pid: int
    cmdline: str

    def running(self) -> bool:
        """Still this process (a pid reused by another program does not count)."""
        return _cmdline(self.pid) == self.cmdline


@dataclass(frozen=True)
class DevStack:
    """A running local stack."""

    directory: str
    bootstrap_servers: str
    redis_url: str
    milvus_uri: str
    processes: dict[str, Process]

    def exports(self) -> list[str]:
        """Shell lines that point vitguard's commands at this stack (``eval "$(vitguard dev up)"``)."""
        return [
            f"export VITGUARD_KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers}",
            f"export VITGUARD_REDIS_URL={self.redis_url}",
            f"export VITGUARD_MILVUS_URI={self.milvus_uri}",
        ]

    def alive(self) -> bool:
        return all(p.running() for p in self.processes.values())


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def _read(directory: Path) -> DevStack | None:
    try:
        raw = json.loads((directory / STATE_FILE).read_text())
        processes = {name: Process(int(p["pid"]), str(p["cmdline"])) for name, p in raw.pop("processes").items()}
        return DevStack(**raw, processes=processes)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def up(directory: Path, partitions: int = 3) -> DevStack:
    """Start the stack in ``directory`` (or find it running) and create the topics.

    Raises:
        VitguardError: the broker or ``redis-server`` is not installed or did not start.
    """
    from vitguard.consumers.topics import ensure_topics
    from vitguard.settings import load_settings
    from vitguard.testing.services import start_broker, start_redis

    directory = directory.resolve()
    existing = _read(directory)
    if existing is not None and existing.alive():
        return existing
    if existing is not None:
        down(directory)  # part of it died: start afresh
    directory.mkdir(parents=True, exist_ok=True)
    broker = start_broker()
    try:
        redis = start_redis()
    except BaseException:
        broker.stop()
        raise
    processes = {name: Process(s.process.pid, _cmdline(s.process.pid) or "")
                 for name, s in (("broker", broker), ("redis", redis))}
    stack = DevStack(str(directory), broker.address, redis.address, str(directory / "milvus.db"), processes)
    (directory / STATE_FILE).write_text(json.dumps(asdict(stack), indent=2))
    settings = load_settings(kafka={"bootstrap_servers": broker.address}, topics={"partitions": partitions})
    ensure_topics(settings.kafka, settings.topics, extra=settings.topics.review())
    return stack


def down(directory: Path, timeout_s: float = 10.0) -> list[str]:
    """Stop the stack recorded in ``directory``; returns the names of the processes that were running."""
    directory = directory.resolve()
    stack = _read(directory)
    if stack is None:
        return []
    stopped = [name for name, p in stack.processes.items() if p.running()]
    for name in stopped:
        os.kill(stack.processes[name].pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in stack.processes.values():
        while p.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if p.running():
            os.kill(p.pid, signal.SIGKILL)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stopped
