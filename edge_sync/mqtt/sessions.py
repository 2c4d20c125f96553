"""MQTT sessions (MQTT 3.1.1 §3.1.2.4) as the edge keeps them: what one client's session
holds, and the store that keeps the sessions of clean-session-false clients while they are away.

A session holds the client's subscriptions with their granted QoS, the packet ids of its QoS 2
publishes that were taken (stored, or their commit pending) and await their PUBREL, and the
QoS 1 messages for it that await their PUBACK (the outbox: sent, or waiting for room under an
MQTT 5 client's Receive Maximum; sent again on a clean-session-false reconnect, with DUP when
they were sent before). Sessions are keyed by device and client id, so a device can
neither resume nor close another device's session by choosing its client id.

Kept in memory only, and bounded: at most ``max_kept`` sessions of disconnected clients (the
longest disconnected is dropped first), each dropped ``expiry_s`` after its client went away;
an agent restart loses them all (the client finds session-present 0 and subscribes again).
Pure: no loop, no thread, no clock (``now`` is passed in, monotonic seconds).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from edge_sync.devices.rpc import RpcSent
from edge_sync.mqtt.topics import matches

__all__ = ["MAX_AWAITING_RELEASE", "Key", "OutMessage", "Outbox", "Session", "SessionStore"]

Key = tuple[uuid.UUID, str]
"""A session's identity: the device (its access token) and the client id."""

MAX_PACKET_ID = 0xFFFF

MAX_AWAITING_RELEASE = 1_000
"""The most QoS 2 packet ids one session holds awaiting their PUBREL: a client that never
sends PUBREL would otherwise grow its session without end (the connection is closed when a
publish would go beyond it)."""


@dataclass(slots=True)
class OutMessage:
    """A QoS 1 PUBLISH the edge keeps for a client until its PUBACK. ``packet_id`` is 0 until
    it is first sent; it keeps its id when it is sent again (DUP) on a later connection.
    ``rpc``: the server-side RPC request it carries, in flight until that PUBACK (delivered
    then; given back to the device's queue when the message is lost)."""

    topic: str
    payload: bytes
    packet_id: int = 0
    rpc: RpcSent | None = None


class Outbox:
    """A session's QoS 1 messages awaiting their PUBACK, oldest first, at most ``limit``: the
    ones sent on the current connection (in flight), then the ones waiting to be sent on it
    (``due`` hands them out in order as the connection's quota leaves room).

    The quota (``restart``) is MQTT 5's send quota (§4.9): at most the client's Receive
    Maximum, and never more than ``limit``, QoS 1 messages in flight. A message dropped while
    in flight (to stay within ``limit``) still counts against it, and its packet id stays
    taken, until the client's PUBACK or the connection's end: the client holds it until then.
    Without a quota (MQTT 3.1 and 3.1.1) every message is due at once and a dropped one is
    forgotten. A packet id is given when a message is first sent: the ids taken then are only
    those in flight (a message sent on an earlier connection is older than any never sent, and
    goes first), fewer than 65535.

    Small while idle (every session has one): the wait list and the held ids are made on
    first use."""

    __slots__ = ("_earlier", "_held", "_inflight", "_limit", "_next_id", "_quota", "_waiting")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._inflight: dict[int, OutMessage] = {}  # sent on this connection, by packet id
        # not sent on this connection, oldest first: first the ``_earlier`` ones, sent on an
        # earlier connection (they keep their packet id), then ones never sent (id 0)
        self._waiting: deque[OutMessage] | None = None
        self._earlier = 0
        self._held: set[int] | None = None  # ids dropped in flight, still held by the client
        self._quota: int | None = None
        self._next_id = 1

    def __len__(self) -> int:
        waiting = self._waiting
        return len(self._inflight) + (len(waiting) if waiting is not None else 0)

    @property
    def waiting(self) -> int:
        """Messages kept and not sent on this connection (beyond the quota)."""
        return len(self._waiting) if self._waiting is not None else 0

    def kept(self) -> tuple[int, int]:
        """What is kept, as (unsent, unacked): the messages never written to the client, and
        the ones written (on this connection or an earlier one) that await their PUBACK."""
        unsent = self.waiting - self._earlier
        return unsent, len(self._inflight) + self._earlier

    def restart(self, quota: int | None) -> None:
        """A connection takes the session: nothing is in flight on it yet, every message kept
        is due again, oldest first (those sent before go with DUP); at most ``quota`` in
        flight at once (capped at ``limit``; None: no quota)."""
        if self._inflight:
            if self._waiting is None:
                self._waiting = deque()
            self._waiting.extendleft(reversed(self._inflight.values()))
            self._earlier += len(self._inflight)
            self._inflight = {}
        self._held = None
        self._quota = None if quota is None else max(1, min(quota, self._limit))

    def add(self, topic: str, payload: bytes, rpc: RpcSent | None = None) -> OutMessage | None:
        """Keep a message, to be sent once ``due``; the message dropped to stay within the
        limit (None when none was): the oldest that carries no RPC request, so a request's
        PUBACK still delivers it and the session's loss still gives it back to its device's
        queue. When every message kept carries one, the new message itself is dropped, never
        written: an attribute update then goes rather than a request the client may hold, and
        a request dropped so stays in flight until its expirationTime and is EXPIRED, truly
        never delivered (given back to the queue, it would come back here at once)."""
        message = OutMessage(topic, payload, rpc=rpc)
        dropped = None
        if len(self) >= self._limit:
            inflight, waiting = self._inflight, self._waiting
            packet_id = next((i for i, m in inflight.items() if m.rpc is None), 0)
            index = -1
            if not packet_id and waiting:
                index = next((n for n, m in enumerate(waiting) if m.rpc is None), -1)
            if index < 0 and not packet_id:  # every message kept carries a request
                return message
            if packet_id:
                dropped = inflight.pop(packet_id)
                if self._quota is not None:
                    if self._held is None:
                        self._held = set()
                    self._held.add(packet_id)
            else:
                assert waiting is not None
                dropped = waiting[index]
                del waiting[index]
                if index < self._earlier:
                    self._earlier -= 1
        if self._waiting is None:
            self._waiting = deque()
        self._waiting.append(message)
        return dropped

    def due(self) -> OutMessage | None:
        """The oldest message not sent on this connection, when the quota has room for it,
        taken off the wait: the caller sends it (``sending``) or gives it up."""
        if not self._waiting:
            return None
        if self._quota is not None and len(self._inflight) + (
                len(self._held) if self._held else 0) >= self._quota:
            return None
        return self._pop_waiting()

    def _pop_waiting(self) -> OutMessage:
        assert self._waiting is not None
        message = self._waiting.popleft()
        if self._earlier:
            self._earlier -= 1
        return message

    def sending(self, message: OutMessage) -> bool:
        """``message`` (from ``due``) is sent: in flight until its PUBACK, under a packet id
        no other message in flight uses. Whether it was sent before (DUP)."""
        dup = message.packet_id != 0
        if not dup:
            packet_id = self._next_id
            taken = self._inflight
            held = self._held or ()
            while packet_id in taken or packet_id in held:  # fewer than 65535 are taken
                packet_id = packet_id % MAX_PACKET_ID + 1
            self._next_id = packet_id % MAX_PACKET_ID + 1
            message.packet_id = packet_id
        self._inflight[message.packet_id] = message
        return dup

    def acked(self, packet_id: int) -> OutMessage | None:
        """The client's PUBACK: forget the message and return it (None when none kept had that
        id), and free its place in the quota. Only the messages sent on an earlier connection
        and not yet again are searched beyond those in flight: an unknown id costs nothing more
        while there are none."""
        message = self._inflight.pop(packet_id, None)
        if message is not None:
            return message
        held = self._held
        if held and packet_id in held:
            held.discard(packet_id)
            return None
        if not packet_id or not self._earlier:
            return None
        waiting = self._waiting
        assert waiting is not None
        for index in range(self._earlier):  # sent on an earlier connection, not yet again
            if waiting[index].packet_id == packet_id:
                message = waiting[index]
                del waiting[index]
                self._earlier -= 1
                return message
        return None

    def unacked(self) -> list[OutMessage]:
        """What is kept unacknowledged, oldest first: in flight, then waiting."""
        return [*self._inflight.values(), *(self._waiting or ())]


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

    def discard(self, key: Key) -> Session | None:
        """Drop the session kept for ``key`` (a clean start discards it): the session, None
        when none was kept."""
        kept = self._kept.pop(key, None)
        return None if kept is None else kept[0]

    def keep(self, key: Key, session: Session, *, now: float) -> list[tuple[Key, Session]]:
        """A clean-session-false client went away: keep its session; the sessions dropped to
        stay within ``max_kept`` (this one, when none may be kept), with their keys."""
        self._kept.pop(key, None)
        self._kept[key] = (session, now)
        dropped = []
        while len(self._kept) > self._max_kept:
            oldest, (kept, _) = self._kept.popitem(last=False)
            dropped.append((oldest, kept))
        return dropped

    def take_all(self) -> list[tuple[Key, Session]]:
        """Every session kept, taken, with its key (the server stops: they are lost)."""
        kept = [(key, session) for key, (session, _) in self._kept.items()]
        self._kept.clear()
        return kept

    def expire(self, now: float) -> list[tuple[Key, Session]]:
        """Drop the sessions left ``expiry_s`` ago or longer; them, with their keys."""
        dropped = []
        while self._kept:
            key, (session, left_at) = next(iter(self._kept.items()))
            if now - left_at < self._expiry_s:
                break
            del self._kept[key]
            dropped.append((key, session))
        return dropped
