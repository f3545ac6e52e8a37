"""``vitguard worker``: the streaming moderation worker, configured from ``VITGUARD_*`` environment variables."""

from __future__ import annotations

import os

import click

__all__ = ["SINGLE_THREADED_BLAS", "register"]

SINGLE_THREADED_BLAS = {"OPENBLAS_NUM_THREADS": "1"}
"""Set (unless the operator set them) before numpy loads in a worker. numpy's OpenBLAS starts a pool of
threads that spin between calls; the worker's matrix products are small (PDQ hashes, near-duplicate
clustering, recent-write search) and come from several pipeline threads, so the pool bought nothing and its
spinning took ~60% of a core: with the tiny model at line rate, 2.4 CPU-ms an image in unnamed threads,
0.47 with one BLAS thread (bench/pipeline_throughput.py, same run otherwise). The model's own thread pools
(torch, onnxruntime) are not OpenBLAS's and are unaffected."""


@click.command("worker")
@click.option(
    "--create-topics/--no-create-topics",
    default=True,
    help="Create missing topics (VITGUARD_TOPIC_PARTITIONS partitions) before starting.",
)
def worker(create_topics: bool) -> None:
    """Consume image events, moderate them in micro-batches, publish verdicts, alerts and dead letters.

    Runs until SIGTERM/SIGINT; the in-flight batch is then abandoned uncommitted (it is redelivered).
    Web endpoints: /healthz, /readyz, /metrics, POST /classify (VITGUARD_WEB_PORT, default 6066).
    """
    for name, value in SINGLE_THREADED_BLAS.items():
        os.environ.setdefault(name, value)
    from vitguard.consumers import run_worker
    from vitguard.settings import load_settings

    run_worker(load_settings(), create_topics=create_topics)


def register(group: click.Group) -> None:
    group.add_command(worker)
