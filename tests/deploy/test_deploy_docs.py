"""The commands that the README, docs/commands.md and deploy/*.md tell users to run exist, with the
options they use: read from the click commands themselves, so the docs cannot drift from the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from deploy_files import DEPLOY

from vitguard.cli import main

REPO = DEPLOY.parent
DOCS = [DEPLOY / "README.md", DEPLOY / "OPERATING.md", REPO / "README.md", REPO / "docs" / "commands.md"]
# `vitguard <cmd> ...` and `docker compose run --rm cli <cmd> ...` (the cli service's entry point is vitguard)
_INVOCATION = re.compile(r"(?:\bvitguard|\brun --rm cli)\s+((?:[a-z][a-z-]*)(?:\s+[a-z][a-z-]*)?)((?:[^\n`]|\\\n)*)")
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _invocations(path: Path) -> list[tuple[list[str], list[str]]]:
    text = path.read_text().replace("\\\n", " ")
    out = []
    for m in _INVOCATION.finditer(text):
        words = m.group(1).split()
        out.append((words, _OPTION.findall(m.group(2))))
    return out


def _resolve(words: list[str]) -> tuple[click.Command, list[str]] | None:
    command: click.Command = main
    path: list[str] = []
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return (command, path) if path else None


def _options(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names | {"--help"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_and_options_exist(doc: Path) -> None:
    checked = 0
    problems: list[str] = []
    for words, options in _invocations(doc):
        resolved = _resolve(words)
        if resolved is None:
            continue  # prose such as "vitguard is ..." or a package name
        command, path = resolved
        if isinstance(command, click.Group):
            problems.append(f"`vitguard {' '.join(words)}` names no sub-command of `vitguard {' '.join(path)}`")
            continue
        checked += 1
        unknown = [o for o in options if o not in _options(command)]
        if unknown:
            problems.append(f"`vitguard {' '.join(path)}` has no option(s) {unknown}")
    assert not problems, "\n".join(problems)
    assert checked >= 3, f"{doc.name}: expected several vitguard commands, found {checked}"


def test_the_readme_fits_a_few_screens_and_its_links_resolve() -> None:
    """The README is what a newcomer reads in five minutes; the depth lives in docs/, linked from it."""
    readme = REPO / "README.md"
    text = readme.read_text()
    assert len(text.encode()) <= 12 * 1024
    quick = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in quick.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert missing == []


_PINNED = ("torch", "onnxruntime", "timm", "faust-streaming", "pymilvus", "confluent-kafka")
"""Packages whose versions the docs quote next to figures."""


@pytest.mark.parametrize("doc", [*DOCS, *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_the_versions_the_docs_quote_are_the_locked_ones(doc: Path) -> None:
    """A figure is only reproducible with the versions that produced it: a version quoted in the docs (``torch
    2.14.1``, ``onnxruntime==1.32.0``) must be the one ``requirements/runtime.lock`` installs."""
    locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements" / "runtime.lock").read_text(),
                             re.MULTILINE))
    text = doc.read_text()
    wrong = [f"{name} {version} (locked: {locked.get(name)})"
             for name in _PINNED
             for version in re.findall(rf"(?<![\w-]){re.escape(name)}(?:==|\s)v?(\d+\.\d+(?:\.\d+)?)\b", text)
             if version != locked.get(name)]
    assert not wrong, wrong
