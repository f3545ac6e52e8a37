"""Where banks live: the :class:`BankStore` interface, the Kafka store (the source of truth) and an
in-memory one for unit tests.

Design: the banks are a compacted Kafka topic (``VITGUARD_BANKS_TOPIC``, one partition, keys as in
:mod:`vitguard.banks.state`). Every worker reads it from the beginning into memory and follows it
(:class:`~vitguard.banks.follower.BankFollower`), so a change reaches every worker within about a second,
with no restart and no other service; compaction keeps the topic at one record per live bank and entry.
It is HMA's design (a shared bank store, a FAISS index per matcher), with Kafka, which vitguard already
depends on, as the store. Milvus Lite cannot hold binary vectors; a Milvus server could, at the price of a
network call per batch.

The store's operations are HMA's ``IBankStore`` (banks, their content) over records; both
implementations share them through :class:`StateStore`, and differ only in how records are read and
written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from vitguard.banks.models import Bank, BankEntry
from vitguard.banks.state import BankRecord, BankState
from vitguard.errors import VitguardError
from vitguard.settings import BankSettings, KafkaSettings, TopicSettings

__all__ = [
    "BankExistsError",
    "BankNotFoundError",
    "BankStore",
    "KafkaBankStore",
    "MemoryBankStore",
    "StateStore",
    "ensure_bank_topic",
]

_CHUNK = 5000

Progress = Callable[[int], None]


class BankNotFoundError(VitguardError):
    """No bank of that name."""


class BankExistsError(VitguardError):
    """A bank of that name exists already."""


class BankStore(Protocol):
    """Banks and their entries."""

    def read(self) -> BankState:
        """Everything as it is now."""
        ...

    def create_bank(self, bank: Bank, *, update: bool = False) -> None: ...

    def delete_bank(self, name: str) -> int: ...

    def add_entries(self, entries: Sequence[BankEntry], *, progress: Progress | None = None) -> int: ...

    def remove_entries(self, bank: str, entry_ids: Iterable[str]) -> list[str]: ...


class StateStore:
    """The bank operations over two primitives: read the state, write records (a subclass provides them)."""

    def read(self) -> BankState:
        raise NotImplementedError

    def _write(self, records: Sequence[BankRecord], progress: Progress | None = None) -> None:
        raise NotImplementedError

    def require_bank(self, state: BankState, name: str) -> Bank:
        """The bank called ``name``; :class:`BankNotFoundError` naming the known ones when there is none."""
        bank = state.banks.get(name)
        if bank is None:
            known = ", ".join(sorted(state.banks)) or "none yet"
            raise BankNotFoundError(f"no bank {name!r} (banks: {known}); create it with `vitguard banks create`")
        return bank

    def create_bank(self, bank: Bank, *, update: bool = False) -> None:
        """Create ``bank``; with ``update``, replace the settings of an existing one (keeping ``created_at``).

        Raises:
            BankExistsError: it exists and ``update`` is False.
        """
        existing = self.read().banks.get(bank.name)
        if existing is not None:
            if not update:
                raise BankExistsError(f"bank {bank.name!r} exists; pass --update to change its settings")
            bank = bank.model_copy(update={"created_at": existing.created_at})
        self._write([BankRecord.for_bank(bank)])

    def delete_bank(self, name: str) -> int:
        """Delete a bank and all its entries; returns the number of entries removed."""
        state = self.read()
        self.require_bank(state, name)
        entries = state.bank_entries(name)
        self._write([*(BankRecord.entry_tombstone(name, e.entry_id) for e in entries), BankRecord.bank_tombstone(name)])
        return len(entries)

    def add_entries(self, entries: Sequence[BankEntry], *, progress: Progress | None = None) -> int:
        """Add (or replace) entries; every bank they name must exist. Returns how many were written."""
        state = self.read()
        for name in {e.bank for e in entries}:
            self.require_bank(state, name)
        self._write([BankRecord.for_entry(e) for e in entries], progress)
        return len(entries)

    def release(self, bank: str, entry_id: str, released_at: float) -> None:
        """Release an entry from the flood guard's quarantine on every worker (they read it within seconds).

        Raises:
            BankNotFoundError: no such bank; VitguardError: no such entry in it.
        """
        state = self.read()
        self.require_bank(state, bank)
        if (bank, entry_id) not in state.entries:
            raise VitguardError(f"bank {bank!r} has no entry {entry_id!r}")
        self._write([BankRecord.for_release(bank, entry_id, released_at)])

    def remove_entries(self, bank: str, entry_ids: Iterable[str]) -> list[str]:
        """Remove entries by id; returns the ids that were not in the bank."""
        state = self.read()
        self.require_bank(state, bank)
        ids = list(dict.fromkeys(entry_ids))
        missing = [i for i in ids if (bank, i) not in state.entries]
        self._write([BankRecord.entry_tombstone(bank, i) for i in ids if (bank, i) in state.entries])
        return missing


class MemoryBankStore(StateStore):
    """Banks in this process only (unit tests); ``records`` is everything written, in order."""

    def __init__(self) -> None:
        self.state = BankState()
        self.records: list[BankRecord] = []

    def read(self) -> BankState:
        return self.state

    def _write(self, records: Sequence[BankRecord], progress: Progress | None = None) -> None:
        for r in records:
            self.records.append(r)
            self.state.apply(r.key, r.value)
        if progress is not None:
            progress(len(records))


def ensure_bank_topic(kafka: KafkaSettings, banks: BankSettings, topics: TopicSettings | None = None) -> bool:
    """Create the compacted banks topic when it is missing (:func:`~vitguard.kafka.admin.ensure_state_topic`);
    whether this call created it."""
    from vitguard.kafka.admin import ensure_state_topic

    return ensure_state_topic(kafka, banks.topic, topics.replication_factor if topics is not None else 1)


class KafkaBankStore(StateStore):
    """The banks topic (see the module docstring); reads go to the topic's end, writes wait for acks.

    Args:
        kafka: connection settings.
        banks: bank settings (the topic).
        topics: replication factor when the topic is created.
        timeout_s: how long a read to the end or a write may take.
    """

    def __init__(
        self, kafka: KafkaSettings, banks: BankSettings, topics: TopicSettings | None = None, *,
        timeout_s: float = 60.0,
    ) -> None:
        self.kafka = kafka
        self.banks = banks
        self.topics = topics
        self.timeout_s = timeout_s
        self._topic_checked = False

    def _ensure(self) -> None:
        if not self._topic_checked:
            ensure_bank_topic(self.kafka, self.banks, self.topics)
            self._topic_checked = True

    def read(self) -> BankState:
        from vitguard.kafka.reader import read_to_end

        self._ensure()
        state = BankState()
        for r in read_to_end(self.kafka, self.banks.topic, self.timeout_s):
            state.apply(r.key, r.value)
        return state

    def _write(self, records: Sequence[BankRecord], progress: Progress | None = None) -> None:
        from confluent_kafka import Producer

        from vitguard.kafka.config import librdkafka_config
        from vitguard.kafka.produce import DEFAULT_PRODUCER_CONFIG, OutboundMessage, produce_and_wait, raise_on_failures

        self._ensure()
        producer = Producer(librdkafka_config(self.kafka, **DEFAULT_PRODUCER_CONFIG))
        for start in range(0, len(records), _CHUNK):
            chunk = records[start:start + _CHUNK]
            results = produce_and_wait(
                producer, [OutboundMessage(self.banks.topic, r.value, r.key) for r in chunk], self.timeout_s)
            raise_on_failures(results)
            if progress is not None:
                progress(len(chunk))
