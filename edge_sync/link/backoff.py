"""Reconnect backoff: exponential from an initial delay to a maximum, with jitter, reset only
after a connection has stayed up for a while. Pure logic, no threads; time is passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float = 3.0
    max_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +/- this fraction of the delay
    stable_after_s: float = 30.0


class Backoff:
    """Delays for consecutive failed attempts: initial, initial*m, ... capped at max, each
    spread by +/- jitter. ``connected(at)`` then ``disconnected(at)`` resets the sequence only
    when the connection lasted stable_after_s or more (a flapping link keeps backing off)."""

    def __init__(self, policy: BackoffPolicy, *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self.attempt = 0  # failures since the link was last up long enough (stable_after_s)
        self._up_since: float | None = None

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        p = self.policy
        base = min(p.max_s, p.initial_s * (p.multiplier ** self.attempt))
        self.attempt += 1
        spread = base * p.jitter
        return max(0.0, min(p.max_s * (1 + p.jitter), base + self._rng.uniform(-spread, spread)))

    def max_delay(self) -> float:
        """The longest delay (used after bad credentials: retry only at the maximum)."""
        return self.policy.max_s

    def connected(self, now: float) -> None:
        self._up_since = now

    def disconnected(self, now: float) -> None:
        if self._up_since is not None and now - self._up_since >= self.policy.stable_after_s:
            self.attempt = 0
        self._up_since = None
