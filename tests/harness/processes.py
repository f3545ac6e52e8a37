"""Worker processes under test and their probes: a killable, freezable worker with its memory, and the /livez and
/readyz checks the failure-model tests and the chaos suite assert.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitguard.settings import Settings
from vitguard.testing.worker import WorkerProcess

if TYPE_CHECKING:
    pass


__all__ = [
    "ChaosWorker",
    "PROBE_BOUND_S",
    "ReadinessPoller",
    "ReadySample",
    "assert_probes_fast",
    "probe",
    "probe_seconds",
    "readyz",
    "rss_kb",
]

def rss_kb(pid: int) -> int | None:
    """Resident memory of a process (``VmRSS`` in ``/proc/PID/status``), in KiB; None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class ChaosWorker(WorkerProcess):
    """A :class:`WorkerProcess` that may run another entry point (a fault-injection worker script).

    Args:
        settings: passed as ``VITGUARD_*`` variables.
        script: a Python script run instead of ``vitguard worker``; None runs the normal worker.
        extra_env: more variables (e.g. the fault worker's marker).
        log_path: where stdout and stderr go; restarts append to it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        script: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(settings, log_path=log_path, extra_env=extra_env)
        self.script = script
        self.starts = 0

    def argv(self) -> list[str]:
        return super().argv() if self.script is None else [sys.executable, str(self.script)]

    def start(self) -> ChaosWorker:
        super().start()
        self.starts += 1
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    @property
    def port(self) -> int:
        return self.settings.web.port


def readyz(port: int, timeout_s: float = 8.0) -> tuple[int, list[str]]:
    """``GET /readyz`` of the worker on ``port``: (status, reasons); status 0 when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=timeout_s) as resp:  # noqa: S310
            return resp.status, list(json.loads(resp.read()).get("reasons", []))
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, list(json.loads(exc.read()).get("reasons", []))
        except ValueError:
            return exc.code, []
    except (OSError, ValueError):
        return 0, []


PROBE_BOUND_S = 0.2
"""How fast ``/livez`` and ``/readyz`` must answer, whatever the dependencies do (Kubernetes gives 1 s)."""


def probe_seconds(port: int, path: str, times: int = 5) -> list[float]:
    """Seconds each of ``times`` ``GET path`` calls took (answered with any status)."""
    took = []
    for _ in range(times):
        began = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:  # noqa: S310
                resp.read()
        except urllib.error.HTTPError as exc:
            exc.read()
        took.append(time.monotonic() - began)
    return took


def assert_probes_fast(port: int, while_: str) -> None:
    """``/livez`` and ``/readyz`` answer within :data:`PROBE_BOUND_S` (median of five; none over 1 s)."""
    for path in ("/livez", "/readyz"):
        took = sorted(probe_seconds(port, path))
        print(f"{path} while {while_}: {', '.join(f'{t * 1000:.0f}' for t in took)} ms")
        if took[len(took) // 2] > PROBE_BOUND_S or took[-1] > 1.0:
            raise AssertionError(f"{path} while {while_} took {took}")


def probe(port: int, timeout_s: float = 5.0) -> dict[str, Any]:
    """A worker's own account: ``/livez`` detail and the event counters of ``/metrics`` (empty when down)."""
    out: dict[str, Any] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=timeout_s) as resp:  # noqa: S310
            out["livez"] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        out["livez"] = json.loads(exc.read() or b"{}")
    except (OSError, ValueError):
        return out
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"vitguard_events_consumed_total", "vitguard_events_redelivered_total", "vitguard_in_flight",
              "vitguard_verdicts_total", "vitguard_dead_letters_total", "vitguard_publish_retries_total"}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:  # noqa: S310
            text = resp.read().decode()
    except (OSError, ValueError):
        return out
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


@dataclass(frozen=True)
class ReadySample:
    started: float
    """Wall-clock time the request was sent."""
    ended: float
    port: int
    status: int
    reasons: tuple[str, ...]

    @property
    def names_milvus(self) -> bool:
        return self.status == 503 and any("milvus" in r.lower() for r in self.reasons)


class ReadinessPoller:
    """Polls ``/readyz`` of every port ``ports()`` returns, every ``interval_s``, in a daemon thread."""

    def __init__(self, ports: Callable[[], Sequence[int]], interval_s: float = 1.0) -> None:
        self._ports = ports
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._threads: dict[int, threading.Thread] = {}
        self.samples: list[ReadySample] = []
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="readyz-poller", daemon=True)

    def start(self) -> ReadinessPoller:
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            for port in self._ports():
                if port not in self._threads:
                    t = threading.Thread(target=self._poll, args=(port,), name=f"readyz-{port}", daemon=True)
                    self._threads[port] = t
                    t.start()
            self._stop.wait(0.5)

    def _poll(self, port: int) -> None:
        while not self._stop.is_set():
            started = time.time()
            status, reasons = readyz(port)
            with self._lock:
                self.samples.append(ReadySample(started, time.time(), port, status, tuple(reasons)))
            self._stop.wait(self._interval_s)

    def between(self, start: float, end: float) -> list[ReadySample]:
        with self._lock:
            return [s for s in self.samples if start <= s.started and s.ended <= end]

    def stop(self) -> None:
        self._stop.set()
        for t in [self._watcher, *self._threads.values()]:
            t.join(10)
