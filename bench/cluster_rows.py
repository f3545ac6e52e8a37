"""Clusters kept as their own rows (``vitguard.stores.cluster_rows``): what a listing costs as the store grows,
against a private ``redis-server`` on loopback. JSON on stdout.

Writes ``--items`` sightings spread over ``--clusters`` clusters (a few large ones, many small: every tenth item
on one of ten "wave" clusters) in groups of 32, as the alert stage does, then times ``GET /clusters``'s read
(the 50 most recently active clusters with size, tenants, latest items and growth) and reports Redis's memory.
``write_us_per_item`` is the alert stage's added cost per unsafe item (one pipelined round trip a group).

Run: ``.venv/bin/python bench/cluster_rows.py [--items 200000] [--clusters 50000] [--out F]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import harness
import redis

from vitguard.settings import RedisSettings
from vitguard.stores.cluster_rows import RedisClusterRows
from vitguard.stores.interfaces import ClusterSighting
from vitguard.testing.services import running, start_redis


async def measure(url: str, items: int, clusters: int, queries: int) -> dict[str, object]:
    rows = RedisClusterRows(RedisSettings(url=url, key_prefix="bench:"))
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    group: list[ClusterSighting] = []
    for i in range(items):
        cid = f"c-wave-{i % 10}" if i % 10 == 0 else f"c-{i % clusters:08d}"
        group.append(ClusterSighting(cid, f"item-{i}", f"t{i % 100}", now_ms - (items - i), now_ms - (items - i)))
        if len(group) == 32:
            await rows.record_many(group)
            group = []
    if group:
        await rows.record_many(group)
    write_s = time.perf_counter() - started
    timings = []
    for _ in range(queries):
        t = time.perf_counter()
        listed = await rows.latest(limit=50, now_s=now_ms / 1000, window_s=600)
        timings.append((time.perf_counter() - t) * 1000)
    count = await rows.count()
    await rows.close()
    memory = redis.Redis.from_url(url).info("memory")["used_memory"]
    return {"items": items, "clusters": count, "write_us_per_item": round(write_s / items * 1e6, 1),
            "list_50_ms": {"p50": round(statistics.median(timings), 2), "max": round(max(timings), 2)},
            "largest_listed_size": max(r.size for r in listed), "redis_used_memory_mb": round(memory / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--clusters", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with running(start_redis()) as service:
        result = asyncio.run(measure(service.address, args.items, args.clusters, args.queries))
    harness.report({"benchmark": "cluster_rows", "machine": harness.machine(), **result}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
