"""What every store-facing view of the worker (``POST /search``, ``POST /banks/lookup``, ``GET /clusters``) does
around its own work: API keys (``POST /classify``'s, one budget per key; a tenant-bound key's tenant handed to the
view), an in-flight bound checked before the body is read, the body's deadline, and one JSON answer for every
failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.web import HTTPRequestEntityTooLarge
from prometheus_client import Counter

from vitguard.consumers.api_keys import ApiKeys, Refusal
from vitguard.consumers.classify_http import UnsupportedMediaTypeError, status_for
from vitguard.errors import InputError, ServiceUnavailableError

__all__ = ["RequestGate", "http_failure", "query_params"]

_log = logging.getLogger(__name__)


class RequestGate:
    """Runs one view's requests through the keys, the bound and the body deadline; counts each outcome."""

    def __init__(self, name: str, keys: ApiKeys, limit: int, body_timeout_s: float, outcomes: Counter,
                 *, method: str = "POST") -> None:
        self.name = name
        self.method = method
        self.keys = keys
        self.limit = limit
        self.body_timeout_s = body_timeout_s
        self.outcomes = outcomes
        self.handling = 0

    async def run(self, view: Any, request: Any,
                  handle: Callable[[bytes, str | None], Awaitable[dict[str, Any]]]) -> Any:
        """The answer to ``request``: ``handle(body, tenant)``'s JSON (``tenant``: the one the caller's key is
        bound to, or None), or a refusal ``{"reason", "message"}``."""
        admitted = self.keys.admit(request.headers)
        if isinstance(admitted, Refusal):  # before anything else: an unknown caller costs nothing
            return self._refuse(view, admitted.reason, admitted.message, admitted.status, dict(admitted.headers))
        if self.handling >= self.limit:  # before the body is read: a flood must not buffer its bodies
            return self._refuse(view, "overloaded", f"{self.limit} requests in progress; retry", 429,
                                {"Retry-After": "1"})
        self.handling += 1
        try:
            try:
                async with asyncio.timeout(self.body_timeout_s):  # a trickled body must not hold its slot
                    body = await request.read()
            except TimeoutError:
                return self._refuse(view, "request_timeout",
                                    f"the request body did not arrive within {self.body_timeout_s:g} s", 408)
            answer = await handle(body, admitted.tenant)
        except Exception as exc:
            reason, message, status = http_failure(exc)
            if status == 500:
                _log.exception("POST %s failed", self.name)
            return self._refuse(view, reason, message, status, {"Retry-After": "1"} if status == 503 else {})
        finally:
            self.handling -= 1
        self.outcomes.labels("answered").inc()
        return view.json(answer)

    def _refuse(self, view: Any, reason: str, message: str, status: int, headers: dict[str, str] | None = None) -> Any:
        self.outcomes.labels(reason).inc()
        return view.json({"reason": reason, "message": message}, status=status, headers=headers or {})

    async def not_allowed(self, view: Any, request: Any) -> Any:
        message = f"{request.method} {self.name}: use {self.method}"
        return view.json({"reason": "method_not_allowed", "message": message}, status=405,
                         headers={"Allow": self.method})


def query_params(request: Any) -> dict[str, list[str]]:
    """A request's URL parameters, each with all its values."""
    return {name: request.query.getall(name) for name in request.query}


def http_failure(exc: Exception) -> tuple[str, str, int]:
    """What a failed request answers: reason, message and status (500: a bug, not the caller's)."""
    if isinstance(exc, InputError):
        return exc.reason, exc.message, status_for(exc.reason)
    if isinstance(exc, UnsupportedMediaTypeError):
        return exc.reason, exc.message, 415
    if isinstance(exc, HTTPRequestEntityTooLarge):  # aiohttp's body limit (the fetch limit, see consumers/app.py)
        return "fetch_too_large", exc.text or str(exc), 413
    if isinstance(exc, PermissionError) and isinstance(getattr(exc, "reason", None), str):
        return exc.reason, str(exc), 403  # type: ignore[attr-defined]
    if isinstance(exc, LookupError) and isinstance(getattr(exc, "reason", None), str):
        return exc.reason, str(exc), 404  # type: ignore[attr-defined]
    if isinstance(exc, ServiceUnavailableError):
        return "unavailable", str(exc), 503
    return "internal_error", type(exc).__name__, 500
