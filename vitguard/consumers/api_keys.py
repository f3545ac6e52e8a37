"""Optional API keys for ``POST /classify``: who may call it, and how often (pure; the view applies it).

Keys come from ``VITGUARD_WEB_API_KEYS`` (several, for rotation). A request presents one as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; it is compared with every configured key in constant
time (``hmac.compare_digest``, all keys compared whatever matched, so timing says neither whether nor which).
Each key has a token bucket of ``VITGUARD_WEB_API_KEY_RATE`` requests per second (a burst of as many, at least
one).

A key of ``VITGUARD_WEB_TENANT_API_KEYS`` (``TENANT=KEY``) is bound to its tenant: :meth:`ApiKeys.admit` says
which, and the store's views answer such a caller about that tenant's items only (:func:`scope_tenants`).
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Admitted", "ApiKeys", "ForbiddenTenantError", "Refusal", "scope_tenants"]


@dataclass(frozen=True)
class Refusal:
    """Why a request is turned away: its status, reason code, message and headers."""

    status: int
    reason: str
    message: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Admitted:
    """A request let in: the tenant its key is bound to (None: any tenant, or no keys configured)."""

    tenant: str | None = None


class ForbiddenTenantError(PermissionError):
    """A tenant-bound caller asked about another tenant (HTTP 403)."""

    reason = "forbidden_tenant"


def scope_tenants(asked: Sequence[str], bound: str | None) -> list[str]:
    """The tenants a request may see: what it asked for, narrowed to its key's tenant (all of it, when it asked
    for none).

    Raises:
        ForbiddenTenantError: it asked for a tenant other than its key's.
    """
    if bound is None:
        return list(asked)
    others = sorted(set(asked) - {bound})
    if others:
        raise ForbiddenTenantError(f"this API key is bound to tenant {bound!r}; it cannot ask about {others}")
    return [bound]


class ApiKeys:
    """The configured keys and a token bucket per key; ``tenant_keys`` are ``TENANT=KEY`` (bound keys)."""

    def __init__(self, keys: Sequence[str], rate: float, clock: Callable[[], float] = time.monotonic,
                 *, tenant_keys: Sequence[str] = ()) -> None:
        bound = [entry.partition("=") for entry in tenant_keys if entry]
        # bound keys first: a key listed both ways is taken as bound (the narrower grant)
        self._keys = [key.encode() for _, _, key in bound] + [k.encode() for k in keys if k]
        self._tenants: list[str | None] = [t for t, _, _ in bound] + [None] * (len(self._keys) - len(bound))
        self._rate = rate
        self._burst = max(1.0, rate)
        self._clock = clock
        self._tokens = [self._burst] * len(self._keys)
        self._last = [clock()] * len(self._keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, headers: Mapping[str, str]) -> Refusal | None:
        """None when the request may go on; else the refusal (401 without a valid key, 429 over its rate)."""
        admitted = self.admit(headers)
        return admitted if isinstance(admitted, Refusal) else None

    def admit(self, headers: Mapping[str, str]) -> Admitted | Refusal:
        """The caller let in (with its key's tenant), or the refusal (401 without a valid key, 429 over its
        rate)."""
        if not self._keys:
            return Admitted()
        presented = _presented(headers)
        matched = -1
        for i, key in enumerate(self._keys):  # every key compared: no early exit
            if hmac.compare_digest(presented, key) and matched < 0:
                matched = i
        if matched < 0:
            return Refusal(401, "unauthorized", "this endpoint needs an API key: Authorization: Bearer <key>",
                           {"WWW-Authenticate": 'Bearer realm="vitguard"'})
        now = self._clock()
        tokens = min(self._burst, self._tokens[matched] + (now - self._last[matched]) * self._rate)
        self._last[matched] = now
        if tokens < 1.0:
            self._tokens[matched] = tokens
            wait_s = math.ceil((1.0 - tokens) / self._rate)
            return Refusal(429, "rate_limited", f"more than {self._rate:g} requests/s with this key; retry",
                           {"Retry-After": str(max(1, wait_s))})
        self._tokens[matched] = tokens - 1.0
        return Admitted(self._tenants[matched])


def _presented(headers: Mapping[str, str]) -> bytes:
    auth = headers.get("Authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip().encode()
    return (headers.get("X-API-Key") or "").strip().encode()
