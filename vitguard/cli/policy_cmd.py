"""``vitguard policy check|schema|publish|withdraw|test``: policy documents (docs/policies.md).

``check`` refuses a document with its line and reason (exit 2), as a worker would; ``publish`` checks it and
writes it to the compacted policies topic, where every running worker picks it up within seconds;
``test`` back-tests a candidate on a range of the verdicts topic (the verdicts carry the model's scores,
so no image is fetched and no model runs).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vitguard.cli._kafka_common import kafka_options, load_cli_settings

if TYPE_CHECKING:
    from vitguard.policies.backtest import BackTest
    from vitguard.policies.compiled import PolicyBook
    from vitguard.producers.replay import SourceRecord
    from vitguard.settings import Settings

__all__ = ["register"]

_LABELS_HELP = "The model's classes, comma-separated (the categories' labels are checked against them)."


def _compile(path: Path, labels: str, unsafe: tuple[str, ...]) -> PolicyBook:
    from vitguard.errors import ConfigError
    from vitguard.policies.compiled import compile_document
    from vitguard.policies.document import parse_document

    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        return compile_document(parse_document(text), _labels(labels), unsafe)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _labels(text: str) -> tuple[str, ...]:
    labels = tuple(label.strip() for label in text.split(",") if label.strip())
    if not labels:
        raise click.BadParameter("give at least one label", param_hint="--labels")
    return labels


def _topic(settings: Settings, topic: str | None) -> str:
    name = topic or settings.policy.topic
    if not name:
        raise click.UsageError("no policies topic: set VITGUARD_POLICY_TOPIC or pass --topic")
    return name


@click.group("policy")
def policy() -> None:
    """Policy documents: per-tenant policies, categories and actions, changed live (docs/policies.md)."""


@policy.command("check")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--labels", default="NSFW,SFW", help=_LABELS_HELP)
def check(path: Path, labels: str) -> None:
    """Check a document as a worker would; print what it defines (exit 2 with the line and reason if refused)."""
    from vitguard.policies.compiled import describe

    settings = load_cli_settings(None)
    click.echo(json.dumps(describe(_compile(path, labels, settings.policy.unsafe_labels)), indent=2))


@policy.command("schema")
def schema() -> None:
    """Print the JSON Schema of policy documents (for editors and CI checks)."""
    from vitguard.policies.document import PolicyDocument

    doc = PolicyDocument.model_json_schema()
    click.echo(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema",
                           "$id": "urn:vitguard:policy-document", **doc}, indent=2))


@policy.command("publish")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--topic", default=None, help="The policies topic [default: VITGUARD_POLICY_TOPIC].")
@click.option("--labels", default="NSFW,SFW", help=_LABELS_HELP)
@kafka_options
def publish(path: Path, topic: str | None, labels: str, bootstrap_servers: str | None,
            connect_timeout: float) -> None:
    """Check a document, then make it the one in force: every worker following the topic applies it."""
    settings = load_cli_settings(bootstrap_servers)
    name = _topic(settings, topic)
    book = _compile(path, labels, settings.policy.unsafe_labels)
    _write(settings, name, path.read_bytes(), connect_timeout)
    click.echo(f"policy document {book.version} published to {name}")


@policy.command("withdraw")
@click.option("--topic", default=None, help="The policies topic [default: VITGUARD_POLICY_TOPIC].")
@kafka_options
def withdraw(topic: str | None, bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Withdraw the document: workers go back to the built-in policy of their settings."""
    settings = load_cli_settings(bootstrap_servers)
    name = _topic(settings, topic)
    _write(settings, name, None, connect_timeout)
    click.echo(f"policy document withdrawn from {name}; workers judge by their settings")


def _write(settings: Settings, topic: str, value: bytes | None, timeout_s: float) -> None:
    from vitguard.kafka.admin import ensure_state_topic
    from vitguard.kafka.produce import OutboundMessage, publish_and_wait, raise_on_failures
    from vitguard.policies.live import DOCUMENT_KEY

    kafka = settings.kafka.model_copy(update={"request_timeout_s": timeout_s})
    ensure_state_topic(kafka, topic, settings.topics.replication_factor)
    raise_on_failures(publish_and_wait(kafka, [OutboundMessage(topic, value, DOCUMENT_KEY)],
                                       timeout_s=max(timeout_s, 10.0)))


@policy.command("test")
@click.argument("candidate", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--against", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Compare with this document [default: what each verdict recorded].")
@click.option("--topic", default=None, help="The verdicts topic to read [default: VITGUARD_TOPIC_VERDICTS].")
@click.option("--from-timestamp", metavar="TS", default=None,
              help="Start at the first verdict at or after TS (ISO 8601, epoch ms, or -30m/-2h/-1d).")
@click.option("--from-offset", "from_offsets", multiple=True, metavar="[P:]N", help="Start at offset N.")
@click.option("--to-timestamp", metavar="TS", default=None, help="Stop before the first verdict at or after TS.")
@click.option("--to-offset", "to_offsets", multiple=True, metavar="[P:]N",
              help="Stop before offset N [default: each partition's end now].")
@click.option("--labels", default="NSFW,SFW", help=_LABELS_HELP)
@click.option("--examples", type=click.IntRange(0, 100), default=5, help="Examples shown per change.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@kafka_options
def test(candidate: Path, against: Path | None, topic: str | None, from_timestamp: str | None,
         from_offsets: tuple[str, ...], to_timestamp: str | None, to_offsets: tuple[str, ...], labels: str,
         examples: int, as_json: bool, bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Back-test CANDIDATE on a range of verdicts: how many labels and actions it would change, by action,
    tenant and category, with examples. Reads only; publishes nothing."""
    from vitguard.policies.backtest import BackTest
    from vitguard.producers.replay import ReplayRequest, new_replay_id, plan_replay, run_replay
    from vitguard.producers.replay_state import ReplayStateStore

    settings = load_cli_settings(bootstrap_servers)
    unsafe = settings.policy.unsafe_labels
    test_run = BackTest(_compile(candidate, labels, unsafe),
                        _compile(against, labels, unsafe) if against is not None else None, examples)
    request = ReplayRequest(topic=topic or settings.topics.verdicts, mode="policy_test",
                            from_timestamp=from_timestamp, from_offsets=from_offsets, to_timestamp=to_timestamp,
                            to_offsets=to_offsets)
    rid = new_replay_id()
    state = plan_replay(settings.kafka, request, rid, timeout_s=connect_timeout)
    with tempfile.TemporaryDirectory(prefix="vitguard-policy-test-") as state_dir:  # a back-test is not resumed
        run_replay(settings.kafka, state, ReplayStateStore(Path(state_dir)), _Handler(test_run))
    if as_json:
        click.echo(json.dumps(test_run.report()))
    else:
        for line in test_run.lines():
            click.echo(line)
    sys.stdout.flush()


class _Handler:
    """Hands each replayed verdict record to the back-test."""

    def __init__(self, back_test: BackTest) -> None:
        self.back_test = back_test

    def handle(self, record: SourceRecord) -> str | None:
        self.back_test.add_record(record.value)
        return None

    def flush(self) -> None:
        return None


def register(group: click.Group) -> None:
    group.add_command(policy)
