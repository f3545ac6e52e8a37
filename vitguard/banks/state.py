"""The banks as a fold of keyed records: the layout of the banks topic, and the state it adds up to.

The banks topic is compacted: every bank and every entry is one key, its latest value is its state, and a
tombstone (a record with no value) removes it. Keys use ``|``, which no bank name or entry id may contain:

- ``b|<bank>``: a :class:`~vitguard.banks.models.Bank` as JSON;
- ``e|<bank>|<entry_id>``: a :class:`~vitguard.banks.models.BankEntry` as JSON.

:class:`BankState` is pure (no Kafka): the follower, the CLI's Kafka store and the in-memory store all
apply records to one, so they cannot disagree about what the topic means. An entry whose bank does not
exist (yet, or any more) is kept but matches nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from vitguard.banks.models import Bank, BankEntry

__all__ = ["BankState", "BankRecord", "bank_key", "entry_key", "entry_of_key"]

_log = logging.getLogger(__name__)


def bank_key(name: str) -> bytes:
    return f"b|{name}".encode()


def entry_key(bank: str, entry_id: str) -> bytes:
    return f"e|{bank}|{entry_id}".encode()


def entry_of_key(key: bytes | None) -> tuple[str, str] | None:
    """``(bank, entry_id)`` of an entry record's key (``e|<bank>|<entry_id>``), None for any other key."""
    kind, _, rest = (key or b"").decode("utf-8", "replace").partition("|")
    if kind != "e" or "|" not in rest:
        return None
    bank, _, entry_id = rest.partition("|")
    return bank, entry_id


def release_key(bank: str, entry_id: str) -> bytes:
    return f"r|{bank}|{entry_id}".encode()


@dataclass(frozen=True)
class BankRecord:
    """One record for the banks topic: a key and a value, None for a tombstone."""

    key: bytes
    value: bytes | None

    @classmethod
    def for_bank(cls, bank: Bank) -> BankRecord:
        return cls(bank_key(bank.name), bank.model_dump_json().encode())

    @classmethod
    def for_entry(cls, entry: BankEntry) -> BankRecord:
        return cls(entry_key(entry.bank, entry.entry_id), entry.model_dump_json().encode())

    @classmethod
    def for_release(cls, bank: str, entry_id: str, released_at: float) -> BankRecord:
        """An operator's release of an entry from the flood guard's quarantine (every worker applies it)."""
        value = json.dumps({"bank": bank, "entry_id": entry_id, "released_at": released_at}).encode()
        return cls(release_key(bank, entry_id), value)

    @classmethod
    def bank_tombstone(cls, name: str) -> BankRecord:
        return cls(bank_key(name), None)

    @classmethod
    def entry_tombstone(cls, bank: str, entry_id: str) -> BankRecord:
        return cls(entry_key(bank, entry_id), None)


class BankState:
    """Banks and entries as the records so far say; ``version`` counts the changes applied."""

    def __init__(self) -> None:
        self.banks: dict[str, Bank] = {}
        self.entries: dict[tuple[str, str], BankEntry] = {}
        self.version = 0
        self.invalid = 0
        """Records that were not a valid bank or entry (logged and ignored; a newer record fixes the key)."""
        self.releases: list[tuple[str, float]] = []
        """Operator releases read and not yet taken (:meth:`take_releases`): (``bank|entry_id``, when)."""

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one record; whether it changed anything."""
        text = key.decode("utf-8", "replace") if key else ""
        kind, _, rest = text.partition("|")
        try:
            if kind == "b" and rest:
                bank_value = None if value is None else Bank.model_validate_json(value)
                if bank_value is not None and bank_value.name != rest:
                    return self._mismatch(text, f"bank {bank_value.name!r}")
                return self._set_bank(rest, bank_value)
            if (found := entry_of_key(key)) is not None:
                bank, entry_id = found
                entry = None if value is None else BankEntry.model_validate_json(value)
                if entry is not None and (entry.bank, entry.entry_id) != (bank, entry_id):
                    return self._mismatch(text, f"entry {entry.bank!r}/{entry.entry_id!r}")
                return self._set_entry((bank, entry_id), entry)
            if kind == "r" and "|" in rest:
                return self._release(rest, value)
        except ValidationError as exc:
            self.invalid += 1
            _log.warning("ignoring an invalid banks record %r: %s", text[:200], exc.errors()[0]["msg"])
            return False
        self.invalid += 1
        _log.warning("ignoring a banks record with an unknown key %r", text[:200])
        return False

    def _release(self, key: str, value: bytes | None) -> bool:
        """An operator released ``bank|entry_id`` from quarantine: queued for the flood guard; the index is
        unchanged (returns False). A malformed one is counted and ignored like any invalid record."""
        try:
            data = json.loads(value) if value is not None else None
            released_at = float(data["released_at"])  # type: ignore[index]
        except (ValueError, TypeError, KeyError) as exc:
            self.invalid += 1
            _log.warning("ignoring an invalid release record %r: %s", key[:200], exc)
            return False
        self.releases.append((key, released_at))
        return False

    def take_releases(self) -> list[tuple[str, float]]:
        """The releases read since the last call."""
        out, self.releases = self.releases, []
        return out

    def _mismatch(self, text: str, held: str) -> bool:
        """A record whose key and value disagree: kept, it would match under one name and be removed (or
        listed) under another, so a delete could never reach it."""
        self.invalid += 1
        _log.warning("ignoring a banks record whose key %r holds %s", text[:200], held)
        return False

    def apply_all(self, records: Iterator[BankRecord] | list[BankRecord]) -> None:
        for r in records:
            self.apply(r.key, r.value)

    def _set_bank(self, name: str, bank: Bank | None) -> bool:
        if bank is None:
            if self.banks.pop(name, None) is None:
                return False
        else:
            if self.banks.get(name) == bank:
                return False
            self.banks[name] = bank
        self.version += 1
        return True

    def _set_entry(self, key: tuple[str, str], entry: BankEntry | None) -> bool:
        if entry is None:
            if self.entries.pop(key, None) is None:
                return False
        else:
            if self.entries.get(key) == entry:
                return False
            self.entries[key] = entry
        self.version += 1
        return True

    def bank_entries(self, bank: str) -> list[BankEntry]:
        """The entries of one bank, in entry-id order."""
        return sorted((e for (b, _), e in self.entries.items() if b == bank), key=lambda e: e.entry_id)

    def counts(self) -> dict[str, int]:
        """Entries per bank (banks with none included)."""
        out = dict.fromkeys(self.banks, 0)
        for b, _ in self.entries:
            if b in out:
                out[b] += 1
        return out
