"""``vitguard worker``: the streaming moderation worker, configured from ``VITGUARD_*`` environment variables."""

from __future__ import annotations

import click

__all__ = ["register"]


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
    from vitguard.consumers import run_worker
    from vitguard.settings import load_settings

    run_worker(load_settings(), create_topics=create_topics)


def register(group: click.Group) -> None:
    group.add_command(worker)
