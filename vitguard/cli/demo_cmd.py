"""``vitguard demo``: the main job end to end on this machine (embedded services when none is configured)."""

from __future__ import annotations

import sys

import click

__all__ = ["register"]


@click.command("demo")
@click.option("--photos", default=6, show_default=True, help="Distinct sample photos to publish.")
@click.option("--copies", default=4, show_default=True, help="Near-duplicates of the flagged photo.")
@click.option("--burst", default=6, show_default=True, help="Further copies of it, published as a wave.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, help="Seconds to wait for all answers.")
@click.option("--unsafe-threshold", type=float, default=None,
              help="Use this unsafe threshold instead of the simulated one.")
@click.option("--real-policy", is_flag=True, help="Keep the configured policy: no simulated unsafe family.")
@click.option("--batch-size", default=8, show_default=True, help="Worker micro-batch size.")
def demo(photos: int, copies: int, burst: int, timeout_s: float, unsafe_threshold: float | None,
         real_policy: bool, batch_size: int) -> None:
    """Publish sample images (photos, near-duplicates, a wave, bad events), run a worker, print its outputs.

    Uses VITGUARD_KAFKA_BOOTSTRAP_SERVERS / VITGUARD_REDIS_URL when they answer, otherwise starts an
    embedded broker and redis-server; Milvus Lite lives in a temporary directory. Exits 0 when every
    event got exactly one verdict or dead letter.
    """
    from vitguard.demo.run import DemoOptions, run_demo
    from vitguard.logging import configure_logging
    from vitguard.settings import LogSettings

    configure_logging(LogSettings(level="WARNING"))
    options = DemoOptions(photos=photos, copies=copies, burst=burst, timeout_s=timeout_s,
                          unsafe_threshold=unsafe_threshold, real_policy=real_policy, batch_size=batch_size)
    sys.exit(run_demo(options, echo=click.echo))


def register(group: click.Group) -> None:
    group.add_command(demo)
