"""``vitguard publish``: put upload events on the input topic, from images, a JSONL file or URLs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vitguard.cli._kafka_common import kafka_options, load_cli_settings

if TYPE_CHECKING:
    from vitguard.settings import Settings

__all__ = ["register"]

_MAX_FAILURE_LINES = 20


@click.command("publish")
@click.argument("urls", nargs=-1, metavar="[URL]...")
@click.option(
    "--dir", "dirs", multiple=True, type=click.Path(path_type=Path), help="Publish the images in this directory."
)
@click.option(
    "--jsonl", "jsonl_files", multiple=True, type=click.Path(path_type=Path),
    help="Publish the ImageEvent objects in this JSONL file, one per line ('-' reads stdin).",
)
@click.option("--recursive", is_flag=True, help="With --dir: include sub-directories.")
@click.option(
    "--inline", is_flag=True,
    help="With --dir: embed images as data: URLs (limit VITGUARD_FETCH_MAX_INLINE_BYTES), not file:// references.",
)
@click.option(
    "--id-from", type=click.Choice(["sha256", "name"]), default="sha256",
    help="With --dir: content id from the image bytes or from the file name.",
)
@click.option("--tenant", default="default", help="Tenant of events built from --dir and URLs.")
@click.option("--topic", default=None, help="Topic to publish to instead of VITGUARD_TOPIC_IMAGES.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="At most this many events/s.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@kafka_options
def publish(
    urls: tuple[str, ...],
    dirs: tuple[Path, ...],
    jsonl_files: tuple[Path, ...],
    recursive: bool,
    inline: bool,
    id_from: str,
    tenant: str,
    topic: str | None,
    rate: float | None,
    progress: bool,
    bootstrap_servers: str | None,
    connect_timeout: float,
) -> None:
    """Publish image events to the input topic and report what was sent and what failed.

    Sources combine: images in --dir directories (file:// references, which workers read only under
    VITGUARD_FETCH_FILE_ROOT, or --inline data: URLs), events in --jsonl files, and image URLs given as
    arguments. Exits 1 if any event failed (invalid, unreadable, or refused by the broker).
    """
    from tqdm import tqdm

    from vitguard.kafka.offsets import topic_partitions
    from vitguard.producers import RateLimiter, UploadEventPublisher, publish_items
    from vitguard.producers.sources import (
        SourceError,
        SourceItem,
        image_files,
        items_from_directory,
        items_from_jsonl,
        items_from_urls,
    )

    if not (urls or dirs or jsonl_files):
        raise click.UsageError("nothing to publish: give --dir, --jsonl or URLs")
    settings = load_cli_settings(bootstrap_servers)
    target = topic or settings.topics.images

    # Resolve every source before touching Kafka, so a typo fails fast and sends nothing.
    dir_files = [(d, image_files(d, recursive)) for d in dirs]
    total = _count_events(urls, [files for _, files in dir_files], jsonl_files)
    if dirs and not inline:
        _warn_file_root(settings.fetch.file_root, [d for d, _ in dir_files])

    topic_partitions(settings.kafka, target, connect_timeout)
    max_inline = _max_inline_bytes(settings, target, connect_timeout) if inline else settings.fetch.max_inline_bytes

    def items() -> Iterator[SourceItem]:
        for directory, files in dir_files:
            yield from items_from_directory(
                directory, inline=inline, max_inline_bytes=max_inline, tenant=tenant,
                id_from="name" if id_from == "name" else "sha256", files=files,
            )
        for path in jsonl_files:
            if str(path) == "-":
                yield from items_from_jsonl(sys.stdin, "<stdin>")
                continue
            try:
                with path.open(encoding="utf-8") as fh:
                    yield from items_from_jsonl(fh, str(path))
            except OSError as exc:
                raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        yield from items_from_urls(urls, tenant=tenant)

    shown = 0
    bar = tqdm(total=total, unit="event", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def on_item(item: SourceItem, reason: str | None) -> None:
        nonlocal shown
        bar.update(1)
        if reason is not None and shown < _MAX_FAILURE_LINES:
            shown += 1
            detail = item.error.message if item.error else reason
            tqdm.write(f"failed {item.origin}: {reason}: {detail}", file=sys.stderr)

    limiter = RateLimiter(rate, burst=max(1, int(rate / 10))) if rate else None  # bursts of 100 ms worth
    with bar, UploadEventPublisher(settings.kafka, target) as publisher:
        summary = publish_items(publisher, items(), limiter=limiter, on_item=on_item)
    click.echo(f"{target}: {summary.line()}")
    if summary.failed_total:
        sys.exit(1)


def _count_events(urls: tuple[str, ...], dir_files: list[list[Path]], jsonl_files: tuple[Path, ...]) -> int | None:
    """How many events the sources hold (the progress bar's total); None when one of them is stdin, whose
    length is unknown until it is read. Every JSONL file is counted even then: a missing one fails here."""
    from vitguard.producers.sources import count_jsonl_lines

    total: int | None = len(urls) + sum(len(files) for files in dir_files)
    for path in jsonl_files:
        if str(path) == "-":
            total = None
        elif total is not None:
            total += count_jsonl_lines(path)
        else:
            count_jsonl_lines(path)
    return total


def _max_inline_bytes(settings: Settings, target: str, connect_timeout: float) -> int:
    """The largest image ``--inline`` embeds: the fetch limit, or less where the topic's message limit
    could not hold it once base64-encoded."""
    from vitguard.kafka.limits import PRODUCER_MAX_REQUEST_BYTES, inline_capacity, read_output_limits

    topic_limit = read_output_limits(settings.kafka, [target], PRODUCER_MAX_REQUEST_BYTES, connect_timeout)
    return min(settings.fetch.max_inline_bytes, inline_capacity(topic_limit[target]))


def _warn_file_root(file_root: Path | None, dirs: list[Path]) -> None:
    if file_root is None:
        click.echo(
            "warning: workers refuse file:// references unless VITGUARD_FETCH_FILE_ROOT is set "
            "(or publish with --inline)", err=True,
        )
        return
    root = file_root.resolve()
    for d in dirs:
        if not d.resolve().is_relative_to(root):
            click.echo(f"warning: {d} is outside VITGUARD_FETCH_FILE_ROOT={file_root}; workers refuse it", err=True)


def register(group: click.Group) -> None:
    group.add_command(publish)
