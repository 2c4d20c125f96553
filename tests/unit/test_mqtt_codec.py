"""mqtt/codec.py without a server: the protocol level read from a CONNECT of either version; the
acknowledgement frames shared by both versions are what the ``mqtt5`` package encodes for a
successful PUBACK, PUBREC and PUBCOMP; MQTT 5 packets cut by the shared frame reader and
decoded by the ``mqtt5`` package; a topic alias and a retained publish refused with their
DISCONNECT reason codes; the Maximum Packet Size announced for mqtt.max_message_bytes."""

from __future__ import annotations

import mqtt5
import pytest

from edge_sync.mqtt.acknowledger import frame
from edge_sync.mqtt.acks import Reply
from edge_sync.mqtt.codec import Mqtt5, ProtocolViolation, Reason, protocol_level
from edge_sync.mqtt.frames import Frame, FrameReader, Malformed
from tests.helpers.mqtt_raw import connect_packet


def one(data: bytes, max_body: int = 4096) -> Frame:
    reader = FrameReader(max_body)
    reader.feed(data)
    got = reader.next()
    assert got is not None
    return got


def codec(max_body: int = 4096) -> Mqtt5:
    return Mqtt5(max_body=max_body, receive_max=100, session_expiry_s=3600)


def test_acknowledgement_frames_are_what_mqtt5_encodes_for_success() -> None:
    for packet_id in (1, 255, 256, 4660, 0xFFFF):
        assert frame(Reply.PUBACK, packet_id) == mqtt5.PubAckPacket(packet_id).write()
        assert frame(Reply.PUBREC, packet_id) == mqtt5.PubRecPacket(packet_id).write()
        assert frame(Reply.PUBCOMP, packet_id) == mqtt5.PubCompPacket(packet_id).write()
        # MQTT 5 only: a PUBACK with a reason code, decoded back as such
        for reply, code in ((Reply.PUBACK_TOPIC_INVALID, 0x90),
                            (Reply.PUBACK_PAYLOAD_INVALID, 0x99)):
            packet, _ = mqtt5.read(memoryview(frame(reply, packet_id)))
            assert isinstance(packet, mqtt5.PubAckPacket)
            assert (packet.packet_id, int(packet.reason_code)) == (packet_id, code)


def test_the_protocol_level_of_a_connect() -> None:
    assert protocol_level(one(mqtt5.ConnectPacket("c", username="t").write())) == 5
    assert protocol_level(one(connect_packet("c", "t"))) == 4
    assert protocol_level(one(b"\x10\x01\x00")) == 0


def test_mqtt5_packets_decoded_from_the_shared_frames() -> None:
    c = codec()
    connect = c.connect(one(mqtt5.ConnectPacket(
        "dev", username="tok", clean_start=False, session_expiry_interval=30, keep_alive=20,
        max_packet_size=512).write()))
    assert (connect.level, connect.client_id, connect.username, connect.keep_alive,
            connect.clean_start, connect.keep) == (5, "dev", "tok", 20, False, True)
    assert c.client_max_packet == 512  # what the edge may send this client
    publish = mqtt5.PublishPacket("v1/devices/me/telemetry", b'{"a":1}', qos=mqtt5.QoS(1),
                                  packet_id=9)
    assert c.publish(one(publish.write())) == ("v1/devices/me/telemetry", 1, 9, b'{"a":1}')
    subscribe = mqtt5.SubscribePacket(3, [mqtt5.TopicFilter("a/+", max_qos=mqtt5.QoS(2))])
    assert c.subscribe(one(subscribe.write())) == (3, [("a/+", 2)], None)
    with_id = mqtt5.SubscribePacket(4, [mqtt5.TopicFilter("a")], subscription_id=7)
    assert c.subscribe(one(with_id.write())) == (4, [("a", 2)],
                                                 Reason.SUBSCRIPTION_IDS_NOT_SUPPORTED)
    assert c.unsubscribe(one(mqtt5.UnsubscribePacket(5, ["a", "b"]).write())) == (5, ["a", "b"])
    assert c.packet_id(one(mqtt5.PubRelPacket(6).write())) == 6
    assert c.check(one(mqtt5.DisconnectPacket().write())) is None  # decoded, nothing to say


def test_a_session_is_kept_only_with_an_expiry_interval() -> None:
    for expiry, kept in ((0, False), (1, True)):
        connect = codec().connect(one(mqtt5.ConnectPacket(
            "dev", username="tok", clean_start=False, session_expiry_interval=expiry).write()))
        assert connect.keep is kept


def test_a_topic_alias_and_a_retained_publish_are_protocol_violations() -> None:
    aliased = mqtt5.PublishPacket("t", b"x", topic_alias=1).write()
    with pytest.raises(ProtocolViolation) as alias:
        codec().publish(one(aliased))
    assert alias.value.reason == Reason.TOPIC_ALIAS_INVALID == 0x94
    with pytest.raises(ProtocolViolation) as retained:
        codec().publish(one(mqtt5.PublishPacket("t", b"x", retain=True).write()))
    assert retained.value.reason == Reason.RETAIN_NOT_SUPPORTED == 0x9A


def test_bytes_that_are_not_mqtt5_are_malformed() -> None:
    with pytest.raises(Malformed):
        codec().publish(one(b"\x36\x02\x00\x00"))  # QoS 3


@pytest.mark.parametrize(("max_body", "announced"), [
    (127, 1 + 1 + 127), (128, 1 + 2 + 128), (16383, 1 + 2 + 16383), (16384, 1 + 3 + 16384),
    (1 << 20, 1 + 3 + (1 << 20)), (300 << 20, 268_435_460),
])
def test_the_maximum_packet_size_counts_the_fixed_header(max_body: int, announced: int) -> None:
    assert codec(max_body).max_packet_size() == announced


@pytest.mark.parametrize("topic, size, qos", [
    ("v1/devices/me/rpc/request/1", 10, 0), ("v1/devices/me/rpc/request/1", 10, 1),
    ("v1/devices/me/attributes", 0, 1), ("é/ü", 126, 1), ("t", 16_383, 0), ("t", 16_384, 1),
    ("v2/r/req/7", 2_097_152, 1),
])
def test_the_size_of_an_outgoing_publish_is_worked_out_as_encoded(
        topic: str, size: int, qos: int) -> None:
    """The client's Maximum Packet Size is checked against a size worked out, not a packet
    built twice: it is the length of what ``outgoing`` writes, across the remaining length's
    byte counts and non-ASCII topics."""
    payload = b"x" * size
    assert Mqtt5.outgoing_size(topic, payload, qos) == len(
        codec().outgoing(topic, payload, 1 if qos else None, False, qos))
