"""Driving a worker from outside: as a subprocess configured by environment, and reading its outputs.

Test scaffolding used by ``vitguard demo``, the end-to-end tests and the pipeline benchmark, so all three run the real
``vitguard worker`` the way an operator does (settings from ``VITGUARD_*`` variables, signals to stop).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from vitguard.schemas.events import BankMatchAlert, DeadLetter, NearDuplicateAlert, Verdict, alert_type_of
from vitguard.schemas.retro import RetroMatch
from vitguard.settings import KafkaSettings, Settings

if TYPE_CHECKING:
    from vitguard.kafka.reader import RawRecord

__all__ = ["OutputReader", "Outputs", "WorkerProcess", "publish_raw", "settings_env"]


def _env_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return json.dumps([_env_value(v) for v in value])
    return str(value)


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``VITGUARD_*`` variables that reproduce ``settings`` in another process."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        section = getattr(settings, name)
        if not isinstance(section, BaseSettings):
            continue
        prefix = str(type(section).model_config.get("env_prefix", ""))
        for field_name in type(section).model_fields:
            text = _env_value(getattr(section, field_name))
            if text is not None:
                env[f"{prefix}{field_name}".upper()] = text
    return env


class WorkerProcess:
    """``vitguard worker`` in a child process, with its log in a file.

    Args:
        settings: passed as environment variables (the parent's VITGUARD_* variables are dropped first).
        log_path: where stdout/stderr go (a temp file by default).
        extra_env: more variables, e.g. ``{"VITGUARD_LOG_LEVEL": "DEBUG"}``.
    """

    def __init__(
        self, settings: Settings, *, log_path: Path | None = None, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="vitguard-worker-")) / "worker.log"
        self._extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VITGUARD_")}
        env.update(settings_env(self.settings))
        env.update(self._extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.argv(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def argv(self) -> list[str]:
        """What runs: ``vitguard worker`` (a subclass may run another entry point with the same environment)."""
        return [sys.executable, "-c", "from vitguard.cli import main; main()", "worker"]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful: the in-flight batch is abandoned uncommitted), then SIGKILL after the timeout."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: the worker dies with whatever it had in flight."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()


@dataclass
class Outputs:
    """Everything read so far from the output topics, parsed; ``acked_at`` is the broker timestamp (ms)."""

    verdicts: list[Verdict] = field(default_factory=list)
    alerts: list[NearDuplicateAlert] = field(default_factory=list)
    bank_alerts: list[BankMatchAlert] = field(default_factory=list)
    """Alerts of the alerts topic whose ``alert_type`` is ``bank_match``."""
    retro_matches: list[RetroMatch] = field(default_factory=list)
    """Alerts of the alerts topic whose ``alert_type`` is ``retro_match`` (a retro-hunter's)."""
    dead_letters: list[DeadLetter] = field(default_factory=list)
    verdict_timestamps_ms: list[int] = field(default_factory=list)
    keys: dict[str, list[bytes | None]] = field(default_factory=dict)

    def answered_event_ids(self) -> set[str]:
        ids = {v.event_id for v in self.verdicts}
        ids.update(d.event_id for d in self.dead_letters if d.event_id)
        return ids

    def answered(self) -> int:
        return len(self.verdicts) + len(self.dead_letters)


_MODELS: dict[str, type[BaseModel]] = {"verdicts": Verdict, "alerts": NearDuplicateAlert,
                                       "bank_alerts": BankMatchAlert, "retro_matches": RetroMatch,
                                       "dead_letters": DeadLetter}
_ALERT_KINDS = {"bank_match": "bank_alerts", "retro_match": "retro_matches"}


class OutputReader:
    """Reads the verdict, alert and dead-letter topics from the beginning (a :class:`TopicReader`: assigned,
    no consumer group), decoding each record into its schema.

    Args:
        kafka: brokers.
        verdicts, alerts, dead_letters: topic names.
    """

    def __init__(self, kafka: KafkaSettings, *, verdicts: str, alerts: str, dead_letters: str) -> None:
        from vitguard.kafka.reader import TopicReader

        self._kinds = {verdicts: "verdicts", alerts: "alerts", dead_letters: "dead_letters"}
        self._reader = TopicReader(kafka, list(self._kinds), connect_timeout_s=kafka.request_timeout_s)
        self.outputs = Outputs()

    def poll(self, seconds: float) -> Outputs:
        """Read whatever arrives within ``seconds``."""
        for record in self._reader.poll(seconds):
            self._add(record)
        return self.outputs

    def poll_until(self, done: Callable[[Outputs], bool], timeout_s: float, settle_s: float = 0.0) -> Outputs:
        """Read until ``done(outputs)`` holds (then ``settle_s`` longer, to catch duplicates) or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll(0.5)
            if done(self.outputs):
                if settle_s:
                    self.poll(settle_s)
                return self.outputs
        return self.outputs

    def _add(self, record: RawRecord) -> None:
        from vitguard.kafka.reader import decode

        kind = self._kinds[record.topic]
        if kind == "alerts":
            kind = _ALERT_KINDS.get(alert_type_of(record.value) or "", kind)
        decoded = decode(record, _MODELS[kind])
        if decoded.error is not None:
            raise decoded.error
        getattr(self.outputs, kind).append(decoded.value)
        self.outputs.keys.setdefault(kind, []).append(record.key)
        if kind == "verdicts":
            self.outputs.verdict_timestamps_ms.append(record.timestamp_ms or 0)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> OutputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish_raw(kafka: KafkaSettings, topic: str, messages: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    """Publish (key, value) pairs as they are (also invalid ones: the demo and tests need bad events).

    Raises:
        ServiceUnavailableError: some message was not acknowledged.
    """
    from vitguard.kafka.produce import OutboundMessage, publish_and_wait, raise_on_failures

    raise_on_failures(publish_and_wait(kafka, [OutboundMessage(topic, value, key) for key, value in messages]))
