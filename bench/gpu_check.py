"""The GPU path measured in one short run (``bench/gpu_check.sh`` runs this under a time limit).

Sections, each written to ``--out`` as soon as it is done (so a run cut short by the limit still says
what it measured; ``complete`` turns true at the end):

* ``model_only``: timm ``vit_tiny_patch16_384`` (random weights: the Marqo checkpoint's compute) with
  autocast, images/s at batch 64, 256 and 1024, two ways: input already on the device (what timm's own
  benchmark measures) and from a host float32 batch through ``predict`` (pinned staging, non-blocking copy);
* ``single_image``: latency of one image, ``predict`` on a prepared tensor and ``predict_encoded`` from
  JPEG bytes;
* ``decode``: JPEG uploads to normalised input, images/s: nvJPEG + GPU preprocessing in batches
  (``TensorPreprocessor``) against the CPU ``Preprocessor`` on a thread pool of every core;
* ``compiled`` (only when asked for in ``--sections``: compiling takes a while): ``torch.compile`` at batch
  256, the compile time and images/s with the input on the device;
* ``end_to_end``: a backlog of distinct uploads through a real ``vitguard worker`` on the embedded services
  (broker, Redis, Milvus Lite) with the model on CUDA; images/s and its ratio to model-only from host at
  the worker's batch size.

Without CUDA it writes ``{"gpu": false, ...}`` and exits 0, unless ``--allow-cpu`` (tiny sizes, for tests).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

ARCH = "timm:vit_tiny_patch16_384"
TARGET_MODEL_ONLY = 10_000.0
TARGET_E2E_RATIO = 0.8


class Report:
    """The JSON document, rewritten to ``path`` after every section."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {"complete": False}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()
        print(f"gpu_check: {key} done", file=sys.stderr)

    def flush(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            tmp.replace(self.path)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rate(fn: Callable[[], object], images: int, device: str, min_s: float, min_iters: int = 3) -> dict[str, float]:
    """images/s and median ms per call of ``fn`` (each call handles ``images``), after one warm-up call."""
    fn()
    _sync(device)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - started < min_s:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - t0)
    return {"images_per_s": round(images * len(samples) / sum(samples), 1),
            "ms_per_batch": round(1000 * statistics.median(samples), 2), "iterations": len(samples)}


def _uploads(root: Path, count: int, side: int) -> list[Path]:
    """Distinct JPEG uploads, made on every core (``harness.uploads`` in chunks)."""
    import harness

    chunk = max(1, -(-count // (os.cpu_count() or 1)))
    starts = list(range(0, count, chunk))
    # spawn, not fork: this process may hold a CUDA context, which a forked child must not inherit
    with ProcessPoolExecutor(min(len(starts), os.cpu_count() or 1), mp_context=mp.get_context("spawn")) as pool:
        parts = pool.map(harness.uploads, [root] * len(starts), [min(chunk, count - s) for s in starts],
                         [side] * len(starts), [0] * len(starts), starts)
        return [p for part in parts for p in part]


def model_only(clf: Any, device: str, sizes: list[int], min_s: float, sample: np.ndarray) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for n in sizes:
        host = np.ascontiguousarray(np.broadcast_to(sample, (n, *sample.shape)))
        on_device = torch.from_numpy(host).to(device)
        with torch.inference_mode():
            resident = _rate(functools.partial(clf._outputs, on_device), n, device, min_s)
        from_host = _rate(functools.partial(clf.predict, host), n, device, min_s)
        out[f"batch_{n}"] = {"device_resident": resident, "from_host_predict": from_host}
        del on_device, host
    return out


def compiled(device: str, batch: int, min_s: float, sample: np.ndarray) -> dict[str, Any]:
    import torch

    from vitguard.model import load_torch_classifier
    from vitguard.settings import ModelSettings

    clf = load_torch_classifier(ARCH, settings=ModelSettings.model_construct(
        device=device, amp="fp16", torch_compile=True))  # type: ignore[arg-type]
    x = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(sample, (batch, *sample.shape)))).to(device)
    started = time.perf_counter()
    with torch.inference_mode():
        clf._outputs(x)
        _sync(device)
        compile_s = time.perf_counter() - started
        rate = _rate(functools.partial(clf._outputs, x), batch, device, min_s)
    return {"batch": batch, "compile_s": round(compile_s, 1), "device_resident": rate}


def single_image(clf: Any, sample: np.ndarray, jpeg: bytes, device: str) -> dict[str, Any]:
    one = sample[None]

    def median_ms(fn: Callable[[], object], n: int = 50) -> float:
        for _ in range(5):
            fn()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(samples), 2)

    return {"predict_ms": median_ms(lambda: clf.predict(one)),
            "predict_encoded_jpeg_ms": median_ms(lambda: clf.predict_encoded([jpeg])),
            "cpu_prepare_ms": median_ms(lambda: clf.prepare(jpeg), 20)}


def decode(clf: Any, datas: list[bytes], device: str, batch: int, min_s: float) -> dict[str, Any]:
    import torch

    from vitguard.model.gpu_decode import TensorPreprocessor
    from vitguard.model.preprocess import Preprocessor

    tensor = TensorPreprocessor(clf.data_config, device=device)
    cpu = Preprocessor(clf.data_config)
    threads = os.cpu_count() or 1
    chunks = [datas[i : i + batch] for i in range(0, len(datas), batch)]

    def on_device() -> None:
        with torch.inference_mode():
            for c in chunks:
                tensor.batch(c)

    with ThreadPoolExecutor(threads) as pool:
        def on_cpu() -> None:
            list(pool.map(cpu, datas))

        cpu_rate = _rate(on_cpu, len(datas), "cpu", min_s, min_iters=2)
    return {"images": len(datas), "jpeg_bytes_mean": round(statistics.mean(map(len, datas))),
            "device_batch": batch, "device": _rate(on_device, len(datas), device, min_s, min_iters=2),
            "cpu_threads": threads, "cpu": cpu_rate}


def end_to_end(device: str, events: int, batch: int, side: int, reference: float, workdir: Path) -> dict[str, Any]:
    import harness

    from vitguard.consumers.topics import ensure_topics
    from vitguard.testing.worker import WorkerProcess, publish_raw

    with harness.Bench(prefix="vitguard-gpu-check-") as bench:
        paths = _uploads(bench.workdir / "images", events, side)
        settings = bench.settings(
            spec=ARCH, batch_size=batch,
            model={"device": device, "amp": "fp16"},
            batch={"decode_workers": min(64, 2 * (os.cpu_count() or 1))},
            worker={"max_in_flight": max(64, 8 * batch)},
        )
        ensure_topics(settings.kafka, settings.topics)
        publish_raw(settings.kafka, settings.topics.images, harness.events(paths, "e2e"))
        started = time.monotonic()
        worker = WorkerProcess(settings, log_path=workdir / "gpu-check-worker.log").start()
        try:
            with bench.reader(settings) as reader:
                outputs = harness.wait_answered(reader, events, 180, worker)
        finally:
            worker.terminate()
        ips = harness.steady_rate(outputs.verdict_timestamps_ms)
        return {
            "events": events, "batch_size": batch, "upload_width_px": side,
            "images_per_s": round(ips, 1),
            "ratio_to_model_only_from_host": round(ips / reference, 3) if reference else None,
            "mean_timings_ms": harness.mean_timings(outputs.verdicts),
            "wall_s_including_start": round(time.monotonic() - started, 1),
            "dead_letters": len(outputs.dead_letters),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON here (after every section)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU with tiny sizes (tests)")
    parser.add_argument("--sections", default="model_only,single_image,decode,end_to_end")
    parser.add_argument("--e2e-events", type=int, default=6000)
    parser.add_argument("--e2e-batch", type=int, default=256)
    args = parser.parse_args()
    report = Report(args.out)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        report.data.update({"gpu": False, "reason": "torch.cuda.is_available() is false", "complete": True,
                            "torch": torch.__version__})
        report.flush()
        if args.out is None:
            print(json.dumps(report.data))
        return 0
    device: Literal["cuda", "cpu"] = "cuda" if cuda else "cpu"
    tiny = not cuda
    report.put("machine", {
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(),
        "tiny_cpu_run": tiny,
    })
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    from vitguard.model import load_torch_classifier
    from vitguard.settings import ModelSettings

    clf = load_torch_classifier(ARCH, settings=ModelSettings.model_construct(device=device, amp="fp16"))
    workdir = Path(tempfile.mkdtemp(prefix="vitguard-gpu-check-"))
    uploads = _uploads(workdir / "decode", 8 if tiny else 512, 640)
    datas = [p.read_bytes() for p in uploads]
    sample = clf.prepare(datas[0])
    sizes = [2, 4] if tiny else [64, 256, 1024]
    min_s = 0.2 if tiny else 2.0
    reference = 0.0
    if "model_only" in sections:
        measured = model_only(clf, device, sizes, min_s, sample)
        best = max(v["device_resident"]["images_per_s"] for v in measured.values())
        measured["target_device_resident_images_per_s"] = {"value": TARGET_MODEL_ONLY, "met": best >= TARGET_MODEL_ONLY}
        report.put("model_only", measured)
        at = f"batch_{args.e2e_batch}"
        if at in measured:
            reference = measured[at]["from_host_predict"]["images_per_s"]
    if "single_image" in sections:
        report.put("single_image", single_image(clf, sample, datas[0], device))
    if "decode" in sections:
        report.put("decode", decode(clf, datas, device, 4 if tiny else 256, min_s))
    if "compiled" in sections:
        report.put("compiled", compiled(device, 4 if tiny else 256, min_s, sample))
    if "end_to_end" in sections:
        if not reference:
            host = np.ascontiguousarray(np.broadcast_to(sample, (args.e2e_batch, *sample.shape)))
            reference = _rate(lambda: clf.predict(host), args.e2e_batch, device, min_s)["images_per_s"]
        del clf
        if cuda:
            torch.cuda.empty_cache()
        e2e = end_to_end(device, 24 if tiny else args.e2e_events, 4 if tiny else args.e2e_batch, 640, reference,
                         workdir)
        e2e["target_ratio"] = {"value": TARGET_E2E_RATIO,
                               "met": (e2e["ratio_to_model_only_from_host"] or 0) >= TARGET_E2E_RATIO}
        report.put("end_to_end", e2e)
    report.data["wall_s"] = round(time.perf_counter() - started, 1)
    report.data["complete"] = True
    report.flush()
    if args.out is None:
        print(json.dumps(report.data, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
