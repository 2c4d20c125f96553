"""Which connection holds which session, on the MQTT server's loop: a connecting client takes
its session from the store (sessions.py), a leaving one gives it back (kept when its session is
not clean), and a client id of a device that connects while an older connection of the same
device and client id is open closes the older one first (MQTT 3.1.1 §3.1.4, step 2), which
gives its session back before the newer one takes it.

It also knows which connections authenticated as which device, from the CONNECT's
authentication to the connection's end, and which of them are gateways: when a commit changes
or removes a device's access token, or removes the device (storage/entity_store.Revocation),
every connection authenticated as that device closes unless its token still names it, and
every gateway forgets it among its devices, as ThingsBoard closes every session of the device
(DeviceActorMessageProcessor.processCredentialsUpdate, TransportSessionCloseReason
.CREDENTIALS_UPDATED; DefaultTransportService.onDeviceDeleted), a gateway's session of it
included (AbstractGatewaySessionHandler.deregisterSession).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Protocol

from loguru import logger

from edge_sync.devices.rpc import RpcSent
from edge_sync.errors import QueueFull
from edge_sync.metrics import Metrics, device_answers
from edge_sync.mqtt.sessions import Key, Session, SessionStore
from edge_sync.storage.entity_store import Revocation, Revoked

__all__ = ["Holder", "Lost", "SessionRegistry"]

class Lost(Protocol):
    """Told the RPC requests in flight a discarded session held for a device, and why
    (``quiet``: the discard is told in a line of its own, the server's stop: each device's
    requeue is a DEBUG line)."""

    def __call__(self, device_id: uuid.UUID, sent: Sequence[RpcSent], reason: str, *,
                 quiet: bool = False) -> None: ...

_log = logger.bind(component="mqtt")

SERVER_STOPPED = "the MQTT server stopped"


class Holder(Protocol):
    """A connection as the registry sees it."""

    peer: str

    def take_over(self) -> None:
        """Close: the same client connected again."""
        ...

    async def finished(self) -> None:
        """Return once the connection has ended and given its session back."""
        ...

    def revoke(self, revocation: Revocation) -> bool:
        """Close, unless the token it authenticated with still names its device (one log
        line: the device and why); whether it closes."""
        ...

    def forget_devices(self, revoked: Revoked) -> None:
        """A gateway: the devices of ``revoked`` it serves leave it."""
        ...


class SessionRegistry:
    """The server's loop thread only (the one writer of its counters). Each kept session it
    drops is logged and counted in ``edge_sync_mqtt_sessions_dropped_total{reason}``: ``max_sessions``
    (the one away longest, beyond ``mqtt.max_sessions``), ``expired``
    (``mqtt.session_expiry_s`` after its client left), ``takeover`` (its older connection did
    not end in time), ``server_stop`` (kept in memory only, lost when the server stops or
    restarts: ``stopped``, one line for them all); each QoS 1 message a session drops unacknowledged (beyond
    ``mqtt.max_unacked_per_session``) in ``edge_sync_mqtt_unacked_dropped_total``. The QoS 1
    messages a session still keeps when it is discarded (not kept at its connection's end,
    discarded by a clean start, dropped as above) are lost with it: each is counted in
    ``edge_sync_mqtt_messages_discarded_total{reason}``, ``session_unsent`` (never written to
    the client: it waited under the client's Receive Maximum) or ``session_unacked`` (written,
    its PUBACK not come), and their numbers are fields of the line that tells of the discard
    (the connection's disconnect line when the session ends with it); the connections count
    there too what is over a client's Maximum Packet Size (``max_packet_size``). A
    server-side RPC request among the messages a discarded session held is not lost for its
    device: it goes back to the device's queue (``lost``: the device service's rpc_unsent),
    QUEUED for the next subscriber, as ThingsBoard's device actor keeps a request not yet
    delivered for the next session (DeviceActorMessageProcessor.sendPendingRequests). It also
    holds the server's ``edge_sync_mqtt_publishes_dropped_total{reason}`` (``publishes_dropped``),
    which the connections count in: publishes acknowledged and dropped (mqtt/dropped.py)."""

    def __init__(self, store: SessionStore, *, takeover_timeout_s: float,
                 metrics: Metrics | None = None, lost: Lost | None = None) -> None:
        """``lost``: told the RPC requests of each device a discarded session held
        unacknowledged, and why (None: nobody is told)."""
        self.store = store
        self._lost = lost
        self._takeover_timeout = takeover_timeout_s
        self._holders: dict[Key, Holder] = {}
        self._stopped = False  # the server stopped: no session is kept any more
        # every authenticated connection by device, until it ends; the gateways among them
        self._authenticated: dict[uuid.UUID, set[Holder]] = {}
        self._gateways: set[Holder] = set()
        metrics = metrics if metrics is not None else Metrics()
        self.sessions_dropped = metrics.counter(
            "edge_sync_mqtt_sessions_dropped_total",
            "kept MQTT sessions dropped: beyond mqtt.max_sessions, expired "
            "(mqtt.session_expiry_s), their older connection did not end in time, or lost when "
            "the MQTT server stopped (server_stop)", ("reason",))
        self.unacked_dropped = metrics.counter(
            "edge_sync_mqtt_unacked_dropped_total",
            "QoS 1 messages to MQTT clients dropped unacknowledged: more than "
            "mqtt.max_unacked_per_session were kept for the client")
        discarded = metrics.counter(
            "edge_sync_mqtt_messages_discarded_total",
            "messages for MQTT clients discarded without their PUBACK: over the client's "
            "Maximum Packet Size (max_packet_size, not sent), an RPC request whose "
            "expirationTime passed before it was written (rpc_expired, not sent), or kept in a "
            "session discarded (session_unsent: never written to the client; session_unacked: "
            "written, no PUBACK)", ("reason",))
        self.too_large = discarded.labels(reason="max_packet_size")
        self.rpc_expired = discarded.labels(reason="rpc_expired")
        self._unsent = discarded.labels(reason="session_unsent")
        self._unacked = discarded.labels(reason="session_unacked")
        self.publishes_dropped = metrics.counter(
            "edge_sync_mqtt_publishes_dropped_total",
            "MQTT publishes acknowledged and dropped: on a topic outside the device API "
            "(unknown_topic) or a gateway topic the edge does not serve (unknown_gateway_topic)",
            ("reason",))
        self._connacks = device_answers(metrics)
        not_committed = metrics.counter(
            "edge_sync_mqtt_publishes_not_committed_total",
            "MQTT publishes (any QoS) the store did not commit, so their connection closed "
            "without their PUBACK (or PUBREC), also those still owed when it closed: storage_full "
            "(no room, as edge_sync_appends_refused_total counts it), "
            "not_confirmed (no commit within http.request_timeout_s: it may still be stored), "
            "failed (any other refusal)", ("reason",))
        self._not_committed = {reason: not_committed.labels(reason=reason)
                               for reason in ("storage_full", "not_confirmed", "failed")}

    def connack(self, code: int) -> None:
        """Count a CONNACK answered with return code ``code``."""
        self._connacks.labels(protocol="mqtt", code=str(code)).inc()

    def not_committed(self, error: BaseException | None, publishes: int) -> None:
        """Count ``publishes`` not committed: refused with ``error``, or (None) not confirmed
        in time."""
        reason = ("not_confirmed" if error is None else
                  "storage_full" if isinstance(error, QueueFull) else "failed")
        self._not_committed[reason].inc(publishes)

    def __len__(self) -> int:
        """Sessions held by open connections."""
        return len(self._holders)

    async def attach(self, key: Key, holder: Holder, *, clean: bool,
                     now: float) -> tuple[Session, bool]:
        """The session of ``key`` for ``holder`` and whether it was kept, once any older
        connection of ``key`` has ended (the newest connection wins)."""
        while (older := self._holders.get(key)) is not None and older is not holder:
            _log.bind(device=str(key[0]), client_id=key[1][:64], peer=holder.peer,
                      older_peer=older.peer).warning(
                "client id connected again from {}: closing its older connection from {}",
                holder.peer, older.peer)
            older.take_over()
            try:
                await asyncio.wait_for(older.finished(), self._takeover_timeout)
            except TimeoutError:
                self.sessions_dropped.labels(reason="takeover").inc()
                _log.bind(device=str(key[0])).warning(
                    "older connection from {} did not end in time; its session is dropped",
                    older.peer)
            if self._holders.get(key) is older:
                del self._holders[key]
        self._holders[key] = holder
        self.expire(now)
        if clean and (gone := self.store.discard(key)) is not None:
            unsent, unacked = self.discarded(gone, "its kept MQTT session was discarded by a "
                                             "clean start")
            if unsent or unacked:
                _log.bind(device=str(key[0]), client_id=key[1][:64], unsent=unsent,
                          unacked=unacked).info(
                    "kept MQTT session discarded: its client connected with a clean start; "
                    "{} messages kept for it never sent, {} sent and not acknowledged",
                    unsent, unacked)
        return self.store.open(key, clean=clean, now=now)

    def detach(self, key: Key, holder: Holder, session: Session, *, clean: bool,
               now: float) -> tuple[int, int]:
        """``holder`` ended: a session that is not clean is kept (when it still held it).
        What is lost with the session when it is not kept, counted: its QoS 1 messages never
        written to the client, and those written and not acknowledged ((0, 0) when kept)."""
        if self._holders.get(key) is not holder:
            # taken over without waiting for it: its session is not the current one
            return self.discarded(session, "its MQTT session was taken over")
        del self._holders[key]
        self.expire(now)
        if clean:
            return self.discarded(session, "its MQTT session ended with its connection (clean "
                                  "session)")
        if self._stopped:  # ended after the server's stop (``stopped``): nothing is kept now
            self.sessions_dropped.labels(reason="server_stop").inc()
            return self.discarded(session, SERVER_STOPPED, quiet=True)
        lost = (0, 0)
        for dropped_key, dropped in self.store.keep(key, session, now=now):
            self.sessions_dropped.labels(reason="max_sessions").inc()
            unsent, unacked = self.discarded(dropped, "its kept MQTT session was dropped "
                                             "(mqtt.max_sessions)")
            if dropped is session:
                lost = (unsent, unacked)
            _log.bind(device=str(dropped_key[0]), client_id=dropped_key[1][:64], unsent=unsent,
                      unacked=unacked).warning(
                "kept MQTT session dropped: more than mqtt.max_sessions are kept")
        return lost

    def stopped(self) -> None:
        """The server stopped, its connections ended (those that gave their session back):
        the sessions kept are lost with it (memory only). Each is counted in
        ``sessions_dropped{reason="server_stop"}``, the QoS 1 messages they kept as every
        discarded session's are (``discarded``), and one line tells them all: WARNING when
        messages were lost, INFO otherwise. A connection that ends later keeps nothing."""
        self._stopped = True
        lost = self.store.take_all()
        if not lost:
            return
        self.sessions_dropped.labels(reason="server_stop").inc(len(lost))
        unsent = unacked = 0
        for _, session in lost:
            u, a = self.discarded(session, SERVER_STOPPED, quiet=True)
            unsent, unacked = unsent + u, unacked + a
        _log.bind(sessions=len(lost), unsent=unsent, unacked=unacked).log(
            "WARNING" if unsent or unacked else "INFO",
            "MQTT server stopped: {} kept sessions lost with it (kept in memory only); {} "
            "messages kept for them never sent, {} sent and not acknowledged",
            len(lost), unsent, unacked)

    def discarded(self, session: Session, reason: str, *, quiet: bool = False) -> tuple[int, int]:
        """``session`` is discarded (``reason``): its QoS 1 messages are counted as lost
        (never written to the client, written and not acknowledged), and returned; the RPC
        requests among them go back to their device's queue (``quiet``: the discard has a line
        of its own, so each device's requeue is logged at DEBUG)."""
        unsent, unacked = session.outbox.kept()
        if unsent:
            self._unsent.inc(unsent)
        if unacked:
            self._unacked.inc(unacked)
        if (unsent or unacked) and self._lost is not None:
            by_device: dict[uuid.UUID, list[RpcSent]] = {}
            for message in session.outbox.unacked():
                if message.rpc is not None:
                    by_device.setdefault(message.rpc.device_id, []).append(message.rpc)
            for device_id, sent in by_device.items():
                self._lost(device_id, sent, reason, quiet=quiet)
        return unsent, unacked

    def enter(self, device_id: uuid.UUID, holder: Holder, *, gateway: bool) -> None:
        """``holder`` authenticated as ``device_id`` (a gateway: serves other devices): a
        revocation reaches it from now on, before it has its session (``leave`` at its end)."""
        self._authenticated.setdefault(device_id, set()).add(holder)
        if gateway:
            self._gateways.add(holder)

    def leave(self, device_id: uuid.UUID, holder: Holder) -> None:
        holders = self._authenticated.get(device_id)
        if holders is not None:
            holders.discard(holder)
            if not holders:
                del self._authenticated[device_id]
        self._gateways.discard(holder)

    def revoke(self, revoked: Revoked) -> int:
        """After a commit that changed or removed these devices' tokens, or removed the
        devices: every connection authenticated as one of them closes unless its token still
        names it (it connected with the new one), and every gateway forgets them among its
        devices. How many connections close."""
        closed = 0
        for device_id, revocation in revoked.items():
            for holder in list(self._authenticated.get(device_id, ())):
                closed += holder.revoke(revocation)
        for gateway in list(self._gateways):
            gateway.forget_devices(revoked)
        return closed

    def expire(self, now: float) -> None:
        for key, session in self.store.expire(now):
            self.sessions_dropped.labels(reason="expired").inc()
            unsent, unacked = self.discarded(session, "its kept MQTT session expired "
                                             "(mqtt.session_expiry_s)")
            _log.bind(device=str(key[0]), client_id=key[1][:64], unsent=unsent,
                      unacked=unacked).info("kept MQTT session expired (mqtt.session_expiry_s)")
