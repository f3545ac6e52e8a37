"""A diffusers pipeline's safety check: diffusers' stock checker against vitguard's, per image, on the same
images, CPU. JSON on stdout.

The stock ``StableDiffusionSafetyChecker`` runs CLIP ViT-L/14 (24 layers, 224 px) after the pipeline's
``CLIPImageProcessor``; no hub is reachable here, so it is built from that architecture's config with random
weights: the same computation, so the same cost (its answers are meaningless and are not compared). vitguard's
checker (:class:`vitguard.integrations.diffusers.VitguardSafetyChecker`) is timed with the bundled open_nsfw
(real weights) and with ``timm:vit_tiny_patch16_384`` (random weights: the architecture and compute of the default
model, Marqo's). Each checker is called the way the pipeline calls it: the images as a ``(N, 3, H, W)`` tensor in
``[-1, 1]``, the stock one with its CLIP pixels computed from PIL images first (counted: the pipeline does it
for the stock checker only). Every checker sees the same batches of real photos (scikit-image), resized to the
pipeline's output size; the median of ``--rounds`` timed calls after one warm-up, per image.

Run: ``.venv/bin/python bench/safety_checker.py [--size 512] [--batch 4] [--rounds 5] [--threads 2] [--out F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def _photos(size: int, count: int) -> list[Image.Image]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for path in sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg")):
        with Image.open(path) as image:
            if image.mode in ("RGB", "RGBA") and min(image.size) >= 256:
                out.append(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
        if len(out) == count:
            break
    return out


def _as_pipeline_tensor(images: list[Image.Image]) -> torch.Tensor:
    array = np.stack([np.asarray(i, dtype=np.float32) / 255 for i in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) * 2 - 1


def _time(call: Any, rounds: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="generated image side (px)")
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import CLIPImageProcessor

    from vitguard.integrations.diffusers import VitguardSafetyChecker
    from vitguard.model import load_classifier
    from vitguard.settings import ModelSettings, PolicySettings
    from vitguard.testing.diffusion import stock_safety_checker

    photos = _photos(args.size, args.batch)
    tensor = _as_pipeline_tensor(photos)
    stock, processor = stock_safety_checker(full_size=True), CLIPImageProcessor()

    def stock_call() -> None:
        with torch.inference_mode():
            clip_input = processor(photos, return_tensors="pt").pixel_values
            stock(images=tensor.clone(), clip_input=clip_input)

    rows: dict[str, Any] = {}
    times = _time(stock_call, args.rounds)
    rows["diffusers_stock_clip_vit_l14"] = _row(times, args.batch, "random weights, the real architecture")
    for name, spec, note in (("vitguard_opennsfw", "opennsfw", "real weights"),
                             ("vitguard_vit_tiny_384", "timm:vit_tiny_patch16_384",
                              "random weights, the default model's architecture")):
        classifier = load_classifier(spec, settings=ModelSettings(threads=args.threads))
        checker = VitguardSafetyChecker(classifier, policy=PolicySettings(), threshold=1.01)
        rows[name] = _row(_time(lambda c=checker: c(images=tensor.clone()), args.rounds), args.batch, note)
    stock_ms = rows["diffusers_stock_clip_vit_l14"]["ms_per_image"]
    for row in rows.values():
        row["vs_stock"] = round(row["ms_per_image"] / stock_ms, 3)
    report = {"benchmark": "safety_checker", "image_px": args.size, "batch": args.batch, "rounds": args.rounds,
              "threads": args.threads, "images": len(photos), "checkers": rows}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _row(times: list[float], batch: int, note: str) -> dict[str, Any]:
    median = statistics.median(times)
    return {"ms_per_image": round(1000 * median / batch, 2), "ms_per_call_median": round(1000 * median, 1),
            "ms_per_call_min": round(1000 * min(times), 1), "weights": note}


if __name__ == "__main__":
    main()
