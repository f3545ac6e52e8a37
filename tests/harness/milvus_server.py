"""A real Milvus standalone server as a local process, for integration and fault tests.

The ``milvus`` package (``pip install milvus==2.3.5``, "embedded Milvus") ships the Milvus standalone
binary. :class:`MilvusServerProcess` uses the package only to write the server's config file and unpack
the binary into the data directory, then runs the binary itself, in its own process group, so a test
can signal the process that really serves the port: :meth:`~MilvusServerProcess.freeze` (SIGSTOP) makes
a hung server, :meth:`~MilvusServerProcess.kill` (SIGKILL) a crashed one, and
:meth:`~MilvusServerProcess.restart` brings it back on the same data directory and the same ports.

Milvus Lite (a ``*.db`` path) is the embedded default of vitguard; this server is what a deployment
talks to over gRPC (``http://host:port``), with binary vectors, authentication and real network failures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from vitguard.errors import ServiceUnavailableError, VitguardError
from vitguard.testing.services import free_port

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT_S",
    "DEFAULT_STOP_TIMEOUT_S",
    "MilvusNotInstalledError",
    "MilvusServerProcess",
    "ROOT_TOKEN",
    "START_ATTEMPTS",
]

DEFAULT_STARTUP_TIMEOUT_S = 120.0
"""Measured ~10 s on a quiet 2-core machine; the margin is for a busy one (a test run, a build)."""

DEFAULT_STOP_TIMEOUT_S = 10.0
"""How long :meth:`MilvusServerProcess.stop` waits after SIGTERM before SIGKILL: Milvus can ignore
SIGTERM for more than 8 s while it shuts its components down one by one."""

START_ATTEMPTS = 3
"""How many times :meth:`MilvusServerProcess.start` draws fresh ports when the server could not bind one."""

_ADDRESS_IN_USE = "address already in use"

_LOG_FILES = ("milvus-stdout.log", "milvus-stderr.log")
"""The server's stdout and stderr, under :attr:`MilvusServerProcess.log_dir`."""

ROOT_TOKEN = "root:Milvus"  # noqa: S105 - the documented default of every Milvus install
"""The token of Milvus's built-in root user, for a server started with ``authorization=True``."""


class MilvusNotInstalledError(VitguardError):
    """The ``milvus`` package (the embedded server) is not installed."""


class _NotReadyError(ServiceUnavailableError):
    """The server process runs but did not answer in time. Milvus 2.3.5 standalone now and then hangs while
    starting (its proxy waits on a component forever: "get IndexNode components states" in its log, seen on
    a loaded 2-core machine); a new process on fresh state starts normally."""


class _PortTakenError(ServiceUnavailableError):
    """A port drawn for the server was bound by another process before the server could bind it."""


class MilvusServerProcess:
    """One Milvus standalone server on 127.0.0.1 with its own data directory and free ports.

    Args:
        data_dir: where the server keeps its config, logs and data; reused by :meth:`restart`.
        binaries_dir: where the server binary and its libraries (~250 MB) are unpacked, under ``bin/``;
            several servers of one test session can share it. Default: ``data_dir``.
        port: the gRPC port clients use; a free one when omitted.
        authorization: require a token (the built-in root user is :data:`ROOT_TOKEN`).
        startup_timeout_s: how long :meth:`start` and :meth:`restart` wait for the server to answer.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        binaries_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        authorization: bool = False,
        startup_timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binaries_dir = Path(binaries_dir).resolve() if binaries_dir is not None else self.data_dir
        self._port_given = port is not None
        self.port = port or free_port()
        self.authorization = authorization
        self.startup_timeout_s = startup_timeout_s
        self.metrics_port = 0
        self.ports: dict[str, int] = {}
        """Every port of the server by its ``milvus`` package name (``proxy_internal_port``, ...)."""
        self._process: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []
        self._env: dict[str, str] = {}

    # -- addresses --------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """What :class:`~vitguard.settings.MilvusSettings` ``uri`` takes: ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str | None:
        """The root token when the server requires one, else None."""
        return ROOT_TOKEN if self.authorization else None

    @property
    def pid(self) -> int | None:
        """Process id of the server (the process that listens on :attr:`port`), None when not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the server process exists (a frozen one included)."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stdout and stderr logs, for failure messages."""
        parts = []
        for name in _LOG_FILES:
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}\n" + (self.log_dir / name).read_text(errors="replace")[-chars:])
        return "\n".join(parts)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> MilvusServerProcess:
        """Write the config, unpack the binary, start the server and wait until it answers.

        A server that could not bind one of its ports (taken between the draw and the bind), or that hung while
        starting (:class:`_NotReadyError`), is started again (on fresh ports; on fresh state when it had none),
        up to :data:`START_ATTEMPTS` times in all.

        Raises:
            MilvusNotInstalledError: the ``milvus`` package is missing.
            ServiceUnavailableError: the server exited or did not answer within ``startup_timeout_s``.
        """
        if self.running:
            raise RuntimeError("the Milvus server is already running")
        state_dir = self.data_dir / "data"
        fresh = not state_dir.exists()
        for attempt in range(1, START_ATTEMPTS + 1):
            if fresh:  # what a failed attempt left (etcd's member list names its ports) goes
                shutil.rmtree(state_dir, ignore_errors=True)
            for name in _LOG_FILES:  # this attempt's logs only
                (self.log_dir / name).unlink(missing_ok=True)
            try:
                self._prepare()
                self._spawn()
            except ServiceUnavailableError as exc:
                # a port that was free when drawn and taken before the server bound it: draw new ones
                taken = isinstance(exc, _PortTakenError) or _ADDRESS_IN_USE in self.log_tail(chars=1_000_000)
                if attempt == START_ATTEMPTS or not (taken or isinstance(exc, _NotReadyError)):
                    raise
                if not self._port_given:
                    self.port = free_port()
                continue
            break
        return self

    def restart(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the server if it runs, then start it again on the same data directory and ports."""
        if not self._argv:
            raise RuntimeError("restart() needs a server that was started once")
        self.stop(timeout_s)
        self._spawn()

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if the server has not exited after ``timeout_s``. Keeps the data."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash (no flush, no clean shutdown)."""
        if self._process is not None:
            self._signal(signal.SIGKILL)
            self._process.wait()
            self._reap()

    def freeze(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing, like a hung machine. Returns once every
        thread of it is stopped: the signal is delivered asynchronously, and a thread running on another core
        answered one more call after ``kill`` had returned (a fault test saw an upsert succeed "while frozen")."""
        self._signal(signal.SIGSTOP)
        process = self._process
        if process is None:
            return
        deadline = time.monotonic() + timeout_s
        while not _all_threads_stopped(process.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def thaw(self) -> None:
        """SIGCONT: a frozen server carries on where it stopped."""
        self._signal(signal.SIGCONT)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the health endpoint says OK and a gRPC call succeeds.

        Raises:
            ServiceUnavailableError: the process exited, or did not answer within the timeout.
        """
        timeout_s = self.startup_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise ServiceUnavailableError(f"Milvus server on port {self.port} exited:\n{self.log_tail()}")
            try:
                if self._healthy() and self._answers():
                    return
            except Exception as exc:  # any failure means "not yet"
                last = exc
            time.sleep(0.25)
        raise _NotReadyError(
            f"Milvus server on port {self.port} not ready after {timeout_s:.0f}s (last error: {last}):\n"
            f"{self.log_tail()}"
        )

    def __enter__(self) -> MilvusServerProcess:
        return self.start() if not self.running else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------

    def _prepare(self) -> None:
        try:
            import milvus
        except ImportError as exc:
            raise MilvusNotInstalledError(
                "the embedded Milvus server is not installed: pip install milvus==2.3.5"
            ) from exc
        config = milvus.MilvusServerConfig(data_dir=str(self.data_dir))
        # Every port explicit: the package otherwise counts up from Milvus's default ports (2379, 19530, ...),
        # which collide with a second server on the machine; explicit ones are bound strictly.
        ports: dict[str, Any] = {k: free_port() for k in config.configurable_items if k.endswith("_port")}
        ports["proxy_port"] = self.port
        config.update(**ports)
        self.ports = ports
        config.set("authorization_enabled", self.authorization)
        try:
            config.resolve()  # binds each port once to check it, then writes configs/milvus.yaml
        except RuntimeError as exc:  # "set proxy_port=..., but bind failed"
            raise _PortTakenError(f"a port drawn for the Milvus server was taken: {exc}") from exc
        # The embedded etcd is not in the package's template: by default it binds 2379 and 2380, and a second
        # server on the machine fails. Milvus reads etcd.config.path from the environment (ETCD_CONFIG_PATH).
        etcd_config = self.data_dir / "configs" / "etcd.yaml"
        client_url, peer_url = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
        etcd_config.write_text(
            f"name: default\nlisten-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
            f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
            f"initial-cluster: default={peer_url}\n",
            encoding="utf-8",
        )
        # unpacks bin/milvus and its libraries (skipped when their checksums match what is there)
        milvus._initialize_data_files(str(self.binaries_dir))
        self.metrics_port = free_port()
        binary = self.binaries_dir / "bin" / "milvus"
        env = dict(os.environ)
        env.update(
            MILVUSCONF=str(self.data_dir / "configs"),
            ETCD_CONFIG_PATH=str(etcd_config),
            DEPLOY_MODE="STANDALONE",
            METRICS_PORT=str(self.metrics_port),
            MILVUS_RUN_DIR=str(self.data_dir / "run"),
            LD_LIBRARY_PATH=":".join(p for p in (str(binary.parent), os.environ.get("LD_LIBRARY_PATH", "")) if p),
        )
        self._argv = [str(binary), "run", "standalone"]
        self._env = env

    def _spawn(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (
            (self.log_dir / _LOG_FILES[0]).open("ab") as out,
            (self.log_dir / _LOG_FILES[1]).open("ab") as err,
        ):
            # its own session: a signal to the group reaches any helper process it may start, and a
            # Ctrl-C in the test runner does not reach the server behind the fixtures' back
            self._process = subprocess.Popen(  # noqa: S603 - our own unpacked binary, fixed arguments
                self._argv, cwd=self.data_dir, env=self._env, stdout=out, stderr=err, start_new_session=True
            )
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise

    def _signal(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback http, fixed URL
            return b"OK" in resp.read()

    def _answers(self) -> bool:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, token=self.token or "", timeout=3, dedicated=True)
        try:
            client.list_collections(timeout=3)
        finally:
            client.close()
        return True


def _all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in state T (stopped); True when the process is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rpartition(")")[2].split()[0] not in ("T", "t"):
            return False
    return True
