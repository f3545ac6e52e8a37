"""The flood guard: an entry that suddenly matches far more items than usual is quarantined.

Shared lists carry false entries (HMA issue #1873: one bad hash matched a large share of uploads). The rule,
per entry, over tumbling windows of ``window_s``:

- ``usual`` is an exponentially weighted mean of the entry's match counts in its past windows (weight 0.3
  per window; windows without matches count as 0);
- in the current window, once its count reaches ``max(min_matches, factor * usual)``, the entry is
  quarantined for ``quarantine_s`` from that moment (renewed while the flood lasts).

A quarantined entry keeps matching: the match says ``quarantined``, alerts say so, and a force_unsafe action
is suspended (the verdict keeps the model's label). The state is per worker and in memory: each worker sees
its share of the traffic, so ``min_matches`` is per worker; a restart forgets the history (an entry then
needs a fresh flood to be quarantined again). Pure and clocked by the caller, so tests drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FloodGuard", "FloodRule"]

_WEIGHT = 0.3
_MAX_TRACKED = 200_000


@dataclass(frozen=True)
class FloodRule:
    window_s: float = 600.0
    min_matches: int = 50
    factor: float = 10.0
    quarantine_s: float = 3600.0


@dataclass
class _Track:
    window_start: float
    count: int = 0
    usual: float = 0.0
    quarantined_until: float = 0.0


class FloodGuard:
    """Counts matches per entry key and says which are quarantined (see the module docstring)."""

    def __init__(self, rule: FloodRule | None = None) -> None:
        self.rule = rule or FloodRule()
        self._tracks: dict[str, _Track] = {}

    def observe(self, key: str, now_s: float) -> bool:
        """Count one match of ``key`` at ``now_s``; whether the entry is quarantined now."""
        rule = self.rule
        track = self._tracks.get(key)
        if track is None:
            if len(self._tracks) >= _MAX_TRACKED:
                self._prune(now_s)
            track = self._tracks[key] = _Track(window_start=now_s)
        self._roll(track, now_s)
        track.count += 1
        if track.count >= max(rule.min_matches, rule.factor * track.usual):
            track.quarantined_until = now_s + rule.quarantine_s
        return now_s < track.quarantined_until

    def quarantined(self, key: str, now_s: float) -> bool:
        """Whether ``key`` is quarantined, without counting a match."""
        track = self._tracks.get(key)
        return track is not None and now_s < track.quarantined_until

    def quarantined_keys(self, now_s: float) -> list[str]:
        return sorted(k for k, t in self._tracks.items() if now_s < t.quarantined_until)

    def _roll(self, track: _Track, now_s: float) -> None:
        elapsed = int((now_s - track.window_start) // self.rule.window_s)
        if elapsed <= 0:
            return
        track.usual = _WEIGHT * track.count + (1 - _WEIGHT) * track.usual
        track.usual *= (1 - _WEIGHT) ** min(elapsed - 1, 1000)  # the empty windows in between
        track.count = 0
        track.window_start += elapsed * self.rule.window_s

    def _prune(self, now_s: float) -> None:
        """Forget the entries least recently seen that are not quarantined (bounded memory)."""
        idle = sorted((t.window_start, k) for k, t in self._tracks.items() if now_s >= t.quarantined_until)
        for _, k in idle[: len(idle) // 2 + 1]:
            del self._tracks[k]
