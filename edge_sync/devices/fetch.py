"""When a device's entity actor asks the cloud for the device's shared attributes
(AttributesRequestMsg, SHARED_SCOPE) and whether a device's read should wait for the answer.

A device asked for a shared key the edge does not hold. At most one request per device goes to
the cloud in ``interval_ms``, and none while the previous one still waits in the queue (being
appended, or appended and not yet deployed): a device that keeps asking for a key the cloud does
not have either, or keeps asking while the link is down, does not fill the queue with
requests. A read waits for the answer only while one may still come: after
a request was sent, until shared attributes arrived or the wait of the read that sent it ended
(a cloud that has no shared attributes for the device answers nothing at all, as ThingsBoard
does). The answer (an
attributes downlink) is cached by the DownlinkActor like any shared attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_REFETCH_INTERVAL_MS = 30_000
_APPENDING = -1  # the last request's event is being appended: its seq is not known yet


@dataclass(frozen=True, slots=True)
class FetchDecision:
    ask: bool  # send an AttributesRequestMsg now
    wait: bool  # an answer may come: the read waits for it (up to its own timeout)


class FetchPolicy:
    __slots__ = ("_answered", "_asked_at", "_pending_until", "_seq", "interval_ms")

    def __init__(self, interval_ms: int = DEFAULT_REFETCH_INTERVAL_MS) -> None:
        self.interval_ms = interval_ms
        self._asked_at: int | None = None
        self._pending_until = 0
        self._answered = False
        self._seq: int | None = None  # the last request's event, while it may be in the queue

    def decide(self, now_ms: int, wait_ms: int,
               pending: Callable[[int], bool] = lambda _seq: False) -> FetchDecision:
        """For a read missing shared keys that may wait ``wait_ms``: ask the cloud? wait for
        its answer? ``pending(seq)``: whether the event of seq still waits to be deployed
        (asked only when the interval has passed)."""
        asked = self._asked_at
        if (asked is None or not 0 <= now_ms - asked < self.interval_ms) \
                and not self._still_queued(pending):
            self._asked_at = now_ms
            self._pending_until = now_ms + wait_ms
            self._answered = False
            self._seq = _APPENDING
            return FetchDecision(ask=True, wait=True)
        return FetchDecision(ask=False, wait=not self._answered and now_ms < self._pending_until)

    def queued(self, seq: int | None) -> None:
        """The request asked for is in the queue as event ``seq`` (None: it could not be
        appended, so the next read due may ask again)."""
        if self._seq == _APPENDING:
            self._seq = seq

    def _still_queued(self, pending: Callable[[int], bool]) -> bool:
        seq = self._seq
        if seq is not None and seq != _APPENDING and not pending(seq):
            self._seq = seq = None
        return seq is not None

    def answered(self) -> None:
        """Shared attributes of the device arrived from the cloud."""
        self._answered = True
