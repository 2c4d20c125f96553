"""A provision-only MQTT session (api/provisioning.py: the edge answers every request
NOT_FOUND, as it does not provision devices).

ThingsBoard takes a CONNECT whose username or client id is ``provision`` as a provision-only
session (MqttTransportHandler.processConnect: CONNACK 0 whatever the password), in which a
device may subscribe to ``/provision/response`` and publish its request on
``/provision/request`` (processProvisionSessionMsg); a publish on any other topic closes the
session, and any other subscription is refused. The answer comes on ``/provision/response``,
and the session is closed 60 s later (DeviceProvisionCallback).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from amqtt.mqtt.packet import DISCONNECT, PINGREQ, PUBACK, PUBLISH, PUBREL, SUBSCRIBE, UNSUBSCRIBE
from amqtt.mqtt.pingresp import PingRespPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrec import PubrecPacket
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.unsuback import UnsubackPacket

from edge_sync.api.provisioning import NOT_FOUND, PROVISION
from edge_sync.mqtt.frames import FrameReader
from edge_sync.mqtt.topics import PROVISION_REQUEST, PROVISION_RESPONSE

__all__ = ["CLOSE_AFTER_ANSWER_S", "Refused", "is_provision", "serve"]

NOT_FOUND_BYTES = json.dumps(NOT_FOUND, separators=(",", ":")).encode()
CLOSE_AFTER_ANSWER_S = 60.0
"""A provision-only session is closed this long after its answer, as ThingsBoard closes it."""
_SUBSCRIBE_FAILURE = 0x80


class Refused(Exception):
    """The client did what a provision-only session does not allow: the session is closed."""


def is_provision(username: str | None, client_id: str | None) -> bool:
    return username == PROVISION or client_id == PROVISION


async def serve(frames: FrameReader, read: Callable[[int], Awaitable[bytes]],
                write: Callable[[bytes], None], *, keep_alive: int,
                answered: Callable[[], None]) -> None:
    """Serve a provision-only session once its CONNACK is sent, until the client leaves or
    DISCONNECTs, is silent for 1.5 times its keep-alive, or CLOSE_AFTER_ANSWER_S after the
    answer. Refused: a publish on another topic (ThingsBoard closes the session), or a packet
    a session does not send. ``answered`` is called once per request answered."""
    loop = asyncio.get_running_loop()
    idle = keep_alive * 1.5 if keep_alive else None
    close_at: float | None = None
    qos = 0  # of the /provision/response subscription (0 when there is none)
    packet_id = 0
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
            topic, publish_qos, publish_id, _body = frames.publish(frame)
            if topic != PROVISION_REQUEST:
                raise Refused(f"a provision-only session published on another topic than "
                              f"{PROVISION_REQUEST}")
            if publish_qos == 1:
                write(PubackPacket.build(publish_id).to_bytes())
            elif publish_qos == 2:
                write(PubrecPacket.build(publish_id).to_bytes())
            if qos:
                packet_id = packet_id % 65535 + 1
            write(PublishPacket.build(PROVISION_RESPONSE, NOT_FOUND_BYTES,
                                      packet_id if qos else None, False, qos, False).to_bytes())
            answered()
            if close_at is None:
                close_at = loop.time() + CLOSE_AFTER_ANSWER_S
        elif kind == SUBSCRIBE:
            subscribe = frames.packet(frame)
            codes = []
            for topic_filter, asked in subscribe.payload.topics:
                if topic_filter == PROVISION_RESPONSE:
                    qos = min(int(asked), 1)
                    codes.append(qos)
                else:
                    codes.append(_SUBSCRIBE_FAILURE)
            write(SubackPacket.build(subscribe.variable_header.packet_id, codes).to_bytes())
        elif kind == UNSUBSCRIBE:
            unsubscribe = frames.packet(frame)
            if PROVISION_RESPONSE in unsubscribe.payload.topics:
                qos = 0
            write(UnsubackPacket.build(unsubscribe.variable_header.packet_id).to_bytes())
        elif kind == PUBREL:
            write(PubcompPacket.build(frames.packet(frame).packet_id).to_bytes())
        elif kind == PUBACK:
            frames.packet(frame)  # the answer's, at QoS 1: nothing is kept to resend
        elif kind == PINGREQ:
            write(PingRespPacket.build().to_bytes())
        elif kind == DISCONNECT:
            return
        else:
            raise Refused(f"packet of type {kind} in a provision-only session")
