"""Circuit breaker for connection attempts: CLOSED -> OPEN after failure_threshold consecutive
failures; OPEN refuses attempts until open_s has passed, then HALF_OPEN allows one probe; a
successful probe closes it, a failed one opens it again. Pure logic; time is passed in."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.StrEnum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    open_s: float = 300.0


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self.times_opened = 0

    def allows(self, now: float) -> bool:
        """May an attempt start now? Moves OPEN -> HALF_OPEN when open_s has passed."""
        if self.state is BreakerState.OPEN and now - self._opened_at >= self.policy.open_s:
            self.state = BreakerState.HALF_OPEN
        return self.state is not BreakerState.OPEN

    def reopens_at(self) -> float:
        return self._opened_at + self.policy.open_s

    def record_success(self) -> BreakerState:
        self.failures = 0
        self.state = BreakerState.CLOSED
        return self.state

    def record_failure(self, now: float) -> BreakerState:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.policy.failure_threshold
        ):
            self.state = BreakerState.OPEN
            self._opened_at = now
            self.times_opened += 1
        return self.state
