"""The drain figures of ``edge-sync status --watch``: events acknowledged per second and the
net change of the pending queue over a sliding window of status samples, and from them the
time to empty (pending / net drain rate). Pure: the clock is injected, nothing is printed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ACKED_SAMPLES = tuple(f'edge_sync_events_total{{lane="{lane}",outcome="acked"}}'
                      for lane in ("high", "normal"))
"""Where a running agent's status counts acknowledged events (its metrics snapshot's keys, one
per lane, summed); a stopped agent's figures fall back to the deployed count."""


@dataclass(frozen=True, slots=True)
class Drain:
    pending: int
    acked_per_s: float | None  # None until two samples
    net_per_s: float | None  # pending removed per second, net of new events (< 0: growing)
    empty_in_s: float | None  # None: unknown, or not draining

    @property
    def draining(self) -> bool:
        return self.net_per_s is not None and self.net_per_s > 0

    def text(self) -> str:
        if self.acked_per_s is None or self.net_per_s is None:
            return "drain:        — (measured from the next refresh)"
        head = f"drain:        {self.acked_per_s:.1f} events/s acknowledged, "
        if self.pending == 0:
            return head + "queue empty"
        if not self.draining:
            grows = -self.net_per_s
            return head + ("not draining" + (f" (queue grows by {grows:.1f}/s)" if grows else ""))
        assert self.empty_in_s is not None
        return head + f"pending falls {self.net_per_s:.1f}/s; empty in {duration(self.empty_in_s)}"

    def as_json(self) -> dict[str, Any]:
        return {"pending": self.pending, "acked_per_s": self.acked_per_s,
                "net_drain_per_s": self.net_per_s, "empty_in_s": self.empty_in_s}


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class DrainMeter:
    """Samples (time, acknowledged total, pending) kept for ``window_s``; each ``add`` answers
    the rates between the oldest kept sample and the new one."""

    def __init__(self, *, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, acked_total: int, pending: int) -> Drain:
        now = self._clock()
        self._samples.append((now, acked_total, pending))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        t0, acked0, pending0 = self._samples[0]
        dt = now - t0
        if dt <= 0:
            return Drain(pending, None, None, None)
        acked = max(0, acked_total - acked0) / dt  # a restart resets the counter: no rate
        net = (pending0 - pending) / dt
        empty_in = pending / net if net > 0 else (0.0 if pending == 0 else None)
        return Drain(pending, acked, net, empty_in)

    def add_status(self, status: dict[str, Any]) -> Drain:
        """A sample from ``GET /api/status`` (or the stopped agent's collect_status)."""
        metrics = status.get("metrics") or {}
        found = [metrics[key] for key in ACKED_SAMPLES if key in metrics]
        acked = sum(found) if found else status["queue"]["deployed"]
        return self.add(int(acked), int(status["queue"]["pending"]))
