"""Latency against offered load for the real worker on the embedded services, one run, JSON on stdout
and a PNG plot (latency against throughput).

In this order, in one process tree:

1. **model-only**: ``classifier.predict`` over full batches (``--batch-size``, the worker's
   ``VITGUARD_BATCH_MAX_SIZE``): the median time of one full batch, and images/s from it (this one only
   sizes the backlog);
2. a real ``vitguard worker`` starts and answers a few warm-up events (group joined, model and collection
   loaded); with it idle, **model-only** again, right before
3. **saturation**: a backlog of distinct JPEG uploads (``file://`` refs, no cache hits) is published; its
   throughput (between the first and the last verdict's broker timestamp, the first batch not counted) is
   the measured maximum;
4. **model-only** once more, right after, the worker idle. This machine's CPUs are shared and their speed
   drifts by tens of percent over a minute: the references (images/s for the saturation ratio, one full
   batch's time for the 50 % target) are the mean of the two measurements adjacent to the saturation phase;
5. **offered load**: events published open-loop, evenly spaced, at 1 event/s and then at 10, 25, 50, 75 and
   90% of the measured maximum; at each point, per event, ``created_at`` (set right before the event is
   sent) -> the verdict record's broker timestamp (CreateTime: when the worker produced it), p50/p95/p99.

Run: ``.venv/bin/python bench/latency.py [--spec opennsfw | --spec timm:vit_tiny_patch16_384]``. Needs
matplotlib for the plot (the ``train`` extra; ``dev`` includes it).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness

from vitguard.consumers.topics import ensure_topics
from vitguard.testing.worker import WorkerProcess, publish_raw

LOAD_FRACTIONS = (0.10, 0.25, 0.50, 0.75, 0.90)
RESULTS = Path(__file__).parent / "results"


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", spec).strip("_")


def plot(result: dict[str, Any], path: Path) -> None:
    """p50/p95/p99 against achieved throughput, with the maxima marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    x = [p["throughput_images_per_s"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for q, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        ax.plot(x, [p["latency"][q] for p in points], style, label=q.removesuffix("_ms"))
    for p in points:
        ax.annotate(p["offered"], (p["throughput_images_per_s"], p["latency"]["p99_ms"]),
                    textcoords="offset points", xytext=(3, 5), fontsize=7)
    sat = result["saturation"]["images_per_s"]
    ax.axvline(sat, color="grey", linestyle="--", linewidth=1, label="end-to-end max")
    ax.axvline(result["model_only"]["images_per_s"], color="black", linestyle=":", linewidth=1, label="model-only")
    ax.axhline(4 * result["model_only"]["full_batch_ms"], color="red", linestyle=":", linewidth=1,
               label="4x one full batch")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (verdicts/s)")
    ax.set_ylabel("created -> verdict (ms)")
    ax.set_title(f"{result['model']['name']}, batch {result['batch_size']}, {result['machine']['cpus']} CPUs")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="opennsfw", help="model spec (default opennsfw: offline, real weights)")
    parser.add_argument("--batch-size", type=int, help="worker batch max_size (default 32; 16 for timm: specs)")
    parser.add_argument("--saturation-s", type=float, default=10.0, help="backlog size, in seconds of model time")
    parser.add_argument("--point-s", type=float, default=10.0, help="length of each offered-load point")
    parser.add_argument("--min-events", type=int, default=30, help="events per point, at least")
    parser.add_argument("--side", type=int, default=640, help="upload width in pixels")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, help="PNG path (default bench/results/latency_<spec>.png)")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401 - fail before minutes of work, not after
    except ImportError:
        raise SystemExit("bench/latency.py draws a plot: pip install -e '.[train]' (matplotlib)") from None

    from vitguard.model import load_classifier
    from vitguard.settings import load_settings

    batch_size = args.batch_size or (16 if args.spec.startswith("timm:") else 32)
    started_at = time.time()
    machine_start = harness.machine()
    classifier = load_classifier(load_settings(model={"spec": args.spec}).model)
    result: dict[str, Any] = {}
    with harness.Bench() as bench:
        sample = harness.uploads(bench.workdir / "images", 32, args.side, start=90_000)
        warmup = harness.uploads(bench.workdir / "images", 16, args.side, start=95_000)
        tensors = [classifier.prepare(p.read_bytes()) for p in sample]
        first = harness.model_only(classifier, tensors, batch_size, images=max(8 * batch_size, 96))
        backlog_n = int(min(2000, max(10 * batch_size, first.images_per_s * args.saturation_s)))
        backlog = harness.uploads(bench.workdir / "images", backlog_n, args.side)
        # the points' events at the largest rate the backlog could show (model-only), so uploads never run short
        wanted = [max(args.min_events, int(args.point_s)), *(
            max(args.min_events, int(1.25 * f * first.images_per_s * args.point_s)) for f in LOAD_FRACTIONS)]
        points_paths = []
        next_index = backlog_n
        for n in wanted:
            points_paths.append(harness.uploads(bench.workdir / "images", n, args.side, start=next_index))
            next_index += n

        settings = bench.settings(spec=args.spec, batch_size=batch_size, partitions=args.partitions)
        ensure_topics(settings.kafka, settings.topics)
        worker = WorkerProcess(settings, log_path=bench.workdir / "worker.log").start()
        points: list[dict[str, Any]] = []
        try:
            with bench.reader(settings) as reader, harness.quiet_producer(settings) as producer:
                publish_raw(settings.kafka, settings.topics.images, harness.events(warmup, "warm"))
                harness.wait_answered(reader, len(warmup), 600, worker)
                reader.poll(1.0)  # the warm-up's commits and index writes settle
                before = harness.model_only(classifier, tensors, batch_size, images=max(8 * batch_size, 96))
                publish_raw(settings.kafka, settings.topics.images, harness.events(backlog, "sat"))
                outputs, sat_cpu_ms, sat_by_thread = harness.wait_answered_cpu(
                    reader, len(warmup) + backlog_n, 900, worker)
                after = harness.model_only(classifier, tensors, batch_size, images=max(8 * batch_size, 96))
                sat = harness.tagged(outputs, "sat")
                sat_ips = harness.steady_rate([ts for _, ts in sat])
                sat_timings = harness.mean_timings([v for v, _ in sat])
                rates = [("1/s", 1.0), *((f"{round(100 * f)}%", f * sat_ips) for f in LOAD_FRACTIONS)]
                for (label, rate), paths in zip(rates, points_paths, strict=True):
                    n = max(args.min_events, int(rate * args.point_s))
                    paths = paths[:n]
                    tag = f"p{len(points)}"
                    seen = reader.outputs.answered()
                    took = harness.offer(producer, reader, settings.topics.images, paths, rate, tag)
                    outputs = harness.wait_answered(reader, seen + len(paths), 300, worker)
                    mine = harness.tagged(outputs, tag)
                    latencies = [ts / 1000 - v.created_at.timestamp() for v, ts in mine if v.created_at]
                    stamps = sorted(ts for _, ts in mine)
                    points.append({
                        "offered": label,
                        "offered_events_per_s": round(rate, 2),
                        "published_in_s": round(took, 2),
                        "throughput_images_per_s": round((len(stamps) - 1) / max(1e-3, (stamps[-1] - stamps[0]) / 1000),
                                                         2) if len(stamps) > 1 else 0.0,
                        "latency": harness.latency_summary(latencies),
                        "mean_timings_ms": harness.mean_timings([v for v, _ in mine]),
                    })
                    print(f"{label}: {points[-1]['latency']}", file=sys.stderr)
        finally:
            worker.terminate()

    model_ips = statistics.mean([before.images_per_s, after.images_per_s])
    full_batch_ms = statistics.mean([before.batch_ms, after.batch_ms])
    ratio_target = harness.saturation_ratio_target(args.spec)
    at_1 = points[0]["latency"]
    at_50 = next(p for p in points if p["offered"] == "50%")["latency"]
    targets: dict[str, Any] = {
        "p99_at_50pct_le_4x_full_batch": {"p99_ms": at_50["p99_ms"], "limit_ms": round(4 * full_batch_ms, 1),
                                          "met": at_50["p99_ms"] <= 4 * full_batch_ms},
        f"saturation_ratio_ge_{ratio_target}": {"ratio": round(sat_ips / model_ips, 3),
                                                "met": sat_ips / model_ips >= ratio_target},
    }
    if args.spec == "opennsfw":
        targets["p50_at_1_event_per_s_le_60ms"] = {"p50_ms": at_1["p50_ms"], "met": at_1["p50_ms"] <= 60}
        targets["p99_at_1_event_per_s_le_150ms"] = {"p99_ms": at_1["p99_ms"], "met": at_1["p99_ms"] <= 150}
    info = classifier.info
    result = {
        "model": {"spec": args.spec, "name": info.name, "version": info.version, "backend": info.backend},
        "machine": {**machine_start, "loadavg_end": harness.machine()["loadavg"]},
        "latency_clock": "event created_at (set just before publishing) -> verdict record broker timestamp",
        "load_pattern": "open loop, evenly spaced events, one worker process",
        "upload_width_px": args.side,
        "batch_size": batch_size,
        "model_only": {
            "images_per_s": round(model_ips, 2),
            "images_per_s_before_after": [round(before.images_per_s, 2), round(after.images_per_s, 2)],
            "images_per_s_at_start": round(first.images_per_s, 2),
            "full_batch_ms": round(full_batch_ms, 1),
            "cpu_ms_per_image": round(statistics.mean([before.cpu_ms_per_image, after.cpu_ms_per_image]), 2),
        },
        "saturation": {
            "events": backlog_n,
            "images_per_s": round(sat_ips, 2),
            "ratio_to_model_only": round(sat_ips / model_ips, 3),
            "worker_cpu_ms_per_image": round(sat_cpu_ms, 2),
            # model-only CPU per image / the worker's: the same comparison without other processes' noise
            "cpu_efficiency_ratio": round(statistics.mean([before.cpu_ms_per_image, after.cpu_ms_per_image])
                                          / sat_cpu_ms, 3),
            "mean_timings_ms": sat_timings,
            "worker_cpu_ms_per_image_by_thread": sat_by_thread,
        },
        "points": points,
        "targets": targets,
        "wall_s": round(time.time() - started_at, 1),
    }
    plot_path = args.plot or RESULTS / f"latency_{_slug(args.spec)}.png"
    plot(result, plot_path)
    result["plot"] = str(plot_path)
    harness.report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
