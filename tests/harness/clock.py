"""A clock that moves only when a test moves it (monotonic seconds)."""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """Call it for the time; add to ``now`` to let time pass."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
