"""ImageFetcher over real HTTP: an aiohttp server (and a raw socket server) on 127.0.0.1.

The servers live on loopback, so most tests allow-list 127.0.0.0/8; the guard tests prove that without
the allow-list the same servers are refused, before and after redirects and after DNS resolution.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

from vitguard.errors import FetchError
from vitguard.fetch import ImageFetcher
from vitguard.settings import FetchSettings

LOOPBACK = ("127.0.0.0/8",)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()


@dataclass
class Server:
    base: str
    port: int
    in_flight: int = 0
    max_in_flight: int = 0
    hosts: list[str] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(base="", port=0)

    async def img(request: web.Request) -> web.Response:
        state.hosts.append(request.host)
        return web.Response(body=JPEG, content_type="image/jpeg")

    async def host(request: web.Request) -> web.Response:
        return web.Response(text=request.host)

    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        target = "/img" if n <= 1 else f"/redirect/{n - 1}"
        raise web.HTTPFound(target)

    async def redirect_to(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(int(request.query.get("chunks", "64"))):
            await resp.write(b"\xff" * 16384)
        await resp.write_eof()
        return resp

    async def big_declared(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = 50 * 1024 * 1024
        await resp.prepare(request)
        await resp.write(b"\xff" * 1024)  # far less than announced; the client must not wait for it
        return resp

    async def slow_headers(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=JPEG)

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(600):
            await resp.write(b"\xff")
            await asyncio.sleep(0.05)
        return resp

    async def counted(request: web.Request) -> web.Response:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(0.1)
        finally:
            state.in_flight -= 1
        return web.Response(body=JPEG, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/img", img)
    app.router.add_get("/host", host)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/redirect-to", redirect_to)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big-declared", big_declared)
    app.router.add_get("/slow-headers", slow_headers)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/counted", counted)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    state.port = sockets[0].getsockname()[1]
    state.base = f"http://127.0.0.1:{state.port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[int]:
    """A server that sends 8 MiB whatever it announced: no Content-Length (body until close) or a false one."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        # GET /lying: announces 1000 bytes, then keeps sending; anything else: no length at all
        length = b"Content-Length: 1000\r\n" if request.startswith(b"GET /lying ") else b""
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + length + b"Connection: close\r\n\r\n")
        try:
            for _ in range(128):
                writer.write(b"\xff" * 65536)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


class MapResolver(AbstractResolver):
    """DNS for tests: names map to chosen addresses (the guard judges whatever comes back)."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.names:
            raise OSError(f"no such name {host}")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                          proto=0, flags=socket.AI_NUMERICHOST)
            for a in self.names[host]
        ]

    async def close(self) -> None:
        return None


def _settings(**kw: Any) -> FetchSettings:
    base: dict[str, Any] = {"allowed_networks": LOOPBACK, "connect_timeout_s": 2.0, "read_timeout_s": 5.0}
    base.update(kw)
    return FetchSettings(**base)


async def _reason(fetcher: ImageFetcher, ref: str) -> str:
    with pytest.raises(FetchError) as info:
        await fetcher.fetch(ref)
    return info.value.reason


async def test_fetches_an_image_from_an_allow_listed_server(server: Server) -> None:
    async with ImageFetcher(_settings()) as fetcher:
        got = await fetcher.fetch(f"{server.base}/img")
    assert got.data == JPEG
    assert got.source == "http" and got.redirects == 0 and got.url == f"{server.base}/img"
    assert Image.open(io.BytesIO(got.data)).size == (32, 24)


async def test_loopback_is_blocked_without_the_allow_list(server: Server) -> None:
    resolver = MapResolver({"localhost": ["127.0.0.1"]})
    async with ImageFetcher(_settings(allowed_networks=()), resolver=resolver) as fetcher:
        assert await _reason(fetcher, f"{server.base}/img") == "fetch_blocked"
        assert await _reason(fetcher, f"http://localhost:{server.port}/img") == "fetch_blocked"
        assert await _reason(fetcher, f"http://[::ffff:127.0.0.1]:{server.port}/img") == "fetch_blocked"
        assert await _reason(fetcher, f"http://127.1:{server.port}/img") == "fetch_blocked"
    assert server.hosts == []  # the server never saw a request


async def test_host_name_is_kept_while_the_vetted_address_is_used(server: Server) -> None:
    resolver = MapResolver({"images.example": ["127.0.0.1"]})
    async with ImageFetcher(_settings(), resolver=resolver) as fetcher:
        got = await fetcher.fetch(f"http://images.example:{server.port}/host")
    assert got.data.decode() == f"images.example:{server.port}"
    assert resolver.calls == ["images.example"]


async def test_names_resolving_to_blocked_addresses_are_refused(server: Server) -> None:
    resolver = MapResolver({
        "evil.example": ["127.0.0.1"],
        "meta.example": ["169.254.169.254"],
        "mixed.example": ["127.0.0.1", "10.0.0.7"],
    })
    async with ImageFetcher(_settings(allowed_networks=()), resolver=resolver) as fetcher:
        assert await _reason(fetcher, f"http://evil.example:{server.port}/img") == "fetch_blocked"
        assert await _reason(fetcher, f"http://meta.example:{server.port}/img") == "fetch_blocked"
    # allow-listing loopback still refuses a name that also points into the private network
    async with ImageFetcher(_settings(), resolver=resolver) as fetcher:
        assert await _reason(fetcher, f"http://mixed.example:{server.port}/img") == "fetch_blocked"
        assert await _reason(fetcher, f"http://meta.example:{server.port}/img") == "fetch_blocked"
    assert server.hosts == []


async def test_redirects_are_followed_and_every_hop_is_checked(server: Server) -> None:
    resolver = MapResolver({"internal.example": ["10.1.2.3"], "images.example": ["127.0.0.1"]})
    async with ImageFetcher(_settings(max_redirects=3), resolver=resolver) as fetcher:
        got = await fetcher.fetch(f"{server.base}/redirect/3")
        assert got.data == JPEG and got.redirects == 3 and got.url.endswith("/img")
        hop = f"http://images.example:{server.port}/img"
        assert (await fetcher.fetch(f"{server.base}/redirect-to?to={hop}")).data == JPEG
        for target in ["http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data/",
                       "http://internal.example/x", "http://[fd00:ec2::254]/", "file:///etc/passwd"]:
            assert await _reason(fetcher, f"{server.base}/redirect-to?to={target}") == "fetch_blocked", target


async def test_redirect_limit(server: Server) -> None:
    async with ImageFetcher(_settings(max_redirects=2)) as fetcher:
        assert (await fetcher.fetch(f"{server.base}/redirect/2")).redirects == 2
        assert await _reason(fetcher, f"{server.base}/redirect/3") == "too_many_redirects"
    async with ImageFetcher(_settings(max_redirects=0)) as fetcher:
        assert await _reason(fetcher, f"{server.base}/redirect/1") == "too_many_redirects"


async def test_status_codes_map_to_reasons(server: Server) -> None:
    async with ImageFetcher(_settings()) as fetcher:
        assert await _reason(fetcher, f"{server.base}/status/404") == "fetch_not_found"
        assert await _reason(fetcher, f"{server.base}/status/410") == "fetch_not_found"
        assert await _reason(fetcher, f"{server.base}/status/500") == "fetch_failed"
        assert await _reason(fetcher, f"{server.base}/status/403") == "fetch_failed"
        assert await _reason(fetcher, f"{server.base}/nowhere") == "fetch_not_found"


async def test_byte_limit_on_announced_length(server: Server) -> None:
    async with ImageFetcher(_settings(max_bytes=1 << 20)) as fetcher:
        assert await _reason(fetcher, f"{server.base}/big-declared") == "fetch_too_large"


async def test_byte_limit_enforced_while_streaming_chunked_body(server: Server) -> None:
    # 64 chunks of 16 KiB = 1 MiB without a Content-Length
    async with ImageFetcher(_settings(max_bytes=256 * 1024)) as fetcher:
        assert await _reason(fetcher, f"{server.base}/chunked?chunks=64") == "fetch_too_large"
        small = await fetcher.fetch(f"{server.base}/chunked?chunks=4")
        assert len(small.data) == 4 * 16384


async def test_byte_limit_enforced_on_body_delimited_by_close(raw_server: int) -> None:
    async with ImageFetcher(_settings(max_bytes=512 * 1024)) as fetcher:
        assert await _reason(fetcher, f"http://127.0.0.1:{raw_server}/x") == "fetch_too_large"


async def test_body_beyond_a_false_content_length_is_never_returned(raw_server: int) -> None:
    async with ImageFetcher(_settings(max_bytes=512 * 1024)) as fetcher:
        try:
            got = await fetcher.fetch(f"http://127.0.0.1:{raw_server}/lying")
        except FetchError as exc:  # aiohttp >= 3.12 refuses data after the announced body outright
            assert exc.reason == "fetch_failed"
            assert len(str(exc)) < 400  # the peer's bytes are not copied into the dead letter
        else:
            assert got.data == b"\xff" * 1000


async def test_timeouts(server: Server) -> None:
    async with ImageFetcher(_settings(read_timeout_s=0.3, connect_timeout_s=0.3)) as fetcher:
        assert await _reason(fetcher, f"{server.base}/slow-headers") == "fetch_timeout"
        # one byte every 50 ms never trips a per-read timeout; the whole-fetch deadline catches it
        assert await _reason(fetcher, f"{server.base}/trickle") == "fetch_timeout"


async def test_connection_refused_is_fetch_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        async with ImageFetcher(_settings()) as fetcher:
            assert await _reason(fetcher, f"http://127.0.0.1:{port}/img") == "fetch_failed"


async def test_unresolvable_name_is_fetch_failed() -> None:
    async with ImageFetcher(_settings(), resolver=MapResolver({})) as fetcher:
        assert await _reason(fetcher, "http://no-such-host.example/img") == "fetch_failed"


async def test_concurrency_is_bounded(server: Server) -> None:
    async with ImageFetcher(_settings(concurrency=2)) as fetcher:
        results = await asyncio.gather(*(fetcher.fetch(f"{server.base}/counted") for _ in range(6)))
    assert all(r.data == JPEG for r in results)
    assert server.max_in_flight == 2


async def test_requests_cannot_take_the_streams_fetch_slots(server: Server) -> None:
    """``POST /classify`` callers holding slow fetches open used to fill the one set of slots: the stream's
    events waited out their fetch deadline for one and were dead-lettered unmoderated."""
    async with ImageFetcher(_settings(concurrency=2, read_timeout_s=30.0)) as fetcher:
        held = [asyncio.ensure_future(fetcher.fetch(f"{server.base}/slow-headers", lane="request"))
                for _ in range(4)]
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        got = await asyncio.wait_for(fetcher.fetch(f"{server.base}/img"), 5)
        assert got.data == JPEG and time.perf_counter() - started < 2
        assert not any(h.done() for h in held)
        for h in held:
            h.cancel()
        await asyncio.gather(*held, return_exceptions=True)


async def test_closed_fetcher_refuses_work(server: Server) -> None:
    fetcher = ImageFetcher(_settings())
    await fetcher.fetch(f"{server.base}/img")
    await fetcher.close()
    with pytest.raises(RuntimeError):
        await fetcher.fetch(f"{server.base}/img")
