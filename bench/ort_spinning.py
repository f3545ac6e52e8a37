"""onnxruntime's thread spinning and one image at idle: what ``VITGUARD_MODEL_ORT_SPINNING`` buys, and for how long.

open_nsfw (the bundled ONNX graph), one image per run, on sessions built by vitguard's own
``vitguard.model.ort.create_session`` three ways: spinning off (vitguard's default), on
(``VITGUARD_MODEL_ORT_SPINNING=1``), and on with ``session.force_spinning_stop`` (the pool stops spinning when
a run ends). Meant for the CPU: where onnxruntime has CUDA, ``create_session`` runs on it. Rounds alternate
the three so this host's drifting speed falls on each alike. Per way, medians over rounds of:

- ``back_to_back_ms``: one image, runs one after another;
- ``after_pause_ms``: one image after each pause of ``--pauses-ms`` (an idle worker's next request);
- ``cpu_ms_in_pause``: CPU the process burns during a pause after a run (spinning threads);
- ``batch_ms``: one batch of ``--batch`` images, back to back.

Run: ``.venv/bin/python bench/ort_spinning.py [--rounds 4] [--runs 30] [--pauses-ms 50 200] [--batch 32] [--out F]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

WAYS: dict[str, dict[str, Any]] = {
    "off": {"spinning": False},
    "on": {"spinning": True},
    "on_stop_after_run": {"spinning": True, "config": {"session.force_spinning_stop": "1"}},
}
"""Keyword arguments of :func:`vitguard.model.ort.create_session`, the sessions vitguard itself builds."""


def _ms(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def measure(session: Any, runs: int, pauses_s: list[float], batch: int) -> dict[str, Any]:
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    one = {name: rng.uniform(-120, 130, size=(1, 224, 224, 3)).astype(np.float32)}
    many = {name: rng.uniform(-120, 130, size=(batch, 224, 224, 3)).astype(np.float32)}
    run = lambda feed: session.run(None, feed)  # noqa: E731
    for _ in range(5):
        run(one)
    out: dict[str, Any] = {"back_to_back_ms": statistics.median(_ms(lambda: run(one)) for _ in range(runs))}
    for pause in pauses_s:
        after, burnt = [], []
        for _ in range(runs):
            run(one)
            cpu = time.process_time()
            time.sleep(pause)
            burnt.append((time.process_time() - cpu) * 1000)
            after.append(_ms(lambda: run(one)))
        out[f"after_pause_{pause * 1000:.0f}ms"] = {"after_pause_ms": statistics.median(after),
                                                    "cpu_ms_in_pause": statistics.median(burnt)}
    run(many)
    out["batch_ms"] = statistics.median(_ms(lambda: run(many)) for _ in range(3))
    return out


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    first = rounds[0]
    return {k: _median_of([r[k] for r in rounds]) if isinstance(v, dict)
            else round(statistics.median(r[k] for r in rounds), 2) for k, v in first.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds; each builds and measures all three ways")
    parser.add_argument("--runs", type=int, default=30, help="runs per figure and round")
    parser.add_argument("--pauses-ms", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's, one per core)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    from vitguard.model.opennsfw import bundled_model_path
    from vitguard.model.ort import create_session

    model = bundled_model_path()
    pauses = [p / 1000 for p in args.pauses_ms]
    rounds: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for way, config in WAYS.items():
            session = create_session(model, threads=args.threads, **config)
            rounds[way].append(measure(session, args.runs, pauses, args.batch))
            del session
    text = json.dumps({
        "bench": "ort_spinning", "model": "opennsfw", "rounds": args.rounds, "runs": args.runs,
        "ways": {way: _median_of(r) for way, r in rounds.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }, indent=2)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
