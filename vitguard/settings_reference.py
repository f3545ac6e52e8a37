"""The configuration reference, generated from the settings classes: every variable, its type, default and
description, in one Markdown document (``docs/configuration.md``; ``vitguard config reference``).

The settings classes in :mod:`vitguard.settings` are the one place where a variable's name, default and
meaning are stated; this module only renders them. ``tests/test_settings_reference.py`` fails when the
committed document is stale.
"""

from __future__ import annotations

import json
import re
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = ["DOC_PATH", "reference_markdown"]

DOC_PATH = Path("docs/configuration.md")
"""Where the reference is committed, relative to the repository root."""

_HEADER = """# Configuration reference

Generated from `vitguard/settings.py` by `vitguard config reference > docs/configuration.md`; do not edit by
hand (`tests/test_settings_reference.py` fails when this file is stale). Every setting is an environment
variable; `vitguard config show` prints the effective values (secrets masked). A bad value stops the command
with one line naming the variable. List settings take a JSON list (`["a","b"]`) or comma-separated values.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if annotation is type(None):
        return "unset"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " \\| ".join(json.dumps(m.value) for m in annotation)
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "PosixPath": "path", "Path": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (tuple, list, set, frozenset)):
        return "`" + json.dumps([v.value if isinstance(v, Enum) else str(v) for v in value]) + "`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def reference_markdown() -> str:
    """The whole document."""
    from vitguard.settings import _SECTIONS, _env_var

    out = [_HEADER]
    for section, cls in _SECTIONS.items():
        summary = _cell((cls.__doc__ or "").strip().split("\n\n")[0])
        out += [f"## {section}", "", summary, "",
                "| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in cls.model_fields.items():
            out.append(f"| `{_env_var(cls, name)}` | {_type_name(field.annotation)} | {_default(field)} | "
                       f"{_cell(field.description or '')} |")
        out.append("")
    return "\n".join(out)
