"""A DNS resolver for aiohttp that vets every address before the connector may use it.

aiohttp connects to exactly the addresses its resolver returns, so checking them *here* pins the
connection to the vetted address: there is no second lookup an attacker's DNS server could answer
differently (DNS rebinding). The URL keeps its host name, so the Host header and TLS SNI/certificate
checks are unchanged.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from vitguard.errors import FetchError
from vitguard.fetch.guard import AddressPolicy, IPAddress

__all__ = ["BlockedAddressError", "GuardedResolver"]


class BlockedAddressError(OSError):
    """Carries a :class:`FetchError` through aiohttp, which only passes ``OSError`` up from resolvers."""

    def __init__(self, error: FetchError) -> None:
        super().__init__(str(error))
        self.error = error


class GuardedResolver(AbstractResolver):
    """Resolve with ``inner`` (getaddrinfo in a thread by default), then apply the SSRF policy.

    Args:
        policy: which addresses may be contacted.
        inner: the resolver that does the lookup; tests inject one that maps names to chosen addresses.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        addresses: list[IPAddress] = []
        for r in results:
            try:
                addresses.append(ipaddress.ip_address(r["host"]))
            except ValueError as exc:
                raise BlockedAddressError(
                    FetchError("fetch_blocked", f"{host} resolved to a non-IP answer {r['host']!r}")
                ) from exc
        try:
            self._policy.check_all(addresses, host=host)
        except FetchError as exc:
            raise BlockedAddressError(exc) from None
        return results

    async def close(self) -> None:
        await self._inner.close()
