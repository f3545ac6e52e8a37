"""Fault injection around real worker processes: the harness of the failure-model tests, the chaos suite and
the soak benchmark.

Pieces, each usable on its own:

* :class:`ChaosWorker` runs ``vitguard worker`` (or a fault-injection entry point, e.g. the tests'
  ``tests/faults/fault_worker.py``) as a child process, and reads its resident memory.
* :class:`ImageServer` is a loopback HTTP server with well-behaved image URLs and hostile ones: a URL that
  sends its headers and then stalls, one that trickles a byte now and then, one that is slow but finishes.
* :class:`EventFactory` makes the events: good ones (distinct JPEG bytes, so no verdict-cache hits), the
  hostile URLs above, and poison pills (a ~1 MiB non-JSON message, a corrupt ~800 KB inline image, an inline
  image over the inline limit, malformed JSON), each tagged with the answer it must get.
* :class:`Ledger` publishes them (with a producer that allows messages over 1 MiB) and remembers each one's
  partition and offset; :meth:`Ledger.account` checks the invariant: every message has exactly one verdict or
  dead letter once redeliveries are deduplicated by event id (dead letters of unparsable messages by their
  source offset), and counts what was lost and what was answered twice.
* :class:`TimedOutputReader` reads the output topics and keeps every output's broker timestamp, from which
  :func:`longest_stall` measures the longest time nothing was answered outside fault windows.
* :class:`ReadinessPoller` polls ``/readyz`` of every worker in a thread; :class:`RedisControl` kills,
  freezes and restarts a private ``redis-server`` on the same port.
* :class:`ChaosRun` puts them together: workers supervised like an orchestrator would (an exited worker is
  restarted and its exit code recorded), a steady stream of events, and a seeded schedule of
  :class:`Fault` s (:func:`make_schedule`) run one after the other in a thread.

Only loopback addresses are used. Nothing in the worker's runtime path imports this module.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.accounting import Accounting, Ledger, TimedOutputReader, answer_kind
from tests.harness.controls import RedisControl
from tests.harness.events import ChaosEvent, EventFactory
from tests.harness.processes import ChaosWorker, ReadinessPoller, probe, readyz
from vitguard.schemas.events import DeadLetter
from vitguard.settings import Settings
from vitguard.testing.services import free_port
from vitguard.testing.worker import Outputs

if TYPE_CHECKING:
    from tests.harness.milvus_server import MilvusServerProcess

__all__ = ["ChaosRun", "FAULT_KINDS", "Fault", "FaultRecord", "input_effects", "make_schedule", "stopping", "table"]

FAULT_KINDS = ("worker_kill", "agent_exception", "runner_exception", "redis_kill", "redis_freeze", "milvus_kill",
               "milvus_freeze")
"""The faults :class:`ChaosRun` knows, in the order of the summary table."""


# ---------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float
    """Seconds after the stream started."""
    duration_s: float
    """How long the fault lasts (down or frozen) before it is repaired."""
    target: int = 0
    """Which worker, for worker faults."""


@dataclass
class FaultRecord:
    fault: Fault
    started: float = 0.0
    repaired: float = 0.0
    """When the repair was made (restart, thaw)."""
    recovered: float = 0.0
    """When every worker answered /readyz 200 again."""
    effect: list[str] = field(default_factory=list)
    ok: bool = True


def make_schedule(seed: int, kinds: Sequence[str] = FAULT_KINDS, *, workers: int = 1, start_s: float = 15.0,
                  gap_s: tuple[float, float] = (4.0, 9.0)) -> list[Fault]:
    """Each fault of ``kinds`` once, in a seeded random order, one after the other with random gaps.

    ``at_s`` is the earliest start; :class:`ChaosRun` starts a fault only after the previous one has
    recovered, then waits the gap.
    """
    rng = random.Random(seed)  # noqa: S311 - a test schedule
    order = list(kinds)
    rng.shuffle(order)
    durations = {"worker_kill": (0.5, 2.0), "agent_exception": (0.0, 0.0), "runner_exception": (0.0, 0.0),
                 "redis_kill": (3.0, 6.0),
                 "redis_freeze": (3.0, 6.0), "milvus_kill": (12.0, 14.0), "milvus_freeze": (12.0, 15.0)}
    at = start_s
    out = []
    for kind in order:
        lo, hi = durations[kind]
        out.append(Fault(kind, round(at, 1), round(rng.uniform(lo, hi), 1), rng.randrange(workers)))
        at += rng.uniform(*gap_s)
    return out


# ---------------------------------------------------------------------------------------------- the run


class ChaosRun:
    """Workers, a steady stream and a fault schedule; see the module docstring.

    Args:
        settings: for every worker (web ports are replaced by free ones, one per worker).
        workers: how many workers in the group.
        redis: the private Redis the settings point at (needed for the Redis faults).
        milvus: the Milvus server the settings point at (needed for the Milvus faults).
        fault_script: the fault-injection worker (needed for ``agent_exception`` and ``runner_exception``); None
            runs ``vitguard worker``.
        crash_marker: what the fault worker looks for in a payload.
        log_dir: workers' logs (and the fault worker's once-only state).
        say: progress lines (``print`` by default).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        workers: int = 1,
        redis: RedisControl | None = None,
        milvus: MilvusServerProcess | None = None,
        fault_script: Path | None = None,
        crash_marker: str = "vitguard-fault-crash",
        log_dir: Path,
        say: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.milvus = milvus
        self.say = say
        self.log_dir = log_dir
        once_dir = log_dir / "fault-once"
        once_dir.mkdir(parents=True, exist_ok=True)
        env = {"VITGUARD_FAULT_MARKER": crash_marker, "VITGUARD_FAULT_ONCE_DIR": str(once_dir)}
        self.workers: list[ChaosWorker] = []
        for i in range(workers):
            s = settings.model_copy(update={"web": settings.web.model_copy(update={"port": free_port()})})
            self.workers.append(ChaosWorker(s, script=fault_script, extra_env=env,
                                            log_path=log_dir / f"worker-{i}.log"))
        self.exits: list[tuple[float, int, int]] = []
        """(when, worker index, exit code) of every exit the supervisor saw."""
        self.records: list[FaultRecord] = []
        self.restart_delay_s = 1.0
        self.detect_s = 12.0
        """How long /readyz may still say ready after Milvus goes down (probe cache + probe deadline)."""
        self.gap_after_recovery_s = 3.0
        self._lock = threading.RLock()
        self._supervise = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.ledger = Ledger(settings.kafka, settings.topics.images)
        self.reader = TimedOutputReader.for_settings(settings)
        self.poller = ReadinessPoller(lambda: [w.port for w in self.workers])
        self.started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        for w in self.workers:
            w.start()
        self._supervise.set()
        self._supervisor = threading.Thread(target=self._supervise_loop, name="chaos-supervisor", daemon=True)
        self._supervisor.start()
        self.poller.start()

    def wait_ready(self, timeout_s: float = 180.0) -> bool:
        """Until every worker answers /readyz 200 (True), or the timeout (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(readyz(w.port, 5.0)[0] == 200 for w in self.workers):
                return True
            time.sleep(0.5)
        return False

    def _supervise_loop(self) -> None:
        """An orchestrator: a worker that exits is restarted after ``restart_delay_s``."""
        while self._supervise.is_set():
            with self._lock:
                for i, w in enumerate(self.workers):
                    code = w.returncode
                    if w.process is not None and code is not None:
                        self.exits.append((time.time(), i, code))
                        self.say(f"[chaos] worker {i} exited with {code}; restarting")
                        w.process = None
                        threading.Timer(self.restart_delay_s, self._restart, args=(i,)).start()
            time.sleep(0.2)

    def _restart(self, i: int) -> None:
        with self._lock:
            if self._supervise.is_set() and self.workers[i].process is None:
                self.workers[i].start()

    def stop(self) -> list[int | None]:
        """Stop supervising, SIGTERM every worker; returns their exit codes."""
        self._supervise.clear()
        if self._supervisor is not None:
            self._supervisor.join(5)
        self.poller.stop()
        codes: list[int | None] = []
        with self._lock:
            for w in self.workers:
                codes.append(w.terminate(timeout_s=self.settings.worker.shutdown_timeout_s + 10))
        return codes

    def close(self) -> None:
        """Whatever happened: kill every worker, close clients."""
        self._supervise.clear()
        self.poller.stop()
        for w in self.workers:
            w.kill()
        with contextlib.suppress(Exception):
            self.reader.close()
        with contextlib.suppress(Exception):
            self.ledger.close()

    # -- faults ----------------------------------------------------------------------------------

    def inject(self, fault: Fault, factory: EventFactory | None = None) -> FaultRecord:
        """Run one fault: inject, wait its duration, repair, wait until every worker is ready again."""
        rec = FaultRecord(fault, started=time.time())
        self.records.append(rec)
        self.say(f"[chaos] {time.time() - self.started_at:6.1f}s fault {fault.kind} ({fault.duration_s:g}s)")
        kind = fault.kind
        if kind == "worker_kill":
            with self._lock:
                w = self.workers[fault.target]
                pid = w.pid
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
            self._wait_exit(fault.target, rec, expect=-signal.SIGKILL)
        elif kind in ("agent_exception", "runner_exception"):
            if factory is None:
                raise ValueError(f"{kind} needs the event factory (to publish the marked event)")
            # the fault worker raises in the agent body, or in the runner's completion loop (a runner bug)
            seam = "agent" if kind == "agent_exception" else "completion_loop"
            self.ledger.publish([factory.make("crash", seam=seam)])
            self._wait_exit(None, rec, expect=1)
        elif kind in ("redis_kill", "redis_freeze"):
            if self.redis is None:
                raise ValueError(f"{kind} needs the RedisControl")
            (self.redis.kill if kind == "redis_kill" else self.redis.freeze)()
            time.sleep(fault.duration_s)
            (self.redis.restart if kind == "redis_kill" else self.redis.thaw)()
        elif kind in ("milvus_kill", "milvus_freeze"):
            if self.milvus is None:
                raise ValueError(f"{kind} needs the Milvus server")
            (self.milvus.kill if kind == "milvus_kill" else self.milvus.freeze)()
            time.sleep(fault.duration_s)
            rec.repaired = time.time()  # the outage ends here (a restart below takes a few more seconds)
            if kind == "milvus_kill":
                self.milvus.restart()
                rec.effect.append(f"restarted in {time.time() - rec.repaired:.0f}s")
            else:
                self.milvus.thaw()
            self._check_not_ready(rec)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        if not rec.repaired:
            rec.repaired = time.time()
        ready = self.wait_ready(180)
        rec.recovered = time.time()
        rec.effect.append(f"ready again {rec.recovered - rec.repaired:.0f}s after repair" if ready
                          else "NOT ready again within 180s")
        rec.ok = rec.ok and ready
        return rec

    def _wait_exit(self, target: int | None, rec: FaultRecord, expect: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = [(i, c) for t, i, c in self.exits if t >= rec.started - 1 and (target is None or i == target)]
            if seen:
                i, code = seen[0]
                rec.effect.append(f"worker {i} exit code {code}")
                rec.ok = rec.ok and code == expect
                return
            time.sleep(0.2)
        rec.effect.append(f"no worker exit within {timeout_s:.0f}s")
        rec.ok = False

    def _check_not_ready(self, rec: FaultRecord) -> None:
        """/readyz must name Milvus while it is down, and not say ready once the detection delay has passed."""
        samples = self.poller.between(rec.started, rec.repaired)
        false = [s for s in samples if s.names_milvus]
        late_ready = [s for s in samples if s.status == 200 and s.started >= rec.started + self.detect_s]
        if false:
            first = min(s.started for s in false) - rec.started
            rec.effect.append(f"/readyz 503 naming milvus {first:.0f}s after the fault "
                              f"({len(false)}/{len(samples)} polls)")
        else:
            rec.effect.append(f"/readyz never named milvus ({len(samples)} polls)")
            rec.ok = False
        if late_ready:
            rec.effect.append(f"{len(late_ready)} poll(s) said ready more than {self.detect_s:g}s into the outage")
            rec.ok = False

    # -- the stream ------------------------------------------------------------------------------

    def drive(self, events: Sequence[ChaosEvent], schedule: Sequence[Fault], *, duration_s: float,
              factory: EventFactory | None = None) -> None:
        """Publish ``events`` evenly over ``duration_s`` while ``schedule`` runs in a thread; read outputs."""
        self.started_at = time.time()
        done = threading.Event()
        failures: list[BaseException] = []

        def run_faults() -> None:
            try:
                for f in schedule:
                    wait = self.started_at + f.at_s - time.time()
                    if wait > 0:
                        time.sleep(wait)
                    self.inject(f, factory)
                    time.sleep(self.gap_after_recovery_s)
            except BaseException as exc:  # reported by drive()
                failures.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=run_faults, name="chaos-faults", daemon=True)
        thread.start()
        sent = 0
        while sent < len(events) or not done.is_set():
            due = min(len(events), int(len(events) * (time.time() - self.started_at) / duration_s) + 1)
            if due > sent:
                self.ledger.publish(events[sent:due])
                sent = due
            self.reader.poll(0.25)
        thread.join()
        if failures:
            raise failures[0]

    def drain(self, timeout_s: float, settle_s: float = 3.0) -> Accounting:
        """Read until every published message is answered (then ``settle_s`` more), or the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.reader.poll(0.5)
            if not self.ledger.account(self.reader.outputs).lost:
                self.reader.poll(settle_s)
                break
        return self.ledger.account(self.reader.outputs)

    def diagnose(self) -> str:
        """What each worker says about itself, and where its log mentions the unanswered messages."""
        lines = []
        lost = self.ledger.account(self.reader.outputs).lost
        for i, w in enumerate(self.workers):
            lines.append(f"worker {i} (pid {w.pid}, {w.starts} start(s)): {probe(w.port)}")
            text = w.log_path.read_text(errors="replace") if w.log_path.exists() else ""
            for p in lost[:10]:
                needles = [f"[{p.partition}]@{p.offset}"] + ([p.event.event_id] if p.event.event_id else [])
                hits = [line for line in text.splitlines() if any(n in line for n in needles)]
                lines.extend(f"  worker {i} log, {p.event.kind}@{p.partition}:{p.offset}: {h[:300]}" for h in hits[:5])
        for p in lost[:10]:
            lines.append(f"lost: {p.event.kind} {p.partition}:{p.offset} id={p.event.event_id} "
                         f"published +{p.at - self.started_at:.1f}s")
        return "\n".join(lines)

    def unexpected_exits(self) -> list[tuple[float, int, int]]:
        """Exits no worker fault explains (a kill's or an injected exception's)."""
        out = []
        for at, i, code in self.exits:
            if not any(r.fault.kind in ("worker_kill", "agent_exception", "runner_exception")
                       and r.started - 1 <= at <= (r.recovered or time.time()) for r in self.records):
                out.append((at, i, code))
        return out

    def fault_windows(self, grace_s: float) -> list[tuple[float, float]]:
        """When a fault (or the recovery from one, plus ``grace_s``) was under way."""
        return [(r.started, (r.recovered or time.time()) + grace_s) for r in self.records]

    def summary(self) -> list[tuple[str, int, str]]:
        """(fault, count, observed effect) rows."""
        rows = []
        for kind in FAULT_KINDS:
            recs = [r for r in self.records if r.fault.kind == kind]
            if recs:
                rows.append((kind, len(recs), "; ".join("; ".join(r.effect) + ("" if r.ok else " [FAILED]")
                                                        for r in recs)))
        return rows


_INPUT_KINDS = {
    "pill_binary": "oversized non-JSON (~1 MiB)", "pill_corrupt_inline": "corrupt ~800 KB inline image",
    "pill_inline_too_large": "inline image over the limit", "malformed": "malformed JSON",
    "stall": "stalled URL", "trickle": "trickling URL", "slow": "slow URL (finishes)",
}


def input_effects(ledger: Ledger, outputs: Outputs) -> list[tuple[str, int, str]]:
    """(input fault, count, observed effect) rows for the hostile events of a run."""
    answers = ledger.answers(outputs)
    rows = []
    for kind, label in _INPUT_KINDS.items():
        sent = [p for p in ledger.published if p.event.kind == kind]
        if not sent:
            continue
        got = [answers.get((p.partition, p.offset), []) for p in sent]
        right = sum(1 for g, p in zip(got, sent, strict=True) if g and answer_kind(g[0]) == p.event.expect)
        truncated = sum(1 for g in got if g and isinstance(g[0], DeadLetter) and g[0].payload_truncated)
        effect = f"{right}/{len(sent)} answered {sent[0].event.expect}"
        if truncated:
            effect += f", {truncated} truncated (size, SHA-256, offset kept)"
        rows.append((label, len(sent), effect))
    return rows




def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


@contextlib.contextmanager
def stopping(*closers: Callable[[], object]) -> Iterator[None]:
    """Run every closer when the block ends, whatever happened (each one's failure is ignored)."""
    try:
        yield
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                close()
