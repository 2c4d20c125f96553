"""A clock a test sets by hand, for the components that take an injected clock
(edge_sync.clock.Clock): wall-clock ms, and a monotonic clock that moves with it."""

from __future__ import annotations


class SetClock:
    """``ms``: the time now, ms since the epoch; the test moves it."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.ms / 1000
