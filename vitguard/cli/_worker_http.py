"""Asking a running worker over HTTP from the command line (``--worker URL``): one call, its refusal as one
line (a :class:`~vitguard.errors.VitguardError`, or a LookupError for a 404 the command reports itself)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vitguard.errors import InputError, ServiceUnavailableError

if TYPE_CHECKING:
    from vitguard.search import SearchAnswer, SearchRequest

__all__ = ["NotFoundOnWorkerError", "WorkerSearcher", "call_worker"]


class NotFoundOnWorkerError(LookupError):
    """The worker answered 404 (an item or cluster it does not hold)."""


def call_worker(url: str, target: str, api_key: str | None, body: bytes | None = None,
                content_type: str | None = None) -> dict[str, Any]:
    """``POST`` ``body`` (or ``GET`` without one) to ``url + target``; the JSON answer.

    Raises:
        NotFoundOnWorkerError: 404.
        InputError: another 4xx (the worker's reason and message).
        ServiceUnavailableError: a 5xx, or the worker did not answer.
    """
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if content_type:
        headers["Content-Type"] = content_type
    method = "GET" if body is None else "POST"
    call = urllib.request.Request(url.rstrip("/") + target, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(call, timeout=60) as reply:  # noqa: S310 - the operator's own worker
            answer: dict[str, Any] = json.loads(reply.read())
            return answer
    except urllib.error.HTTPError as exc:
        refusal = _refusal(exc.read())
        if exc.code == 404:
            raise NotFoundOnWorkerError(refusal) from exc
        if exc.code >= 500:
            raise ServiceUnavailableError(f"the worker at {url} answered {exc.code}: {refusal}") from exc
        raise InputError("schema_violation", f"the worker at {url} refused ({exc.code}): {refusal}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceUnavailableError(f"cannot reach the worker at {url}: {exc}") from exc


def _refusal(body: bytes) -> str:
    try:
        data = json.loads(body)
        return f"{data['reason']}: {data['message']}"
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


@dataclass(frozen=True)
class WorkerSearcher:
    """Searches through a running worker's ``POST /search`` (a :class:`vitguard.retro.hunt.Searcher`)."""

    url: str
    api_key: str | None = None

    def search(self, request: SearchRequest) -> SearchAnswer:
        """The worker's answer; a 404 (the item is not stored) is a :class:`~vitguard.search.NotStoredError`."""
        from vitguard.search import NotStoredError, SearchAnswer

        body = json.dumps(request.model_dump(mode="json", exclude_none=True, exclude_defaults=True)).encode()
        try:
            answer = call_worker(self.url, "/search", self.api_key, body, "application/json")
        except NotFoundOnWorkerError as exc:
            raise NotStoredError(str(exc)) from exc
        return SearchAnswer.model_validate(answer)
