"""The flood guard: an entry that suddenly matches far more items than usual is quarantined.

Shared lists carry false entries (HMA issue #1873: one bad hash matched a large share of uploads). The rule,
per entry, over tumbling windows of ``window_s``:

- ``usual`` is an exponentially weighted mean of the entry's match counts in its past windows (weight 0.3
  per window; windows without matches count as 0);
- in the current window, once its count reaches ``max(min_matches, factor * usual)``, the entry is
  quarantined for ``quarantine_s`` from that moment (renewed while the flood lasts), **provided the items it
  matched are unlike each other**: the median PDQ distance between pairs of them (a sample of the window's
  first 16) is at least ``min_spread_bits``. A wrong or degenerate entry matches unrelated images, far apart
  from each other; a wave of banned content is copies of one image, close together, and that is exactly when
  a force_unsafe entry matters most: it is never quarantined for it (it used to be, at the 50th re-upload).

A quarantined entry keeps matching: the match says ``quarantined``, alerts say so, and a force_unsafe action is
suspended (the verdict keeps the model's label). Every quarantine, kept wave and release is logged and counted
(``vitguard_bank_floods_total{outcome}``). The state is per worker and in memory: each worker sees its share of the
traffic, so ``min_matches`` is per worker; a restart forgets the history (an entry then needs a fresh flood to be
quarantined again). An operator releases one on every worker with ``vitguard banks release BANK ENTRY_ID`` (a
record on the banks topic, which each worker's follower reads). Pure apart from its log lines and counters, and
clocked by the caller, so tests drive it directly.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field

from vitguard import metrics

__all__ = ["FloodGuard", "FloodRule"]

_log = logging.getLogger(__name__)

_WEIGHT = 0.3
_MAX_TRACKED = 200_000
_SAMPLE = 16
"""Matched items' hashes kept per entry and window, to tell a wave of copies from unrelated images."""


@dataclass(frozen=True)
class FloodRule:
    window_s: float = 600.0
    min_matches: int = 50
    factor: float = 10.0
    quarantine_s: float = 3600.0
    min_spread_bits: int = 32
    """A flood is quarantined only when the items it matched are at least this far apart from each other
    (median PDQ distance between pairs): re-encoded, resized or cropped copies of one image stay well under
    it, unrelated images are ~128 bits apart (two within 31 bits of one entry, ~40-60)."""


@dataclass
class _Track:
    window_start: float
    count: int = 0
    usual: float = 0.0
    quarantined_until: float = 0.0
    quarantined_at: float = 0.0
    """When the current quarantine began (an operator's release applies to quarantines that began before it)."""
    sample: list[int] = field(default_factory=list)
    """Hashes (as integers) of the first items matched in this window."""
    judged: bool = False
    """This window's flood was looked at (a kept wave is logged once a window)."""


class FloodGuard:
    """Counts matches per entry key and says which are quarantined (see the module docstring)."""

    def __init__(self, rule: FloodRule | None = None) -> None:
        self.rule = rule or FloodRule()
        self._tracks: dict[str, _Track] = {}

    def observe(self, key: str, now_s: float, signal: str | None = None) -> bool:
        """Count one match of ``key`` at ``now_s`` by an item whose PDQ hash is ``signal`` (hex; None: unknown,
        and a flood without any known hash is quarantined on its count alone); whether the entry is
        quarantined now."""
        rule = self.rule
        track = self._tracks.get(key)
        if track is None:
            if len(self._tracks) >= _MAX_TRACKED:
                self._prune(now_s)
            track = self._tracks[key] = _Track(window_start=now_s)
        self._expire(key, track, now_s)
        self._roll(track, now_s)
        track.count += 1
        if signal is not None and len(track.sample) < _SAMPLE:
            track.sample.append(int(signal, 16))
        if track.count >= max(rule.min_matches, rule.factor * track.usual):
            self._flood(key, track, now_s)
        return now_s < track.quarantined_until

    def _flood(self, key: str, track: _Track, now_s: float) -> None:
        spread = _median_spread(track.sample)
        if spread is not None and spread < self.rule.min_spread_bits:
            if not track.judged:  # a wave of one image's copies: the entry keeps acting
                track.judged = True
                metrics.BANK_FLOODS.labels("wave_kept").inc()
                _log.warning("bank entry %s matched %d items in this window (usual %.1f), copies of one image "
                             "(median %d bits apart): a wave, not quarantined", key, track.count, track.usual,
                             spread)
            return
        if now_s >= track.quarantined_until:
            track.quarantined_at = now_s
            metrics.BANK_FLOODS.labels("quarantined").inc()
            _log.warning("bank entry %s quarantined for %.0fs: matched %d items in this window (usual %.1f), %s",
                         key, self.rule.quarantine_s, track.count, track.usual,
                         "unrelated images" + (f" (median {spread} bits apart)" if spread is not None else ""))
        track.quarantined_until = now_s + self.rule.quarantine_s

    def quarantined(self, key: str, now_s: float) -> bool:
        """Whether ``key`` is quarantined, without counting a match."""
        track = self._tracks.get(key)
        if track is not None:
            self._expire(key, track, now_s)
        return track is not None and now_s < track.quarantined_until

    def release(self, key: str, released_at: float) -> bool:
        """An operator's release: a quarantine of ``key`` that began before ``released_at`` ends now, and the
        window's count starts again (an entry that goes on matching unrelated images is quarantined again).
        Whether one ended."""
        track = self._tracks.get(key)
        if track is None or not track.quarantined_until or track.quarantined_at > released_at:
            return False
        track.quarantined_until = 0.0
        track.count = 0
        track.sample.clear()
        metrics.BANK_FLOODS.labels("released").inc()
        _log.warning("bank entry %s released from quarantine by an operator", key)
        return True

    def _expire(self, key: str, track: _Track, now_s: float) -> None:
        if track.quarantined_until and now_s >= track.quarantined_until:
            track.quarantined_until = 0.0
            metrics.BANK_FLOODS.labels("released").inc()
            _log.warning("bank entry %s released from quarantine", key)

    def quarantined_keys(self, now_s: float) -> list[str]:
        return sorted(k for k, t in self._tracks.items() if now_s < t.quarantined_until)

    def _roll(self, track: _Track, now_s: float) -> None:
        elapsed = int((now_s - track.window_start) // self.rule.window_s)
        if elapsed <= 0:
            return
        track.usual = _WEIGHT * track.count + (1 - _WEIGHT) * track.usual
        track.usual *= (1 - _WEIGHT) ** min(elapsed - 1, 1000)  # the empty windows in between
        track.count = 0
        track.sample.clear()
        track.judged = False
        track.window_start += elapsed * self.rule.window_s

    def _prune(self, now_s: float) -> None:
        """Forget the entries least recently seen that are not quarantined (bounded memory)."""
        idle = sorted((t.window_start, k) for k, t in self._tracks.items() if now_s >= t.quarantined_until)
        for _, k in idle[: len(idle) // 2 + 1]:
            del self._tracks[k]


def _median_spread(sample: list[int]) -> int | None:
    """Median Hamming distance between pairs of the sampled hashes; None with fewer than two."""
    if len(sample) < 2:
        return None
    return int(statistics.median((a ^ b).bit_count() for i, a in enumerate(sample) for b in sample[i + 1:]))
