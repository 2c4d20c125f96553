"""Which stream serves which edge: at most one per edge; a newer stream replaces the older."""

from __future__ import annotations

import threading
import uuid
from typing import Protocol


class Stream(Protocol):
    edge_id: uuid.UUID | None

    def wake(self) -> None:
        """Any thread: look at the downlink queue now."""

    def end(self, reason: str) -> None:
        """Any thread: end the stream (cancels the RPC)."""

    def resync(self, reason: str) -> None:
        """Any thread: run a full sync of the edge on this stream."""

    def summary(self) -> dict[str, object]:
        """Any thread: a JSON-able snapshot for the admin API."""


class StreamRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_edge: dict[uuid.UUID, Stream] = {}

    def claim(self, stream: Stream) -> Stream | None:
        """Make ``stream`` the edge's stream; the one it replaces (the caller ends it)."""
        assert stream.edge_id is not None
        with self._lock:
            if getattr(stream, "finished", False):
                return None  # its RPC already ended: registering it would leave a dead stream
            old = self._by_edge.get(stream.edge_id)
            self._by_edge[stream.edge_id] = stream
        return old if old is not stream else None

    def release(self, stream: Stream) -> None:
        if stream.edge_id is None:
            return
        with self._lock:
            if self._by_edge.get(stream.edge_id) is stream:
                del self._by_edge[stream.edge_id]

    def notify(self, edge_id: uuid.UUID) -> None:
        with self._lock:
            stream = self._by_edge.get(edge_id)
        if stream is not None:
            stream.wake()

    def request_sync(self, edge_id: uuid.UUID, reason: str) -> bool:
        """Ask the edge's stream for a full sync; False when the edge is not connected."""
        with self._lock:
            stream = self._by_edge.get(edge_id)
        if stream is None:
            return False
        stream.resync(reason)
        return True

    def is_connected(self, edge_id: uuid.UUID) -> bool:
        with self._lock:
            return edge_id in self._by_edge

    def snapshot(self) -> dict[uuid.UUID, dict[str, object]]:
        with self._lock:
            streams = dict(self._by_edge)
        return {edge_id: s.summary() for edge_id, s in streams.items()}

    def end_all(self, reason: str) -> None:
        with self._lock:
            streams = list(self._by_edge.values())
            self._by_edge.clear()
        for s in streams:
            s.end(reason)
