"""A clock that moves only when a test moves it (monotonic seconds)."""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """Call it for the time; add to ``now`` to let time pass, or hand :meth:`sleep` to the code under test
    (it records each sleep in ``slept`` and moves the time on)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
