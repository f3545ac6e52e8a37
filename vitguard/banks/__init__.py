"""Hash banks: shared lists of known content matched by PDQ perceptual hash (HMA's model).

- :mod:`~vitguard.banks.signal`: the PDQ signal type (hash pixels, validate, distance).
- :mod:`~vitguard.banks.models`: a bank's settings and its entries.
- :mod:`~vitguard.banks.state`: the banks topic's record layout and the state it adds up to.
- :mod:`~vitguard.banks.store`: where banks live (a compacted Kafka topic; an in-memory store for tests).
- :mod:`~vitguard.banks.index`: FAISS binary indexes (and a brute-force reference).
- :mod:`~vitguard.banks.matcher`: one call per batch, with the flood guard (:mod:`~vitguard.banks.flood`).
- :mod:`~vitguard.banks.follower`: keeps a worker's matcher current from the topic, off the hot path.
- :mod:`~vitguard.banks.formats`: import and export of exchange formats.
"""

from __future__ import annotations

from vitguard.banks.flood import FloodGuard, FloodRule
from vitguard.banks.follower import BankFollower
from vitguard.banks.index import BruteForceHashIndex, FaissHashIndex, HashIndex, build_index
from vitguard.banks.matcher import BankMatcher, BankSnapshot, build_snapshot
from vitguard.banks.models import Bank, BankAction, BankEntry, BankKind
from vitguard.banks.signal import (
    PDQ_DEFAULT_MATCH_DISTANCE,
    PDQ_DEFAULT_QUALITY_THRESHOLD,
    PdqHash,
    PdqSignal,
    SignalType,
)
from vitguard.banks.state import BankRecord, BankState
from vitguard.banks.store import (
    BankExistsError,
    BankNotFoundError,
    BankStore,
    KafkaBankStore,
    MemoryBankStore,
    ensure_bank_topic,
)
from vitguard.schemas.events import BankMatch
from vitguard.settings import BankSettings

__all__ = [
    "PDQ_DEFAULT_MATCH_DISTANCE",
    "PDQ_DEFAULT_QUALITY_THRESHOLD",
    "Bank",
    "BankAction",
    "BankEntry",
    "BankExistsError",
    "BankFollower",
    "BankKind",
    "BankMatch",
    "BankMatcher",
    "BankNotFoundError",
    "BankRecord",
    "BankSnapshot",
    "BankState",
    "BankStore",
    "BruteForceHashIndex",
    "FaissHashIndex",
    "FloodGuard",
    "FloodRule",
    "HashIndex",
    "KafkaBankStore",
    "MemoryBankStore",
    "PdqHash",
    "PdqSignal",
    "SignalType",
    "build_index",
    "build_snapshot",
    "ensure_bank_topic",
    "matcher_for",
]


def matcher_for(settings: BankSettings) -> BankMatcher:
    """A matcher with the settings' quality threshold and flood rule (and no banks until a follower feeds it)."""
    return BankMatcher(
        quality_threshold=settings.quality_threshold,
        flood=FloodRule(window_s=settings.flood_window_s, min_matches=settings.flood_min_matches,
                        factor=settings.flood_factor, quarantine_s=settings.flood_quarantine_s,
                        min_spread_bits=settings.flood_min_spread_bits),
    )
