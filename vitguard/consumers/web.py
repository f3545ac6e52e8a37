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
import logging
import time
from typing import Any

from vitguard import metrics
from vitguard.errors import InputError
from vitguard.health import liveness, readiness

__all__ = ["register_views"]

_log = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/json")


def register_views(app: Any, runtime: Any) -> None:  # noqa: C901 - older than the limit, to be split
    """Add vitguard's views to a Faust app; ``runtime`` is its :class:`~vitguard.consumers.app.WorkerRuntime`."""
    from aiohttp.web import HTTPRequestEntityTooLarge
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

    @app.page("/metrics")
    class Metrics(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            # aiohttp refuses a charset inside content_type=, so the full header goes in as a header
            return self.bytes(metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    limit = runtime.settings.web.classify_max_in_flight
    body_timeout_s = runtime.settings.fetch.connect_timeout_s + runtime.settings.fetch.read_timeout_s
    handling = [0]  # POST /classify requests in this handler now

    @app.page("/classify")
    class Classify(View):  # type: ignore[misc]
        async def post(self, request: Any) -> Any:
            processor = runtime.runner
            if handling[0] >= limit:  # before the body is read: a flood must not buffer its bodies
                metrics.CLASSIFY_REQUESTS.labels("overloaded").inc()
                return self.json({"reason": "overloaded", "message": f"{limit} requests in progress; retry"},
                                 status=429, headers={"Retry-After": "1"})
            handling[0] += 1
            try:
                return await self._classify(request, processor)
            finally:
                handling[0] -= 1

        async def _classify(self, request: Any, processor: Any) -> Any:
            content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            try:
                try:
                    async with asyncio.timeout(body_timeout_s):  # a trickled body must not hold its slot forever
                        body = await request.read()
                except TimeoutError:
                    metrics.CLASSIFY_REQUESTS.labels("request_timeout").inc()
                    return self.json({"reason": "request_timeout",
                                      "message": f"the request body did not arrive within {body_timeout_s:g} s"},
                                     status=408)
                if content_type in _JSON_TYPES:
                    kwargs = _json_request(body)
                    verdict = await processor.classify(**kwargs)
                else:
                    verdict = await processor.classify(data=body)
            except asyncio.CancelledError:
                if not processor.closed:  # the client went away: the handler itself is cancelled
                    raise
                return self._stopping()
            except InputError as exc:
                metrics.CLASSIFY_REQUESTS.labels(exc.reason).inc()
                return self.json({"reason": exc.reason, "message": exc.message}, status=400)
            except HTTPRequestEntityTooLarge as exc:
                metrics.CLASSIFY_REQUESTS.labels("fetch_too_large").inc()
                return self.json({"reason": "fetch_too_large", "message": exc.text or str(exc)}, status=413)
            except Exception as exc:
                if processor.closed:
                    return self._stopping()
                _log.exception("POST /classify failed")
                metrics.CLASSIFY_REQUESTS.labels("internal_error").inc()
                return self.json({"reason": "internal_error", "message": type(exc).__name__}, status=500)
            metrics.CLASSIFY_REQUESTS.labels(verdict.label).inc()
            return self.json(verdict.model_dump(mode="json"))

        def _stopping(self) -> Any:
            metrics.CLASSIFY_REQUESTS.labels("shutting_down").inc()
            return self.json({"reason": "shutting_down", "message": "the worker is stopping; retry on another"},
                             status=503, headers={"Retry-After": "1"})


def _json_request(body: bytes) -> dict[str, Any]:
    """``{"image_ref": ..., "content_id"?: ..., "tenant"?: ...}`` -> keyword arguments of ``classify``."""
    from vitguard.schemas.events import ImageEvent, load_json

    data = load_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("image_ref"), str):
        raise InputError("schema_violation", 'expected a JSON object {"image_ref": "<http(s)|file|data URL>"}')
    unknown = set(data) - {"image_ref", "content_id", "tenant"}
    if unknown:
        raise InputError("schema_violation", f"unknown field(s): {sorted(unknown)}")
    from pydantic import ValidationError

    try:  # the same validation as an input event, so /classify refuses what the stream refuses
        event = ImageEvent.model_validate({"content_id": data.get("content_id") or "classify", **data})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError("schema_violation", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    return {
        "image_ref": event.image_ref,
        "content_id": data.get("content_id"),
        "tenant": event.tenant,
    }
