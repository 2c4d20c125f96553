"""mqtt/frames.py, mqtt/burst.py and the acknowledgement frames of mqtt/acknowledger.py, without
a server: packets cut out of bytes however they arrive and decoded as amqtt decodes them from a
stream; an oversized packet refused from its header alone; consecutive publishes held for one
command as the device service would have stored them one by one."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any

import pytest
from amqtt.mqtt.connect import ConnectPacket, ConnectPayload, ConnectVariableHeader
from amqtt.mqtt.packet import CONNECT, PINGREQ, PUBLISH, SUBSCRIBE
from amqtt.mqtt.pingreq import PingReqPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.pubrec import PubrecPacket
from amqtt.mqtt.subscribe import SubscribePacket

from edge_sync.mqtt.acknowledger import frame
from edge_sync.mqtt.acks import Reply
from edge_sync.mqtt.burst import MAX_ENTRIES, Burst
from edge_sync.mqtt.frames import FrameReader, Malformed, Oversize


def publish(topic: str, payload: bytes, packet_id: int | None, qos: int) -> bytes:
    return bytes(PublishPacket.build(topic, payload, packet_id, False, qos, False).to_bytes())


def test_acknowledgement_frames_are_what_amqtt_encodes() -> None:
    for packet_id in range(0x10000):
        assert frame(Reply.PUBACK, packet_id) == bytes(PubackPacket.build(packet_id).to_bytes())
    for packet_id in (0, 1, 255, 256, 4660, 0xFFFF):
        assert frame(Reply.PUBREC, packet_id) == bytes(PubrecPacket.build(packet_id).to_bytes())
        assert frame(Reply.PUBCOMP, packet_id) == bytes(PubcompPacket.build(packet_id).to_bytes())


def test_packets_fed_byte_by_byte_come_out_whole_and_decoded() -> None:
    connect_header = ConnectVariableHeader(0, 60, "MQTT", 4)
    connect_header.username_flag = True
    connect = bytes(ConnectPacket(variable_header=connect_header, payload=ConnectPayload(
        client_id="c1", username="token")).to_bytes())
    big = b"x" * 20_000  # a four-byte header: remaining length above 16,383
    stream = (connect + publish("v1/devices/me/telemetry", b'{"n": 1}', 7, 1)
              + publish("a/b", big, None, 0) + bytes(PingReqPacket().to_bytes())
              + bytes(SubscribePacket.build([("v1/devices/me/attributes", 1)], 9).to_bytes()))
    reader = FrameReader(1 << 20)
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i:i + 1])
        while (f := reader.next()) is not None:
            got.append(f)
    assert len(reader) == 0
    assert [f.kind for f in got] == [CONNECT, PUBLISH, PUBLISH, PINGREQ, SUBSCRIBE]
    decoded = reader.packet(got[0])
    assert (decoded.client_id, decoded.username, decoded.keep_alive) == ("c1", "token", 60)
    assert reader.publish(got[1]) == ("v1/devices/me/telemetry", 1, 7, b'{"n": 1}')
    assert reader.publish(got[2]) == ("a/b", 0, 0, big)
    assert reader.packet(got[4]).payload.topics == [("v1/devices/me/attributes", 1)]


def test_a_whole_burst_in_one_read_and_a_partial_packet_kept_for_the_next() -> None:
    frames = [publish("v1/devices/me/telemetry", b'{"v": %d}' % i, i + 1, 1) for i in range(300)]
    data = b"".join(frames)
    reader = FrameReader(1 << 20)
    reader.feed(data[:-5])
    out = list(iter(reader.next, None))
    assert len(out) == 299 and len(reader) == len(frames[-1]) - 5
    reader.feed(data[-5:])
    last = reader.next()
    assert last is not None and reader.publish(last)[2] == 300
    assert reader.next() is None and len(reader) == 0


def test_an_oversized_packet_is_refused_from_its_header_alone() -> None:
    reader = FrameReader(4096)
    assert reader.read_size == 4096  # no read brings more than the limit
    reader.feed(bytes([0x32]))
    assert reader.next() is None
    reader.feed(bytes([0x81, 0x20]))  # 4097: one above the limit
    with pytest.raises(Oversize) as refused:
        reader.next()
    assert refused.value.length == 4097
    exact = publish("t", b"x" * (4096 - 5), 1, 1)  # remaining length 4096: taken
    reader = FrameReader(4096)
    reader.feed(exact)
    assert reader.next() is not None


def test_a_remaining_length_of_more_than_four_bytes_is_malformed() -> None:
    reader = FrameReader(1 << 20)
    reader.feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    with pytest.raises(Malformed):
        reader.next()


def test_a_publish_whose_topic_runs_past_its_packet_is_malformed() -> None:
    reader = FrameReader(1 << 20)
    reader.feed(bytes([0x30, 0x04, 0x00, 0x10, 0x61, 0x62]) + publish("t", b"{}", 1, 1))
    f = reader.next()
    assert f is not None
    with pytest.raises(Malformed):
        reader.publish(f)
    after = reader.next()  # the next packet is cut where the bad one ends, not inside it
    assert after is not None and reader.publish(after) == ("t", 1, 1, b"{}")


def test_a_wildcard_in_a_published_topic_is_malformed() -> None:
    reader = FrameReader(1 << 20)
    raw = bytearray(publish("a/x", b"{}", 1, 1))
    raw[raw.index(b"a/x") + 2] = ord("+")
    reader.feed(bytes(raw))
    f = reader.next()
    assert f is not None
    with pytest.raises(Malformed):
        reader.publish(f)


# -- burst.py ------------------------------------------------------------------------------------


class FakeService:
    def __init__(self) -> None:
        self.device = type("D", (), {"id": uuid.uuid4()})()
        self.commands: list[tuple[str, Any]] = []

    def authenticate(self, token: str) -> Any:
        assert token == "tok"
        return self.device

    def post_entries(self, device_id: uuid.UUID, entries: Any) -> Future[range]:
        self.commands.append(("telemetry", entries))
        return Future()

    def post_client_attributes(self, device_id: uuid.UUID, values: Any) -> Future[range]:
        self.commands.append(("attributes", values))
        return Future()


def test_telemetry_entries_are_concatenated_in_order_with_every_reply() -> None:
    service = FakeService()
    burst = Burst(service, "tok")  # type: ignore[arg-type]
    assert burst.telemetry(((1, (("a", 1),)),), Reply.PUBACK, 1)
    assert burst.telemetry(((2, (("a", 2),)), (2, (("b", 3),))), Reply.NONE, 0)
    assert len(burst) == 2
    assert not burst.attributes((("x", 1),), Reply.PUBACK, 3)  # another kind: take first
    replies, _ = burst.take()
    assert replies == [(Reply.PUBACK, 1), (Reply.NONE, 0)]
    assert service.commands == [("telemetry", ((1, (("a", 1),)), (2, (("a", 2),)),
                                               (2, (("b", 3),))))]
    assert len(burst) == 0


def test_attributes_merge_while_their_keys_are_disjoint() -> None:
    service = FakeService()
    burst = Burst(service, "tok")  # type: ignore[arg-type]
    assert burst.attributes((("a", 1),), Reply.PUBACK, 1)
    assert burst.attributes((("b", 2), ("c", 3)), Reply.PUBACK, 2)
    assert not burst.attributes((("c", 4),), Reply.PUBACK, 3)
    assert not burst.telemetry(((1, (("a", 1),)),), Reply.PUBACK, 3)
    burst.take()
    assert burst.attributes((("c", 4),), Reply.PUBACK, 3)
    burst.take()
    assert service.commands == [("attributes", (("a", 1), ("b", 2), ("c", 3))),
                                ("attributes", (("c", 4),))]


def test_a_command_holds_at_most_max_entries() -> None:
    burst = Burst(FakeService(), "tok")  # type: ignore[arg-type]
    many = tuple((i, (("n", i),)) for i in range(MAX_ENTRIES))
    assert burst.telemetry(many, Reply.PUBACK, 1)
    assert not burst.telemetry(((0, (("n", 0),)),), Reply.PUBACK, 2)


def test_publishes_decode_as_amqtt_decodes_them_whatever_topic_came_before() -> None:
    """The topic remembered from the last PUBLISH is used only for the same bytes: topics
    alternating, a prefix of another, QoS 0 and 1 and 2 mixed, an empty payload."""
    specs = [("v1/devices/me/telemetry", 1, 1, b'{"n": 1}'), ("v1/devices/me/telemetry", 0, None, b"{}"),
             ("v1/devices/me/telemetry/x", 1, 2, b"a"), ("v1/devices/me/telemetr", 2, 3, b""),
             ("v1/devices/me/attributes", 1, 65535, b'{"a": 1}'), ("v1/devices/me/attributes", 1, 4, b"b"),
             ("é/ü", 0, None, b"c"), ("v1/devices/me/telemetry", 1, 5, b"d" * 300)]
    stream = b"".join(publish(t, p, pid, q) for t, q, pid, p in specs)
    reader = FrameReader(1 << 20)
    reader.feed(stream)
    got = [reader.publish(f) for f in iter(reader.next, None)]
    expected = []
    for t, q, pid, p in specs:
        amqtt_side = FrameReader(1 << 20)  # a new reader: nothing remembered
        amqtt_side.feed(publish(t, p, pid, q))
        f = amqtt_side.next()
        assert f is not None
        expected.append(amqtt_side.publish(f))
    assert got == expected == [(t, q, pid or 0, p) for t, q, pid, p in specs]


def test_a_remembered_topic_without_its_packet_id_is_malformed() -> None:
    reader = FrameReader(1 << 20)
    whole = publish("t/1", b"{}", 9, 1)
    reader.feed(whole + bytes([0x32, 0x05]) + whole[2:7])  # QoS 1, the topic and no packet id
    first, second = reader.next(), reader.next()
    assert first is not None and second is not None
    assert reader.publish(first) == ("t/1", 1, 9, b"{}")
    with pytest.raises(Malformed):
        reader.publish(second)
