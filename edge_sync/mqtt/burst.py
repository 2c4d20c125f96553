"""The publishes of one read burst that go to the store as one command: consecutive telemetry
(or client attributes) PUBLISHes of the connection's device, at QoS 0 or 1, decoded from what
one read brought (mqtt/frames.py), become one PostTelemetry (or one PostClientAttributes): one
actor hop, one Append in the queue's group commit, one latest-telemetry update, one future.
Each publish still gets its own acknowledgement once that commit completes, in the order the
publishes came (mqtt/acknowledger.py).

What the store gets is what one command per publish gave, in the same order:

- **Telemetry**: the entries of every publish, concatenated in arrival order: one event per
  entry as before, with its own ``ts`` (a body without one is stamped when it is parsed, as
  before), and the latest value per key is the one with the highest ``ts``, the later one on a
  tie, as successive commands left it.
- **Client attributes**: the values of consecutive publishes are merged into one event while
  their keys are disjoint; a publish naming a key already held starts a new command, so every
  value the device published still reaches the store and the cloud, in order.

A burst never holds both kinds at once, nor more than ``MAX_ENTRIES`` entries: the connection
sends it (``take``) before a publish that cannot join it, before any other packet (so QoS 2
publishes, gateway publishes, RPC answers, subscriptions and the rest keep their order with
the telemetry), and at the end of every read burst. Pure but for the device service it hands
the command to; the server's loop thread only.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from edge_sync.api.device_service import DeviceService
from edge_sync.api.payloads import Entry
from edge_sync.mqtt.acks import Reply

__all__ = ["MAX_ENTRIES", "Burst"]

MAX_ENTRIES = 10_000
"""The most telemetry entries one command carries (the HTTP API's limit for one request); a
publish that would go beyond it starts the next command."""

_TELEMETRY, _ATTRIBUTES = 1, 2


class Burst:
    """Publishes held for one command of the connection's device."""

    __slots__ = ("_attributes", "_entries", "_kind", "_service", "_token", "replies")

    def __init__(self, service: DeviceService, token: str) -> None:
        self._service = service
        self._token = token
        self._kind = 0
        self._entries: list[Entry] = []
        self._attributes: dict[str, Any] = {}
        self.replies: list[tuple[Reply, int]] = []
        """The acknowledgement each publish held is owed (Reply.NONE at QoS 0), in order."""

    def __len__(self) -> int:
        """Publishes held."""
        return len(self.replies)

    def telemetry(self, entries: tuple[Entry, ...], reply: Reply, packet_id: int) -> bool:
        """Hold a telemetry publish; False when it cannot join what is held (take that
        first)."""
        if self._kind != _TELEMETRY:
            if self._kind:
                return False
            self._kind = _TELEMETRY
        elif len(self._entries) + len(entries) > MAX_ENTRIES:
            return False
        self._entries.extend(entries)
        self.replies.append((reply, packet_id))
        return True

    def attributes(self, values: tuple[tuple[str, Any], ...], reply: Reply,
                   packet_id: int) -> bool:
        """Hold a client attributes publish; False when it cannot join what is held (another
        kind, or a key already held: take that first)."""
        held = self._attributes
        if self._kind != _ATTRIBUTES:
            if self._kind:
                return False
            self._kind = _ATTRIBUTES
        elif any(key in held for key, _ in values):
            return False
        held.update(values)
        self.replies.append((reply, packet_id))
        return True

    def take(self) -> tuple[list[tuple[Reply, int]], Future[Any]]:
        """Hand what is held to the device service as one command and start empty: the
        replies owed and the command's commit. The device's token is checked first, as for
        every publish (Unauthorized: its device is gone; nothing is sent)."""
        kind, replies = self._kind, self.replies
        entries, attributes = self._entries, self._attributes
        self._kind, self.replies, self._entries, self._attributes = 0, [], [], {}
        device = self._service.authenticate(self._token)
        if kind == _TELEMETRY:
            return replies, self._service.post_entries(device.id, tuple(entries))
        return replies, self._service.post_client_attributes(device.id, tuple(attributes.items()))
