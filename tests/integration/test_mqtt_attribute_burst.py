"""Bursts of what the edge sends a subscribed MQTT device, in one process: a whole EdgeApp
linked to the scripted gRPC peer, devices and a gateway on real MQTT clients (paho-mqtt).

A subscription is registered with the device's session once, before its SUBACK, and stays
(mqtt/subscriptions.py, devices/standing.py): shared attribute downlinks applied back to back
reach the device whole, in order, each once, at QoS 0 and 1, for a device's own subscription
and for a gateway's sub-device, also right after the SUBACK; a burst of RPC requests too. The
subscription outlives a restart of the device's shard (registered again) and keeps the
device's entity from being passivated while it is idle.

Before the standing subscription, each subscription was a loop of one-shot waits, and an
update applied between one wait's answer and the next wait's registration was dropped: of 20
updates back to back a device got 5 to 9.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.actors.shard import shard_of
from edge_sync.app import EdgeApp
from edge_sync.devices.rpc import RpcStatus
from edge_sync.mqtt.subscriptions import DRAIN_S
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.records import Device
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.mqtt_app import no_connections, round_trip
from tests.helpers.mqtt_device import ATTRIBUTES, TELEMETRY, MqttDevice
from tests.helpers.mqtt_gateway import ATTRIBUTES as GATEWAY_ATTRIBUTES
from tests.helpers.mqtt_gateway import CONNECT, Logs, MqttGateway, held_commits
from tests.helpers.mqtt_gateway import RPC as GATEWAY_RPC
from tests.helpers.mqtt_gateway import TELEMETRY as GATEWAY_TELEMETRY
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import (
    Harness,
    make_device,
    rpc_downlink,
    rpcs,
    shared_downlink,
)

DEADLINE_S = 10.0
BURST = 20
SHARDS = 2
MQTT_ON = {"EDGE_MQTT_ENABLED": "true", "EDGE_MQTT_HOST": "127.0.0.1", "EDGE_MQTT_PORT": "0",
           "EDGE_ACTORS_SHARDS": str(SHARDS)}
RPC_REQUESTS = "v1/devices/me/rpc/request/+"
RPC_PREFIX = "v1/devices/me/rpc/request/"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def linked(harness: Harness) -> tuple[FakeCloud, EdgeApp]:
    return harness.connected_edge(**MQTT_ON)


# -- helpers -------------------------------------------------------------------------------------


def burst(fake: FakeCloud, device: Device, keys: list[str]) -> None:
    """One shared-attribute downlink per key (its value the key's number), sent back to back
    without waiting for any acknowledgement; returns once the edge acknowledged all of them
    (each applied and told to the device's entity)."""
    messages = [shared_downlink(fake, device, {key: int(key.lstrip("kp"))}) for key in keys]
    for message in messages:
        fake.send_downlink(message)
    fake.wait_for(lambda: all(fake.acks_for(m.downlinkMsgId) for m in messages),
                  what=f"the {len(messages)} attribute downlinks acknowledged")
    assert all(a.success for m in messages for a in fake.acks_for(m.downlinkMsgId))


def flattened(updates: list[Any]) -> list[tuple[str, Any]]:
    """The keys and values of every update, in the order they were published."""
    return [item for update in updates for item in update.items()]


def expected(keys: list[str]) -> list[tuple[str, Any]]:
    return [(key, int(key.lstrip("kp"))) for key in keys]


def keys(prefix: str, n: int = BURST) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def updates_of(client: MqttDevice) -> list[Any]:
    return [json.loads(m.payload) for m in client.received_on(ATTRIBUTES)]


def barrier(client: MqttDevice) -> None:
    """A QoS 1 telemetry publish acknowledged: its command reached the device's entity after
    everything the connection told it before (the subscription's registration among them)."""
    info = client.publish(TELEMETRY, {"barrier": 1})
    wait_until(lambda: info.mid in client.acked_ids(), timeout=DEADLINE_S,
               what="PUBACK of the barrier")


def whole(client: MqttDevice, want: list[str], *, request_id: int) -> None:
    """Every key of ``want`` published, in order, each once (and nothing after them)."""
    wait_until(lambda: len(flattened(updates_of(client))) >= len(want), timeout=DEADLINE_S,
               what=f"{len(want)} keys published",
               show=lambda: [k for k, _ in flattened(updates_of(client))])
    round_trip(client, request_id)
    assert flattened(updates_of(client)) == expected(want)


# -- a device's own subscription -------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
def test_back_to_back_shared_attribute_updates_reach_the_device_whole_in_order_once(
        linked: tuple[FakeCloud, EdgeApp], qos: int) -> None:
    fake, app = linked
    dev = make_device(app, f"burst-{qos}")
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe(ATTRIBUTES, qos=qos) == [qos]
        barrier(client)
        want = keys("k")
        burst(fake, dev, want)
        whole(client, want, request_id=1)
        assert {m.qos for m in client.received_on(ATTRIBUTES)} == {qos}
        # and again: the subscription keeps serving
        again = keys("p", 5)
        burst(fake, dev, again)
        whole(client, want + again, request_id=2)
        assert not client.disconnected.is_set()
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_updates_applied_right_after_the_suback_are_not_missed(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    """No barrier: the subscription is registered before its SUBACK is written, so an update
    the cloud sends once the client has its SUBACK is handed to it."""
    fake, app = linked
    dev = make_device(app, "right-after")
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe(ATTRIBUTES) == [0]
        want = keys("k")
        burst(fake, dev, want)
        whole(client, want, request_id=1)
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_burst_of_rpc_requests_is_published_whole_in_order_once(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked
    dev = make_device(app, "rpc-burst")
    queued = [rpc_downlink(fake, dev, n, "before", {"n": n}) for n in range(1, 6)]
    for message in queued:  # queued while nobody subscribes: published on subscription
        fake.send_downlink(message)
    fake.wait_for(lambda: all(fake.acks_for(m.downlinkMsgId) for m in queued),
                  what="the queued requests acknowledged")
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_REQUESTS, qos=1) == [1]
        messages = [rpc_downlink(fake, dev, n, "during", {"n": n}) for n in range(6, 6 + BURST)]
        for message in messages:
            fake.send_downlink(message)

        def published() -> list[int]:
            return [int(m.topic[len(RPC_PREFIX):]) for m in client.received
                    if m.topic.startswith(RPC_PREFIX)]

        wait_until(lambda: len(published()) >= 5 + BURST, timeout=DEADLINE_S,
                   what="every request published", show=published)
        round_trip(client, 1)
        assert published() == list(range(1, 6 + BURST))
        # DELIVERED by their PUBACKs (QoS 1), which the client has sent or is sending
        wait_until(lambda: [r.status for r in rpcs(app, dev)] == [RpcStatus.DELIVERED] * (
            5 + BURST), timeout=DEADLINE_S, what="every request DELIVERED by its PUBACK")
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def results_taken(app: EdgeApp, n: int) -> None:
    """Wait until the devices' sessions have taken ``n`` results for the open connections'
    subscriptions (not handed over yet: their delivery's record waits for the held commits).
    The SUBACK comes before the session takes anything: closing on it alone raced."""
    server = app.mqtt_server
    assert server is not None, "the MQTT server is not running"
    wait_until(lambda: server.results_pending == n, timeout=DEADLINE_S,
               what=f"{n} results taken for the subscriptions",
               show=lambda: server.results_pending)


def test_a_qos1_request_is_sent_without_a_commit_and_sent_again_to_the_kept_session(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    """At QoS 1 nothing is recorded when a request is sent (DELIVERED comes with its PUBACK):
    it reaches the client while the store's commits are held. The client leaves without a
    PUBACK; its kept session sends it again on reconnect (DUP), and that PUBACK delivers it.
    (It used to be recorded DELIVERED first: the client got nothing until the commit, and a
    loop of one-shot waits dropped it: DELIVERED, never published, then TIMEOUT.)"""
    fake, app = linked
    dev = make_device(app, "closing")
    fake.send_downlink(rpc_downlink(fake, dev, 11, "reboot"))  # QUEUED: nobody subscribes
    wait_until(lambda: [r.status for r in rpcs(app, dev)] == [RpcStatus.QUEUED],
               timeout=DEADLINE_S, what="the request queued")
    with held_commits(app.store):  # no commit is needed to send it
        first = MqttDevice(app.mqtt_port, dev.token, client_id="closing", clean_session=False,
                           manual_ack=True)
        try:
            assert first.connect() == 0
            assert first.subscribe(RPC_REQUESTS, qos=1) == [1]
            assert first.wait_message(f"{RPC_PREFIX}11") == {"method": "reboot", "params": None}
        finally:
            first.close()
        no_connections(app)
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.QUEUED]  # no PUBACK came
    with MqttDevice(app.mqtt_port, dev.token, client_id="closing", clean_session=False) as again:
        assert again.connect() == 0
        assert again.session_present is True
        assert again.wait_message(f"{RPC_PREFIX}11") == {"method": "reboot", "params": None}
        (message,) = again.received_on(f"{RPC_PREFIX}11")
        assert (message.qos, message.dup) == (1, True)
        wait_until(lambda: [r.status for r in rpcs(app, dev)] == [RpcStatus.DELIVERED],
                   timeout=DEADLINE_S, what="the request DELIVERED by the resend's PUBACK")
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_a_closing_gateway_waits_for_its_own_and_its_sub_devices_requests_together(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    """A gateway subscribed for itself (at QoS 0: its requests are recorded DELIVERED before
    they are handed over; at QoS 1 they are sent at once, DELIVERED on their PUBACK) and for
    two sub-devices, each with an RPC request taken as the connection closes (its delivery's
    commit held): the three waits run together under
    one deadline (subscriptions.DRAIN_S, 5 s), not one after another (15 s); the connection
    has ended within the newer connection's takeover timeout."""
    fake, app = linked
    gateway_device, created = app.service.create_device("gw-closing", token="gw-closing",
                                                        gateway=True)
    created.result(DEADLINE_S)
    devices = [gateway_device, make_device(app, "closing-a"), make_device(app, "closing-b")]
    for n, device in enumerate(devices, start=31):
        fake.send_downlink(rpc_downlink(fake, device, n, "reboot"))  # queued: nobody subscribes
    wait_until(lambda: all([r.status for r in rpcs(app, d)] == [RpcStatus.QUEUED]
                           for d in devices), timeout=DEADLINE_S, what="the requests queued")
    logs = Logs()
    try:
        with held_commits(app.store):  # the deliveries' commits wait
            gateway = MqttGateway(app.mqtt_port, "gw-closing")
            assert gateway.connect() == 0
            assert gateway.subscribe(RPC_REQUESTS) == [0]  # its own request is taken
            assert gateway.subscribe(GATEWAY_RPC, qos=1) == [1]
            for device in devices[1:]:  # each sub-device's request is taken as it connects
                gateway.send(CONNECT, {"device": device.name})
            results_taken(app, len(devices))
            gateway.close()
            closing = time.monotonic()
            for device in devices:
                logs.wait_for("subscriptions of a closing connection", device=str(device.id))
            logs.wait_for("disconnected from MQTT", device=str(gateway_device.id),
                          timeout=DRAIN_S + 3.0)
            took = time.monotonic() - closing
        # the deliveries commit now: each request comes to a connection that is gone
        wait_until(lambda: len(logs.matching("taken for a connection that has closed")) == 3,
                   timeout=DEADLINE_S, what="the three late requests logged")
    finally:
        logs.close()
    assert DRAIN_S - 0.5 <= took < DRAIN_S + 3.0, took
    late = logs.matching("did not come within")
    assert sorted(r["extra"]["device"] for r in late) == sorted(str(d.id) for d in devices)
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


# -- a gateway's sub-device ------------------------------------------------------------------------


def test_back_to_back_updates_reach_a_gateways_sub_device_whole_in_order_once(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked
    app.service.create_device("gateway-1", token="gw-burst", gateway=True)[1].result(DEADLINE_S)
    with MqttGateway(app.mqtt_port, "gw-burst") as gateway:
        assert gateway.connect() == 0
        assert gateway.subscribe(GATEWAY_ATTRIBUTES) == [0]
        gateway.send(CONNECT, {"device": "Valve"})
        gateway.send(GATEWAY_TELEMETRY, {"Valve": [{"barrier": 1}]})  # see barrier()
        with app.store.read() as txn:
            valve = EntityStore(app.store).device_by_name(txn, "Valve")
        assert valve is not None
        want = keys("k")
        burst(fake, valve, want)

        def data() -> list[Any]:
            return [b["data"] for b in gateway.bodies(GATEWAY_ATTRIBUTES)
                    if b["device"] == "Valve"]

        wait_until(lambda: len(flattened(data())) >= BURST, timeout=DEADLINE_S,
                   what="every key relayed to the gateway",
                   show=lambda: [k for k, _ in flattened(data())])
        round_trip(gateway, 1)
        assert flattened(data()) == expected(want)
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


# -- the device's entity: restarted, idle ----------------------------------------------------------


def test_subscriptions_are_registered_again_after_the_shard_restarts(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked
    dev = make_device(app, "shard-crash")
    shard = f"shard-{shard_of(dev.id, SHARDS)}"
    with MqttDevice(app.mqtt_port, dev.token) as client:
        assert client.connect() == 0
        assert client.subscribe(ATTRIBUTES) == [0]
        assert client.subscribe(RPC_REQUESTS) == [0]
        barrier(client)
        assert app._crash(shard)
        wait_until(lambda: app.readiness()[shard], timeout=DEADLINE_S, what="the shard restarted")
        # an RPC request waits in the session: published once the subscription is back
        fake.send_downlink(rpc_downlink(fake, dev, 5, "after-crash"))
        assert client.wait_message(f"{RPC_PREFIX}5") == {"method": "after-crash",
                                                         "params": None}
        # shared attribute updates are not kept: probe until one is published, then a burst
        # must arrive whole
        probes: list[str] = []

        def served() -> bool:
            probes.append(f"p{len(probes)}")
            burst(fake, dev, probes[-1:])
            return any(updates_of(client))

        wait_until(served, timeout=DEADLINE_S, what="a probe update published")
        # the last probe went after one was published, so it is published too; until it is,
        # it (or one before it) is still on its way and would count as part of the burst
        wait_until(lambda: flattened(updates_of(client))[-1][0] == probes[-1],
                   timeout=DEADLINE_S, what=f"the last probe ({probes[-1]}) published")
        seen = len(flattened(updates_of(client)))
        want = keys("k")
        burst(fake, dev, want)
        wait_until(lambda: len(flattened(updates_of(client))) >= seen + BURST,
                   timeout=DEADLINE_S, what="the burst after the restart")
        round_trip(client, 1)
        assert flattened(updates_of(client))[seen:] == expected(want)
        assert not client.disconnected.is_set()
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_an_idle_subscribed_device_is_not_passivated(harness: Harness) -> None:
    """Its entity holds the subscription: passivated, it would forget it and the device would
    get nothing more while its connection stays open."""
    after_s = 0.5
    logs = Logs()
    try:
        fake, app = harness.connected_edge(**{**MQTT_ON, "EDGE_ACTORS_SHARDS": "1",
                                              "EDGE_ACTORS_PASSIVATE_AFTER_S": str(after_s)})
        dev = make_device(app, "idle-subscriber")
        with MqttDevice(app.mqtt_port, dev.token) as client:
            assert client.connect() == 0
            assert client.subscribe(ATTRIBUTES) == [0]
            barrier(client)  # the subscribed entity's last use is before this returns
            other = make_device(app, "idle-other")
            app.service.post_telemetry(other.token, {"t": 1}).result(DEADLINE_S)
            used = time.time()

            def passivated_since() -> list[Any]:  # a pass that found "idle-other" idle
                return [r for r in logs.matching("entities passivated")
                        if r["time"].timestamp() > used + after_s]

            wait_until(passivated_since, timeout=DEADLINE_S, what="a passivation pass")
            want = keys("k", 3)
            burst(fake, dev, want)
            whole(client, want, request_id=1)
    finally:
        logs.close()
    no_connections(app)  # nothing of the test still runs (or logs) once it returns

