"""The packet codec of one MQTT connection, chosen by its CONNECT's protocol level for the whole
connection: amqtt's for MQTT 3.1 and 3.1.1 (levels 3 and 4), the ``mqtt5`` package's (a
sans-I/O MQTT 5 codec) for MQTT 5 (level 5). Everything else of the connection (the token,
sessions, the device API topics, PUBACK after commit) is shared (mqtt/connection.py); what
differs between the versions is here, behind ``Codec``.

Both versions cut packets the same way (the fixed header is the same: mqtt/frames.py), and a
successful PUBACK, PUBREC or PUBCOMP is the same four bytes in both (MQTT 5 §3.4.2.1: reason
code 0 and no properties may be left out), so the acknowledgements of mqtt/acknowledger.py are
shared too.

What MQTT 5 adds that the edge answers (as ThingsBoard's MqttTransportHandler does where it
defines it, docs/mqtt.md "MQTT 5"):

- CONNACK reason codes (``refusal_reason``) and properties (``Mqtt5.connack``);
- clean start and the session expiry interval instead of clean session (``Connect.keep``);
- SUBACK reason codes: the QoS granted, 0x8F (topic filter invalid) for a topic the edge does
  not serve (ReturnCodeResolver.getSubscriptionReturnCode), 0x9E for a shared subscription,
  0xA1 for a SUBSCRIBE with a subscription identifier; UNSUBACK 0x00 or 0x11;
- DISCONNECT with a reason code before the server closes a connection (``Protocol``);
- the client's Receive Maximum and Maximum Packet Size (``Connect.receive_max``,
  ``Mqtt5.client_max_packet``), which what the edge sends keeps to (mqtt/connection.py,
  the session's outbox in mqtt/sessions.py).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

import mqtt5
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.connect import ConnectPacket as Connect311
from amqtt.mqtt.publish import PublishPacket as Publish311
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.unsuback import UnsubackPacket

from edge_sync.mqtt.frames import Frame, FrameReader, Malformed

__all__ = ["MQTT5", "Codec", "Connect", "Mqtt5", "Mqtt311", "ProtocolViolation", "Reason",
           "protocol_level", "refusal_reason"]

MQTT5 = 5
"""The protocol level of MQTT 5."""


class Reason:
    """MQTT 5 reason codes the edge sends (DISCONNECT, CONNACK, SUBACK, UNSUBACK)."""

    SUCCESS = 0x00
    NO_SUBSCRIPTION_EXISTED = 0x11
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_ID_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_SHUTTING_DOWN = 0x8B
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    QUOTA_EXCEEDED = 0x97
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1


class ProtocolViolation(Exception):
    """What the client sent breaks MQTT 5 as the edge announced it in CONNACK (a topic alias,
    a retained publish): the connection ends with DISCONNECT ``reason``."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Connect:
    """A CONNECT of any version, as the connection uses it. ``session_expiry``: None for MQTT
    3.1.1 (its clean session flag decides), the interval in seconds for MQTT 5.
    ``assigned``: the client sent an empty client id (``client_id`` is then one the edge
    made for an MQTT 5 client, or empty for MQTT 3.1.1). ``receive_max``: MQTT 5's Receive
    Maximum, the most QoS 1 and 2 publishes the client takes unacknowledged at once (65535
    when CONNECT has none, §3.1.2.11.3); None for MQTT 3.1.1, which has no such bound."""

    level: int
    client_id: str
    assigned: bool
    username: str | None
    password: bytes | None
    clean_start: bool
    session_expiry: int | None
    keep_alive: int
    receive_max: int | None = None

    @property
    def keep(self) -> bool:
        """Whether the session is kept after the connection ends: MQTT 3.1.1's clean session
        0; MQTT 5's session expiry interval above 0 (MQTT 5 §3.1.2.11.2: 0 ends it with the
        connection)."""
        if self.session_expiry is None:
            return not self.clean_start
        return self.session_expiry > 0


def protocol_level(frame: Frame) -> int:
    """The protocol level of a CONNECT (the byte after its protocol name); 0: none there."""
    data, start, end = frame.data, frame.start, frame.end
    if end - start < 2:
        return 0
    at = start + 2 + int.from_bytes(data[start:start + 2], "big")
    return data[at] if at < end else 0


def refusal_reason(connect: Connect) -> int:
    """The MQTT 5 CONNACK reason code for a CONNECT whose credentials name no device, as
    ThingsBoard answers it (MqttTransportHandler.onValidateDeviceResponse; over MQTT 5
    ReturnCodeResolver.getConnectionReturnCode keeps the code): 0x86 (bad user name or
    password) for a username and a password, or only one of them; 0x85 (client identifier not
    valid) for neither but a client id that is not blank; 0x87 (not authorized) otherwise."""
    if connect.username is not None or connect.password is not None:
        return Reason.BAD_USER_NAME_OR_PASSWORD
    if not connect.assigned and connect.client_id.strip():
        return Reason.CLIENT_ID_NOT_VALID
    return Reason.NOT_AUTHORIZED


def _varint_size(value: int) -> int:
    size = 1
    while value >= 128:
        value >>= 7
        size += 1
    return size


class Codec(TypingProtocol):
    """What differs between MQTT 3.1.1 and MQTT 5 on one connection."""

    level: int

    def publish(self, frame: Frame) -> tuple[str, int, int, bytes]:
        """A PUBLISH's topic, QoS (3: malformed), packet id (0 at QoS 0) and payload."""
        ...

    def packet_id(self, frame: Frame) -> int:
        """The packet id of a PUBACK or PUBREL."""
        ...

    def subscribe(self, frame: Frame) -> tuple[int, list[tuple[str, int]], int | None]:
        """A SUBSCRIBE's packet id, (topic filter, QoS) pairs and the reason code for all of
        them when it cannot be served as a whole (None: each filter on its own)."""
        ...

    def unsubscribe(self, frame: Frame) -> tuple[int, list[str]]:
        ...

    def check(self, frame: Frame) -> None:
        """Any other packet decoded (a DISCONNECT is the connection's own to read)."""
        ...

    def connack(self, code: int, present: bool) -> bytes:
        ...

    def suback(self, packet_id: int, codes: list[int]) -> bytes:
        ...

    def unsuback(self, packet_id: int, codes: list[int]) -> bytes:
        ...

    def outgoing(self, topic: str, payload: bytes, packet_id: int | None, dup: bool,
                 qos: int) -> bytes:
        """A PUBLISH the edge sends."""
        ...

    def disconnect(self, reason: int) -> bytes | None:
        """The DISCONNECT the server sends before it closes (None: MQTT 3.1.1 has none)."""
        ...


class Mqtt311:
    """amqtt's codec: MQTT 3.1 and 3.1.1."""

    __slots__ = ("_frames", "level")

    def __init__(self, frames: FrameReader, level: int) -> None:
        self._frames = frames
        self.level = level

    @staticmethod
    def connect(packet: Connect311) -> Connect:
        random = bool(packet.client_id_is_random)  # amqtt made one up for an empty client id
        return Connect(level=int(packet.proto_level),
                       client_id=packet.client_id or "", assigned=random,
                       username=packet.username, password=packet.password,
                       clean_start=bool(packet.clean_session_flag), session_expiry=None,
                       keep_alive=int(packet.keep_alive))

    def publish(self, frame: Frame) -> tuple[str, int, int, bytes]:
        return self._frames.publish(frame)

    def packet_id(self, frame: Frame) -> int:
        return int(self._frames.packet(frame).packet_id)

    def subscribe(self, frame: Frame) -> tuple[int, list[tuple[str, int]], int | None]:
        packet = self._frames.packet(frame)
        requested = packet.payload.topics if packet.payload is not None else []
        packet_id = packet.variable_header.packet_id if packet.variable_header else 0
        return packet_id, [(str(f), int(q)) for f, q in requested], None

    def unsubscribe(self, frame: Frame) -> tuple[int, list[str]]:
        packet = self._frames.packet(frame)
        filters = packet.payload.topics if packet.payload is not None else []
        return packet.variable_header.packet_id, list(filters)

    def check(self, frame: Frame) -> None:
        self._frames.packet(frame)

    def connack(self, code: int, present: bool) -> bytes:
        return bytes(ConnackPacket.build(1 if present else 0, code).to_bytes())

    def suback(self, packet_id: int, codes: list[int]) -> bytes:
        return bytes(SubackPacket.build(packet_id, codes).to_bytes())

    def unsuback(self, packet_id: int, codes: list[int]) -> bytes:
        return bytes(UnsubackPacket.build(packet_id).to_bytes())

    def outgoing(self, topic: str, payload: bytes, packet_id: int | None, dup: bool,
                 qos: int) -> bytes:
        return bytes(Publish311.build(topic, payload, packet_id, dup, qos, False).to_bytes())

    def disconnect(self, reason: int) -> bytes | None:
        return None


_ZERO_LIMITS = {"Receive maximum must be != 0": "Receive Maximum",
                "Maximum packet size must be != 0": "Maximum Packet Size"}
"""The ``mqtt5`` decoder's errors for a CONNECT property whose 0 is a Protocol Error."""


class Mqtt5:
    """The ``mqtt5`` package's codec: MQTT 5. ``max_body``: mqtt.max_message_bytes (the
    largest remaining length read); ``receive_max``: mqtt.max_inflight_per_client;
    ``session_expiry_s``: mqtt.session_expiry_s, how long a kept session is kept."""

    __slots__ = ("_max_body", "_receive_max", "_session_expiry_s", "client_max_packet",
                 "level")

    def __init__(self, *, max_body: int, receive_max: int, session_expiry_s: float) -> None:
        self.level = MQTT5
        self._max_body = max_body
        self._receive_max = max(1, min(receive_max, 65535))
        self._session_expiry_s = session_expiry_s
        self.client_max_packet: int | None = None

    @staticmethod
    def decode(frame: Frame) -> Any:
        try:
            packet, _ = mqtt5.read(memoryview(frame.data)[frame.head:frame.end])
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
            raise
        except BaseException as exc:  # the codec's IndexError / ValueError,
            # and the Rust panic (pyo3's PanicException, a BaseException) some input causes,
            # e.g. a string that is not UTF-8: either way not MQTT 5
            raise Malformed(f"packet of type {frame.kind}: {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from exc
        return packet

    def connect(self, frame: Frame) -> Connect:
        """The CONNECT. A Receive Maximum or Maximum Packet Size of 0 is a Protocol Error
        (§3.1.2.11.3, §3.1.2.11.4): ProtocolViolation 0x82, which the connection answers with
        CONNACK 0x82 (§3.1.4: a CONNACK of 0x80 or more, then the close); any other CONNECT
        the codec refuses is Malformed."""
        try:
            packet = self.decode(frame)
        except Malformed as exc:
            cause = str(exc.__cause__)
            if isinstance(exc.__cause__, ValueError) and cause in _ZERO_LIMITS:
                raise ProtocolViolation(f"CONNECT with a {_ZERO_LIMITS[cause]} of 0",
                                        Reason.PROTOCOL_ERROR) from exc
            raise
        if not isinstance(packet, mqtt5.ConnectPacket):
            raise Malformed("CONNECT expected")
        assigned = not packet.client_id
        self.client_max_packet = packet.max_packet_size
        return Connect(level=MQTT5,
                       client_id=f"edge-{uuid.uuid4().hex}" if assigned else packet.client_id,
                       assigned=assigned, username=packet.username, password=packet.password,
                       clean_start=packet.clean_start,
                       session_expiry=packet.session_expiry_interval,
                       keep_alive=packet.keep_alive, receive_max=packet.receive_max)

    def max_packet_size(self) -> int:
        """The Maximum Packet Size the edge announces: a whole packet whose remaining length
        is mqtt.max_message_bytes (the fixed header counts in MQTT 5, §3.1.2.11.4)."""
        return min(1 + _varint_size(self._max_body) + self._max_body, 268_435_460)

    def accepted(self, connect: Connect, present: bool, *, kept: bool = True) -> bytes:
        """CONNACK 0x00 with what the edge serves: Receive Maximum (publishes taken and not
        yet acknowledged), Maximum Packet Size, Topic Alias Maximum 0 (not announced: 0 is
        its default), Retain Available 0 (nothing is retained), Shared Subscription and
        Subscription Identifier Available 0, Wildcard Subscription Available 1 (the device
        API's ``+`` filters); the Session Expiry Interval the edge keeps the session for when
        it differs from the client's (0 when the session is never ``kept``: a provision-only
        session); the client id the edge assigned to an empty one."""
        expiry = connect.session_expiry or 0
        served = int(self._session_expiry_s) if kept else 0
        return mqtt5.ConnAckPacket(
            session_present=present, reason_code=mqtt5.ConnAckReasonCode.SUCCESS,
            session_expiry_interval=(served if (served > 0 or not kept) and served != expiry
                                     and expiry else None),
            assigned_client_id=connect.client_id if connect.assigned else None,
            receive_max=self._receive_max, topic_alias_max=0, retain_available=False,
            max_packet_size=self.max_packet_size(), wildcard_subscription_available=True,
            subscription_id_available=False, shared_subscription_available=False).write()

    def publish(self, frame: Frame) -> tuple[str, int, int, bytes]:
        packet = self.decode(frame)
        if packet.topic_alias is not None:
            raise ProtocolViolation("topic alias sent, the edge announced Topic Alias Maximum 0",
                                    Reason.TOPIC_ALIAS_INVALID)
        if packet.retain:
            raise ProtocolViolation("retained publish, the edge announced Retain Available 0",
                                    Reason.RETAIN_NOT_SUPPORTED)
        return packet.topic, int(packet.qos), packet.packet_id or 0, packet.payload

    def packet_id(self, frame: Frame) -> int:
        return int(self.decode(frame).packet_id)

    def subscribe(self, frame: Frame) -> tuple[int, list[tuple[str, int]], int | None]:
        packet = self.decode(frame)
        every = (Reason.SUBSCRIPTION_IDS_NOT_SUPPORTED if packet.subscription_id is not None
                 else None)
        return (packet.packet_id, [(f.pattern, int(f.max_qos)) for f in packet.topic_filters],
                every)

    def unsubscribe(self, frame: Frame) -> tuple[int, list[str]]:
        packet = self.decode(frame)
        return packet.packet_id, list(packet.patterns)

    def check(self, frame: Frame) -> None:
        if isinstance(self.decode(frame), mqtt5.AuthPacket):
            raise ProtocolViolation("AUTH without an authentication method in CONNECT",
                                    Reason.PROTOCOL_ERROR)

    def connack(self, code: int, present: bool) -> bytes:
        return mqtt5.ConnAckPacket(session_present=present,
                                   reason_code=mqtt5.ConnAckReasonCode(code)).write()

    def suback(self, packet_id: int, codes: list[int]) -> bytes:
        return mqtt5.SubAckPacket(packet_id, [mqtt5.SubAckReasonCode(c) for c in codes]).write()

    def unsuback(self, packet_id: int, codes: list[int]) -> bytes:
        return mqtt5.UnsubAckPacket(packet_id,
                                    [mqtt5.UnsubAckReasonCode(c) for c in codes]).write()

    @staticmethod
    def outgoing_size(topic: str, payload: bytes, qos: int) -> int:
        """The size of ``outgoing``'s packet, worked out without building it: the fixed header,
        the topic, the packet id at QoS 1 and 2, an empty property length, the payload."""
        body = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + len(payload)
        return 1 + _varint_size(body) + body

    def outgoing(self, topic: str, payload: bytes, packet_id: int | None, dup: bool,
                 qos: int) -> bytes:
        return mqtt5.PublishPacket(topic, payload, qos=mqtt5.QoS(qos), packet_id=packet_id,
                                   duplicate=dup).write()

    def disconnect(self, reason: int) -> bytes | None:
        return mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode(reason)).write()
