"""MQTT 5 clients, served as ThingsBoard serves them (MqttTransportHandler with its MQTT 5
handling): a real paho-mqtt client at protocol=MQTTv5, and raw packets encoded with the
``mqtt5`` package where the exact bytes of the answer matter.

CONNECT with the access token (CONNACK 0x00 with the edge's properties) and an unknown one
(0x86, as ReturnCodeResolver keeps it over MQTT 5; 0x85 and 0x87 for a CONNECT without
credentials); QoS 1 telemetry acknowledged only once committed, in order; a commit that fails
closes with DISCONNECT 0x83 and no PUBACK; attribute requests answered; an RPC request
delivered and its answer uplinked; a session kept with clean start 0 and a session expiry
interval, and not kept without one; a topic alias (Topic Alias Maximum 0) ends the connection
with DISCONNECT 0x94; a topic the edge does not serve gets SUBACK 0x8F. The DISCONNECT reason
codes of a bad payload (0x99), a retained publish (0x9A), an oversized packet (0x95), a
takeover (0x8E) and a deleted device (0x87); SUBACK 0xA1 and the UNSUBACK codes; the client's
Maximum Packet Size honoured; QoS 2.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mqtt5
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_sync.app import EdgeApp
from edge_sync.devices.rpc import RpcStatus
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.records import Device
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.mqtt_app import MQTT_ON, AppFactory, no_connections, round_trip, values
from tests.helpers.mqtt_device import ATTRIBUTES, TELEMETRY, MqttDevice
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import (
    Harness,
    deliver,
    make_device,
    rpc_downlink,
    rpc_uplinks,
    rpcs,
    shared_downlink,
)

DEADLINE_S = 10.0
TOKEN = "mqtt5-token-1"
MAX_MESSAGE = 4096
INFLIGHT = 64


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


@pytest.fixture
def app(make_app: AppFactory) -> EdgeApp:
    return make_app(EDGE_MQTT_MAX_MESSAGE_BYTES=str(MAX_MESSAGE),
                    EDGE_MQTT_MAX_INFLIGHT_PER_CLIENT=str(INFLIGHT))


@pytest.fixture
def device_id(app: EdgeApp) -> uuid.UUID:
    device, created = app.service.create_device("mqtt5-dev-1", token=TOKEN)
    created.result(DEADLINE_S)
    return device.id


def v5(port: int, token: str, **kwargs: Any) -> MqttDevice:
    return MqttDevice(port, token, protocol=mqtt.MQTTv5, **kwargs)


def raw_exchange(port: int, packet: bytes) -> tuple[Any, bool]:
    """Send one packet on a plain socket; the first packet the server answers (decoded by the
    ``mqtt5`` package) and whether the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(packet)
        data = b""
        while True:
            try:
                answer, used = mqtt5.read(memoryview(data))
                break
            except IndexError:  # not all there yet
                chunk = sock.recv(4096)
                assert chunk, "closed before an answer"
                data += chunk
        rest = data[used:]
        while chunk := sock.recv(4096):
            rest += chunk
        return answer, rest == b""


# -- CONNECT ---------------------------------------------------------------------------------


def test_connack_carries_what_the_edge_serves(app: EdgeApp, device_id: uuid.UUID) -> None:
    """CONNACK 0x00 and its properties: Receive Maximum = mqtt.max_inflight_per_client,
    Maximum Packet Size = the fixed header plus mqtt.max_message_bytes, Topic Alias Maximum 0,
    Retain Available 0, no shared subscriptions or subscription identifiers, wildcards
    served; the session expiry the edge keeps a session for (mqtt.session_expiry_s, 3600 s)
    when the client asks for another."""
    connect = mqtt5.ConnectPacket("c5", username=TOKEN, clean_start=True,
                                  session_expiry_interval=60)
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S) as sock:
        sock.sendall(connect.write())
        data = b""
        while True:
            try:
                connack, _ = mqtt5.read(memoryview(data))
                break
            except IndexError:
                data += sock.recv(4096)
        sock.sendall(mqtt5.DisconnectPacket().write())
    assert isinstance(connack, mqtt5.ConnAckPacket)
    assert (connack.reason_code, connack.session_present) == (
        mqtt5.ConnAckReasonCode.SUCCESS, False)
    assert (connack.receive_max, connack.max_packet_size, connack.topic_alias_max) == (
        INFLIGHT, 1 + 2 + MAX_MESSAGE, 0)
    assert (connack.retain_available, connack.shared_subscription_available,
            connack.subscription_id_available, connack.wildcard_subscription_available) == (
        False, False, False, True)
    assert connack.session_expiry_interval == 3600
    assert connack.assigned_client_id is None
    no_connections(app)


def test_an_empty_client_id_is_assigned_one(app: EdgeApp, device_id: uuid.UUID) -> None:
    connack, closed = raw_exchange(app.mqtt_port, mqtt5.ConnectPacket(
        "", username=TOKEN, clean_start=True).write() + mqtt5.DisconnectPacket().write())
    assert connack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    assert connack.assigned_client_id is not None
    assert connack.assigned_client_id.startswith("edge-")
    assert closed
    no_connections(app)


def test_an_unknown_token_gets_0x86_with_paho(app: EdgeApp, device_id: uuid.UUID) -> None:
    """ThingsBoard answers a username without a device CONNECTION_REFUSED_BAD_USERNAME_OR_
    PASSWORD, kept as 0x86 over MQTT 5 (onValidateDeviceResponse, ReturnCodeResolver)."""
    with v5(app.mqtt_port, "not-a-token") as dev:
        reason = dev.connect()
        assert reason is not None and reason.is_failure
        assert reason.value == 0x86
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
    no_connections(app)


@pytest.mark.parametrize(("client_id", "username", "password", "code"), [
    ("c1", "nope", None, 0x86),
    ("c1", "nope", b"pw", 0x86),
    ("c1", None, b"pw", 0x86),
    ("c1", None, None, 0x85),
    ("", None, None, 0x87),
])
def test_credentials_that_name_no_device_get_thingsboards_reason_code(
        app: EdgeApp, client_id: str, username: str | None, password: bytes | None,
        code: int) -> None:
    connack, closed = raw_exchange(app.mqtt_port, mqtt5.ConnectPacket(
        client_id, username=username, password=password, clean_start=True).write())
    assert isinstance(connack, mqtt5.ConnAckPacket)
    assert int(connack.reason_code) == code
    assert closed
    no_connections(app)


def test_a_malformed_connect_is_closed_without_a_disconnect(app: EdgeApp) -> None:
    """No DISCONNECT before a CONNACK (MQTT 5 §4.13.1): the connection is closed, nothing is
    written."""
    variable = b"\x00\x04MQTT\x05\x02\x00\x3c\x05\x11"  # 5 bytes of properties, 1 sent
    connect = bytes([0x10, len(variable)]) + variable
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S) as sock:
        sock.sendall(connect)
        assert sock.recv(4096) == b""
    no_connections(app)


def packets_after_connect(port: int, connect: bytes, then: bytes = b"") -> list[Any]:
    """CONNECT, then ``then``: every packet the server sends until it closes the connection
    (decoded by the ``mqtt5`` package)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(connect + then)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    packets = []
    while data:
        packet, used = mqtt5.read(memoryview(data))
        packets.append(packet)
        data = data[used:]
    return packets


def test_a_second_connect_ends_with_0x82_and_silence_with_0x8d(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    connect = mqtt5.ConnectPacket("k", username=TOKEN, clean_start=True, keep_alive=1).write()
    connack, disconnect = packets_after_connect(app.mqtt_port, connect, connect)
    assert connack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.PROTOCOL_ERROR
    # nothing sent for 1.5 times the keep-alive of 1 s
    connack, disconnect = packets_after_connect(app.mqtt_port, connect)
    assert connack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.KEEP_ALIVE_TIMEOUT
    no_connections(app)


# -- publishes -------------------------------------------------------------------------------


def test_qos1_telemetry_is_acknowledged_after_commit_in_order(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    count = 200
    seen_at_ack: dict[int, list[object]] = {}
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        dev.on_ack = lambda mid: seen_at_ack.__setitem__(mid, values(app, device_id))
        mids = [dev.publish(TELEMETRY, {"n": i}).mid for i in range(count)]
        wait_until(lambda: len(dev.acked_ids()) == count, timeout=DEADLINE_S, what="all PUBACKs")
        assert dev.acked_ids() == mids
    for i, mid in enumerate(mids):
        assert i in seen_at_ack[mid], f"PUBACK {mid} came before message {i} was committed"
    assert values(app, device_id) == list(range(count))
    no_connections(app)


def test_a_failed_commit_closes_with_disconnect_0x83_and_no_puback(
        make_app: AppFactory) -> None:
    """Storage full: the publish is not acknowledged; the client gets DISCONNECT 0x83, as
    ThingsBoard's getPubAckCallback.onError closes with IMPLEMENTATION_SPECIFIC_ERROR."""
    app = make_app(EDGE_STORAGE_MAP_SIZE_INITIAL_MB="1", EDGE_STORAGE_MAX_MB="1")
    device, created = app.service.create_device("full", token="full-token")
    created.result(DEADLINE_S)
    pad = "p" * 2000
    while app.service.post_telemetry("full-token", {"n": -1, "pad": pad}).exception(
            DEADLINE_S) is None:  # fill the store: the next commit fails
        pass
    with v5(app.mqtt_port, "full-token") as dev:
        assert dev.connect() == 0
        info = dev.publish(TELEMETRY, {"n": 1, "pad": pad})
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert info.mid not in dev.acked_ids()
        assert dev.disconnect_reason is not None and dev.disconnect_reason.value == 0x83
    assert 1 not in values(app, device.id)
    no_connections(app)


def test_a_topic_alias_ends_the_connection_with_0x94(app: EdgeApp, device_id: uuid.UUID) -> None:
    """The edge announces Topic Alias Maximum 0: a PUBLISH with a topic alias is a protocol
    error (MQTT 5 §3.3.2.3.4), not stored."""
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        properties = Properties(PacketTypes.PUBLISH)
        properties.TopicAlias = 1
        info = dev.client.publish(TELEMETRY, b'{"aliased": 1}', qos=1, properties=properties)
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert info.mid not in dev.acked_ids()
        assert dev.disconnect_reason is not None and dev.disconnect_reason.value == 0x94
    assert values(app, device_id) == []
    no_connections(app)


# -- subscriptions, attribute requests, RPC, sessions ----------------------------------------


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def linked(harness: Harness) -> tuple[FakeCloud, EdgeApp, Device]:
    fake, app = harness.connected_edge(**MQTT_ON)
    return fake, app, make_device(app, "mqtt5-session")


def test_rpc_request_delivered_and_answered(linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    fake, app, dev = linked
    with v5(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe("v1/devices/me/rpc/request/+", qos=1) == [1]
        deliver(fake, rpc_downlink(fake, dev, 7, "setGpio", {"pin": 1}))
        assert client.wait_message("v1/devices/me/rpc/request/7") == {
            "method": "setGpio", "params": {"pin": 1}}
        answer = client.publish("v1/devices/me/rpc/response/7", {"pin": 1, "value": True})
        wait_until(lambda: answer.mid in client.acked_ids(), timeout=DEADLINE_S,
                   what="PUBACK of the answer")
        up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
        assert (up.requestId, json.loads(up.responseMsg.response)) == (
            7, {"pin": 1, "value": True})
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.SUCCESSFUL]
    no_connections(app)


def test_a_topic_the_edge_does_not_serve_gets_suback_0x8f(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """ThingsBoard's TOPIC_FILTER_INVALID, kept over MQTT 5 (getSubscriptionReturnCode); a
    shared subscription 0x9E."""
    _, app, dev = linked
    with v5(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        _, mid = client.client.subscribe("v1/devices/me/nothing/#", qos=1)
        assert wait_until(lambda: client.reason_codes.get(mid), timeout=DEADLINE_S,
                          what="SUBACK") == [0x8F]
        _, mid = client.client.subscribe("$share/g/v1/devices/me/attributes", qos=1)
        assert wait_until(lambda: client.reason_codes.get(mid), timeout=DEADLINE_S,
                          what="SUBACK") == [0x9E]
        assert not client.disconnected.is_set()
    no_connections(app)


def test_a_session_with_an_expiry_interval_is_kept(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Clean start 0 and a session expiry interval: the reconnecting client finds session
    present 1, its subscription serving and the RPC request queued meanwhile; without an
    expiry interval (0) the session ends with the connection."""
    fake, app, dev = linked
    with v5(app.mqtt_port, dev.token, client_id="keeper5", clean_start=False,
            session_expiry=600) as first:
        assert first.connect() == 0
        assert first.session_present is False
        assert first.subscribe("v1/devices/me/rpc/request/+", qos=1) == [1]
    deliver(fake, rpc_downlink(fake, dev, 21, "reboot", {"delay": 1}))  # nobody connected
    with v5(app.mqtt_port, dev.token, client_id="keeper5", clean_start=False,
            session_expiry=600) as again:
        assert again.connect() == 0
        assert again.session_present is True  # no SUBSCRIBE this time
        assert again.wait_message("v1/devices/me/rpc/request/21") == {
            "method": "reboot", "params": {"delay": 1}}
    with v5(app.mqtt_port, dev.token, client_id="brief5", clean_start=False) as brief:
        assert brief.connect() == 0
        assert brief.subscribe("v1/devices/me/rpc/request/+", qos=1) == [1]
    with v5(app.mqtt_port, dev.token, client_id="brief5", clean_start=False) as brief:
        assert brief.connect() == 0
        assert brief.session_present is False
    no_connections(app)


# -- what ends a connection, and what is not sent --------------------------------------------


def test_malformed_json_at_qos1_gets_puback_0x99_and_the_connection_stays(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """ThingsBoard's sendResponseForAdaptorErrorOrCloseContext over MQTT 5: PUBACK 0x99, in
    order with the acknowledgements around it; nothing stored for it."""
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        mids = [dev.publish(TELEMETRY, {"n": 0}).mid,
                dev.publish(TELEMETRY, b"{not json").mid,
                dev.publish(ATTRIBUTES, b"[1, 2").mid,
                dev.publish(TELEMETRY, {"n": 1}).mid]
        wait_until(lambda: len(dev.acked_ids()) == 4, timeout=DEADLINE_S, what="4 PUBACKs")
        assert dev.acked_ids() == mids
        assert [dev.ack_codes[mid] for mid in mids] == [0x00, 0x99, 0x99, 0x00]
        assert not dev.disconnected.is_set()
    assert values(app, device_id) == [0, 1]
    no_connections(app)


def test_malformed_json_at_qos0_ends_with_disconnect_0x99_after_the_acks_due(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        good = [dev.publish(TELEMETRY, {"n": i}).mid for i in range(3)]
        bad = dev.publish(TELEMETRY, b"{not json", qos=0).mid  # paho: "acked" once sent
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert [mid for mid in dev.acked_ids() if mid != bad] == good
        assert dev.disconnect_reason is not None and dev.disconnect_reason.value == 0x99
    assert values(app, device_id) == [0, 1, 2]
    no_connections(app)


def test_a_topic_outside_the_api_gets_puback_0x90(app: EdgeApp, device_id: uuid.UUID) -> None:
    """ThingsBoard's processDevicePublish over MQTT 5: PUBACK 0x90 (topic name invalid) for
    a topic outside its device API, the connection stays; a topic ThingsBoard serves and the
    edge drops (device claiming) is acknowledged 0x00, as over MQTT 3.1.1."""
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        mids = [dev.publish("sensors/room1", {"t": 1}).mid,
                dev.publish("v1/devices/me/claim", {"secretKey": "s"}).mid,
                dev.publish(TELEMETRY, {"n": 5}).mid]
        wait_until(lambda: len(dev.acked_ids()) == 3, timeout=DEADLINE_S, what="3 PUBACKs")
        assert [dev.ack_codes[mid] for mid in dev.acked_ids()] == [0x90, 0x00, 0x00]
        assert dev.acked_ids() == mids
        assert not dev.disconnected.is_set()
    assert values(app, device_id) == [5]
    no_connections(app)


def test_a_retained_publish_ends_with_disconnect_0x9a(app: EdgeApp, device_id: uuid.UUID) -> None:
    """Retain Available 0 in CONNACK: a retained PUBLISH is a protocol error (§3.3.1.3)."""
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        dev.client.publish(TELEMETRY, b'{"kept": 1}', qos=1, retain=True)
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert dev.disconnect_reason is not None and dev.disconnect_reason.value == 0x9A
    assert values(app, device_id) == []
    no_connections(app)


def test_an_oversized_publish_ends_with_disconnect_0x95(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        dev.publish(TELEMETRY, {"pad": "x" * MAX_MESSAGE})
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert dev.disconnect_reason is not None and dev.disconnect_reason.value == 0x95
    assert values(app, device_id) == []
    no_connections(app)


def test_the_older_connection_of_a_client_id_gets_disconnect_0x8e(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with v5(app.mqtt_port, TOKEN, client_id="twice") as first:
        assert first.connect() == 0
        with v5(app.mqtt_port, TOKEN, client_id="twice") as second:
            assert second.connect() == 0
            wait_until(first.disconnected.is_set, timeout=DEADLINE_S, what="older one closed")
            assert first.disconnect_reason is not None
            assert first.disconnect_reason.value == 0x8E
            assert not second.disconnected.is_set()
    no_connections(app)


def test_subscription_identifiers_and_unsubscribe_reason_codes(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """Subscription Identifier Available 0: SUBACK 0xA1; UNSUBACK 0x00 for a filter that was
    subscribed, 0x11 for one that was not."""
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        properties = Properties(PacketTypes.SUBSCRIBE)
        properties.SubscriptionIdentifier = 4
        _, mid = dev.client.subscribe(ATTRIBUTES, qos=1, properties=properties)
        assert wait_until(lambda: dev.reason_codes.get(mid), timeout=DEADLINE_S,
                          what="SUBACK") == [0xA1]
        assert dev.subscribe(ATTRIBUTES, qos=1) == [1]
        _, mid = dev.client.unsubscribe([ATTRIBUTES, "v1/devices/me/rpc/request/+"])
        assert wait_until(lambda: dev.unsubscribe_codes.get(mid), timeout=DEADLINE_S,
                          what="UNSUBACK") == [0x00, 0x11]
    no_connections(app)


def test_a_message_over_the_clients_maximum_packet_size_is_not_sent(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """The client's Maximum Packet Size (200 bytes): an attribute response larger is not sent,
    a smaller one is."""
    app.service.post_attributes(TOKEN, {"big": "b" * 300, "small": 1}).result(DEADLINE_S)
    dev = v5(app.mqtt_port, TOKEN)
    properties = Properties(PacketTypes.CONNECT)
    properties.MaximumPacketSize = 200
    dev.client.connect(dev.host, dev.port, keepalive=30, clean_start=True,
                       properties=properties)
    dev.client.loop_start()
    try:
        wait_until(lambda: dev.connack is not None, timeout=DEADLINE_S, what="CONNACK")
        assert dev.connack == 0
        assert dev.subscribe("v1/devices/me/attributes/response/+", qos=1) == [1]
        dev.publish("v1/devices/me/attributes/request/1", {"clientKeys": "big"})
        dev.publish("v1/devices/me/attributes/request/2", {"clientKeys": "small"})
        assert dev.wait_message("v1/devices/me/attributes/response/2") == {
            "client": {"small": 1}}
        assert dev.received_on("v1/devices/me/attributes/response/1") == []
        assert not dev.disconnected.is_set()
    finally:
        dev.close()
    no_connections(app)


def test_qos2_is_stored_once_and_completes(app: EdgeApp, device_id: uuid.UUID) -> None:
    """PUBREC once committed, PUBCOMP on the client's PUBREL, as over MQTT 3.1.1."""
    with v5(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        infos = [dev.publish(TELEMETRY, {"n": i}, qos=2) for i in range(20)]
        wait_until(lambda: len(dev.acked_ids()) == 20, timeout=DEADLINE_S, what="20 PUBCOMPs")
        assert dev.acked_ids() == [i.mid for i in infos]
    assert values(app, device_id) == list(range(20))
    no_connections(app)


def test_a_deleted_device_is_disconnected_with_0x87(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    _, app, dev = linked
    with v5(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        app.entities.delete_device(dev.id).result(DEADLINE_S)
        assert client.disconnected.wait(DEADLINE_S), "the connection stayed open"
        assert client.disconnect_reason is not None and client.disconnect_reason.value == 0x87
    no_connections(app)


# the codec reports its own UnicodeDecodeError through sys.unraisablehook before it panics
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_packet_the_codec_panics_on_ends_with_disconnect_0x81(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """A PUBLISH whose topic is not UTF-8 makes the mqtt5 codec panic (pyo3's PanicException,
    a BaseException, not an Exception): it is a malformed packet like any other, answered with
    DISCONNECT 0x81, and nothing of it is stored."""
    connect = mqtt5.ConnectPacket("panic", username=TOKEN, clean_start=True).write()
    not_utf8 = b"2\x1e\x00\x17v1Sdevices/me/telemet\xbdy\x00\x05\x00\x16\x0f"
    connack, disconnect = packets_after_connect(app.mqtt_port, connect, not_utf8)
    assert connack.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.MALFORMED_PACKET
    no_connections(app)
    assert values(app, device_id) == []


def test_two_311_clients_with_empty_client_ids_are_two_sessions(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """MQTT 3.1.1 clients of one device that send empty client ids with clean session each get
    a client id of their own (amqtt's), as before MQTT 5 was served: the second does not take
    the first one's connection over."""
    with MqttDevice(app.mqtt_port, TOKEN, client_id="") as first, \
            MqttDevice(app.mqtt_port, TOKEN, client_id="") as second:
        assert first.connect() == 0
        assert second.connect() == 0
        mids = [first.publish(TELEMETRY, {"from": "first"}).mid,
                second.publish(TELEMETRY, {"from": "second"}).mid]
        wait_until(lambda: first.acked_ids() == mids[:1] and second.acked_ids() == mids[1:],
                   timeout=DEADLINE_S, what="both publishes acknowledged")
        assert not first.disconnected.is_set() and not second.disconnected.is_set()
    assert sorted(values(app, device_id, "from")) == ["first", "second"]


# -- Receive Maximum, resends on a resumed session -------------------------------------------

RPC_REQUESTS = "v1/devices/me/rpc/request/+"
RPC_PREFIX = "v1/devices/me/rpc/request/"
RESPONSES = "v1/devices/me/attributes/response/+"


def requests_received(client: MqttDevice) -> list[tuple[int, bool]]:
    """The RPC requests the edge published to ``client``, in order: (request id, DUP)."""
    return [(int(m.topic[len(RPC_PREFIX):]), bool(m.dup))
            for m in list(client.received) if m.topic.startswith(RPC_PREFIX)]


def handed_over(app: EdgeApp, dev: Device, count: int, kept: int | None = None) -> None:
    """Wait until ``count`` RPC requests are handed to the connection at QoS 1, in flight
    (QUEUED until their PUBACK) and ``kept`` of them (all when None) in the client's session
    (written, or waiting under its Receive Maximum): what the connection sends of them is
    written before the answer to a later attribute request (round_trip)."""
    server = app.mqtt_server
    assert server is not None
    kept = count if kept is None else kept
    wait_until(lambda: ([r.status for r in rpcs(app, dev)] == [RpcStatus.QUEUED] * count
                        and server.results_pending == 0 and server.unacked == kept),
               timeout=DEADLINE_S, what=f"{count} requests handed to the connection",
               show=lambda: (server.unacked, [r.status for r in rpcs(app, dev)]))


def requests_held_back(fake: FakeCloud, app: EdgeApp, dev: Device, client: MqttDevice,
                       count: int, sent: int, kept: int | None = None) -> None:
    """``client`` (connected, holding its PUBACKs back) subscribes to RPC requests at QoS 1 and
    to attribute responses at QoS 0 (so round_trip is not held back); ``count`` requests are
    delivered and handed to its connection (``kept`` of them kept in its session), and only
    the first ``sent`` of them reach it."""
    assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
    assert client.subscribe(RESPONSES) == [0]
    for n in range(1, count + 1):
        deliver(fake, rpc_downlink(fake, dev, n, "ping"))
    handed_over(app, dev, count, kept)
    round_trip(client, 1)
    assert requests_received(client) == [(n, False) for n in range(1, sent + 1)]


def puback(client: MqttDevice, request_id: int) -> None:
    (message,) = [m for m in client.received_on(f"{RPC_PREFIX}{request_id}") if m.qos == 1][-1:]
    client.client.ack(message.mid, message.qos)


def test_no_more_qos1_messages_await_their_puback_than_the_clients_receive_maximum(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """MQTT 5 §3.1.2.11.3 and §4.9: the client announces Receive Maximum 2 and holds its
    PUBACKs back. Of five RPC requests two are sent; the others wait in the session, in
    order, and go out one per PUBACK (none with DUP: each is sent once)."""
    fake, app, dev = linked
    with v5(app.mqtt_port, dev.token, manual_ack=True, receive_max=2) as client:
        assert client.connect() == 0
        requests_held_back(fake, app, dev, client, 5, sent=2)
        puback(client, 2)  # the room of any PUBACK, not only the oldest one's
        wait_until(lambda: len(requests_received(client)) == 3, timeout=DEADLINE_S,
                   what="request 3 after one PUBACK")
        round_trip(client, 2)
        assert requests_received(client) == [(1, False), (2, False), (3, False)]
        puback(client, 1)
        puback(client, 3)
        wait_until(lambda: len(requests_received(client)) == 5, timeout=DEADLINE_S,
                   what="requests 4 and 5 after two more PUBACKs")
        round_trip(client, 3)
        assert requests_received(client) == [(n, False) for n in range(1, 6)]
        assert not client.disconnected.is_set()
    no_connections(app)


def statuses(app: EdgeApp, dev: Device) -> list[RpcStatus]:
    return [r.status for r in rpcs(app, dev)]


def test_a_request_waiting_under_the_receive_maximum_is_delivered_once_written_and_acked(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Receive Maximum 1, two requests: the second waits in the session, QUEUED, until the
    first's PUBACK frees room; written, it is still QUEUED until its own PUBACK. (Both used to
    be DELIVERED as soon as they were handed to the connection.)"""
    fake, app, dev = linked
    with v5(app.mqtt_port, dev.token, manual_ack=True, receive_max=1) as client:
        assert client.connect() == 0
        requests_held_back(fake, app, dev, client, 2, sent=1)
        assert statuses(app, dev) == [RpcStatus.QUEUED, RpcStatus.QUEUED]
        puback(client, 1)
        wait_until(lambda: len(requests_received(client)) == 2, timeout=DEADLINE_S,
                   what="request 2 after PUBACK 1")
        wait_until(lambda: statuses(app, dev) == [RpcStatus.DELIVERED, RpcStatus.QUEUED],
                   timeout=DEADLINE_S, what="request 1 DELIVERED", show=lambda: statuses(app, dev))
        round_trip(client, 2)
        assert statuses(app, dev) == [RpcStatus.DELIVERED, RpcStatus.QUEUED]  # written, no PUBACK
        puback(client, 2)
        wait_until(lambda: statuses(app, dev) == [RpcStatus.DELIVERED] * 2, timeout=DEADLINE_S,
                   what="request 2 DELIVERED", show=lambda: statuses(app, dev))
        assert requests_received(client) == [(1, False), (2, False)]
    no_connections(app)


def test_a_request_that_expired_waiting_under_the_receive_maximum_is_not_written(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Receive Maximum 1: request 2 waits in the session behind request 1, and its
    expirationTime passes: it is EXPIRED ("never delivered"), and when 1's PUBACK frees room
    it is not written (counted in messages_discarded_total{reason="rpc_expired"}), so the
    device never executes a request the cloud was told expired. It used to be written all the
    same, and its answer refused."""
    fake, app, dev = linked
    with v5(app.mqtt_port, dev.token, manual_ack=True, receive_max=1) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        assert client.subscribe(RESPONSES) == [0]
        deliver(fake, rpc_downlink(fake, dev, 1, "ping"))
        deliver(fake, rpc_downlink(fake, dev, 2, "ping", expires_in_ms=1_000))
        handed_over(app, dev, 2)
        wait_until(lambda: statuses(app, dev) == [RpcStatus.QUEUED, RpcStatus.EXPIRED],
                   timeout=DEADLINE_S, what="request 2 EXPIRED while it waits",
                   show=lambda: statuses(app, dev))
        puback(client, 1)
        wait_until(lambda: statuses(app, dev) == [RpcStatus.DELIVERED, RpcStatus.EXPIRED],
                   timeout=DEADLINE_S, what="request 1 DELIVERED", show=lambda: statuses(app, dev))
        round_trip(client, 1)
        assert requests_received(client) == [(1, False)]
        assert app.metrics.value("edge_sync_mqtt_messages_discarded_total",
                                 reason="rpc_expired") == 1
        server = app.mqtt_server
        assert server is not None and server.unacked == 0
    no_connections(app)


def test_a_message_dropped_in_flight_holds_its_place_until_its_puback(
        harness: Harness) -> None:
    """mqtt.max_unacked_per_session 2 and Receive Maximum 1: a shared attribute update is sent,
    requests 1 and 2 wait; keeping 2 drops the oldest message without a request, the update,
    in flight (counted, one WARNING). The client still holds it: nothing more is sent until
    its PUBACK, then 1, then 2 after 1's."""
    fake, app = harness.connected_edge(**MQTT_ON, EDGE_MQTT_MAX_UNACKED_PER_SESSION="2")
    dev = make_device(app, "mqtt5-dropped")
    logs = Logs()
    try:
        with v5(app.mqtt_port, dev.token, manual_ack=True, receive_max=1) as client:
            assert client.connect() == 0
            assert client.subscribe(ATTRIBUTES, qos=1) == [1]
            deliver(fake, shared_downlink(fake, dev, {"setpoint": 1}))
            assert client.wait_message(ATTRIBUTES) == {"setpoint": 1}
            requests_held_back(fake, app, dev, client, 2, sent=0, kept=2)
            assert app.metrics.value("edge_sync_mqtt_unacked_dropped_total") == 1
            (update,) = client.received_on(ATTRIBUTES)
            client.client.ack(update.mid, update.qos)
            for n in (1, 2):
                wait_until(lambda n=n: len(requests_received(client)) == n,
                           timeout=DEADLINE_S, what=f"request {n} after a PUBACK")
                round_trip(client, n + 1)
                puback(client, n)
            assert requests_received(client) == [(1, False), (2, False)]
        no_connections(app)
    finally:
        logs.close()
    (warning,) = logs.matching("dropped unacknowledged")
    assert warning["message"].startswith("message 1 dropped unacknowledged")
    assert app.metrics.value("edge_sync_mqtt_unacked_dropped_total") == 1


def test_a_311_client_gets_every_message_without_waiting_for_pubacks(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """MQTT 3.1.1 has no Receive Maximum: five requests all go out at once."""
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token, manual_ack=True) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        for n in range(1, 6):
            deliver(fake, rpc_downlink(fake, dev, n, "ping"))
        wait_until(lambda: len(requests_received(client)) == 5, timeout=DEADLINE_S,
                   what="five requests without a PUBACK")
        assert requests_received(client) == [(n, False) for n in range(1, 6)]
    no_connections(app)


def test_a_resend_over_the_new_maximum_packet_size_is_not_sent_nor_holds_back_the_rest(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Four requests sent and not acknowledged; the client comes back (clean start 0) with
    Maximum Packet Size 200 and Receive Maximum 2. The one larger than 200 bytes is not sent
    again (one WARNING, as for a new message; no longer kept), the two after it fill the
    Receive Maximum (DUP), and the last goes once a PUBACK frees room."""
    fake, app, dev = linked
    session = {"client_id": "resend5", "clean_start": False, "session_expiry": 600,
               "manual_ack": True}
    with v5(app.mqtt_port, dev.token, **session) as first:
        assert first.connect() == 0
        assert first.subscribe(RPC_REQUESTS, qos=1) == [1]
        for n, params in ((1, None), (2, {"blob": "b" * 300}), (3, None), (4, None)):
            deliver(fake, rpc_downlink(fake, dev, n, "ping", params))
        wait_until(lambda: len(requests_received(first)) == 4, timeout=DEADLINE_S,
                   what="four requests")
    no_connections(app)
    logs = Logs()
    try:
        with v5(app.mqtt_port, dev.token, receive_max=2, max_packet_size=200,
                **session) as again:
            assert again.connect() == 0
            assert again.session_present is True
            assert again.subscribe(RESPONSES) == [0]
            round_trip(again, 1)
            assert requests_received(again) == [(1, True), (3, True)]
            puback(again, 1)
            wait_until(lambda: len(requests_received(again)) == 3, timeout=DEADLINE_S,
                       what="request 4 after a PUBACK")
            round_trip(again, 2)
            assert requests_received(again) == [(1, True), (3, True), (4, True)]
            assert not again.disconnected.is_set()
        no_connections(app)
    finally:
        logs.close()
    (warning,) = logs.matching("more than the client's Maximum Packet Size")
    assert warning["level"].name == "WARNING"
    assert warning["extra"]["topic"] == f"{RPC_PREFIX}2"
    connected = logs.matching("connected over MQTT", client_id="resend5")
    assert [(r["extra"]["resent"], r["extra"]["waiting"]) for r in connected] == [(2, 1)]
    # the one the client can never take is FAILED (sent again, it would be too large again);
    # 1 is DELIVERED by its PUBACK; 3 and 4 are in flight in the kept session, QUEUED
    wait_until(lambda: [(r.request_id, r.status, r.error) for r in rpcs(app, dev)] == [
        (1, RpcStatus.DELIVERED, ""),
        (2, RpcStatus.FAILED, "larger than the client's Maximum Packet Size of 200"),
        (3, RpcStatus.QUEUED, ""), (4, RpcStatus.QUEUED, "")], timeout=DEADLINE_S,
        what="request 1 DELIVERED, 2 FAILED",
        show=lambda: [(r.request_id, r.status, r.error) for r in rpcs(app, dev)])


def discarded(app: EdgeApp) -> dict[str, float]:
    """edge_sync_mqtt_messages_discarded_total by reason (those above 0)."""
    return {reason: value for reason in ("session_unsent", "session_unacked", "max_packet_size")
            if (value := app.metrics.value("edge_sync_mqtt_messages_discarded_total",
                                           reason=reason))}


def test_messages_waiting_under_the_receive_maximum_are_counted_when_the_session_ends(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Receive Maximum 1, three RPC requests: 1 is written, 2 and 3 wait. The client leaves
    with a session that is not kept (session expiry 0): the three are lost with it, each
    counted (2 never written, 1 written and not acknowledged), and said in the disconnect
    line, which is INFO."""
    fake, app, dev = linked
    logs = Logs()
    try:
        with v5(app.mqtt_port, dev.token, manual_ack=True, receive_max=1) as client:
            assert client.connect() == 0
            requests_held_back(fake, app, dev, client, 3, sent=1)
        no_connections(app)
        # the three requests are not lost for the device: back in its queue, for the next
        # subscriber
        back = logs.wait_for("back in the queue", device=str(dev.id))
    finally:
        logs.close()
    assert discarded(app) == {"session_unsent": 2, "session_unacked": 1}
    assert logs.matching("back in the queue", device=str(dev.id)) == [back]
    assert (back["level"].name, back["extra"]["rpc_ids"], back["extra"]["reason"]) == (
        "INFO", [1, 2, 3], "its MQTT session ended with its connection (clean session)")
    assert statuses(app, dev) == [RpcStatus.QUEUED] * 3
    (line,) = logs.matching("disconnected from MQTT")
    assert line["level"].name == "INFO"
    assert {k: line["extra"][k] for k in ("discarded_unsent", "discarded_unacked",
                                          "dropped_unacked", "dropped_too_large")} == {
        "discarded_unsent": 2, "discarded_unacked": 1, "dropped_unacked": 0,
        "dropped_too_large": 0}


def test_sessions_lost_when_the_mqtt_server_stops_are_counted_and_told_in_one_line(
        harness: Harness) -> None:
    """Sessions are kept in memory only. Client "away5" subscribed and left (its session kept,
    holding no message); client "stop5" (Receive Maximum 1, clean start 0) holds three RPC
    requests, 1 written and not acknowledged, 2 and 3 waiting, when the agent stops: its
    connection's end keeps its session, and the server's stop loses both. Counted as every
    discarded session's messages are (2 session_unsent, 1 session_unacked), the two sessions
    in edge_sync_mqtt_sessions_dropped_total{reason="server_stop"}, and told in one WARNING."""
    fake, app = harness.connected_edge(**MQTT_ON)
    dev = make_device(app, "mqtt5-stop")
    kept = {"clean_start": False, "session_expiry": 600, "manual_ack": True}
    with v5(app.mqtt_port, dev.token, client_id="away5", **kept) as away:
        assert away.connect() == 0
        assert away.subscribe(RESPONSES) == [0]
    no_connections(app)
    logs = Logs()
    try:
        with v5(app.mqtt_port, dev.token, client_id="stop5", receive_max=1, **kept) as client:
            assert client.connect() == 0
            requests_held_back(fake, app, dev, client, 3, sent=1)
            assert discarded(app) == {}
            harness.stop(app)
    finally:
        logs.close()
    assert discarded(app) == {"session_unsent": 2, "session_unacked": 1}
    assert {reason: app.metrics.value("edge_sync_mqtt_sessions_dropped_total", reason=reason)
            for reason in ("server_stop", "expired", "max_sessions", "takeover")} == {
        "server_stop": 2, "expired": 0, "max_sessions": 0, "takeover": 0}
    (line,) = logs.matching("MQTT server stopped:")
    assert (line["level"].name, line["message"]) == (
        "WARNING", "MQTT server stopped: 2 kept sessions lost with it (kept in memory only); 2 "
        "messages kept for them never sent, 1 sent and not acknowledged")
    assert {k: line["extra"][k] for k in ("sessions", "unsent", "unacked")} == {
        "sessions": 2, "unsent": 2, "unacked": 1}
    (gone,) = logs.matching("disconnected from MQTT")  # its session was kept at its end
    assert (gone["extra"]["discarded_unsent"], gone["extra"]["discarded_unacked"]) == (0, 0)
    # the three requests go back to the device's queue (QUEUED on disk all along): a DEBUG
    # line, the stop's own line says it (a line per device at INFO would be thousands)
    (back,) = logs.matching("back in the queue", device=str(dev.id))
    assert (back["level"].name, back["message"], back["extra"]["rpc_ids"],
            back["extra"]["reason"]) == (
        "DEBUG", "3 RPC requests sent and not acknowledged back in the queue: the MQTT server "
        "stopped", [1, 2, 3], "the MQTT server stopped")


def test_a_resumed_session_says_apart_what_it_sends_again_and_what_it_sends_first(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Receive Maximum 1, three requests: 1 is sent, 2 and 3 wait. Back with Receive Maximum
    10 (clean start 0): 1 goes again with DUP, 2 and 3 for the first time without it; the
    connect line says resent 1, sent 2. Nothing was lost."""
    fake, app, dev = linked
    session = {"client_id": "firsts5", "clean_start": False, "session_expiry": 600,
               "manual_ack": True}
    with v5(app.mqtt_port, dev.token, receive_max=1, **session) as first:
        assert first.connect() == 0
        requests_held_back(fake, app, dev, first, 3, sent=1)
    no_connections(app)
    logs = Logs()
    try:
        with v5(app.mqtt_port, dev.token, receive_max=10, **session) as again:
            assert again.connect() == 0
            assert again.session_present is True
            assert again.subscribe(RESPONSES) == [0]
            round_trip(again, 1)
            assert requests_received(again) == [(1, True), (2, False), (3, False)]
    finally:
        logs.close()
    connected = logs.matching("connected over MQTT", client_id="firsts5")
    assert [(r["extra"]["resent"], r["extra"]["sent"], r["extra"]["waiting"])
            for r in connected] == [(1, 2, 0)]
    assert discarded(app) == {}


def test_resends_over_the_maximum_packet_size_are_one_warning_and_all_counted(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Three large requests and a small one, not acknowledged; back with Maximum Packet Size
    200: the three are not sent (one WARNING for the first; each counted, and in the
    disconnect line), the small one is."""
    fake, app, dev = linked
    session = {"client_id": "large5", "clean_start": False, "session_expiry": 600,
               "manual_ack": True}
    with v5(app.mqtt_port, dev.token, **session) as first:
        assert first.connect() == 0
        assert first.subscribe(RPC_REQUESTS, qos=1) == [1]
        for n in (1, 2, 3):
            deliver(fake, rpc_downlink(fake, dev, n, "ping", {"blob": "b" * 300}))
        deliver(fake, rpc_downlink(fake, dev, 4, "ping"))
        wait_until(lambda: len(requests_received(first)) == 4, timeout=DEADLINE_S,
                   what="four requests")
    no_connections(app)
    logs = Logs()
    try:
        with v5(app.mqtt_port, dev.token, max_packet_size=200, **session) as again:
            assert again.connect() == 0
            assert again.subscribe(RESPONSES) == [0]
            round_trip(again, 1)
            assert requests_received(again) == [(4, True)]
        no_connections(app)
    finally:
        logs.close()
    (warning,) = logs.matching("more than the client's Maximum Packet Size")
    assert warning["extra"]["topic"] == f"{RPC_PREFIX}1"
    assert discarded(app) == {"max_packet_size": 3}
    (line,) = logs.matching("disconnected from MQTT", device=str(dev.id))[-1:]
    assert line["extra"]["dropped_too_large"] == 3


@pytest.mark.parametrize(("limit", "prop"), [("receive_max", b"\x21\x00\x00"),
                                             ("max_packet_size", b"\x27\x00\x00\x00\x00")])
def test_a_receive_maximum_or_maximum_packet_size_of_0_gets_connack_0x82(
        app: EdgeApp, device_id: uuid.UUID, limit: str, prop: bytes) -> None:
    """MQTT 5 §3.1.2.11.3 and §3.1.2.11.4: either of them 0 is a Protocol Error; the edge
    answers CONNACK 0x82 and closes (§3.1.4), counted as that CONNACK."""
    good = {"receive_max": b"\x21\x00\x05", "max_packet_size": b"\x27\x00\x00\x00\x05"}[limit]
    connect = bytes(mqtt5.ConnectPacket("zero", username=TOKEN,
                                        **{limit: 5}).write())  # type: ignore[arg-type]
    assert connect.count(good) == 1
    (connack,) = packets_after_connect(app.mqtt_port, connect.replace(good, prop))
    assert connack.reason_code == mqtt5.ConnAckReasonCode.PROTOCOL_ERROR
    assert connack.session_present is False
    no_connections(app)
    assert app.metrics.value("edge_sync_device_requests_total", protocol="mqtt",
                             code="130") == 1


# -- a provision-only session ----------------------------------------------------------------

NOT_FOUND = b'{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}'


@pytest.mark.parametrize(("username", "client_id"), [("provision", "anything"),
                                                     ("no-such-token", "provision")])
def test_a_provision_only_session_is_served_over_mqtt5(
        app: EdgeApp, username: str, client_id: str) -> None:
    """ThingsBoard's MqttTransportHandler serves the provision-only session at MQTT 5 too
    (processConnect, processProvisionSessionMsg): CONNACK 0x00; the request acknowledged 0x00
    and answered NOT_FOUND (the edge provisions nothing); SUBACK 0x8F for another topic
    (ReturnCodeResolver.getSubscriptionReturnCode), UNSUBACK 0x00 then 0x11
    (processUnsubscribe); a publish on another topic gets PUBACK 0x90 and DISCONNECT 0x90."""
    dev = v5(app.mqtt_port, username, client_id=client_id)
    try:
        dev.client.username_pw_set(username, "any password")
        assert dev.connect() == 0
        assert dev.subscribe("/provision/response", qos=1) == [1]
        _, mid = dev.client.subscribe(TELEMETRY, qos=1)
        assert wait_until(lambda: dev.reason_codes.get(mid), timeout=DEADLINE_S,
                          what="SUBACK") == [0x8F]
        info = dev.publish("/provision/request", {"deviceName": "new-device",
                                                  "provisionDeviceKey": "key",
                                                  "provisionDeviceSecret": "secret"})
        assert dev.wait_message("/provision/response") == json.loads(NOT_FOUND)
        wait_until(lambda: info.mid in dev.acked_ids(), timeout=DEADLINE_S, what="PUBACK")
        assert dev.ack_codes[info.mid] == 0x00
        assert [(m.topic, m.payload, m.qos) for m in dev.received] == [
            ("/provision/response", NOT_FOUND, 1)]
        _, mid = dev.client.unsubscribe(["/provision/response", "/provision/response"])
        assert wait_until(lambda: dev.unsubscribe_codes.get(mid), timeout=DEADLINE_S,
                          what="UNSUBACK") == [0x00, 0x11]
        elsewhere = dev.publish(TELEMETRY, {"n": 1})
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert dev.ack_codes.get(elsewhere.mid) == 0x90
        assert dev.disconnect_reason is not None and dev.disconnect_reason.value == 0x90
    finally:
        dev.close()
    no_connections(app)
    with app.store.read() as txn:
        assert EntityStore(app.store).device_by_name(txn, "new-device") is None


def read_packets(sock: socket.socket, buffer: bytearray, until: type) -> list[Any]:
    """Packets the server sends, decoded by the ``mqtt5`` package, up to one of type
    ``until`` (included)."""
    packets: list[Any] = []
    while not packets or not isinstance(packets[-1], until):
        try:
            packet, used = mqtt5.read(memoryview(bytes(buffer)))
        except IndexError:  # not all there yet
            chunk = sock.recv(4096)
            assert chunk, f"closed before {until.__name__}: {packets}"
            buffer += chunk
            continue
        del buffer[:used]
        packets.append(packet)
    return packets


def test_a_provision_session_keeps_to_the_clients_receive_maximum(app: EdgeApp) -> None:
    """Receive Maximum 1: of two requests' answers at QoS 1 the second waits for the first's
    PUBACK. The CONNACK says the session is not kept (Session Expiry Interval 0)."""
    connect = mqtt5.ConnectPacket("provision", clean_start=True, receive_max=1,
                                  session_expiry_interval=600)
    subscribe = mqtt5.SubscribePacket(1, [mqtt5.TopicFilter("/provision/response",
                                                            max_qos=mqtt5.QoS.AT_LEAST_ONCE)])
    requests = [mqtt5.PublishPacket("/provision/request", b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE,
                                    packet_id=n) for n in (1, 2)]
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S) as sock:
        buffer = bytearray()
        sock.sendall(b"".join(p.write() for p in (connect, subscribe, *requests,
                                                   mqtt5.PingReqPacket())))
        connack, suback, puback1, answer, puback2, _ = read_packets(
            sock, buffer, mqtt5.PingRespPacket)
        assert (connack.reason_code, connack.session_present,
                connack.session_expiry_interval) == (mqtt5.ConnAckReasonCode.SUCCESS, False, 0)
        assert [int(c) for c in suback.reason_codes] == [1]
        assert (puback1.packet_id, puback2.packet_id) == (1, 2)
        assert (answer.topic, answer.payload, int(answer.qos)) == (
            "/provision/response", NOT_FOUND, 1)
        sock.sendall(mqtt5.PubAckPacket(answer.packet_id).write()
                     + mqtt5.PingReqPacket().write())
        second, _ = read_packets(sock, buffer, mqtt5.PingRespPacket)
        assert (second.topic, second.payload, second.packet_id != answer.packet_id) == (
            "/provision/response", NOT_FOUND, True)
        sock.sendall(mqtt5.DisconnectPacket().write())
    no_connections(app)
