"""The worker's HTTP API as an OpenAPI 3.1 document: served at ``/openapi.json`` and exported with the event
schemas (``vitguard schemas export``). Built from the same models the views answer with, so it cannot drift
from them: the verdict schema is the verdict's, the statuses are the views' (tests/consumers/test_openapi.py)."""

from __future__ import annotations

from typing import Any

from vitguard.banks.lookup import BankLookupAnswer
from vitguard.clusters import ClusterItems, ClusterList
from vitguard.consumers.banks_view import BankChange, BankListing
from vitguard.consumers.classify_http import MAX_PARTS
from vitguard.schemas.events import SCHEMA_VERSION, Verdict
from vitguard.search import SearchAnswer, SearchRequest

__all__ = [
    "BANK_CHANGE_STATUSES",
    "BANK_LIST_STATUSES",
    "CLASSIFY_STATUSES",
    "CLUSTER_STATUSES",
    "LOOKUP_STATUSES",
    "SEARCH_STATUSES",
    "openapi_document",
]

CLASSIFY_STATUSES: dict[int, str] = {
    200: "The verdict (a multipart request: one answer per file part).",
    400: "A bad image or reference (reason: not_an_image, schema_violation, fetch_blocked, invalid_json, ...).",
    401: "An API key is required and none or a wrong one was given (VITGUARD_WEB_API_KEYS, _TENANT_API_KEYS).",
    405: "Another method than POST.",
    408: "The request body did not arrive in time.",
    413: "The image (or the body) is larger than the fetch limit.",
    415: "A body of another kind than an image, multipart/form-data or JSON.",
    429: "Too many requests in progress, or over the API key's rate; see Retry-After.",
    500: "A bug; the worker logged it.",
    502: "The referenced image could not be fetched (its server failed, answered 404, or redirected too often).",
    503: "The worker is stopping; retry on another (Retry-After).",
    504: "The referenced image did not arrive within the fetch deadline.",
}
"""Every status ``POST /classify`` answers, and why."""

FORBIDDEN_TENANT = ("The API key is bound to a tenant (VITGUARD_WEB_TENANT_API_KEYS) and the request names another "
                    "(reason: forbidden_tenant).")

SEARCH_STATUSES: dict[int, str] = {
    **{code: why for code, why in CLASSIFY_STATUSES.items() if code not in (200, 503)},
    200: "The items found, most similar first (and the query image's verdict, for a search by image).",
    400: "A bad request, image or reference (reason: schema_violation, invalid_json, not_an_image, ...).",
    403: FORBIDDEN_TENANT,
    404: "A search by content id for an item the collection does not hold, or (a tenant-bound key) that another "
         "tenant's item is (reason: not_found).",
    503: "Milvus did not answer, or the worker is stopping; retry (Retry-After).",
}
"""Every status ``POST /search`` answers, and why."""

LOOKUP_STATUSES: dict[int, str] = {
    **{code: why for code, why in SEARCH_STATUSES.items() if code != 403},
    200: "The hash(es) looked up and the bank entries they match, closest first.",
    400: "A bad request, hash, image or reference (reason: schema_violation, invalid_json, not_an_image, ...).",
    404: "The worker runs without hash banks (reason: banks_disabled).",
    503: "The worker is stopping; retry (Retry-After).",
}
"""Every status ``POST /banks/lookup`` answers, and why."""

CLUSTER_STATUSES: dict[int, str] = {
    200: "The clusters (or one cluster and a page of its items).",
    400: "A bad parameter or cluster id (reason: schema_violation).",
    401: CLASSIFY_STATUSES[401],
    403: FORBIDDEN_TENANT,
    404: "No stored item is on that cluster (reason: not_found).",
    405: "Another method than GET.",
    408: CLASSIFY_STATUSES[408],
    413: "A request body (these views take none) larger than the body limit.",
    429: CLASSIFY_STATUSES[429],
    500: CLASSIFY_STATUSES[500],
    503: "Milvus did not answer, or the worker is stopping; retry (Retry-After).",
}
"""Every status ``GET /clusters`` and ``GET /clusters/{id}`` answer, and why."""

BANK_LIST_STATUSES: dict[int, str] = {
    **{code: why for code, why in CLUSTER_STATUSES.items() if code not in (400, 403)},
    200: "The banks, their settings and how many entries each holds now.",
    404: "The worker runs without hash banks (reason: banks_disabled).",
    503: "The worker is stopping; retry (Retry-After).",
}
"""Every status ``GET /banks`` answers, and why."""

BANK_CHANGE_STATUSES: dict[int, str] = {
    **CLUSTER_STATUSES,
    200: "What was added (with the list's bad lines) or removed.",
    400: "A hash list with no good hash, a bad line under strict=true, or text that is not UTF-8 "
         "(reason: schema_violation).",
    403: "No API keys are configured (reason: keys_required: bank changes over HTTP need them), or the key is bound "
         "to a tenant (reason: forbidden_tenant).",
    404: "No such bank or entry, or the worker runs without hash banks (reason: not_found, banks_disabled).",
    405: "Another method than the one the path takes.",
    413: "The hash list is larger than the body limit (the fetch limit).",
    503: "The banks topic did not acknowledge the change in time, or the worker is stopping; retry (Retry-After).",
}
"""Every status the bank entry changes answer, and why."""

_LOOKUP_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "hash": {"type": "string", "description": "A PDQ hash (64 hex digits)."},
        "image_ref": {"type": "string", "description": "An image to hash: http(s)://, file:// or data: URL."},
    },
}

_ERROR = {
    "type": "object",
    "required": ["reason", "message"],
    "properties": {"reason": {"type": "string", "description": "A stable reason code."},
                   "message": {"type": "string", "description": "What happened, for people."}},
}
_REQUEST = {
    "type": "object",
    "required": ["image_ref"],
    "additionalProperties": False,
    "properties": {
        "image_ref": {"type": "string", "description": "http(s)://, file:// (under the worker's root) or data: URL."},
        "content_id": {"type": "string", "description": "Echoed in the verdict."},
        "tenant": {"type": "string", "description": "Echoed in the verdict."},
    },
}
_PROBE = {"type": "object", "description": "ok / reasons / detail of the probe."}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the worker's web server."""
    verdict = Verdict.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    components = {name: schema for name, schema in verdict.pop("$defs", {}).items()}
    components |= {"Verdict": verdict, "Error": _ERROR, "ClassifyRequest": _REQUEST,
                   "BatchResults": {"type": "object", "properties": {"results": {"type": "array", "items": {
                       "type": "object", "properties": {
                           "name": {"type": "string", "description": "The file part's name."},
                           "verdict": {"$ref": "#/components/schemas/Verdict"},
                           "reason": {"type": "string"}, "message": {"type": "string"}}}}}}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    binary = {"schema": {"type": "string", "format": "binary"}}
    responses: dict[str, Any] = {
        str(code): {"description": why, "content": error} for code, why in CLASSIFY_STATUSES.items() if code != 200
    }
    responses["200"] = {"description": CLASSIFY_STATUSES[200], "content": {"application/json": {"schema": {
        "oneOf": [{"$ref": "#/components/schemas/Verdict"}, {"$ref": "#/components/schemas/BatchResults"}]}}}}
    search = _search_path(components, binary, error)
    lookup = _lookup_path(components, binary, error)
    listing, cluster = _cluster_paths(components, error)
    bank_list, bank_entries, bank_entry = _bank_paths(components, error)
    probe = {"200": {"description": "Yes.", "content": {"application/json": {"schema": _PROBE}}},
             "503": {"description": "No; the reasons say why.", "content": {"application/json": {"schema": _PROBE}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "vitguard worker", "version": SCHEMA_VERSION,
                 "description": "Moderate images now (POST /classify, no side effects), search the stored "
                                "embeddings (POST /search), and the probes."},
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "paths": {
            "/classify": {"post": {
                "summary": "Moderate images now, through the stream's batches, with no side effects.",
                "security": [{}, {"bearer": []}, {"apiKey": []}],
                "requestBody": {"required": True, "content": {
                    "image/*": binary, "video/*": binary, "application/octet-stream": binary,
                    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {
                        "type": "array", "maxItems": MAX_PARTS, "items": {"type": "string", "format": "binary"}}}}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/ClassifyRequest"}},
                }},
                "responses": responses,
            }},
            "/search": search,
            "/banks/lookup": lookup,
            "/banks": bank_list,
            "/banks/{name}/entries": bank_entries,
            "/banks/{name}/entries/{entry_id}": bank_entry,
            "/clusters": listing,
            "/clusters/{cluster_id}": cluster,
            "/livez": {"get": {"summary": "Liveness: false when wedged or fatal.", "responses": probe}},
            "/readyz": {"get": {"summary": "Readiness: dependencies, the group join, fatal errors.",
                                "responses": probe}},
            "/healthz": {"get": {"summary": "The process answers.", "responses": {"200": {"description": "Yes."}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics.", "responses": {"200": {
                "description": "Text exposition format.", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {"description": "Yes."}}}},
        },
    }


def _search_path(components: dict[str, Any], binary: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """``POST /search``; adds its request and answer schemas to ``components``."""
    ref = "#/components/schemas/{model}"
    request = SearchRequest.model_json_schema(ref_template=ref)
    answer = SearchAnswer.model_json_schema(ref_template=ref, mode="serialization")
    for schema in (request, answer):
        components.update(schema.pop("$defs", {}))
    components |= {"SearchRequest": request, "SearchAnswer": answer}
    filters = [{"name": name, "in": "query", "required": False, "schema": field,
                "description": f"{field.get('description', '')} (a search whose body is the image)".strip()}
               for name, field in request["properties"].items() if name not in ("content_id", "image_ref")]
    return {"post": {
        "summary": "Stored items similar to a stored item (content_id) or to an image, filtered.",
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "parameters": filters,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "image/*": binary, "video/*": binary, "application/octet-stream": binary,
            "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {
                "type": "string", "format": "binary"}}}},
        }},
        "responses": _responses(SEARCH_STATUSES, "SearchAnswer", error),
    }}


def _lookup_path(components: dict[str, Any], binary: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """``POST /banks/lookup``; adds its request and answer schemas to ``components``."""
    answer = BankLookupAnswer.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    components.update(answer.pop("$defs", {}))
    components |= {"BankLookupRequest": _LOOKUP_REQUEST, "BankLookupAnswer": answer}
    return {"post": {
        "summary": "The PDQ hash of an image (or a hash given) and the bank entries it matches; no side effects.",
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/BankLookupRequest"}},
            "image/*": binary, "video/*": binary, "application/octet-stream": binary,
        }},
        "responses": _responses(LOOKUP_STATUSES, "BankLookupAnswer", error),
    }}


def _responses(statuses: dict[int, str], answer: str, error: dict[str, Any]) -> dict[str, Any]:
    """A view's responses: its answer schema for 200, the error object for every other status it gives."""
    responses: dict[str, Any] = {str(code): {"description": why, "content": error}
                                 for code, why in statuses.items() if code != 200}
    responses["200"] = {"description": statuses[200], "content": {"application/json": {"schema": {
        "$ref": f"#/components/schemas/{answer}"}}}}
    return responses


def _cluster_paths(components: dict[str, Any], error: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``GET /clusters`` and ``GET /clusters/{cluster_id}``; adds their answer schemas to ``components``."""
    ref = "#/components/schemas/{model}"
    for model in (ClusterList, ClusterItems):
        schema = model.model_json_schema(ref_template=ref, mode="serialization")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    tenant = {"name": "tenant", "in": "query", "required": False, "schema": {"type": "string"},
              "description": "Count only these tenants' items (repeated or comma-separated)."}
    page = [{"name": name, "in": "query", "required": False, "schema": {"type": "integer", "minimum": low},
             "description": why} for name, low, why in (("limit", 1, "At most this many (1-500, default 50)."),
                                                        ("offset", 0, "The first item of the page (default 0)."))]
    security: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"apiKey": []}]
    listing = {"get": {"summary": "The unsafe near-duplicate clusters, most recently active first.",
                       "security": security, "parameters": [tenant, page[0]],
                       "responses": _responses(CLUSTER_STATUSES, "ClusterList", error)}}
    one = {"get": {"summary": "One cluster and a page of its items, oldest upload first.", "security": security,
                   "parameters": [{"name": "cluster_id", "in": "path", "required": True,
                                   "schema": {"type": "string"}}, tenant, *page],
                   "responses": _responses(CLUSTER_STATUSES, "ClusterItems", error)}}
    return listing, one


def _bank_paths(components: dict[str, Any], error: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """``GET /banks``, ``POST /banks/{name}/entries`` and ``DELETE /banks/{name}/entries/{entry_id}``."""
    ref = "#/components/schemas/{model}"
    for model in (BankListing, BankChange):
        schema = model.model_json_schema(ref_template=ref, mode="serialization")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    security: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"apiKey": []}]
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    listing = {"get": {"summary": "The hash banks this worker matches against.", "security": security,
                       "responses": _responses(BANK_LIST_STATUSES, "BankListing", error)}}
    add = {"post": {
        "summary": "Add a hash list to a bank (the command line's formats; bad lines answered with their numbers).",
        "security": [{"bearer": []}, {"apiKey": []}],
        "parameters": [name, {"name": "strict", "in": "query", "required": False, "schema": {"type": "boolean"},
                              "description": "Import nothing when any line is bad."},
                       {"name": "tag", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "Tag every entry (repeat for several)."}],
        "requestBody": {"required": True, "content": {"text/plain": {"schema": {"type": "string"}},
                                                      "text/csv": {"schema": {"type": "string"}}}},
        "responses": _responses(BANK_CHANGE_STATUSES, "BankChange", error)}}
    remove = {"delete": {
        "summary": "Remove one entry from a bank.", "security": [{"bearer": []}, {"apiKey": []}],
        "parameters": [name, {"name": "entry_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": _responses(BANK_CHANGE_STATUSES, "BankChange", error)}}
    return listing, add, remove
