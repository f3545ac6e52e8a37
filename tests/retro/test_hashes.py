"""The retro-hunter's catalog of PDQ hashes of items judged safe (vitguard.retro.hashes): pure."""

from __future__ import annotations

import numpy as np

from vitguard.retro.hashes import HashCatalog
from vitguard.schemas.events import Verdict


def _hex(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def _verdict(cid: str, pdq: str | None, label: str = "safe", quality: int = 90, **extra: object) -> Verdict:
    return Verdict.model_validate({
        "event_id": f"e-{cid}", "content_id": cid, "tenant": "t1", "label": label, "unsafe_score": 0.1,
        "top_class": "SFW", "scores": {"NSFW": 0.1, "SFW": 0.9}, "model_name": "m", "model_version": "v1",
        "pdq_hash": pdq, "pdq_quality": quality if pdq else None, **extra})


def test_a_hunt_finds_the_safe_items_within_the_distance_closest_first_as_an_exact_scan_would() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2, 256)
    catalog = HashCatalog(quality_threshold=50)
    stored: dict[str, np.ndarray] = {}
    for i in range(3000):
        bits = base.copy() if i % 10 == 0 else rng.integers(0, 2, 256)
        flips = rng.choice(256, size=int(rng.integers(0, 40)), replace=False)
        bits[flips] ^= 1
        stored[f"i{i}"] = bits
        catalog.add(_verdict(f"i{i}", _hex(bits)))
    found = catalog.hunt(_hex(base), 31)
    want = sorted((int((bits != base).sum()), cid) for cid, bits in stored.items() if (bits != base).sum() <= 31)
    assert [(d, item.content_id) for item, d in found] == want and len(want) > 100
    assert found[0][0].tenant == "t1" and found[0][0].model_version == "v1"


def test_only_the_latest_safe_verdict_with_a_good_hash_is_hunted() -> None:
    catalog = HashCatalog(quality_threshold=50)
    h = "f" * 32 + "0" * 32
    catalog.add(_verdict("a", h))
    catalog.add(_verdict("b", h, quality=20))  # too poor a hash to match (HMA's rule)
    catalog.add(_verdict("c", h, label="unsafe"))
    catalog.add(_verdict("d", None))
    catalog.add(_verdict("e", h, replay_id="rp-1"))  # a replay is a what-if
    catalog.add(_verdict("f", h))
    catalog.add(_verdict("f", h, label="unsafe"))  # judged again: no longer safe
    catalog.add(_verdict("g", h))
    catalog.remove("g")  # a reviewer confirmed it unsafe
    assert [item.content_id for item, _ in catalog.hunt(h, 0)] == ["a"] and len(catalog) == 1


def test_many_rejudged_items_are_compacted_and_still_found() -> None:
    catalog = HashCatalog()
    h = "a" * 64
    for round_ in range(5):
        for i in range(1000):
            catalog.add(_verdict(f"x{i}", h, label="safe" if round_ % 2 == 0 else "unsafe"))
    assert len(catalog) == 1000
    assert len(catalog.hunt(h, 0)) == 1000 and len(catalog._items) < 3 * 1000 + 1024
