"""``POST /search`` and ``POST /banks/lookup`` over HTTP: what a request means, and the status of each refusal.
Pure: no I/O; the views in :mod:`vitguard.consumers.search_view` run them (:mod:`vitguard.search`,
:mod:`vitguard.banks.lookup`).

``POST /search``:

* ``application/json``: a :class:`~vitguard.search.SearchRequest`: ``{"content_id": ...}`` (search from a
  stored item) or ``{"image_ref": ...}`` (from an image the worker fetches), with the filters;
* the image itself (``image/*``, ``video/*``, ``application/octet-stream``, no content type) or one file
  part of ``multipart/form-data``: the filters go in the URL (``/search?k=5&label=unsafe&tenant=a,b``);
* anything else: 415, as ``POST /classify``.

Statuses: 400 a bad request or image, 404 a content id that is not stored, 413/502/504 as ``/classify`` for
an image that could not be fetched, 503 while Milvus does not answer (retry).

``POST /banks/lookup``: ``application/json`` ``{"hash": "<PDQ, 64 hex digits>"}`` or ``{"image_ref": ...}``, or
the image itself (as above); 404 ``banks_disabled`` on a worker without banks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vitguard.banks.lookup import parse_hash
from vitguard.consumers.classify_http import media_type, parse_request
from vitguard.errors import InputError
from vitguard.schemas.events import Identifier, ImageEvent, load_json
from vitguard.search import SearchRequest, parse_query_string

__all__ = ["ClusterQuery", "LookupCall", "SearchCall", "parse_cluster_query", "parse_lookup", "parse_search"]

_JSON_TYPES = frozenset({"application/json", "text/json"})


@dataclass(frozen=True)
class SearchCall:
    """A search, and the image bytes it starts from when the body was the image."""

    request: SearchRequest
    data: bytes | None = None


def parse_search(content_type: str, body: bytes, query: Mapping[str, Sequence[str]]) -> SearchCall:
    """The search a request asks for.

    Raises:
        UnsupportedMediaTypeError: a body of another kind (415).
        InputError: a request that is not valid (``schema_violation``, ``invalid_json``: 400).
    """
    kind = media_type(content_type)
    if kind in _JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json")):
        if query:
            raise InputError("schema_violation", "a JSON search takes its filters in the body, not the URL")
        data = load_json(body)
        if not isinstance(data, dict):
            raise InputError("schema_violation", 'expected a JSON object {"content_id": ...} or {"image_ref": ...}')
        request = SearchRequest.parse(data)
        if request.content_id is None and request.image_ref is None:
            raise InputError("schema_violation", "give content_id or image_ref (or send the image as the body)")
        if request.image_ref is not None:
            _check_reference(request.image_ref)
        return SearchCall(request)
    calls, _ = parse_request(content_type, body)  # the image: raw bytes or file parts; 415 for anything else
    if len(calls) != 1:
        raise InputError("schema_violation", f"{len(calls)} images: a search starts from one")
    request = parse_query_string(query)
    if request.content_id is not None or request.image_ref is not None:
        raise InputError("schema_violation", "the body is the image: content_id and image_ref do not apply")
    return SearchCall(request, calls[0].data or b"")


def _check_reference(image_ref: str) -> None:
    """An ``image_ref`` is validated as an input event's is, so a search fetches only what the stream would."""
    from pydantic import ValidationError

    try:
        ImageEvent.model_validate({"content_id": "search", "image_ref": image_ref})
    except ValidationError as exc:
        raise InputError("schema_violation", f"image_ref: {exc.errors()[0]['msg']}") from exc


@dataclass(frozen=True)
class LookupCall:
    """A bank lookup: a canonical PDQ hash, a reference, or the image's bytes (one of them)."""

    hash: str | None = None
    image_ref: str | None = None
    data: bytes | None = None


def parse_lookup(content_type: str, body: bytes) -> LookupCall:
    """The bank lookup a request asks for.

    Raises:
        UnsupportedMediaTypeError: a body of another kind (415).
        InputError: a request that is not valid (400).
    """
    kind = media_type(content_type)
    if kind in _JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json")):
        data = load_json(body)
        if not isinstance(data, dict) or len(data) != 1 or not isinstance(next(iter(data.values())), str) \
                or next(iter(data)) not in ("hash", "image_ref"):
            raise InputError("schema_violation",
                             'expected a JSON object {"hash": "<PDQ hash>"} or {"image_ref": "<URL>"}')
        if "hash" in data:
            return LookupCall(hash=parse_hash(data["hash"]))
        _check_reference(data["image_ref"])
        return LookupCall(image_ref=data["image_ref"])
    calls, _ = parse_request(content_type, body)
    if len(calls) != 1:
        raise InputError("schema_violation", f"{len(calls)} images: a lookup takes one")
    return LookupCall(data=calls[0].data or b"")


class ClusterQuery(BaseModel):
    """``GET /clusters`` and ``GET /clusters/{id}``: which tenants' items count, and which page."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: list[Identifier] = Field(default_factory=list)
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)
    source: Literal["rows", "store"] | None = Field(
        None, description="store: scan the stored items even where the clusters' rows could answer.")


def parse_cluster_query(params: Mapping[str, Sequence[str]]) -> ClusterQuery:
    """A cluster listing's URL parameters (``tenant`` repeated or comma-separated).

    Raises:
        InputError: ``schema_violation`` naming the parameter.
    """
    data: dict[str, Any] = {}
    for name, values in params.items():
        if name == "tenant":
            data[name] = [v.strip() for value in values for v in value.split(",") if v.strip()]
        elif len(values) != 1:
            raise InputError("schema_violation", f"{name}: given {len(values)} times")
        else:
            data[name] = values[0]
    try:
        return ClusterQuery.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError("schema_violation", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
