"""``vitguard review ...``: the human review loop's topics, applier, console, appeals and dataset export."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from vitguard.cli._kafka_common import kafka_options, load_cli_settings

__all__ = ["register"]


@click.group("review")
def review() -> None:
    """Human review: requests out to reviewers, their decisions back in."""


@review.command("topics")
@kafka_options
def topics(bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Create the review topics that are missing (requests, decisions, audit, corrections)."""
    from vitguard.review.topics import ensure_review_topics

    settings = load_cli_settings(bootstrap_servers)
    created = ensure_review_topics(settings.kafka, settings.topics, timeout_s=connect_timeout)
    for name in settings.topics.review():
        click.echo(f"{name}: {'created' if name in created else 'exists'}")


@review.command("apply")
@click.option("--once", is_flag=True, help="Apply what the decisions topic holds now, then exit.")
@click.option("--timeout", "idle_timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Exit after this many seconds without a new decision (default: follow forever).")
@click.option("--collection", default=None,
              help="Vector collection for decisions that name none (decisions from the console always do).")
@click.option("--no-milvus", is_flag=True, help="Do not touch the vector store (corrections and audit only).")
@click.option("--banks/--no-banks", default=None,
              help="Add reviewed items to hash banks (default: when VITGUARD_BANKS_ENABLED).")
@kafka_options
def apply(once: bool, idle_timeout: float | None, collection: str | None, no_milvus: bool, banks: bool | None,
          bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Apply reviewers' decisions: Milvus labels, hash banks, corrected verdicts, the audit trail (idempotent)."""
    from vitguard.review.applier import DecisionApplier

    settings = load_cli_settings(bootstrap_servers)
    records: Any = None
    if not no_milvus:
        from vitguard.stores import MilvusEmbeddingIndex

        records = MilvusEmbeddingIndex(settings.milvus)
    review_banks: Any = None
    if banks if banks is not None else settings.banks.enabled:
        from vitguard.banks import KafkaBankStore
        from vitguard.review.banks import StoreReviewBanks

        review_banks = StoreReviewBanks(KafkaBankStore(settings.kafka, settings.banks, settings.topics),
                                        negative_bank=settings.review.negative_bank,
                                        confirmed_bank=settings.review.confirmed_bank)
    applier = DecisionApplier(settings, records=records, banks=review_banks, default_collection=collection)
    try:
        count = applier.run(once=once, idle_timeout_s=idle_timeout, connect_timeout_s=connect_timeout)
    except KeyboardInterrupt:
        return
    finally:
        if records is not None:
            records.close()
    click.echo(f"{count} decision(s) applied", err=True)


@review.command("hash-password")
def hash_password_cmd() -> None:
    """Read a reviewer's password from stdin (typed twice on a terminal) and print the line part a reviewers
    file (VITGUARD_REVIEW_REVIEWERS_FILE) stores for it: `name:<this>[:tenant,...]`."""
    import sys

    from vitguard.errors import VitguardError
    from vitguard.review.identity import hash_password

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise VitguardError("use a password of 12 characters or more")
    click.echo(hash_password(password))


@review.command("console")
@click.option("--host", default=None, help="Bind address (default VITGUARD_REVIEW_CONSOLE_HOST).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default VITGUARD_REVIEW_CONSOLE_PORT).")
@click.option("--bootstrap-servers", metavar="HOST:PORT[,...]", default=None,
              help="Brokers to use instead of VITGUARD_KAFKA_BOOTSTRAP_SERVERS.")
def console(host: str | None, port: int | None, bootstrap_servers: str | None) -> None:
    """Serve the review console (log in with VITGUARD_REVIEW_CONSOLE_TOKEN)."""
    from vitguard.logging import configure_logging
    from vitguard.review.console import run_console

    settings = load_cli_settings(bootstrap_servers)
    configure_logging(settings.log)
    run_console(settings, host=host, port=port)


@review.command("appeal")
@click.argument("content_id")
@click.option("--tenant", default="default", help="Tenant of the item.")
@click.option("--note", default=None, help="The tenant's words, shown to the reviewer.")
@click.option("--image-ref", default=None,
              help="Where the image is, when the item was never in review before (its last request is reused).")
@kafka_options
def appeal(content_id: str, tenant: str, note: str | None, image_ref: str | None, bootstrap_servers: str | None,
           connect_timeout: float) -> None:
    """Queue CONTENT_ID for review on a tenant's appeal.

    Platforms can also publish the same ReviewRequest (reasons ["appeal"]) to the review-requests topic.
    """
    from pydantic import ValidationError

    from vitguard.kafka.produce import publish_and_wait, raise_on_failures
    from vitguard.kafka.reader import read_models
    from vitguard.review.applier import encode
    from vitguard.review.requests import appeal_request
    from vitguard.schemas.review import ReviewRequest

    settings = load_cli_settings(bootstrap_servers)
    topic = settings.topics.review_requests
    previous = None
    for record in read_models(settings.kafka, topic, ReviewRequest, timeout_s=max(connect_timeout, 10.0)):
        v = record.value
        if v is not None and v.content_id == content_id and (
            previous is None or v.requested_at > previous.requested_at
        ):
            previous = v
    try:
        request = appeal_request(content_id, tenant=tenant, note=note, image_ref=image_ref, previous=previous)
    except ValidationError as exc:
        raise click.BadParameter(str(exc.errors()[0]["msg"])) from exc
    raise_on_failures(publish_and_wait(settings.kafka, [encode(topic, content_id, request)],
                                       timeout_s=connect_timeout))
    click.echo(f"appeal queued for {content_id} (request {request.request_id})")


@review.command("decide")
@click.argument("content_id")
@click.option("--decision", type=click.Choice(["confirm_unsafe", "overturn_safe"]), required=True)
@click.option("--reviewer", required=True, help="Who decided.")
@click.option("--reason", required=True, help="Reason code, e.g. false_positive or explicit.")
@click.option("--note", default=None)
@click.option("--collection", default=None, help="Vector collection of the item (default: from its request).")
@kafka_options
def decide(content_id: str, decision: str, reviewer: str, reason: str, note: str | None, collection: str | None,
           bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Publish a decision on CONTENT_ID without the console (operations, scripts)."""
    from pydantic import ValidationError

    from vitguard.kafka.produce import publish_and_wait, raise_on_failures
    from vitguard.kafka.reader import read_models
    from vitguard.review.applier import encode
    from vitguard.schemas.review import ReviewDecision, ReviewRequest

    settings = load_cli_settings(bootstrap_servers)
    request = None
    for record in read_models(settings.kafka, settings.topics.review_requests, ReviewRequest,
                              timeout_s=max(connect_timeout, 10.0)):
        if record.value is not None and record.value.content_id == content_id:
            request = record.value
    context: dict[str, Any] = {}
    if request is not None:
        context = {"tenant": request.tenant, "request_id": request.request_id, "collection": request.collection,
                   "model_name": request.model_name, "model_version": request.model_version,
                   "previous_label": request.label, "pdq_hash": request.pdq_hash,
                   "requested_at": request.requested_at}
    if collection:
        context["collection"] = collection
    try:
        d = ReviewDecision(content_id=content_id, decision=decision, reviewer=reviewer, reason=reason, note=note,
                           **context)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise click.BadParameter(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc
    topic = settings.topics.review_decisions
    raise_on_failures(publish_and_wait(settings.kafka, [encode(topic, d.decision_id, d)], timeout_s=connect_timeout))
    click.echo(f"decision {d.decision_id} published")


@review.command("export-dataset")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--unsafe-label", default="NSFW", help="Class folder of confirmed items (an unsafe label of the policy).")
@click.option("--safe-label", default="SFW", help="Class folder of overturned items.")
@kafka_options
def export_dataset(out_dir: Path, unsafe_label: str, safe_label: str, bootstrap_servers: str | None,
                   connect_timeout: float) -> None:
    """Write reviewed items as OUT_DIR/<label>/<item>.<ext>, the layout `vitguard finetune` reads.

    Images are fetched again, through the worker's SSRF guard and limits, from each item's review request.
    """
    from vitguard.fetch import ImageFetcher
    from vitguard.kafka.reader import read_models
    from vitguard.review.dataset import export_dataset as export
    from vitguard.schemas.review import ReviewDecision, ReviewRequest

    settings = load_cli_settings(bootstrap_servers)
    timeout = max(connect_timeout, 10.0)
    t = settings.topics
    decisions = [r.value for r in read_models(settings.kafka, t.review_decisions, ReviewDecision, timeout)
                 if r.value is not None]
    requests: dict[str, ReviewRequest] = {}
    for r in read_models(settings.kafka, t.review_requests, ReviewRequest, timeout):
        v = r.value
        if v is not None and (v.content_id not in requests or v.requested_at >= requests[v.content_id].requested_at):
            requests[v.content_id] = v

    async def run() -> Any:
        async with ImageFetcher(settings.fetch) as fetcher:
            return await export(decisions, requests, out_dir, fetcher, unsafe_label=unsafe_label,
                                safe_label=safe_label)

    try:
        report = asyncio.run(run())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    for label, n in report.written.items():
        click.echo(f"{label}: {n} image(s)")
    if report.skipped:
        click.echo(f"skipped {len(report.skipped)} item(s): " + ", ".join(
            f"{cid} ({why})" for cid, why in sorted(report.skipped.items())[:10]), err=True)
    click.echo(f"next: vitguard finetune {out_dir} --unsafe-label {unsafe_label}", err=True)


def register(group: click.Group) -> None:
    group.add_command(review)
