"""No function in the package is over the complexity limit, by radon's measure (issue 27).

ruff's C901 (McCabe) enforces the same limit while editing, but counts differently: radon also counts each
``and``/``or``, comprehension and ``assert``, so a function can pass ruff and still be over radon's limit. This
test is the one that decides."""

from __future__ import annotations

from pathlib import Path

from radon import complexity as cc  # a dev dependency (requirements/dev.lock)

ROOT = Path(__file__).resolve().parents[1] / "vitguard"

MAX_COMPLEXITY = 15
"""Cyclomatic complexity, radon's count: a function a reviewer can hold in mind at once."""


def _over_limit(source: str, name: str) -> dict[str, int]:
    """Functions and methods over the limit, as ``"name:line qualified.name"`` (a class's own total is not one)."""
    functions = [f for block in cc.cc_visit(source) for f in getattr(block, "methods", [block])]
    return {f"{name}:{f.lineno} {f.fullname}": f.complexity for f in functions if f.complexity > MAX_COMPLEXITY}


def test_the_counter_finds_a_function_over_the_limit() -> None:
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(MAX_COMPLEXITY))
    method = branches.replace("    ", "        ")
    source = f"def f(x):\n{branches}    return -1\n\nclass C:\n    def m(self, x):\n{method}        return -1\n"
    m_line = source.splitlines().index("    def m(self, x):") + 1
    assert _over_limit(source, "s") == {"s:1 f": MAX_COMPLEXITY + 1, f"s:{m_line} C.m": MAX_COMPLEXITY + 1}
    assert _over_limit(source.replace("    if x == 0:\n        return 0\n", "", 1), "s") == {
        f"s:{m_line - 2} C.m": MAX_COMPLEXITY + 1}  # one branch fewer: f is at the limit, not over it


def test_no_function_in_the_package_is_over_the_complexity_limit() -> None:
    over: dict[str, int] = {}
    for path in sorted(ROOT.rglob("*.py")):
        over.update(_over_limit(path.read_text(), str(path.relative_to(ROOT.parent))))
    assert over == {}, f"split these (radon complexity over {MAX_COMPLEXITY}): {over}"
