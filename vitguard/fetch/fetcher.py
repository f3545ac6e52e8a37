"""Getting image bytes for an event: http(s) with an SSRF guard, ``file://`` under a root, inline ``data:``.

Every reference is untrusted input. Limits apply before memory is spent: the Content-Length header is
checked before the body is read, the body is counted while it streams, and inline payloads are measured
before they are decoded. Each failure is a :class:`~vitguard.errors.FetchError` whose ``reason`` goes into
the dead-letter event.

Redirects are followed by hand (aiohttp's own following is off) so every hop is validated again: scheme,
host literal and, through :class:`~vitguard.fetch.resolver.GuardedResolver`, every resolved address.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from vitguard.errors import FetchError
from vitguard.fetch.guard import AddressPolicy, literal_ip, redirect_target, validate_http_url
from vitguard.fetch.local import decode_data_url, read_file_url
from vitguard.fetch.resolver import BlockedAddressError, GuardedResolver
from vitguard.settings import FetchSettings

__all__ = ["REDIRECT_STATUSES", "FetchResult", "FetchSource", "ImageFetcher", "Lane", "is_local"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_NOT_FOUND_STATUSES = frozenset({404, 410})
_CHUNK_BYTES = 64 * 1024

FetchSource = Literal["http", "file", "data"]
Lane = Literal["stream", "request"]
"""Whose fetch it is: the stream's events, or ``POST /classify`` requests (each has its own concurrency)."""


@dataclass(frozen=True)
class FetchResult:
    """The bytes of one image and where the time went."""

    data: bytes
    elapsed_ms: float
    """Wall time of the fetch, waiting for a concurrency slot excluded."""
    source: FetchSource
    """Kind of reference: ``http`` (http and https), ``file`` or ``data`` (inline); a metrics label."""
    url: str = ""
    """For http: the URL the bytes finally came from (after redirects); empty otherwise."""
    redirects: int = 0
    """Redirects followed (http only)."""
    sha256: str | None = None
    """The bytes' SHA-256 (hex) where the fetch computed it on its own thread (``file``); else None."""


def is_local(ref: str) -> bool:
    """True for a reference read without the network (``data:`` and ``file:``): what
    :meth:`ImageFetcher.fetch_local` reads many of in one thread hop."""
    return ref[:5].lower() in ("data:", "file:")


class ImageFetcher:
    """Fetches image references with the limits of :class:`~vitguard.settings.FetchSettings`.

    Use it as an async context manager (or call :meth:`close`); the HTTP session is created on first use
    inside the running event loop. At most ``settings.concurrency`` fetches of each lane run at once; the
    others wait. The stream and ``POST /classify`` requests have a lane each (``lane="request"``), so callers
    of the HTTP API holding slow fetches open cannot take the stream's slots (its events would wait out
    their fetch deadline for a slot: dead letters, unmoderated uploads).

    Args:
        settings: timeouts, size limits, redirect limit, file root, SSRF allow-list, concurrency.
        resolver: the DNS resolver under the SSRF guard (default: getaddrinfo in a thread). Tests inject
            one that maps names to chosen addresses; the guard applies to whatever it returns.
    """

    def __init__(self, settings: FetchSettings, *, resolver: AbstractResolver | None = None) -> None:
        self._settings = settings
        self._policy = AddressPolicy.from_cidrs(settings.allowed_networks)
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._slots = {lane: asyncio.Semaphore(settings.concurrency) for lane in get_args(Lane)}
        self._closed = False

    @property
    def settings(self) -> FetchSettings:
        return self._settings

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session and its connections; the fetcher cannot be used afterwards."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def fetch(self, ref: str, *, lane: Lane = "stream") -> FetchResult:
        """Fetch the bytes ``ref`` points to, in ``lane``'s share of the concurrency.

        Raises:
            FetchError: with one of the reason codes ``unsupported_reference``, ``fetch_blocked``,
                ``fetch_timeout``, ``fetch_too_large``, ``fetch_not_found``, ``fetch_failed``,
                ``too_many_redirects``, ``file_outside_root``, ``inline_too_large``, ``invalid_base64``.
        """
        if self._closed:
            raise RuntimeError("ImageFetcher is closed")
        scheme = ref.split(":", 1)[0].lower() if ":" in ref else ""
        if scheme == "data":  # decoded (and hashed) on the loop: the payload is already in memory
            return self._read_local_ref(ref)
        if scheme == "file":
            async with self._slots[lane]:
                # read and hash in one thread hop: the event loop never touches the bytes
                return await asyncio.to_thread(self._read_local_ref, ref)
        if scheme in ("http", "https"):
            url = validate_http_url(ref)
            async with self._slots[lane]:
                start = time.perf_counter()
                data, final, redirects = await self._fetch_http(url)
                return FetchResult(data, _ms_since(start), "http", url=str(final), redirects=redirects)
        raise FetchError("unsupported_reference", f"unsupported reference scheme {scheme or ref[:16]!r}")

    async def fetch_local(self, refs: Sequence[str]) -> list[FetchResult | FetchError]:
        """Read many local references (:func:`is_local`) in one thread hop, each hashed on that thread; each
        reference's own failure is its :class:`~vitguard.errors.FetchError` in the list, in order.

        For the stream's batches: one hop and one event-loop wake-up for a batch instead of one per image. The
        caller bounds the whole call with its own deadline (a file system that hangs holds the batch).
        """
        if self._closed:
            raise RuntimeError("ImageFetcher is closed")
        async with self._slots["stream"]:
            return await asyncio.to_thread(self._read_local, list(refs))

    def _read_local(self, refs: list[str]) -> list[FetchResult | FetchError]:
        out: list[FetchResult | FetchError] = []
        for ref in refs:
            try:
                out.append(self._read_local_ref(ref))
            except FetchError as exc:
                out.append(exc)
        return out

    def _read_local_ref(self, ref: str) -> FetchResult:
        """One ``data:`` or ``file:`` reference, read (blocking for a file) and hashed."""
        start = time.perf_counter()
        kind = ref[:5].lower()
        if kind == "data:":
            data = decode_data_url(ref, self._settings.max_inline_bytes)
            return FetchResult(data, _ms_since(start), "data", sha256=hashlib.sha256(data).hexdigest())
        if kind == "file:":
            data, sha = _read_and_hash(ref, self._settings.file_root, self._settings.max_bytes)
            return FetchResult(data, _ms_since(start), "file", sha256=sha)
        raise FetchError("unsupported_reference", f"not a local reference: {ref[:16]!r}")

    # -- http -------------------------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            s = self._settings
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._policy, self._inner_resolver),
                limit=s.concurrency * len(self._slots),  # every lane's slots
                ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=s.connect_timeout_s, sock_connect=s.connect_timeout_s,
                    sock_read=s.read_timeout_s,
                ),
                headers={"User-Agent": s.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"},
                auto_decompress=False,  # no gzip bombs: the byte limit counts what is on the wire
                trust_env=False,  # never route through a proxy picked up from the environment
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _fetch_http(self, url: URL) -> tuple[bytes, URL, int]:
        s = self._settings
        deadline = s.connect_timeout_s + s.read_timeout_s
        try:
            async with asyncio.timeout(deadline):
                return await self._follow(url)
        except TimeoutError as exc:
            raise FetchError("fetch_timeout", f"{url.host}: no complete response within {deadline:g} s") from exc

    async def _follow(self, url: URL) -> tuple[bytes, URL, int]:
        session = self._get_session()
        redirects = 0
        while True:
            host = url.raw_host or ""
            ip = literal_ip(host)
            if ip is not None:  # aiohttp skips the resolver for IP literals: check them here
                self._policy.check(ip, host=host)
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status in REDIRECT_STATUSES:
                        redirects += 1
                        if redirects > self._settings.max_redirects:
                            raise FetchError(
                                "too_many_redirects", f"more than {self._settings.max_redirects} redirects"
                            )
                        url = redirect_target(url, resp.headers.get("Location"))
                        continue
                    if resp.status in _NOT_FOUND_STATUSES:
                        raise FetchError("fetch_not_found", f"HTTP {resp.status} from {url.host}")
                    if not 200 <= resp.status < 300:
                        raise FetchError("fetch_failed", f"HTTP {resp.status} from {url.host}")
                    return await self._read_body(resp), url, redirects
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, BlockedAddressError):
                    raise exc.os_error.error from exc
                if isinstance(exc.__cause__, BlockedAddressError):
                    raise exc.__cause__.error from exc
                raise FetchError("fetch_failed", f"cannot connect to {url.host}: {_brief(exc.os_error)}") from exc
            except aiohttp.ServerTimeoutError as exc:
                raise FetchError("fetch_timeout", f"{url.host}: {_brief(exc) or 'timed out'}") from exc
            except aiohttp.InvalidURL as exc:
                raise FetchError("unsupported_reference", f"invalid URL: {_brief(exc)}") from exc
            except aiohttp.ClientError as exc:
                raise FetchError("fetch_failed", f"{url.host}: {type(exc).__name__}: {_brief(exc)}") from exc

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self._settings.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise FetchError("fetch_too_large", f"Content-Length {resp.content_length} exceeds {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
            total += len(chunk)
            if total > limit:  # enforced on what arrives, whatever the headers said
                resp.close()
                raise FetchError("fetch_too_large", f"body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _brief(exc: BaseException, limit: int = 200) -> str:
    """An exception's text cut short: aiohttp may quote the peer's bytes, and this text ends up in a
    dead-letter event."""
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _read_and_hash(ref: str, root: Path | None, max_bytes: int) -> tuple[bytes, str]:
    data = read_file_url(ref, root, max_bytes)
    return data, hashlib.sha256(data).hexdigest()
