"""``vitguard retro-hunt``: find items judged safe before that are close to something now known unsafe.

Two ways to run it:

* ``--from-content-id ID``: one hunt now, from a stored item; the matches are printed, and with ``--publish``
  also published to the alerts topic as :class:`~vitguard.schemas.retro.RetroMatch` es (trigger ``on_demand``;
  publishing the same hunt again publishes the same ids).
* ``--hash HEX``: one hunt now, by a PDQ hash, over the hashes of the items judged safe (read from the verdicts
  topic, as the follower does), within ``--distance`` bits; printed, and with ``--publish`` published (trigger
  ``on_demand`` with the hash).
* ``--follow``: the retro-hunter (:mod:`vitguard.retro.hunter`): hunts for every confirmed-unsafe review
  decision and every wave, and (with the banks on) by PDQ hash for every new entry of a positive bank over the
  hashes of the items judged safe (read from the verdicts topic at start), in a consumer group, until stopped.

The store is reached as ``vitguard search`` reaches it: ``--worker URL`` through a running worker (a Milvus
Lite file its worker holds), otherwise ``VITGUARD_MILVUS_URI`` directly (the model names the collection unless
``--collection`` does).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from vitguard.cli._kafka_common import kafka_options, load_cli_settings

if TYPE_CHECKING:
    from vitguard.retro.hunt import Searcher
    from vitguard.schemas.retro import RetroMatch
    from vitguard.settings import Settings

__all__ = ["register"]

_EXIT_NOT_FOUND = 1


@click.command("retro-hunt")
@click.option("--from-content-id", "content_id", default=None, help="Hunt once, from this stored item.")
@click.option("--hash", "pdq_hash", default=None,
              help="Hunt once by this PDQ hash (64 hex digits) over the stored hashes of the items judged safe.")
@click.option("--distance", type=click.IntRange(0, 64), default=None,
              help="With --hash: most bits apart (default: VITGUARD_BANKS_DEFAULT_MATCH_DISTANCE).")
@click.option("--follow", is_flag=True, help="Hunt for every confirmed review decision and wave, until stopped.")
@click.option("--since", default=None, help="Only items uploaded at or after (ISO 8601 with offset).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Cosine similarity to match at (default: VITGUARD_RETRO_THRESHOLD, else the near-duplicate one).")
@click.option("--limit", type=click.IntRange(1, 100), default=None,
              help="Most items a hunt reports (default: VITGUARD_RETRO_MAX_MATCHES).")
@click.option("--publish", is_flag=True,
              help="With --from-content-id or --hash: also publish the matches to the alerts topic.")
@click.option("--timeout", "idle_timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --follow: exit after this many seconds without a new record (default: follow forever).")
@click.option("--worker", default=None, help="Search through this worker (http://HOST:PORT) instead of Milvus.")
@click.option("--api-key", envvar="VITGUARD_API_KEY", default=None, help="The worker's API key, if it asks for one.")
@click.option("--collection", default=None, help="The Milvus collection (default: the configured model's).")
@click.option("--json", "as_json", is_flag=True, help="Print the matches as JSON lines instead of a table.")
@kafka_options
def retro_hunt(content_id: str | None, pdq_hash: str | None, distance: int | None, follow: bool, since: str | None,
               threshold: float | None, limit: int | None, publish: bool, idle_timeout: float | None,
               worker: str | None, api_key: str | None, collection: str | None, as_json: bool,
               bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Items judged safe before that are now within the near-duplicate threshold of a known unsafe item."""
    from vitguard.retro.hunt import Hunt
    from vitguard.search import SearchRequest

    if sum((content_id is not None, pdq_hash is not None, follow)) != 1:
        raise click.UsageError("give --from-content-id ID, --hash HEX or --follow (one of them)")
    if follow and publish:
        raise click.UsageError("--publish is for --from-content-id and --hash (--follow always publishes)")
    if distance is not None and pdq_hash is None:
        raise click.UsageError("--distance is for --hash")
    checked = SearchRequest.parse({"content_id": content_id, "since": since})  # one-line refusals of bad values
    settings = load_cli_settings(bootstrap_servers)
    reach = Hunt(threshold=threshold or settings.retro.threshold or settings.policy.near_duplicate_threshold,
                 limit=limit or settings.retro.max_matches, since=checked.since)
    if pdq_hash is not None:
        _hash_hunt_once(settings, _checked_hash(pdq_hash), distance, reach, publish=publish, as_json=as_json,
                        connect_timeout=connect_timeout)
        return
    with _searcher(settings, worker, api_key, collection) as searcher:
        if follow:
            _follow(settings, searcher, reach, idle_timeout, connect_timeout)
        else:
            assert content_id is not None  # noqa: S101 - checked above
            _hunt_once(settings, searcher, reach, content_id, publish=publish, as_json=as_json)


def _hunt_once(settings: Settings, searcher: Searcher, reach: Any, content_id: str, *, publish: bool,
               as_json: bool) -> None:
    from vitguard.retro.hunt import hunt
    from vitguard.schemas.retro import RetroTrigger
    from vitguard.search import NotStoredError

    trigger = RetroTrigger(kind="on_demand", trigger_id=f"on-demand:{content_id}", content_id=content_id)
    try:
        matches = hunt(searcher, trigger, reach)
    except NotStoredError as exc:
        click.echo(f"vitguard: error: {exc}", err=True)
        sys.exit(_EXIT_NOT_FOUND)
    _publish_and_print(settings, matches, publish=publish, as_json=as_json)


def _checked_hash(text: str) -> str:
    from vitguard.banks.signal import PdqSignal

    try:
        return PdqSignal.validate_signal_str(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--hash") from None


def _hash_hunt_once(settings: Settings, pdq_hash: str, distance: int | None, reach: Any, *, publish: bool,
                    as_json: bool, connect_timeout: float) -> None:
    """Read the verdicts topic's hashes of the items judged safe, then hunt by ``pdq_hash`` once."""
    from vitguard.kafka.admin import TopicNotFoundError
    from vitguard.kafka.offsets import topic_partitions
    from vitguard.kafka.reader import TopicReader
    from vitguard.retro.hashes import HashCatalog
    from vitguard.retro.hunt import hash_hunt, hash_trigger
    from vitguard.retro.hunter import read_hashes

    topic = settings.topics.verdicts
    try:
        topic_partitions(settings.kafka, topic, connect_timeout)
    except TopicNotFoundError:
        click.echo(f"vitguard: error: topic {topic} does not exist: no verdicts, no hashes to hunt over", err=True)
        sys.exit(_EXIT_NOT_FOUND)
    catalog = HashCatalog(settings.banks.quality_threshold)
    with TopicReader(settings.kafka, topic, connect_timeout_s=connect_timeout) as verdicts:
        read_hashes(settings, verdicts, catalog)
    click.echo(f"retro-hunt: {len(catalog)} stored hash(es) of items judged safe on {topic}", err=True)
    within = distance if distance is not None else settings.banks.default_match_distance
    matches = hash_hunt(catalog, hash_trigger(pdq_hash), within, reach.limit, since=reach.since)
    _publish_and_print(settings, matches, publish=publish, as_json=as_json)


def _publish_and_print(settings: Settings, matches: list[RetroMatch], *, publish: bool, as_json: bool) -> None:
    if publish and matches:
        from vitguard.kafka.produce import publish_and_wait, raise_on_failures
        from vitguard.retro.hunter import encode_match

        topic = settings.topics.alerts
        raise_on_failures(publish_and_wait(settings.kafka, [encode_match(topic, m) for m in matches]))
    _print(matches, as_json, published_to=settings.topics.alerts if publish else None)


def _follow(settings: Settings, searcher: Searcher, reach: Any, idle_timeout: float | None,
            connect_timeout: float) -> None:
    import signal
    import threading

    from vitguard.retro.hashes import HashCatalog
    from vitguard.retro.hunter import RetroHunter

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    catalog = HashCatalog(settings.banks.quality_threshold) if settings.banks.enabled else None
    hunter = RetroHunter(settings, searcher, reach, catalog=catalog)
    banks = f", {settings.banks.topic} (new entries, by hash)" if catalog is not None else ""
    click.echo(f"retro-hunt: following {settings.topics.review_audit}, {settings.topics.alerts}{banks} in group "
               f"{settings.retro.group_id} (threshold {reach.threshold:g})", err=True)
    published = hunter.run(stop=stop, idle_timeout_s=idle_timeout, connect_timeout_s=connect_timeout)
    click.echo(f"{published} retro match(es) published", err=True)


@contextmanager
def _searcher(settings: Settings, worker: str | None, api_key: str | None,
              collection: str | None) -> Iterator[Searcher]:
    if worker is not None:
        from vitguard.cli._worker_http import WorkerSearcher

        yield WorkerSearcher(worker, api_key)
        return
    from vitguard.cli._store import opened_store
    from vitguard.retro.hunt import StoreSearcher

    with opened_store(settings, collection) as (index, name):
        yield StoreSearcher(index, name)


def _print(matches: list[RetroMatch], as_json: bool, *, published_to: str | None) -> None:
    if as_json:
        for m in matches:
            click.echo(m.model_dump_json())
    else:
        click.echo(f"# {len(matches)} item(s) judged safe within the threshold"
                   + (f"; published to {published_to}" if published_to else ""))
        click.echo(f"{'similarity':>10} {'unsafe':>6} {'tenant':<12} {'uploaded':<20} content id")
        for m in matches:
            uploaded = m.uploaded_at.strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{m.similarity:>10.4f} {m.old_unsafe_score:>6.3f} {m.tenant:<12.12} {uploaded:<20} "
                       f"{m.content_id}")


def register(group: click.Group) -> None:
    group.add_command(retro_hunt)
