"""deploy/ agrees with the code: every file parses, every VITGUARD_* variable is a real setting with a
valid value, topics, ports and credentials line up between compose, Kubernetes and the settings model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import (
    DEPLOY,
    ENV_VAR_RE,
    K8S,
    K8S_BASE,
    NON_SETTING_PREFIXES,
    REPO,
    compose,
    dockerfile,
    json_files,
    k8s_object,
    k8s_objects,
    load_yaml,
    load_yaml_docs,
    secret_env_vars,
    service_env,
    setting_env_vars,
    settings_sections,
    topic_fields,
    worker_services,
    yaml_files,
)

from vitguard.errors import ConfigError
from vitguard.settings import Settings, load_settings

CONFIGMAP = K8S_BASE / "configmap.yaml"
DEPLOYMENT = K8S_BASE / "deployment.yaml"


def _load_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Build the settings exactly as a worker would with ``env`` as its whole VITGUARD_* environment."""
    import os

    for key in list(os.environ):
        if key.startswith("VITGUARD_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("VITGUARD_"):
            monkeypatch.setenv(key, value)
    try:
        return load_settings()
    except ConfigError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"deploy/ sets a value the worker rejects: {exc}")


def _configmap_env() -> dict[str, str]:
    return {k: str(v) for k, v in k8s_object("ConfigMap", CONFIGMAP)["data"].items()}


def _worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


# --- every file parses ---------------------------------------------------------------------------


def test_deploy_has_the_files_users_need() -> None:
    for rel in [
        "Dockerfile",
        "docker-compose.yml",
        "docker-compose.gpu.yml",
        "README.md",
        "OPERATING.md",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/dashboards/vitguard.json",
        "k8s/kustomization.yaml",
        "k8s/base/kustomization.yaml",
        "k8s/gpu/kustomization.yaml",
    ]:
        assert (DEPLOY / rel).is_file(), rel
    assert (REPO / ".dockerignore").is_file()


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = load_yaml_docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"


@pytest.mark.parametrize("path", json_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


# --- settings ------------------------------------------------------------------------------------


def test_every_vitguard_variable_mentioned_in_deploy_is_a_setting() -> None:
    known = setting_env_vars()
    assert "VITGUARD_KAFKA_BOOTSTRAP_SERVERS" in known  # the derivation itself works
    unknown: dict[str, set[str]] = {}
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for name in ENV_VAR_RE.findall(path.read_text(errors="replace")):
            if name not in known and not name.startswith(NON_SETTING_PREFIXES):
                unknown.setdefault(str(path.relative_to(REPO)), set()).add(name)
    assert not unknown, f"variables that no settings class reads: {unknown}"


def test_compose_worker_environment_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = worker_services(compose())
    assert len(workers) >= 2, "the stack runs two workers"
    for name, svc in workers.items():
        env = service_env(svc)
        settings = _load_with_env(monkeypatch, env)
        assert settings.milvus.uri.startswith("http://"), f"{name}: compose workers share a Milvus server"
        assert "kafka:" in settings.kafka.bootstrap_servers
    groups = {service_env(svc)["VITGUARD_KAFKA_CONSUMER_GROUP"] for svc in workers.values()}
    assert len(groups) == 1, "all compose workers must be in one consumer group"


def test_compose_gpu_override_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    base = compose()
    gpu = compose("docker-compose.gpu.yml")
    assert set(gpu["services"]) == set(worker_services(base))
    for name, svc in gpu["services"].items():
        env = {**service_env(base["services"][name]), **service_env(svc)}
        settings = _load_with_env(monkeypatch, env)
        assert settings.model.device == "cuda"
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices)
        assert svc["build"]["target"] in dockerfile().stages


def test_dockerfile_env_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_with_env(monkeypatch, dockerfile().env())
    assert settings.web.port == settings_sections()["web"]().port  # type: ignore[attr-defined]


def test_k8s_configmap_and_secret_values_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = k8s_object("Secret", K8S_BASE / "secret.example.yaml")["stringData"]
    env = {**_configmap_env(), **{k: str(v) for k, v in secret.items()}}
    _load_with_env(monkeypatch, env)
    assert not (secret_env_vars() & set(_configmap_env())), "credentials belong in the Secret"


def test_k8s_gpu_patch_env_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    patch = k8s_object("Deployment", K8S / "gpu" / "deployment-gpu.yaml")
    container = _worker_container(patch)
    env = {**_configmap_env(), **{e["name"]: str(e["value"]) for e in container["env"] if "value" in e}}
    settings = _load_with_env(monkeypatch, env)
    assert settings.model.device == "cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert patch["spec"]["template"]["spec"]["nodeSelector"], "GPU pods must land on GPU nodes"


def test_every_secret_setting_comes_from_a_secret_ref() -> None:
    container = _worker_container(k8s_object("Deployment", DEPLOYMENT))
    secret = k8s_object("Secret", K8S_BASE / "secret.example.yaml")
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    secrets = secret_env_vars()
    assert secrets, "the settings model has SecretStr fields"
    missing = secrets - set(refs)
    assert not missing, f"secret settings the Deployment does not wire from a Secret: {missing}"
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"], f"{name}: key {ref['key']} missing in secret.example.yaml"
    configmap_refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert configmap_refs == [k8s_object("ConfigMap", CONFIGMAP)["metadata"]["name"]]


def test_configmap_covers_the_settings_that_matter() -> None:
    """Every section is configured, and the connection settings are never left to defaults."""
    data = _configmap_env()
    sections = settings_sections()
    for name, cls in sections.items():
        prefix = str(cls.model_config.get("env_prefix"))
        assert any(k.startswith(prefix) for k in data), f"ConfigMap sets nothing for settings section {name}"
    for must in ("VITGUARD_KAFKA_BOOTSTRAP_SERVERS", "VITGUARD_KAFKA_CONSUMER_GROUP", "VITGUARD_REDIS_URL",
                 "VITGUARD_MILVUS_URI", "VITGUARD_MODEL_SPEC", "VITGUARD_WEB_PORT"):
        assert must in data, must


# --- topics --------------------------------------------------------------------------------------


def _compose_topic_specs() -> dict[str, tuple[int, int]]:
    svc = compose()["services"]["create-topics"]
    specs = service_env(svc)["TOPIC_SPECS"].split()
    out = {}
    for spec in specs:
        name, partitions, retention = spec.split(":")
        out[name] = (int(partitions), int(retention))
    return out


def test_compose_creates_every_topic_the_workers_use(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = _compose_topic_specs()
    for svc in worker_services(compose()).values():
        settings = _load_with_env(monkeypatch, service_env(svc))
        assert set(settings.topics.all()) == set(specs), "create-topics and the workers disagree on topics"
        partitions, retention = specs[settings.topics.images]
        assert partitions == settings.topics.partitions, "VITGUARD_TOPIC_PARTITIONS should state the input's"
        assert partitions >= len(worker_services(compose())), "fewer partitions than workers leaves some idle"
        assert retention >= 24 * 3600 * 1000, "the input topic must keep at least a day for replays"
    assert compose()["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_k8s_topics_job_creates_the_configmap_topics() -> None:
    job = k8s_object("Job", K8S_BASE / "topics-job.yaml")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["vitguard-config"]
    script = "\n".join(container["args"])
    topics_cls = settings_sections()["topics"]
    for field in topic_fields():
        var = f"{topics_cls.model_config['env_prefix']}{field}".upper()
        assert f"${var}" in script, f"topics job does not create the topic named by {var}"
    assert "$VITGUARD_TOPIC_IMAGES:$VITGUARD_TOPIC_PARTITIONS:" in script


def _keda_triggers(path: Path) -> list[dict[str, Any]]:
    return k8s_object("ScaledObject", path)["spec"]["triggers"]


@pytest.mark.parametrize("path", [K8S_BASE / "keda-scaledobject.yaml", K8S / "gpu" / "scaledobject-gpu.yaml"],
                         ids=["base", "gpu-overlay"])
def test_keda_scales_on_the_workers_group_and_input_topic(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    settings = _load_with_env(monkeypatch, _configmap_env())
    (trigger,) = _keda_triggers(path)
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == settings.topics.images
    assert meta["consumerGroup"] == settings.kafka.consumer_group
    assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0


def test_keda_replicas_are_capped_at_the_partition_count(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_with_env(monkeypatch, _configmap_env())
    spec = k8s_object("ScaledObject", K8S_BASE / "keda-scaledobject.yaml")["spec"]
    assert spec["maxReplicaCount"] == settings.topics.partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    deployment = k8s_object("Deployment", DEPLOYMENT)
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count; a re-apply must not reset it"


# --- ports and probes ----------------------------------------------------------------------------


def _web_default_port() -> int:
    return int(settings_sections()["web"]().port)  # type: ignore[attr-defined]


def test_dockerfile_exposes_the_web_port_and_checks_livez() -> None:
    df = dockerfile()
    port = _web_default_port()
    exposes = [a for i, a in df.instructions if i == "EXPOSE"]
    assert exposes == [str(port)]
    healthchecks = [a for i, a in df.instructions if i == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/livez" in healthchecks[0], "the image's health is liveness"
    users = [a for i, a in df.instructions if i == "USER"]
    assert users and all(not u.startswith(("root", "0")) for u in users), "the image must not run as root"
    assert {"cpu", "cuda"} <= set(df.stages)
    assert df.stages[-1] == "cpu", "the default target is the CPU image"


def test_dockerignore_lets_the_dockerfile_copies_through() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    included = {ln[1:] for ln in lines if ln.startswith("!")}
    for instr, args in dockerfile().instructions:
        if instr == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                assert src.rstrip("/") in included, f"COPY {src} is excluded by .dockerignore"


def test_compose_ports_and_scrape_targets_match_the_web_port(monkeypatch: pytest.MonkeyPatch) -> None:
    data = compose()
    workers = worker_services(data)
    scrape = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "vitguard")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    for name, svc in workers.items():
        port = _load_with_env(monkeypatch, service_env(svc)).web.port
        assert any(str(p).endswith(f":{port}") for p in svc["ports"]), f"{name} does not publish {port}"
        assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}:{port}"
        check = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/livez" in check, f"{name}'s healthcheck is not liveness on its web port"
    assert job["metrics_path"] == "/metrics"
    rules = scrape["rule_files"]
    mounted = {v.split(":")[1] for v in data["services"]["prometheus"]["volumes"] if v.startswith("./")}
    assert set(rules) <= mounted, "Prometheus loads a rule file the compose file does not mount"


def test_compose_bind_mounts_exist() -> None:
    for name, svc in compose()["services"].items():
        for vol in svc.get("volumes", []):
            from deploy_files import interpolate

            src = interpolate(vol).split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts {src}, which is not in deploy/"
        build = svc.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_k8s_ports_probes_and_selectors_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_with_env(monkeypatch, _configmap_env())
    deployment = k8s_object("Deployment", DEPLOYMENT)
    pod = deployment["spec"]["template"]
    container = _worker_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.web.port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(settings.web.port)
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")]:
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind, file in [("Service", "service.yaml"), ("PodDisruptionBudget", "pdb.yaml"),
                       ("ServiceMonitor", "servicemonitor.yaml")]:
        obj = k8s_object(kind, K8S_BASE / file)
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), f"{kind} selects no worker pod"
    service = k8s_object("Service", K8S_BASE / "service.yaml")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    monitor = k8s_object("ServiceMonitor", K8S_BASE / "servicemonitor.yaml")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


def test_k8s_objects_are_complete_and_in_the_kustomization() -> None:
    base = load_yaml(K8S_BASE / "kustomization.yaml")
    listed = set(base["resources"])
    for path, obj in k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= set(obj), path
        assert obj["metadata"].get("name"), path
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == base["namespace"], path
        if path.parent == K8S_BASE and not path.name.endswith(".example.yaml"):
            assert path.name in listed, f"{path.name} is not applied by base/kustomization.yaml"
    for rel in listed:
        assert (K8S_BASE / rel).is_file(), rel
    assert load_yaml(K8S / "kustomization.yaml")["resources"] == ["base"]
    gpu = load_yaml(K8S / "gpu" / "kustomization.yaml")
    assert gpu["resources"] == ["../base"]
    for patch in gpu["patches"]:
        assert (K8S / "gpu" / patch["path"]).is_file()


def test_one_grace_period_in_settings_manifests_and_compose() -> None:
    """Issue 30: the docs said 25 s within Kubernetes' 30 s, the manifests 50 s within 60 s. The worker's own stop
    (the settings' default, overridden nowhere) ends inside every orchestrator's grace period, with a margin."""
    from vitguard.settings import WorkerSettings

    stop_s = WorkerSettings.model_fields["shutdown_timeout_s"].default
    grace_k8s = k8s_object("Deployment", K8S / "base" / "deployment.yaml")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    graces = {name: s.get("stop_grace_period") for name, s in compose.get("services", {}).items()}
    graces |= {name: a.get("stop_grace_period") for name, a in compose.items()
               if name.startswith("x-") and isinstance(a, dict)}
    grace_compose = {int(str(g).removesuffix("s")) for g in graces.values() if g}
    assert grace_compose == {grace_k8s} == {30}
    assert stop_s + 3 <= grace_k8s
    env = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["x-worker-env"]
    assert "VITGUARD_WORKER_SHUTDOWN_TIMEOUT_S" not in env
    assert "VITGUARD_WORKER_SHUTDOWN_TIMEOUT_S" not in k8s_object("ConfigMap", CONFIGMAP)["data"]
    assert "VITGUARD_WORKER_SHUTDOWN_TIMEOUT_S=" not in (DEPLOY / "Dockerfile").read_text()
