"""Both ways between the reference cloud and an MQTT device, across real processes:
`edge-cloud serve` and `edge-sync run` (MQTT on) as subprocesses, the device a real MQTT client
(paho-mqtt). What the cloud's operator does goes through its admin API (ThingsBoard's REST
shape) and the `edge-cloud` CLI; what the device does goes through ThingsBoard's device MQTT
topics only.

Proved:

- a two-way RPC the cloud's REST caller sends (`POST /api/rpc/twoway/{deviceId}`) is published
  to the device subscribed to `v1/devices/me/rpc/request/+` (at QoS 0, and at QoS 1) as
  `{"method", "params"}`; the answer it publishes on `v1/devices/me/rpc/response/{id}` is what
  the REST call returns, and the request is SUCCESSFUL in the cloud and on the edge; each
  request is published once;
- an answer that is not JSON (``OK``, an empty payload) reaches the REST caller as ThingsBoard
  passes it on (406 for text, 200 without a body for nothing);
- a one-way RPC reaches the device, is SUCCESSFUL in the cloud without an answer, and an answer
  the device publishes anyway is acknowledged and goes nowhere;
- a persistent RPC sent while the device is offline waits on the edge (QUEUED) while the device
  is connected but not subscribed, and is delivered the moment it subscribes;
- a QoS 1 request written to the device and not acknowledged when the edge is killed (kill -9)
  is QUEUED on the edge (DELIVERED comes with the PUBACK), so after the restart a subscriber
  gets it again and its answer makes it SUCCESSFUL;
- shared attributes set in the cloud (CLI and admin API) reach the device subscribed to
  `v1/devices/me/attributes` (at QoS 0, and at QoS 1): the first set with all its keys, later
  sets with the changed keys only, in order, once each; every key of a burst of sets reaches the
  device;
- an attribute request over MQTT for shared keys only the cloud holds is answered with the
  cloud's values (one request to the cloud), then from the edge's store;
- telemetry and client attributes published over MQTT (QoS 1) reach the cloud exactly once, in
  order, with the values sent.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edge_sync.storage.records import Action
from tests.helpers.agent import HttpClient, Response
from tests.helpers.cloud_proc import check_delivered, wait_connected, wait_drained
from tests.helpers.mqtt_device import ATTRIBUTES, TELEMETRY, MqttDevice
from tests.helpers.wait import wait_until
from tests.integration.test_device_rpc_e2e import RK, Dev, Rig

pytestmark = pytest.mark.slow

DEADLINE_S = 30.0
RPC_REQUESTS = "v1/devices/me/rpc/request/+"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"
ATTRIBUTES_REQUEST = "v1/devices/me/attributes/request/"
ATTRIBUTES_RESPONSE = "v1/devices/me/attributes/response/"
BURST_SETS, BURST_THREADS = 100, 2


@pytest.fixture
def rig(tmp_path: Path, procs: Callable[[Any], Any]) -> Rig:
    return Rig(tmp_path, procs, EDGE_MQTT_ENABLED="true")


# -- helpers -------------------------------------------------------------------------------------


def rest(rig: Rig, method: str, path: str, body: Any = None) -> Response:
    """One call to the cloud's admin API on its own connection (thread-safe)."""
    with HttpClient(rig.cloud.admin_port, timeout=DEADLINE_S) as client:
        return client.request(method, path, None if body is None else json.dumps(body).encode())


def connected(rig: Rig, dev: Dev, *subscriptions: str, qos: int = 0) -> MqttDevice:
    """The device's MQTT client, connected and subscribed at ``qos`` (each SUBACK granting it).
    Once the PUBACK of a telemetry publish sent after the SUBSCRIBEs has come, the edge waits on
    the device's session for what the subscriptions serve (the same connection and the same
    entity actor handle both, in order)."""
    client = MqttDevice(rig.agent.mqtt_port, dev.token)
    try:
        assert client.connect() == 0
        for topic in subscriptions:
            assert client.subscribe(topic, qos=qos) == [qos], topic
        if subscriptions:
            wait_acked(client, client.publish(TELEMETRY, {"barrier": 1}).mid)
    except BaseException:
        client.close()
        raise
    return client


def wait_acked(client: MqttDevice, *mids: int) -> None:
    wait_until(lambda: set(mids) <= set(client.acked_ids()), timeout=DEADLINE_S,
               what=f"PUBACKs of {mids}")


def received(client: MqttDevice, prefix: str) -> list[tuple[str, Any]]:
    """What the edge published to the device on topics starting with ``prefix``, in order."""
    return [(t, body) for t, body in list(client.messages) if t.startswith(prefix)]


def wait_received(client: MqttDevice, prefix: str, count: int) -> list[tuple[str, Any]]:
    """Wait until ``count`` messages on ``prefix`` have come; all of them (more is a failure
    the caller's exact comparison shows)."""
    def enough() -> list[tuple[str, Any]]:
        got = received(client, prefix)
        return got if len(got) >= count else []

    return wait_until(enough, timeout=DEADLINE_S, what=f"{count} messages on {prefix}",
                      show=lambda: received(client, prefix))


def device_values(events: list[dict[str, Any]], dev: Dev, action: str) -> list[Any]:
    return [e["body"] for e in events if e["entity_id"] == dev.id and e["action"] == action]


# -- server-side RPC -------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
def test_a_two_way_rpc_from_the_clouds_rest_api_is_answered_by_the_mqtt_device(
        rig: Rig, qos: int) -> None:
    dev = rig.device("valve")
    calls = [({"method": "setGpio", "params": {"pin": 7, "value": 1}, "timeout": 10_000},
              {"pin": 7, "value": 1, "ok": True}),
             ({"method": "getTemp", "timeout": 10_000}, 21.5)]
    answers: list[Response] = []
    with connected(rig, dev, RPC_REQUESTS, qos=qos) as client, ThreadPoolExecutor(1) as pool:
        for n, (body, reply) in enumerate(calls, start=1):
            call = pool.submit(rest, rig, "POST", f"/api/rpc/twoway/{dev.id}", body)
            assert client.wait_message(f"{RPC_REQUEST}{n}", timeout=DEADLINE_S) == \
                {"method": body["method"], "params": body.get("params", {})}
            wait_acked(client, client.publish(f"{RPC_RESPONSE}{n}", reply).mid)
            answers.append(call.result(timeout=DEADLINE_S))
        assert received(client, RPC_REQUEST) == [
            (f"{RPC_REQUEST}1", {"method": "setGpio", "params": {"pin": 7, "value": 1}}),
            (f"{RPC_REQUEST}2", {"method": "getTemp", "params": {}})]

    assert [(a.status, a.json()) for a in answers] == \
        [(200, {"pin": 7, "value": 1, "ok": True}), (200, 21.5)]
    rpc_ids = [a.headers["x-rpc-id"] for a in answers]
    for n, (rpc_id, (_, reply)) in enumerate(zip(rpc_ids, calls, strict=True), start=1):
        cloud = rig.cloud_rpc(rpc_id)
        assert (cloud["status"], cloud["response"], cloud["requestId"]) == \
            ("SUCCESSFUL", reply, n)
    assert [(r["request_uuid"], r["request_id"], r["method"], r["status"], r["oneway"])
            for r in rig.edge_rpcs(dev)] == \
        [(rpc_ids[0], 1, "setGpio", "SUCCESSFUL", False),
         (rpc_ids[1], 2, "getTemp", "SUCCESSFUL", False)]


def test_an_answer_that_is_not_json_reaches_the_rest_caller_as_thingsboard_passes_it(
        rig: Rig) -> None:
    """The device answers text that is not JSON, then an empty payload: both are acknowledged
    and carried to the cloud as their text (ThingsBoard's
    JsonMqttAdaptor.processToDeviceRpcResponseMsg), where the REST caller gets what
    ThingsBoard's AbstractRpcController.reply answers for them: 406 (not JSON) and 200 with
    no body (empty); the requests are SUCCESSFUL with that text."""
    dev = rig.device("texty")
    answers: list[Response] = []
    with connected(rig, dev, RPC_REQUESTS, qos=1) as client, ThreadPoolExecutor(1) as pool:
        for n, reply in enumerate((b"OK", b""), start=1):
            call = pool.submit(rest, rig, "POST", f"/api/rpc/twoway/{dev.id}",
                               {"method": "status", "timeout": 10_000})
            assert client.wait_message(f"{RPC_REQUEST}{n}", timeout=DEADLINE_S) == \
                {"method": "status", "params": {}}
            wait_acked(client, client.publish(f"{RPC_RESPONSE}{n}", reply).mid)
            answers.append(call.result(timeout=DEADLINE_S))
        assert not client.disconnected.is_set()
    assert [(a.status, a.body) for a in answers] == [(406, b""), (200, b"")]
    assert [(rig.cloud_rpc(a.headers["x-rpc-id"])["status"],
             rig.cloud_rpc(a.headers["x-rpc-id"])["response"]) for a in answers] == [
        ("SUCCESSFUL", "OK"), ("SUCCESSFUL", "")]
    assert [(r["status"], r["response"]) for r in rig.edge_rpcs(dev)] == [
        ("SUCCESSFUL", "OK"), ("SUCCESSFUL", "")]


def test_a_one_way_rpc_reaches_the_mqtt_device_and_succeeds_without_an_answer(rig: Rig) -> None:
    dev = rig.device("lamp")
    with connected(rig, dev, RPC_REQUESTS) as client:
        sent = rest(rig, "POST", f"/api/rpc/oneway/{dev.id}",
                    {"method": "blink", "params": {"times": 3}})
        assert (sent.status, sent.body) == (200, b"")
        rpc_id = sent.headers["x-rpc-id"]
        assert client.wait_message(f"{RPC_REQUEST}1", timeout=DEADLINE_S) == \
            {"method": "blink", "params": {"times": 3}}
        wait_until(lambda: rig.cloud_status(rpc_id) == "SUCCESSFUL", timeout=DEADLINE_S,
                   what="the one-way request SUCCESSFUL in the cloud")
        # an answer to a one-way request is acknowledged and dropped: nothing goes up
        wait_acked(client, client.publish(f"{RPC_RESPONSE}1", {"late": True}).mid)
        assert received(client, RPC_REQUEST) == \
            [(f"{RPC_REQUEST}1", {"method": "blink", "params": {"times": 3}})]
    wait_drained(rig.agent, timeout=DEADLINE_S)
    [report] = rig.edge_events(Action.RPC_CALL)
    assert (report.body["oneway"], report.body["response"]) == (True, {})
    cloud = rig.cloud_rpc(rpc_id)
    assert (cloud["status"], cloud["response"], cloud["requestId"]) == ("SUCCESSFUL", {}, 1)
    assert [(r["request_uuid"], r["status"], r["oneway"]) for r in rig.edge_rpcs(dev)] == \
        [(rpc_id, "SUCCESSFUL", True)]


def test_a_persistent_rpc_sent_while_the_device_is_offline_is_delivered_when_it_subscribes(
        rig: Rig) -> None:
    dev = rig.device("pump")
    sent = rest(rig, "POST", f"/api/rpc/twoway/{dev.id}",
                {"method": "open", "params": {"valve": 2}, "persistent": True,
                 "timeout": 60_000})
    assert sent.status == 200
    rpc_id = sent.json()["rpcId"]
    assert sent.headers["x-rpc-id"] == rpc_id
    wait_until(lambda: rig.cloud_status(rpc_id) == "DELIVERED", timeout=DEADLINE_S,
               what="the request held by the edge")
    with connected(rig, dev) as client:
        # connected, not subscribed: the request stays queued (a barrier through the device's
        # entity actor first)
        wait_acked(client, client.publish(TELEMETRY, {"barrier": 1}).mid)
        assert [r["status"] for r in rig.edge_rpcs(dev)] == ["QUEUED"]
        assert client.subscribe(RPC_REQUESTS) == [0]
        assert client.wait_message(f"{RPC_REQUEST}1", timeout=DEADLINE_S) == \
            {"method": "open", "params": {"valve": 2}}
        wait_acked(client, client.publish(f"{RPC_RESPONSE}1", {"open": True}).mid)
        wait_until(lambda: rig.cloud_status(rpc_id) == "SUCCESSFUL", timeout=DEADLINE_S,
                   what="the answer in the cloud")
        assert received(client, RPC_REQUEST) == \
            [(f"{RPC_REQUEST}1", {"method": "open", "params": {"valve": 2}})]
    cloud = rig.cloud_rpc(rpc_id)
    assert (cloud["status"], cloud["response"], cloud["request"]["persisted"]) == \
        ("SUCCESSFUL", {"open": True}, True)
    assert [(r["request_uuid"], r["status"]) for r in rig.edge_rpcs(dev)] == \
        [(rpc_id, "SUCCESSFUL")]


def test_a_qos1_request_unacknowledged_at_a_kill_9_is_delivered_again_after_the_restart(
        rig: Rig) -> None:
    """The device got the request at QoS 1 and had not sent its PUBACK when the edge was
    killed: the edge holds it QUEUED (it used to be DELIVERED at once, and after the restart it
    was never sent again and ended TIMEOUT). Restarted, the edge sends it to the next
    subscriber; its answer reaches the cloud."""
    dev = rig.device("valve")
    sent = rest(rig, "POST", f"/api/rpc/twoway/{dev.id}",
                {"method": "close", "params": {"valve": 3}, "persistent": True,
                 "timeout": 120_000})
    assert sent.status == 200
    rpc_id = sent.json()["rpcId"]
    wait_until(lambda: rig.cloud_status(rpc_id) == "DELIVERED", timeout=DEADLINE_S,
               what="the request held by the edge")
    deaf = MqttDevice(rig.agent.mqtt_port, dev.token, manual_ack=True)
    try:
        assert deaf.connect() == 0
        assert deaf.subscribe(RPC_REQUESTS, qos=1) == [1]
        assert deaf.wait_message(f"{RPC_REQUEST}1", timeout=DEADLINE_S) == \
            {"method": "close", "params": {"valve": 3}}
        assert [r["status"] for r in rig.edge_rpcs(dev)] == ["QUEUED"]  # no PUBACK yet
        assert rig.agent.kill9() == -signal.SIGKILL
    finally:
        deaf.close()
    rig.agent.start()
    wait_connected(rig.agent)
    assert [r["status"] for r in rig.edge_rpcs(dev)] == ["QUEUED"]
    with connected(rig, dev, RPC_REQUESTS, qos=1) as client:
        assert client.wait_message(f"{RPC_REQUEST}1", timeout=DEADLINE_S) == \
            {"method": "close", "params": {"valve": 3}}
        wait_acked(client, client.publish(f"{RPC_RESPONSE}1", {"closed": True}).mid)
        wait_until(lambda: rig.cloud_status(rpc_id) == "SUCCESSFUL", timeout=DEADLINE_S,
                   what="the answer in the cloud")
        assert received(client, RPC_REQUEST) == \
            [(f"{RPC_REQUEST}1", {"method": "close", "params": {"valve": 3}})]
    assert rig.cloud_rpc(rpc_id)["response"] == {"closed": True}
    assert [(r["request_uuid"], r["status"]) for r in rig.edge_rpcs(dev)] == \
        [(rpc_id, "SUCCESSFUL")]


# -- shared attributes and attribute requests ------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
def test_shared_attributes_set_in_the_cloud_reach_the_subscribed_device(
        rig: Rig, qos: int) -> None:
    dev = rig.device("heater")
    with connected(rig, dev, ATTRIBUTES, qos=qos) as client:
        out = rig.cloud.set_attr(dev.id, {"setpoint": 21, "mode": "eco"}, routing_key=RK)
        assert out["values"] == {"setpoint": 21, "mode": "eco"}
        wait_received(client, ATTRIBUTES, 1)
        # the same setpoint again, a new mode: only the mode changed
        assert rest(rig, "POST", "/api/attributes",
                    {"device": dev.id, "values": {"setpoint": 21, "mode": "away"}}).status == 200
        wait_received(client, ATTRIBUTES, 2)
        assert rest(rig, "POST", "/api/attributes",
                    {"device": dev.id, "key": "setpoint", "value": 18.5}).status == 200
        got = wait_received(client, ATTRIBUTES, 3)
    assert got == [(ATTRIBUTES, {"setpoint": 21, "mode": "eco"}),
                   (ATTRIBUTES, {"mode": "away"}),
                   (ATTRIBUTES, {"setpoint": 18.5})]
    shared = rig.agent.device("GET", f"/api/v1/{dev.token}/attributes?sharedKeys=setpoint,mode")
    assert (shared.status, shared.json()) == (200, {"shared": {"setpoint": 18.5, "mode": "away"}})


def test_a_burst_of_shared_attribute_sets_reaches_the_subscribed_device_whole(rig: Rig) -> None:
    # every set its own key: however the cloud batches the sets into downlinks and the edge
    # merges them into updates, every key must reach the device
    dev = rig.device("dimmer")
    with connected(rig, dev, ATTRIBUTES) as client:
        with ThreadPoolExecutor(BURST_THREADS) as pool:
            answers = list(pool.map(lambda n: rest(rig, "POST", "/api/attributes", {
                "device": dev.id, "values": {f"k{n}": n}}).status, range(BURST_SETS)))
        assert answers == [200] * BURST_SETS
        wait_until(lambda: rig.cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=DEADLINE_S,
                   what="every attribute downlink acknowledged by the edge")
        expected = {f"k{n}": n for n in range(BURST_SETS)}
        held = rig.agent.device("GET", f"/api/v1/{dev.token}/attributes?sharedKeys="
                                + ",".join(expected))
        assert held.json() == {"shared": expected}  # the edge holds them all

        def seen() -> dict[str, Any]:
            merged: dict[str, Any] = {}
            for _, body in received(client, ATTRIBUTES):
                merged.update(body)
            return merged

        wait_until(lambda: seen() == expected, timeout=10.0,
                   what="every key of the burst told to the device",
                   show=lambda: {"missing": sorted(set(expected) - set(seen()),
                                                   key=lambda k: int(k[1:])),
                                 "updates": len(received(client, ATTRIBUTES))})


def test_an_attribute_request_over_mqtt_for_keys_only_the_cloud_holds_gets_the_clouds_values(
        rig: Rig) -> None:
    dev = rig.device("boiler")
    rest(rig, "POST", "/api/attributes", {"device": dev.id,
                                          "values": {"setpoint": 21, "mode": "eco"}})
    wait_until(lambda: rig.cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=DEADLINE_S,
               what="the attribute downlink acknowledged")
    rig.forget_shared(dev.id, ["setpoint", "mode"])
    asked_before = len(rig.edge_events(Action.ATTRIBUTES_REQUEST))

    with connected(rig, dev, f"{ATTRIBUTES_RESPONSE}+") as client:
        wait_acked(client, client.publish(ATTRIBUTES, {"firmware": "1.2.0"}).mid)
        client.publish(f"{ATTRIBUTES_REQUEST}1", {"sharedKeys": "setpoint,mode"})
        first = client.wait_message(f"{ATTRIBUTES_RESPONSE}1", timeout=DEADLINE_S)
        asked = len(rig.edge_events(Action.ATTRIBUTES_REQUEST))
        # held now: answered from the edge's store, the cloud not asked again
        client.publish(f"{ATTRIBUTES_REQUEST}2", {"clientKeys": "firmware", "sharedKeys": "mode"})
        second = client.wait_message(f"{ATTRIBUTES_RESPONSE}2", timeout=DEADLINE_S)
        assert [t for t, _ in received(client, ATTRIBUTES_RESPONSE)] == \
            [f"{ATTRIBUTES_RESPONSE}1", f"{ATTRIBUTES_RESPONSE}2"]
    assert first == {"shared": {"setpoint": 21, "mode": "eco"}}
    assert second == {"client": {"firmware": "1.2.0"}, "shared": {"mode": "eco"}}
    assert asked == asked_before + 1
    assert len(rig.edge_events(Action.ATTRIBUTES_REQUEST)) == asked


# -- device data up to the cloud -------------------------------------------------------------------


def test_telemetry_and_attributes_over_mqtt_reach_the_cloud_once_in_order(rig: Rig) -> None:
    devs = rig.devices(2, "meter")
    count = 300
    with connected(rig, devs[0]) as a, connected(rig, devs[1]) as b:
        mids: dict[str, list[int]] = {devs[0].id: [], devs[1].id: []}
        for v in range(count):  # the two devices interleaved
            for dev, client in ((devs[0], a), (devs[1], b)):
                body = {"v": v, "dev": f"d-{dev.id[:8]}"}  # text, never cast to a number
                mids[dev.id].append(client.publish(TELEMETRY, body).mid)
        mids[devs[0].id].append(a.publish(ATTRIBUTES, {"firmware": "1.2.0", "serial": 7}).mid)
        mids[devs[0].id].append(a.publish(
            TELEMETRY, [{"ts": 1_700_000_000_000 + i, "values": {"v": count + i}}
                        for i in range(3)]).mid)
        wait_acked(a, *mids[devs[0].id])
        wait_acked(b, *mids[devs[1].id])
        assert a.acked_ids() == mids[devs[0].id]  # PUBACKs in publishing order
        assert b.acked_ids() == mids[devs[1].id]
    total = int(wait_drained(rig.agent, timeout=DEADLINE_S)["queue"]["total"])
    rig.cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    events = rig.cloud.events(RK)
    assert len(events) == total
    check_delivered(events, rig.agent.read_log())  # each event once, per device in order

    series = [[body["values"] for body in device_values(events, dev, "TIMESERIES_UPDATED")]
              for dev in devs]
    assert series[0] == [{"v": v, "dev": f"d-{devs[0].id[:8]}"} for v in range(count)] + \
        [{"v": count + i} for i in range(3)]
    assert series[1] == [{"v": v, "dev": f"d-{devs[1].id[:8]}"} for v in range(count)]
    stamped = device_values(events, devs[0], "TIMESERIES_UPDATED")[-3:]
    assert [body["ts"] for body in stamped] == [1_700_000_000_000 + i for i in range(3)]
    attributes = device_values(events, devs[0], "ATTRIBUTES_UPDATED")
    assert attributes == [{"scope": "CLIENT_SCOPE", "kv": {"firmware": "1.2.0", "serial": 7}}]
    assert device_values(events, devs[1], "ATTRIBUTES_UPDATED") == []
