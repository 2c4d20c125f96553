"""When a device's entity actor asks the cloud for the device's shared attributes
(AttributesRequestMsg, SHARED_SCOPE): a device asked for a shared key the edge does not hold.

At most one request per device in ``interval_ms``: a device that keeps asking for a key the
cloud does not have either (or keeps asking while the link is down, when the request waits in
the queue) does not fill the queue with requests. The answer (an attributes downlink) is cached
by the DownlinkActor like any shared attribute.
"""

from __future__ import annotations

DEFAULT_REFETCH_INTERVAL_MS = 30_000


class FetchPolicy:
    __slots__ = ("_asked_at", "interval_ms")

    def __init__(self, interval_ms: int = DEFAULT_REFETCH_INTERVAL_MS) -> None:
        self.interval_ms = interval_ms
        self._asked_at: int | None = None

    def should_ask(self, now_ms: int) -> bool:
        """Whether to send a request now; if so it counts as sent."""
        if self._asked_at is not None and 0 <= now_ms - self._asked_at < self.interval_ms:
            return False
        self._asked_at = now_ms
        return True
