"""What the link needs to know about the events it read for the uplink once the cloud answers:
each event's lane and created_time (when the edge accepted it), until it is acknowledged or
dead-lettered. From that, an acknowledged batch's count per lane and its accept-to-acknowledge
latencies (``edge_sync_sync_latency_seconds``, the status' ``sync_latency_ms``).

Pure and thread-free: the ConnectionActor's thread only. Entries live as long as the stream: a
new stream reads every unacknowledged event again, so ``clear`` when the window resets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edge_sync.storage.records import Lane, StoredEvent


@dataclass(slots=True)
class Acked:
    """An acknowledged batch: events per lane, and the latency in seconds of each event whose
    created_time was known."""

    high: int = 0
    normal: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def max_latency_ms(self) -> int | None:
        return None if not self.latencies_s else round(max(self.latencies_s) * 1000)


class SentEvents:
    def __init__(self) -> None:
        self._events: dict[int, tuple[int, Lane]] = {}

    def __len__(self) -> int:
        return len(self._events)

    def read(self, events: Iterable[StoredEvent]) -> None:
        """Events read for the uplink (sent now or later)."""
        self._events.update((e.seq, (e.created_time, e.lane)) for e in events)

    def acked(self, seqs: Sequence[int], now_ms: int) -> Acked:
        """The cloud acknowledged ``seqs`` at ``now_ms``: forget them; their lanes and latencies
        (a clock stepped back gives 0, never a negative latency). A seq never read (not
        expected) counts in the normal lane, without a latency."""
        out = Acked()
        pop = self._events.pop
        latencies = out.latencies_s
        for seq in seqs:
            found = pop(seq, None)
            if found is None:
                out.normal += 1
                continue
            created, lane = found
            if lane is Lane.HIGH:
                out.high += 1
            else:
                out.normal += 1
            latencies.append(max(0, now_ms - created) / 1000)
        return out

    def forget(self, seq: int) -> None:
        """``seq`` was dead-lettered."""
        self._events.pop(seq, None)

    def clear(self) -> None:
        self._events.clear()
