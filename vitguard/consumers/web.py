"""Web views on Faust's web server: /healthz, /livez, /readyz, /metrics and POST /classify.

``/healthz`` says the process serves HTTP (a startup probe). ``/livez`` fails when the worker should be
restarted: a fatal error, the agent dead, or wedged (work waiting and nothing answered for
``VITGUARD_WORKER_STALL_TIMEOUT_S``). ``/readyz`` is false while the worker cannot moderate: the model is not
loaded, the agent is not running, the broker or Milvus does not answer, or publishing has been failing for
``VITGUARD_WORKER_PUBLISH_STUCK_S``; its JSON says why. Redis is reported but never gates readiness (it is an
optimisation). The rules are pure functions in :mod:`vitguard.health`. ``POST /classify`` moderates one image
through the same stages and batches as the stream (decoded ahead of the stream's queued decodes, then in a
short pass ahead of stream images: :mod:`vitguard.pipeline.runtime.batcher`), without side effects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from vitguard import metrics
from vitguard.consumers.api_keys import ApiKeys, ForbiddenTenantError, Refusal, scope_tenants
from vitguard.consumers.banks_view import register_bank_views
from vitguard.consumers.classify_http import ClassifyCall, UnsupportedMediaTypeError, parse_request
from vitguard.consumers.http_gate import http_failure, query_params
from vitguard.consumers.openapi import openapi_document
from vitguard.consumers.search_view import register_store_views
from vitguard.errors import InputError
from vitguard.health import liveness, readiness

__all__ = ["register_views"]

_log = logging.getLogger(__name__)

def register_views(app: Any, runtime: Any) -> None:
    """Add vitguard's views to a Faust app; ``runtime`` is its :class:`~vitguard.consumers.app.WorkerRuntime`."""
    web = runtime.settings.web
    keys = ApiKeys([k.get_secret_value() for k in web.api_keys], web.api_key_rate,
                   tenant_keys=[k.get_secret_value() for k in web.tenant_api_keys])
    _register_probes(app, runtime)
    _register_classify(app, runtime, keys)
    register_store_views(app, runtime, keys)
    register_bank_views(app, runtime, keys)


def _register_probes(app: Any, runtime: Any) -> None:
    """``/healthz``, ``/livez``, ``/readyz``, ``/openapi.json`` and ``/metrics``."""
    from faust.web import View

    @app.page("/healthz")
    class Healthz(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return self.json({"status": "ok"})

    @app.page("/livez")
    class Livez(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            probe = liveness(runtime.health, time.monotonic(), runtime.settings.worker.stall_timeout_s)
            body = {"live": probe.ok, "reasons": list(probe.reasons), **probe.detail}
            return self.json(body, status=200 if probe.ok else 503)

    @app.page("/readyz")
    class Readyz(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            runner = runtime.runner
            probe = readiness(  # the dependencies' last answers (background checks): a probe never waits on one
                runtime.health, time.monotonic(), broker_reachable=runtime.broker_reachable(),
                milvus_reachable=runtime.milvus_reachable(),
                publish_stuck_s=runtime.settings.worker.publish_stuck_s,
            )
            body = {
                "ready": probe.ok,
                "reasons": list(probe.reasons),
                "model": {"name": runner.info.name, "version": runner.info.version},
                "agent_started": runtime.health.agent_running,
                "collection": runner.collection,
                "batches": runner.batches,
                **probe.detail,
            }
            return self.json(body, status=200 if probe.ok else 503)

    @app.page("/openapi.json")
    class OpenApi(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return self.json(openapi_document())

    @app.page("/metrics")
    class Metrics(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            # aiohttp refuses a charset inside content_type=, so the full header goes in as a header
            return self.bytes(metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})


def _register_classify(app: Any, runtime: Any, keys: ApiKeys) -> None:
    """``POST /classify``: API keys, the in-flight bound, the body's deadline, then the runner."""
    from aiohttp.web import HTTPRequestEntityTooLarge
    from faust.web import View

    limit = runtime.settings.web.classify_max_in_flight
    body_timeout_s = runtime.settings.fetch.connect_timeout_s + runtime.settings.fetch.read_timeout_s
    handling = [0]  # POST /classify requests in this handler now

    @app.page("/classify")
    class Classify(View):  # type: ignore[misc]
        async def post(self, request: Any) -> Any:
            processor = runtime.runner
            admitted = keys.admit(request.headers)
            if isinstance(admitted, Refusal):  # before anything else: an unknown caller costs nothing
                metrics.CLASSIFY_REQUESTS.labels(admitted.reason).inc()
                return self.json({"reason": admitted.reason, "message": admitted.message}, status=admitted.status,
                                 headers=dict(admitted.headers))
            if handling[0] >= limit:  # before the body is read: a flood must not buffer its bodies
                metrics.CLASSIFY_REQUESTS.labels("overloaded").inc()
                return self.json({"reason": "overloaded", "message": f"{limit} requests in progress; retry"},
                                 status=429, headers={"Retry-After": "1"})
            handling[0] += 1
            try:
                return await self._classify(request, processor, admitted.tenant)
            finally:
                handling[0] -= 1

        async def _classify(self, request: Any, processor: Any, bound: str | None) -> Any:
            try:
                try:
                    async with asyncio.timeout(body_timeout_s):  # a trickled body must not hold its slot forever
                        body = await request.read()
                except TimeoutError:
                    metrics.CLASSIFY_REQUESTS.labels("request_timeout").inc()
                    return self.json({"reason": "request_timeout",
                                      "message": f"the request body did not arrive within {body_timeout_s:g} s"},
                                     status=408)
                calls, batch = parse_request(request.headers.get("Content-Type") or "", body,
                                             query_params(request))
                calls = bound_to(calls, bound)
                if batch:
                    return self.json({"results": await _classify_batch(processor, calls)})
                verdict = await processor.classify(**calls[0].kwargs())
            except asyncio.CancelledError:
                if not processor.closed:  # the client went away: the handler itself is cancelled
                    raise
                return self._stopping()
            except Exception as exc:
                reason, message, status = _failure(exc, HTTPRequestEntityTooLarge)
                if status == 500:  # not the caller's fault
                    if processor.closed:
                        return self._stopping()
                    _log.exception("POST /classify failed")
                metrics.CLASSIFY_REQUESTS.labels(reason).inc()
                return self.json({"reason": reason, "message": message}, status=status)
            metrics.CLASSIFY_REQUESTS.labels(verdict.label).inc()
            return self.json(verdict.model_dump(mode="json"))

        async def _not_allowed(self, request: Any) -> Any:
            return self.json({"reason": "method_not_allowed",
                              "message": f"{request.method} /classify: send the image with POST"},
                             status=405, headers={"Allow": "POST"})

        get = put = delete = patch = _not_allowed

        def _stopping(self) -> Any:
            metrics.CLASSIFY_REQUESTS.labels("shutting_down").inc()
            return self.json({"reason": "shutting_down", "message": "the worker is stopping; retry on another"},
                             status=503, headers={"Retry-After": "1"})


def bound_to(calls: list[ClassifyCall], tenant: str | None) -> list[ClassifyCall]:
    """A tenant-bound key's requests are judged as its tenant (a request that names no tenant included).

    Raises:
        ForbiddenTenantError: a request named another tenant.
    """
    if tenant is None:
        return calls
    scope_tenants([c.tenant for c in calls if c.tenant != "default"], tenant)
    return [dataclasses.replace(c, tenant=tenant) for c in calls]


def _failure(exc: Exception, too_large: type[Exception]) -> tuple[str, str, int]:
    """What a failed ``POST /classify`` answers: reason, message and status (500: a bug, not the caller's; a
    Milvus or broker outage included, which the store views answer 503)."""
    if isinstance(exc, InputError | UnsupportedMediaTypeError | ForbiddenTenantError | too_large):
        return http_failure(exc)
    return "internal_error", type(exc).__name__, 500


async def _classify_batch(processor: Any, calls: list[ClassifyCall]) -> list[dict[str, Any]]:
    """The images of a multipart request, classified together (they join the same batches): one answer each,
    in order, a verdict or ``{"reason", "message"}``."""
    answers = await asyncio.gather(*(processor.classify(**c.kwargs()) for c in calls), return_exceptions=True)
    out: list[dict[str, Any]] = []
    for call, answer in zip(calls, answers, strict=True):
        if isinstance(answer, InputError):
            metrics.CLASSIFY_REQUESTS.labels(answer.reason).inc()
            out.append({"name": call.name, "reason": answer.reason, "message": answer.message})
        elif isinstance(answer, BaseException):
            raise answer
        else:
            metrics.CLASSIFY_REQUESTS.labels(answer.label).inc()
            out.append({"name": call.name, "verdict": answer.model_dump(mode="json")})
    return out
