"""The device MQTT API's subscriptions, in one process: a whole EdgeApp linked to the scripted
gRPC peer, a device on a real MQTT client (paho-mqtt). They go through the device sessions
that the HTTP long polls use: a server-side RPC request published on
v1/devices/me/rpc/request/{id} and its answer on v1/devices/me/rpc/response/{id} uplinked;
shared attribute updates on v1/devices/me/attributes; attribute requests answered on
v1/devices/me/attributes/response/{id}; a topic the edge does not serve refused in SUBACK.

Kept sessions (clean session 0, same client id): the reconnecting client finds session present
1, its subscriptions serving without a new SUBSCRIBE, and the RPC requests queued meanwhile
published to it; a QoS 1 request it never acknowledged is published again (DUP) on reconnect;
a clean-session connect discards the kept session.

A QoS 1 request is in flight, QUEUED, until the PUBACK of the packet that carried it, then
DELIVERED (ThingsBoard's MqttTransportHandler: rpcAwaitingAck, RpcStatus.DELIVERED on the
PUBACK); one never acknowledged goes back to the device's queue when its session ends, for the
next subscriber (DeviceActorMessageProcessor.sendPendingRequests); an answer before the PUBACK
is taken. At QoS 0 a request is DELIVERED when handed to the connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_sync.actors.shard import shard_of
from edge_sync.app import EdgeApp
from edge_sync.devices.rpc import RpcStatus
from edge_sync.storage.records import Device
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.mqtt_app import MQTT_ON, no_connections, round_trip
from tests.helpers.mqtt_device import ATTRIBUTES, MqttDevice
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import (
    Harness,
    deliver,
    dropped,
    make_device,
    rpc_downlink,
    rpc_uplinks,
    rpcs,
    shared_downlink,
)

DEADLINE_S = 10.0


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
    return fake, app, make_device(app, "mqtt-session")


def test_rpc_request_published_and_its_answer_uplinked(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe("v1/devices/me/rpc/request/+") == [0]
        msg = rpc_downlink(fake, dev, 7, "setGpio", {"pin": 1})
        deliver(fake, msg)
        assert client.wait_message("v1/devices/me/rpc/request/7") == {
            "method": "setGpio", "params": {"pin": 1}}
        answer = client.publish("v1/devices/me/rpc/response/7", {"pin": 1, "value": True})
        wait_until(lambda: answer.mid in client.acked_ids(), timeout=DEADLINE_S,
                   what="PUBACK of the answer")
        up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
        assert (up.requestId, json.loads(up.responseMsg.response)) == (
            7, {"pin": 1, "value": True})
        assert [r.status for r in rpcs(app, dev)] == [RpcStatus.SUCCESSFUL]
        # a second answer is acknowledged (a resend cannot help), changes nothing and is
        # counted as dropped, as the HTTP API's (counted before the PUBACK goes out)
        dropped_before = dropped(app)
        again = client.publish("v1/devices/me/rpc/response/7", {"again": 1})
        wait_until(lambda: again.mid in client.acked_ids(), timeout=DEADLINE_S,
                   what="PUBACK of the second answer")
        assert not client.disconnected.is_set()
        assert dropped(app) == dropped_before + 1
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, {"pin": 1, "value": True})]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
def test_shared_attribute_updates_and_attribute_requests(
        linked: tuple[FakeCloud, EdgeApp, Device], protocol: int) -> None:
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token, protocol=protocol) as client:
        assert client.connect() == 0
        assert client.subscribe(ATTRIBUTES) == [0]
        assert client.subscribe("v1/devices/me/attributes/response/+") == [0]
        deliver(fake, shared_downlink(fake, dev, {"setpoint": 21}))
        assert client.wait_message(ATTRIBUTES) == {"setpoint": 21}
        posted = client.publish(ATTRIBUTES, {"firmware": "1.2.0"})
        wait_until(lambda: posted.mid in client.acked_ids(), timeout=DEADLINE_S,
                   what="PUBACK of the client attributes")
        client.publish("v1/devices/me/attributes/request/1",
                       {"clientKeys": "firmware", "sharedKeys": "setpoint"})
        assert client.wait_message("v1/devices/me/attributes/response/1") == {
            "client": {"firmware": "1.2.0"}, "shared": {"setpoint": 21}}
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_topic_the_edge_does_not_serve_is_refused_in_suback(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    _, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe("v1/devices/me/nothing/#") == [0x80]
        assert not client.disconnected.is_set()
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


# -- kept sessions -------------------------------------------------------------------------------

RPC_REQUESTS = "v1/devices/me/rpc/request/+"


def test_a_kept_session_gets_its_subscriptions_and_the_requests_queued_meanwhile(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token, client_id="keeper", clean_session=False) as first:
        assert first.connect() == 0
        assert first.session_present is False
        assert first.subscribe(RPC_REQUESTS, qos=1) == [1]
    deliver(fake, rpc_downlink(fake, dev, 21, "reboot", {"delay": 1}))  # nobody connected
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.QUEUED]
    with MqttDevice(app.mqtt_port, dev.token, client_id="keeper", clean_session=False) as again:
        assert again.connect() == 0
        assert again.session_present is True  # no SUBSCRIBE this time
        assert again.wait_message("v1/devices/me/rpc/request/21") == {
            "method": "reboot", "params": {"delay": 1}}
        (message,) = again.received_on("v1/devices/me/rpc/request/21")
        assert (message.qos, message.dup) == (1, False)
        answer = again.publish("v1/devices/me/rpc/response/21", {"ok": True})
        wait_until(lambda: answer.mid in again.acked_ids(), timeout=DEADLINE_S, what="PUBACK")
        up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
        assert (up.requestId, json.loads(up.responseMsg.response)) == (21, {"ok": True})
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.SUCCESSFUL]
    wait_until(lambda: app.metrics.snapshot()["edge_sync_mqtt_sessions_kept"] == 1,
               timeout=DEADLINE_S, what="the session kept again after the disconnect")
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_an_unacknowledged_qos1_request_is_published_again_on_reconnect(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token, client_id="forgetful", clean_session=False,
                    manual_ack=True) as first:
        assert first.connect() == 0
        assert first.subscribe(RPC_REQUESTS, qos=1) == [1]
        deliver(fake, rpc_downlink(fake, dev, 31, "ping"))
        assert first.wait_message("v1/devices/me/rpc/request/31") == {"method": "ping",
                                                                      "params": None}
        # no PUBACK: the client goes away with the message unacknowledged
    no_connections(app)
    # in flight in the kept session: not DELIVERED before its PUBACK, not given back either
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.QUEUED]
    with MqttDevice(app.mqtt_port, dev.token, client_id="forgetful",
                    clean_session=False) as again:
        assert again.connect() == 0
        assert again.session_present is True
        again.wait_message("v1/devices/me/rpc/request/31")
        (message,) = again.received_on("v1/devices/me/rpc/request/31")
        assert (message.qos, message.dup) == (1, True)
        round_trip(again, 1)  # paho has acknowledged it by now
        wait_until(lambda: [r.status for r in rpcs(app, dev)] == [RpcStatus.DELIVERED],
                   timeout=DEADLINE_S, what="the request DELIVERED by the resend's PUBACK")
    with MqttDevice(app.mqtt_port, dev.token, client_id="forgetful",
                    clean_session=False) as third:
        assert third.connect() == 0
        round_trip(third, 2)
        assert third.received_on("v1/devices/me/rpc/request/31") == []  # acknowledged: gone
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_clean_session_discards_the_kept_one(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token, client_id="fresh", clean_session=False) as first:
        assert first.connect() == 0
        assert first.subscribe(RPC_REQUESTS, qos=1) == [1]
    with MqttDevice(app.mqtt_port, dev.token, client_id="fresh", clean_session=True) as clean:
        assert clean.connect() == 0
        assert clean.session_present is False
    with MqttDevice(app.mqtt_port, dev.token, client_id="fresh", clean_session=False) as last:
        assert last.connect() == 0
        assert last.session_present is False  # nothing was kept
        deliver(fake, rpc_downlink(fake, dev, 41, "ping"))
        round_trip(last, 1)
        assert last.received_on("v1/devices/me/rpc/request/41") == []  # no subscription
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.QUEUED]
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_qos1_messages_dropped_unacknowledged_are_logged_once_and_counted(
        harness: Harness) -> None:
    """mqtt.max_unacked_per_session 2, three QoS 1 requests never acknowledged: every message
    kept carries a request, so the third is dropped, never written (one WARNING, counted in
    edge_sync_mqtt_unacked_dropped_total and in the disconnect line), and stays in flight
    (EXPIRED at its expirationTime); the two kept, which the client holds, are sent again on
    reconnect."""
    fake, app = harness.connected_edge(**MQTT_ON, EDGE_MQTT_MAX_UNACKED_PER_SESSION="2")
    dev = make_device(app, "mqtt-unacked")
    server = app.mqtt_server
    assert server is not None
    logs = Logs()
    try:
        with MqttDevice(app.mqtt_port, dev.token, client_id="deaf", clean_session=False,
                        manual_ack=True) as client:
            assert client.connect() == 0
            assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
            for n in (51, 52):
                deliver(fake, rpc_downlink(fake, dev, n, "ping"))
                client.wait_message(f"v1/devices/me/rpc/request/{n}")
            deliver(fake, rpc_downlink(fake, dev, 53, "ping"))
            wait_until(lambda: app.metrics.value("edge_sync_mqtt_unacked_dropped_total") == 1,
                       timeout=DEADLINE_S, what="request 53 dropped")
            round_trip(client, 1)
            assert client.received_on("v1/devices/me/rpc/request/53") == []
        no_connections(app)
        with MqttDevice(app.mqtt_port, dev.token, client_id="deaf",
                        clean_session=False) as again:
            assert again.connect() == 0 and again.session_present is True
            round_trip(again, 2)
            assert [m.topic[-2:] for m in again.received if "rpc/request" in m.topic] == [
                "51", "52"]
        no_connections(app)
    finally:
        logs.close()
    assert app.metrics.value("edge_sync_mqtt_unacked_dropped_total") == 1
    (warning,) = logs.matching("dropped unacknowledged")
    assert warning["level"].name == "WARNING"
    first, _ = logs.matching("disconnected from MQTT", device=str(dev.id))
    assert first["extra"]["dropped_unacked"] == 1


# -- QoS 1 requests: DELIVERED on the PUBACK ----------------------------------------------------


def puback(client: MqttDevice, request_id: int) -> None:
    """The PUBACK a ``manual_ack`` client held back for request ``request_id``."""
    (message,) = client.received_on(f"v1/devices/me/rpc/request/{request_id}")
    client.client.ack(message.mid, message.qos)


def statuses(app: EdgeApp, dev: Device) -> list[RpcStatus]:
    return [r.status for r in rpcs(app, dev)]


def test_a_qos1_request_is_delivered_by_its_puback_not_by_its_publish(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Written and not acknowledged, the request stays QUEUED (it used to be DELIVERED when
    handed to the connection); the client's PUBACK makes it DELIVERED."""
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token, manual_ack=True) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        deliver(fake, rpc_downlink(fake, dev, 61, "ping"))
        assert client.wait_message("v1/devices/me/rpc/request/61") == {"method": "ping",
                                                                      "params": None}
        assert statuses(app, dev) == [RpcStatus.QUEUED]
        round_trip(client, 1)
        assert statuses(app, dev) == [RpcStatus.QUEUED]
        puback(client, 61)
        wait_until(lambda: statuses(app, dev) == [RpcStatus.DELIVERED], timeout=DEADLINE_S,
                   what="the request DELIVERED on its PUBACK", show=lambda: statuses(app, dev))
    no_connections(app)


def test_a_qos1_request_never_acknowledged_goes_to_the_next_subscriber_when_its_session_ends(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """A clean session ends with the request written and its PUBACK not come: the request
    goes back to the device's queue (one INFO line), a new connection subscribing gets it, and
    its answer makes it SUCCESSFUL. (It used to stay DELIVERED, never sent again, and end
    TIMEOUT.)"""
    fake, app, dev = linked
    logs = Logs()
    try:
        with MqttDevice(app.mqtt_port, dev.token, client_id="deaf", manual_ack=True) as first:
            assert first.connect() == 0
            assert first.subscribe(RPC_REQUESTS, qos=1) == [1]
            deliver(fake, rpc_downlink(fake, dev, 62, "reboot", {"delay": 1}))
            assert first.wait_message("v1/devices/me/rpc/request/62") == {
                "method": "reboot", "params": {"delay": 1}}
            assert statuses(app, dev) == [RpcStatus.QUEUED]
        no_connections(app)
        line = logs.wait_for("back in the queue", device=str(dev.id))
        assert (line["level"].name, line["message"]) == (
            "INFO", "1 RPC request sent and not acknowledged back in the queue: its MQTT "
            "session ended with its connection (clean session)")
        # the one line of the event: the request was sent in flight (DEBUG) before
        (sent,) = logs.matching("RPC 62 sent to the device", device=str(dev.id))
        assert sent["level"].name == "DEBUG"
        assert (line["extra"]["count"], line["extra"]["rpc_ids"], line["extra"]["reason"]) == (
            1, [62], "its MQTT session ended with its connection (clean session)")
    finally:
        logs.close()
    assert statuses(app, dev) == [RpcStatus.QUEUED]
    with MqttDevice(app.mqtt_port, dev.token, client_id="awake") as second:
        assert second.connect() == 0
        assert second.subscribe(RPC_REQUESTS, qos=1) == [1]
        assert second.wait_message("v1/devices/me/rpc/request/62") == {
            "method": "reboot", "params": {"delay": 1}}
        (message,) = second.received_on("v1/devices/me/rpc/request/62")
        assert (message.qos, message.dup) == (1, False)
        answer = second.publish("v1/devices/me/rpc/response/62", {"rebooting": True})
        wait_until(lambda: answer.mid in second.acked_ids(), timeout=DEADLINE_S,
                   what="PUBACK of the answer")
        up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
        assert (up.requestId, json.loads(up.responseMsg.response)) == (62, {"rebooting": True})
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, {"rebooting": True})]
    no_connections(app)


def test_an_answer_before_the_puback_is_taken_and_the_late_puback_changes_nothing(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """Clients answer before they acknowledge: the answer implies the delivery."""
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token, manual_ack=True) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        deliver(fake, rpc_downlink(fake, dev, 63, "read"))
        client.wait_message("v1/devices/me/rpc/request/63")
        assert statuses(app, dev) == [RpcStatus.QUEUED]  # in flight: no PUBACK yet
        dropped_before = dropped(app)
        answer = client.publish("v1/devices/me/rpc/response/63", {"value": 5})
        wait_until(lambda: answer.mid in client.acked_ids(), timeout=DEADLINE_S,
                   what="PUBACK of the answer")
        up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
        assert (up.requestId, json.loads(up.responseMsg.response)) == (63, {"value": 5})
        assert statuses(app, dev) == [RpcStatus.SUCCESSFUL]
        puback(client, 63)
        round_trip(client, 1)
        assert not client.disconnected.is_set()
    no_connections(app)
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, {"value": 5})]
    assert dropped(app) == dropped_before


def test_a_qos0_request_is_delivered_when_handed_to_the_connection(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """QoS 0 has no PUBACK: DELIVERED is recorded before the request is published, as before
    (ThingsBoard reports it DELIVERED once written)."""
    fake, app, dev = linked
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=0) == [0]
        deliver(fake, rpc_downlink(fake, dev, 64, "ping"))
        client.wait_message("v1/devices/me/rpc/request/64")
        (message,) = client.received_on("v1/devices/me/rpc/request/64")
        assert message.qos == 0
        assert statuses(app, dev) == [RpcStatus.DELIVERED]
    no_connections(app)


def test_after_a_shard_restart_the_request_in_flight_is_acknowledged_answered_and_not_sent_again(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """The device's shard restarts while a QoS 1 request is written and not acknowledged: the
    shard finds it QUEUED on disk (nothing is recorded before the PUBACK). The subscription
    registers again with what its session still holds, so the request is not sent a second
    time on the same connection (the next request comes alone), the device's PUBACK of the
    first sending delivers it, and its answer is taken (DeviceActorMessageProcessor
    .processRpcResponses takes any pending request's). It used to be sent again, its PUBACK
    ignored and its answer refused as "not delivered yet"."""
    fake, app, dev = linked
    shard = f"shard-{shard_of(dev.id, 2)}"
    logs = Logs()
    with MqttDevice(app.mqtt_port, dev.token, manual_ack=True) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        deliver(fake, rpc_downlink(fake, dev, 71, "open", {"valve": 1}))
        client.wait_message("v1/devices/me/rpc/request/71")
        assert statuses(app, dev) == [RpcStatus.QUEUED]
        try:
            assert app._crash(shard)
            logs.wait_for("subscription dropped by the device's session", device=str(dev.id))
        finally:
            logs.close()
        wait_until(lambda: app.readiness()[shard], timeout=DEADLINE_S, what="the shard back")
        deliver(fake, rpc_downlink(fake, dev, 72, "close", {"valve": 2}))
        # 72 comes once the subscription is registered again: 71, older, would come before it
        assert client.wait_message("v1/devices/me/rpc/request/72") == {
            "method": "close", "params": {"valve": 2}}
        assert len(client.received_on("v1/devices/me/rpc/request/71")) == 1
        puback(client, 71)
        wait_until(lambda: statuses(app, dev) == [RpcStatus.DELIVERED, RpcStatus.QUEUED],
                   timeout=DEADLINE_S, what="71 DELIVERED by the PUBACK of its first sending",
                   show=lambda: statuses(app, dev))
        for request_id in (71, 72):  # 72 answered before its PUBACK
            answer = client.publish(f"v1/devices/me/rpc/response/{request_id}",
                                    {"done": request_id})
            wait_until(lambda a=answer: a.mid in client.acked_ids(), timeout=DEADLINE_S,
                       what="PUBACK of the answer")
        ups = fake.wait_for(lambda: len(rpc_uplinks(fake)) == 2 and rpc_uplinks(fake),
                            what="both answers uplinked")
        assert sorted((u.requestId, json.loads(u.responseMsg.response)) for u in ups) == [
            (71, {"done": 71}), (72, {"done": 72})]
        round_trip(client, 1)
        assert len(client.received_on("v1/devices/me/rpc/request/71")) == 1
        assert len(client.received_on("v1/devices/me/rpc/request/72")) == 1
    assert [(r.request_id, r.status) for r in rpcs(app, dev)] == [
        (71, RpcStatus.SUCCESSFUL), (72, RpcStatus.SUCCESSFUL)]
    no_connections(app)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
def test_beyond_the_unacked_limit_an_rpc_request_is_kept_and_its_puback_delivers_it(
        harness: Harness, protocol: int) -> None:
    """mqtt.max_unacked_per_session 2: a request written and not acknowledged, then three
    shared attribute updates at QoS 1. The attribute updates are dropped to make room, not
    the request, so its late PUBACK still makes it DELIVERED. The request's message used to
    be dropped as the oldest: its PUBACK was ignored and it stayed in flight until it was
    reported EXPIRED."""
    fake, app = harness.connected_edge(**MQTT_ON, EDGE_MQTT_MAX_UNACKED_PER_SESSION="2")
    dev = make_device(app, "mqtt-unacked-rpc")
    with MqttDevice(app.mqtt_port, dev.token, manual_ack=True, protocol=protocol) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        assert client.subscribe(ATTRIBUTES, qos=1) == [1]
        deliver(fake, rpc_downlink(fake, dev, 81, "ping"))
        client.wait_message("v1/devices/me/rpc/request/81")
        for n in range(3):
            deliver(fake, shared_downlink(fake, dev, {"setpoint": n}))
        wait_until(lambda: app.metrics.value("edge_sync_mqtt_unacked_dropped_total") == 2,
                   timeout=DEADLINE_S, what="two attribute updates dropped",
                   show=lambda: app.metrics.value("edge_sync_mqtt_unacked_dropped_total"))
        assert statuses(app, dev) == [RpcStatus.QUEUED]
        puback(client, 81)
        wait_until(lambda: statuses(app, dev) == [RpcStatus.DELIVERED], timeout=DEADLINE_S,
                   what="the request DELIVERED by its PUBACK", show=lambda: statuses(app, dev))
        assert len(client.received_on("v1/devices/me/rpc/request/81")) == 1
    no_connections(app)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["3.1.1", "5"])
def test_when_every_message_kept_is_a_request_an_attribute_update_is_dropped_not_the_request(
        harness: Harness, protocol: int) -> None:
    """mqtt.max_unacked_per_session 1: a request written and not acknowledged, then a shared
    attribute update at QoS 1. Every message kept carries a request, so the update is dropped
    (counted), never written, and the request's PUBACK still makes it DELIVERED. The update
    used to evict the request: its PUBACK did nothing and it ended EXPIRED though the device
    had it."""
    fake, app = harness.connected_edge(**MQTT_ON, EDGE_MQTT_MAX_UNACKED_PER_SESSION="1")
    dev = make_device(app, "mqtt-unacked-all-rpc")
    with MqttDevice(app.mqtt_port, dev.token, manual_ack=True, protocol=protocol) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        assert client.subscribe(ATTRIBUTES, qos=1) == [1]
        deliver(fake, rpc_downlink(fake, dev, 85, "ping"))
        client.wait_message("v1/devices/me/rpc/request/85")
        deliver(fake, shared_downlink(fake, dev, {"setpoint": 1}))
        wait_until(lambda: app.metrics.value("edge_sync_mqtt_unacked_dropped_total") == 1,
                   timeout=DEADLINE_S, what="the attribute update dropped",
                   show=lambda: app.metrics.value("edge_sync_mqtt_unacked_dropped_total"))
        puback(client, 85)
        wait_until(lambda: statuses(app, dev) == [RpcStatus.DELIVERED], timeout=DEADLINE_S,
                   what="the request DELIVERED by its PUBACK", show=lambda: statuses(app, dev))
        round_trip(client, 1)
        assert client.received_on(ATTRIBUTES) == []
        assert len(client.received_on("v1/devices/me/rpc/request/85")) == 1
    no_connections(app)


def refused_appends(logs: Logs, dev: Device) -> int:
    return len(logs.matching("append refused: storage full", entity=str(dev.id)))


def test_a_puback_whose_record_the_full_store_refuses_is_not_sent_again_and_recorded_later(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """The store is at its size cap (storage.max_size_mb, policy refuse) when the device
    PUBACKs a QoS 1 request: DELIVERED is not recorded. The device has the request, so it
    stays DELIVERED and is not sent again; only its record is tried again, once a second (the
    expiry retry's RECORD_RETRY_MS), one WARNING for the failure and one INFO once the store
    takes it; the device's answer then makes it SUCCESSFUL. It used to go back to QUEUED and
    be sent again at once: thousands of PUBLISHes (and log lines) a second while storage was
    full. ThingsBoard keeps a request delivered whatever its save does
    (DeviceActorMessageProcessor.processRpcResponseStatus)."""
    fake, app, dev = linked
    # the log is read from before the downlink: the shard takes the request (its QUEUED line)
    # after the downlink's commit, on its own thread, so that line may come after deliver()
    logs = Logs()
    store, cap = app.store, app.store.max_size
    try:
        deliver(fake, rpc_downlink(fake, dev, 91, "open", {"valve": 1}))
        assert statuses(app, dev) == [RpcStatus.QUEUED]
        with MqttDevice(app.mqtt_port, dev.token) as client:
            assert client.connect() == 0
            store.max_size = 0  # the cap reached: every new record is refused
            assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
            client.wait_message("v1/devices/me/rpc/request/91")
            # the first record and two tries more: over about two seconds
            wait_until(lambda: refused_appends(logs, dev) >= 3, timeout=DEADLINE_S,
                       what="the DELIVERED record refused three times")
            round_trip(client, 1)
            assert len(client.received_on("v1/devices/me/rpc/request/91")) == 1
            assert statuses(app, dev) == [RpcStatus.QUEUED]  # on disk: nothing recorded yet
            store.max_size = cap  # room again
            logs.wait_for("RPC 91 DELIVERED recorded: the store took it again")
            assert statuses(app, dev) == [RpcStatus.DELIVERED]
            answer = client.publish("v1/devices/me/rpc/response/91", {"open": True})
            wait_until(lambda: answer.mid in client.acked_ids(), timeout=DEADLINE_S,
                       what="PUBACK of the answer")
            up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
            assert (up.requestId, json.loads(up.responseMsg.response)) == (91, {"open": True})
            round_trip(client, 2)
            assert len(client.received_on("v1/devices/me/rpc/request/91")) == 1
        no_connections(app)
    finally:
        store.max_size = cap
        logs.close()
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, {"open": True})]
    lines = [r for r in logs.records if r["extra"].get("rpc_id") == 91
             and r["level"].name != "DEBUG"]
    tries = refused_appends(logs, dev)
    assert [(r["level"].name, r["message"]) for r in lines] == [
        ("INFO", "RPC 91 open (two-way): QUEUED"),
        ("INFO", "RPC 91 DELIVERED"),
        ("WARNING", "RPC 91 DELIVERED not recorded: the device has it, so it stays DELIVERED "
                    "(not sent again) and DELIVERED is recorded again every 1 s until the store "
                    "takes it"),
        ("INFO", "RPC 91 DELIVERED recorded: the store took it again"),
        ("INFO", "RPC 91 SUCCESSFUL"),
    ]
    assert 3 <= tries <= 20  # about one a second, not thousands


def test_an_answer_before_the_puback_whose_record_is_refused_leaves_the_request_delivered(
        linked: tuple[FakeCloud, EdgeApp, Device]) -> None:
    """The device answers a QoS 1 request before its PUBACK while the store is at its cap:
    the answer's commit fails, so its connection closes unacknowledged (the device sends its
    answer again). The device has the request, so it stays DELIVERED (recorded once the store
    takes it) and is not sent again to the device's next connection, whose answer is taken.
    It used to go back to QUEUED and be sent again at once, to every connection, in a loop
    while storage was full."""
    fake, app, dev = linked
    deliver(fake, rpc_downlink(fake, dev, 92, "reboot"))
    store, cap = app.store, app.store.max_size
    logs = Logs()
    try:
        with MqttDevice(app.mqtt_port, dev.token, manual_ack=True) as client:
            assert client.connect() == 0
            store.max_size = 0  # the cap reached: every new record is refused
            assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
            client.wait_message("v1/devices/me/rpc/request/92")
            client.publish("v1/devices/me/rpc/response/92", {"rebooting": True})
            assert client.disconnected.wait(DEADLINE_S)  # the answer not taken: closed
        wait_until(lambda: refused_appends(logs, dev) >= 1, timeout=DEADLINE_S,
                   what="the answer's record refused")
        with MqttDevice(app.mqtt_port, dev.token) as again:
            assert again.connect() == 0
            assert again.subscribe(RPC_REQUESTS, qos=1) == [1]
            wait_until(lambda: refused_appends(logs, dev) >= 3, timeout=DEADLINE_S,
                       what="the DELIVERED record refused twice after the answer's")
            round_trip(again, 1)
            assert again.received_on("v1/devices/me/rpc/request/92") == []
            assert statuses(app, dev) == [RpcStatus.QUEUED]  # on disk: nothing recorded yet
            store.max_size = cap  # room again
            logs.wait_for("RPC 92 DELIVERED recorded: the store took it again")
            assert statuses(app, dev) == [RpcStatus.DELIVERED]
            answer = again.publish("v1/devices/me/rpc/response/92", {"rebooting": True})
            wait_until(lambda: answer.mid in again.acked_ids(), timeout=DEADLINE_S,
                       what="PUBACK of the answer")
            up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
            assert (up.requestId, json.loads(up.responseMsg.response)) == (
                92, {"rebooting": True})
            round_trip(again, 2)
            assert again.received_on("v1/devices/me/rpc/request/92") == []
        no_connections(app)
    finally:
        store.max_size = cap
        logs.close()
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, {"rebooting": True})]
    assert len(logs.matching("RPC 92 SUCCESSFUL not recorded: the device has it, so it stays "
                             "DELIVERED")) == 1  # WARNING once; each try after at DEBUG
    assert 3 <= refused_appends(logs, dev) <= 20  # about one a second, not thousands
