"""What the pipeline benchmarks share: distinct uploads, model-only timing, the embedded services, a
worker's settings, offered load at a steady rate, and the statistics.

Not a benchmark itself. The scripts next to it import it as ``harness`` (a script's own folder is on
``sys.path``); the tests under ``tests/bench`` put this folder on the path the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitguard.schemas.events import ImageEvent
from vitguard.settings import Settings, load_settings
from vitguard.testing import services
from vitguard.testing.worker import OutputReader, Outputs

__all__ = [
    "report",
    "Bench",
    "ModelTiming",
    "events",
    "latency_summary",
    "machine",
    "machine_cpu_s",
    "mean_timings",
    "model_only",
    "offer",
    "percentile",
    "process_cpu_s",
    "quiet_producer",
    "saturation_ratio_target",
    "steady_rate",
    "tagged",
    "uploads",
    "wait_answered",
    "wait_answered_cpu",
    "thread_cpu_s",
]


SATURATION_RATIO_TARGETS = {"opennsfw": 0.85}
"""End to end / model-only at saturation (issue 14), by model spec; 0.9 for any other (the ViT's compute)."""


def saturation_ratio_target(spec: str) -> float:
    """The end-to-end / model-only target at saturation for the model ``spec``."""
    return SATURATION_RATIO_TARGETS.get(spec, 0.9)


def uploads(root: Path, count: int, side: int, seed: int = 0, start: int = 0) -> list[Path]:
    """``count`` distinct JPEG uploads about ``side`` px wide, cut from real photos (no two share bytes, so
    no verdict comes from the cache)."""
    from vitguard.demo.samples import photo_bytes

    rng = np.random.default_rng(seed + start)
    photos = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in photo_bytes(6)]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        base = photos[i % len(photos)]
        w, h = base.size
        dx, dy = int(rng.integers(0, w // 8)), int(rng.integers(0, h // 8))
        crop = base.crop((dx, dy, w - int(rng.integers(0, w // 8)), h - int(rng.integers(0, h // 8))))
        crop = crop.resize((side, max(16, side * crop.height // crop.width)))
        path = root / f"upload-{i:05d}.jpg"
        crop.save(path, "JPEG", quality=int(rng.integers(75, 95)))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class ModelTiming:
    """``predict`` alone on prepared tensors at one batch size."""

    batch_size: int
    images_per_s: float
    batch_ms: float
    """Median wall time of one forward pass over a full batch."""
    cpu_ms_per_image: float


def model_only(classifier: Any, tensors: Sequence[np.ndarray], batch_size: int, images: int) -> ModelTiming:
    """Time ``classifier.predict`` over full batches of ``batch_size`` (after one warm-up batch): images/s
    from the median batch time."""
    stacked = np.stack([tensors[i % len(tensors)] for i in range(batch_size)])
    classifier.predict(stacked)
    batches = max(3, images // batch_size)
    samples = []
    cpu_started = time.process_time()
    for _ in range(batches):
        t0 = time.perf_counter()
        classifier.predict(stacked)
        samples.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu_started
    n = batches * batch_size
    # the median batch, not the mean: on a shared machine a few batches are slowed by other processes
    median = statistics.median(samples)
    return ModelTiming(batch_size, batch_size / median, 1000 * median, 1000 * cpu / n)


def _stat_cpu_s(stat: Path) -> float:
    """User + system CPU seconds in a ``/proc`` ``stat`` file (of a process, or of one of its threads)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    return _stat_cpu_s(Path(f"/proc/{pid}/stat"))


def machine_cpu_s() -> dict[str, float]:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq) and stolen by the
    hypervisor (``steal``: time a virtual CPU wanted to run and another tenant had the core) since boot, summed
    over cores, from the first line of ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


def thread_cpu_s(pid: int) -> dict[str, float]:
    """User + system CPU seconds of a process, by kind of thread (from ``/proc/PID/task/*``).

    Kinds: the main thread (``event loop``); vitguard's named pools (``vg-decode``, ``vg-infer``,
    ``vg-milvus``: :mod:`vitguard.pipeline.runtime.pools`); ``unnamed``: threads with the process's own name, which in
    the worker are onnxruntime's intra-op pool (its work is inference) and Python's own threads (Faust's,
    asyncio's executors: a few percent of a core in all); anything else by the name its native library gave it,
    digits dropped.
    """
    task = Path(f"/proc/{pid}/task")
    main_name = (task / str(pid) / "comm").read_text().strip()
    out: dict[str, float] = {}
    for entry in task.iterdir():
        try:
            name = (entry / "comm").read_text().strip()
            cpu_s = _stat_cpu_s(entry / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        if entry.name == str(pid):
            kind = "event loop"
        elif name == main_name:
            kind = "unnamed"
        else:
            kind = name.rstrip("0123456789").rstrip("_-") or name
        out[kind] = out.get(kind, 0.0) + cpu_s
    return out


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50/p95/p99/max in milliseconds of latencies given in seconds."""
    return {
        "events": len(seconds),
        "p50_ms": round(1000 * percentile(seconds, 50), 1),
        "p95_ms": round(1000 * percentile(seconds, 95), 1),
        "p99_ms": round(1000 * percentile(seconds, 99), 1),
        "max_ms": round(1000 * max(seconds), 1) if len(seconds) else float("nan"),
    }


def steady_rate(stamps_ms: Sequence[int], group_gap_ms: float = 3.0) -> float:
    """Images/s from the broker timestamps of a backlog's verdicts, start-up excluded.

    The clock starts at the first verdict, so the verdicts published with it (its group: stamps within
    ``group_gap_ms`` of the first) were made before the clock ran and are not counted; counting them
    (``(n - 1) / span``) overstates the rate by about one batch in ``span``.
    """
    stamps = sorted(stamps_ms)
    if len(stamps) < 2:
        return float("nan")
    first = stamps[0]
    after = [s for s in stamps if s - first > group_gap_ms]
    if not after:
        return float("nan")
    return len(after) / max(1e-3, (stamps[-1] - first) / 1000)


def offer(producer: Any, reader: OutputReader, topic: str, paths: Sequence[Path], rate: float, tag: str) -> float:
    """Publish one event per path at ``rate`` events/s, evenly spaced (open loop: the schedule does not
    wait for answers). Each event is created right before it is sent, so its ``created_at`` is the upload
    time. Reads outputs while it waits. Returns the seconds the schedule took."""
    started = next_at = time.monotonic()
    for i, path in enumerate(paths):
        event = ImageEvent(content_id=f"{tag}-{i}", image_ref=path.as_uri())
        producer.produce(topic, key=event.content_id.encode(), value=event.model_dump_json().encode())
        producer.poll(0)
        next_at += 1.0 / rate
        reader.poll(max(0.0, next_at - time.monotonic()))
    if producer.flush(30):
        raise SystemExit(f"{tag}: events were not acknowledged by the broker within 30 s")
    return time.monotonic() - started


def tagged(outputs: Outputs, tag: str) -> list[tuple[Any, int]]:
    """(verdict, broker timestamp ms) of the verdicts whose content id starts with ``tag-``."""
    return [
        (v, ts)
        for v, ts in zip(outputs.verdicts, outputs.verdict_timestamps_ms, strict=True)
        if v.content_id.startswith(f"{tag}-")
    ]


def events(paths: Sequence[Path], tag: str) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of one event per path, for a backlog published in one go."""
    out = []
    for i, path in enumerate(paths):
        event = ImageEvent(content_id=f"{tag}-{i}", image_ref=path.as_uri())
        out.append((event.content_id.encode(), event.model_dump_json().encode()))
    return out


class Bench:
    """One benchmark run's working directory and services: the configured broker and Redis when they
    answer (``VITGUARD_KAFKA_BOOTSTRAP_SERVERS``, ``VITGUARD_REDIS_URL``), else embedded ones (stopped on
    exit), and Milvus Lite in the working directory."""

    def __init__(self, prefix: str = "vitguard-bench-") -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.run = uuid.uuid4().hex[:6]
        self._started: list[services.LocalService] = []
        self.bootstrap = ""
        self.redis_url = ""

    def __enter__(self) -> Bench:
        base = load_settings()
        self.bootstrap, self.redis_url = base.kafka.bootstrap_servers, base.redis.url
        try:
            if not services.kafka_reachable(self.bootstrap, 3.0):
                self._started.append(services.start_broker())
                self.bootstrap = self._started[-1].address
            if not services.redis_reachable(self.redis_url):
                self._started.append(services.start_redis())
                self.redis_url = self._started[-1].address
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for service in reversed(self._started):
            with contextlib.suppress(Exception):
                service.stop()
        self._started.clear()

    def settings(self, *, spec: str, batch_size: int, partitions: int = 4, web_port: int | None = None,
                 **sections: dict[str, Any]) -> Settings:
        """A worker's settings on these services, with topics and keys of its own."""
        run = self.run
        overrides: dict[str, dict[str, Any]] = {
            "kafka": {"bootstrap_servers": self.bootstrap, "consumer_group": f"bench-{run}",
                      "rebalance_timeout_s": 3.0},
            "topics": {"images": f"bench-{run}-images", "verdicts": f"bench-{run}-verdicts",
                       "alerts": f"bench-{run}-alerts", "dead_letters": f"bench-{run}-dlq",
                       "partitions": partitions},
            "redis": {"url": self.redis_url, "key_prefix": f"bench:{run}:"},
            "milvus": {"uri": str(self.workdir / "milvus.db")},
            "model": {"spec": spec},
            "fetch": {"file_root": str(self.workdir / "images")},
            "batch": {"max_size": batch_size},
            "web": ({"enabled": True, "host": "127.0.0.1", "port": web_port} if web_port
                    else {"enabled": False}),
            "log": {"level": "WARNING"},
        }
        for name, values in sections.items():
            overrides[name] = {**overrides.get(name, {}), **values}
        return load_settings(**overrides)

    def reader(self, settings: Settings) -> OutputReader:
        t = settings.topics
        return OutputReader(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters)


@contextlib.contextmanager
def quiet_producer(settings: Settings) -> Iterator[Any]:
    """A confluent-kafka producer that sends each message at once (``linger.ms`` 0)."""
    from confluent_kafka import Producer

    from vitguard.kafka.config import librdkafka_config

    producer = Producer(librdkafka_config(settings.kafka, **{"linger.ms": 0}))
    try:
        yield producer
    finally:
        producer.flush(10)


def wait_answered(reader: OutputReader, count: int, timeout_s: float, worker: Any) -> Outputs:
    """Read until ``count`` events are answered; exits with the worker's log tail when they are not."""
    deadline = time.monotonic() + timeout_s
    outputs = reader.outputs
    while outputs.answered() < count and time.monotonic() < deadline and worker.running:
        outputs = reader.poll(0.2)
    if outputs.answered() < count:
        raise SystemExit(f"worker answered {outputs.answered()}/{count}:\n{worker.log_tail()}")
    return outputs


def wait_answered_cpu(
    reader: OutputReader, count: int, timeout_s: float, worker: Any
) -> tuple[Outputs, float, dict[str, float]]:
    """:func:`wait_answered`, plus the worker process's CPU ms per answer between the first answer after the
    call and the last (start-up and earlier answers excluded; all its threads, not the services it talks to),
    in all and by kind of thread (:func:`thread_cpu_s`)."""
    pids = getattr(worker, "pids", None) or [worker.process.pid]

    def cpu() -> float:
        return sum(process_cpu_s(pid) for pid in pids)

    def threads() -> dict[str, float]:
        total: dict[str, float] = {}
        for pid in pids:
            for k, v in thread_cpu_s(pid).items():
                total[k] = total.get(k, 0.0) + v
        return total

    deadline = time.monotonic() + timeout_s
    outputs = reader.outputs
    before = outputs.answered()
    first: tuple[int, float, dict[str, float]] | None = None
    while outputs.answered() < count and time.monotonic() < deadline and worker.running:
        outputs = reader.poll(0.2)
        if first is None and outputs.answered() > before:
            first = (outputs.answered(), cpu(), threads())
    if outputs.answered() < count or first is None:
        raise SystemExit(f"worker answered {outputs.answered()}/{count}:\n{worker.log_tail()}")
    done = max(1, outputs.answered() - first[0])
    by_thread = {k: 1000 * (v - first[2].get(k, 0.0)) / done for k, v in threads().items()}
    return outputs, 1000 * (cpu() - first[1]) / done, _by_kind_rounded(by_thread)


class Workers:
    """Several worker processes in one consumer group, seen as one (the benchmarks' ``worker``): running while
    all are, CPU summed over ``pids``."""

    def __init__(self, workers: Sequence[Any]) -> None:
        self.workers = list(workers)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    @property
    def running(self) -> bool:
        return all(w.running for w in self.workers)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- worker {i}\n{w.log_tail(chars)}" for i, w in enumerate(self.workers))

    def terminate(self) -> None:
        for w in self.workers:
            w.terminate()


def _by_kind_rounded(ms: dict[str, float]) -> dict[str, float]:
    """CPU ms per image by kind of thread, largest first, under 0.05 ms left out."""
    return {k: round(v, 2) for k, v in sorted(ms.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def mean_timings(verdicts: Sequence[Any]) -> dict[str, float]:
    """Mean of each part of the verdicts' ``timings`` (ms)."""
    if not verdicts:
        return {}
    names = [k for k in type(verdicts[0].timings).model_fields]
    out = {}
    for k in names:
        values = [getattr(v.timings, k) for v in verdicts if getattr(v.timings, k) is not None]
        if values:
            out[k] = round(statistics.mean(values), 2)
    return out


def report(result: dict[str, Any], out: Path | None) -> None:
    """A benchmark's JSON on stdout, and in ``out`` too when given (``--out``)."""
    import json

    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


@contextlib.contextmanager
def profiled(pids: Sequence[int], path: Path | None) -> Iterator[None]:
    """Record ``pids`` with py-spy (``pip install py-spy``) while the block runs: raw folded stacks per thread,
    one file per process (``path.<i>``); nothing when ``path`` is None."""
    import signal
    import subprocess

    if path is None:
        yield
        return
    spy = str(Path(sys.executable).with_name("py-spy"))
    extra = os.environ.get("PYSPY_ARGS", "").split()  # e.g. --gil: only the thread holding the GIL
    spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--threads", "--format", "raw", "--rate", "200",
                               "--nonblocking", *extra, "-o", f"{path}.{i}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i, pid in enumerate(pids)]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
