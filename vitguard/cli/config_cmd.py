"""``vitguard config``: the effective settings, as the worker would see them."""

from __future__ import annotations

import json

import click

__all__ = ["register"]


@click.group("config")
def config() -> None:
    """Inspect settings (environment variables VITGUARD_*)."""


@config.command("show")
def show() -> None:
    """Validate the environment and print the effective settings as JSON (secrets masked)."""
    from vitguard.settings import load_settings

    settings = load_settings()
    click.echo(json.dumps(settings.model_dump(mode="json"), indent=2, default=str))


@config.command("reference")
def reference() -> None:
    """Print the configuration reference (Markdown) generated from the settings classes."""
    from vitguard.settings_reference import reference_markdown

    click.echo(reference_markdown(), nl=False)


def register(group: click.Group) -> None:
    group.add_command(config)
