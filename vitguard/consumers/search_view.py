"""``POST /search`` on the worker's web server: similar stored items, from a stored item or from an image.

The image goes through the worker's own fetch, decode and forward pass (:meth:`Runner.probe`, the path of
``POST /classify``); the index is the worker's own, so a worker on Milvus Lite (one process per file) serves
searches of its store while it runs. API keys and their rate are ``POST /classify``'s (one budget per key);
searches have their own in-flight bound (``VITGUARD_WEB_CLASSIFY_MAX_IN_FLIGHT``, the same value).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vitguard import metrics
from vitguard.consumers.api_keys import ApiKeys
from vitguard.consumers.classify_http import UnsupportedMediaTypeError, status_for
from vitguard.consumers.search_http import SearchCall, parse_search
from vitguard.errors import InputError, ServiceUnavailableError
from vitguard.search import NotStoredError, SearchAnswer, search_by_content_id, search_by_vector

__all__ = ["register_search", "search_failure"]

_log = logging.getLogger(__name__)


def register_search(app: Any, runtime: Any, keys: ApiKeys) -> None:
    """Add ``POST /search`` to a Faust app (``runtime``: its :class:`~vitguard.consumers.app.WorkerRuntime`)."""
    from faust.web import View

    limit = runtime.settings.web.classify_max_in_flight
    body_timeout_s = runtime.settings.fetch.connect_timeout_s + runtime.settings.fetch.read_timeout_s
    handling = [0]

    @app.page("/search")
    class Search(View):  # type: ignore[misc]
        async def post(self, request: Any) -> Any:
            refusal = keys.check(request.headers)
            if refusal is not None:
                return self._refuse(refusal.reason, refusal.message, refusal.status, dict(refusal.headers))
            if handling[0] >= limit:
                return self._refuse("overloaded", f"{limit} searches in progress; retry", 429, {"Retry-After": "1"})
            handling[0] += 1
            try:
                try:
                    async with asyncio.timeout(body_timeout_s):
                        body = await request.read()
                except TimeoutError:
                    return self._refuse("request_timeout",
                                        f"the request body did not arrive within {body_timeout_s:g} s", 408)
                call = parse_search(request.headers.get("Content-Type") or "", body, _query(request))
                answer = await _search(runtime.runner, call)
            except Exception as exc:
                reason, message, status = search_failure(exc)
                if status == 500:
                    _log.exception("POST /search failed")
                return self._refuse(reason, message, status, {"Retry-After": "1"} if status == 503 else {})
            finally:
                handling[0] -= 1
            metrics.SEARCH_REQUESTS.labels("answered").inc()
            return self.json(answer.model_dump(mode="json"))

        def _refuse(self, reason: str, message: str, status: int, headers: dict[str, str] | None = None) -> Any:
            metrics.SEARCH_REQUESTS.labels(reason).inc()
            return self.json({"reason": reason, "message": message}, status=status, headers=headers or {})

        async def _not_allowed(self, request: Any) -> Any:
            return self.json({"reason": "method_not_allowed",
                              "message": f"{request.method} /search: send the search with POST"},
                             status=405, headers={"Allow": "POST"})

        get = put = delete = patch = _not_allowed


def _query(request: Any) -> dict[str, list[str]]:
    """The URL's parameters, each with all its values."""
    return {name: request.query.getall(name) for name in request.query}


async def _search(runner: Any, call: SearchCall) -> SearchAnswer:
    """Run one search: the index calls on a thread (they block), an image through the runner first."""
    collection = runner.collection or await runner.ensure_collection()
    if call.request.content_id is not None:
        return await asyncio.to_thread(search_by_content_id, runner.index, collection, call.request)
    probed = await runner.probe(data=call.data, image_ref=call.request.image_ref)
    results = await asyncio.to_thread(search_by_vector, runner.index, collection, probed.embedding, call.request)
    return SearchAnswer(collection=collection, verdict=probed.verdict, results=results)


def search_failure(exc: Exception) -> tuple[str, str, int]:
    """What a failed search answers: reason, message and status (500: a bug, not the caller's)."""
    if isinstance(exc, InputError):
        return exc.reason, exc.message, status_for(exc.reason)
    if isinstance(exc, UnsupportedMediaTypeError):
        return exc.reason, exc.message, 415
    if isinstance(exc, NotStoredError):
        return exc.reason, str(exc), 404
    if isinstance(exc, ServiceUnavailableError):
        return "unavailable", str(exc), 503
    return "internal_error", type(exc).__name__, 500
