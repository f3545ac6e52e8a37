"""The package's import graph, read from the source (every import, those inside functions included): no cycle
between vitguard's packages, the test scaffolding outside the runtime, and no import of the repository's tests."""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vitguard"

RUNTIME = ("vitguard.pipeline", "vitguard.consumers", "vitguard.kafka", "vitguard.stores", "vitguard.model",
           "vitguard.banks", "vitguard.fetch", "vitguard.media", "vitguard.review", "vitguard.schemas")
"""Packages the worker runs: none may import the test scaffolding (``vitguard.testing``) or the demo."""


def _unit(module: str) -> str:
    """The package a module belongs to (``vitguard.pipeline.runtime.runner`` -> ``vitguard.pipeline``); top-level
    modules (``vitguard.settings``) are units of their own."""
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        source = _unit(_module_name(path))
        for name in _imports(path):
            if name.split(".")[0] in ("vitguard", "tests") and _unit(name) != source:
                edges[source].add(_unit(name))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_packages() -> None:
    assert cycles(_graph()) == []


@pytest.mark.parametrize("package", RUNTIME)
def test_the_runtime_never_imports_the_test_scaffolding_or_the_demo(package: str) -> None:
    reached = _graph().get(package, set())
    assert not reached & {"vitguard.testing", "vitguard.demo", "tests.harness", "tests.conftest"}, reached


def test_the_package_never_imports_the_repositorys_tests() -> None:
    assert not any(u.startswith("tests") for targets in _graph().values() for u in targets)


def _module_imports() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def test_the_stages_know_nothing_of_kafka_or_faust() -> None:
    """The stages take typed values and a sink; the runtime and the consumers wire Kafka to them."""
    offending = {module: sorted(n for n in names if n.startswith(("vitguard.kafka", "vitguard.consumers", "faust",
                                                                 "aiokafka", "confluent_kafka")))
                 for module, names in _module_imports().items() if module.startswith("vitguard.pipeline.stages")}
    assert {m: n for m, n in offending.items() if n} == {}


PIPELINE_MODULE_LINES = 400
"""Issue 27: a module of the pipeline a new engineer can read in one sitting."""


def test_no_pipeline_module_is_over_the_line_limit() -> None:
    long = {str(p.relative_to(ROOT.parent)): n for p in (ROOT / "pipeline").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > PIPELINE_MODULE_LINES}
    assert long == {}, f"split these (over {PIPELINE_MODULE_LINES} lines): {long}"
