"""MQTT sessions (MQTT 3.1.1 §3.1.2.4) as the edge keeps them: what one client's session
holds, and the store that keeps the sessions of clean-session-false clients while they are away.

A session holds the client's subscriptions with their granted QoS, the packet ids of its QoS 2
publishes that were taken (stored, or their commit pending) and await their PUBREL, and the
QoS 1 messages the edge sent it that await their PUBACK (the outbox, resent with DUP on a
clean-session-false reconnect). Sessions are keyed by device and client id, so a device can
neither resume nor close another device's session by choosing its client id.

Kept in memory only, and bounded: at most ``max_kept`` sessions of disconnected clients (the
longest disconnected is dropped first), each dropped ``expiry_s`` after its client went away;
an agent restart loses them all (the client finds session-present 0 and subscribes again).
Pure: no loop, no thread, no clock (``now`` is passed in, monotonic seconds).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from edge_sync.mqtt.topics import matches

__all__ = ["MAX_AWAITING_RELEASE", "Key", "OutMessage", "Outbox", "Session", "SessionStore"]

Key = tuple[uuid.UUID, str]
"""A session's identity: the device (its access token) and the client id."""

MAX_PACKET_ID = 0xFFFF

MAX_AWAITING_RELEASE = 1_000
"""The most QoS 2 packet ids one session holds awaiting their PUBREL: a client that never
sends PUBREL would otherwise grow its session without end (the connection is closed when a
publish would go beyond it)."""


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A QoS 1 PUBLISH the edge sent a client, kept until its PUBACK."""

    packet_id: int
    topic: str
    payload: bytes


class Outbox:
    """A session's QoS 1 messages awaiting their PUBACK, oldest first, at most ``limit``."""

    __slots__ = ("_limit", "_messages", "_next_id")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._messages: dict[int, OutMessage] = {}  # in the order they were added
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, topic: str, payload: bytes) -> tuple[OutMessage, OutMessage | None]:
        """Keep a message under a packet id no kept message uses; with the oldest message,
        dropped to stay within the limit (None when none was)."""
        dropped = None
        if len(self._messages) >= self._limit:
            dropped = self._messages.pop(next(iter(self._messages)))
        packet_id = self._next_id
        while packet_id in self._messages:  # at most limit (< 65535) ids are taken
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        message = OutMessage(packet_id, topic, payload)
        self._messages[packet_id] = message
        return message, dropped

    def acked(self, packet_id: int) -> bool:
        """The client's PUBACK: forget the message (False when none had that id)."""
        return self._messages.pop(packet_id, None) is not None

    def unacked(self) -> list[OutMessage]:
        """What is still unacknowledged, oldest first (resent on reconnect)."""
        return list(self._messages.values())


class Session:
    """One client's MQTT session (device and client id): what it subscribed to, the QoS 2
    packet ids it sent that await their PUBREL, and the QoS 1 messages sent to it that await
    its PUBACK. Held by the connection of that client id while it is open (the server's loop
    thread only), and kept by the SessionStore while a clean-session-0 client is away."""

    __slots__ = ("awaiting_release", "outbox", "subscriptions")

    def __init__(self, unacked_limit: int) -> None:
        self.subscriptions: dict[str, int] = {}
        """Topic filter -> granted QoS, in the order they were subscribed."""
        self.awaiting_release: dict[int, Future[Any] | None] = {}
        """Packet id of each of the client's QoS 2 publishes that was taken and awaits the
        client's PUBREL -> the commit that stores it while that is pending, None once it is
        stored (or there was nothing to store). A PUBLISH again with one of these ids is a
        resend: it is not stored again; its PUBREC is due once that commit is done, whichever
        connection of the session took the original (a takeover does not wait for the older
        connection's commits). An id leaves on PUBREL, or when its commit fails (the resend is
        then stored)."""
        self.outbox = Outbox(unacked_limit)

    def settled(self, packet_id: int, commit: Future[Any]) -> None:
        """The commit of QoS 2 publish ``packet_id`` is done: stored, its id stays until the
        PUBREL; failed (or cancelled), the id leaves, so the client's resend is stored. Nothing
        changes when the id was released, or taken by another publish, meanwhile."""
        if self.awaiting_release.get(packet_id) is not commit:
            return
        if commit.cancelled() or commit.exception() is not None:
            del self.awaiting_release[packet_id]
        else:
            self.awaiting_release[packet_id] = None

    def qos_for(self, topic: str) -> int:
        """The QoS to publish ``topic`` at: the highest granted by a matching subscription, 0
        when none matches (as ThingsBoard's MqttDeviceAwareSessionContext.getQoSForTopic)."""
        granted = [qos for topic_filter, qos in self.subscriptions.items()
                   if matches(topic_filter, topic)]
        return max(granted, default=0)


class SessionStore:
    """The sessions of disconnected clean-session-false clients, in the order they were left."""

    def __init__(self, *, max_kept: int, expiry_s: float, unacked_limit: int) -> None:
        self._max_kept = max_kept
        self._expiry_s = expiry_s
        self._unacked_limit = unacked_limit
        self._kept: OrderedDict[Key, tuple[Session, float]] = OrderedDict()

    @property
    def expiry_s(self) -> float:
        """How long a session is kept after its client left (mqtt.session_expiry_s)."""
        return self._expiry_s

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: object) -> bool:
        return key in self._kept

    def open(self, key: Key, *, clean: bool, now: float) -> tuple[Session, bool]:
        """The session a connecting client gets, and whether it was kept (CONNACK's session
        present flag). A clean session discards what was kept (MQTT-3.1.2-6)."""
        self.expire(now)
        kept = self._kept.pop(key, None)
        if clean or kept is None:
            return Session(self._unacked_limit), False
        return kept[0], True

    def keep(self, key: Key, session: Session, *, now: float) -> list[Key]:
        """A clean-session-false client went away: keep its session; the keys of the sessions
        dropped to stay within ``max_kept`` (this one, when none may be kept)."""
        self._kept.pop(key, None)
        self._kept[key] = (session, now)
        dropped = []
        while len(self._kept) > self._max_kept:
            oldest, _ = self._kept.popitem(last=False)
            dropped.append(oldest)
        return dropped

    def expire(self, now: float) -> list[Key]:
        """Drop the sessions left ``expiry_s`` ago or longer; their keys."""
        dropped = []
        while self._kept:
            key, (_, left_at) = next(iter(self._kept.items()))
            if now - left_at < self._expiry_s:
                break
            del self._kept[key]
            dropped.append(key)
        return dropped
