"""Similarity search for users: what a search asks (:class:`SearchRequest`), what it answers
(:class:`SearchAnswer`), and running it against an embedding index. One meaning for ``POST /search`` on the
worker and ``vitguard search`` on the command line.

A search starts from a stored item (``content_id``: its stored embedding) or from an image (the worker's
fetch, decode and forward pass, as ``POST /classify``; the CLI loads the model itself). It answers the ``k``
most similar stored items at or above ``min_similarity`` (cosine), filtered by label, tenant, cluster and
upload time. A search by content id leaves the item itself out.

The index calls block (Milvus): the worker runs them on a thread, never on its event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vitguard.errors import InputError
from vitguard.schemas.events import Identifier, Verdict
from vitguard.stores.interfaces import EmbeddingRecord
from vitguard.stores.similar import SearchFilters, SimilarItem

__all__ = [
    "MAX_K",
    "NotStoredError",
    "SearchAnswer",
    "SearchRequest",
    "SimilarResult",
    "SimilarityIndex",
    "parse_query_string",
    "search_by_content_id",
    "search_by_vector",
]

MAX_K = 100
"""The most items one search answers."""


class NotStoredError(LookupError):
    """A search from a content id that the collection does not hold (HTTP 404)."""

    reason = "not_found"


class SimilarityIndex(Protocol):
    """What a search needs of an embedding index (the Milvus adapter and the in-memory one)."""

    def get(self, collection: str, content_ids: Sequence[str]) -> Mapping[str, EmbeddingRecord]: ...

    def similar(
        self, collection: str, vector: NDArray[np.float32], *, limit: int, min_similarity: float,
        filters: SearchFilters = ..., exclude: Sequence[str] = ...,
    ) -> list[SimilarItem]: ...


class SearchRequest(BaseModel):
    """A search: where it starts (``content_id``, or ``image_ref``, or the image bytes sent beside this) and
    which stored items may answer. List filters take one value or several (any of them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_id: Identifier | None = Field(None, description="Search from this stored item's embedding.")
    image_ref: str | None = Field(None, description="Search from this image (http(s), file or data URL).")
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to answer at most.")
    min_similarity: float = Field(0.0, ge=-1.0, le=1.0, description="Cosine similarity floor.")
    label: list[Literal["safe", "unsafe"]] = Field(default_factory=list, description="Only items so labelled.")
    tenant: list[Identifier] = Field(default_factory=list, description="Only items of these tenants.")
    cluster: list[Identifier] = Field(default_factory=list, description="Only items on these clusters.")
    since: datetime | None = Field(None, description="Only items uploaded at or after (ISO 8601, with offset).")
    until: datetime | None = Field(None, description="Only items uploaded before (ISO 8601, with offset).")

    @field_validator("label", "tenant", "cluster", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("a time needs its offset (2026-01-31T12:00:00Z)")
        return value

    @model_validator(mode="after")
    def _one_start(self) -> SearchRequest:
        if self.content_id is not None and self.image_ref is not None:
            raise ValueError("give content_id or image_ref, not both")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self

    def filters(self) -> SearchFilters:
        return SearchFilters(labels=tuple(self.label), tenants=tuple(self.tenant), clusters=tuple(self.cluster),
                             since_ms=_ms(self.since), until_ms=_ms(self.until))

    @classmethod
    def parse(cls, data: Any) -> SearchRequest:
        """Validate a request; a bad one is one :class:`InputError` (``schema_violation``) naming the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"]))
            raise InputError("schema_violation", f"{where + ': ' if where else ''}{err['msg']}") from exc


def parse_query_string(params: Mapping[str, Sequence[str]]) -> SearchRequest:
    """A search from URL parameters (a ``POST /search`` whose body is the image): repeated or comma-separated
    values for the list filters."""
    lists = {"label", "tenant", "cluster"}
    data: dict[str, Any] = {}
    for name, values in params.items():
        if name in lists:
            data[name] = [v.strip() for value in values for v in value.split(",") if v.strip()]
        elif len(values) != 1:
            raise InputError("schema_violation", f"{name}: given {len(values)} times")
        else:
            data[name] = values[0]
    return SearchRequest.parse(data)


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class SimilarResult(BaseModel):
    """One stored item a search found."""

    content_id: str
    similarity: float = Field(description="Cosine similarity to the query, -1 to 1.")
    label: Literal["safe", "unsafe"]
    unsafe_score: float
    cluster_id: str | None = Field(description="The item's cluster (unsafe items only).")
    tenant: str
    model_version: str
    created_at: datetime = Field(description="When the item was uploaded.")
    processed_at: datetime = Field(description="When vitguard answered it.")

    @classmethod
    def of(cls, item: SimilarItem) -> SimilarResult:
        return cls(content_id=item.content_id, similarity=round(item.similarity, 6), label=item.label,
                   unsafe_score=item.unsafe_score, cluster_id=item.cluster_id or None, tenant=item.tenant,
                   model_version=item.model_version, created_at=_time(item.created_at_ms),
                   processed_at=_time(item.processed_at_ms))


class SearchAnswer(BaseModel):
    """What a search answers: the collection searched, what the query was, and the items found."""

    collection: str
    content_id: str | None = Field(None, description="The stored item searched from (left out of the results).")
    verdict: Verdict | None = Field(None, description="The query image's verdict (a search by image).")
    results: list[SimilarResult]


def search_by_vector(index: SimilarityIndex, collection: str, vector: NDArray[np.float32],
                     request: SearchRequest, *, exclude: Sequence[str] = ()) -> list[SimilarResult]:
    """The stored items most similar to ``vector`` that ``request`` admits, most similar first."""
    found = index.similar(collection, vector, limit=request.k, min_similarity=request.min_similarity,
                          filters=request.filters(), exclude=exclude)
    return [SimilarResult.of(item) for item in found]


def search_by_content_id(index: SimilarityIndex, collection: str, request: SearchRequest,
                         *, owner: str | None = None) -> SearchAnswer:
    """A search from the stored item ``request.content_id`` (with ``owner``: only an item of that tenant).

    Raises:
        NotStoredError: no item is stored under that content id in this model's collection (or, with
            ``owner``, none of that tenant: another tenant's item is not told apart from a missing one).
    """
    content_id = request.content_id
    if content_id is None:
        raise ValueError("a search by content id needs request.content_id")
    stored = index.get(collection, [content_id]).get(content_id)
    if stored is None or (owner is not None and stored.tenant != owner):
        raise NotStoredError(f"no item {content_id!r} is stored in {collection}")
    results = search_by_vector(index, collection, stored.embedding, request, exclude=[content_id])
    return SearchAnswer(collection=collection, content_id=content_id, results=results)
