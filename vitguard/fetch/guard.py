"""SSRF policy: which URLs and IP addresses the fetcher may talk to. Pure functions, no I/O.

Every image reference is untrusted: an attacker who can publish an event could otherwise make the worker
fetch from the cloud metadata service, an admin port on loopback or a host on the private network. The
fetcher applies this policy to the address it is about to connect to (after DNS resolution, on the first
request and on every redirect), never to the host name alone, because a name can resolve anywhere.

The rule: an address is refused unless it is globally routable, except where it lies inside one of the
operator's ``allowed_networks`` (e.g. an internal CDN). Addresses that merely *embed* an IPv4 address
(IPv4-mapped, 6to4, NAT64) are judged by the embedded address as well, since the kernel or a translator
would deliver them there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from yarl import URL

from vitguard.errors import FetchError

__all__ = [
    "HTTP_SCHEMES",
    "METADATA_ADDRESSES",
    "AddressPolicy",
    "IPAddress",
    "blocked_reason",
    "literal_ip",
    "redirect_target",
    "validate_http_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HTTP_SCHEMES = frozenset({"http", "https"})

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    }
)
"""Cloud instance-metadata endpoints: the classic SSRF prize (credentials). Named for clear refusals."""

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address hands traffic to, if any (mapped, 6to4, NAT64, Teredo server)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address, obfuscated in the IPv6 address
    return None


def _own_reason(ip: IPAddress) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_multicast:
        return "multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.IPv6Network("fc00::/7"):
        return "unique local address"
    if ip.is_private:
        return "private address"
    if ip.is_reserved:
        return "reserved address"
    if not ip.is_global:
        return "address not globally routable"
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted, or None when it is a public address.

    Ignores the allow-list; see :meth:`AddressPolicy.check` for the full decision.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = _own_reason(embedded)
            if inner is not None:
                return f"{inner} (embedded in {ip})"
            if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d *is* a.b.c.d on a dual-stack socket
                return None
    return _own_reason(ip)


@dataclass(frozen=True)
class AddressPolicy:
    """The SSRF decision for one worker: refuse non-public addresses except the allow-listed networks."""

    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> AddressPolicy:
        """Build from ``FetchSettings.allowed_networks`` (CIDR strings, validated by the settings)."""
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def is_allowed_network(self, ip: IPAddress) -> bool:
        """True when ``ip`` (or the IPv4 address it embeds) lies in an allow-listed network."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(ip)
            if embedded is not None:
                candidates.append(embedded)
        return any(c in net for c in candidates for net in self.allowed_networks if c.version == net.version)

    def check(self, ip: IPAddress, *, host: str = "") -> None:
        """Raise ``FetchError(fetch_blocked)`` unless the fetcher may connect to ``ip``.

        Args:
            ip: the address about to be connected to.
            host: the name it was resolved from, only for the error message.
        """
        if self.is_allowed_network(ip):
            return
        reason = blocked_reason(ip)
        if reason is not None:
            via = f"{host} -> " if host and host != str(ip) else ""
            raise FetchError("fetch_blocked", f"refusing to fetch from {via}{ip}: {reason}")

    def check_all(self, ips: Sequence[IPAddress], *, host: str = "") -> None:
        """Check every address a name resolved to: one bad record refuses the name.

        Refusing the whole name (rather than dropping the bad records) keeps a name that points both at a
        public and at an internal address from being used to probe the internal one.
        """
        if not ips:
            raise FetchError("fetch_failed", f"{host or 'host'} resolved to no address")
        for ip in ips:
            self.check(ip, host=host)


def literal_ip(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (``[...]`` brackets allowed), else None.

    Raises:
        FetchError: ``fetch_blocked`` for numeric hosts that are not canonical dotted quads (``127.1``,
            ``2130706433``, ``0177.0.0.1``): resolvers disagree on them, a classic guard bypass.
    """
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in h:
        try:
            return ipaddress.IPv6Address(h)
        except ValueError as exc:
            raise FetchError("unsupported_reference", f"malformed IPv6 host {host!r}") from exc
    if h and h.replace(".", "").isdigit():
        try:
            return ipaddress.IPv4Address(h)
        except ValueError as exc:
            raise FetchError("fetch_blocked", f"non-canonical numeric host {host!r}") from exc
    if h.lower().startswith("0x") and all(c in "0123456789abcdefx." for c in h.lower()):
        raise FetchError("fetch_blocked", f"non-canonical numeric host {host!r}")
    return None


def validate_http_url(ref: str | URL) -> URL:
    """Parse an http(s) URL and check what can be checked without the network.

    Raises:
        FetchError: ``unsupported_reference`` for another scheme, no host or a malformed URL.
    """
    try:
        url = ref if isinstance(ref, URL) else URL(ref, encoded=False)
    except (ValueError, TypeError) as exc:
        raise FetchError("unsupported_reference", f"malformed URL: {exc}") from exc
    if url.scheme not in HTTP_SCHEMES:
        raise FetchError("unsupported_reference", f"scheme {url.scheme!r} is not http or https")
    if not url.host:
        raise FetchError("unsupported_reference", "URL has no host")
    try:
        _ = url.port
    except ValueError as exc:
        raise FetchError("unsupported_reference", f"malformed port: {exc}") from exc
    return url


def redirect_target(current: URL, location: str | None) -> URL:
    """Where a redirect response points, resolved against the current URL.

    Raises:
        FetchError: ``fetch_failed`` without a Location header; ``fetch_blocked`` when the redirect
            leaves http(s) (a redirect to ``file://`` or ``gopher://`` is an SSRF trick, not an image).
    """
    if not location:
        raise FetchError("fetch_failed", "redirect without a Location header")
    try:
        target = current.join(URL(location))
    except (ValueError, TypeError) as exc:
        raise FetchError("fetch_failed", f"malformed redirect Location {location!r}") from exc
    if target.scheme not in HTTP_SCHEMES:
        raise FetchError("fetch_blocked", f"redirect to a {target.scheme!r} URL refused")
    return validate_http_url(target)
