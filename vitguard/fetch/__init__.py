"""Fetching untrusted image references safely: http(s) behind an SSRF guard, ``file://``, inline ``data:``."""

from __future__ import annotations

from vitguard.fetch.fetcher import FetchResult, FetchSource, ImageFetcher
from vitguard.fetch.guard import AddressPolicy, blocked_reason
from vitguard.fetch.resolver import GuardedResolver

__all__ = ["AddressPolicy", "FetchResult", "FetchSource", "GuardedResolver", "ImageFetcher", "blocked_reason"]
