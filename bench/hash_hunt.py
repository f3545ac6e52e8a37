"""A retro-hunt by PDQ hash over N stored items: building the retro-hunter's catalog from verdicts, and hunting
one new bank entry's hash over it (an exact scan with popcounts). JSON on stdout.

The stored hashes are random 256-bit codes with every tenth a near copy (0-40 bits flipped) of a few hundred
motifs; the hunted hashes are motifs, so each hunt finds real matches. ``build_s`` is folding N verdict objects
into the catalog (reading them from the topic and parsing the JSON comes on top: ~50 us a verdict here);
``hunt_ms`` is one hunt at the default distance 31, p50 and max over the queries.

Run: ``.venv/bin/python bench/hash_hunt.py [--items 1000000] [--queries 50] [--out F]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import harness
import numpy as np

from vitguard.retro.hashes import HashCatalog
from vitguard.schemas.events import Verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(11)
    motifs = rng.integers(0, 256, size=(500, 32), dtype=np.uint8)
    codes = rng.integers(0, 256, size=(args.items, 32), dtype=np.uint8)
    copies = np.arange(0, args.items, 10)
    codes[copies] = motifs[rng.integers(0, len(motifs), len(copies))]
    flips = rng.integers(0, 256, size=(len(copies), 20))
    for k in range(20):  # up to 20 single-bit flips per copy (some repeat: 0-20 bits)
        codes[copies, flips[:, k] // 8] ^= (1 << (flips[:, k] % 8)).astype(np.uint8)
    template = Verdict(event_id="e", content_id="c", label="safe", unsafe_score=0.1, top_class="SFW",
                       scores={"NSFW": 0.1, "SFW": 0.9}, model_name="m", model_version="v1", pdq_quality=90)
    catalog = HashCatalog(50)
    started = time.perf_counter()
    for i in range(args.items):
        catalog.add(template.model_copy(update={"content_id": f"i{i}", "pdq_hash": codes[i].tobytes().hex()}))
    build_s = time.perf_counter() - started
    times, found = [], []
    for q in range(args.queries):
        query = motifs[q % len(motifs)].tobytes().hex()
        t0 = time.perf_counter()
        found.append(len(catalog.hunt(query, 31)))
        times.append((time.perf_counter() - t0) * 1000)
    result = {"items": args.items, "build_s": round(build_s, 1), "queries": args.queries,
              "hunt_ms": {"p50": round(statistics.median(times), 1), "max": round(max(times), 1)},
              "matches_per_hunt_mean": round(statistics.mean(found), 1)}
    harness.report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
