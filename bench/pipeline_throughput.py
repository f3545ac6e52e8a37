"""End-to-end pipeline throughput and latency next to model-only throughput, one run, JSON on stdout.

Measures, in this order and in one process tree:

1. **model-only**: ``classifier.predict`` on already-prepared tensors at several batch sizes (images/s);
   the best batch size is kept;
2. a real ``vitguard worker`` process (batch size = the best one) is started against the broker, Redis and
   Milvus Lite and warmed up (a few events answered: group joined, model and collection loaded); then, with
   the worker idle, **model-only at the best batch size** again, right before
3. **end-to-end throughput**: a backlog of distinct JPEG uploads (``file://`` refs, no cache hits) is
   published and consumed; images/s is measured between the first and the last verdict's broker timestamp
   (the verdicts of the first group, published as that clock starts, not counted);
4. **model-only at the best batch size** once more, right after, the worker idle again. This machine's
   CPUs are shared with other tenants and their speed drifts by tens of percent over a minute, so the ratio
   divides by the mean of the two measurements adjacent to the end-to-end phase (``model_only_adjacent``);
   ``cpu_efficiency_ratio`` (model-only CPU per image / the worker process's CPU per image, Milvus Lite
   included) is the same comparison without the drift, and ``worker_cpu_ms_per_image_by_thread`` says where
   the worker's CPU went (``harness.thread_cpu_s``: inference is ``vg-infer`` plus onnxruntime's unnamed
   pool threads; the front half's decode, preprocessing and PDQ hash are ``vg-decode``);
   ``co_located_cpu_ms_per_image`` is the CPU per image of what shares this machine with the worker (the
   embedded broker and Redis when this run started them, and this benchmark process, which publishes the
   backlog and reads the answers), and ``machine_cores_while_answering`` how many of the machine's cores
   were busy, and stolen by the hypervisor (``steal``), while the backlog was answered (``/proc/stat``);
5. **latency**: events published at a steady rate below that throughput; per event, created_at -> the
   verdict's broker timestamp (p50/p95/p99).

Run: ``.venv/bin/python bench/pipeline_throughput.py [--events 400] [--spec opennsfw]``. Services: the
configured ones if they answer (VITGUARD_KAFKA_BOOTSTRAP_SERVERS, VITGUARD_REDIS_URL), else embedded.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np

from vitguard.consumers.topics import ensure_topics
from vitguard.schemas.events import ImageEvent
from vitguard.settings import load_settings
from vitguard.testing import services
from vitguard.testing.worker import OutputReader, WorkerProcess, publish_raw


def model_only(classifier: Any, tensors: list[np.ndarray], batch_size: int, images: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) of ``predict`` alone at ``batch_size`` (after one warm-up batch)."""
    stacked = np.stack([tensors[i % len(tensors)] for i in range(batch_size)])
    classifier.predict(stacked)
    batches = max(2, images // batch_size)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(batches):
        classifier.predict(stacked)
    n = batches * batch_size
    return n / (time.perf_counter() - started), 1000 * (time.process_time() - cpu_started) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="opennsfw", help="model spec (default opennsfw: offline, real weights)")
    parser.add_argument("--events", type=int, default=400, help="backlog size for the throughput phase")
    parser.add_argument("--latency-events", type=int, default=150, help="events in the steady-rate phase")
    parser.add_argument("--warmup-events", type=int, default=16, help="events answered before any measurement")
    parser.add_argument("--adjacent-images", type=int, default=320,
                        help="images in each model-only measurement next to the end-to-end phase")
    parser.add_argument("--rate-fraction", type=float, default=0.6, help="steady rate / measured throughput")
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--side", type=int, default=640, help="upload width in pixels")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--pipeline-batch-size", type=int, default=32,
                        help="worker micro-batch size; the ratio always uses model-only at its best batch size")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes in one consumer group (each its own Milvus Lite file on Lite)")
    parser.add_argument("--max-in-flight", type=int, help="VITGUARD_WORKER_MAX_IN_FLIGHT (default: the setting's)")
    parser.add_argument("--milvus-uri", help="a Milvus server (http://host:port) instead of Milvus Lite in the worker")
    parser.add_argument("--milvus-pid", type=int, help="the Milvus server's process id: its CPU is counted beside")
    parser.add_argument("--policy-file", type=Path,
                        help="VITGUARD_POLICY_FILE: judge under this policy document (bench/policy.py writes one)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--profile", type=Path,
                        help="record the workers with py-spy while they answer the backlog (raw folded stacks, "
                             "one file per worker: PATH.<i>)")
    args = parser.parse_args()

    from vitguard.model import load_classifier

    base = load_settings(model={"spec": args.spec})
    classifier = load_classifier(base.model)
    workdir = Path(tempfile.mkdtemp(prefix="vitguard-bench-"))
    uploads = harness.uploads(workdir / "images", args.warmup_events + args.events + args.latency_events,
                              args.side)
    tensors = [classifier.prepare(p.read_bytes()) for p in uploads[:32]]
    started_at = time.time()
    load_at_start = os.getloadavg()

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    measured = {bs: model_only(classifier, tensors, bs, images=max(160, 4 * bs)) for bs in sizes}
    model_ips = {bs: ips for bs, (ips, _) in measured.items()}
    # CPU timings are noisy on a shared machine: the largest batch size within 5% of the fastest wins
    best = max(bs for bs in sizes if model_ips[bs] >= 0.95 * max(model_ips.values()))

    started: list[services.LocalService] = []
    # CPU seconds of the processes on this machine beside the worker; this one's own clock is exact, /proc's
    # figures for the others count in ticks of 10 ms
    co_located: dict[str, Callable[[], float]] = {"bench": time.process_time}
    bootstrap, redis_url = base.kafka.bootstrap_servers, base.redis.url
    if not services.kafka_reachable(bootstrap, 3.0):
        started.append(services.start_broker())
        bootstrap = started[-1].address
        co_located["broker"] = functools.partial(harness.process_cpu_s, started[-1].process.pid)
    if not services.redis_reachable(redis_url):
        started.append(services.start_redis())
        redis_url = started[-1].address
        co_located["redis"] = functools.partial(harness.process_cpu_s, started[-1].process.pid)
    if args.milvus_pid:
        co_located["milvus"] = functools.partial(harness.process_cpu_s, args.milvus_pid)
    run = uuid.uuid4().hex[:6]
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "consumer_group": f"bench-{run}", "rebalance_timeout_s": 3.0},
        topics={"images": f"bench-{run}-images", "verdicts": f"bench-{run}-verdicts",
                "alerts": f"bench-{run}-alerts", "dead_letters": f"bench-{run}-dlq", "partitions": args.partitions},
        redis={"url": redis_url, "key_prefix": f"bench:{run}:"},
        milvus={"uri": args.milvus_uri or str(workdir / "milvus.db"), "collection_prefix": f"bench_{run}_"},
        model={"spec": args.spec},
        fetch={"file_root": str(workdir / "images")},
        batch={"max_size": args.pipeline_batch_size, "max_wait_s": 0.0},
        web={"enabled": False},
        log={"level": "WARNING"},
        **({"worker": {"max_in_flight": args.max_in_flight}} if args.max_in_flight else {}),
        **({"policy": {"file": args.policy_file.resolve()}} if args.policy_file else {}),
    )
    result: dict[str, Any] = {}
    try:
        ensure_topics(settings.kafka, settings.topics)
        w, n = args.warmup_events, args.events
        warmup, backlog, steady = uploads[:w], uploads[w: w + n], uploads[w + n:]
        worker = harness.Workers([
            WorkerProcess(_for_worker(settings, i, args.milvus_uri is None, workdir),
                          log_path=workdir / f"worker-{i}.log").start()
            for i in range(args.workers)])
        t = settings.topics
        with OutputReader(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters) as out:
            publish_raw(settings.kafka, settings.topics.images, harness.events(warmup, "w"))
            harness.wait_answered(out, len(warmup), 600, worker)
            out.poll(1.0)  # the warm-up's commits and index writes settle
            adjacent = [model_only(classifier, tensors, best, images=args.adjacent_images)]
            base_count = out.outputs.answered()
            publish_raw(settings.kafka, settings.topics.images, harness.events(backlog, "b"))
            # worker CPU per image between the first answers and the last (start-up excluded); the processes
            # beside it and the whole machine over the whole backlog
            others_before = {k: cpu_s() for k, cpu_s in co_located.items()}
            machine_before, backlog_started = harness.machine_cpu_s(), time.perf_counter()
            with harness.profiled(worker.pids, args.profile):
                outputs, e2e_cpu_ms, by_thread = harness.wait_answered_cpu(out, base_count + len(backlog), 900,
                                                                           worker)
            backlog_s = time.perf_counter() - backlog_started
            co_located_ms = {k: round(1000 * (cpu_s() - others_before[k]) / len(backlog), 2)
                             for k, cpu_s in co_located.items()}
            machine_cores = {k: round((v - machine_before[k]) / backlog_s, 2)
                             for k, v in harness.machine_cpu_s().items()}
            adjacent.append(model_only(classifier, tensors, best, images=args.adjacent_images))
            in_backlog = [(v, ts) for v, ts in zip(outputs.verdicts, outputs.verdict_timestamps_ms, strict=True)
                          if v.content_id.startswith("b-")]
            # the first group, published as the clock starts, not counted
            e2e_ips = harness.steady_rate(sorted(ts for _, ts in in_backlog))
            stage = {
                k: statistics.mean(getattr(v.timings, k) for v, _ in in_backlog)
                for k in ("fetch_ms", "decode_ms", "infer_ms")
            }

            # steady rate: each event is created right before it is sent, so created_at is its upload time
            from confluent_kafka import Producer

            from vitguard.kafka.config import librdkafka_config

            producer = Producer(librdkafka_config(settings.kafka, **{"linger.ms": 0}))
            rate = max(1.0, args.rate_fraction * e2e_ips)
            seen = outputs.answered()
            next_at = time.monotonic()
            for i, path in enumerate(steady):
                event = ImageEvent(content_id=f"s-{i}", image_ref=path.as_uri())
                producer.produce(settings.topics.images, key=event.content_id.encode(),
                                 value=event.model_dump_json().encode())
                producer.poll(0)
                next_at += 1.0 / rate
                out.poll(max(0.0, next_at - time.monotonic()))
            if producer.flush(30):
                raise SystemExit("steady-rate events were not acknowledged within 30 s")
            outputs = out.poll_until(lambda o: o.answered() >= seen + len(steady), 300)
            latencies = [
                ts / 1000 - v.created_at.timestamp()
                for v, ts in zip(outputs.verdicts, outputs.verdict_timestamps_ms, strict=True)
                if v.content_id.startswith("s-") and v.created_at is not None
            ]
            steady_timings = harness.mean_timings([v for v in outputs.verdicts if v.content_id.startswith("s-")])
        worker.terminate()
        model_ref = statistics.mean(ips for ips, _ in adjacent)
        model_cpu_ms = statistics.mean(cpu for _, cpu in adjacent)
        result = {
            "model": {"spec": args.spec, "name": classifier.info.name, "version": classifier.info.version,
                      "backend": classifier.info.backend},
            "machine": {"cpus": os.cpu_count(), "loadavg_start": load_at_start, "loadavg_end": os.getloadavg()},
            "upload_width_px": args.side,
            "model_only_images_per_s": {str(k): round(v, 2) for k, v in model_ips.items()},
            "best_batch_size": best,
            "pipeline_batch_size": settings.batch.max_size,
            "workers": args.workers,
            "milvus": "server" if args.milvus_uri else "lite (in each worker)",
            "model_only_adjacent_images_per_s": {"before": round(adjacent[0][0], 2),
                                                 "after": round(adjacent[1][0], 2)},
            "model_only_reference_images_per_s": round(model_ref, 2),
            "end_to_end": {
                "events": len(backlog),
                "images_per_s": round(e2e_ips, 2),
                "ratio_to_model_only": round(e2e_ips / model_ref, 3),
                "target_ratio": harness.saturation_ratio_target(args.spec),
                "mean_stage_ms_per_image": {k: round(v, 2) for k, v in stage.items()},
                "worker_cpu_ms_per_image": round(e2e_cpu_ms, 2),
                "model_only_cpu_ms_per_image": round(model_cpu_ms, 2),
                "cpu_efficiency_ratio": round(model_cpu_ms / e2e_cpu_ms, 3),
                "worker_cpu_ms_per_image_by_thread": by_thread,
                "co_located_cpu_ms_per_image": co_located_ms,
                "machine_cores_while_answering": machine_cores,
            },
            "latency": {
                "events": len(latencies),
                "rate_events_per_s": round(rate, 2),
                "p50_ms": round(1000 * harness.percentile(latencies, 50), 1),
                "p95_ms": round(1000 * harness.percentile(latencies, 95), 1),
                "p99_ms": round(1000 * harness.percentile(latencies, 99), 1),
                "batch_max_wait_s": settings.batch.max_wait_s,
                "mean_stage_ms": steady_timings,
            },
            "wall_s": round(time.time() - started_at, 1),
        }
    finally:
        for service in started:
            service.stop()
    harness.report(result, args.out)
    return 0


def _for_worker(settings: Any, i: int, lite: bool, workdir: Path) -> Any:
    """Worker ``i``'s settings: on Milvus Lite its own file (a Lite file belongs to one process)."""
    if not lite or i == 0:
        return settings
    milvus = settings.milvus.model_copy(update={"uri": str(workdir / f"milvus-{i}.db")})
    return settings.model_copy(update={"milvus": milvus})


if __name__ == "__main__":
    sys.exit(main())
