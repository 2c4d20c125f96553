"""At most one log line per interval for an event a peer can repeat at will: the first event of
an interval is logged, the others are counted, and their number is told in one line when the
interval ends (or with the next event after it, whichever the owner meets first).

Pure: no lock, no thread, no clock (``now`` is passed in, monotonic seconds). Its owner calls
it from one thread (an actor's) and arms its own timer for ``due``.
"""

from __future__ import annotations

__all__ = ["LogThrottle"]


class LogThrottle:
    """One kind of event, one line per ``interval_s`` at most, and the count of the rest."""

    __slots__ = ("_interval", "_started", "_unlogged")

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._started: float | None = None  # when the last line was logged
        self._unlogged = 0  # events since that line, not logged

    def event(self, now: float) -> tuple[bool, int]:
        """An event at ``now``: (log it?, the events not logged of the interval that ended
        before it, to be told first; 0 when none were or they were told already). The first
        event, and the first after an interval ended, is logged and starts a new interval."""
        started = self._started
        if started is not None and started <= now < started + self._interval:
            self._unlogged += 1
            return False, 0
        told, self._unlogged = self._unlogged, 0
        self._started = now
        return True, told

    def due(self) -> float | None:
        """When the interval with events not logged ends (None: no such events)."""
        if not self._unlogged or self._started is None:
            return None
        return self._started + self._interval

    def take(self, now: float) -> int:
        """The events not logged of an interval that has ended by ``now`` (0 when there are
        none, or the interval goes on), taken: told once."""
        due = self.due()
        if due is None or now < due:
            return 0
        told, self._unlogged = self._unlogged, 0
        return told

    def flush(self) -> int:
        """The events not logged so far, whether or not their interval has ended, taken (at
        the owner's stop: a burst is told in full)."""
        told, self._unlogged = self._unlogged, 0
        return told
