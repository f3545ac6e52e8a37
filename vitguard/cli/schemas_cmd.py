"""``vitguard schemas``: the event contracts as JSON Schema."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["register"]


@click.group("schemas")
def schemas() -> None:
    """Event contracts (JSON Schema) for downstream teams."""


@schemas.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
def export(out_dir: Path) -> None:
    """Write one JSON Schema file per event into OUT_DIR."""
    from vitguard.schemas import export_json_schemas

    for path in export_json_schemas(out_dir):
        click.echo(str(path))


def register(group: click.Group) -> None:
    group.add_command(schemas)
