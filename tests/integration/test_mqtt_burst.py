"""What one read of an MQTT connection brings, handled as a burst (mqtt/burst.py, mqtt/frames.py),
in one process: a whole EdgeApp (real LMDB, the real MQTT server on loopback) and a raw client
(tests/helpers/mqtt_raw.py) that writes many packets in one send, so they arrive in one read.

- Consecutive telemetry publishes of the device (QoS 0 and 1 alike) go to the store as one
  command; attributes publishes with disjoint keys as one event; a gateway publish, a publish
  of another kind, or one naming an attribute key again starts the next command; what is
  stored is what one command per publish stored, in the same order, and every QoS 1 publish
  gets its own PUBACK, in arrival order, after the commit that holds it.
- A malformed publish in the middle of a burst behaves as it did one packet at a time: the
  publishes before it are stored and acknowledged, it and what follows are not, and the
  connection closes.
- An oversized packet is refused from its fixed header: the connection closes without its body
  being sent, and the publishes before it in the same read are stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Scope
from tests.helpers.mqtt_app import AppFactory, events_of, no_connections, values
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.mqtt_raw import PUBACK, RawClient, publish_packet
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
TELEMETRY = "v1/devices/me/telemetry"
ATTRIBUTES = "v1/devices/me/attributes"
GATEWAY_TELEMETRY = "v1/gateway/telemetry"
MAX_MESSAGE = 4096


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    with AppFactory(tmp_path) as apps:
        yield apps(EDGE_MQTT_MAX_MESSAGE_BYTES=str(MAX_MESSAGE))


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def acks_until_closed(client: RawClient) -> list[int]:
    """The packet ids of the PUBACKs the server sent before it closed the connection."""
    ids = []
    while True:
        try:
            packet = client.read()
        except (ConnectionError, OSError):
            return ids
        assert packet.kind == PUBACK, packet
        ids.append(packet.packet_id)


class Commands:
    """Records the telemetry and attribute commands the device service is given, per device."""

    def __init__(self, app: EdgeApp) -> None:
        self.telemetry: list[tuple[uuid.UUID, list[Any]]] = []
        self.attributes: list[tuple[uuid.UUID, dict[str, Any]]] = []
        service = app.service
        post_entries, post_attributes = service.post_entries, service.post_client_attributes

        def entries(device_id: uuid.UUID, items: Any, **kw: Any) -> Future[range]:
            self.telemetry.append((device_id, [dict(v)["n"] for _, v in items]))
            return post_entries(device_id, items, **kw)

        def attributes(device_id: uuid.UUID, items: Any, **kw: Any) -> Future[range]:
            self.attributes.append((device_id, dict(items)))
            return post_attributes(device_id, items, **kw)

        service.post_entries = entries  # type: ignore[method-assign]
        service.post_client_attributes = attributes  # type: ignore[method-assign]

    def of(self, device_id: uuid.UUID) -> list[list[Any]]:
        return [items for d, items in self.telemetry if d == device_id]


def test_a_burst_of_qos_0_and_1_two_devices_and_a_malformed_publish(app: EdgeApp) -> None:
    """One send: the gateway's own telemetry and attributes at QoS 0 and 1, a sub-device's
    telemetry through the gateway API in the middle, then a malformed publish and one more.
    Exact PUBACK ids in order, exact stored values, and the commands the service got."""
    gateway, created = app.service.create_device("gw-burst", token="gw-burst", gateway=True)
    created.result(DEADLINE_S)
    commands = Commands(app)
    packets = [
        publish_packet(TELEMETRY, body({"n": 1}), qos=1, packet_id=1),
        publish_packet(TELEMETRY, body({"n": 2}), qos=0),
        publish_packet(GATEWAY_TELEMETRY, body({"Sub": [{"n": 10}, {"n": 11}]}), qos=1,
                       packet_id=2),
        publish_packet(TELEMETRY, body([{"ts": 1_700_000_000_000, "values": {"n": 3}},
                                        {"ts": 1_700_000_000_001, "values": {"n": 4}}]),
                       qos=1, packet_id=3),
        publish_packet(ATTRIBUTES, body({"a": 1}), qos=1, packet_id=4),
        publish_packet(ATTRIBUTES, body({"b": 2}), qos=0),
        publish_packet(ATTRIBUTES, body({"a": 3}), qos=1, packet_id=5),  # a again: next event
        publish_packet(TELEMETRY, body({"n": 5}), qos=1, packet_id=6),
        publish_packet(TELEMETRY, body({"n": 6}), qos=0),
        publish_packet(TELEMETRY, b'{"n": ', qos=1, packet_id=7),  # malformed
        publish_packet(TELEMETRY, body({"n": 7}), qos=1, packet_id=8),
        publish_packet(GATEWAY_TELEMETRY, body({"Sub": {"n": 12}}), qos=1, packet_id=9),
    ]
    with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
        assert client.connect("burst", "gw-burst") == (0, 0)
        client.send(b"".join(packets))
        acked = acks_until_closed(client)
    assert acked == [1, 2, 3, 4, 5, 6]
    with app.store.read() as txn:
        sub = EntityStore(app.store).device_by_name(txn, "Sub")
        attributes = EntityStore(app.store).attributes(txn, gateway.id, Scope.CLIENT)
    assert sub is not None
    assert values(app, gateway.id) == [1, 2, 3, 4, 5, 6]
    assert values(app, sub.id) == [10, 11]
    assert [e.body["kv"] for e in events_of(app, gateway.id, Action.ATTRIBUTES_UPDATED)] == [
        {"a": 1, "b": 2}, {"a": 3}]
    assert attributes == {"a": 3, "b": 2}
    # one command per run of the device's own publishes; the gateway's between them
    assert commands.of(gateway.id) == [[1, 2], [3, 4], [5, 6]]
    assert commands.of(sub.id) == [[10, 11]]
    assert [a for d, a in commands.attributes if d == gateway.id] == [{"a": 1, "b": 2}, {"a": 3}]
    # each device's events in the order it published them (devices are not ordered together:
    # the new sub-device's events come from its own entity, behind its creation)
    with app.store.read() as txn:
        order = [(e.entity_id, e.body["values"]["n"]) for e in EventLog(app.store).iter_events(txn)
                 if e.action == Action.TIMESERIES_UPDATED]
    assert [n for d, n in order if d == gateway.id] == [1, 2, 3, 4, 5, 6]
    assert [n for d, n in order if d == sub.id] == [10, 11]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_burst_is_acknowledged_in_order_after_its_commit(app: EdgeApp) -> None:
    """500 QoS 1 publishes in one send: every PUBACK once, in order, each after its event is
    in the log; fewer commands than publishes."""
    device, created = app.service.create_device("burst-1", token="burst-1")
    created.result(DEADLINE_S)
    commands = Commands(app)
    count = 500
    with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
        assert client.connect("b1", "burst-1") == (0, 0)
        client.send(b"".join(publish_packet(TELEMETRY, body({"n": i}), qos=1, packet_id=i + 1)
                             for i in range(count)))
        acked = []
        for _ in range(count):
            packet = client.read()
            assert packet.kind == PUBACK
            acked.append(packet.packet_id)
            assert len(values(app, device.id)) >= packet.packet_id, "PUBACK before its commit"
    assert acked == list(range(1, count + 1))
    assert values(app, device.id) == list(range(count))
    sizes = [len(items) for items in commands.of(device.id)]
    assert sum(sizes) == count and len(sizes) < count // 10, sizes
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_malformed_publish_first_in_a_burst_stores_nothing(app: EdgeApp) -> None:
    device, created = app.service.create_device("burst-2", token="burst-2")
    created.result(DEADLINE_S)
    with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
        assert client.connect("b2", "burst-2") == (0, 0)
        client.send(publish_packet(TELEMETRY, b"[1]", qos=1, packet_id=1)
                    + publish_packet(TELEMETRY, body({"n": 1}), qos=1, packet_id=2))
        assert acks_until_closed(client) == []
    assert values(app, device.id) == []
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_qos_3_in_a_burst_closes_after_storing_what_came_before(app: EdgeApp) -> None:
    device, created = app.service.create_device("burst-3", token="burst-3")
    created.result(DEADLINE_S)
    bad = bytearray(publish_packet(TELEMETRY, body({"n": 2}), qos=1, packet_id=2))
    bad[0] |= 0x06  # QoS 3
    with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
        assert client.connect("b3", "burst-3") == (0, 0)
        client.send(publish_packet(TELEMETRY, body({"n": 1}), qos=1, packet_id=1) + bytes(bad)
                    + publish_packet(TELEMETRY, body({"n": 3}), qos=1, packet_id=3))
        assert set(acks_until_closed(client)) <= {1}
    wait_until(lambda: values(app, device.id) == [1], timeout=DEADLINE_S,
               what="the publish before QoS 3 stored", show=lambda: values(app, device.id))
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_topic_is_logged_as_a_field_never_in_the_message(app: EdgeApp) -> None:
    """A topic may hold a line break: formatted into the message, it would break the text
    log's one line per record. The QoS 3 refusal names it as the ``topic`` field."""
    _, created = app.service.create_device("burst-6", token="burst-6")
    created.result(DEADLINE_S)
    bad = bytearray(publish_packet("evil\ntopic | level=ERROR", body({"n": 1}), qos=1,
                                   packet_id=1))
    bad[0] |= 0x06  # QoS 3
    logs = Logs()
    try:
        with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
            assert client.connect("b6", "burst-6") == (0, 0)
            client.send(bytes(bad))
            assert client.closed_by_server()
        no_connections(app)
    finally:
        logs.close()
    (line,) = logs.matching("closing the connection: QoS 3 is not a QoS")
    assert "\n" not in line["message"] and "evil" not in line["message"]
    assert line["extra"]["topic"] == "evil\ntopic | level=ERROR"


def test_an_oversized_packet_is_refused_from_its_header_after_the_burst_before_it(
        app: EdgeApp) -> None:
    """The header claims 256 MiB; nothing of the body is sent, and the server closes the
    connection at once. The publishes before it in the same send are stored."""
    device, created = app.service.create_device("burst-4", token="burst-4")
    created.result(DEADLINE_S)
    with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
        assert client.connect("b4", "burst-4") == (0, 0)
        client.send(publish_packet(TELEMETRY, body({"n": 1}), qos=1, packet_id=1)
                    + publish_packet(TELEMETRY, body({"n": 2}), qos=0)
                    + bytes([0x32, 0xFF, 0xFF, 0xFF, 0x7F]) + b"\x00\x17v1/devices/me/telemetry")
        client.sock.settimeout(DEADLINE_S)
        assert client.closed_by_server()
    wait_until(lambda: values(app, device.id) == [1, 2], timeout=DEADLINE_S,
               what="the publishes before the oversized one stored",
               show=lambda: values(app, device.id))
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_an_oversized_packet_alone_is_refused_before_its_body(app: EdgeApp) -> None:
    """Just above the limit, header only: closed without waiting for the body."""
    device, created = app.service.create_device("burst-5", token="burst-5")
    created.result(DEADLINE_S)
    length = MAX_MESSAGE + 1
    header = bytes([0x32, (length & 0x7F) | 0x80, length >> 7])
    with RawClient(app.mqtt_port, timeout=DEADLINE_S) as client:
        assert client.connect("b5", "burst-5") == (0, 0)
        client.send(header)
        assert client.closed_by_server()
    assert values(app, device.id) == []
    no_connections(app)  # nothing of the test still runs (or logs) once it returns
