"""Readers for the files under ``deploy/`` and the facts the code states, for the consistency tests.

The stack in ``deploy/`` cannot start here (no Docker engine, no cluster), so its tests compare what the
files say with what the code says: setting names from the settings classes, topic names from
``TopicSettings``, the port from ``WebSettings``, metric names from ``vitguard.metrics``. Nothing here
copies a fact from the code; every expectation is read from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from vitguard.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"
ENV_VAR_RE = re.compile(r"\bVITGUARD_[A-Z0-9_]*[A-Z0-9]\b")
# Names that look like settings but are not: the test harness' own overrides (tests/conftest.py).
NON_SETTING_PREFIXES = ("VITGUARD_TEST_",)


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


def json_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.json"))


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_yaml(path: Path) -> Any:
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path} should hold exactly one YAML document"
    return docs[0]


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s (patches in overlays included), with its file."""
    out: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, doc) for doc in load_yaml_docs(path))
    return out


def k8s_object(kind: str, path: Path | None = None) -> dict[str, Any]:
    found = [doc for p, doc in k8s_objects() if doc["kind"] == kind and (path is None or p == path)]
    assert len(found) == 1, f"expected one {kind} in {path or K8S}, found {len(found)}"
    return found[0]


# --- what the code says ----------------------------------------------------------------------------


def settings_sections() -> dict[str, type[BaseSettings]]:
    """Section name -> settings class, from the fields of :class:`Settings` itself."""
    sections: dict[str, type[BaseSettings]] = {}
    for name, field in Settings.model_fields.items():
        cls = field.annotation
        assert isinstance(cls, type) and issubclass(cls, BaseSettings), name
        sections[name] = cls
    return sections


def env_name(cls: type[BaseSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def setting_env_vars() -> set[str]:
    """Every environment variable the settings model reads."""
    return {env_name(cls, f) for cls in settings_sections().values() for f in cls.model_fields}


def secret_env_vars() -> set[str]:
    """Variables whose field is a ``SecretStr``: these must come from a Secret, never a ConfigMap."""
    out: set[str] = set()
    for cls in settings_sections().values():
        for fname, field in cls.model_fields.items():
            if "SecretStr" in str(field.annotation) or field.annotation is SecretStr:
                out.add(env_name(cls, fname))
    return out


def topic_fields() -> list[str]:
    """Fields of ``TopicSettings`` that name a topic (the ones ``TopicSettings.all()`` returns)."""
    cls = settings_sections()["topics"]
    defaults = cls()
    names = set(defaults.all())  # type: ignore[attr-defined]
    return [f for f in cls.model_fields if getattr(defaults, f) in names]


# --- compose -------------------------------------------------------------------------------------

_INTERP_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose variable interpolation with no variables set: ``${X:-d}`` -> ``d``, ``$$`` -> ``$``."""

    def repl(m: re.Match[str]) -> str:
        assert m.group(2) is not None, f"{m.group(0)} has no default: the stack would need a .env file"
        return m.group(2)

    return _INTERP_RE.sub(repl, value.replace("$$", "\0")).replace("\0", "$")


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    data = load_yaml(DEPLOY / name)
    assert isinstance(data, dict)
    return data


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's environment as a dict, interpolated with the defaults."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def worker_services(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Compose services that run ``vitguard worker`` (the image's default command)."""
    return {
        name: svc
        for name, svc in data["services"].items()
        if str(svc.get("image", "")).startswith("vitguard") and "profiles" not in svc
    }


# --- Dockerfile ----------------------------------------------------------------------------------


@dataclass
class Dockerfile:
    text: str

    @property
    def instructions(self) -> list[tuple[str, str]]:
        """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
        joined = re.sub(r"\\\n", " ", self.text)
        out = []
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
        return out

    @property
    def stages(self) -> list[str]:
        return [m.group(1) for i, a in self.instructions if i == "FROM" and (m := re.search(r"\bAS\s+(\S+)", a, re.I))]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for instr, args in self.instructions:
            if instr == "ENV":
                for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S+)", args):
                    out[m.group(1)] = m.group(2).strip('"')
        return out


def dockerfile() -> Dockerfile:
    return Dockerfile((DEPLOY / "Dockerfile").read_text())


# --- PromQL --------------------------------------------------------------------------------------

_METRIC_RE = re.compile(r"\b(vitguard_[a-zA-Z0-9_:]+)\b")
_KAFKA_METRIC_RE = re.compile(r"\b(kafka_[a-zA-Z0-9_:]+)\b")


def promql_vitguard_names(expr: str) -> set[str]:
    return set(_METRIC_RE.findall(expr))


def promql_kafka_names(expr: str) -> set[str]:
    return set(_KAFKA_METRIC_RE.findall(expr))


def dashboard_exprs(path: Path) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every query of a Grafana dashboard, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" in target:
                    yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    data = json.loads(path.read_text())
    yield from walk(data.get("panels", []))
    for var in data.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and var.get("type") == "query":
            yield f"variable {var.get('name')}", query


def alert_rules(groups: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for group in groups:
        yield from group["rules"]
