"""The services a fault test controls: a Redis it can kill and freeze, and an image server whose answers it can slow,
break or make huge.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vitguard.testing.services import LocalService, free_port, start_redis

if TYPE_CHECKING:
    pass


__all__ = ["ImageServer", "RedisControl"]

class RedisControl:
    """A private ``redis-server`` that can be killed, frozen and restarted on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.service: LocalService | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisControl:
        self.service = start_redis(self.port)
        return self

    def kill(self) -> None:
        if self.service is not None and self.service.process.poll() is None:
            self.service.process.kill()
            self.service.process.wait(10)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.service = start_redis(self.port)

    def stop(self) -> None:
        if self.service is not None:
            self.thaw()
            self.service.stop(5)

    def _signal(self, sig: signal.Signals) -> None:
        if self.service is not None and self.service.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.service.process.pid, sig)


class ImageServer:
    """A loopback HTTP server for image references, polite and hostile.

    * ``/img/<name>``: the image at once.
    * ``/slow/<name>``: the image in small pieces over ``slow_s`` seconds (finishes within the deadline).
    * ``/stall/<anything>``: headers with a large ``Content-Length``, then nothing, for ``hold_s`` seconds.
    * ``/trickle/<anything>``: headers, then one byte every ``trickle_every_s`` for ``hold_s`` seconds (no
      read ever times out; only a total deadline ends it).
    """

    def __init__(self, images: Mapping[str, bytes] | None = None, *, slow_s: float = 1.5, hold_s: float = 60.0,
                 trickle_every_s: float = 0.3) -> None:
        self.images: dict[str, bytes] = dict(images or {})
        self.slow_s = slow_s
        self.hold_s = hold_s
        self.trickle_every_s = trickle_every_s
        self.hits: Counter[str] = Counter()
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                return

            def do_GET(self) -> None:  # noqa: N802 - the base class's name
                kind, _, name = self.path.lstrip("/").partition("/")
                server.hits[kind] += 1
                try:
                    server._serve(self, kind, name)
                except (BrokenPipeError, ConnectionResetError):
                    return

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="image-server", daemon=True)

    def url(self, kind: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}/{name}"

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self, h: http.server.BaseHTTPRequestHandler, kind: str, name: str) -> None:
        if kind in ("img", "slow"):
            data = self.images.get(name)
            if data is None:
                h.send_error(404)
                return
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if kind == "img":
                h.wfile.write(data)
                return
            pieces = 10
            step = max(1, len(data) // pieces)
            for i in range(0, len(data), step):
                h.wfile.write(data[i:i + step])
                h.wfile.flush()
                if self._stop.wait(self.slow_s / pieces):
                    return
            return
        if kind in ("stall", "trickle"):
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(10_000_000))
            h.end_headers()
            h.wfile.flush()
            deadline = time.monotonic() + self.hold_s
            while time.monotonic() < deadline:
                if self._stop.wait(self.trickle_every_s if kind == "trickle" else 0.2):
                    return
                if kind == "trickle":
                    h.wfile.write(b"\xff")
                    h.wfile.flush()
            return
        h.send_error(404)
