"""A provision-only MQTT session (api/provisioning.py: the edge answers every request
NOT_FOUND, as it does not provision devices), over MQTT 3.1, 3.1.1 and 5 (the connection's
codec, mqtt/codec.py).

ThingsBoard takes a CONNECT whose username or client id is ``provision`` as a provision-only
session, whatever the protocol version (MqttTransportHandler.processConnect: CONNACK 0 whatever
the password), in which a device may subscribe to ``/provision/response`` and publish its
request on ``/provision/request`` (processProvisionSessionMsg); a publish on any other topic
closes the session, and any other subscription is refused (processSubscribe: TOPIC_FILTER_INVALID
through ReturnCodeResolver, 0x80 over MQTT 3.1.1, 0x8F over MQTT 5). The answer comes on
``/provision/response``, and the session is closed 60 s later (DeviceProvisionCallback).

Over MQTT 5, as ThingsBoard answers there: a publish on another topic gets PUBACK 0x90 (topic
name invalid) and the session ends with DISCONNECT 0x90; UNSUBACK says 0x00 for the
subscription there was, 0x11 for another (processUnsubscribe). What the edge sends respects
the client's Receive Maximum (an answer at QoS 1 beyond it waits for a PUBACK) and Maximum
Packet Size (an answer larger is not sent).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import mqtt5
from amqtt.mqtt.packet import DISCONNECT, PINGREQ, PUBACK, PUBLISH, PUBREL, SUBSCRIBE, UNSUBSCRIBE
from amqtt.mqtt.pingresp import PingRespPacket
from loguru import logger

from edge_sync.api.provisioning import NOT_FOUND, PROVISION
from edge_sync.mqtt.acknowledger import frame as ack_frame
from edge_sync.mqtt.acks import Reply
from edge_sync.mqtt.codec import MQTT5, Codec, Mqtt5, Reason
from edge_sync.mqtt.frames import FrameReader
from edge_sync.mqtt.topics import PROVISION_REQUEST, PROVISION_RESPONSE

__all__ = ["CLOSE_AFTER_ANSWER_S", "Refused", "is_provision", "serve"]

NOT_FOUND_BYTES = json.dumps(NOT_FOUND, separators=(",", ":")).encode()
CLOSE_AFTER_ANSWER_S = 60.0
"""A provision-only session is closed this long after its answer, as ThingsBoard closes it."""
_SUBSCRIBE_FAILURE = 0x80
_PINGRESP = bytes(PingRespPacket.build().to_bytes())
_MAX_PACKET_ID = 0xFFFF
_log = logger.bind(component="mqtt")


class Refused(Exception):
    """The client did what a provision-only session does not allow: the session is closed
    (over MQTT 5 with DISCONNECT ``reason``)."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


def is_provision(username: str | None, client_id: str | None) -> bool:
    return username == PROVISION or client_id == PROVISION


class _Answers:
    """The NOT_FOUND answers of one session, on ``/provision/response`` at the QoS of its
    subscription (0 without one). Over MQTT 5 (``receive_max`` given) at most the client's
    Receive Maximum of them await their PUBACK; one beyond it is owed until a PUBACK comes."""

    __slots__ = ("_codec", "_inflight", "_last_id", "_owed", "_peer", "_receive_max", "_write",
                 "qos")

    def __init__(self, codec: Codec, write: Callable[[bytes], None], receive_max: int | None,
                 peer: str) -> None:
        self._codec = codec
        self._write = write
        self._receive_max = receive_max
        self._peer = peer
        self._inflight: set[int] = set()  # MQTT 5: packet ids of answers awaiting PUBACK
        self._owed = 0
        self._last_id = 0
        self.qos = 0

    def answer(self) -> None:
        if self.qos and self._receive_max is not None and len(self._inflight) >= self._receive_max:
            self._owed += 1
            return
        self._send(self.qos)

    def acked(self, packet_id: int) -> None:
        if packet_id in self._inflight:
            self._inflight.discard(packet_id)
            if self._owed:
                self._owed -= 1
                self._send(1)

    def _send(self, qos: int) -> None:
        codec = self._codec
        if isinstance(codec, Mqtt5) and codec.client_max_packet is not None:
            size = codec.outgoing_size(PROVISION_RESPONSE, NOT_FOUND_BYTES, qos)
            if size > codec.client_max_packet:
                _log.bind(peer=self._peer, topic=PROVISION_RESPONSE, size=size).warning(
                    "message not sent: {} bytes, more than the client's Maximum Packet Size "
                    "of {}", size, codec.client_max_packet)
                return
        packet_id = None
        if qos:
            packet_id = self._last_id % _MAX_PACKET_ID + 1
            while packet_id in self._inflight:  # fewer than 65535: the Receive Maximum
                packet_id = packet_id % _MAX_PACKET_ID + 1
            self._last_id = packet_id
            if self._receive_max is not None:
                self._inflight.add(packet_id)
        self._write(codec.outgoing(PROVISION_RESPONSE, NOT_FOUND_BYTES, packet_id, False, qos))


async def serve(codec: Codec, frames: FrameReader, read: Callable[[int], Awaitable[bytes]],
                write: Callable[[bytes], None], *, keep_alive: int, receive_max: int | None,
                answered: Callable[[], None], peer: str) -> None:
    """Serve a provision-only session once its CONNACK is sent, until the client leaves or
    DISCONNECTs, is silent for 1.5 times its keep-alive, or CLOSE_AFTER_ANSWER_S after the
    answer. Refused: a publish on another topic (ThingsBoard closes the session), or a packet
    a session does not send. ``answered`` is called once per request answered; ``peer``: the
    client's address, for the log line of an answer not sent."""
    loop = asyncio.get_running_loop()
    v5 = codec.level == MQTT5
    idle = keep_alive * 1.5 if keep_alive else None
    close_at: float | None = None
    subscribed = False  # to /provision/response
    answers = _Answers(codec, write, receive_max if v5 else None, peer)
    while True:
        frame = frames.next()
        if frame is None:
            wait = idle
            if close_at is not None:
                left = close_at - loop.time()
                wait = left if wait is None else min(wait, left)
            try:
                data = await asyncio.wait_for(read(frames.read_size), wait)
            except TimeoutError:
                return
            if not data:
                return
            frames.feed(data)
            continue
        kind = frame.kind
        if kind == PUBLISH:
            topic, publish_qos, publish_id, _body = codec.publish(frame)
            if topic != PROVISION_REQUEST:
                if v5 and publish_qos == 1:  # as processProvisionSessionMsg answers it
                    write(ack_frame(Reply.PUBACK_TOPIC_INVALID, publish_id))
                elif v5 and publish_qos == 2:
                    write(mqtt5.PubRecPacket(
                        publish_id, reason_code=mqtt5.PubRecReasonCode.TOPIC_NAME_INVALID).write())
                raise Refused(f"a provision-only session published on another topic than "
                              f"{PROVISION_REQUEST}", Reason.TOPIC_NAME_INVALID)
            if publish_qos == 1:
                write(ack_frame(Reply.PUBACK, publish_id))
            elif publish_qos == 2:
                write(ack_frame(Reply.PUBREC, publish_id))
            answers.answer()
            answered()
            if close_at is None:
                close_at = loop.time() + CLOSE_AFTER_ANSWER_S
        elif kind == SUBSCRIBE:
            packet_id, requested, every = codec.subscribe(frame)
            codes = []
            for topic_filter, asked in requested:
                if every is not None:
                    codes.append(every)
                elif topic_filter == PROVISION_RESPONSE:
                    answers.qos = min(int(asked), 1)
                    subscribed = True
                    codes.append(answers.qos)
                else:
                    codes.append(Reason.TOPIC_FILTER_INVALID if v5 else _SUBSCRIBE_FAILURE)
            write(codec.suback(packet_id, codes))
        elif kind == UNSUBSCRIBE:
            packet_id, filters = codec.unsubscribe(frame)
            codes = []
            for topic_filter in filters:
                if topic_filter == PROVISION_RESPONSE and subscribed:
                    subscribed = False
                    answers.qos = 0
                    codes.append(Reason.SUCCESS)
                else:
                    codes.append(Reason.NO_SUBSCRIPTION_EXISTED)
            write(codec.unsuback(packet_id, codes))
        elif kind == PUBREL:
            write(ack_frame(Reply.PUBCOMP, codec.packet_id(frame)))
        elif kind == PUBACK:
            answers.acked(codec.packet_id(frame))  # nothing is kept to resend
        elif kind == PINGREQ:
            write(_PINGRESP)
        elif kind == DISCONNECT:
            return
        else:
            raise Refused(f"packet of type {kind} in a provision-only session",
                          Reason.PROTOCOL_ERROR)
