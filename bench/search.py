"""Similarity search at scale: latency and recall@10 of the store's search (what ``POST /search`` and the
retro-hunts run) on Milvus Lite and on a Milvus server, at the embedding sizes of the two models. JSON on stdout.

Per backend, dimension (192: the Marqo ViT; 1,024: open_nsfw) and size: a fresh collection through vitguard's own
adapter (:class:`vitguard.stores.MilvusEmbeddingIndex`, its index: ``AUTOINDEX``, cosine), filled in upserts of
``--chunk`` rows (rows/s), then ``--queries`` searches of the top 10 (``similar``: p50/p99 ms at ``Strong``
consistency and at ``Bounded``, the default of ``POST /search``, ``VITGUARD_MILVUS_SEARCH_CONSISTENCY``; recall@10
against an exact numpy search of the same rows), and the same number of retro-hunts (the top 100 items labelled
``safe`` at or above a similarity floor, at the default consistency; p50/p99 ms). On the server the searches
start once every row is indexed (``index_build_s``): the steady state of a store that runs for days, not the
minutes right after a bulk load.

The rows are clustered, as embeddings of real uploads are (families of near-copies around many motifs: centres
drawn at random, members within a small angle of their centre; every fifth row ``unsafe``), normalised; half the
queries are near-copies of stored rows, half new members of stored families. Uniform random vectors would be the
hardest case for any approximate index and nothing like the data.

Run: ``.venv/bin/python bench/search.py [--sizes 100000 1000000] [--dims 192 1024] [--backends lite server]
[--queries 200] [--out F]``. The server is PyPI ``milvus`` 2.3.5's standalone binary as a local process (started
and stopped here); its CPU competes with this process on small machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the Milvus server harness lives under tests/harness/

from vitguard.model.types import ModelInfo  # noqa: E402
from vitguard.settings import MilvusSettings  # noqa: E402
from vitguard.stores import EmbeddingRecord, MilvusEmbeddingIndex  # noqa: E402
from vitguard.stores.similar import SearchFilters  # noqa: E402

FAMILY = 50
"""Rows per family on average (the size / 50 centres)."""
SPREAD = 0.35
"""Noise scale of a family member around its centre (cosine to the centre ~0.9 at 192-d)."""
HUNT_FLOOR = 0.92
"""The retro-hunts' similarity floor (the default near-duplicate threshold)."""


def _unit(rows: NDArray[np.float32]) -> NDArray[np.float32]:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, rng: np.random.Generator) -> tuple[NDArray[np.float32], NDArray[np.intp],
                                                                    NDArray[np.float32]]:
    """``n`` unit rows in families: (rows, each row's family, the family centres)."""
    centres = _unit(rng.normal(size=(max(1, n // FAMILY), dim)).astype(np.float32))
    family = rng.integers(0, len(centres), size=n)
    noise = rng.normal(scale=SPREAD / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    return _unit(centres[family] + noise), family, centres


def queries(rows: NDArray[np.float32], centres: NDArray[np.float32], count: int,
            rng: np.random.Generator) -> NDArray[np.float32]:
    dim = rows.shape[1]
    copies = rows[rng.integers(0, len(rows), size=count // 2)] + rng.normal(
        scale=0.05 / np.sqrt(dim), size=(count // 2, dim)).astype(np.float32)
    members = centres[rng.integers(0, len(centres), size=count - count // 2)] + rng.normal(
        scale=SPREAD / np.sqrt(dim), size=(count - count // 2, dim)).astype(np.float32)
    return _unit(np.concatenate([copies, members]))


def exact_top(rows: NDArray[np.float32], query: NDArray[np.float32], k: int) -> list[int]:
    sims = rows @ query
    top = np.argpartition(-sims, k)[:k]
    return [int(i) for i in top[np.argsort(-sims[top])]]


@contextmanager
def backend(name: str, tmp: Path) -> Iterator[str]:
    """The Milvus URI of a fresh backend."""
    if name == "lite":
        yield str(tmp / f"search-{time.monotonic_ns()}.db")
        return
    from tests.harness.milvus_server import MilvusServerProcess

    server = MilvusServerProcess(tmp / f"milvus-{time.monotonic_ns()}").start()
    try:
        yield server.uri
    finally:
        server.stop()


def measure(uri: str, dim: int, size: int, n_queries: int, chunk: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows, _, centres = clustered(size, dim, rng)
    asked = queries(rows, centres, n_queries, rng)
    index = MilvusEmbeddingIndex(MilvusSettings(uri=uri))
    try:
        collection = index.ensure_collection(ModelInfo(f"bench-{dim}", "v1", ("NSFW", "SFW"), dim, (3, 8, 8)))
        started = time.perf_counter()
        for start in range(0, size, chunk):
            index.upsert(collection, [
                EmbeddingRecord(f"r{i}", rows[i], "unsafe" if i % 5 == 0 else "safe", 0.9 if i % 5 == 0 else 0.1,
                                f"c-{i}" if i % 5 == 0 else "", "t1", "v1", i, i)
                for i in range(start, min(start + chunk, size))])
        insert_s = time.perf_counter() - started
        index.flush(collection)
        index_s = _wait_indexed(index, collection, size) if not uri.endswith(".db") else 0.0
        index.similar(collection, asked[0], limit=10, min_similarity=-1.0)  # loads the collection, builds what is lazy
        latencies, bounded, recalls = [], [], []
        for q in asked:
            t0 = time.perf_counter()
            found = index.similar(collection, q, limit=10, min_similarity=-1.0, consistency="Strong")
            latencies.append(time.perf_counter() - t0)
            truth = {f"r{i}" for i in exact_top(rows, q, 10)}
            recalls.append(len(truth & {f.content_id for f in found}) / 10)
            t0 = time.perf_counter()
            index.similar(collection, q, limit=10, min_similarity=-1.0, consistency="Bounded")
            bounded.append(time.perf_counter() - t0)
        hunts = []
        safe = SearchFilters(labels=("safe",))
        for q in asked:
            t0 = time.perf_counter()
            index.similar(collection, q, limit=100, min_similarity=HUNT_FLOOR, filters=safe)  # the default: Bounded
            hunts.append(time.perf_counter() - t0)
    finally:
        index.close()
    return {"size": size, "dim": dim, "insert_rows_per_s": round(size / insert_s), "insert_s": round(insert_s, 1),
            "index_build_s": round(index_s, 1),
            "search_p50_ms": _ms(latencies, 50), "search_p99_ms": _ms(latencies, 99),
            "search_bounded_p50_ms": _ms(bounded, 50), "search_bounded_p99_ms": _ms(bounded, 99),
            "recall_at_10": round(statistics.mean(recalls), 4), "recall_at_10_min": min(recalls),
            "retro_hunt_p50_ms": _ms(hunts, 50), "retro_hunt_p99_ms": _ms(hunts, 99), "queries": len(asked)}


def _wait_indexed(index: MilvusEmbeddingIndex, collection: str, size: int, timeout_s: float = 1800.0) -> float:
    """A server indexes sealed segments in the background: wait until every row is indexed (steady state, as a
    long-running store is), so the searches measure the index and not the build beside it. Seconds waited."""
    client = index._connected()  # noqa: SLF001 - the bench reads the server's index progress
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        described = client.describe_index(collection, "embedding")
        if int(described.get("indexed_rows", 0)) >= size and not int(described.get("pending_index_rows", 0)):
            break
        time.sleep(2.0)
    return time.perf_counter() - started


def _ms(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[192, 1024])
    parser.add_argument("--backends", nargs="+", choices=["lite", "server"], default=["lite", "server"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=5000, help="rows per upsert")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="vitguard-search-") as tmp:
        for name in args.backends:
            for dim in args.dims:
                for size in args.sizes:
                    with backend(name, Path(tmp)) as uri:
                        row = {"backend": name, **measure(uri, dim, size, args.queries, args.chunk, args.seed)}
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    runs.append(row)
    text = json.dumps({"benchmark": "search", "index": "AUTOINDEX (cosine), vitguard's adapter", "runs": runs},
                      indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
