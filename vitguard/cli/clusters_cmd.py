"""``vitguard clusters list|show ID``: the unsafe near-duplicate clusters of the store, as ``GET /clusters``
answers them: from a running worker (``--worker URL``; a Milvus Lite file it holds) or from
``VITGUARD_MILVUS_URI`` directly."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from vitguard.cli._worker_http import NotFoundOnWorkerError, call_worker

__all__ = ["register"]

_EXIT_NOT_FOUND = 1

_worker_option = click.option("--worker", default=None, help="Ask this worker (http://HOST:PORT) instead of Milvus.")
_key_option = click.option("--api-key", envvar="VITGUARD_API_KEY", default=None, help="The worker's API key.")
_collection_option = click.option("--collection", default=None,
                                  help="The Milvus collection (default: the configured model's).")
_tenant_option = click.option("--tenant", multiple=True, help="Count only this tenant's items (repeat for several).")


@click.group("clusters")
def clusters() -> None:
    """Unsafe near-duplicate clusters: size, first and last upload, growth in the wave window, waves."""


@clusters.command("list")
@_tenant_option
@click.option("--limit", default=50, type=click.IntRange(1, 500), help="Clusters to show, most recent first.")
@_worker_option
@_key_option
@_collection_option
@click.option("--json", "as_json", is_flag=True, help="The answer as JSON instead of a table.")
def list_cmd(tenant: tuple[str, ...], limit: int, worker: str | None, api_key: str | None, collection: str | None,
             as_json: bool) -> None:
    """The clusters, most recently active first."""
    from vitguard.consumers.search_http import parse_cluster_query

    query = parse_cluster_query({"tenant": list(tenant), "limit": [str(limit)]})
    if worker is not None:
        answer = call_worker(worker, f"/clusters?{_params(query)}", api_key)
    else:
        answer = _from_store(collection, query, None)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(f"{'cluster':<20} {'size':>6} {'growth':>6} {'wave':<5} {'first upload':<20} {'last upload':<20} items")
    for c in answer["clusters"]:
        click.echo(f"{c['cluster_id']:<20.20} {c['size']:>6} {c['growth']:>6} {'yes' if c['wave'] else '-':<5} "
                   f"{_when(c['first_seen']):<20} {_when(c['last_seen']):<20} {', '.join(c['representatives'])}")
    if answer["truncated"]:
        click.echo("# more clusters than listed (raise --limit)" if answer.get("source") == "rows" else
                   "# more rows were stored than were read: the list may be short", err=True)


@clusters.command("show")
@click.argument("cluster_id")
@_tenant_option
@click.option("--offset", default=0, type=click.IntRange(0), help="The first item to show (oldest first).")
@click.option("--limit", default=50, type=click.IntRange(1, 500), help="Items to show.")
@_worker_option
@_key_option
@_collection_option
def show(cluster_id: str, tenant: tuple[str, ...], offset: int, limit: int, worker: str | None,
         api_key: str | None, collection: str | None) -> None:
    """One cluster and a page of its items, as JSON."""
    import urllib.parse

    from vitguard.consumers.search_http import parse_cluster_query

    query = parse_cluster_query({"tenant": list(tenant), "offset": [str(offset)], "limit": [str(limit)]})
    try:
        if worker is not None:
            answer = call_worker(worker, f"/clusters/{urllib.parse.quote(cluster_id, safe='')}?{_params(query)}",
                                 api_key)
        else:
            answer = _from_store(collection, query, cluster_id)
    except (LookupError, NotFoundOnWorkerError) as exc:
        click.echo(f"vitguard: error: {exc}", err=True)
        sys.exit(_EXIT_NOT_FOUND)
    click.echo(json.dumps(answer, indent=2))


def _params(query: Any) -> str:
    import urllib.parse

    return urllib.parse.urlencode(query.model_dump(exclude_none=True), doseq=True)


def _when(iso: str) -> str:
    from datetime import datetime

    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


def _from_store(collection: str | None, query: Any, cluster_id: str | None) -> dict[str, Any]:
    """The listing (or one cluster) read from ``VITGUARD_MILVUS_URI`` by this process."""
    from vitguard.cli._store import opened_store
    from vitguard.clusters import ClusterNotFoundError, cluster_items, summarize
    from vitguard.errors import InputError
    from vitguard.settings import load_settings
    from vitguard.stores.similar import SearchFilters

    settings = load_settings()
    try:
        filters = SearchFilters(tenants=tuple(query.tenant), clusters=(cluster_id,) if cluster_id else ())
    except ValueError as exc:
        raise InputError("schema_violation", str(exc)) from exc
    with opened_store(settings, collection) as (index, name):
        rows, truncated = index.cluster_rows(name, filters=filters)
    policy, now_ms = settings.policy, int(time.time() * 1000)
    if cluster_id is None:
        return summarize(rows, now_ms=now_ms, window_s=policy.wave_window_s, threshold=policy.wave_threshold,
                         limit=query.limit, truncated=truncated).model_dump(mode="json")
    found = cluster_items(cluster_id, rows, now_ms=now_ms, window_s=policy.wave_window_s,
                          threshold=policy.wave_threshold, offset=query.offset, limit=query.limit)
    if found is None:
        raise ClusterNotFoundError(f"no stored item is on cluster {cluster_id!r}")
    return found.model_dump(mode="json")


def register(group: click.Group) -> None:
    group.add_command(clusters)
