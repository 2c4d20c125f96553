"""One client's MQTT connection (3.1, 3.1.1 or 5: the CONNECT's protocol level chooses the
packet codec for the whole connection, mqtt/codec.py; all else is shared), on the MQTT
server's loop: CONNECT with the access token
as username and the client's session (clean or kept, mqtt/registry.py); PUBLISH at QoS 0, 1 and
2 (what it asks for: mqtt/inbound.py); SUBSCRIBE / UNSUBSCRIBE (served by mqtt/subscriptions.py
and the gateway); what the edge publishes, at the QoS the subscription was granted (at QoS 1
kept in the session's outbox until its PUBACK, and over MQTT 5 no more awaiting it than the
client's Receive Maximum); PINGREQ, DISCONNECT. A provision-only CONNECT is served apart
(mqtt/provision.py).

The delivery contract of the HTTP API holds: a QoS 1 PUBLISH is acknowledged (PUBACK), and a
QoS 2 one received (PUBREC), only once its events are committed, in the order the PUBLISHes
came (MQTT 3.1.1 §4.6, mqtt/acks.py); one slow commit holds back the acknowledgements behind
it, never the reading, until ``max_inflight`` publishes wait: then the socket is not read until
commits catch up (TCP backpressure on that client alone). A QoS 2 publish whose packet id
awaits its PUBREL is a resend: not stored again, acknowledged once the original is stored
(whichever connection of the session took it). What ThingsBoard does is
followed: credentials that name no device get CONNACK 5 (2 for a client id alone:
``refusal_code``); a body that cannot be parsed closes the connection
(the acknowledgements due before it are sent first); a publish whose commit fails (storage
full, a restarting component, no confirmation within the commit timeout) closes the connection
without its acknowledgement; the retain flag is ignored (nothing is retained) and a will
message is never published. A packet larger than ``max_message_bytes`` closes the connection
before its body is read. Packets are decoded and encoded by amqtt's codec (MQTT 3.1 and
3.1.1) or the ``mqtt5`` package's (MQTT 5, whose reason codes and CONNACK properties are in
mqtt/codec.py; an MQTT 5 client is sent a DISCONNECT with its reason code before the server
closes the connection).

Reading: what the socket has is read in one call and every packet in it is decoded from memory
(mqtt/frames.py); the telemetry and attributes publishes of such a burst go to the store as
one command per run of them (mqtt/burst.py). The keep-alive is one timer per connection, pushed
on when it comes due (nothing is scheduled per packet): a client that sends no whole packet for
1.5 times its keep-alive is disconnected.

Writing: a client that stops reading cannot hold its connection forever, keep-alive or not.
Once the socket's write buffer is over its high-water mark the connection is not read until
the client reads, for at most 1.5 times its keep-alive (the commit timeout without one);
more than ``Limits.max_write_buffer`` bytes waiting (what the edge publishes is written
whether the connection is read or not) closes it at once. A closing connection whose client
reads nothing of what is left is aborted after the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from amqtt.errors import AMQTTError
from amqtt.mqtt import packet_dict
from amqtt.mqtt.connack import (
    CONNECTION_ACCEPTED,
    IDENTIFIER_REJECTED,
    NOT_AUTHORIZED,
    UNACCEPTABLE_PROTOCOL_VERSION,
)
from amqtt.mqtt.packet import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBLISH,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
)
from amqtt.mqtt.pingresp import PingRespPacket
from loguru import logger

from edge_sync.api import client_rpc
from edge_sync.api.device_service import DeviceService
from edge_sync.devices.rpc import RpcSent
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import BadRequest, Unauthorized
from edge_sync.mqtt import provision, topics
from edge_sync.mqtt.acknowledger import Acknowledger
from edge_sync.mqtt.acks import Pending, Reply
from edge_sync.mqtt.burst import Burst
from edge_sync.mqtt.codec import (
    MQTT5,
    Codec,
    Connect,
    Mqtt5,
    Mqtt311,
    ProtocolViolation,
    Reason,
    protocol_level,
    refusal_reason,
)
from edge_sync.mqtt.dropped import DroppedTopics
from edge_sync.mqtt.frames import Frame, FrameReader, Malformed, Oversize
from edge_sync.mqtt.gateway import Gateway
from edge_sync.mqtt.inbound import Inbound, attribute_values, telemetry_entries
from edge_sync.mqtt.registry import SessionRegistry
from edge_sync.mqtt.sessions import MAX_AWAITING_RELEASE, Key, Session
from edge_sync.mqtt.subscriptions import DRAIN_S, Subscriptions
from edge_sync.mqtt.topics import Publish, classify
from edge_sync.storage.entity_store import Revocation, Revoked
from edge_sync.storage.records import Device

_log = logger.bind(component="mqtt")

PROTOCOL_LEVELS = (3, 4, MQTT5)
"""MQTT 3.1 and 3.1.1 (amqtt's codec) and MQTT 5 (the ``mqtt5`` package's: mqtt/codec.py); any
other level is refused with CONNACK 1."""
MAX_GRANTED_QOS = 1
"""The edge publishes at QoS 0 or 1: a subscription asking for 2 is granted 1 (ThingsBoard's
MAX_SUPPORTED_QOS_LVL)."""
SUBSCRIBE_FAILURE = 0x80
BURST_MAX = 256
"""The most packets handled from what was read before the publishes held for one command
(mqtt/burst.py) go to the store: a bound on the latency a burst adds."""
_PINGRESP = bytes(PingRespPacket.build().to_bytes())


WRITE_BUFFER_MIN = 1 << 20
"""The least a connection may have waiting to be written (its client not reading) before it is
closed; ``Limits.max_write_buffer``."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What bounds every connection of a server (the ``mqtt.*`` settings, and
    ``http.request_timeout_s`` as the commit timeout): the largest packet read
    (``max_message_bytes``; its fixed header refuses a larger one), how long a publish's commit
    is awaited before the connection closes (``commit_timeout_s``), how long a new connection
    has to send CONNECT and a TLS one to finish its handshake (``connect_timeout_s``), and the
    publishes a connection may have accepted and not yet acknowledged before it is no longer
    read (``max_inflight``); and what follows from them (``close_s``, ``max_write_buffer``)."""

    max_message_bytes: int
    commit_timeout_s: float
    connect_timeout_s: float
    max_inflight: int

    @property
    def close_s(self) -> float:
        """The longest a connection takes to end once it closes, before it gives its session
        back: what its subscriptions were given (DRAIN_S) and the acknowledgements due (the
        commit timeout) are waited for at the same time."""
        return max(DRAIN_S, self.commit_timeout_s)

    @property
    def max_write_buffer(self) -> int:
        """Bytes a connection may have waiting to be written, its client not reading them
        (what the edge publishes to it, acknowledgements, PINGRESPs), before it is closed:
        two of the largest packets, at least WRITE_BUFFER_MIN."""
        return max(WRITE_BUFFER_MIN, 2 * self.max_message_bytes)


def refusal_code(connect: Connect) -> int:
    """The CONNACK return code for a CONNECT whose credentials name no device, as ThingsBoard
    answers it over MQTT 3.1.1 (MqttTransportHandler.onValidateDeviceResponse, mapped by
    ReturnCodeResolver.getConnectionReturnCode): 2, identifier rejected, when it has neither
    a username nor a password but a client id that is not blank (CLIENT_IDENTIFIER_NOT_VALID);
    5, not authorized, otherwise (BAD_USERNAME_OR_PASSWORD and NOT_AUTHORIZED_5 both map to
    it)."""
    if connect.level == MQTT5:
        return refusal_reason(connect)
    if (connect.username is None and connect.password is None and not connect.assigned
            and connect.client_id.strip()):
        return int(IDENTIFIER_REJECTED)
    return int(NOT_AUTHORIZED)


class _Close(Exception):
    """End the connection: ``graceful`` sends the acknowledgements already due first.
    ``topic``: the publish's topic, logged as a field (a topic may hold any character, a line
    break too: it is never formatted into the message). ``code``: the reason code of the
    DISCONNECT an MQTT 5 client is sent (None: none, after a refusing CONNACK)."""

    def __init__(self, reason: str, *, graceful: bool = False, topic: str | None = None,
                 code: int | None = Reason.UNSPECIFIED_ERROR) -> None:
        super().__init__(reason)
        self.graceful = graceful
        self.topic = topic
        self.code = code


class MqttConnection:
    """The server's loop thread only. What an idle connection holds is kept small (10,000 of
    them are a benchmark target): slots, and the parts a device may never use (its
    subscriptions, the gateway API for a device that is not a gateway, the handling of other
    topics, the held publishes, a bound logger) are made on first use."""

    __slots__ = ("_accepted", "_acks", "_alive", "_burst", "_clean", "_codec", "_device",
                 "_discarded", "_dropped", "_ended", "_ending", "_expired", "_failed", "_finished", "_frames",
                 "_gateway", "_goodbye", "_idle", "_inbound", "_interrupted", "_key",
                 "_last_packet", "_limits", "_link_connected", "_loop", "_not_committed",
                 "_on_pause", "_oversize", "_paused", "_polls", "_reader", "_registry", "_revoked",
                 "_service", "_session", "_subscriptions", "_taken_over", "_task", "_writer",
                 "peer")

    def __init__(
        self,
        service: DeviceService,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        limits: Limits,
        registry: SessionRegistry,
        link_connected: Callable[[], bool] | None = None,
        polls: set[LongPoll] | None = None,
        on_pause: Callable[[], None] | None = None,
    ) -> None:
        self._service = service
        self._registry = registry
        self._link_connected = link_connected  # None: no cloud link (attribute requests)
        self._polls: set[LongPoll] = polls if polls is not None else set()
        self._on_pause = on_pause
        self._reader = reader
        self._frames = FrameReader(limits.max_message_bytes)
        self._codec: Codec = Mqtt311(self._frames, 4)  # until CONNECT says otherwise
        self._goodbye: int | None = None  # the reason code of the DISCONNECT due (MQTT 5)
        self._accepted = False  # CONNACK 0 sent (a DISCONNECT may follow)
        self._writer = writer
        self._limits = limits
        peername = writer.get_extra_info("peername")
        self.peer = (f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple)
                     else str(peername))
        self._loop = asyncio.get_running_loop()
        self._device: Device | None = None
        self._key: Key | None = None
        self._clean = True
        self._session: Session | None = None
        self._subscriptions: Subscriptions | None = None
        self._gateway: Gateway | None = None
        self._inbound: Inbound | None = None
        self._burst: Burst | None = None
        self._acks = Acknowledger(self._loop, send=self._write, fail=self._fail,
                                  commit_timeout_s=limits.commit_timeout_s,
                                  max_inflight=limits.max_inflight, lost=self._lost)
        self._task: asyncio.Task[Any] | None = None
        self._taken_over = False
        self._revoked = False  # its device's token was changed or removed, or the device deleted
        self._idle: float | None = None  # 1.5 times the keep-alive (s); None: no keep-alive
        self._last_packet = 0.0  # loop time of the last burst that brought a whole packet
        self._alive: asyncio.TimerHandle | None = None  # the keep-alive check
        self._expired = False
        self._interrupted = False  # the reading task was woken to end (a failure, a stuck client)
        self._paused = False  # not read: the inflight cap (not the client's silence)
        self._failed = False
        self._not_committed = 0  # publishes whose commit failed or was not confirmed in time
        self._dropped = 0  # QoS 1 messages dropped unacknowledged (mqtt.max_unacked_per_session)
        self._oversize = 0  # messages not sent: over the client's Maximum Packet Size (MQTT 5)
        self._discarded = (0, 0)  # the session's QoS 1 messages lost with it: unsent, unacked
        self._ending = False
        self._finished = False
        self._ended: asyncio.Event | None = None  # made when the registry waits for the end

    @property
    def results_pending(self) -> int:
        """RPC requests and attribute updates the device's session took for this connection's
        subscriptions, its sub-devices' too for a gateway, and has not handed over yet (their
        delivery being recorded)."""
        own = self._subscriptions.pending if self._subscriptions is not None else 0
        return own + (self._gateway.results_pending if self._gateway is not None else 0)

    @property
    def unacked(self) -> int:
        """QoS 1 messages its session keeps for the client: written and awaiting their PUBACK,
        or waiting to be written under the client's Receive Maximum."""
        return len(self._session.outbox) if self._session is not None else 0

    async def run(self) -> None:
        self._task = asyncio.current_task()
        graceful = False
        try:
            await self._serve()
        except _Close as close:
            graceful = close.graceful
            log = self._logger()
            if close.topic is not None:
                log = log.bind(topic=close.topic[:128])
            log.warning("closing the connection: {}", close)
            self._goodbye = close.code
        except ProtocolViolation as exc:
            self._logger().warning("closing the connection: {}", exc)
            self._goodbye = exc.reason
        except (Oversize, Malformed) as exc:
            self._logger().warning("closing the connection: {}", exc)
            self._goodbye = (Reason.PACKET_TOO_LARGE if isinstance(exc, Oversize)
                             else Reason.MALFORMED_PACKET)
        except (asyncio.IncompleteReadError, ConnectionError, AMQTTError, TimeoutError) as exc:
            self._logger().debug("connection ended: {!r}", exc)
        except asyncio.CancelledError:
            if self._expired:
                self._goodbye = Reason.KEEP_ALIVE_TIMEOUT
                self._logger().debug(
                    "connection ended: nothing received for {:g}s (1.5 times its keep-alive)",
                    self._idle)
            elif self._interrupted or self._taken_over:
                # its reason is logged already (a takeover by the registry, one line)
                if self._taken_over:
                    self._goodbye = Reason.SESSION_TAKEN_OVER
            elif self._revoked:  # logged by revoke; what was taken before is acknowledged
                graceful = True
                self._goodbye = Reason.NOT_AUTHORIZED
            else:
                raise
        finally:
            await self._finish(graceful)

    def take_over(self) -> None:
        """The registry: the same device and client id connected again; end this one."""
        if not self._ending and self._task is not None:
            self._taken_over = True
            self._task.cancel()

    def revoke(self, revocation: Revocation) -> bool:
        """The registry, after a commit that changed or removed the device's access token, or
        removed the device: the connection closes, unless the token it authenticated with
        still names its device (it connected with the new one). One INFO line with the device
        and the reason, never the token. The publishes taken before are acknowledged once
        committed (as when a publish is refused), nothing more is read, and a gateway's
        devices disconnect with it."""
        device = self._device
        if (device is None or self._ending or self._revoked or self._taken_over
                or self._task is None or self._service.still_authenticates(device)):
            return False
        self._revoked = True
        client_id = self._key[1] if self._key is not None else ""
        self._logger().bind(client_id=client_id[:64], reason=revocation.reason).info(
            "closing the MQTT connection of device {}: {}", device.name, revocation.why)
        self._task.cancel()
        return True

    def forget_devices(self, revoked: Revoked) -> None:
        if self._gateway is not None and not self._ending:
            self._gateway.forget(revoked)

    async def finished(self) -> None:
        if self._finished:
            return
        if self._ended is None:
            self._ended = asyncio.Event()
        await self._ended.wait()

    # -- reading -------------------------------------------------------------------------------

    async def _serve(self) -> None:
        connect = await asyncio.wait_for(self._read_connect(), self._limits.connect_timeout_s)
        if connect is None:
            return
        if connect.level in PROTOCOL_LEVELS and provision.is_provision(
                connect.username, None if connect.assigned else connect.client_id):
            await self._provision_only(connect)
            return
        keep_alive = await self._connect(connect)
        loop, frames, reader = self._loop, self._frames, self._reader
        transport = self._writer.transport
        high_water = transport.get_write_buffer_limits()[1]
        self._last_packet = loop.time()
        if keep_alive:
            self._idle = keep_alive * 1.5
            self._alive = loop.call_at(self._last_packet + self._idle, self._check_alive)
        while True:
            if self._acks.full:
                await self._wait_for_room()
            if self._failed:  # a commit failed: nothing more is taken (the close is under way)
                return
            buffered = len(frames)
            more = self._read_burst()
            if len(frames) != buffered:  # whole packets came (a part of one is not a packet)
                self._last_packet = loop.time()
            if more is None or self._failed:  # DISCONNECT, or a commit failed meanwhile
                return
            if more:  # BURST_MAX handled and more may be buffered: let the others run first
                await asyncio.sleep(0)
            else:
                data = await reader.read(frames.read_size)
                if not data:
                    return
                frames.feed(data)
            if transport.get_write_buffer_size() > high_water:  # drain() would wait
                await self._drain()

    def _linger_s(self) -> float:
        """How long a client may leave what is written to it unread: 1.5 times its
        keep-alive, or the commit timeout when it has none."""
        return self._idle if self._idle is not None else self._limits.commit_timeout_s

    async def _drain(self) -> None:
        """Wait until the client has read enough of what was written to it (TCP flow control:
        nothing more is read from it meanwhile), for at most ``_linger_s``: a client that stops
        reading does not hold the connection forever, keep-alive or not."""
        linger = self._linger_s()
        try:
            await asyncio.wait_for(self._writer.drain(), linger)
        except TimeoutError:
            waiting = self._writer.transport.get_write_buffer_size()
            raise _Close(f"the client read nothing of the {waiting} bytes written to it for "
                         f"{linger:g}s", code=None) from None

    def _check_alive(self) -> None:
        """The keep-alive: one timer per connection, pushed on to 1.5 times the keep-alive
        after the last packet each time it comes due (not a timer per packet). A client
        silent that long is disconnected (MQTT 3.1.1 §3.1.2.10); one whose reading is paused
        by the inflight cap is not silent."""
        self._alive = None
        if self._ending or self._idle is None:
            return
        now = self._loop.time()
        if self._paused:
            self._last_packet = now
        due = self._last_packet + self._idle
        if due > now:
            self._alive = self._loop.call_at(due, self._check_alive)
        elif self._task is not None:
            self._expired = True
            self._task.cancel()

    def _interrupt(self) -> None:
        """End the connection from a callback (a failed commit, a client that reads nothing):
        the reading task is woken wherever it waits (the socket, room under the inflight cap,
        a drain). Not from the task itself, which sees ``_failed`` before it reads again; not
        once it is ending."""
        task = self._task
        if task is not None and not self._ending and task is not asyncio.current_task():
            self._interrupted = True
            task.cancel()

    def _read_burst(self) -> bool | None:
        """Handle the packets buffered, up to BURST_MAX or until the inflight cap is reached;
        the telemetry (or attributes) publishes among them go to the store as one command per
        run of them (mqtt/burst.py). True: stopped at a limit, more may be buffered; False:
        everything buffered was handled; None: DISCONNECT. Whatever was held goes to the store
        before anything propagates: the publishes before a bad one are stored."""
        try:
            outcome = self._packets()
        except BaseException:
            self._send_burst(quiet=True)
            raise
        self._send_burst()
        return outcome

    def _packets(self) -> bool | None:
        frames, acks, burst = self._frames, self._acks, self._burst
        if burst is None:  # made once the connection sends more than CONNECT
            if not len(frames):
                return False
            assert self._device is not None
            burst = self._burst = Burst(self._service, self._device.token)
        cap = self._limits.max_inflight
        for _ in range(BURST_MAX):
            if len(acks) + len(burst) >= cap:
                return True
            if self._failed:  # a commit failed: what is buffered is not taken
                return False
            frame = frames.next()
            if frame is None:
                return False
            kind = frame.kind
            if kind == PUBLISH:
                self._publish(frame)
            elif kind == PUBACK:
                assert self._session is not None
                outbox = self._session.outbox
                acked = outbox.acked(self._codec.packet_id(frame))
                if acked is not None and acked.rpc is not None:
                    # the RPC request it carried is DELIVERED (MqttTransportHandler
                    # .processMqttMsg, case PUBACK: rpcAwaitingAck, RpcStatus.DELIVERED)
                    self._service.rpc_acknowledged(acked.rpc)
                if outbox.waiting:  # room under the client's Receive Maximum (MQTT 5)
                    self._send_due()
            else:
                self._send_burst()  # what came before it is handed over first, in order
                if not self._control(frame):
                    return None
        return True

    def _control(self, frame: Frame) -> bool:
        """A packet other than PUBLISH and PUBACK; False: DISCONNECT."""
        kind = frame.kind
        if kind == PUBREL:
            packet_id = self._codec.packet_id(frame)
            assert self._session is not None
            self._session.awaiting_release.pop(packet_id, None)
            self._acks.now(Reply.PUBCOMP, packet_id)
        elif kind == PINGREQ:
            self._write(_PINGRESP)
        elif kind == DISCONNECT:
            if self._codec.level == MQTT5:
                self._disconnect5(frame)
            return False
        elif kind == SUBSCRIBE:
            self._subscribe(frame)
        elif kind == UNSUBSCRIBE:
            self._unsubscribe(frame)
        elif kind in packet_dict and kind != CONNECT:
            self._codec.check(frame)  # decoded, nothing to do
        else:
            raise _Close(f"unexpected packet of type {kind}", code=Reason.PROTOCOL_ERROR)
        return True

    def _disconnect5(self, frame: Frame) -> None:
        """An MQTT 5 DISCONNECT may change the session expiry interval (§3.14.2.2.2): 0 ends
        the session with the connection; a CONNECT with 0 cannot set one (a protocol error:
        the session is not kept)."""
        packet = Mqtt5.decode(frame)
        expiry = getattr(packet, "session_expiry_interval", None)
        if expiry is not None:
            self._clean = self._clean or expiry == 0

    async def _wait_for_room(self) -> None:
        """Stop reading until the commits catch up: the client's TCP window fills, and it
        waits, not the other clients."""
        if self._on_pause is not None:
            self._on_pause()
        self._logger().bind(inflight=len(self._acks)).debug(
            "reading paused: {} publishes await their commit (mqtt.max_inflight_per_client)",
            len(self._acks))
        self._paused = True
        try:
            await self._acks.room()
        finally:
            self._paused = False
            self._last_packet = self._loop.time()
        if self._writer.is_closing():
            raise ConnectionError("closed while reading was paused")

    async def _read_connect(self) -> Connect | None:
        """The first packet, which must be CONNECT (None: closed before it). Its protocol
        level chooses the codec of the connection: MQTT 5's for level 5, amqtt's else."""
        frames = self._frames
        while (frame := frames.next()) is None:
            data = await self._reader.read(frames.read_size)
            if not data:
                return None
            frames.feed(data)
        if frame.kind != CONNECT:
            raise _Close(f"first packet is of type {frame.kind}, not CONNECT", code=None)
        if protocol_level(frame) == MQTT5:
            limits = self._limits
            codec = Mqtt5(max_body=limits.max_message_bytes, receive_max=limits.max_inflight,
                          session_expiry_s=self._registry.store.expiry_s)
            self._codec = codec
            try:
                return codec.connect(frame)
            except ProtocolViolation as exc:  # MQTT 5 §3.1.4: CONNACK with its reason code
                self._registry.connack(exc.reason)
                self._write(codec.connack(exc.reason, False))
                raise _Close(f"{exc}: refused with CONNACK {exc.reason:#04x}", code=None) from exc
        return Mqtt311.connect(frames.packet(frame))

    async def _connect(self, connect: Connect) -> int:
        """Authenticate the token of CONNECT, take the client's session and answer CONNACK;
        the keep-alive in seconds."""
        codec = self._codec
        if connect.level not in PROTOCOL_LEVELS:
            self._registry.connack(UNACCEPTABLE_PROTOCOL_VERSION)
            self._write(codec.connack(UNACCEPTABLE_PROTOCOL_VERSION, False))
            raise _Close(f"protocol level {connect.level} refused (CONNACK 1)", code=None)
        token = connect.username or ""
        try:
            device = self._service.authenticate(token) if token else None
        except Unauthorized:
            device = None
        if device is None:
            code = refusal_code(connect)
            self._registry.connack(code)
            self._write(codec.connack(code, False))
            what = "unknown access token" if token else "no access token (username)"
            raise _Close(f"{what}: refused with CONNACK {code:#04x}"
                         if connect.level == MQTT5 else f"{what}: refused with CONNACK {code}",
                         code=None)
        self._clean = not connect.keep
        if connect.level != MQTT5 and connect.assigned and not self._clean:
            self._registry.connack(IDENTIFIER_REJECTED)
            self._write(codec.connack(IDENTIFIER_REJECTED, False))  # MQTT-3.1.3-8
            raise _Close("an empty client id with clean session 0: refused with CONNACK 2",
                         code=None)
        self._device = device
        self._key = (device.id, connect.client_id)
        # a revocation committed from now on closes it (one committed before the token was
        # read: CONNACK 5 above)
        self._registry.enter(device.id, self, gateway=device.gateway)
        # MQTT 5: clean start discards a kept session; the expiry interval decides whether
        # this one is kept (MQTT 3.1.1: clean session both)
        session, present = await self._registry.attach(self._key, self,
                                                       clean=connect.clean_start,
                                                       now=self._loop.time())
        self._session = session
        # MQTT 5: no more QoS 1 messages in flight than the client's Receive Maximum (§4.9)
        session.outbox.restart(connect.receive_max)
        if device.gateway:  # it says so at once (one INFO line); other devices' on first use
            self._gateway_api()
        self._registry.connack(CONNECTION_ACCEPTED)
        self._write(codec.accepted(connect, present) if isinstance(codec, Mqtt5)
                    else codec.connack(CONNECTION_ACCEPTED, present))
        self._accepted = True
        log = _log.bind(peer=self.peer, device=str(device.id), client_id=self._key[1][:64],
                        clean=self._clean, session_present=present, protocol_level=connect.level)
        if present:  # one line: the resumed session's figures are its fields
            resent, sent = self._resume(session)
            log = log.bind(resent=resent, sent=sent, waiting=session.outbox.waiting,
                           subscriptions=len(session.subscriptions))
        log.info("device {} connected over MQTT", device.name)
        return int(connect.keep_alive)

    async def _provision_only(self, connect: Connect) -> None:
        """A provision-only session (username or client id ``provision``), as ThingsBoard's
        MqttTransportHandler.processConnect accepts it at every protocol level: CONNACK 0
        (over MQTT 5 0x00 with the edge's properties, the session not kept), and every request
        on /provision/request answered NOT_FOUND (mqtt/provision.py). Over MQTT 5 what ends
        the session early ends it with a DISCONNECT and its reason code."""
        codec = self._codec
        self._registry.connack(CONNECTION_ACCEPTED)
        self._write(codec.accepted(connect, False, kept=False) if isinstance(codec, Mqtt5)
                    else codec.connack(CONNECTION_ACCEPTED, False))
        self._accepted = True
        _log.bind(peer=self.peer, protocol_level=connect.level).debug(
            "provision-only session opened")
        logged = False

        def answered() -> None:
            nonlocal logged
            if not logged:
                logged = True
                _log.bind(peer=self.peer).info(
                    "provisioning request answered NOT_FOUND: the edge does not provision "
                    "devices (create the device and give it its access token)")

        try:
            await provision.serve(codec, self._frames, self._reader.read, self._write,
                                  keep_alive=connect.keep_alive, receive_max=connect.receive_max,
                                  answered=answered, peer=self.peer)
        except provision.Refused as exc:
            raise _Close(str(exc), code=exc.reason) from exc

    def _resume(self, session: Session) -> tuple[int, int]:
        """A kept session: what awaited its PUBACK is sent again (DUP; as the client's Receive
        Maximum leaves room, and not what is over its Maximum Packet Size: ``_send_due``), and
        its subscriptions serve again (RPC requests queued meanwhile in the device's session
        come now). The messages sent again (DUP) and those sent for the first time (they
        waited under the Receive Maximum of an earlier connection)."""
        sent, resent = self._send_due()
        for topic_filter, qos in list(session.subscriptions.items()):
            if not self._serve_filter(topic_filter, qos):
                del session.subscriptions[topic_filter]
        return resent, sent - resent

    # -- publishes from the client -------------------------------------------------------------

    def _publish(self, frame: Frame) -> None:
        topic, qos, packet_id, data = self._codec.publish(frame)
        session, burst, device = self._session, self._burst, self._device
        assert session is not None and burst is not None and device is not None
        if qos == 0:
            reply = Reply.NONE
        elif qos == 1:
            reply = Reply.PUBACK
        elif qos == 2:
            reply = Reply.PUBREC
        else:
            raise _Close(f"QoS {qos} is not a QoS (malformed PUBLISH)", topic=topic,
                         code=Reason.MALFORMED_PACKET)
        if qos != 2:  # QoS 2 is rare, and its resends are recognised one by one: not held
            kind = classify(topic)[0]
            if kind is Publish.TELEMETRY or kind is Publish.ATTRIBUTES:
                try:
                    if kind is Publish.TELEMETRY:
                        entries = telemetry_entries(self._service, device, data)
                        if not burst.telemetry(entries, reply, packet_id):
                            self._send_burst()
                            burst.telemetry(entries, reply, packet_id)
                    else:
                        values = attribute_values(self._service, device, data)
                        if not burst.attributes(values, reply, packet_id):
                            self._send_burst()
                            burst.attributes(values, reply, packet_id)
                except BadRequest as exc:
                    if self._refused_payload(qos, packet_id, topic, exc):
                        return
                    raise _Close(f"invalid publish: {exc}", graceful=True, topic=topic,
                                 code=Reason.PAYLOAD_FORMAT_INVALID) from exc
                except _Close:
                    raise
                except Exception as exc:
                    raise _Close(f"publish not accepted: {exc}", graceful=True, topic=topic,
                                 code=Reason.IMPLEMENTATION_SPECIFIC_ERROR) from exc
                return
        self._send_burst()  # what came before it is handed over first, in order
        if qos == 2 and packet_id in session.awaiting_release:  # a resend: not stored again
            original = session.awaiting_release[packet_id]
            if original is None:  # stored
                self._acks.now(reply, packet_id)
            else:  # its commit is pending (taken by this or an older connection): wait for it
                self._acks.expect(reply, packet_id, original)
            return
        if qos == 2 and len(session.awaiting_release) >= MAX_AWAITING_RELEASE:
            raise _Close(f"QoS 2 publish {packet_id} not taken: {len(session.awaiting_release)} "
                         "of this session's QoS 2 publishes await their PUBREL, the most a "
                         "session holds", graceful=True, code=Reason.QUOTA_EXCEEDED)
        try:
            committed = self._inbound_of().accept(topic, data)
        except BadRequest as exc:
            if self._refused_payload(qos, packet_id, topic, exc):
                return
            raise _Close(f"invalid publish: {exc}", graceful=True, topic=topic,
                         code=Reason.PAYLOAD_FORMAT_INVALID) from exc
        except Exception as exc:
            raise _Close(f"publish not accepted: {exc}", graceful=True, topic=topic,
                         code=Reason.IMPLEMENTATION_SPECIFIC_ERROR) from exc
        if (qos == 1 and committed is None and self._codec.level == MQTT5
                and classify(topic)[0] is Publish.OTHER and topics.not_served(topic) is None):
            # MQTT 5: a topic outside ThingsBoard's device API gets PUBACK 0x90, as
            # MqttTransportHandler.processDevicePublish answers it (dropped all the same)
            reply = Reply.PUBACK_TOPIC_INVALID
        if qos == 2:
            self._await_release(session, packet_id, committed)
        if committed is None:
            self._acks.now(reply, packet_id)
        else:
            self._acks.expect(reply, packet_id, committed)

    def _refused_payload(self, qos: int, packet_id: int, topic: str, exc: BadRequest) -> bool:
        """MQTT 5, QoS 1: a payload that cannot be read is answered PUBACK 0x99 (after the
        acknowledgements due before it) and the connection stays, as ThingsBoard's
        sendResponseForAdaptorErrorOrCloseContext answers it over MQTT 5. False: anything
        else, for which the connection closes."""
        if qos != 1 or self._codec.level != MQTT5:
            return False
        self._send_burst()  # what came before it is handed over first, in order
        self._acks.now(Reply.PUBACK_PAYLOAD_INVALID, packet_id)
        self._logger().bind(topic=topic[:128]).warning(
            "publish {} refused with PUBACK 0x99 (payload format invalid): {}", packet_id, exc)
        return True

    def _await_release(self, session: Session, packet_id: int,
                       committed: Future[Any] | None) -> None:
        """QoS 2 publish ``packet_id`` is taken: its id awaits the PUBREL in the session,
        with the commit while it is pending; the session is told on the loop when the commit
        is done (even after this connection ended: a newer one may hold the session)."""
        session.awaiting_release[packet_id] = committed
        if committed is None:
            return
        loop = self._loop

        def done(commit: Future[Any]) -> None:  # the committing thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: the session too
                loop.call_soon_threadsafe(session.settled, packet_id, commit)

        committed.add_done_callback(done)

    def _send_burst(self, *, quiet: bool = False) -> None:
        """The publishes held go to the store as one command; their acknowledgements are due
        once it commits. ``quiet``: something else already ends the connection (a failure
        here is only logged)."""
        burst = self._burst
        if not burst:
            return
        assert burst is not None
        try:
            replies, committed = burst.take()
        except Exception as exc:
            if not quiet:
                raise _Close(f"publishes not accepted: {exc}", graceful=True,
                             code=Reason.IMPLEMENTATION_SPECIFIC_ERROR) from exc
            self._logger().warning(
                "{} publishes before the end of the connection not accepted: {}",
                len(burst), exc)
            return
        self._acks.expect_all(replies, committed)

    def _lost(self, entry: Pending) -> None:
        """Publishes owed when the connection closed were not committed (refused then or
        later, e.g. the bursts read after the one whose failure closed it): counted as the
        queue counts their commands, in the disconnect line too when it is not logged yet."""
        self._not_committed += len(entry.replies)
        self._registry.not_committed(entry.error, len(entry.replies))

    def _fail(self, entry: Pending, reason: str) -> None:
        """The publishes of ``entry`` were not committed (``reason``): close without their
        acknowledgements or any after them (nothing more is written), whatever their QoS, as
        ThingsBoard does. One WARNING for the first failure; the publishes of later ones are
        counted in the disconnect line. A QoS 2 publish's id stays in the session until its
        commit is known to have failed (Session.settled): one not confirmed in time may still
        be stored."""
        self._not_committed += len(entry.replies)
        self._registry.not_committed(entry.error, len(entry.replies))
        if self._failed:
            return
        self._failed = True
        owed = [(reply, packet_id) for reply, packet_id in entry.replies if reply]
        if owed:
            reply, packet_id = owed[0]
            self._logger().warning("publish {} {}, closing the connection without its {}",
                                   packet_id, reason, reply.name)
        else:
            self._logger().bind(publishes=len(entry.replies)).warning(
                "QoS 0 publish {}, closing the connection", reason)
        # MQTT 5: DISCONNECT 0x83, as ThingsBoard's getPubAckCallback.onError closes
        self._goodbye = None
        disconnect = self._codec.disconnect(Reason.IMPLEMENTATION_SPECIFIC_ERROR)
        if disconnect is not None:
            self._write(disconnect)
        self._writer.close()  # what was due before it is still written
        self._interrupt()

    # -- subscriptions and what the edge publishes ---------------------------------------------

    def _subscribe(self, frame: Frame) -> None:
        """Granted the QoS asked for, at most 1, for the topics the edge serves; else 0x80
        (MQTT 3.1.1) or, over MQTT 5, 0x8F (topic filter invalid, as ThingsBoard's
        ReturnCodeResolver.getSubscriptionReturnCode), 0x9E for a shared subscription, 0xA1
        for every filter of a SUBSCRIBE with a subscription identifier."""
        packet_id, requested, every = self._codec.subscribe(frame)
        session = self._session
        assert session is not None
        codes: list[int] = []
        v5 = self._codec.level == MQTT5
        for topic_filter, qos in requested:
            if every is not None:
                codes.append(every)
            elif v5 and topic_filter.startswith("$share/"):
                codes.append(Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            elif self._serve_filter(topic_filter, granted := min(int(qos), MAX_GRANTED_QOS)):
                session.subscriptions[topic_filter] = granted
                codes.append(granted)
            else:
                codes.append(Reason.TOPIC_FILTER_INVALID if v5 else SUBSCRIBE_FAILURE)
                self._logger().bind(topic=str(topic_filter)[:128]).warning(
                    "subscription to a topic the edge does not serve refused")
        self._write(self._codec.suback(packet_id, codes))

    def _serve_filter(self, topic_filter: str, qos: int) -> bool:
        if topic_filter.startswith(topics.GATEWAY_PREFIX):
            return self._gateway_api().subscribe(topic_filter)
        return self._subscriptions_of().subscribe(topic_filter, qos)

    def _unsubscribe(self, frame: Frame) -> None:
        """UNSUBACK; over MQTT 5 with 0x00 for a filter subscribed, 0x11 (no subscription
        existed) for another."""
        assert self._session is not None
        packet_id, filters = self._codec.unsubscribe(frame)
        codes: list[int] = []
        for topic_filter in filters:
            existed = self._session.subscriptions.pop(topic_filter, None) is not None
            codes.append(Reason.SUCCESS if existed else Reason.NO_SUBSCRIPTION_EXISTED)
            if topic_filter.startswith(topics.GATEWAY_PREFIX):
                if self._gateway is not None:
                    self._gateway.unsubscribe(topic_filter)
            elif self._subscriptions is not None:
                self._subscriptions.unsubscribe(topic_filter)
        self._write(self._codec.unsuback(packet_id, codes))

    def _publish_to_device(self, topic: str, payload: bytes, rpc: RpcSent | None = None) -> None:
        """At the QoS granted to the subscription the topic falls under; a QoS 1 message is
        kept in the session until its PUBACK (and sent again on a clean-session-false
        reconnect), and sent once the client's Receive Maximum leaves room (``_send_due``).
        An MQTT 5 client's Maximum Packet Size is honoured: a message larger is not sent
        (``_too_large``).

        ``rpc``: the server-side RPC request the message carries, in flight (still QUEUED),
        as ThingsBoard's MqttTransportHandler.sendToDeviceRpcRequest sends it: at QoS 1
        DELIVERED on its PUBACK (``rpcAwaitingAck``), at QoS 0 once written. One the client
        can never take (over its Maximum Packet Size) is FAILED. Beyond
        ``mqtt.max_unacked_per_session`` the session drops the oldest message that carries no
        RPC request (Outbox.add), so a request's PUBACK still delivers it and its loss still
        gives it back; when every message kept carries one (that many requests
        unacknowledged by one client) the new message is dropped, never written: an attribute
        update is lost, a request stays in flight until its expirationTime and is EXPIRED,
        never delivered (given back to the queue, it would be sent to the same client again at
        once, and dropped again)."""
        session, codec = self._session, self._codec
        qos = 0 if session is None else session.qos_for(topic)
        if self._too_large(topic, payload, qos):
            if rpc is not None:
                self._unsendable(rpc)
            return
        if session is None or qos == 0:
            self._write(codec.outgoing(topic, payload, None, False, 0))
            if rpc is not None:
                self._service.rpc_acknowledged(rpc)
            return
        dropped = session.outbox.add(topic, payload, rpc)
        if dropped is not None:
            self._dropped += 1
            self._registry.unacked_dropped.inc()
            if self._dropped == 1:  # once per connection: a client that never acknowledges
                self._logger().bind(topic=dropped.topic[:128]).warning(
                    "message {} dropped unacknowledged: more than mqtt.max_unacked_per_session "
                    "are kept for the client (further drops on this connection are counted, "
                    "not logged)", dropped.packet_id or "(not yet sent)")
        self._send_due()

    def _unsendable(self, rpc: RpcSent) -> None:
        """An RPC request over the client's Maximum Packet Size: FAILED (sent again, it would
        be too large again)."""
        codec = self._codec
        limit = codec.client_max_packet if isinstance(codec, Mqtt5) else None
        self._service.rpc_unsent(rpc.device_id, (rpc,),
                                 f"larger than the client's Maximum Packet Size of {limit}",
                                 failed=True)

    def _send_due(self) -> tuple[int, int]:
        """Send the QoS 1 messages of the session's outbox that are due, oldest first: all of
        them over MQTT 3.1.1; over MQTT 5 only while fewer than the client's Receive Maximum
        await their PUBACK (MQTT 5 §4.9: the rest wait, in order, for PUBACKs to free room).
        One sent on an earlier connection goes with DUP; one over the Maximum Packet Size of
        this connection's client is not sent, and no longer kept (``_too_large``): it does
        not hold back the ones after it; nor is an RPC request never written whose
        expirationTime has passed (``_expired_unsent``). The messages sent, and of them those
        sent again (DUP)."""
        session, codec = self._session, self._codec
        assert session is not None
        outbox = session.outbox
        sent = resent = 0
        now_ms: int | None = None
        while (message := outbox.due()) is not None:
            if self._too_large(message.topic, message.payload, 1):
                if message.rpc is not None:
                    self._unsendable(message.rpc)
                continue
            rpc = message.rpc
            if rpc is not None and not message.packet_id and rpc.expiration_time:
                now_ms = self._service.now_ms() if now_ms is None else now_ms
                if now_ms >= rpc.expiration_time:
                    self._expired_unsent(rpc)
                    continue
            dup = outbox.sending(message)
            self._write(codec.outgoing(message.topic, message.payload, message.packet_id, dup, 1))
            sent += 1
            resent += dup
        return sent, resent

    def _expired_unsent(self, rpc: RpcSent) -> None:
        """An RPC request that waited unwritten (under the client's Receive Maximum, or in a
        kept session) until its expirationTime: not written, so a request reported EXPIRED
        ("never delivered") never reaches the device afterwards; its device's entity records
        the expiry. Counted in ``edge_sync_mqtt_messages_discarded_total{reason="rpc_expired"}``,
        one DEBUG line. A message written before is sent again all the same (MQTT §4.4)."""
        self._registry.rpc_expired.inc()
        self._logger().bind(rpc_id=rpc.request_id).debug(
            "RPC request {} not written: its expirationTime passed while it waited",
            rpc.request_id)

    def _too_large(self, topic: str, payload: bytes, qos: int) -> bool:
        """Over MQTT 5, whether the PUBLISH of ``topic`` is over the client's Maximum Packet
        Size (MQTT 5 §3.1.2.11.4: the server must not send it): it is not sent, and counted
        (``edge_sync_mqtt_messages_discarded_total{reason="max_packet_size"}``, the disconnect
        line's ``dropped_too_large``); the first of the connection is one WARNING line with
        its topic and size, the others are not logged (a resumed session may hold a thousand
        of them)."""
        codec = self._codec
        if not isinstance(codec, Mqtt5) or codec.client_max_packet is None:
            return False
        size = codec.outgoing_size(topic, payload, qos)
        if size <= codec.client_max_packet:
            return False
        self._oversize += 1
        self._registry.too_large.inc()
        if self._oversize == 1:
            self._logger().bind(topic=topic[:128], size=size).warning(
                "message not sent: {} bytes, more than the client's Maximum Packet Size of {} "
                "(further ones on this connection are counted, not logged)",
                size, codec.client_max_packet)
        return True

    # -- the end -------------------------------------------------------------------------------

    async def _finish(self, graceful: bool) -> None:
        self._ending = True
        if self._alive is not None:
            self._alive.cancel()
            self._alive = None
        try:
            if self._inbound is not None:
                self._inbound.close()
            # all at once: the results taken for the device's and its sub-devices'
            # subscriptions until one deadline, the acknowledgements due within the commit
            # timeout (Limits.close_s in all)
            deadline = self._loop.time() + DRAIN_S
            waits: list[Coroutine[Any, Any, None]] = []
            if self._subscriptions is not None:
                waits.append(self._subscriptions.close(deadline))
            if self._gateway is not None:
                waits.append(self._gateway.close(deadline))
            if graceful:
                waits.append(self._acks.drain(self._limits.commit_timeout_s))
            if len(waits) == 1:
                await waits[0]
            elif waits:
                await asyncio.gather(*waits)
        finally:
            # what is still owed is not sent; the commits go on, and those that fail are
            # counted not committed (_lost)
            self._acks.close()
            # MQTT 5: after the acknowledgements due; never before CONNACK 0x00 (§4.13.1)
            if self._goodbye is not None and self._accepted:
                disconnect = self._codec.disconnect(self._goodbye)
                if disconnect is not None:
                    self._write(disconnect)
            self._writer.close()
            if self._key is not None:
                self._registry.leave(self._key[0], self)
            if self._key is not None and self._session is not None:
                self._discarded = self._registry.detach(self._key, self, self._session,
                                                        clean=self._clean, now=self._loop.time())
            self._finished = True
            if self._ended is not None:
                self._ended.set()
        await self._closed()
        if self._device is not None:
            # a takeover is one line, the registry's WARNING: this one only when it tells more
            # (a revocation's too)
            unsent, unacked = self._discarded
            quiet = ((self._taken_over or self._revoked)
                     and not (self._dropped or self._not_committed or self._oversize
                              or unsent or unacked))
            _log.bind(peer=self.peer, device=str(self._device.id),
                      dropped_unacked=self._dropped, dropped_too_large=self._oversize,
                      discarded_unsent=unsent, discarded_unacked=unacked,
                      not_committed=self._not_committed).log(
                "DEBUG" if quiet else "INFO", "device {} disconnected from MQTT",
                self._device.name)

    async def _closed(self) -> None:
        """Wait for the socket to close: the close writes what is buffered first, and a client
        that reads none of it gets ``_linger_s``; then the connection is aborted (the close
        would wait for it forever), at once when the server stops."""
        writer = self._writer
        if writer.transport.get_write_buffer_size():
            try:
                await asyncio.wait_for(asyncio.shield(writer.wait_closed()), self._linger_s())
            except TimeoutError:
                writer.transport.abort()
            except asyncio.CancelledError:
                writer.transport.abort()
                raise
            except Exception:  # the connection's error: it is closed
                return
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    def _write(self, data: bytes) -> None:
        """Every write of the connection. A client that does not read what is written to it
        (the edge's publishes pile up) is closed once more than ``max_write_buffer`` bytes
        wait: the connection is aborted, what waits is dropped."""
        writer = self._writer
        if writer.is_closing():
            return
        writer.write(data)
        size = writer.transport.get_write_buffer_size()
        if size > self._limits.max_write_buffer:
            self._logger().bind(buffered=size).warning(
                "closing the connection: {} bytes written to it wait for the client to read "
                "them, more than max(1 MiB, 2 x mqtt.max_message_bytes)", size)
            writer.transport.abort()
            self._interrupt()

    def _logger(self) -> Any:
        return _log.bind(peer=self.peer, device=self._device_id())

    def _subscriptions_of(self) -> Subscriptions:
        if self._subscriptions is None:
            assert self._device is not None
            self._subscriptions = Subscriptions(self._service, self._device.id,
                                                self._publish_to_device,
                                                send_rpc=self._publish_to_device,
                                                held=self._rpc_held)
        return self._subscriptions

    def _rpc_held(self) -> list[RpcSent]:
        """The RPC requests in flight the session holds unacknowledged (written and awaiting
        their PUBACK, or waiting to be written): told to the device's session when the RPC
        subscription registers (again), so they are not sent a second time."""
        session = self._session
        if session is None:
            return []
        return [m.rpc for m in session.outbox.unacked() if m.rpc is not None]

    def _gateway_api(self) -> Gateway:
        if self._gateway is None:
            assert self._device is not None
            self._gateway = Gateway(self._service, self._device, self._publish_to_device,
                                    link_connected=self._link_connected, polls=self._polls,
                                    commit_timeout_s=self._limits.commit_timeout_s,
                                    dropped=DroppedTopics(self._registry.publishes_dropped.labels(
                                        reason="unknown_gateway_topic")))
        return self._gateway

    def _inbound_of(self) -> Inbound:
        if self._inbound is None:
            assert self._device is not None
            limits = client_rpc.session_limits(
                max_payload_size=self._limits.max_message_bytes,
                max_inflight=self._limits.max_inflight, gateway=self._device.gateway)
            self._inbound = Inbound(self._service, self._device, self._device.token,
                                    self._gateway_api, self._publish_to_device,
                                    link_connected=self._link_connected, polls=self._polls,
                                    read_timeout_s=self._limits.commit_timeout_s,
                                    dropped=DroppedTopics(self._registry.publishes_dropped.labels(
                                        reason="unknown_topic")),
                                    session_limits=limits)
        return self._inbound

    def _device_id(self) -> str:
        return str(self._device.id) if self._device is not None else "unknown"
