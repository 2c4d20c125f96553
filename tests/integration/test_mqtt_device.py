"""The device MQTT API in one process: a whole EdgeApp (real LMDB, the real MQTT server on
loopback) and real MQTT clients (paho-mqtt).

QoS 1 telemetry is acknowledged only once committed (each PUBACK finds its event in the log),
exactly once and in order; QoS 0 is stored without acknowledgement; the three telemetry shapes
and client attributes; an unknown token gets CONNACK 5; malformed JSON closes the connection
after the PUBACKs already due, as ThingsBoard does; an oversized PUBLISH closes it unread; a
topic outside the API is acknowledged and dropped; a client that never sends CONNECT is
disconnected.

QoS 2: PUBREC after the commit, PUBCOMP on PUBREL, a PUBLISH again with a packet id awaiting
its PUBREL (on the same connection, or after a clean-session-false reconnect) acknowledged and
not stored again. Retain and will as ThingsBoard treats them: a retained publish is stored as
any other and nothing is retained; a will is never published. Client ids: an empty one with
clean session 0 gets CONNACK 2; the same device and client id connecting again closes the
older connection; another device with the same client id does not.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.storage.records import Action
from tests.helpers.metric_values import metric_total
from tests.helpers.mqtt_app import AppFactory, events_of, no_connections, round_trip, values
from tests.helpers.mqtt_device import ATTRIBUTES, TELEMETRY, MqttDevice
from tests.helpers.mqtt_gateway import Logs, held_commits
from tests.helpers.mqtt_raw import (
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    RawClient,
    id_packet,
    publish_packet,
)
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
TOKEN = "mqtt-token-1"
MAX_MESSAGE = 4096


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


@pytest.fixture
def app(make_app: AppFactory) -> EdgeApp:
    return make_app(EDGE_MQTT_MAX_MESSAGE_BYTES=str(MAX_MESSAGE),
                    EDGE_MQTT_CONNECT_TIMEOUT_S="0.5")


@pytest.fixture
def device_id(app: EdgeApp) -> uuid.UUID:
    device, created = app.service.create_device("mqtt-dev-1", token=TOKEN)
    created.result(DEADLINE_S)
    return device.id


def test_qos1_telemetry_is_acknowledged_after_commit_exactly_once_in_order(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    count = 200
    seen_at_ack: dict[int, list[object]] = {}
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        dev.on_ack = lambda mid: seen_at_ack.__setitem__(mid, values(app, device_id))
        mids = [dev.publish(TELEMETRY, {"n": i}).mid for i in range(count)]
        wait_until(lambda: len(dev.acked_ids()) == count, timeout=DEADLINE_S, what="all PUBACKs")
        assert dev.acked_ids() == mids
    for i, mid in enumerate(mids):
        assert i in seen_at_ack[mid], f"PUBACK {mid} came before message {i} was committed"
    assert values(app, device_id) == list(range(count))
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_qos0_telemetry_joins_the_log_in_order(app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        for i in range(50):
            dev.publish(TELEMETRY, {"n": i}, qos=0)
        wait_until(lambda: len(values(app, device_id)) == 50, timeout=DEADLINE_S,
                   what="50 QoS 0 events")
    assert values(app, device_id) == list(range(50))
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_the_three_telemetry_shapes_and_client_attributes(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        infos = [
            dev.publish(TELEMETRY, {"t": 1}),
            dev.publish(TELEMETRY, {"ts": 1_700_000_000_000, "values": {"t": 2}}),
            dev.publish(TELEMETRY, [{"ts": 1_700_000_000_001, "values": {"t": 3}},
                                    {"ts": 1_700_000_000_002, "values": {"t": 4}}]),
            dev.publish(ATTRIBUTES, {"firmware": "1.2.0"}),
        ]
        wait_until(lambda: len(dev.acked_ids()) == 4, timeout=DEADLINE_S, what="4 PUBACKs")
        assert dev.acked_ids() == [i.mid for i in infos]
    telemetry = events_of(app, device_id, Action.TIMESERIES_UPDATED)
    assert [e.body["values"] for e in telemetry] == [{"t": 1}, {"t": 2}, {"t": 3}, {"t": 4}]
    assert [e.ts for e in telemetry[1:]] == [1_700_000_000_000, 1_700_000_000_001,
                                             1_700_000_000_002]
    attributes = events_of(app, device_id, Action.ATTRIBUTES_UPDATED)
    assert len(attributes) == 1
    assert attributes[0].body["kv"] == {"firmware": "1.2.0"}
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_unknown_token_is_refused_with_connack_5(app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, "not-a-token") as dev:
        reason = dev.connect()
        assert reason is not None and reason.is_failure
        assert reason.getName() == "Not authorized"
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_connack_bytes_for_an_unknown_token(app: EdgeApp) -> None:
    """The refusal on the wire: CONNACK, session present 0, return code 5 (not authorized)."""
    client_id, user = b"c1", b"nope"
    variable = b"\x00\x04MQTT\x04\x82\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id + len(user).to_bytes(2, "big") + user
    body = variable + payload
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            assert chunk, f"closed after {answer!r}"
            answer += chunk
        assert answer == b"\x20\x02\x00\x05"
        assert sock.recv(1) == b""  # then the server closes
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


@pytest.mark.parametrize(("client_id", "username", "password", "code"), [
    ("plc-7", None, None, 2),  # a client id alone: identifier rejected
    ("", None, None, 5),  # nothing at all
    ("   ", None, None, 5),  # a blank client id is none
    ("plc-7", "not-a-token", None, 5),  # an unknown token
    ("plc-7", "not-a-token", b"secret", 5),  # a username and a password
    ("plc-7", "", None, 5),  # an empty username is a username
])
def test_credentials_that_name_no_device_get_thingsboards_return_code(
        app: EdgeApp, client_id: str, username: str | None, password: bytes | None,
        code: int) -> None:
    """ThingsBoard's MqttTransportHandler.onValidateDeviceResponse, as ReturnCodeResolver maps
    it to MQTT 3.1.1: CONNACK 2 when the CONNECT has neither username nor password but a
    client id that is not blank, CONNACK 5 otherwise; then the connection is closed."""
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect(client_id, username, password=password) == (0, code)
        assert raw.closed_by_server()
    no_connections(app)


def test_malformed_json_closes_the_connection_after_the_acks_due(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        good = dev.publish(TELEMETRY, {"n": 1})
        bad = dev.publish(TELEMETRY, b'{"n": ')
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert dev.acked_ids() == [good.mid]
        assert bad.mid not in dev.acked_ids()
    assert values(app, device_id) == [1]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_oversized_publish_closes_the_connection_unread(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        dev.publish(TELEMETRY, {"n": "x" * MAX_MESSAGE})
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert dev.acked_ids() == []
    assert values(app, device_id) == []
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_topic_outside_the_api_is_acknowledged_and_dropped(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        other = dev.publish("v1/devices/me/unknown", {"n": 1})
        after = dev.publish(TELEMETRY, {"n": 2})
        wait_until(lambda: len(dev.acked_ids()) == 2, timeout=DEADLINE_S, what="2 PUBACKs")
        assert dev.acked_ids() == [other.mid, after.mid]
        assert not dev.disconnected.is_set()
    assert values(app, device_id) == [2]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_an_attribute_request_that_cannot_be_read_is_logged_and_left_unanswered(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """A client attribute whose record in the store is corrupt: its read raises. The request
    is left unanswered, as a gateway's is, and one WARNING names the device and the request
    (it once failed silently); the connection serves the next request."""
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        sent = dev.publish(ATTRIBUTES, {"firmware": "2.0.1", "mode": 1})
        wait_until(lambda: dev.acked_ids() == [sent.mid], timeout=DEADLINE_S, what="PUBACK")

    def corrupt(txn: Any) -> int:
        db = app.store.dbs["attributes"]
        keys = [bytes(k) for k, _ in txn.cursor(db=db) if bytes(k).endswith(b"firmware")]
        for key in keys:
            txn.put(key, b"not a record", db=db)
        return len(keys)

    assert app.store.write(corrupt) == 1
    logs = Logs()
    try:
        with MqttDevice(app.mqtt_port, TOKEN) as dev:
            assert dev.connect() == 0
            dev.publish("v1/devices/me/attributes/request/7", {"clientKeys": "firmware"})
            line = logs.wait_for("attribute request 7 of device", device=str(device_id))
            dev.publish("v1/devices/me/attributes/request/8", {"clientKeys": "mode"})
            assert dev.wait_message("v1/devices/me/attributes/response/8") == {
                "client": {"mode": 1}}
            assert dev.received_on("v1/devices/me/attributes/response/7") == []
            assert not dev.disconnected.is_set()
        no_connections(app)  # nothing of the test still runs (or logs) once it returns
    finally:
        logs.close()
    assert (line["level"].name, line["extra"]["request_id"]) == ("WARNING", "7")
    assert line["message"].startswith(
        "attribute request 7 of device mqtt-dev-1 not answered: StorageCorrupt: ")


def test_a_client_that_never_sends_connect_is_disconnected(app: EdgeApp) -> None:
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S) as sock:
        assert sock.recv(1) == b""  # closed by the server after mqtt.connect_timeout_s
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_second_connection_is_served_while_one_stays_silent(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S), \
            MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        info = dev.publish(TELEMETRY, {"n": 1})
        wait_until(lambda: info.mid in dev.acked_ids(), timeout=DEADLINE_S, what="PUBACK")
    assert values(app, device_id) == [1]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


# -- QoS 2 -------------------------------------------------------------------------------------


def test_qos2_with_paho_is_stored_once_and_completes(app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        infos = [dev.publish(TELEMETRY, {"n": i}, qos=2) for i in range(20)]
        wait_until(lambda: len(dev.acked_ids()) == 20, timeout=DEADLINE_S, what="20 PUBCOMPs")
        assert dev.acked_ids() == [i.mid for i in infos]
    assert values(app, device_id) == list(range(20))
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_qos2_resend_awaiting_pubrel_is_acknowledged_not_stored_again(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("qos2-raw", TOKEN) == (0, 0)
        raw.send(publish_packet(TELEMETRY, b'{"n": 1}', qos=2, packet_id=9))
        pubrec = raw.read()
        assert (pubrec.kind, pubrec.packet_id) == (PUBREC, 9)
        assert values(app, device_id) == [1]  # PUBREC only once committed
        raw.send(publish_packet(TELEMETRY, b'{"n": 1}', qos=2, packet_id=9, dup=True))
        assert (raw.read().kind, values(app, device_id)) == (PUBREC, [1])
        raw.send(id_packet(PUBREL, 9))
        pubcomp = raw.read()
        assert (pubcomp.kind, pubcomp.packet_id) == (PUBCOMP, 9)
        # released: the same id now names a new message
        raw.send(publish_packet(TELEMETRY, b'{"n": 2}', qos=2, packet_id=9))
        assert raw.read().kind == PUBREC
        raw.send(id_packet(PUBREL, 9))
        assert raw.read().kind == PUBCOMP
        # QoS 1 and 2 acknowledgements keep the order of the publishes
        raw.send(publish_packet(TELEMETRY, b'{"n": 3}', qos=1, packet_id=10)
                 + publish_packet(TELEMETRY, b'{"n": 4}', qos=2, packet_id=11)
                 + publish_packet(TELEMETRY, b'{"n": 5}', qos=1, packet_id=12))
        assert [(p.kind, p.packet_id) for p in (raw.read(), raw.read(), raw.read())] == [
            (PUBACK, 10), (PUBREC, 11), (PUBACK, 12)]
    assert values(app, device_id) == [1, 2, 3, 4, 5]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_qos2_awaiting_pubrel_survives_a_clean_session_false_reconnect(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("qos2-kept", TOKEN, clean=False) == (0, 0)
        raw.send(publish_packet(TELEMETRY, b'{"n": 7}', qos=2, packet_id=3))
        assert raw.read().kind == PUBREC
    # the connection dropped before the PUBREL; the client resends the PUBLISH (DUP)
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("qos2-kept", TOKEN, clean=False) == (1, 0)
        raw.send(publish_packet(TELEMETRY, b'{"n": 7}', qos=2, packet_id=3, dup=True))
        assert (raw.read().kind, values(app, device_id)) == (PUBREC, [7])
        raw.send(id_packet(PUBREL, 3))
        assert raw.read().kind == PUBCOMP
    # a clean session forgets the packet ids: the same id is a new message again
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("qos2-kept", TOKEN, clean=True) == (0, 0)
        raw.send(publish_packet(TELEMETRY, b'{"n": 8}', qos=2, packet_id=3))
        assert raw.read().kind == PUBREC
    assert values(app, device_id) == [7, 8]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_qos2_resend_after_a_takeover_waits_for_the_older_connections_commit(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """Connection A takes QoS 2 publish 5, whose commit waits; B connects with the same
    client id (A is closed without waiting for its commits) and resends 5 (DUP): stored once,
    PUBREC on B once A's commit is done, then PUBCOMP."""
    with RawClient(app.mqtt_port) as a, RawClient(app.mqtt_port) as b:
        assert a.connect("qos2-takeover", TOKEN, clean=False) == (0, 0)
        with held_commits(app.store):
            a.send(publish_packet(TELEMETRY, b'{"n": 5}', qos=2, packet_id=5) + PINGREQ)
            assert a.read().kind == PINGRESP  # publish 5 taken, its commit waits
            assert b.connect("qos2-takeover", TOKEN, clean=False) == (1, 0)
            assert a.closed_by_server()
            b.send(publish_packet(TELEMETRY, b'{"n": 5}', qos=2, packet_id=5, dup=True)
                   + PINGREQ)
            assert b.read().kind == PINGRESP  # the resend taken: no PUBREC before the commit
            assert values(app, device_id) == []
        pubrec = b.read()
        assert (pubrec.kind, pubrec.packet_id) == (PUBREC, 5)
        b.send(id_packet(PUBREL, 5) + publish_packet(TELEMETRY, b'{"n": 6}', qos=1, packet_id=6))
        assert [(p.kind, p.packet_id) for p in (b.read(), b.read())] == [(PUBCOMP, 5), (PUBACK, 6)]
    assert values(app, device_id) == [5, 6]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_session_holds_at_most_1000_qos2_ids_awaiting_their_pubrel(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """A client that never sends PUBREL: its 1,001st QoS 2 publish closes the connection
    (after the PUBRECs due), with one WARNING; it is not stored."""
    logs = Logs()
    try:
        with RawClient(app.mqtt_port) as raw:
            assert raw.connect("no-pubrel", TOKEN, clean=False) == (0, 0)
            raw.send(b"".join(publish_packet(TELEMETRY, f'{{"n": {n}}}'.encode(), qos=2,
                                             packet_id=n) for n in range(1, 1002)))
            pubrecs = [raw.read() for _ in range(1000)]
            assert [(p.kind, p.packet_id) for p in pubrecs] == [
                (PUBREC, n) for n in range(1, 1001)]
            assert raw.closed_by_server()
        no_connections(app)
        (line,) = logs.matching("QoS 2 publish 1001 not taken")
    finally:
        logs.close()
    assert line["level"].name == "WARNING"
    assert values(app, device_id) == list(range(1, 1001))


# -- retain and will (ThingsBoard ignores both) ---------------------------------------------------


def test_a_retained_publish_is_stored_and_nothing_is_retained(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        info = dev.client.publish(ATTRIBUTES, b'{"firmware": "2.0.1"}', qos=1, retain=True)
        wait_until(lambda: dev.acked_ids() == [info.mid], timeout=DEADLINE_S, what="PUBACK")
    with MqttDevice(app.mqtt_port, TOKEN) as late:
        assert late.connect() == 0
        assert late.subscribe(ATTRIBUTES, qos=1) == [1]
        late.publish("v1/devices/me/attributes/request/1", {"clientKeys": "firmware"})
        # the server writes in order: a retained message would have come before this answer
        assert late.wait_message("v1/devices/me/attributes/response/1") == {
            "client": {"firmware": "2.0.1"}}
        assert late.received_on(ATTRIBUTES) == []
    assert [e.body["kv"] for e in events_of(app, device_id, Action.ATTRIBUTES_UPDATED)] == [
        {"firmware": "2.0.1"}]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_will_message_is_never_published(app: EdgeApp, device_id: uuid.UUID) -> None:
    """What a broker would do with a will when the connection drops without DISCONNECT:
    publish it to the subscribers of its topic. The edge serves only the device topics: a
    subscription to the will's own topic is refused (nobody could receive it there), and a
    will on a device topic reaches neither a subscriber of that topic (another connection of
    the device, subscribed to its attribute updates) nor the store (it is not taken as the
    device's publish)."""
    with MqttDevice(app.mqtt_port, TOKEN, client_id="listener") as listener:
        assert listener.connect() == 0
        assert listener.subscribe("plc/1/status") == [0x80]  # the first will's topic
        assert listener.subscribe(ATTRIBUTES) == [0]  # the second will's
        for client_id, will in (("willing-1", ("plc/1/status", b"offline")),
                                ("willing-2", (ATTRIBUTES, b'{"will": 1}'))):
            with RawClient(app.mqtt_port) as raw:
                assert raw.connect(client_id, TOKEN, will=will) == (0, 0)
                raw.send(publish_packet(TELEMETRY, b'{"n": 1}', qos=1, packet_id=1))
                assert raw.read().kind == PUBACK
            # dropped without DISCONNECT: a broker would publish the will now
        wait_until(lambda: app.mqtt_server is not None and app.mqtt_server.connections == 1,
                   timeout=DEADLINE_S, what="the two willing connections ended")
        round_trip(listener, 1)  # written after anything the drops could have published
        # the answer, and nothing else: nothing on the will topics
        assert [m.topic for m in listener.received] == ["v1/devices/me/attributes/response/1"]
    assert values(app, device_id) == [1, 1]
    assert events_of(app, device_id, Action.ATTRIBUTES_UPDATED) == []
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_kept_sessions_expire_without_a_connect_or_disconnect_to_check_them(
        make_app: AppFactory) -> None:
    """The server's sweep drops a session mqtt.session_expiry_s after its client left even
    when no other client connects or disconnects (a sweep at least every second, however short
    the expiry): logged, and counted as expired."""
    app = make_app(EDGE_MQTT_SESSION_EXPIRY_S="0.5")
    app.service.create_device("mqtt-dev-1", token=TOKEN)[1].result(DEADLINE_S)
    server = app.mqtt_server
    assert server is not None
    logs = Logs()
    try:
        with MqttDevice(app.mqtt_port, TOKEN, client_id="leaving", clean_session=False) as dev:
            assert dev.connect() == 0
        wait_until(lambda: len(server.registry.store) == 1, timeout=DEADLINE_S,
                   what="the session kept")
        wait_until(lambda: len(server.registry.store) == 0, timeout=DEADLINE_S,
                   what="the session expired")
        # the sweep takes the session out of the store before it logs the expiry
        line = logs.wait_for("kept MQTT session expired")
        assert logs.matching("kept MQTT session expired") == [line]
    finally:
        logs.close()
    assert line["extra"]["client_id"] == "leaving"
    dropped = app.metrics.snapshot()
    assert metric_total(dropped, "edge_sync_mqtt_sessions_dropped_total") == 1
    assert metric_total(dropped, "edge_sync_mqtt_sessions_dropped_total", reason="expired") == 1
    with MqttDevice(app.mqtt_port, TOKEN, client_id="leaving", clean_session=False) as again:
        assert again.connect() == 0 and again.session_present is False
    no_connections(app)


# -- client ids --------------------------------------------------------------------------------


def test_an_empty_client_id_with_clean_session_0_gets_connack_2(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("", TOKEN, clean=False) == (0, 2)
        assert raw.closed_by_server()
    with RawClient(app.mqtt_port) as raw:  # with a clean session it is served
        assert raw.connect("", TOKEN, clean=True) == (0, 0)
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_the_same_client_id_again_closes_the_older_connection(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    other, created = app.service.create_device("mqtt-dev-2", token="mqtt-token-2")
    created.result(DEADLINE_S)
    with MqttDevice(app.mqtt_port, TOKEN, client_id="twin") as first, \
            MqttDevice(app.mqtt_port, "mqtt-token-2", client_id="twin") as stranger:
        assert first.connect() == 0
        assert stranger.connect() == 0  # another device: another session, nothing closed
        with MqttDevice(app.mqtt_port, TOKEN, client_id="twin") as second:
            assert second.connect() == 0
            wait_until(first.disconnected.is_set, timeout=DEADLINE_S, what="first closed")
            assert not stranger.disconnected.is_set()
            info = second.publish(TELEMETRY, {"n": 1})
            wait_until(lambda: second.acked_ids() == [info.mid], timeout=DEADLINE_S,
                       what="PUBACK on the newer connection")
            assert not second.disconnected.is_set()
    assert values(app, device_id) == [1]
    assert values(app, other.id) == []
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_takeover_is_one_log_line_and_a_resumed_connect_one_more(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """The takeover: one WARNING naming the device, the client id and both peers (the older
    connection's end is not logged again at INFO); the newer connection's connect, which
    resumes the kept session, one INFO line with what it resumed."""
    logs = Logs()
    try:
        with MqttDevice(app.mqtt_port, TOKEN, client_id="twin", clean_session=False) as first:
            assert first.connect() == 0
            assert first.subscribe("v1/devices/me/rpc/request/+", qos=1) == [1]
            mark = len(logs.records)
            with MqttDevice(app.mqtt_port, TOKEN, client_id="twin",
                            clean_session=False) as second:
                assert second.connect() == 0 and second.session_present is True
                wait_until(first.disconnected.is_set, timeout=DEADLINE_S, what="first closed")
                round_trip(second, 1)
                lines = [r for r in logs.records[mark:] if r["level"].no >= 20  # INFO
                         and r["extra"].get("component") == "mqtt"]
        no_connections(app)
    finally:
        logs.close()
    takeover, connected = lines
    assert takeover["level"].name == "WARNING"
    assert takeover["message"].startswith("client id connected again from ")
    assert (takeover["extra"]["device"], takeover["extra"]["client_id"]) == (str(device_id), "twin")
    assert takeover["extra"]["peer"] != takeover["extra"]["older_peer"]
    assert connected["message"] == "device mqtt-dev-1 connected over MQTT"
    assert (connected["extra"]["session_present"], connected["extra"]["subscriptions"],
            connected["extra"]["resent"]) == (True, 1, 0)
    assert not logs.matching("session resumed")
