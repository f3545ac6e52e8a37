"""The hash indexes (FAISS, multi-index hashing) against brute force; the matcher (per-bank distance, quality,
disabled and negative banks); the flood guard; the in-memory store; the follower over a fake record source."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from tests.banks.conftest import flip, random_pdq
from vitguard.banks import (
    Bank,
    BankEntry,
    BankExistsError,
    BankFollower,
    BankMatcher,
    BankNotFoundError,
    BankSettings,
    FloodGuard,
    FloodRule,
    MemoryBankStore,
    build_index,
    build_snapshot,
)
from vitguard.banks.signal import pack_hashes
from vitguard.kafka.reader import RawRecord
from vitguard.settings import KafkaSettings


@pytest.mark.parametrize("kind", ["flat", "multihash", "mih"])
@pytest.mark.parametrize("max_distance", [0, 15, 31, 40])
def test_every_index_finds_exactly_what_brute_force_finds(kind: str, max_distance: int, rng: random.Random) -> None:
    banked = [random_pdq(rng) for _ in range(2000)]
    banked += banked[:20]  # the same hash in two entries (two banks list it): both are found
    queries = [flip(banked[rng.randrange(len(banked))], rng.randrange(0, 45), rng) for _ in range(200)]
    queries += [random_pdq(rng) for _ in range(50)]
    codes, q = pack_hashes(banked), pack_hashes(queries)
    brute = build_index(codes, max_distance, kind="brute").search(q)
    faiss_hits = build_index(codes, max_distance, kind=kind).search(q)  # type: ignore[arg-type]
    assert faiss_hits == brute
    assert sum(map(len, brute)) > 0


@pytest.mark.parametrize("max_distance", [63, 70])
def test_multi_index_hashing_is_exact_at_large_distances_too(max_distance: int, rng: random.Random) -> None:
    banked = [random_pdq(rng) for _ in range(300)]
    queries = [flip(banked[rng.randrange(len(banked))], rng.randrange(40, 80), rng) for _ in range(40)]
    codes, q = pack_hashes(banked), pack_hashes(queries)
    brute = build_index(codes, max_distance, kind="brute").search(q)
    assert build_index(codes, max_distance, kind="mih").search(q) == brute
    assert sum(map(len, brute)) > 0


@pytest.mark.parametrize("kind", ["flat", "mih"])
def test_empty_index_and_empty_batch(kind: str) -> None:
    index = build_index(np.zeros((0, 32), np.uint8), 31, kind=kind)  # type: ignore[arg-type]
    assert index.search(pack_hashes(["a" * 64])) == [[]]
    assert build_index(pack_hashes(["a" * 64]), 31, kind=kind).search(  # type: ignore[arg-type]
        pack_hashes([])) == []


def test_auto_scans_small_banks_and_uses_multi_index_hashing_for_large_ones(rng: random.Random) -> None:
    from vitguard.banks.index import FaissHashIndex, MultiIndexHashIndex

    codes = pack_hashes([random_pdq(rng) for _ in range(300)])
    assert isinstance(build_index(codes, 31, multihash_min=301), FaissHashIndex)
    assert isinstance(build_index(codes, 31, multihash_min=300), MultiIndexHashIndex)


def _store(rng: random.Random) -> tuple[MemoryBankStore, dict[str, str]]:
    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    store.create_bank(Bank(name="tight", action="flag_only", match_distance=5))
    store.create_bank(Bank(name="allow", kind="negative"))
    store.create_bank(Bank(name="off", enabled=False))
    h = {k: random_pdq(rng) for k in ("bad", "tight", "allow", "off")}
    store.add_entries([
        BankEntry(bank="known-bad", entry_id="b1", signal=h["bad"]),
        BankEntry(bank="tight", entry_id="t1", signal=h["tight"]),
        BankEntry(bank="allow", entry_id="a1", signal=h["allow"]),
        BankEntry(bank="off", entry_id="o1", signal=h["off"]),
    ])
    return store, h


def test_match_batch_per_bank_distance_quality_disabled_and_negative(rng: random.Random) -> None:
    store, h = _store(rng)
    matcher = BankMatcher(build_snapshot(store.read()), quality_threshold=50)
    queries = [flip(h["bad"], 20, rng), flip(h["tight"], 6, rng), flip(h["tight"], 5, rng), h["allow"], h["off"],
               h["bad"], None, random_pdq(rng)]
    qualities = [90, 90, 90, 90, 90, 49, None, 90]
    got = matcher.match_batch(queries, qualities)
    assert [[(m.bank, m.entry_id, m.distance, m.action, m.negative) for m in ms] for ms in got] == [
        [("known-bad", "b1", 20, "force_unsafe", False)],
        [],                                         # 6 bits: beyond the tight bank's 5
        [("tight", "t1", 5, "flag_only", False)],
        [("allow", "a1", 0, "flag_only", True)],
        [],                                         # disabled bank
        [],                                         # quality below the threshold
        [],                                         # no hash
        [],
    ]


def test_the_search_radius_is_the_widest_bank_with_entries_and_at_most_64(rng: random.Random) -> None:
    """An empty bank at match_distance 128 made every search return half of every other bank (4.2 million
    hits for 16 queries against 500,000 hashes, filtered one by one)."""
    from vitguard.banks.matcher import MAX_SEARCH_DISTANCE

    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    store.create_bank(Bank(name="empty-wide", match_distance=128))
    signals = [random_pdq(rng) for _ in range(200)]
    store.add_entries([BankEntry(bank="known-bad", entry_id=f"b{i}", signal=s) for i, s in enumerate(signals)])
    snapshot = build_snapshot(store.read())
    near = flip(signals[0], 20, rng)
    assert [[p for p, _ in hits] for hits in snapshot.index.search(pack_hashes([near]))] == [[0]]  # radius 31
    store.create_bank(Bank(name="wide", match_distance=100))
    store.add_entries([BankEntry(bank="wide", entry_id="w1", signal=random_pdq(rng))])
    wide = build_snapshot(store.read())
    [hits] = wide.index.search(pack_hashes([near]))
    assert hits and max(d for _, d in hits) <= MAX_SEARCH_DISTANCE < 100


def test_one_hash_in_two_banks_matches_both_closest_first(rng: random.Random) -> None:
    store, h = _store(rng)
    store.add_entries([BankEntry(bank="tight", entry_id="t2", signal=flip(h["bad"], 3, rng))])
    (matches,) = BankMatcher(build_snapshot(store.read())).match_batch([h["bad"]], [100])
    assert [(m.bank, m.entry_id, m.distance) for m in matches] == [("known-bad", "b1", 0), ("tight", "t2", 3)]


def test_store_operations_and_errors(rng: random.Random) -> None:
    store, _ = _store(rng)
    with pytest.raises(BankExistsError):
        store.create_bank(Bank(name="allow"))
    created = store.read().banks["allow"].created_at
    store.create_bank(Bank(name="allow", kind="negative", match_distance=10), update=True)
    assert store.read().banks["allow"].match_distance == 10 and store.read().banks["allow"].created_at == created
    with pytest.raises(BankNotFoundError, match="vitguard banks create"):
        store.add_entries([BankEntry(bank="nope", entry_id="x", signal=random_pdq(rng))])
    assert store.remove_entries("known-bad", ["b1", "zz"]) == ["zz"]
    assert store.read().counts()["known-bad"] == 0
    assert store.delete_bank("tight") == 1
    assert "tight" not in store.read().banks and ("tight", "t1") not in store.read().entries
    assert store.records[-1].value is None  # tombstones on the topic


def test_flood_guard_quarantines_a_sudden_burst_only() -> None:
    guard = FloodGuard(FloodRule(window_s=60, min_matches=5, factor=10, quarantine_s=120))
    t = 0.0
    # usual traffic: 3 matches per window for an hour -> never quarantined
    for _ in range(60):
        assert not any(guard.observe("steady", t + i) for i in range(3))
        t += 60
    # a burst: the 5th match within one window quarantines (usual ~0 for this entry)
    results = [guard.observe("burst", t + i) for i in range(6)]
    assert results == [False, False, False, False, True, True]
    assert guard.quarantined_keys(t + 10) == ["burst"]
    # the steady entry needs factor x its usual (3) = 30 in a window
    assert not any(guard.observe("steady", t + i * 0.1) for i in range(29))
    assert guard.observe("steady", t + 3)
    # quarantine lasts quarantine_s after the last flood, then lifts
    assert guard.quarantined("burst", t + 5 + 119)
    assert not guard.quarantined("burst", t + 5 + 121)


def test_matcher_marks_quarantined_entries(rng: random.Random) -> None:
    store, h = _store(rng)
    matcher = BankMatcher(build_snapshot(store.read()), flood=FloodRule(min_matches=3), clock=lambda: 1000.0)
    unrelated = [flip(h["bad"], 24, rng) for _ in range(4)]  # four different images, each 24 bits from it
    got = matcher.match_batch(unrelated + [h["allow"]] * 4, [100] * 8)
    assert [ms[0].quarantined for ms in got] == [False, False, True, True] + [False] * 4  # negative: never


def test_a_wave_of_copies_is_not_quarantined_beside_a_degenerate_entry_that_is(rng: random.Random) -> None:
    """Issue 28: 50 genuine re-uploads of banned content within the window quarantined the entry, and the 50th
    onward got the model's label; a wave is exactly when a force_unsafe entry matters most. Only a flood of
    unrelated images (a wrong or degenerate entry) is quarantined now, and both are counted."""
    from vitguard import metrics

    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    banned, broken = random_pdq(rng), random_pdq(rng)
    store.add_entries([BankEntry(bank="known-bad", entry_id="banned", signal=banned),
                       BankEntry(bank="known-bad", entry_id="broken", signal=broken)])
    matcher = BankMatcher(build_snapshot(store.read()), flood=FloodRule(min_matches=20), clock=lambda: 1000.0)
    before = {o: metrics.BANK_FLOODS.labels(o)._value.get() for o in ("quarantined", "wave_kept")}
    copies = [flip(banned, rng.randrange(0, 12), rng) for _ in range(60)]  # re-encodes, resizes, crops
    wave = matcher.match_batch(copies, [100] * 60)
    assert all(ms and ms[0].entry_id == "banned" and not ms[0].quarantined for ms in wave)
    degenerate = [flip(broken, 26, rng) for _ in range(60)]  # unrelated images all near one hash
    flood = matcher.match_batch(degenerate, [100] * 60)
    assert [ms[0].quarantined for ms in flood] == [False] * 19 + [True] * 41
    assert metrics.BANK_FLOODS.labels("wave_kept")._value.get() == before["wave_kept"] + 1  # logged once a window
    assert metrics.BANK_FLOODS.labels("quarantined")._value.get() == before["quarantined"] + 1


class _FakeSource:
    def __init__(self, initial: list[RawRecord]) -> None:
        self.initial = initial
        self.later: list[RawRecord] = []
        self.closed = False

    def read_to_end(self, timeout_s: float) -> list[RawRecord]:
        return self.initial

    def next_record(self, timeout_s: float) -> RawRecord | None:
        if self.later:
            return self.later.pop(0)
        time.sleep(min(timeout_s, 0.01))
        return None

    def close(self) -> None:
        self.closed = True


def _raw(key: bytes, value: bytes | None) -> RawRecord:
    return RawRecord("banks", 0, 0, key, value, None)


def test_follower_loads_then_applies_updates_off_the_hot_path(rng: random.Random) -> None:
    store, h = _store(rng)
    source = _FakeSource([_raw(r.key, r.value) for r in store.records])
    matcher = BankMatcher()
    follower = BankFollower(KafkaSettings(), BankSettings(rebuild_interval_s=0.05), matcher, source=source)
    follower.start()
    try:
        assert matcher.match_batch([h["bad"]], [100])[0][0].entry_id == "b1"
        new = random_pdq(rng)
        mark = len(store.records)
        store.add_entries([BankEntry(bank="known-bad", entry_id="b2", signal=new)])
        store.remove_entries("known-bad", ["b1"])
        source.later += [_raw(r.key, r.value) for r in store.records[mark:]]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not matcher.match_batch([new], [100])[0]:
            time.sleep(0.02)
        assert [m.entry_id for m in matcher.match_batch([new], [100])[0]] == ["b2"]
        assert matcher.match_batch([h["bad"]], [100]) == [[]]
        assert follower.running and follower.last_error is None
    finally:
        follower.stop()
    assert source.closed and not follower.running


def test_malformed_release_records_on_the_banks_topic_are_counted_and_ignored() -> None:
    """Anyone who can write the banks topic can write an `r|` key: a malformed release never raises out of the
    follower's apply, changes nothing and is counted with the other invalid records."""
    from vitguard.banks.state import BankRecord, BankState

    state = BankState()
    for value in (None, b"not json", b"[1, 2]", b'{"released_at": "soon"}', b"{}", b"\xff\xfe"):
        assert state.apply(b"r|bank|entry", value) is False
    assert state.invalid == 6 and state.take_releases() == []
    good = BankRecord.for_release("bank", "entry", 123.5)
    assert state.apply(good.key, good.value) is False  # no index change, but queued for the flood guard
    assert state.take_releases() == [("bank|entry", 123.5)] and state.take_releases() == []
