"""Soak: minutes of steady load on one real worker with periodic faults; JSON on stdout.

A ``vitguard worker`` process consumes a steady stream (``--rate`` events/s of distinct JPEG uploads, with
a few poison pills, malformed events and stalled or trickling loopback URLs mixed in) for ``--minutes``,
while Redis and the Milvus server are frozen and killed in turn every ``--fault-every`` seconds (the chaos
harness, :mod:`tests.harness.chaos`). The worker itself is never killed, so its memory can be followed:
``VmRSS`` from ``/proc/PID/status`` every few seconds.

Reported: throughput (answers/s over the run), lost events (must be 0), duplicate outputs, wrong answers,
end-to-end latency (publish -> first answer), the longest time without output outside fault windows, each
fault's observed effect, RSS over time and whether it grew more than 10% after the warm-up (the first
``--warmup`` seconds: model, caches, allocator arenas).

Run alone on a quiet machine: ``.venv/bin/python bench/soak.py [--minutes 3] [--rate 4] [--seed 1]``.
Services are local processes (the Tansu broker, redis-server, the ``milvus`` package's server; Milvus Lite
and no Milvus faults when that package is missing).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fault harness lives under tests/harness/
from tests.harness.accounting import longest_stall  # noqa: E402
from tests.harness.chaos import ChaosRun, Fault, input_effects, stopping  # noqa: E402
from tests.harness.controls import ImageServer, RedisControl  # noqa: E402
from tests.harness.events import EventFactory  # noqa: E402
from tests.harness.processes import rss_kb  # noqa: E402
from vitguard.settings import load_settings  # noqa: E402
from vitguard.testing import services  # noqa: E402

WEIGHTS = {"good": 0.9, "http": 0.03, "stall": 0.01, "trickle": 0.01, "malformed": 0.02, "pill_binary": 0.01,
           "pill_corrupt_inline": 0.01, "pill_inline_too_large": 0.01}
DURATIONS = {"redis_freeze": 5.0, "redis_kill": 4.0, "milvus_freeze": 10.0, "milvus_kill": 10.0}


def schedule(seed: int, duration_s: float, every_s: float, kinds: list[str]) -> list[Fault]:
    """Faults every ``every_s`` seconds (kinds in a seeded order, cycled), none in the last 30 s."""
    order = list(kinds)
    random.Random(seed).shuffle(order)  # noqa: S311 - a schedule
    out, at, i = [], 20.0, 0
    while at < duration_s - 30:
        kind = order[i % len(order)]
        out.append(Fault(kind, at, DURATIONS[kind]))
        at += every_s
        i += 1
    return out


class RssSampler:
    """``VmRSS`` of the current process of a worker, every ``interval_s``, in a thread."""

    def __init__(self, pid: Any, interval_s: float = 3.0) -> None:
        self._pid = pid
        self._interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []
        """(wall-clock time, pid, KiB)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pid = self._pid()
            kb = rss_kb(pid) if pid is not None else None
            if pid is not None and kb is not None:
                self.samples.append((time.time(), pid, kb))
            self._stop.wait(self._interval_s)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def rss_report(samples: list[tuple[float, int, int]], started: float, warmup_s: float) -> dict[str, Any]:
    """RSS after the warm-up, compared with the end: medians of the first and the last fifth after it."""
    pids = {pid for _, pid, _ in samples}
    after = [(t, kb) for t, _, kb in samples if t >= started + warmup_s]
    step = max(1, len(samples) // 60)
    out: dict[str, Any] = {
        "rss_mb_over_time": [[round(t - started), round(kb / 1024, 1)] for t, _, kb in samples[::step]],
        "worker_processes_sampled": len(pids),
    }
    if len(after) < 5:
        out["rss_growth_pct"] = None
        out["rss_grew_over_10pct"] = None
        return out
    fifth = max(1, len(after) // 5)
    base = statistics.median(kb for _, kb in after[:fifth])
    end = statistics.median(kb for _, kb in after[-fifth:])
    growth = (end - base) / base * 100
    out.update(rss_after_warmup_mb=round(base / 1024, 1), rss_end_mb=round(end / 1024, 1),
               rss_peak_mb=round(max(kb for _, kb in after) / 1024, 1), rss_growth_pct=round(growth, 1),
               rss_grew_over_10pct=growth > 10.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the steady load (default 3)")
    parser.add_argument("--rate", type=float, default=4.0, help="events per second (default 4)")
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults (default 30)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds not counted for RSS growth (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spec", default="opennsfw", help="model spec (VITGUARD_MODEL_SPEC)")
    args = parser.parse_args()

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    duration_s = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="vitguard-soak-"))
    broker = services.start_broker()
    redis = RedisControl().start()
    milvus: Any = None
    try:
        from tests.harness.milvus_server import MilvusServerProcess

        milvus = MilvusServerProcess(tmp / "milvus").start()
        milvus_uri = milvus.uri
    except ImportError:
        milvus_uri = str(tmp / "milvus.db")
    except Exception as exc:  # MilvusNotInstalledError: Lite, and no Milvus faults
        say(f"no Milvus server ({exc}); Milvus Lite, no Milvus faults")
        milvus, milvus_uri = None, str(tmp / "milvus.db")
    server = ImageServer(hold_s=30.0).start()
    run: ChaosRun | None = None
    with stopping(server.close, redis.stop, broker.stop, *([lambda: milvus.stop(timeout_s=5)] if milvus else [])):
        topics = {k: f"soak-{k}-{uuid.uuid4().hex[:8]}" for k in ("images", "verdicts", "alerts", "dead_letters")}
        services.create_topics(broker.address, [topics["images"]], partitions=2)
        services.create_topics(broker.address, [topics["verdicts"], topics["alerts"], topics["dead_letters"]])
        settings = load_settings(
            kafka={"bootstrap_servers": broker.address, "consumer_group": f"soak-{uuid.uuid4().hex[:8]}",
                   "rebalance_timeout_s": 3.0, "session_timeout_s": 6.0},
            topics=topics,
            redis={"url": redis.url, "socket_timeout_s": 0.5, "key_prefix": "soak:"},
            milvus={"uri": milvus_uri, "call_timeout_s": 2.0, "connect_timeout_s": 2.0, "load_timeout_s": 60.0,
                    "retry_backoff_s": 0.2, "retry_backoff_max_s": 2.0},
            model={"spec": args.spec},
            fetch={"file_root": str(tmp / "images"), "allowed_networks": ["127.0.0.0/8"], "connect_timeout_s": 2.0,
                   "read_timeout_s": 4.0},
            batch={"max_size": 16},
            web={"host": "127.0.0.1", "port": services.free_port()},
            worker={"shutdown_timeout_s": 10.0},
        )
        factory = EventFactory(tmp / "images", server, max_inline_bytes=settings.fetch.max_inline_bytes,
                               seed=args.seed)
        events = factory.stream(int(duration_s * args.rate), WEIGHTS, args.seed)
        kinds = ["redis_freeze", "redis_kill"] + (["milvus_freeze", "milvus_kill"] if milvus else [])
        faults = schedule(args.seed, duration_s, args.fault_every, kinds)
        run = ChaosRun(settings, workers=1, redis=redis, milvus=milvus, log_dir=tmp / "logs", say=say)
        with stopping(run.close):
            run.start()
            if not run.wait_ready(240):
                say(run.workers[0].log_tail())
                return 2
            sampler = RssSampler(lambda: run.workers[0].pid).start()
            run.drive(events, faults, duration_s=duration_s, factory=factory)
            stream_end = time.time()
            accounting = run.drain(120.0)
            sampler.stop()
            codes = run.stop()

        answered_at = sorted(run.reader.first_answer_at.values())
        span = (answered_at[-1] - run.started_at) if answered_at else float("nan")
        latencies = sorted(run.reader.first_answer_at[p.event.event_id] - p.at for p in run.ledger.published
                           if p.event.event_id in run.reader.first_answer_at)
        stall_s, _ = longest_stall(run.reader.output_times, run.fault_windows(15.0), run.started_at, stream_end)
        report: dict[str, Any] = {
            "minutes": args.minutes,
            "rate_events_per_s": args.rate,
            "seed": args.seed,
            "model": args.spec,
            "milvus": "server" if milvus else "lite",
            "events_published": accounting.published,
            "events_answered": accounting.answered,
            "lost_events": len(accounting.lost),
            "duplicate_outputs": accounting.duplicates,
            "wrong_answers": len(accounting.wrong),
            "answers_by_kind": dict(accounting.by_expect),
            "throughput_events_per_s": round(accounting.answered / span, 2) if span == span else None,
            "latency_s": {"p50": round(latencies[len(latencies) // 2], 2),
                          "p95": round(latencies[int(len(latencies) * 0.95)], 2),
                          "max": round(latencies[-1], 2)} if latencies else None,
            "longest_stall_outside_faults_s": round(stall_s, 1),
            "worker_restarts": len(run.exits),
            "final_exit_code": codes[0],
            "faults": [{"fault": r.fault.kind, "at_s": round(r.started - run.started_at), "ok": r.ok,
                        "effect": "; ".join(r.effect)} for r in run.records],
            "inputs": [{"input": label, "count": n, "effect": effect}
                       for label, n, effect in input_effects(run.ledger, run.reader.outputs)],
            **rss_report(sampler.samples, run.started_at, args.warmup),
        }
        # one key per line (a readable, still valid JSON document)
        print("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in report.items()) + "\n}")
        return 0 if not accounting.lost and not accounting.wrong else 1


if __name__ == "__main__":
    sys.exit(main())
