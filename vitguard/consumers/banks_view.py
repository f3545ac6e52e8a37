"""The hash banks over HTTP, as HMA serves them: ``GET /banks`` lists them; ``POST /banks/{name}/entries`` adds a
hash list; ``DELETE /banks/{name}/entries/{entry_id}`` removes one entry.

Entries are written to the banks topic (:class:`~vitguard.banks.store.KafkaBankStore`, the one ``vitguard banks``
writes), so every worker applies them within seconds, as for the command line. A hash list is read by the
command line's reader (:func:`~vitguard.banks.formats.parse_hash_list`: one hex hash per line with optional id
and tags, or a CSV export of ThreatExchange, HMA or vitguard) and answered with the same line-numbered errors;
``?strict=true`` imports nothing when any line is bad (400), and ``?tag=T`` tags every entry.

Who may change banks: a caller with an API key that is not bound to a tenant (banks serve every tenant). A
worker with no API keys configured does not change banks over HTTP at all (403 ``keys_required``): the listing
stays open like the rest of the API, but an open bank write would let anyone on the network switch a block off.
"""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from vitguard import metrics
from vitguard.consumers.api_keys import ApiKeys, ForbiddenTenantError
from vitguard.consumers.http_gate import RequestGate, query_params
from vitguard.errors import InputError

__all__ = ["BankChange", "BankListing", "register_bank_views"]

_SHOW_ERRORS = 100
"""The most bad lines one answer lists (the count says how many there were)."""


class BankRow(BaseModel):
    name: str
    kind: str
    action: str
    match_distance: int
    enabled: bool
    description: str
    entries: int = Field(description="Entries the worker holds for the bank now.")


class BankListing(BaseModel):
    """The banks as this worker holds them (the banks topic, followed within seconds)."""

    banks: list[BankRow]


class BankChange(BaseModel):
    """What an entries call did."""

    bank: str
    added: int = 0
    removed: list[str] = Field(default_factory=list)
    read: int = Field(0, description="Good hashes in the list.")
    errors: list[str] = Field(default_factory=list, description="Bad lines, as `line N: why` (the first 100).")
    bad_lines: int = 0
    duplicates: int = 0
    other_types: int = Field(0, description="Rows of other signal types, skipped.")


class KeysRequiredError(PermissionError):
    """Bank changes over HTTP need API keys configured (403)."""

    reason = "keys_required"


class BankNotFoundHttpError(LookupError):
    """No bank of that name, or no such entry (404)."""

    reason = "not_found"


def register_bank_views(app: Any, runtime: Any, keys: ApiKeys) -> None:
    """Add ``GET /banks`` and the entries views to a Faust app (``runtime``: its WorkerRuntime)."""
    from faust.web import View

    web, fetch = runtime.settings.web, runtime.settings.fetch
    body_timeout_s = fetch.connect_timeout_s + fetch.read_timeout_s
    listings = RequestGate("/banks", keys, web.classify_max_in_flight, body_timeout_s, metrics.BANK_REQUESTS,
                           method="GET")
    additions = RequestGate("/banks/{name}/entries", keys, 4, body_timeout_s, metrics.BANK_REQUESTS)
    removals = RequestGate("/banks/{name}/entries/{entry_id}", keys, 4, body_timeout_s, metrics.BANK_REQUESTS,
                           method="DELETE")

    @app.page("/banks")
    class Banks(View):  # type: ignore[misc]
        async def get(self, request: Any) -> Any:
            async def handle(body: bytes, tenant: str | None) -> dict[str, Any]:  # noqa: ARG001 - one list for all
                return _listing(runtime).model_dump(mode="json")

            return await listings.run(self, request, handle)

        async def _not_allowed(self, request: Any) -> Any:
            return await listings.not_allowed(self, request)

        post = put = delete = patch = _not_allowed

    @app.page("/banks/{name}/entries")
    class Entries(View):  # type: ignore[misc]
        async def post(self, request: Any, name: str) -> Any:
            async def handle(body: bytes, tenant: str | None) -> dict[str, Any]:
                _may_change(keys, tenant)
                query = query_params(request)
                return (await asyncio.to_thread(_add, runtime, name, body, query)).model_dump(mode="json")

            return await additions.run(self, request, handle)

        async def _not_allowed(self, request: Any, name: str) -> Any:
            return await additions.not_allowed(self, request)

        get = put = delete = patch = _not_allowed

    @app.page("/banks/{name}/entries/{entry_id}")
    class Entry(View):  # type: ignore[misc]
        async def delete(self, request: Any, name: str, entry_id: str) -> Any:
            async def handle(body: bytes, tenant: str | None) -> dict[str, Any]:
                _may_change(keys, tenant)
                return (await asyncio.to_thread(_remove, runtime, name, entry_id)).model_dump(mode="json")

            return await removals.run(self, request, handle)

        async def _not_allowed(self, request: Any, name: str, entry_id: str) -> Any:
            return await removals.not_allowed(self, request)

        get = put = post = patch = _not_allowed


def _may_change(keys: ApiKeys, tenant: str | None) -> None:
    if not keys.enabled:
        raise KeysRequiredError("bank changes over HTTP need API keys (VITGUARD_WEB_API_KEYS); use `vitguard banks`")
    if tenant is not None:
        raise ForbiddenTenantError(f"this API key is bound to tenant {tenant!r}; banks serve every tenant")


def _follower_state(runtime: Any) -> Any:
    banks = getattr(runtime, "banks", None)
    if banks is None:
        from vitguard.banks.lookup import BanksDisabledError

        raise BanksDisabledError("this worker runs without hash banks (VITGUARD_BANKS_ENABLED=false)")
    return banks.state


def _listing(runtime: Any) -> BankListing:
    state = _follower_state(runtime)
    banks = dict(state.banks)  # copies: the follower's thread changes them
    counts = Counter(bank for bank, _ in list(state.entries))
    return BankListing(banks=[BankRow(name=name, kind=b.kind, action=b.action, match_distance=b.match_distance,
                                      enabled=b.enabled, description=b.description, entries=counts.get(name, 0))
                              for name, b in sorted(banks.items())])


def _store(runtime: Any) -> Any:
    from vitguard.banks import KafkaBankStore

    _follower_state(runtime)
    settings = runtime.settings
    return KafkaBankStore(settings.kafka, settings.banks, settings.topics, timeout_s=settings.kafka.request_timeout_s)


def _add(runtime: Any, name: str, body: bytes, query: dict[str, list[str]]) -> BankChange:
    from vitguard.banks.formats import parse_hash_list
    from vitguard.banks.store import BankNotFoundError

    strict = (query.get("strict") or ["false"])[-1].lower() in ("1", "true", "yes")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError("schema_violation", f"the hash list is not UTF-8 text (byte {exc.start})") from None
    report = parse_hash_list(io.StringIO(text))
    change = BankChange(bank=name, read=len(report.hashes), errors=[str(e) for e in report.errors[:_SHOW_ERRORS]],
                        bad_lines=len(report.errors), duplicates=report.duplicates, other_types=report.other_types)
    if strict and report.errors:
        raise InputError("schema_violation", f"{len(report.errors)} bad line(s), nothing imported (strict); "
                         + "; ".join(change.errors[:5]))
    if not report.hashes:
        raise InputError("schema_violation", "no hash in the list" + (f" ({change.errors[0]})" if change.errors
                                                                       else ""))
    try:
        entries = [h.entry(name, query.get("tag", [])) for h in report.hashes]
        change.added = _store(runtime).add_entries(entries)
    except BankNotFoundError as exc:
        raise BankNotFoundHttpError(str(exc)) from exc
    except ValueError as exc:  # a bad tag
        raise InputError("schema_violation", str(exc)) from exc
    return change


def _remove(runtime: Any, name: str, entry_id: str) -> BankChange:
    from vitguard.banks.store import BankNotFoundError

    try:
        missing = _store(runtime).remove_entries(name, [entry_id])
    except BankNotFoundError as exc:
        raise BankNotFoundHttpError(str(exc)) from exc
    if missing:
        raise BankNotFoundHttpError(f"bank {name!r} has no entry {entry_id!r}")
    return BankChange(bank=name, removed=[entry_id])
