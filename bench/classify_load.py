"""``POST /classify`` under load, against the real worker on the embedded services, one run, JSON on stdout.

The scheduling rule: /classify requests are decoded ahead of the stream's queued decodes (the decode pool's
urgent lane, ``vitguard/pipeline/runtime/pools.py``); while stream images wait, a pass that carries requests is a
short one (``VITGUARD_BATCH_REQUEST_MAX_SIZE`` images), requests at most half of it
(``vitguard/pipeline/runtime/batcher.py``);
so neither starves the other.

In this order, in one process tree:

1. **idle**: single-image requests over HTTP (JPEG bytes in the body, one at a time, keep-alive, loopback),
   nothing on the stream: p50/p99 against the target ``p50 <= 1.5 x (model + decode)``. The **reference**
   (model + decode) is measured in this process right before and right after them, the worker idle: the
   model's time for one image (``predict`` on a batch of one) and the decode + preprocess of one upload
   (``classifier.prepare``), medians over both measurements (this host's speed drifts over a minute). Beside
   it, ``isolated_request_work``: decode then model for one upload after the same pause as the requests, in
   this process: one request's work alone, caches and thread pools as cold as a request finds them (shown,
   not the target's reference);
2. **stream alone**: a backlog of distinct uploads; the stream's images/s (verdict broker timestamps);
3. **busy**: the same again while ``--concurrency`` closed-loop clients hammer /classify until the backlog
   is answered (at most ``--max-requests``): /classify p50/p99 and requests/s, and the stream's images/s
   while hammered.

Run: ``.venv/bin/python bench/classify_load.py [--spec opennsfw]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness

from vitguard.consumers.topics import ensure_topics
from vitguard.testing import services
from vitguard.testing.worker import WorkerProcess, publish_raw

IDLE_PAUSE_S = 0.05
"""The pause between two idle requests (and between two isolated reference runs)."""


class Client:
    """One keep-alive HTTP connection to the worker's /classify."""

    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def classify(self, body: bytes) -> tuple[float, int, dict[str, float]]:
        """(seconds, HTTP status, the verdict's ``timings``) of one request."""
        started = time.perf_counter()
        self._conn.request("POST", "/classify", body=body, headers={"Content-Type": "image/jpeg"})
        response = self._conn.getresponse()
        payload = response.read()
        seconds = time.perf_counter() - started
        timings = json.loads(payload).get("timings") or {} if response.status == 200 else {}
        return seconds, response.status, {k: v for k, v in timings.items() if isinstance(v, int | float)}

    def get(self, path: str) -> int:
        self._conn.request("GET", path)
        response = self._conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self._conn.close()


def hammer(port: int, bodies: list[bytes], concurrency: int, max_requests: int,
           stop: threading.Event) -> tuple[list[float], list[int], float, list[dict[str, float]]]:
    """``concurrency`` closed-loop clients until ``stop`` is set or ``max_requests`` were sent in all.

    Returns (latencies in seconds, statuses other than 200, seconds it ran, the verdicts' timings)."""
    latencies: list[float] = []
    errors: list[int] = []
    timings: list[dict[str, float]] = []
    lock = threading.Lock()
    sent = [0]

    def loop(k: int) -> None:
        client = Client(port)
        i = k
        try:
            while not stop.is_set():
                with lock:
                    if sent[0] >= max_requests:
                        return
                    sent[0] += 1
                seconds, status, parts = client.classify(bodies[i % len(bodies)])
                i += concurrency
                with lock:
                    if status == 200:
                        latencies.append(seconds)
                        timings.append(parts)
                    else:
                        errors.append(status)
        finally:
            client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started, timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="opennsfw", help="model spec (default opennsfw: offline, real weights)")
    parser.add_argument("--batch-size", type=int, default=32, help="worker batch max_size")
    parser.add_argument("--idle-requests", type=int, default=60)
    parser.add_argument("--stream-s", type=float, default=8.0, help="backlog size, in seconds of model time")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop /classify clients while busy")
    parser.add_argument("--max-requests", type=int, default=3000, help="bound on requests while busy")
    parser.add_argument("--side", type=int, default=640, help="upload width in pixels")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    from vitguard.model import load_classifier
    from vitguard.settings import load_settings

    started_at = time.time()
    machine_start = harness.machine()
    classifier = load_classifier(load_settings(model={"spec": args.spec}).model)
    with harness.Bench(prefix="vitguard-classify-") as bench:
        requests = [p.read_bytes() for p in harness.uploads(bench.workdir / "req", 64, args.side, seed=7)]
        one = classifier.prepare(requests[0])[None]

        def reference() -> tuple[list[float], list[float]]:
            """Seconds of decode + preprocess per upload (best of 3 each) and of the model on one image."""
            decode = [min(timeit(lambda b=b: classifier.prepare(b)) for _ in range(3)) for b in requests[:20]]
            return decode, [timeit(lambda: classifier.predict(one)) for _ in range(30)]

        def isolated() -> list[float]:
            """Seconds of decode then model for one upload, each after the idle requests' pause: one request's
            work done alone, in this process (caches and thread pools as cold as a request finds them)."""
            out = []
            for b in requests[:20]:
                time.sleep(IDLE_PAUSE_S)
                out.append(timeit(lambda b=b: classifier.predict(classifier.prepare(b)[None])))
            return out

        model_ips = harness.model_only(classifier, [classifier.prepare(b) for b in requests[:16]],
                                       args.batch_size, images=8 * args.batch_size).images_per_s
        backlog_n = int(min(2000, max(6 * args.batch_size, model_ips * args.stream_s)))
        alone = harness.uploads(bench.workdir / "images", backlog_n, args.side)
        busy = harness.uploads(bench.workdir / "images", backlog_n, args.side, start=backlog_n)

        port = services.free_port()
        settings = bench.settings(spec=args.spec, batch_size=args.batch_size, web_port=port)
        ensure_topics(settings.kafka, settings.topics)
        worker = WorkerProcess(settings, log_path=bench.workdir / "worker.log").start()
        result: dict[str, Any] = {}
        try:
            services.wait_for(lambda: worker.running and _status(port, "/readyz") == 200, 120, "worker /readyz")
            client = Client(port)
            for body in requests[:5]:  # warm-up: first requests pay for lazy set-up
                client.classify(body)
            # the reference right before and right after the idle requests: this host's speed drifts
            before, alone_before = reference(), isolated()
            idle: list[float] = []
            idle_parts: list[dict[str, float]] = []
            for i in range(args.idle_requests):
                seconds, status, parts = client.classify(requests[i % len(requests)])
                if status != 200:
                    raise SystemExit(f"/classify answered {status}:\n{worker.log_tail()}")
                idle.append(seconds)
                idle_parts.append(parts)
                time.sleep(IDLE_PAUSE_S)  # idle between requests: each one finds the model free
            client.close()
            after, alone_after = reference(), isolated()
            decode_s, model_one_s = before[0] + after[0], before[1] + after[1]
            ref_ms = 1000 * (statistics.median(decode_s) + statistics.median(model_one_s))

            with bench.reader(settings) as reader:
                publish_raw(settings.kafka, settings.topics.images, harness.events(alone, "alone"))
                outputs = harness.wait_answered(reader, backlog_n, 600, worker)
                alone_ips = harness.steady_rate([ts for _, ts in harness.tagged(outputs, "alone")])

                stop = threading.Event()
                box: dict[str, Any] = {}

                def run() -> None:
                    box["out"] = hammer(port, requests, args.concurrency, args.max_requests, stop)

                thread = threading.Thread(target=run, daemon=True)
                publish_raw(settings.kafka, settings.topics.images, harness.events(busy, "busy"))
                thread.start()
                try:
                    outputs = harness.wait_answered(reader, 2 * backlog_n, 600, worker)
                finally:
                    stop.set()
                    thread.join(120)
                busy_stamps = [ts for _, ts in harness.tagged(outputs, "busy")]
                busy_ips = harness.steady_rate(busy_stamps)
                busy_s = (max(busy_stamps) - min(busy_stamps)) / 1000
                latencies, errors, hammer_s, busy_parts = box["out"]
        finally:
            worker.terminate()

    result = {
        "model": {"spec": args.spec, "name": classifier.info.name, "backend": classifier.info.backend},
        "machine": {**machine_start, "loadavg_end": harness.machine()["loadavg"]},
        "scheduling": ("/classify requests are decoded ahead of the stream's queued decodes (the decode pool's "
                       "urgent lane, vitguard/pipeline/runtime/pools.py) and, while stream images wait, take at most "
                       "half of a short pass of request_max_size images (vitguard/pipeline/runtime/batcher.py); they "
                       "are answered when their pass ends"),
        "request_max_size": settings.batch.request_max_size,
        "batch_size": args.batch_size,
        "upload_width_px": args.side,
        "reference_ms": {
            "model_one_image": round(1000 * statistics.median(model_one_s), 2),
            "decode_one_upload": round(1000 * statistics.median(decode_s), 2),
            "sum": round(ref_ms, 2),
            "sum_before_idle": round(1000 * (statistics.median(before[0]) + statistics.median(before[1])), 2),
            "sum_after_idle": round(1000 * (statistics.median(after[0]) + statistics.median(after[1])), 2),
            "isolated_request_work": round(1000 * statistics.median(alone_before + alone_after), 2),
        },
        "idle": {"requests": len(idle), **_ms(idle), "mean_timings_ms": _mean(idle_parts)},
        "stream_alone_images_per_s": round(alone_ips, 2),
        "busy": {
            "concurrency": args.concurrency,
            "requests": len(latencies),
            "errors": len(errors),
            "requests_per_s": round(len(latencies) / max(hammer_s, 1e-3), 2),
            **_ms(latencies),
            "mean_timings_ms": _mean(busy_parts),
            "stream_images_per_s": round(busy_ips, 2),
            "stream_share_of_alone": round(busy_ips / alone_ips, 3),
            "stream_backlog_s": round(busy_s, 2),
        },
        "targets": {
            "idle_p50_le_1.5x_model_plus_decode": {
                "p50_ms": _ms(idle)["p50_ms"], "limit_ms": round(1.5 * ref_ms, 2),
                "met": _ms(idle)["p50_ms"] <= 1.5 * ref_ms,
            },
        },
        "wall_s": round(time.time() - started_at, 1),
    }
    harness.report(result, args.out)
    return 0


def _status(port: int, path: str) -> int:
    client = Client(port)  # a fresh connection each time: a refused one leaves the old one unusable
    try:
        return client.get(path)
    finally:
        client.close()


def timeit(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _mean(parts: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({k for p in parts for k in p})
    return {k: round(statistics.mean(p[k] for p in parts if k in p), 2) for k in names}


def _ms(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * harness.percentile(seconds, 50), 1),
            "p99_ms": round(1000 * harness.percentile(seconds, 99), 1)}


if __name__ == "__main__":
    sys.exit(main())
