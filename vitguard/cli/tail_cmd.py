"""``vitguard tail verdicts|alerts|dead-letters``: follow an output topic in the terminal."""

from __future__ import annotations

from typing import Any

import click

from vitguard.cli._kafka_common import kafka_options, load_cli_settings
from vitguard.errors import REASON_CODES

__all__ = ["register"]

_KINDS = ("verdicts", "alerts", "dead-letters")


@click.command("tail")
@click.argument("kind", type=click.Choice(_KINDS))
@click.option("--topic", default=None, help="Read this topic instead of the one VITGUARD_TOPIC_* names.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message instead of new ones only.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as one JSON line instead of a table.")
@click.option(
    "--label", "labels", multiple=True, type=click.Choice(["safe", "unsafe"]), help="Verdicts: only this label."
)
@click.option(
    "--min-score", type=click.FloatRange(0, 1), default=None,
    help="Verdicts: unsafe_score at least this; alerts: best similarity at least this.",
)
@click.option(
    "--reason", "reasons", multiple=True, type=click.Choice(REASON_CODES), help="Dead letters: only this reason."
)
@click.option(
    "--severity", "severities", multiple=True, type=click.Choice(["info", "warning", "critical"]),
    help="Alerts: only this severity.",
)
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant.")
@click.option("--max", "max_events", type=click.IntRange(min=1), default=None, help="Stop after printing N events.")
@click.option(
    "--timeout", "idle_timeout", type=click.FloatRange(min=0, min_open=True), default=None,
    help="Stop when no message arrived for this many seconds (default: follow forever).",
)
@click.option("--group", default=None, help="Join this consumer group and commit (default: read without a group).")
@kafka_options
def tail(
    kind: str,
    topic: str | None,
    from_beginning: bool,
    as_json: bool,
    labels: tuple[str, ...],
    min_score: float | None,
    reasons: tuple[str, ...],
    severities: tuple[str, ...],
    tenants: tuple[str, ...],
    max_events: int | None,
    idle_timeout: float | None,
    group: str | None,
    bootstrap_servers: str | None,
    connect_timeout: float,
) -> None:
    """Print verdicts, alerts or dead letters as they arrive (Ctrl-C stops).

    Messages that break their contract are reported on stderr, never skipped silently.
    """
    from vitguard.subscribers import AlertSubscriber, DeadLetterSubscriber, Filters, VerdictSubscriber, matches
    from vitguard.subscribers.subscriber import TopicSubscriber
    from vitguard.subscribers.view import header, render

    settings = load_cli_settings(bootstrap_servers)
    classes: dict[str, tuple[type[TopicSubscriber[Any]], str]] = {
        "verdicts": (VerdictSubscriber, settings.topics.verdicts),
        "alerts": (AlertSubscriber, settings.topics.alerts),
        "dead-letters": (DeadLetterSubscriber, settings.topics.dead_letters),
    }
    cls, default_topic = classes[kind]
    filters = Filters(labels=labels, min_score=min_score, reasons=reasons, severities=severities, tenants=tenants)
    shown = invalid = 0
    subscriber = cls(
        settings.kafka, topic or default_topic, group_id=group, from_beginning=from_beginning,
        connect_timeout_s=connect_timeout,
    )
    if not as_json:
        click.echo(header(cls.model))
    try:
        for received in subscriber.messages(idle_timeout_s=idle_timeout):
            if received.error is not None:
                invalid += 1
                click.echo(f"vitguard: invalid message {received.error}", err=True)
                continue
            value = received.value
            if value is None or not matches(value, filters):
                continue
            click.echo(value.model_dump_json() if as_json else render(value))
            shown += 1
            if max_events is not None and shown >= max_events:
                break
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
    if invalid:
        click.echo(f"vitguard: {invalid} invalid message(s) on {subscriber.topic}", err=True)


def register(group: click.Group) -> None:
    group.add_command(tail)
