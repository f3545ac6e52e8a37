"""The pipeline's match stage: labels, alerts and clustering exclusions from bank matches."""

from __future__ import annotations

import random

from tests.banks.conftest import flip, random_pdq
from vitguard.banks import Bank, BankEntry, BankMatcher, FloodRule, MemoryBankStore, build_snapshot
from vitguard.banks.signal import PdqHash
from vitguard.pipeline.stages.match import apply_matches, bank_alert, match_group, skips_clustering
from vitguard.schemas.events import Verdict


def _verdict() -> Verdict:
    return Verdict(event_id="e1", content_id="c1", label="safe", unsafe_score=0.1, top_class="SFW",
                   scores={"SFW": 0.9, "NSFW": 0.1}, model_name="m", model_version="v")


def test_force_unsafe_flag_only_negative_and_quarantine() -> None:
    rng = random.Random(5)
    store = MemoryBankStore()
    store.create_bank(Bank(name="bad", action="force_unsafe"))
    store.create_bank(Bank(name="flag", action="flag_only"))
    store.create_bank(Bank(name="ok", kind="negative"))
    h = {n: PdqHash(random_pdq(rng), 90) for n in ("bad", "flag", "ok")}
    store.add_entries([BankEntry(bank=n, entry_id=f"{n}-1", signal=p.hex) for n, p in h.items()])
    matcher = BankMatcher(build_snapshot(store.read()), flood=FloodRule(min_matches=3, min_spread_bits=20),
                          clock=lambda: 0.0)
    low = PdqHash(h["bad"].hex, 10)
    bad, flag, ok, none, weak = match_group(matcher, [h["bad"], h["flag"], h["ok"], None, low])

    v = apply_matches(_verdict(), h["bad"], bad)
    assert (v.label, v.label_source, v.pdq_hash, v.bank_matches[0].entry_id) == ("unsafe", "bank", h["bad"].hex,
                                                                                "bad-1")
    alert = bank_alert(v, h["bad"], bad)
    assert alert is not None and (alert.action_taken, alert.severity, alert.label) == ("force_unsafe", "critical",
                                                                                      "unsafe")
    v = apply_matches(_verdict(), h["flag"], flag)
    assert (v.label, v.label_source) == ("safe", "model")
    alert = bank_alert(v, h["flag"], flag)
    assert alert is not None and alert.action_taken == "flag_only"
    v = apply_matches(_verdict(), h["ok"], ok)
    assert v.bank_matches[0].negative and bank_alert(v, h["ok"], ok) is None and skips_clustering(ok)
    unsafe = _verdict().model_copy(update={"label": "unsafe", "unsafe_score": 0.9})
    allowed = apply_matches(unsafe, h["ok"], ok)  # issue 28: an allow-listed image was still labelled unsafe
    assert (allowed.label, allowed.label_source, allowed.unsafe_score) == ("safe", "bank", 0.9)
    both = apply_matches(unsafe, h["bad"], [*bad, *ok])  # force_unsafe wins over an allow-list: fail closed
    assert (both.label, both.label_source) == ("unsafe", "bank")
    assert none == [] and weak == [] and not skips_clustering(bad)
    assert apply_matches(_verdict(), low, weak).pdq_quality == 10

    # the third match within the window floods: quarantined, force_unsafe suspended (unrelated images: a
    # wave of copies of one image is never quarantined, tests/banks/test_matching.py)
    [[again]] = match_group(matcher, [PdqHash(flip(h["bad"].hex, 24, rng), 90)])
    [[third]] = match_group(matcher, [PdqHash(flip(h["bad"].hex, 24, rng), 90)])
    assert not again.quarantined and third.quarantined
    v = apply_matches(_verdict(), h["bad"], [third])
    assert v.label == "safe"
    alert = bank_alert(v, h["bad"], [third])
    assert alert is not None and (alert.action_taken, alert.quarantined) == ("suspended", True)


def test_no_matcher_means_no_matches() -> None:
    assert match_group(None, [PdqHash("a" * 64, 100), None]) == [[], []]
