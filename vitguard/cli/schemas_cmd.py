"""``vitguard schemas``: the event contracts as JSON Schema, and the worker's HTTP API as OpenAPI."""

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
    """Write one JSON Schema file per event into OUT_DIR, and the worker's HTTP API (openapi.json)."""
    import json

    from vitguard.consumers.openapi import openapi_document
    from vitguard.schemas import export_json_schemas

    for path in export_json_schemas(out_dir):
        click.echo(str(path))
    api = out_dir / "openapi.json"
    api.write_text(json.dumps(openapi_document(), indent=2) + "\n")
    click.echo(str(api))


def register(group: click.Group) -> None:
    group.add_command(schemas)
