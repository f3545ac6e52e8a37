"""The worker's OpenAPI document: complete (every status the view answers), consistent (every $ref resolves,
the verdict schema is the verdict model's) and committed (docs/schemas/openapi.json is the generated one)."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from vitguard.consumers import classify_http, http_gate, search_http, search_view, web
from vitguard.consumers.openapi import (
    CLASSIFY_STATUSES,
    CLUSTER_STATUSES,
    LOOKUP_STATUSES,
    SEARCH_STATUSES,
    openapi_document,
)
from vitguard.schemas.events import Verdict

ROOT = Path(__file__).resolve().parents[2]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves_and_the_verdict_is_the_models() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    verdict = json.loads(Verdict.model_construct(event_id="e", content_id="c", label="safe", unsafe_score=0.1,
                                                 top_class="SFW", scores={"SFW": 0.9}, model_name="m",
                                                 model_version="1").model_dump_json())
    resolver_doc = {"$defs": schemas, **schemas["Verdict"]}
    jsonschema.validate(verdict, json.loads(json.dumps(resolver_doc).replace("#/components/schemas/", "#/$defs/")))


def test_every_status_the_view_answers_is_documented() -> None:
    """Statuses written in the views' source (status=NNN) and those status_for gives are all in the document."""
    answered: set[int] = {200}
    for module in (web, classify_http):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "status" and isinstance(node.value, ast.Constant):
                answered.add(int(node.value.value))
            if isinstance(node, ast.Dict):
                answered |= {int(v.value) for v in node.values
                             if isinstance(v, ast.Constant) and isinstance(v.value, int) and 400 <= v.value < 600}
    answered |= {401, 429}  # the API keys' refusals (vitguard.consumers.api_keys)
    documented = {int(code) for code in openapi_document()["paths"]["/classify"]["post"]["responses"]}
    assert answered <= documented == set(CLASSIFY_STATUSES)


@pytest.mark.parametrize("path, statuses", [("/search", SEARCH_STATUSES), ("/banks/lookup", LOOKUP_STATUSES)])
def test_every_status_the_store_views_answer_is_documented(path: str, statuses: dict[int, str]) -> None:
    """Every HTTP status written in the store views, their gate and their parsers (any 4xx/5xx constant), the
    statuses of the image refusals they share with /classify, and the API keys' refusals are documented."""
    answered: set[int] = {200, 401, 404, 429}
    for module in (search_view, http_gate, search_http, classify_http):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        answered |= {int(node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
                     and isinstance(node.value, int) and not isinstance(node.value, bool) and 400 <= node.value < 600}
    if path == "/banks/lookup":
        answered.discard(403)  # the banks are not per tenant: a lookup never narrows to a key's tenant
    documented = {int(code) for code in openapi_document()["paths"][path]["post"]["responses"]}
    assert answered <= documented == set(statuses)


@pytest.mark.parametrize("path", ["/clusters", "/clusters/{cluster_id}"])
def test_every_status_the_cluster_views_answer_is_documented(path: str) -> None:
    """The gate's statuses (keys, bound, deadline, failures) and the views' own are documented."""
    answered: set[int] = {200, 400, 401, 404, 429}
    tree = ast.parse(Path(http_gate.__file__ or "").read_text())
    answered |= {int(node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
                 and isinstance(node.value, int) and not isinstance(node.value, bool) and 400 <= node.value < 600}
    answered.discard(415)  # a body of the wrong kind: a GET has no body
    documented = {int(code) for code in openapi_document()["paths"][path]["get"]["responses"]}
    assert answered <= documented == set(CLUSTER_STATUSES)


def test_the_committed_document_is_the_generated_one() -> None:
    """Regenerate with ``vitguard schemas export docs/schemas`` when the API changes."""
    assert json.loads((ROOT / "docs" / "schemas" / "openapi.json").read_text()) == openapi_document()
