"""ThingsBoard's device MQTT topics beyond the v1 basics, in one process: a whole EdgeApp (real
LMDB, the real MQTT server on loopback), alone or linked to the scripted gRPC peer, and real
MQTT clients (paho-mqtt), as ThingsBoard's MqttTransportHandler serves them:

- the short v2 topics (MqttTopics: ``v2/t``, ``v2/a``, ``v2/a/req/{id}``, ``v2/r/res/{id}``,
  their ``/j`` JSON variants) served as their v1 forms, answers and what a subscription gets
  (``v2/a``, ``v2/r/req/+``) on the v2 topics; the PROTOBUF variants acknowledged and dropped;
- an RPC answer that is not JSON acknowledged and carried to the cloud as its text
  (JsonMqttAdaptor.processToDeviceRpcResponseMsg);
- the answer subscriptions granted (processSubscribe), client-side RPC answered at once:
  ``getSessionLimits`` with the edge's limits (onGetSessionLimitsRpc), any other method with an
  error;
- a provision-only session (username or client id ``provision``: processConnect,
  processProvisionSessionMsg) answered NOT_FOUND; a claim acknowledged and dropped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.devices.rpc import RpcStatus
from edge_sync.mqtt import provision
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.records import Device
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.log_capture import log_records
from tests.helpers.metric_values import metric_total
from tests.helpers.mqtt_app import MQTT_ON, AppFactory, no_connections, values
from tests.helpers.mqtt_device import TELEMETRY, MqttDevice
from tests.helpers.mqtt_raw import PINGREQ, PINGRESP, PUBLISH, Packet, RawClient, publish_packet
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import (
    Harness,
    make_device,
    rpc_downlink,
    rpc_uplinks,
    rpcs,
    shared_downlink,
)

DEADLINE_S = 10.0
TOKEN = "tb-topics-token"
MAX_MESSAGE, MAX_INFLIGHT = 65536, 100
NOT_FOUND = b'{"errorMsg":"Provision data was not found!","status":"NOT_FOUND"}'
NOT_SERVED = {"error": "client-side RPC is not served by the edge"}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


@pytest.fixture
def app(make_app: AppFactory) -> EdgeApp:
    return make_app(EDGE_MQTT_MAX_MESSAGE_BYTES=str(MAX_MESSAGE),
                    EDGE_MQTT_MAX_INFLIGHT_PER_CLIENT=str(MAX_INFLIGHT))


@pytest.fixture
def device_id(app: EdgeApp) -> uuid.UUID:
    device, created = app.service.create_device("tb-topics", token=TOKEN)
    created.result(DEADLINE_S)
    return device.id


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[FakeCloud, EdgeApp]]:
    harness = Harness(tmp_path)
    try:
        yield harness.connected_edge(**MQTT_ON)
    finally:
        harness.close()


def acked(dev: MqttDevice, *mids: int) -> None:
    wait_until(lambda: set(mids) <= set(dev.acked_ids()), timeout=DEADLINE_S,
               what=f"PUBACKs of {mids}")


def dropped_publishes(app: EdgeApp) -> float:
    return metric_total(app.metrics.snapshot(), "edge_sync_mqtt_publishes_dropped_total")


# -- the short v2 topics ---------------------------------------------------------------------------


def test_v2_telemetry_and_attributes_are_stored_as_their_v1_forms(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev, log_records() as records:
        assert dev.connect() == 0
        mids = [dev.publish("v2/t", {"n": 1}).mid, dev.publish("v2/t/j", {"n": 2}).mid,
                dev.publish("v2/a", {"fw": "1.0.1"}).mid, dev.publish("v2/a/j", {"hw": 3}).mid,
                dev.publish("v2/t/p", b"\x0a\x03").mid, dev.publish(TELEMETRY, {"n": 3}).mid]
        acked(dev, *mids)
        assert dev.acked_ids() == mids
        assert not dev.disconnected.is_set()
    no_connections(app)
    assert values(app, device_id) == [1, 2, 3]
    assert app.service.read_attributes(device_id, client_keys=("fw", "hw"),
                                       shared_keys=None)[0] == {"client": {"fw": "1.0.1", "hw": 3}}
    assert dropped_publishes(app) == 1  # the PROTOBUF variant: acknowledged and dropped
    assert [(r["level"].name, r["message"], r["extra"]["topic"]) for r in records
            if "does not serve" in r["message"]] == [
        ("WARNING", "publish on a topic of PROTOBUF payloads, which the edge does not serve, "
         "acknowledged and dropped", "v2/t/p")]


def test_v2_attribute_requests_are_answered_on_the_v2_response_topics(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        acked(dev, dev.publish("v1/devices/me/attributes", {"fw": "1.0.1", "hw": 3}).mid)
        dev.publish("v2/a/req/1", {"clientKeys": "fw"})
        dev.publish("v2/a/req/j/2", {"clientKeys": "hw"})
        assert dev.wait_message("v2/a/res/1") == {"client": {"fw": "1.0.1"}}
        assert dev.wait_message("v2/a/res/j/2") == {"client": {"hw": 3}}
        assert [t for t, _ in dev.messages] == ["v2/a/res/1", "v2/a/res/j/2"]
    no_connections(app)


def test_the_subscriptions_thingsboard_grants_are_granted(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """processSubscribe grants the answer topics of every form (v1/devices/me/rpc/response/+
    was refused), and the request and update topics of v1, v2 and v2 JSON; the PROTOBUF forms
    are not served here."""
    granted = ["v1/devices/me/rpc/response/+", "v2/r/res/+", "v2/r/res/j/+", "v2/a/res/+",
               "v2/a/res/j/+", "v1/devices/me/attributes/response/+", "v2/r/req/+",
               "v2/r/req/j/+", "v2/a", "v2/a/j", "v1/devices/me/rpc/request/+",
               "v1/devices/me/attributes"]
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        assert [dev.subscribe(t, qos=1)[0] for t in granted] == [1] * len(granted)
        assert [dev.subscribe(t, qos=1)[0] for t in ("v2/r/req/p/+", "v2/a/p", "v2/t")] == \
            [0x80] * 3
    no_connections(app)


def test_rpc_requests_and_answers_in_the_v2_forms(linked: tuple[FakeCloud, EdgeApp]) -> None:
    """A device subscribed to v2/r/req/+ gets its requests on v2/r/req/{id}, and answers on
    v2/r/res/{id} (or v2/r/res/j/{id}); one subscribed to several forms gets them in the form
    it subscribed to last, as ThingsBoard's rpcSubTopicType."""
    fake, app = linked
    dev = make_device(app, "v2-rpc")
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe("v2/r/req/+", qos=1) == [1]
        fake.send_downlink(rpc_downlink(fake, dev, 1, "setGpio", {"pin": 1}))
        assert client.wait_message("v2/r/req/1") == {"method": "setGpio", "params": {"pin": 1}}
        acked(client, client.publish("v2/r/res/1", {"ok": 1}).mid)

        assert client.subscribe("v2/r/req/j/+", qos=1) == [1]
        fake.send_downlink(rpc_downlink(fake, dev, 2, "getTemp"))
        assert client.wait_message("v2/r/req/j/2") == {"method": "getTemp", "params": None}
        acked(client, client.publish("v2/r/res/j/2", 21.5).mid)

        client.unsubscribe("v2/r/req/j/+")  # the v2 form is still subscribed to
        fake.send_downlink(rpc_downlink(fake, dev, 3, "reboot"))
        assert client.wait_message("v2/r/req/3") == {"method": "reboot", "params": None}
        acked(client, client.publish("v2/r/res/3", {"done": True}).mid)
        assert [t for t, _ in client.messages] == ["v2/r/req/1", "v2/r/req/j/2", "v2/r/req/3"]
    ups = fake.wait_for(lambda: len(rpc_uplinks(fake)) >= 3 and rpc_uplinks(fake),
                        what="three answers uplinked")
    assert [(u.requestId, json.loads(u.responseMsg.response)) for u in ups] == [
        (1, {"ok": 1}), (2, 21.5), (3, {"done": True})]
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.SUCCESSFUL] * 3


def test_shared_attribute_updates_in_the_v2_form(linked: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked
    dev = make_device(app, "v2-attrs")
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe("v2/a", qos=1) == [1]
        fake.send_downlink(shared_downlink(fake, dev, {"setpoint": 21}))
        assert client.wait_message("v2/a") == {"setpoint": 21}
        assert [t for t, _ in client.messages] == ["v2/a"]


# -- RPC answers that are not JSON -----------------------------------------------------------------


def test_an_rpc_answer_that_is_not_json_is_acknowledged_and_carried_as_its_text(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    """ThingsBoard stores the answer's payload as text, empty included
    (JsonMqttAdaptor.processToDeviceRpcResponseMsg): it is acknowledged, not a reason to close
    the connection, and reaches the cloud unchanged."""
    fake, app = linked
    dev = make_device(app, "rpc-text")
    answers = [b"OK", b"", b"\xff\xfe", b"[1, 2", b'{"ok": true}']
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe("v1/devices/me/rpc/request/+", qos=1) == [1]
        for n, raw in enumerate(answers, start=1):
            fake.send_downlink(rpc_downlink(fake, dev, n, "ping"))
            client.wait_message(f"v1/devices/me/rpc/request/{n}")
            acked(client, client.publish(f"v1/devices/me/rpc/response/{n}", raw).mid)
        assert not client.disconnected.is_set()
    ups = fake.wait_for(lambda: len(rpc_uplinks(fake)) >= 5 and rpc_uplinks(fake),
                        what="five answers uplinked")
    assert [(u.requestId, u.responseMsg.response, u.responseMsg.error) for u in ups] == [
        (1, "OK", ""), (2, "", ""), (3, "\ufffd\ufffd", ""), (4, "[1, 2", ""),
        (5, '{"ok":true}', "")]
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, "OK"), (RpcStatus.SUCCESSFUL, ""),
        (RpcStatus.SUCCESSFUL, "\ufffd\ufffd"), (RpcStatus.SUCCESSFUL, "[1, 2"),
        (RpcStatus.SUCCESSFUL, {"ok": True})]


# -- client-side RPC -------------------------------------------------------------------------------


def limits(*, gateway: bool) -> dict[str, Any]:
    none = {"messages": None, "telemetryMessages": None, "telemetryDataPoints": None}
    out: dict[str, Any] = {"maxPayloadSize": MAX_MESSAGE, "maxInflightMessages": MAX_INFLIGHT,
                           "rateLimits": none}
    return {**out, "gatewayRateLimits": none} if gateway else out


def test_get_session_limits_is_answered_with_the_edges_limits(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """As MqttTransportHandler.onGetSessionLimitsRpc: acknowledged, and answered on the
    response topic of the request's form; ThingsBoard's Python SDK asks this on every
    connect. A gateway's answer has its gateway limits too."""
    _, created = app.service.create_device("tb-topics-gw", token="gw-token", gateway=True)
    created.result(DEADLINE_S)
    body = {"method": "getSessionLimits", "params": {"timeout": 5000}}
    with MqttDevice(app.mqtt_port, TOKEN) as dev:
        assert dev.connect() == 0
        assert dev.subscribe("v1/devices/me/rpc/response/+", qos=1) == [1]
        acked(dev, dev.publish("v1/devices/me/rpc/request/1", body).mid)
        assert dev.wait_message("v1/devices/me/rpc/response/1") == limits(gateway=False)
        acked(dev, dev.publish("v2/r/req/2", body).mid)
        assert dev.wait_message("v2/r/res/2") == limits(gateway=False)
        assert [m.qos for m in dev.received] == [1, 0]  # subscribed to the v1 answers only
    with MqttDevice(app.mqtt_port, "gw-token") as gw:
        assert gw.connect() == 0
        gw.publish("v1/devices/me/rpc/request/7", body)
        assert gw.wait_message("v1/devices/me/rpc/response/7") == limits(gateway=True)
    no_connections(app)


def test_another_client_side_rpc_is_answered_with_an_error_at_once(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    with MqttDevice(app.mqtt_port, TOKEN) as dev, log_records() as records:
        assert dev.connect() == 0
        acked(dev, dev.publish("v1/devices/me/rpc/request/1", {"method": "getTime"}).mid)
        assert dev.wait_message("v1/devices/me/rpc/response/1") == NOT_SERVED
        dev.publish("v2/r/req/j/2", {"method": "getTime", "params": {}})
        assert dev.wait_message("v2/r/res/j/2") == NOT_SERVED
        bad = dev.publish("v1/devices/me/rpc/request/3", {"params": {}})  # no method
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert bad.mid not in dev.acked_ids()
    no_connections(app)
    assert [(r["level"].name, r["message"]) for r in records
            if r["message"].startswith("client-side RPC")] == [
        ("WARNING", "client-side RPC 'getTime' of device tb-topics answered with an error: "
         "client-side RPC is not served by the edge"),
        ("DEBUG", "client-side RPC 'getTime' of device tb-topics answered with an error: "
         "client-side RPC is not served by the edge")]
    assert dropped_publishes(app) == 0


# -- provisioning and claiming ---------------------------------------------------------------------


@pytest.mark.parametrize(("username", "client_id"), [("provision", "anything"),
                                                     ("no-such-token", "provision")])
def test_a_provision_only_session_is_answered_not_found(
        app: EdgeApp, username: str, client_id: str) -> None:
    """MqttTransportHandler.processConnect accepts username or client id "provision" (CONNACK
    0, any password); the request on /provision/request is acknowledged and answered on
    /provision/response as ThingsBoard answers an unknown provision key; a publish elsewhere
    closes the session (processProvisionSessionMsg)."""
    request = {"deviceName": "new-device", "provisionDeviceKey": "key",
               "provisionDeviceSecret": "secret"}
    dev = MqttDevice(app.mqtt_port, username, client_id=client_id)
    try:
        dev.client.username_pw_set(username, "any password")
        assert dev.connect() == 0
        assert dev.subscribe("/provision/response", qos=1) == [1]
        assert dev.subscribe(TELEMETRY, qos=1) == [0x80]
        info = dev.publish("/provision/request", request)
        assert dev.wait_message("/provision/response") == json.loads(NOT_FOUND)
        acked(dev, info.mid)
        assert [(m.topic, m.payload, m.qos) for m in dev.received] == [
            ("/provision/response", NOT_FOUND, 1)]
        dev.publish(TELEMETRY, {"n": 1})
        wait_until(dev.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
    finally:
        dev.close()
    no_connections(app)
    assert device_named(app, "new-device") is None  # nothing was provisioned


def test_a_provision_request_at_qos0_without_a_subscription_is_answered_at_qos0(
        app: EdgeApp) -> None:
    """Whatever the request holds (the edge provisions nothing), with the client id
    "provision" and no username; at QoS 0 when /provision/response is not subscribed to."""
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("provision", None) == (0, 0)
        raw.send(publish_packet("/provision/request", b"not even JSON"))
        assert raw.read() == Packet(PUBLISH, 0, publish_packet(
            "/provision/response", NOT_FOUND)[2:])
        raw.send(PINGREQ)
        assert raw.read() == Packet(PINGRESP, 0, b"")
    no_connections(app)


def test_a_provision_only_session_ends_after_its_answer_or_its_keep_alive(
        app: EdgeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """ThingsBoard closes a provision-only session 60 s after its answer
    (DeviceProvisionCallback), here shortened; a silent one ends at 1.5 times its
    keep-alive."""
    monkeypatch.setattr(provision, "CLOSE_AFTER_ANSWER_S", 0.3)
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("provision", "provision", keep_alive=60) == (0, 0)
        raw.send(publish_packet("/provision/request", b"{}"))
        assert raw.read().kind == PUBLISH
        assert raw.closed_by_server()
    with RawClient(app.mqtt_port) as raw:
        assert raw.connect("device-1", "provision", keep_alive=1) == (0, 0)
        assert raw.closed_by_server()
    no_connections(app)


def test_a_claim_is_acknowledged_and_dropped_with_one_warning(
        app: EdgeApp, device_id: uuid.UUID) -> None:
    """ThingsBoard acknowledges a claim once handed to the device's actor and only logs a
    failure (DeviceActorMessageProcessor.handleClaimDeviceMsg); the edge does not serve
    claiming: acknowledged (a refusal would close the connection, and the device would
    retry), dropped, and logged."""
    with MqttDevice(app.mqtt_port, TOKEN) as dev, log_records() as records:
        assert dev.connect() == 0
        mids = [dev.publish("v1/devices/me/claim", {"secretKey": "s", "durationMs": 60000}).mid
                for _ in range(2)]
        acked(dev, *mids)
        assert not dev.disconnected.is_set()
    no_connections(app)
    assert dropped_publishes(app) == 2
    assert [(r["level"].name, r["message"]) for r in records if "does not serve" in
            r["message"]] == [("WARNING", "publish on a topic of device claiming, which the edge "
                                          "does not serve, acknowledged and dropped")]


def device_named(app: EdgeApp, name: str) -> Device | None:
    with app.store.read() as txn:
        return EntityStore(app.store).device_by_name(txn, name)
