"""Options and helpers shared by ``vitguard publish``, ``replay`` and ``tail``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from vitguard.settings import Settings

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "kafka_options", "load_cli_settings"]

DEFAULT_CONNECT_TIMEOUT_S = 10.0

F = TypeVar("F", bound=Callable[..., Any])


def kafka_options(func: F) -> F:
    """``--bootstrap-servers`` and ``--connect-timeout``, on every command that talks to Kafka."""
    func = click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0.1),
        default=DEFAULT_CONNECT_TIMEOUT_S,
        help="Seconds to wait for the broker before giving up with an error.",
    )(func)
    func = click.option(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        default=None,
        help="Brokers to use instead of VITGUARD_KAFKA_BOOTSTRAP_SERVERS.",
    )(func)
    return func


def load_cli_settings(bootstrap_servers: str | None) -> Settings:
    """Settings from the environment, with the command line's broker list on top."""
    from vitguard.settings import load_settings

    if bootstrap_servers:
        return load_settings(kafka={"bootstrap_servers": bootstrap_servers})
    return load_settings()
