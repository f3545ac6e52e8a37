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

import base64
import contextlib
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitguard.schemas.events import DeadLetter, ImageEvent, Verdict
from vitguard.settings import KafkaSettings, Settings
from vitguard.testing.services import LocalService, free_port, start_redis
from vitguard.testing.worker import OutputReader, Outputs, WorkerProcess, settings_env

if TYPE_CHECKING:
    from vitguard.kafka.reader import RawRecord
    from vitguard.testing.milvus_server import MilvusServerProcess

__all__ = [
    "FAULT_KINDS",
    "MAX_TEST_MESSAGE_BYTES",
    "PROBE_BOUND_S",
    "Accounting",
    "ChaosEvent",
    "ChaosRun",
    "ChaosWorker",
    "EventFactory",
    "Fault",
    "FaultRecord",
    "input_effects",
    "ImageServer",
    "Ledger",
    "ReadinessPoller",
    "RedisControl",
    "TimedOutputReader",
    "assert_probes_fast",
    "longest_stall",
    "make_schedule",
    "probe",
    "probe_seconds",
    "readyz",
    "rss_kb",
    "stopping",
    "table",
]

MAX_TEST_MESSAGE_BYTES = 4 * 1024 * 1024
"""The test producer's ``message.max.bytes``: poison pills are over 1 MiB, and must reach the broker."""

FAULT_KINDS = ("worker_kill", "agent_exception", "runner_exception", "redis_kill", "redis_freeze", "milvus_kill",
               "milvus_freeze")
"""The faults :class:`ChaosRun` knows, in the order of the summary table."""


# ---------------------------------------------------------------------------------------------- processes


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

    def start(self) -> ChaosWorker:
        if self.script is None:
            super().start()
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith("VITGUARD_")}
            env.update(settings_env(self.settings))
            env.update(self._extra_env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
                    [sys.executable, str(self.script)], env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
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


# ---------------------------------------------------------------------------------------------- services


class RedisControl:
    """A private ``redis-server`` that can be killed, frozen and restarted on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.service: LocalService | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisControl:
        self.service = start_redis(self.port)
        return self

    def kill(self) -> None:
        if self.service is not None and self.service.process.poll() is None:
            self.service.process.kill()
            self.service.process.wait(10)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.service = start_redis(self.port)

    def stop(self) -> None:
        if self.service is not None:
            self.thaw()
            self.service.stop(5)

    def _signal(self, sig: signal.Signals) -> None:
        if self.service is not None and self.service.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.service.process.pid, sig)


class ImageServer:
    """A loopback HTTP server for image references, polite and hostile.

    * ``/img/<name>``: the image at once.
    * ``/slow/<name>``: the image in small pieces over ``slow_s`` seconds (finishes within the deadline).
    * ``/stall/<anything>``: headers with a large ``Content-Length``, then nothing, for ``hold_s`` seconds.
    * ``/trickle/<anything>``: headers, then one byte every ``trickle_every_s`` for ``hold_s`` seconds (no
      read ever times out; only a total deadline ends it).
    """

    def __init__(self, images: Mapping[str, bytes] | None = None, *, slow_s: float = 1.5, hold_s: float = 60.0,
                 trickle_every_s: float = 0.3) -> None:
        self.images: dict[str, bytes] = dict(images or {})
        self.slow_s = slow_s
        self.hold_s = hold_s
        self.trickle_every_s = trickle_every_s
        self.hits: Counter[str] = Counter()
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                return

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                kind, _, name = self.path.lstrip("/").partition("/")
                server.hits[kind] += 1
                try:
                    server._serve(self, kind, name)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)

    def url(self, kind: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, h: http.server.BaseHTTPRequestHandler, kind: str, name: str) -> None:
        if kind in ("img", "slow"):
            data = self.images.get(name)
            if data is None:
                h.send_error(404)
                return
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if kind == "img":
                h.wfile.write(data)
                return
            pieces = 10
            step = max(1, len(data) // pieces)
            for i in range(0, len(data), step):
                h.wfile.write(data[i:i + step])
                h.wfile.flush()
                if self._stop.wait(self.slow_s / pieces):
                    return
            return
        if kind in ("stall", "trickle"):
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(10_000_000))
            h.end_headers()
            h.wfile.flush()
            deadline = time.monotonic() + self.hold_s
            while time.monotonic() < deadline:
                if self._stop.wait(self.trickle_every_s if kind == "trickle" else 0.2):
                    return
                if kind == "trickle":
                    h.wfile.write(b"\xff")
                    h.wfile.flush()
            return
        h.send_error(404)


# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class ChaosEvent:
    """One message to publish and what it must end as."""

    key: bytes | None
    value: bytes
    kind: str
    """good | http | slow | stall | trickle | crash | pill_binary | pill_corrupt_inline | pill_inline_too_large |
    malformed"""
    expect: str
    """``verdict`` or the dead letter's reason code."""
    event_id: str | None = None


_EXPECT = {
    "good": "verdict", "http": "verdict", "slow": "verdict", "crash": "verdict",
    "stall": "fetch_timeout", "trickle": "fetch_timeout",
    "pill_binary": "invalid_json", "pill_corrupt_inline": "unsupported_image",
    "pill_inline_too_large": "inline_too_large", "malformed": "invalid_json",
}


class EventFactory:
    """Makes :class:`ChaosEvent` s; every good image has bytes of its own (no verdict-cache hits).

    Args:
        root: the worker's file root (``VITGUARD_FETCH_FILE_ROOT``); good images are written there.
        server: serves the ``http``/``slow`` images and the hostile URLs.
        max_inline_bytes: the worker's inline limit (``VITGUARD_FETCH_MAX_INLINE_BYTES``).
        crash_marker: the string the fault worker looks for in a payload.
        seed: for the image variations.
    """

    def __init__(self, root: Path, server: ImageServer | None = None, *, max_inline_bytes: int = 1024 * 1024,
                 crash_marker: str = "vitguard-fault-crash", seed: int = 0) -> None:
        from PIL import Image

        from vitguard.demo.samples import photo_bytes

        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.max_inline_bytes = max_inline_bytes
        self.crash_marker = crash_marker
        self._rng = random.Random(seed)  # noqa: S311 - test data, not security
        self._bases = []
        for _, data in photo_bytes(4):
            import io

            image = Image.open(io.BytesIO(data)).convert("RGB")
            image.thumbnail((256, 256))
            self._bases.append(image)
        self._count = 0

    def _jpeg(self, comment: str = "") -> bytes:
        import io

        base = self._bases[self._count % len(self._bases)]
        self._count += 1
        w, h = base.size
        dx, dy = self._rng.randrange(1, w // 10), self._rng.randrange(1, h // 10)
        copy = base.crop((dx, dy, w - self._rng.randrange(1, w // 10), h - self._rng.randrange(1, h // 10)))
        out = io.BytesIO()
        copy.save(out, "JPEG", quality=self._rng.randrange(60, 95), **({"comment": comment} if comment else {}))
        return out.getvalue()

    def _event(self, kind: str, ref: str, **metadata: str) -> ChaosEvent:
        n = self._count
        mark = f"{metadata['fault']}-" if "fault" in metadata else ""  # in the verdict and the Milvus record too
        event = ImageEvent(content_id=f"{mark}{kind}-{n}-{self._rng.randrange(10**9)}", image_ref=ref,
                           metadata={"kind": kind, **metadata})
        return ChaosEvent(event.content_id.encode(), event.model_dump_json().encode(), kind, _EXPECT[kind],
                          event.event_id)

    def make(self, kind: str, *, seam: str = "agent") -> ChaosEvent:
        """One event of ``kind`` (see :attr:`ChaosEvent.kind`); a ``crash`` event fires the fault worker's
        ``seam`` (``tests/faults/fault_worker.py``): its mark ``<crash_marker>/<seam>`` is in the event's
        metadata and content id, and in the image itself (a JPEG comment) for the decode seam."""
        if kind in ("good", "crash"):
            mark = f"{self.crash_marker}/{seam}" if kind == "crash" else ""
            data = self._jpeg(comment=mark)
            path = self.root / f"{self._count}-{self._rng.randrange(10**9)}.jpg"
            path.write_bytes(data)
            extra = {"fault": mark} if kind == "crash" else {}
            return self._event(kind, path.as_uri(), **extra)
        if kind in ("http", "slow", "stall", "trickle"):
            if self.server is None:
                raise ValueError(f"{kind} events need an ImageServer")
            name = f"{self._count}-{self._rng.randrange(10**9)}.jpg"
            if kind in ("http", "slow"):
                self.server.images[name] = self._jpeg()
            return self._event(kind, self.server.url("img" if kind == "http" else kind, name))
        if kind == "pill_binary":  # ~1 MiB that is not JSON (and not UTF-8: the dead letter base64-encodes it)
            value = bytes([0xFF, 0xFE]) + self._rng.randbytes(1024 * 1024)
            return ChaosEvent(b"pill-binary", value, kind, _EXPECT[kind])
        if kind == "pill_corrupt_inline":  # a JPEG header and ~800 KB of noise
            data = b"\xff\xd8\xff\xe0" + self._rng.randbytes(800 * 1024)
            return self._event(kind, f"data:image/jpeg;base64,{base64.b64encode(data).decode()}")
        if kind == "pill_inline_too_large":
            data = b"\xff\xd8\xff\xe0" + self._rng.randbytes(self.max_inline_bytes + 64 * 1024)
            return self._event(kind, f"data:image/jpeg;base64,{base64.b64encode(data).decode()}")
        if kind == "malformed":
            return ChaosEvent(b"malformed", b'{"content_id": "x", "image_ref": ', kind, _EXPECT[kind])
        raise ValueError(f"unknown event kind {kind!r}")

    def stream(self, count: int, weights: Mapping[str, float], seed: int) -> list[ChaosEvent]:
        """``count`` events, kinds drawn with ``weights`` (the rest good), in a seeded order."""
        rng = random.Random(seed)  # noqa: S311 - test data
        kinds = list(weights)
        chosen = rng.choices(kinds, [weights[k] for k in kinds], k=count)
        return [self.make(k) for k in chosen]


# ---------------------------------------------------------------------------------------------- accounting


@dataclass
class Published:
    event: ChaosEvent
    partition: int
    offset: int
    at: float
    """Wall-clock time the broker acknowledged it."""


@dataclass
class Accounting:
    """The invariant after deduplication: every published message answered exactly once."""

    published: int
    answered: int
    lost: list[Published]
    duplicates: int
    """Outputs beyond the first for one message (redeliveries the guard did not catch)."""
    wrong: list[tuple[Published, str]]
    """Messages whose first answer is not what their kind must get (expected, got)."""
    by_expect: Counter[str] = field(default_factory=Counter)

    def describe(self) -> str:
        lost = ", ".join(f"{p.event.kind}@{p.partition}:{p.offset}" for p in self.lost[:10])
        wrong = ", ".join(f"{p.event.kind}@{p.partition}:{p.offset}->{got}" for p, got in self.wrong[:10])
        return (f"{self.published} published, {self.answered} answered, {len(self.lost)} lost [{lost}], "
                f"{self.duplicates} duplicate output(s), {len(self.wrong)} wrong [{wrong}]")


class Ledger:
    """Publishes :class:`ChaosEvent` s to the input topic and accounts for their answers.

    Args:
        kafka: brokers.
        topic: the worker's input topic.
    """

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        from confluent_kafka import Producer

        from vitguard.kafka.config import librdkafka_config
        from vitguard.kafka.produce import DEFAULT_PRODUCER_CONFIG

        self.topic = topic
        self._producer = Producer(librdkafka_config(
            kafka, **{**DEFAULT_PRODUCER_CONFIG, "message.max.bytes": MAX_TEST_MESSAGE_BYTES}))
        self.published: list[Published] = []
        self._by_offset: dict[tuple[int, int], Published] = {}
        self._by_event: dict[str, Published] = {}

    def publish(self, events: Sequence[ChaosEvent], timeout_s: float = 30.0) -> list[Published]:
        """Publish and wait for every acknowledgement.

        Raises:
            AssertionError: the broker did not take one (the test cannot account for it).
        """
        from vitguard.kafka.produce import OutboundMessage, produce_and_wait

        results = produce_and_wait(self._producer, [OutboundMessage(self.topic, e.value, e.key) for e in events],
                                   timeout_s)
        out = []
        now = time.time()
        for event, result in zip(events, results, strict=True):
            if not result.ok or result.partition is None or result.offset is None:
                raise AssertionError(f"the broker did not take a {event.kind} event: {result.error} "
                                     f"{result.error_message}")
            p = Published(event, result.partition, result.offset, now)
            self.published.append(p)
            self._by_offset[(p.partition, p.offset)] = p
            if event.event_id is not None:
                self._by_event[event.event_id] = p
            out.append(p)
        return out

    def answers(self, outputs: Outputs) -> dict[tuple[int, int], list[Verdict | DeadLetter]]:
        """Every output that answers a published message, by the message's (partition, offset)."""
        found: dict[tuple[int, int], list[Verdict | DeadLetter]] = defaultdict(list)
        for v in outputs.verdicts:
            p = self._by_event.get(v.event_id)
            if p is not None:
                found[(p.partition, p.offset)].append(v)
        for d in outputs.dead_letters:
            q = self._by_event.get(d.event_id) if d.event_id else None
            if q is None and d.source_topic == self.topic:
                q = self._by_offset.get((d.source_partition, d.source_offset))
            if q is not None:
                found[(q.partition, q.offset)].append(d)
        return found

    def account(self, outputs: Outputs) -> Accounting:
        found = self.answers(outputs)
        lost = [p for p in self.published if (p.partition, p.offset) not in found]
        wrong: list[tuple[Published, str]] = []
        by_expect: Counter[str] = Counter()
        for p in self.published:
            got = found.get((p.partition, p.offset))
            if not got:
                continue
            kind = _kind_of(got[0])
            by_expect[kind] += 1
            if kind != p.event.expect:
                wrong.append((p, kind))
        duplicates = sum(len(v) - 1 for v in found.values())
        return Accounting(len(self.published), len(found), lost, duplicates, wrong, by_expect)

    def close(self) -> None:
        self._producer.flush(5)


class TimedOutputReader(OutputReader):
    """An :class:`OutputReader` that keeps every output's broker timestamp (seconds) and when it was read."""

    def __init__(self, kafka: KafkaSettings, *, verdicts: str, alerts: str, dead_letters: str) -> None:
        super().__init__(kafka, verdicts=verdicts, alerts=alerts, dead_letters=dead_letters)
        self.output_times: list[float] = []
        self.first_answer_at: dict[str, float] = {}
        """Event id -> broker timestamp of its first verdict or dead letter."""

    @classmethod
    def for_settings(cls, settings: Settings) -> TimedOutputReader:
        t = settings.topics
        return cls(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters)

    def _add(self, record: RawRecord) -> None:
        super()._add(record)
        kind = self._kinds[record.topic]
        if kind == "alerts":
            return
        at = (record.timestamp_ms or 0) / 1000 or time.time()
        self.output_times.append(at)
        last: Verdict | DeadLetter = getattr(self.outputs, kind)[-1]
        if last.event_id is not None:
            self.first_answer_at.setdefault(last.event_id, at)


def longest_stall(output_times: Iterable[float], windows: Iterable[tuple[float, float]], start: float,
                  end: float) -> tuple[float, float]:
    """The longest time in [``start``, ``end``] with no output, not counting fault ``windows``.

    Returns:
        (seconds, when the gap began).
    """
    times = sorted(t for t in output_times if start <= t <= end)
    merged: list[list[float]] = []
    for a, b in sorted(windows):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    best, best_at = 0.0, start
    for a, b in zip([start, *times], [*times, end], strict=True):
        gap = b - a
        for wa, wb in merged:
            gap -= max(0.0, min(b, wb) - max(a, wa))
        if gap > best:
            best, best_at = gap, a
    return best, best_at


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
        right = sum(1 for g, p in zip(got, sent, strict=True) if g and _kind_of(g[0]) == p.event.expect)
        truncated = sum(1 for g in got if g and isinstance(g[0], DeadLetter) and g[0].payload_truncated)
        effect = f"{right}/{len(sent)} answered {sent[0].event.expect}"
        if truncated:
            effect += f", {truncated} truncated (size, SHA-256, offset kept)"
        rows.append((label, len(sent), effect))
    return rows


def _kind_of(answer: Verdict | DeadLetter) -> str:
    return "verdict" if isinstance(answer, Verdict) else answer.reason


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
