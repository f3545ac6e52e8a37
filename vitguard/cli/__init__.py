"""The one ``vitguard`` command. Each sub-module registers its commands on the group.

Sub-modules import heavy libraries (torch, faust, pymilvus) inside their commands, so ``vitguard --help``
stays fast. Every :class:`~vitguard.errors.VitguardError` ends as one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from vitguard.errors import VitguardError

__all__ = ["main"]


class _Group(click.Group):
    """Turns vitguard's own errors into one clear line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VitguardError as exc:
            click.echo(f"vitguard: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="vitguard")
def main() -> None:
    """vitguard: streaming NSFW image moderation on Kafka."""


def _register() -> None:
    from vitguard.cli import (
        banks_cmd,
        clusters_cmd,
        config_cmd,
        demo_cmd,
        dev_cmd,
        finetune_cmd,
        model_cmd,
        policy_cmd,
        publish_cmd,
        replay_cmd,
        retro_cmd,
        review_cmd,
        schemas_cmd,
        search_cmd,
        tail_cmd,
        worker_cmd,
    )

    modules = (worker_cmd, demo_cmd, dev_cmd, publish_cmd, replay_cmd, tail_cmd, model_cmd, search_cmd, clusters_cmd,
               retro_cmd, finetune_cmd, schemas_cmd, config_cmd, review_cmd, banks_cmd, policy_cmd)
    for module in modules:
        module.register(main)


_register()
