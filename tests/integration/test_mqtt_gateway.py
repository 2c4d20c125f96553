"""ThingsBoard's MQTT gateway API with real MQTT clients (paho-mqtt): in one process (a whole
EdgeApp: real LMDB, the real MQTT server on loopback; linked to the scripted gRPC peer where
the cloud takes part), and against a real `edge-sync run` process.

Every gateway topic: connect (the device created with its type, lastConnectedGateway in its
additionalInfo), disconnect, telemetry in every shape, client attributes, attribute requests
answered on v1/gateway/attributes/response in ThingsBoard's shape, server-side RPC to a
sub-device and its answer (a request to a device the gateway disconnected waits until it is
connected again), shared attribute updates. A gateway speaking for 100 new devices:
each created once, its creation before its data, every value once in order, PUBACKs after
the commit. Two gateways naming the same new devices at once. A device that is not a gateway,
and bad input, as ThingsBoard treats them (docs/mqtt-gateway.md).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.devices.rpc import RpcStatus
from edge_sync.mqtt import dropped as dropped_module
from edge_sync.mqtt import gateway as gateway_module
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Device, Scope, StoredEvent
from tests.helpers.agent import Agent, read_log
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.metric_values import metric_total
from tests.helpers.mqtt_app import MQTT_ON
from tests.helpers.mqtt_device import TELEMETRY as DEVICE_TELEMETRY
from tests.helpers.mqtt_gateway import (
    ATTRIBUTES,
    ATTRIBUTES_REQUEST,
    ATTRIBUTES_RESPONSE,
    CONNECT,
    DISCONNECT,
    RPC,
    TELEMETRY,
    Logs,
    MqttGateway,
    held_commits,
)
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import (
    Harness,
    deliver,
    dropped,
    http,
    rpc_downlink,
    rpc_uplinks,
    rpcs,
    shared_downlink,
)
from tests.unit.test_downlink_actor import credentials_msg, device_msg

DEADLINE_S = 10.0
GATEWAY_TOKEN = "gw-token-1"


# -- fixtures and reading the store ------------------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "2", **MQTT_ON,
    })
    edge = EdgeApp(cfg).start()
    try:
        yield edge
    finally:
        edge.stop()


@pytest.fixture
def logs() -> Iterator[Logs]:
    recorded = Logs()
    try:
        yield recorded
    finally:
        recorded.close()


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[FakeCloud, EdgeApp]]:
    harness = Harness(tmp_path)
    try:
        yield harness.connected_edge(**MQTT_ON)
    finally:
        harness.close()


@pytest.fixture
def linked_short_reads(tmp_path: Path) -> Iterator[tuple[FakeCloud, EdgeApp]]:
    """As ``linked``, with a 2 s read timeout: a read of a key the edge lacks asks this cloud,
    which never answers, and the read answers with what the edge holds when it runs out."""
    harness = Harness(tmp_path)
    try:
        yield harness.connected_edge(**MQTT_ON, EDGE_HTTP_REQUEST_TIMEOUT_S="2")
    finally:
        harness.close()


def make_gateway(app: EdgeApp, name: str = "gateway-1", token: str = GATEWAY_TOKEN) -> Device:
    device, created = app.service.create_device(name, token=token, gateway=True)
    created.result(DEADLINE_S)
    return device


def connected(app: EdgeApp, token: str = GATEWAY_TOKEN) -> MqttGateway:
    gateway = MqttGateway(app.mqtt_port, token)
    assert gateway.connect() == 0
    return gateway


def device_named(app: EdgeApp, name: str) -> Device | None:
    with app.store.read() as txn:
        return EntityStore(app.store).device_by_name(txn, name)


def all_devices(app: EdgeApp) -> list[Device]:
    with app.store.read() as txn:
        return EntityStore(app.store).devices(txn)


def event_log(app: EdgeApp) -> list[StoredEvent]:
    with app.store.read() as txn:
        return list(EventLog(app.store).iter_events(txn))


def telemetry(events: list[StoredEvent], device_id: uuid.UUID, key: str = "v") -> list[Any]:
    return [e.body["values"][key] for e in events if e.entity_id == device_id
            and e.action == Action.TIMESERIES_UPDATED and key in e.body["values"]]


def actions(events: list[StoredEvent], device_id: uuid.UUID) -> list[str]:
    return [e.action for e in events if e.entity_id == device_id]


# -- every topic ---------------------------------------------------------------------------------


def test_connect_creates_the_device_with_its_type_and_its_gateway(app: EdgeApp) -> None:
    gw = make_gateway(app)
    with connected(app) as gateway:
        gateway.send(CONNECT, {"device": "Thermo A", "type": "thermometer"})
        gateway.send(CONNECT, {"device": "Plain B"})
        gateway.send(CONNECT, {"device": "Thermo A", "type": "ignored: it exists"})
    thermo, plain = device_named(app, "Thermo A"), device_named(app, "Plain B")
    assert thermo is not None and plain is not None
    assert (thermo.type, plain.type, thermo.gateway) == ("thermometer", "default", False)
    events = event_log(app)
    [added] = [e for e in events if e.entity_id == thermo.id and e.action == Action.ADDED]
    assert added.body["additionalInfo"] == {"lastConnectedGateway": str(gw.id)}
    assert actions(events, thermo.id) == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    assert len(all_devices(app)) == 3


def test_a_name_the_edge_knows_is_that_device(app: EdgeApp) -> None:
    make_gateway(app)
    known, created = app.service.create_device("Known", type_="pump", token="known-token")
    created.result(DEADLINE_S)
    with connected(app) as gateway:
        gateway.send(CONNECT, {"device": "Known", "type": "valve"})
        gateway.send(TELEMETRY, {"Known": [{"v": 1}]})
    assert device_named(app, "Known") == known  # its type and token as they were
    assert actions(event_log(app), known.id) == [
        Action.ADDED, Action.CREDENTIALS_UPDATED, Action.TIMESERIES_UPDATED]


def test_the_admin_api_provisions_gateways(app: EdgeApp) -> None:
    def create(body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{app.admin_port}/api/devices", data=json.dumps(body).encode(),
            method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE_S) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, out = create({"name": "gw-admin", "gateway": True})
    assert (status, out["gateway"]) == (201, True)
    assert create({"name": "plain-admin"})[1]["gateway"] is False
    status, refused = create({"name": "bad", "gateway": "yes"})
    assert (status, refused["message"]) == (400, "gateway must be true or false")
    stored = device_named(app, "gw-admin")
    assert stored is not None and stored.gateway
    with connected(app, out["token"]) as gateway:
        gateway.send(CONNECT, {"device": "via-admin"})
    assert device_named(app, "via-admin") is not None


def test_telemetry_in_every_shape_and_attributes_of_several_devices(app: EdgeApp) -> None:
    make_gateway(app)
    with connected(app) as gateway:
        gateway.send(TELEMETRY, {
            "Dev A": [{"ts": 1000, "values": {"v": 1}}, {"v": 2},
                      {"ts": 1002, "values": {"v": 3}, "metadata": {"connector": "modbus",
                                                                    "receivedTs": 1,
                                                                    "publishedTs": 2}}],
            "Dev B": {"v": 10},
            "Dev C": {"ts": 5, "values": {"v": 20, "t": 21.5}},
            "Dev D": [],
        })
        gateway.send(ATTRIBUTES, {"Dev A": {"fw": "1.0.1", "model": {"rev": 2}}, "Dev E": {}})
        assert not gateway.disconnected.is_set()
    events = event_log(app)
    dev = {n: device_named(app, n) for n in ("Dev A", "Dev B", "Dev C", "Dev D", "Dev E")}
    assert all(d is not None for d in dev.values())
    a, b, c, d, e = (d.id for d in dev.values() if d is not None)
    assert telemetry(events, a) == [1, 2, 3]
    assert [x.ts for x in events if x.entity_id == a
            and x.action == Action.TIMESERIES_UPDATED][::2] == [1000, 1002]
    assert telemetry(events, b) == [10]
    assert [(x.ts, x.body["values"]) for x in events if x.entity_id == c
            and x.action == Action.TIMESERIES_UPDATED] == [(5, {"v": 20, "t": 21.5})]
    assert actions(events, d) == [Action.ADDED, Action.CREDENTIALS_UPDATED]  # connected only
    assert actions(events, e) == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    [attrs] = [x for x in events if x.entity_id == a and x.action == Action.ATTRIBUTES_UPDATED]
    assert attrs.body == {"scope": "CLIENT_SCOPE", "kv": {"fw": "1.0.1", "model": {"rev": 2}}}


def test_attribute_requests_are_answered_in_thingsboards_shape(app: EdgeApp) -> None:
    make_gateway(app)
    with connected(app) as gateway:
        assert gateway.subscribe(ATTRIBUTES_RESPONSE) == [0]
        gateway.send(ATTRIBUTES, {"Dev A": {"fw": "1.0.1", "hw": 3}})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 1, "device": "Dev A", "client": True,
                                          "key": "fw"})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 2, "device": "Dev A", "client": True,
                                          "keys": ["fw", "hw", "absent"]})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 3, "device": "Dev A", "client": True,
                                          "keys": ["absent"]})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 4, "device": "Dev A", "client": True,
                                          "keys": ["hw"]})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 5, "device": "Dev A", "client": True,
                                          "keys": []})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 6, "device": "New Dev", "client": False,
                                          "key": "setpoint"})

        def answer(request_id: int) -> Any:
            return gateway.wait_for(ATTRIBUTES_RESPONSE, lambda b: b["id"] == request_id)

        assert answer(1) == {"id": 1, "device": "Dev A", "value": "1.0.1"}
        assert answer(2) == {"id": 2, "device": "Dev A", "values": {"fw": "1.0.1", "hw": 3}}
        assert answer(3) == {"id": 3, "device": "Dev A"}
        assert answer(4) == {"id": 4, "device": "Dev A", "value": 3}
        assert answer(5) == {"id": 5, "device": "Dev A", "values": {"fw": "1.0.1", "hw": 3}}
        assert answer(6) == {"id": 6, "device": "New Dev"}  # created on first sight, no cloud
        # every attribute of the scope when the scope holds one: "value", as ThingsBoard
        gateway.send(ATTRIBUTES, {"Solo": {"only": [1, 2]}})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 7, "device": "Solo", "client": True,
                                          "keys": []})
        assert answer(7) == {"id": 7, "device": "Solo", "value": [1, 2]}
    assert device_named(app, "New Dev") is not None


def test_an_attribute_request_that_cannot_be_read_is_logged_with_its_gateway_and_device(
        app: EdgeApp, logs: Logs, caplog: pytest.LogCaptureFixture) -> None:
    """A read that fails (here a damaged attribute record) leaves the request unanswered, as
    a device's own request, and says so with the gateway's and the device's ids; the
    connection goes on."""
    gw = make_gateway(app)
    with connected(app) as gateway:
        gateway.send(CONNECT, {"device": "Damaged"})
        damaged = device_named(app, "Damaged")
        assert damaged is not None
        key = EntityStore._attr_prefix(damaged.id, Scope.CLIENT) + b"fw"
        app.store.write(lambda txn: txn.put(key, b"\x02not a record",
                                            db=app.store.dbs["attributes"]))
        gateway.send(ATTRIBUTES_REQUEST, {"id": 3, "device": "Damaged", "client": True,
                                          "key": "fw"})
        line = logs.wait_for("attribute request 3 of device Damaged not answered")
        assert line["level"].name == "WARNING"
        assert (line["extra"]["gateway"], line["extra"]["device"]) == (str(gw.id),
                                                                       str(damaged.id))
        gateway.send(ATTRIBUTES_REQUEST, {"id": 4, "device": "Damaged", "client": True,
                                          "key": "other"})
        assert gateway.wait_for(ATTRIBUTES_RESPONSE) == {"id": 4, "device": "Damaged"}
        assert not gateway.disconnected.is_set()
    assert "exception was never retrieved" not in caplog.text


def test_rpc_to_sub_devices_and_their_answers(linked: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked
    make_gateway(app)
    with connected(app) as gateway:
        gateway.send(CONNECT, {"device": "Early"})  # connected before the subscription
        assert gateway.subscribe(RPC) == [0]
        gateway.send(TELEMETRY, {"Late": [{"v": 1}]})  # connected after it, by its data
        early, late = device_named(app, "Early"), device_named(app, "Late")
        assert early is not None and late is not None
        deliver(fake, rpc_downlink(fake, early, 7, "setGpio", {"pin": 1}))
        deliver(fake, rpc_downlink(fake, late, 8, "reboot", None))
        assert gateway.wait_for(RPC, lambda b: b["device"] == "Early") == {
            "device": "Early", "data": {"id": 7, "method": "setGpio", "params": {"pin": 1}}}
        assert gateway.wait_for(RPC, lambda b: b["device"] == "Late") == {
            "device": "Late", "data": {"id": 8, "method": "reboot", "params": None}}
        gateway.send(RPC, {"device": "Early", "id": 7, "data": {"pin": 1, "value": True}})
        gateway.send(RPC, {"device": "Late", "id": 8, "data": "rebooting"})
        ups = fake.wait_for(lambda: len(rpc_uplinks(fake)) == 2 and rpc_uplinks(fake),
                            what="two RPC answers uplinked")
        assert sorted((u.requestId, json.loads(u.responseMsg.response)) for u in ups) == [
            (7, {"pin": 1, "value": True}), (8, "rebooting")]
        # an answer nobody awaits (answered already, unknown id): acknowledged, dropped and
        # counted (before its PUBACK), as the HTTP API's
        dropped_before = dropped(app)
        gateway.send(RPC, {"device": "Early", "id": 7, "data": {"again": 1}})
        gateway.send(RPC, {"device": "Early", "id": 99, "data": {}})
        assert not gateway.disconnected.is_set()
        assert dropped(app) == dropped_before + 2
        assert len(gateway.bodies(RPC)) == 2
    assert [(r.status, r.response) for r in rpcs(app, early)] == [
        (RpcStatus.SUCCESSFUL, {"pin": 1, "value": True})]


def test_a_disconnected_device_gets_its_requests_once_connected_again(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked
    make_gateway(app)
    with connected(app) as gateway:
        assert gateway.subscribe(RPC) == [0]
        gateway.send(CONNECT, {"device": "Sleepy"})
        gateway.send(DISCONNECT, {"device": "Sleepy"})
        sleepy = device_named(app, "Sleepy")
        assert sleepy is not None
        deliver(fake, rpc_downlink(fake, sleepy, 9, "wake", {}))
        # a command to the device told after the request, committed: whatever the device's
        # session did with the request (a wait of the retired subscription taking it) is
        # committed by now too
        told_after = app.service.post_entries(sleepy.id, ((1, (("v", 1),)),))
        assert len(told_after.result(DEADLINE_S)) == 1
        assert [r.status for r in rpcs(app, sleepy)] == [RpcStatus.QUEUED]
        assert gateway.bodies(RPC) == []
        seen_at_connect: list[int] = []
        gateway.on_ack = lambda _mid: seen_at_connect.append(len(gateway.bodies(RPC)))
        gateway.send(CONNECT, {"device": "Sleepy"})
        assert seen_at_connect == [0]  # nothing was published while it was disconnected
        assert gateway.wait_for(RPC) == {"device": "Sleepy",
                                         "data": {"id": 9, "method": "wake", "params": {}}}
    assert [r.status for r in rpcs(app, sleepy)] == [RpcStatus.DELIVERED]


def test_a_sub_device_the_cloud_deletes_leaves_its_gateway_at_once_and_its_next_data_creates_it(
        linked: tuple[FakeCloud, EdgeApp], logs: Logs) -> None:
    """A device the cloud deletes while its gateway keeps it connected leaves the gateway as
    soon as the deletion commits (one INFO line), as ThingsBoard's gateway session forgets a
    deleted device (AbstractGatewayDeviceSessionContext.onDeviceDeleted ->
    AbstractGatewaySessionHandler.deregisterSession): the gateway's connection stays, and its
    next data naming the device creates it anew."""
    fake, app = linked
    gw = make_gateway(app)
    with connected(app) as gateway:
        assert gateway.subscribe(RPC) == [0]
        gateway.send(TELEMETRY, {"Doomed": [{"v": 1}]})
        doomed = device_named(app, "Doomed")
        assert doomed is not None
        deliver(fake, device_msg(fake.new_downlink_id(), doomed.id, "Doomed",
                                 kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE))
        assert device_named(app, "Doomed") is None
        left = logs.wait_for("device Doomed disconnected from gateway")
        assert (left["level"].name, left["message"], left["extra"]["device"],
                left["extra"]["gateway"], left["extra"]["reason"]) == (
            "INFO", "device Doomed disconnected from gateway gateway-1: it was deleted by the "
            "cloud; the gateway's next data or connect for it connects it again",
            str(doomed.id), str(gw.id), "device_deleted")
        gateway.send(TELEMETRY, {"Doomed": [{"v": 2}]})
        gateway.send(ATTRIBUTES, {"Doomed": {"fw": "2"}})
        assert not gateway.disconnected.is_set()
        assert logs.matching("no longer exists on the edge") == []
    reborn = device_named(app, "Doomed")
    assert reborn is not None and reborn.id != doomed.id
    events = event_log(app)
    assert actions(events, doomed.id) == [Action.ADDED, Action.CREDENTIALS_UPDATED,
                                          Action.TIMESERIES_UPDATED]
    assert actions(events, reborn.id) == [Action.ADDED, Action.CREDENTIALS_UPDATED,
                                          Action.TIMESERIES_UPDATED, Action.ATTRIBUTES_UPDATED]
    assert telemetry(events, reborn.id) == [2]


def test_a_sub_device_whose_credentials_change_leaves_its_gateway_until_named_again(
        linked: tuple[FakeCloud, EdgeApp], logs: Logs) -> None:
    """ThingsBoard closes every session of a device whose credentials change, the gateway's
    session of it too (AbstractGatewayDeviceSessionContext.onRemoteSessionCloseCommand ->
    AbstractGatewaySessionHandler.deregisterSession): the device leaves the gateway, whose own
    connection stays (it authenticated with the gateway's token, not the device's). An RPC
    request for the device waits until the gateway names it again, then comes."""
    fake, app = linked
    make_gateway(app)
    with connected(app) as gateway:
        assert gateway.subscribe(RPC) == [0]
        gateway.send(CONNECT, {"device": "Valve"})
        valve = device_named(app, "Valve")
        assert valve is not None and valve.token
        deliver(fake, credentials_msg(fake.new_downlink_id(), valve.id, "new-valve-token"))
        left = logs.wait_for("device Valve disconnected from gateway")
        assert left["extra"]["reason"] == "token_changed"
        deliver(fake, rpc_downlink(fake, valve, 4, "open", {}))
        # through the device's entity actor after the request: nothing waited for it there
        status, _, _ = http(app, "POST", "/api/v1/new-valve-token/telemetry", {"h": 1})
        assert status == 200
        assert logs.matching("RPC 4 DELIVERED") == [] and gateway.bodies(RPC) == []
        gateway.send(TELEMETRY, {"Valve": [{"v": 1}]})  # named again: connected again
        assert gateway.wait_for(RPC) == {"device": "Valve",
                                         "data": {"id": 4, "method": "open", "params": {}}}
        assert not gateway.disconnected.is_set()
    assert [r.status for r in rpcs(app, valve)] == [RpcStatus.DELIVERED]


def test_a_request_claimed_as_its_device_is_disconnected_still_reaches_the_gateway(
        linked: tuple[FakeCloud, EdgeApp], logs: Logs) -> None:
    """The device's wait has taken the request (recorded DELIVERED, the record waiting for
    its commit) when the gateway disconnects the device: the request, delivered as far as the
    edge and the cloud know, is still published to the gateway, not dropped."""
    fake, app = linked
    make_gateway(app)
    with connected(app) as gateway:
        gateway.send(CONNECT, {"device": "Racer"})
        racer = device_named(app, "Racer")
        assert racer is not None
        deliver(fake, rpc_downlink(fake, racer, 5, "go", {"fast": True}))
        with held_commits(app.store):
            assert gateway.subscribe(RPC) == [0]
            logs.wait_for("RPC 5 DELIVERED")  # claimed; its record waits for the commit
            gateway.send(DISCONNECT, {"device": "Racer"})  # the wait is cancelled now
        assert gateway.wait_for(RPC) == {
            "device": "Racer", "data": {"id": 5, "method": "go", "params": {"fast": True}}}
        assert not gateway.disconnected.is_set()
    assert [r.status for r in rpcs(app, racer)] == [RpcStatus.DELIVERED]


def test_shared_attribute_updates_and_shared_requests(
        linked_short_reads: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked_short_reads
    make_gateway(app)
    with connected(app) as gateway:
        assert gateway.subscribe(ATTRIBUTES) == [0]
        gateway.send(CONNECT, {"device": "Valve"})
        valve = device_named(app, "Valve")
        assert valve is not None
        deliver(fake, shared_downlink(fake, valve, {"setpoint": 21, "mode": 2}))
        assert gateway.wait_for(ATTRIBUTES) == {"device": "Valve",
                                                "data": {"setpoint": 21, "mode": 2}}
        deliver(fake, shared_downlink(fake, valve, deleted=["mode"]))
        assert gateway.wait_for(ATTRIBUTES, lambda b: "deleted" in b["data"]) == {
            "device": "Valve", "data": {"deleted": ["mode"]}}
        gateway.send(ATTRIBUTES_REQUEST, {"id": 11, "device": "Valve", "client": False,
                                          "keys": ["setpoint", "mode"]})
        assert gateway.wait_for(ATTRIBUTES_RESPONSE) == {
            "id": 11, "device": "Valve", "values": {"setpoint": 21}}
        gateway.send(DISCONNECT, {"device": "Valve"})
        gateway.send(DISCONNECT, {"device": "Never connected"})  # acknowledged, nothing to do
        assert not gateway.disconnected.is_set()


def test_no_access_token_is_logged(linked: tuple[FakeCloud, EdgeApp], logs: Logs) -> None:
    """Neither the gateway's token nor those of the devices it creates appear in any log line
    (DEBUG included, messages and bound values)."""
    fake, app = linked
    make_gateway(app)
    with connected(app) as gateway:
        assert gateway.subscribe(RPC) == [0] and gateway.subscribe(ATTRIBUTES) == [0]
        gateway.send(CONNECT, {"device": "Tok A", "type": "t"})
        gateway.send(TELEMETRY, {"Tok A": [{"v": 1}], "Tok B": {"v": 2}})
        gateway.send(ATTRIBUTES, {"Tok B": {"fw": "1"}})
        gateway.send(ATTRIBUTES_REQUEST, {"id": 1, "device": "Tok B", "client": True,
                                          "key": "fw"})
        gateway.wait_for(ATTRIBUTES_RESPONSE)
        tok_a = device_named(app, "Tok A")
        assert tok_a is not None
        deliver(fake, rpc_downlink(fake, tok_a, 4, "m", {}))
        gateway.wait_for(RPC)
        gateway.send(RPC, {"device": "Tok A", "id": 4, "data": {"ok": True}})
        gateway.send(DISCONNECT, {"device": "Tok B"})
        gateway.refused(TELEMETRY, b"{bad")
    tokens = {d.token for d in all_devices(app)}
    assert len(tokens) == 3 and GATEWAY_TOKEN in tokens
    logged = [f"{r['message']} {r['extra']}" for r in logs.records]
    assert any("Tok A" in line for line in logged)
    assert [line for line in logged if any(t in line for t in tokens)] == []


# -- many devices, several gateways ------------------------------------------------------------


def test_a_gateway_speaking_for_100_new_devices(app: EdgeApp) -> None:
    make_gateway(app)
    names = [f"sensor-{i:03}" for i in range(100)]
    rounds = 5
    with connected(app) as gateway:
        mids = [gateway.publish(TELEMETRY, {n: [{"v": r * 2}, {"v": r * 2 + 1}] for n in names}).mid
                for r in range(rounds)]
        wait_until(lambda: len(gateway.acked_ids()) == rounds, timeout=30, what="5 PUBACKs")
        assert gateway.acked_ids() == mids
    events = event_log(app)
    devices = {d.name: d for d in all_devices(app)}
    assert sorted(devices) == sorted([*names, "gateway-1"])
    for name in names:
        device_id = devices[name].id
        assert telemetry(events, device_id) == list(range(rounds * 2)), name
        kinds = actions(events, device_id)
        assert kinds[:2] == [Action.ADDED, Action.CREDENTIALS_UPDATED], name
        assert kinds.count(Action.ADDED) == 1


def test_two_gateways_naming_the_same_new_devices_create_each_once(app: EdgeApp) -> None:
    make_gateway(app, "gw-a", "tok-a")
    make_gateway(app, "gw-b", "tok-b")
    names = [f"shared-{i:02}" for i in range(50)]
    with connected(app, "tok-a") as a, connected(app, "tok-b") as b:
        start = threading.Barrier(2)

        def burst(gateway: MqttGateway, key: str) -> list[int]:
            start.wait()
            return [gateway.publish(TELEMETRY, {n: [{key: i}] for n in names}).mid
                    for i in range(3)]

        results: dict[str, list[int]] = {}
        threads = [threading.Thread(target=lambda g=g, k=k: results.__setitem__(k, burst(g, k)))
                   for g, k in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(a.acked_ids()) == 3 and len(b.acked_ids()) == 3,
                   timeout=30, what="every PUBACK of both gateways")
    events = event_log(app)
    devices = [d for d in all_devices(app) if d.name.startswith("shared-")]
    assert sorted(d.name for d in devices) == names
    for device in devices:
        assert actions(events, device.id).count(Action.ADDED) == 1
        assert actions(events, device.id)[0] == Action.ADDED
        assert telemetry(events, device.id, "a") == [0, 1, 2]
        assert telemetry(events, device.id, "b") == [0, 1, 2]


def test_qos0_gateway_telemetry_joins_the_log(app: EdgeApp) -> None:
    make_gateway(app)
    with connected(app) as gateway:
        for i in range(20):
            gateway.publish(TELEMETRY, {"q0": [{"v": i}]}, qos=0)
        gateway.send(TELEMETRY, {"q0": [{"v": 20}]})  # acknowledged after all before it
    device = device_named(app, "q0")
    assert device is not None
    assert telemetry(event_log(app), device.id) == list(range(21))


def test_get_or_create_from_many_threads_creates_once(app: EdgeApp) -> None:
    start = threading.Barrier(8)
    found: list[Any] = []
    lock = threading.Lock()

    def ask() -> None:
        start.wait()
        named = app.service.get_or_create_device("raced", type_="pump")
        with lock:
            found.append(named)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({f.device.id for f in found}) == 1
    assert sum(f.new for f in found) == 1
    # each caller its own future of the one creation (one commit: the same seqs for all)
    [seqs] = {tuple(f.creation.result(DEADLINE_S)) for f in found if f.creation is not None}
    assert len(seqs) == 2
    again = app.service.get_or_create_device("raced")
    assert (again.device, again.creation, again.new) == (device_named(app, "raced"), None, False)


def test_a_gateway_naming_a_device_an_operator_is_creating_gets_that_device(
        app: EdgeApp, logs: Logs) -> None:
    make_gateway(app)
    with connected(app) as gateway:
        with held_commits(app.store):
            made, created = app.service.create_device("Provisioned", type_="meter")
            mid = gateway.publish(TELEMETRY, {"Provisioned": [{"v": 1}]}).mid
            logs.wait_for("device Provisioned connected through gateway gateway-1")
        wait_until(lambda: mid in gateway.acked_ids() or gateway.disconnected.is_set(),
                   timeout=DEADLINE_S, what="the PUBACK")
        assert mid in gateway.acked_ids()
    assert len(created.result(DEADLINE_S)) == 2
    assert [d for d in all_devices(app) if d.name == "Provisioned"] == [made]
    events = event_log(app)
    assert actions(events, made.id) == [Action.ADDED, Action.CREDENTIALS_UPDATED,
                                        Action.TIMESERIES_UPDATED]
    assert logs.matching("created on the edge for gateway") == []  # the operator created it


def test_a_publish_failing_for_one_device_may_store_the_others_and_the_resend_again(
        app: EdgeApp, logs: Logs) -> None:
    """The cloud syncs a device named "Clash" while the gateway's creation of that name waits
    for its commit: the creation fails, so does Clash's data (nothing stored for the id that
    was not created), the QoS 0 publish's failure is logged and the QoS 1 publish is not
    acknowledged (the connection closes); the other device's data of that publish was stored
    all the same, and the resend stores it again (at least once, docs/mqtt-gateway.md)."""
    make_gateway(app)
    stored, created = app.service.create_device("Stored")
    created.result(DEADLINE_S)
    clash = Device(id=uuid.uuid4(), name="Clash", type="from-cloud", token="cloud-clash",
                   created_time=1)

    def cloud_syncs_clash(txn: Any) -> None:
        EntityStore(app.store).put_device(txn, clash)

    publish = {"Stored": [{"v": 1}], "Clash": [{"v": 1}]}
    with connected(app) as gateway:
        with held_commits(app.store, then=cloud_syncs_clash):
            gateway.publish(TELEMETRY, {"Clash": [{"v": 0}]}, qos=0)
            mid = gateway.publish(TELEMETRY, publish).mid
            attempt = logs.wait_for("device Clash connected through gateway")
            logs.wait_for("device Stored connected through gateway")
        wait_until(gateway.disconnected.is_set, timeout=DEADLINE_S, what="the connection closed")
        assert mid not in gateway.acked_ids()
    failed_id = uuid.UUID(attempt["extra"]["device"])
    assert failed_id != clash.id
    assert logs.matching("QoS 0 publish not committed")
    assert logs.matching("device Clash not created for gateway")
    # the connection may close before Stored's part of the publish is committed: wait for it
    wait_until(lambda: telemetry(event_log(app), stored.id), timeout=DEADLINE_S,
               what="Stored's telemetry of the failed publish stored")
    events = event_log(app)
    assert actions(events, failed_id) == []
    assert telemetry(events, stored.id) == [1]
    with connected(app) as gateway:
        gateway.send(TELEMETRY, publish)
    events = event_log(app)
    assert telemetry(events, stored.id) == [1, 1]
    assert telemetry(events, clash.id) == [1]
    assert device_named(app, "Clash") == clash


def test_data_of_a_device_whose_creation_failed_is_refused_and_not_stored(app: EdgeApp) -> None:
    first, made = app.service.create_device("taken")
    assert len(made.result(DEADLINE_S)) == 2
    second, refused = app.service.create_device("taken")  # the name is taken when it commits
    entries = ((1, (("v", 1),)),)
    orphan = app.service.post_entries(second.id, entries, requires_device=True)
    kept = app.service.post_entries(first.id, entries, requires_device=True)
    with pytest.raises(Exception, match="already exists"):
        refused.result(DEADLINE_S)
    with pytest.raises(Exception, match="does not exist"):
        orphan.result(DEADLINE_S)
    assert len(kept.result(DEADLINE_S)) == 1
    events = event_log(app)
    assert actions(events, second.id) == []
    assert telemetry(events, first.id) == [1]


def test_a_connection_closed_while_a_creation_is_pending_leaves_it_to_the_others(
        app: EdgeApp, logs: Logs) -> None:
    """Gateway A asks for the attributes of a new device and goes away before its creation
    commits, while gateway B's data waits for the same creation: the creation is not
    abandoned (created once, the name still pending for everyone), B's PUBACK comes and its
    connection stays open."""
    make_gateway(app, "gw-a", "tok-a")
    make_gateway(app, "gw-b", "tok-b")
    with connected(app, "tok-b") as b:
        with held_commits(app.store):
            a = connected(app, "tok-a")
            a.publish(ATTRIBUTES_REQUEST, {"id": 1, "device": "Pending", "client": True,
                                           "key": "k"})
            logs.wait_for("device Pending connected through gateway gw-a")
            mid = b.publish(TELEMETRY, {"Pending": [{"v": 1}]}).mid
            logs.wait_for("device Pending connected through gateway gw-b")
            a.close()
            logs.wait_for("device gw-a disconnected from MQTT")
            pending = app.service.get_or_create_device("Pending")
            assert not pending.new and pending.creation is not None
        wait_until(lambda: mid in b.acked_ids() or b.disconnected.is_set(), timeout=DEADLINE_S,
                   what="gateway B's PUBACK")
        assert mid in b.acked_ids() and not b.disconnected.is_set()
        assert pending.creation.exception(DEADLINE_S) is None
    [device] = [d for d in all_devices(app) if d.name == "Pending"]
    assert device.id == pending.device.id
    events = event_log(app)
    assert actions(events, device.id) == [Action.ADDED, Action.CREDENTIALS_UPDATED,
                                          Action.TIMESERIES_UPDATED]
    assert logs.matching("created on the edge for gateway") != []
    assert [r["message"] for r in logs.records if r["level"].no >= 40] == []


# -- who may be a gateway, bad input -------------------------------------------------------------


def test_a_device_that_is_not_a_gateway_is_refused(app: EdgeApp) -> None:
    device, created = app.service.create_device("plain", token="plain-token")
    created.result(DEADLINE_S)
    with connected(app, "plain-token") as plain:
        assert plain.subscribe(RPC) == [0x80]
        plain.send(DEVICE_TELEMETRY, {"own": 1})  # its own API is served
        plain.refused(TELEMETRY, {"Child": [{"v": 1}]})
    assert device_named(app, "Child") is None
    assert actions(event_log(app), device.id) == [
        Action.ADDED, Action.CREDENTIALS_UPDATED, Action.TIMESERIES_UPDATED]


@pytest.mark.parametrize("topic, body", [
    (TELEMETRY, b"{not json"),
    (TELEMETRY, [{"Dev": [{"v": 1}]}]),  # not an object of devices
    (TELEMETRY, {"Dev": 5, "Other": "x"}),  # nothing but values ThingsBoard skips
    (TELEMETRY, {"": [{"v": 1}]}),  # empty name
    (TELEMETRY, {"x" * 256: [{"v": 1}]}),  # a name over 255 bytes
    (TELEMETRY, {"Good": [{"v": 1}], "Bad": [{"v": float("nan")}]}),  # one device's bad value
    (ATTRIBUTES, {"Dev": {"k": float("inf")}}),
    (CONNECT, {"type": "no name"}),
    (CONNECT, {"device": "   "}),
    (DISCONNECT, {"device": 7}),
    (ATTRIBUTES_REQUEST, {"id": 1, "device": "Dev", "key": "k"}),  # no "client"
    (ATTRIBUTES_REQUEST, {"id": "1", "device": "Dev", "client": True, "key": "k"}),
    (RPC, {"device": "Dev", "id": 1}),  # no "data"
    (RPC, {"device": "Dev", "id": 1, "data": {"n": 2**70}}),  # an answer the store refuses
])
def test_bad_input_closes_the_connection_after_the_acks_due_and_stores_nothing(
        app: EdgeApp, topic: str, body: Any) -> None:
    make_gateway(app)
    with connected(app) as gateway:
        before = gateway.publish(TELEMETRY, {"First": [{"v": 1}]}).mid
        gateway.refused(topic, body if isinstance(body, bytes) else json.dumps(body).encode())
        assert before in gateway.acked_ids()
    assert sorted(d.name for d in all_devices(app)) == ["First", "gateway-1"]
    first = device_named(app, "First")
    assert first is not None
    assert [e.action for e in event_log(app) if e.action == Action.TIMESERIES_UPDATED] == [
        Action.TIMESERIES_UPDATED]


def test_values_thingsboard_skips_and_topics_it_does_not_serve(app: EdgeApp) -> None:
    make_gateway(app)
    with connected(app) as gateway:
        gateway.send(TELEMETRY, {"Kept": [{"v": 1}], "Skipped": 42})
        gateway.send(ATTRIBUTES, {"Kept": {"a": 1}, "Skipped": [1, 2]})
        gateway.send("v1/gateway/claim", {"Kept": {"secretKey": "s"}})  # dropped
        gateway.send("v1/gateway/unknown", {"x": 1})  # dropped
        assert gateway.subscribe("v1/gateway/unknown") == [0x80]
        assert not gateway.disconnected.is_set()
    assert device_named(app, "Skipped") is None
    kept = device_named(app, "Kept")
    assert kept is not None
    assert actions(event_log(app), kept.id) == [
        Action.ADDED, Action.CREDENTIALS_UPDATED, Action.TIMESERIES_UPDATED,
        Action.ATTRIBUTES_UPDATED]


# -- limits ----------------------------------------------------------------------------------------


def test_a_gateway_connection_serves_at_most_max_sub_devices(
        app: EdgeApp, logs: Logs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the limit (gateway.MAX_SUB_DEVICES, 10,000; 3 here) a publish naming a device
    more is refused whole (nothing of it stored, the connection closed, a WARNING naming the
    limit); a device disconnected makes room."""
    monkeypatch.setattr(gateway_module, "MAX_SUB_DEVICES", 3)
    make_gateway(app)
    with connected(app) as gateway:
        gateway.send(TELEMETRY, {"d1": [{"v": 1}], "d2": [{"v": 1}], "d3": [{"v": 1}]})
        gateway.send(TELEMETRY, {"d1": [{"v": 2}]})  # the devices it has: served
        gateway.send(DISCONNECT, {"device": "d3"})
        gateway.send(CONNECT, {"device": "d4"})  # room again
        gateway.refused(TELEMETRY, {"d1": [{"v": 3}], "d5": [{"v": 1}]})
    [line] = logs.matching("devices connected through it, the most one gateway connection",
                           component="mqtt-gateway")
    assert "3 devices" in line["message"] and "MAX_SUB_DEVICES" in line["message"]
    assert device_named(app, "d5") is None
    d1 = device_named(app, "d1")
    assert d1 is not None and telemetry(event_log(app), d1.id) == [1, 2]


def test_a_device_whose_creation_failed_leaves_the_gateway_at_once(
        app: EdgeApp, logs: Logs, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device connected by a QoS 0 `connect` whose creation fails (its name taken by a device
    the cloud synced meanwhile) leaves the gateway when the failure is known: the failed commit
    closes the connection (as any publish's, ThingsBoard's getPubAckCallback), the failure is
    logged, and nothing of the device is stored; the next connection has room for as many
    devices as ever."""
    monkeypatch.setattr(gateway_module, "MAX_SUB_DEVICES", 2)
    make_gateway(app)
    clash = Device(id=uuid.uuid4(), name="Clash", type="from-cloud", token="cloud-clash",
                   created_time=1)
    with connected(app) as gateway:
        assert gateway.subscribe(RPC) == [0]
        with held_commits(app.store, then=lambda txn: EntityStore(app.store).put_device(
                txn, clash)):
            gateway.publish(CONNECT, {"device": "Clash"}, qos=0)
            logs.wait_for("device Clash connected through gateway")
        logs.wait_for("QoS 0 publish not committed")
        wait_until(gateway.disconnected.is_set, timeout=10, what="the connection closed")
    assert logs.matching("device Clash not created for gateway")
    with connected(app) as gateway:
        gateway.send(TELEMETRY, {"n1": [{"v": 1}], "n2": [{"v": 1}]})
        assert not gateway.disconnected.is_set()
    stored = device_named(app, "Clash")
    assert stored is not None and stored.id == clash.id  # the cloud's, not a second one
    assert actions(event_log(app), clash.id) == []


def test_topics_the_edge_does_not_serve_are_logged_up_to_a_limit(
        app: EdgeApp, logs: Logs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dropped_module, "MAX_DROPPED_TOPICS", 2)
    make_gateway(app)
    with connected(app) as gateway:
        for i in range(5):
            gateway.send(f"v1/gateway/unknown/{i}", {"x": 1})
            gateway.send(f"v1/gateway/unknown/{i}", {"x": 2})
        assert not gateway.disconnected.is_set()
    dropped = logs.matching("on a topic the edge does not serve")
    assert [r["extra"]["topic"] for r in dropped] == ["v1/gateway/unknown/0",
                                                      "v1/gateway/unknown/1"]
    assert len(logs.matching("further topics it does not serve are dropped unlogged")) == 1
    # every one of them counted, logged or not
    assert metric_total(app.metrics.snapshot(), "edge_sync_mqtt_publishes_dropped_total",
                        reason="unknown_gateway_topic") == 10


# -- a real `edge-sync run` process --------------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with Agent(tmp_path / "agent", env={"EDGE_MQTT_ENABLED": "true"}) as a:
        yield a


def test_run_serves_a_gateway_provisioned_through_the_admin_api(agent: Agent) -> None:
    agent.start()
    resp = agent.admin("POST", "/api/devices", {"name": "gw-proc", "gateway": True})
    assert resp.status == 201
    gw = resp.json()
    assert gw["gateway"] is True
    plain_id, plain_token = agent.create_device("plain-proc")
    names = [f"proc-{i:03}" for i in range(100)]
    with MqttGateway(agent.mqtt_port, gw["token"]) as gateway:
        assert gateway.connect() == 0
        mids = [gateway.publish(TELEMETRY, {n: [{"v": r}] for n in names}).mid for r in range(3)]
        wait_until(lambda: len(gateway.acked_ids()) == 3, timeout=20, what="3 PUBACKs")
        assert gateway.acked_ids() == mids
        gateway.send(DISCONNECT, {"device": "proc-000"})
    with MqttGateway(agent.mqtt_port, plain_token) as plain:
        assert plain.connect() == 0
        plain.refused(TELEMETRY, {"intruder": [{"v": 1}]})
    agent.terminate()
    events = read_log(agent.data_dir)
    added = {e.body["name"]: e for e in events if e.action == Action.ADDED}
    assert sorted(added) == sorted([*names, "gw-proc", "plain-proc"])
    assert added["gw-proc"].body["additionalInfo"] == {"gateway": True}
    assert added["plain-proc"].body["additionalInfo"] is None
    for name in names:
        device_id = added[name].entity_id
        assert added[name].body["additionalInfo"] == {"lastConnectedGateway": gw["id"]}
        assert actions(events, device_id) == [Action.ADDED, Action.CREDENTIALS_UPDATED,
                                              *[Action.TIMESERIES_UPDATED] * 3]
        assert telemetry(events, device_id) == [0, 1, 2]
    records = agent.log_records()
    # one INFO line per device created; connecting and disconnecting devices is DEBUG, with
    # one line for the gateway's connection and one summing up its end
    created = [r for r in records if "created on the edge for gateway" in r.get("message", "")]
    assert len(created) == len(names)
    assert {r["gateway"] for r in created} == {gw["id"]}
    assert {r["device"] for r in created} == {str(added[n].entity_id) for n in names}
    assert [r for r in records if "connected through gateway" in r.get("message", "")
            or "disconnected from gateway" in r.get("message", "")] == []
    [opened] = [r for r in records if "serves the gateway API" in r.get("message", "")]
    [ended] = [r for r in records if "devices connected through it disconnected"
               in r.get("message", "")]
    assert opened["gateway"] == ended["gateway"] == gw["id"]
    assert "99 devices" in ended["message"]  # proc-000 had been disconnected
    [refusal] = [r for r in records if "is not a gateway" in r.get("message", "")]
    assert refusal["device"] == plain_id
    text = agent.stderr_text()
    assert gw["token"] not in text and plain_token not in text
