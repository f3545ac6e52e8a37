"""Web views on Faust's web server: /healthz, /readyz, /metrics and POST /classify.

``/healthz`` says the process serves requests (liveness); ``/readyz`` says it can do its job: the model
is loaded and the brokers answer (readiness); the stores are reported but do not gate readiness, since
the pipeline tolerates Redis outages and holds batches while Milvus is down. ``POST /classify`` moderates
one image synchronously with the same model, policy and fetch limits as the stream, without side effects.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from vitguard import metrics
from vitguard.errors import InputError

__all__ = ["register_views"]

_log = logging.getLogger(__name__)

_JSON_TYPES = ("application/json", "text/json")


def register_views(app: Any, runtime: Any) -> None:
    """Add vitguard's views to a Faust app; ``runtime`` is its :class:`~vitguard.consumers.app.WorkerRuntime`."""
    from aiohttp.web import HTTPRequestEntityTooLarge
    from faust.web import View

    @app.page("/healthz")
    class Healthz(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Readyz(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            processor = runtime.processor
            broker = await runtime.broker_reachable()
            body = {
                "ready": broker and processor is not None,
                "model": {"name": processor.info.name, "version": processor.info.version},
                "broker_reachable": broker,
                "agent_started": runtime.agent_started,
                "collection": processor.collection,
                "in_flight": runtime.in_flight,
                "batches": processor.batches,
            }
            return self.json(body, status=200 if body["ready"] else 503)

    @app.page("/metrics")
    class Metrics(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            # aiohttp refuses a charset inside content_type=, so the full header goes in as a header
            return self.bytes(metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    @app.page("/classify")
    class Classify(View):  # type: ignore[misc]
        async def post(self, request: Any) -> Any:
            processor = runtime.processor
            content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            try:
                body = await request.read()
                if content_type in _JSON_TYPES:
                    kwargs = _json_request(body)
                    verdict = await processor.classify(**kwargs)
                else:
                    verdict = await processor.classify(data=body)
            except InputError as exc:
                metrics.CLASSIFY_REQUESTS.labels(exc.reason).inc()
                return self.json({"reason": exc.reason, "message": exc.message}, status=400)
            except HTTPRequestEntityTooLarge as exc:
                metrics.CLASSIFY_REQUESTS.labels("fetch_too_large").inc()
                return self.json({"reason": "fetch_too_large", "message": exc.text or str(exc)}, status=413)
            except Exception as exc:
                _log.exception("POST /classify failed")
                metrics.CLASSIFY_REQUESTS.labels("internal_error").inc()
                return self.json({"reason": "internal_error", "message": type(exc).__name__}, status=500)
            metrics.CLASSIFY_REQUESTS.labels(verdict.label).inc()
            return self.json(verdict.model_dump(mode="json"))


def _json_request(body: bytes) -> dict[str, Any]:
    """``{"image_ref": ..., "content_id"?: ..., "tenant"?: ...}`` -> keyword arguments of ``classify``."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InputError("invalid_json", f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("image_ref"), str):
        raise InputError("schema_violation", 'expected a JSON object {"image_ref": "<http(s)|file|data URL>"}')
    unknown = set(data) - {"image_ref", "content_id", "tenant"}
    if unknown:
        raise InputError("schema_violation", f"unknown field(s): {sorted(unknown)}")
    from pydantic import ValidationError

    from vitguard.schemas.events import ImageEvent

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
