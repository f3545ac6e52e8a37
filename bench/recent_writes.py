"""The read-your-writes search (``vitguard.stores.recent``) at line rate: one search of a group's unsafe
embeddings over the rows this worker wrote in the last 15 s. JSON on stdout.

Two scenarios, 192-d embeddings (the Marqo model's): ``wave``, every row and query a near copy of one image (an
abuse wave: every query is close to every recent row), and ``distinct``, random rows (nothing matches). The
defaults are 240 writes of 32 rows (~15 s at 500 images/s) and one group of 32 queries, at the near-duplicate
threshold 0.9 with 6 hits a query; ``ms_per_search`` is the mean over ``--repeats`` searches.

Run: ``.venv/bin/python bench/recent_writes.py [--writes 240] [--rows 32] [--repeats 20] [--out F]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness
import numpy as np

from vitguard.stores.interfaces import EmbeddingRecord
from vitguard.stores.recent import RecentWrites

DIM = 192


def _vectors(rng: np.random.Generator, base: np.ndarray | None, n: int) -> np.ndarray:
    noise = rng.standard_normal((n, DIM))
    return (noise if base is None else base + 0.05 * noise).astype(np.float32)


def measure(scenario: str, writes: int, rows: int, repeats: int) -> dict[str, float | int]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(DIM) if scenario == "wave" else None
    recent = RecentWrites()
    for w in range(writes):
        recent.wrote("col", [EmbeddingRecord(f"{w}-{i}", v, "unsafe", 0.9, "c", "t", "v", 0, 0)
                             for i, v in enumerate(_vectors(rng, base, rows))])
    queries = _vectors(rng, base, rows)
    hits = recent.search("col", queries, 6, 0.9)
    started = time.perf_counter()
    for _ in range(repeats):
        recent.search("col", queries, 6, 0.9)
    return {"recent_rows": writes * rows, "queries": rows,
            "ms_per_search": round((time.perf_counter() - started) / repeats * 1000, 3),
            "hits_per_query": round(sum(len(h) for h in hits) / len(hits), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=240)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {"benchmark": "recent_writes", "machine": harness.machine(),
              "scenarios": {s: measure(s, args.writes, args.rows, args.repeats) for s in ("wave", "distinct")}}
    harness.report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
