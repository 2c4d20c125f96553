"""The device MQTT API in one process: a whole EdgeApp (real LMDB, the real MQTT server on
loopback) and real MQTT clients (paho-mqtt).

QoS 1 telemetry is acknowledged only once committed (each PUBACK finds its event in the log),
exactly once and in order; QoS 0 is stored without acknowledgement; the three telemetry shapes
and client attributes; an unknown token gets CONNACK 5; malformed JSON closes the connection
after the PUBACKs already due, as ThingsBoard does; an oversized PUBLISH closes it unread; a
topic outside the API is acknowledged and dropped; a client that never sends CONNECT is
disconnected.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, StoredEvent
from tests.helpers.mqtt_device import ATTRIBUTES, TELEMETRY, MqttDevice
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
TOKEN = "mqtt-token-1"
MAX_MESSAGE = 4096


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "2",
        "EDGE_MQTT_ENABLED": "true", "EDGE_MQTT_HOST": "127.0.0.1", "EDGE_MQTT_PORT": "0",
        "EDGE_MQTT_MAX_MESSAGE_BYTES": str(MAX_MESSAGE), "EDGE_MQTT_CONNECT_TIMEOUT_S": "0.5",
    })
    edge = EdgeApp(cfg).start()
    try:
        yield edge
    finally:
        edge.stop()


@pytest.fixture
def device_id(app: EdgeApp) -> uuid.UUID:
    device, created = app.service.create_device("mqtt-dev-1", token=TOKEN)
    created.result(DEADLINE_S)
    return device.id


def events_of(app: EdgeApp, device_id: uuid.UUID, action: str) -> list[StoredEvent]:
    with app.store.read() as txn:
        return [e for e in EventLog(app.store).iter_events(txn)
                if e.entity_id == device_id and e.action == action]


def values(app: EdgeApp, device_id: uuid.UUID, key: str = "n") -> list[object]:
    return [e.body["values"][key] for e in events_of(app, device_id, Action.TIMESERIES_UPDATED)]


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


def test_qos0_telemetry_joins_the_log_in_order(app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        for i in range(50):
            dev.publish(TELEMETRY, {"n": i}, qos=0)
        wait_until(lambda: len(values(app, device_id)) == 50, timeout=DEADLINE_S,
                   what="50 QoS 0 events")
    assert values(app, device_id) == list(range(50))


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


def test_unknown_token_is_refused_with_connack_5(app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, "not-a-token") as dev:
        reason = dev.connect()
        assert reason is not None and reason.is_failure
        assert reason.getName() == "Not authorized"
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")


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


def test_oversized_publish_closes_the_connection_unread(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        dev.publish(TELEMETRY, {"n": "x" * MAX_MESSAGE})
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert dev.acked_ids() == []
    assert values(app, device_id) == []


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


def test_a_client_that_never_sends_connect_is_disconnected(app: EdgeApp) -> None:
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S) as sock:
        assert sock.recv(1) == b""  # closed by the server after mqtt.connect_timeout_s


def test_a_second_connection_is_served_while_one_stays_silent(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with socket.create_connection(("127.0.0.1", app.mqtt_port), timeout=DEADLINE_S), \
            MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        info = dev.publish(TELEMETRY, {"n": 1})
        wait_until(lambda: info.mid in dev.acked_ids(), timeout=DEADLINE_S, what="PUBACK")
    assert values(app, device_id) == [1]
