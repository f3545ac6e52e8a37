"""``vitguard dev up`` / ``dev down``: the embedded broker and a private Redis for local development."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["register"]

_DIR = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                    default=Path(".vitguard-dev"), show_default=True,
                    help="Where the stack keeps its state (and Milvus Lite its file).")


@click.group("dev")
def dev() -> None:
    """A local stack for development (embedded Kafka-compatible broker, redis-server), kept running."""


@dev.command("up")
@_DIR
@click.option("--partitions", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Partitions of the topics created.")
def up_cmd(directory: Path, partitions: int) -> None:
    """Start the stack (or find it running), create the topics, print the export lines.

    Use as: eval "$(vitguard dev up)"
    """
    from vitguard.dev.stack import up

    stack = up(directory, partitions=partitions)
    for line in stack.exports():
        click.echo(line)


@dev.command("down")
@_DIR
def down_cmd(directory: Path) -> None:
    """Stop the stack started by ``vitguard dev up``."""
    from vitguard.dev.stack import down

    stopped = down(directory)
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running", err=True)


def register(group: click.Group) -> None:
    group.add_command(dev)
