"""What a similarity search means (vitguard.search): the request, its filters, and running it against an index
(the in-memory one here; tests/stores/test_store_milvus.py checks Milvus answers the same)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from vitguard.errors import InputError
from vitguard.model.types import ModelInfo
from vitguard.search import (
    MAX_K,
    NotStoredError,
    SearchRequest,
    parse_query_string,
    search_by_content_id,
    search_by_vector,
)
from vitguard.stores import EmbeddingRecord, InMemoryEmbeddingIndex
from vitguard.stores.similar import SearchFilters, milvus_filter

MODEL = ModelInfo("timm:vit_tiny_test", "r1", ("NSFW", "SFW"), 4, (3, 32, 32))
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _record(cid: str, vec: list[float], label: str = "unsafe", tenant: str = "a", hour: int = 0) -> EmbeddingRecord:
    cluster = f"c-{cid}" if label == "unsafe" else ""
    return EmbeddingRecord(cid, np.asarray(vec, dtype=np.float32), label, 0.9 if label == "unsafe" else 0.1,
                           cluster, tenant, "r1", T0 + hour * 3_600_000, T0 + hour * 3_600_000 + 250)


Store = tuple[InMemoryEmbeddingIndex, str]


@pytest.fixture
def store() -> Store:
    index = InMemoryEmbeddingIndex()
    name = index.ensure_collection(MODEL)
    index.upsert(name, [
        _record("query", [1, 0, 0, 0]),
        _record("twin", [0.99, 0.1, 0, 0], tenant="b", hour=1),
        _record("cousin", [0.8, 0.6, 0, 0], label="safe", hour=2),
        _record("stranger", [0, 0, 1, 0], hour=3),
    ])
    return index, name


def test_a_search_by_content_id_answers_the_nearest_items_without_itself(store: Store) -> None:
    index, name = store
    answer = search_by_content_id(index, name, SearchRequest(content_id="query", k=2))
    assert answer.content_id == "query" and answer.collection == name and answer.verdict is None
    assert [r.content_id for r in answer.results] == ["twin", "cousin"]
    twin = answer.results[0]
    assert twin.similarity == pytest.approx(0.99 / np.hypot(0.99, 0.1), abs=1e-5)
    assert (twin.label, twin.tenant, twin.cluster_id, twin.model_version) == ("unsafe", "b", "c-twin", "r1")
    assert twin.created_at == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert answer.results[1].cluster_id is None  # a safe item has no cluster


def test_filters_and_the_floor_narrow_the_answer(store: Store) -> None:
    index, name = store
    ids = lambda **kw: [r.content_id for r in search_by_content_id(  # noqa: E731
        index, name, SearchRequest(content_id="query", **kw)).results]
    assert ids() == ["twin", "cousin", "stranger"]
    assert ids(label="safe") == ["cousin"]
    assert ids(tenant=["b", "zzz"]) == ["twin"]
    assert ids(cluster="c-stranger") == ["stranger"]
    assert ids(since="2026-01-01T02:00:00Z") == ["cousin", "stranger"]
    assert ids(until="2026-01-01T02:00:00+00:00") == ["twin"]
    assert ids(min_similarity=0.5) == ["twin", "cousin"]


def test_a_search_by_vector_may_answer_the_item_itself(store: Store) -> None:
    index, name = store
    found = search_by_vector(index, name, np.asarray([1, 0, 0, 0], dtype=np.float32), SearchRequest(k=1))
    assert [(r.content_id, round(r.similarity, 4)) for r in found] == [("query", 1.0)]


def test_an_unknown_content_id_is_not_stored(store: Store) -> None:
    index, name = store
    with pytest.raises(NotStoredError, match="nobody"):
        search_by_content_id(index, name, SearchRequest(content_id="nobody"))


@pytest.mark.parametrize("data, field", [
    ({"content_id": "a", "image_ref": "https://x/y.jpg"}, ""),
    ({"k": 0}, "k"),
    ({"k": MAX_K + 1}, "k"),
    ({"min_similarity": 1.5}, "min_similarity"),
    ({"label": "maybe"}, "label"),
    ({"tenant": 'x" or label != "'}, "tenant"),
    ({"cluster": ["ok", "not ok"]}, "cluster"),
    ({"since": "2026-01-01T00:00:00"}, "since"),
    ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, ""),
    ({"content_id": "a", "extra": 1}, "extra"),
    ({"content_id": 'a"]'}, "content_id"),
])
def test_a_bad_request_is_one_schema_violation_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as caught:
        SearchRequest.parse(data)
    assert caught.value.reason == "schema_violation"
    assert caught.value.message.startswith(f"{field}") and "\n" not in caught.value.message


def test_url_parameters_take_repeated_or_comma_separated_values() -> None:
    request = parse_query_string({"label": ["unsafe"], "tenant": ["a,b", "c"], "k": ["5"],
                                  "since": ["2026-01-01T00:00:00Z"]})
    assert request.k == 5 and request.tenant == ["a", "b", "c"]
    assert request.filters() == SearchFilters(labels=("unsafe",), tenants=("a", "b", "c"), since_ms=T0)
    with pytest.raises(InputError):
        parse_query_string({"k": ["5", "6"]})


def test_the_milvus_expression_of_each_filter() -> None:
    assert milvus_filter(SearchFilters()) == ""
    assert milvus_filter(SearchFilters(labels=("unsafe",), tenants=("a", "b")), exclude=["q"]) == (
        'label in ["unsafe"] and tenant in ["a", "b"] and content_id not in ["q"]')
    assert milvus_filter(SearchFilters(clusters=("c-1",), since_ms=5, until_ms=9)) == (
        'cluster_id in ["c-1"] and created_at_ms >= 5 and created_at_ms < 9')


def test_a_search_from_another_tenants_item_is_not_told_apart_from_a_missing_one(store: Store) -> None:
    index, name = store
    request = SearchRequest(content_id="twin")  # stored under tenant b
    assert search_by_content_id(index, name, request, owner="b").content_id == "twin"
    with pytest.raises(NotStoredError):
        search_by_content_id(index, name, request, owner="a")
