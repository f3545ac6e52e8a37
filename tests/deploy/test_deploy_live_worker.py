"""The deploy files' runtime contract, checked against a real ``vitguard worker`` process: started with the
compose file's worker environment (only service addresses, topics and the model swapped for the test
session's), it passes the Dockerfile's HEALTHCHECK command, answers the Kubernetes probe paths, serves
``/metrics``, and stops cleanly on SIGTERM within the pod's termination grace period."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from deploy_files import K8S_BASE, compose, dockerfile, k8s_object, service_env, worker_services

from vitguard.testing import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _healthcheck_argv() -> list[str]:
    (args,) = [a for i, a in dockerfile().instructions if i == "HEALTHCHECK"]
    argv = json.loads(re.search(r"\bCMD\s+(\[.*\])\s*$", args).group(1))  # type: ignore[union-attr]
    assert argv[0] == "python", "the image's HEALTHCHECK runs the venv's python"
    return [sys.executable, *argv[1:]]


@pytest.mark.timeout(300)
def test_compose_worker_env_runs_a_worker_that_meets_the_probes(
    kafka_bootstrap: str, redis_url: str, redis_prefix: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    svc = next(iter(worker_services(compose()).values()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITGUARD_")}
    env.update(service_env(svc))
    port = services.free_port()
    env.update({
        "VITGUARD_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "VITGUARD_KAFKA_CONSUMER_GROUP": f"live-{uuid.uuid4().hex[:8]}",
        "VITGUARD_KAFKA_REBALANCE_TIMEOUT_S": "3",
        "VITGUARD_TOPIC_IMAGES": new_topic(partitions=2, prefix="live-in"),
        "VITGUARD_TOPIC_VERDICTS": new_topic(prefix="live-verdicts"),
        "VITGUARD_TOPIC_ALERTS": new_topic(prefix="live-alerts"),
        "VITGUARD_TOPIC_DEAD_LETTERS": new_topic(prefix="live-dlq"),
        "VITGUARD_REDIS_URL": redis_url,
        "VITGUARD_REDIS_KEY_PREFIX": redis_prefix,
        "VITGUARD_MILVUS_URI": str(tmp_path / "milvus.db"),
        "VITGUARD_MODEL_SPEC": "opennsfw",
        "VITGUARD_FETCH_FILE_ROOT": str(tmp_path),
        "VITGUARD_WEB_PORT": str(port),
    })
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "vitguard", "worker"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    container = k8s_object("Deployment", K8S_BASE / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    grace_s = k8s_object("Deployment", K8S_BASE / "deployment.yaml")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    try:
        healthcheck = _healthcheck_argv()
        deadline = time.monotonic() + 180
        while subprocess.run(healthcheck, env=env, capture_output=True, check=False).returncode != 0:
            assert process.poll() is None, f"worker exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"HEALTHCHECK never passed:\n{log_path.read_text()[-3000:]}"
            time.sleep(1)

        def status(path: str) -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310
                return int(resp.status)

        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            deadline = time.monotonic() + 60
            while True:
                try:
                    if status(path) == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"{probe} {path} never answered 200"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
            assert b"vitguard_events_consumed_total" in resp.read()

        process.send_signal(signal.SIGTERM)
        assert process.wait(grace_s) == 0, f"unclean shutdown:\n{log_path.read_text()[-3000:]}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    wrong_port = {**env, "VITGUARD_WEB_PORT": str(services.free_port())}
    assert subprocess.run(healthcheck, env=wrong_port, capture_output=True, check=False).returncode != 0
