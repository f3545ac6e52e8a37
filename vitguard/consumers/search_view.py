"""``POST /search``, ``POST /banks/lookup``, ``GET /clusters`` and ``GET /clusters/{id}`` on the worker's web
server: the stored embeddings, the hash banks and the clusters, asked about without side effects.

An image goes through the worker's own fetch, decode and forward pass (:meth:`Runner.probe`, the path of
``POST /classify``: the same limits, the PDQ hash from the same pixels); the index and the banks are the
worker's own, so a worker on Milvus Lite (one process per file) serves searches of its store while it runs.
Both views go through a :class:`~vitguard.consumers.http_gate.RequestGate` each (``POST /classify``'s API keys,
one budget per key; their own in-flight bound, ``VITGUARD_WEB_CLASSIFY_MAX_IN_FLIGHT``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vitguard import metrics
from vitguard.banks.lookup import BankLookupAnswer, BanksDisabledError, lookup_hash
from vitguard.clusters import ClusterItems, ClusterList, ClusterNotFoundError, cluster_items, summarize, summarize_rows
from vitguard.consumers.api_keys import ApiKeys, scope_tenants
from vitguard.consumers.http_gate import RequestGate, query_params
from vitguard.consumers.search_http import (
    ClusterQuery,
    LookupCall,
    SearchCall,
    parse_cluster_query,
    parse_lookup,
    parse_search,
)
from vitguard.errors import InputError, ServiceUnavailableError
from vitguard.search import SearchAnswer, search_by_content_id, search_by_vector
from vitguard.stores.similar import SearchFilters, StoredItem

__all__ = ["register_store_views"]


def register_store_views(app: Any, runtime: Any, keys: ApiKeys) -> None:
    """Add ``POST /search`` and ``POST /banks/lookup`` to a Faust app (``runtime``: its
    :class:`~vitguard.consumers.app.WorkerRuntime`)."""
    from faust.web import View

    web, fetch = runtime.settings.web, runtime.settings.fetch
    body_timeout_s = fetch.connect_timeout_s + fetch.read_timeout_s
    searches = RequestGate("/search", keys, web.classify_max_in_flight, body_timeout_s, metrics.SEARCH_REQUESTS)
    lookups = RequestGate("/banks/lookup", keys, web.classify_max_in_flight, body_timeout_s,
                          metrics.BANK_LOOKUP_REQUESTS)

    @app.page("/search")
    class Search(View):  # type: ignore[misc]
        async def post(self, request: Any) -> Any:
            async def handle(body: bytes, tenant: str | None) -> dict[str, Any]:
                call = parse_search(request.headers.get("Content-Type") or "", body, query_params(request))
                return (await _search(runtime.runner, call, tenant)).model_dump(mode="json")

            return await searches.run(self, request, handle)

        async def _not_allowed(self, request: Any) -> Any:
            return await searches.not_allowed(self, request)

        get = put = delete = patch = _not_allowed

    @app.page("/banks/lookup")
    class BankLookup(View):  # type: ignore[misc]
        async def post(self, request: Any) -> Any:
            async def handle(body: bytes, tenant: str | None) -> dict[str, Any]:  # noqa: ARG001 - banks are global
                call = parse_lookup(request.headers.get("Content-Type") or "", body)
                return (await _lookup(runtime.runner, call)).model_dump(mode="json")

            return await lookups.run(self, request, handle)

        async def _not_allowed(self, request: Any) -> Any:
            return await lookups.not_allowed(self, request)

        get = put = delete = patch = _not_allowed

    listings = RequestGate("/clusters", keys, web.classify_max_in_flight, body_timeout_s, metrics.CLUSTER_REQUESTS,
                           method="GET")

    @app.page("/clusters")
    class Clusters(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            async def handle(body: bytes, tenant: str | None) -> dict[str, Any]:
                query = parse_cluster_query(query_params(request))
                return (await _clusters(runtime, query, tenant)).model_dump(mode="json")

            return await listings.run(self, request, handle)

        async def _not_allowed(self, request: Any) -> Any:
            return await listings.not_allowed(self, request)

        post = put = delete = patch = _not_allowed

    @app.page("/clusters/{cluster_id}")
    class Cluster(View):  # type: ignore[misc]
        async def get(self, request: Any, cluster_id: str) -> Any:
            async def handle(body: bytes, tenant: str | None) -> dict[str, Any]:
                query = parse_cluster_query(query_params(request))
                return (await _cluster(runtime, cluster_id, query, tenant)).model_dump(mode="json")

            return await listings.run(self, request, handle)

        async def _not_allowed(self, request: Any, cluster_id: str) -> Any:
            return await listings.not_allowed(self, request)

        post = put = delete = patch = _not_allowed


async def _search(runner: Any, call: SearchCall, tenant: str | None) -> SearchAnswer:
    """Run one search: the index calls on a thread (they block), an image through the runner first. A
    tenant-bound caller searches its tenant's items only, and only from an item of its tenant."""
    collection = runner.collection or await runner.ensure_collection()
    request = call.request.model_copy(update={"tenant": scope_tenants(call.request.tenant, tenant)})
    if request.content_id is not None:
        return await asyncio.to_thread(search_by_content_id, runner.index, collection, request, owner=tenant)
    # the query image's own verdict, under the policy of the one tenant searched (or the caller's)
    judged_as = request.tenant[0] if len(request.tenant) == 1 else "default"
    probed = await runner.probe(data=call.data, image_ref=request.image_ref, tenant=judged_as)
    results = await asyncio.to_thread(search_by_vector, runner.index, collection, probed.embedding, request)
    return SearchAnswer(collection=collection, verdict=probed.verdict, results=results)


async def _lookup(runner: Any, call: LookupCall) -> BankLookupAnswer:
    """One bank lookup: a hash against the banks as they are now (on a thread: a big bank must not hold the
    loop), an image through the runner (its verdict carries its hash and matches, the flood guard only read)."""
    matcher = runner.completer.matcher
    if call.hash is not None:
        return await asyncio.to_thread(lookup_hash, matcher, call.hash)
    if matcher is None:
        raise BanksDisabledError("this worker runs without hash banks (VITGUARD_BANKS_ENABLED=false)")
    verdict = await runner.classify(data=call.data, image_ref=call.image_ref)
    return BankLookupAnswer.of_verdict(verdict)


async def _cluster_rows(runtime: Any, filters: SearchFilters) -> tuple[str, list[StoredItem], bool]:
    runner = runtime.runner
    collection = runner.collection or await runner.ensure_collection()
    rows, truncated = await asyncio.to_thread(runner.index.cluster_rows, collection, filters=filters)
    return collection, rows, truncated


async def _clusters(runtime: Any, query: ClusterQuery, tenant: str | None) -> ClusterList:
    """The unsafe clusters: from their own rows (fleet-wide, any scale), or of the worker's store (of
    ``query.tenant``'s items only, when given; of the caller's tenant only, when its key is bound to one: a
    cluster's row counts every tenant's items, so a tenant's listing never reads one)."""
    tenants = tuple(scope_tenants(query.tenant, tenant))
    policy = runtime.settings.policy
    keeper = runtime.runner.completer.cluster_rows
    if keeper is not None and not tenants and query.source != "store":
        try:
            found = await keeper.latest(limit=query.limit + 1, now_s=time.time(), window_s=policy.wave_window_s)
        except ServiceUnavailableError:
            found = []  # Redis down: the store still answers
        if found:
            return summarize_rows(found, threshold=policy.wave_threshold, limit=query.limit)
    _, rows, truncated = await _cluster_rows(runtime, SearchFilters(tenants=tenants))
    return summarize(rows, now_ms=int(time.time() * 1000), window_s=policy.wave_window_s,
                     threshold=policy.wave_threshold, limit=query.limit, truncated=truncated)


async def _cluster(runtime: Any, cluster_id: str, query: ClusterQuery, tenant: str | None) -> ClusterItems:
    """One cluster and a page of its items.

    Raises:
        InputError: the id is not a cluster id (``schema_violation``).
        ClusterNotFoundError: no stored item is on it.
    """
    tenants = tuple(scope_tenants(query.tenant, tenant))
    try:
        filters = SearchFilters(tenants=tenants, clusters=(cluster_id,))
    except ValueError as exc:
        raise InputError("schema_violation", str(exc)) from exc
    _, rows, _ = await _cluster_rows(runtime, filters)
    policy = runtime.settings.policy
    found = cluster_items(cluster_id, rows, now_ms=int(time.time() * 1000), window_s=policy.wave_window_s,
                          threshold=policy.wave_threshold, offset=query.offset, limit=query.limit)
    if found is None:
        raise ClusterNotFoundError(f"no stored item is on cluster {cluster_id!r}")
    return found
