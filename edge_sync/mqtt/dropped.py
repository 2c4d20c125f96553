"""Publishes a connection sends on topics the edge does not serve: ThingsBoard acknowledges
them and drops them (MqttTransportHandler, TOPIC_NAME_INVALID), and so does the edge. What this
module owns is the bounded memory of which such topics a connection has used, so each is logged
once: topics are told apart by their first TOPIC_KEY_CHARS characters (as logged), at most
MAX_DROPPED_TOPICS of them per connection; after that the caller logs one line that further
ones go unlogged and nothing more is remembered. Every drop is counted, remembered or not.

Thread-free; a connection's Inbound (the device API) and Gateway (the gateway API) each keep
one, on the server's loop thread, and do their own logging.
"""

from __future__ import annotations

import enum
from typing import Protocol

__all__ = ["MAX_DROPPED_TOPICS", "TOPIC_KEY_CHARS", "DroppedTopics", "Sighting"]

MAX_DROPPED_TOPICS = 1_000
"""Topics not served that one connection's log lines name, each once; the ones after are
dropped unlogged (one line says so). Bounds what a client publishing to ever new topics can
make the edge remember."""

TOPIC_KEY_CHARS = 128
"""A topic is remembered (and logged) by this many first characters: a topic of 60 KB costs
no more than a short one."""


class Sighting(enum.Enum):
    """What the caller logs for a dropped publish."""

    NEW = "new"  # a topic not seen before on this connection: one WARNING naming it
    LIMIT = "limit"  # the first topic past MAX_DROPPED_TOPICS: one line, further ones unlogged
    SEEN = "seen"  # logged already, or past the limit: nothing


class Increment(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class DroppedTopics:
    """The dropped topics of one connection. ``count`` (a bound counter child) goes up by one
    per dropped publish."""

    __slots__ = ("_count", "_over", "_seen")

    def __init__(self, count: Increment) -> None:
        self._count = count
        self._seen: set[str] = set()
        self._over = False

    def __len__(self) -> int:
        """Topics remembered (at most MAX_DROPPED_TOPICS)."""
        return len(self._seen)

    def drop(self, topic: str) -> Sighting:
        """Count one publish on ``topic`` dropped; what to log about it."""
        self._count.inc()
        key = topic[:TOPIC_KEY_CHARS]
        if self._over or key in self._seen:
            return Sighting.SEEN
        if len(self._seen) < MAX_DROPPED_TOPICS:
            self._seen.add(key)
            return Sighting.NEW
        self._over = True
        return Sighting.LIMIT
