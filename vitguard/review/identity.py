"""Who a reviewer is: per-reviewer credentials (stored hashed), or the identity a trusted authenticating proxy
asserts; which tenants each may review; and a login limiter that a guesser cannot outrun.

Three ways to run the console (``VITGUARD_REVIEW_*``), strongest first:

* ``IDENTITY_HEADER`` (e.g. ``X-Auth-Request-User``, oauth2-proxy's; ``X-Forwarded-User``): the console sits
  behind an authenticating proxy (OIDC) and takes the reviewer from that header on every request; no login
  form. Only the proxy may reach the console then (bind it to loopback or a private network).
* ``REVIEWERS_FILE``: one reviewer a line, ``name:scrypt-hash[:tenant,tenant...]`` (hash from
  ``vitguard review hash-password``); a reviewer logs in with their own password, and one with tenants sees and
  decides only those tenants' items.
* ``CONSOLE_TOKEN`` alone: one shared token and a typed name (a single operator, development).

Every decision carries the authenticated reviewer, never a name typed next to a shared secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vitguard.errors import ConfigError

__all__ = ["REVIEWER_RE", "LoginLimiter", "Reviewer", "hash_password", "load_reviewers", "verify_password"]

REVIEWER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/\-]{0,127}$")
"""A reviewer name (also an :data:`~vitguard.schemas.events.Identifier`)."""

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@dataclass(frozen=True)
class Reviewer:
    name: str
    password_hash: str | None = None
    tenants: frozenset[str] | None = None
    """The tenants this reviewer may review; None: all."""


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password``: what a reviewers file stores."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (from :func:`hash_password`); constant time in the digest."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def load_reviewers(path: Path) -> dict[str, Reviewer]:
    """The reviewers of a reviewers file (``name:hash[:tenants]`` a line; ``#`` comments).

    Raises:
        ConfigError: the file cannot be read, or a line is malformed (its number is given, never its hash).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the reviewers file {path}: {exc}") from exc
    out: dict[str, Reviewer] = {}
    for no, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, _, rest = text.partition(":")
        password_hash, _, tenants = rest.partition(":")
        if not REVIEWER_RE.match(name) or not password_hash.startswith("scrypt$") or name in out:
            raise ConfigError(f"{path}:{no}: expected a unique name:scrypt-hash[:tenant,...] line "
                              "(make the hash with `vitguard review hash-password`)")
        scope = frozenset(t.strip() for t in tenants.split(",") if t.strip()) or None
        out[name] = Reviewer(name, password_hash, scope)
    if not out:
        raise ConfigError(f"the reviewers file {path} names no reviewer")
    return out


@dataclass
class _Failures:
    count: int = 0
    first_at: float = 0.0
    locked_until: float = 0.0
    lockouts: int = 0


@dataclass
class LoginLimiter:
    """Failed logins counted per client and per reviewer name: after ``max_failures`` within ``window_s`` the
    key is locked out for ``lockout_s``, doubling with each lockout in a row up to ``max_lockout_s``; a
    success clears it. A lockout always ends, so a guesser cannot lock the real user out for good."""

    max_failures: int = 5
    window_s: float = 300.0
    lockout_s: float = 30.0
    max_lockout_s: float = 900.0
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, _Failures] = field(default_factory=dict)

    def retry_after(self, *keys: str) -> float:
        """Seconds until every one of ``keys`` may try again (0: now)."""
        now = self.clock()
        return max((f.locked_until - now for k in keys if (f := self._keys.get(k)) is not None), default=0.0)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            f = self._keys.setdefault(key, _Failures(first_at=now))
            if now - f.first_at > self.window_s:
                f.count, f.first_at = 0, now
            f.count += 1
            if f.count >= self.max_failures:
                f.locked_until = now + min(self.max_lockout_s, self.lockout_s * 2**f.lockouts)
                f.lockouts += 1
                f.count, f.first_at = 0, now
        if len(self._keys) > 100_000:  # bounded memory: forget keys that are not locked
            for key in [k for k, f in self._keys.items() if f.locked_until <= now][:50_000]:
                del self._keys[key]

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._keys.pop(key, None)
