"""Server-side RPC requests of a device subscribed on two MQTT connections go to the newer one,
in one process: a whole EdgeApp linked to the scripted gRPC peer, two real MQTT clients
(paho-mqtt) of one device under different client ids.

That is a device that reconnected under a new client id while its old connection lingers
half-open (the server notices only after 1.5 times its keep-alive). The requests used to
alternate between the two subscriptions, so every other one was published to the old
connection: DELIVERED to a dead socket, then TIMEOUT. ThingsBoard closes a device's older
sessions; the edge keeps both (mqtt.md) and hands each request to the newest subscription
(devices/session.py). Once the newer connection ends, the older one is served again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.app import EdgeApp
from edge_sync.devices.rpc import RpcStatus
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.mqtt_app import MQTT_ON
from tests.helpers.mqtt_device import MqttDevice
from tests.helpers.mqtt_gateway import Logs
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import Harness, make_device, rpc_downlink, rpcs

DEADLINE_S = 10.0
RPC_REQUESTS = "v1/devices/me/rpc/request/+"
RPC_PREFIX = "v1/devices/me/rpc/request/"


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[FakeCloud, EdgeApp]]:
    harness = Harness(tmp_path)
    try:
        yield harness.connected_edge(**MQTT_ON)
    finally:
        harness.close()


def request_ids(client: MqttDevice) -> list[int]:
    return [int(m.topic[len(RPC_PREFIX):]) for m in client.received
            if m.topic.startswith(RPC_PREFIX)]


def round_trip(client: MqttDevice, request_id: int) -> None:
    """An attribute request answered on ``client``: whatever its connection was due to
    publish before has been written (one writer per connection, in order)."""
    client.publish(f"v1/devices/me/attributes/request/{request_id}", {"clientKeys": "none"})
    client.wait_message(f"v1/devices/me/attributes/response/{request_id}")


def test_every_request_goes_to_the_newer_of_two_connections_of_a_device(
        linked: tuple[FakeCloud, EdgeApp]) -> None:
    fake, app = linked
    dev = make_device(app, "reconnected")
    logs = Logs()
    old = MqttDevice(app.mqtt_port, dev.token, client_id="before-reconnect")
    new = MqttDevice(app.mqtt_port, dev.token, client_id="after-reconnect")
    try:
        assert old.connect() == 0
        assert old.subscribe(RPC_REQUESTS, qos=1) == [1]
        assert new.connect() == 0
        assert new.subscribe(RPC_REQUESTS, qos=1) == [1]  # registered after the old one's
        for n in range(1, 7):
            fake.send_downlink(rpc_downlink(fake, dev, n, "setGpio", {"n": n}))
        wait_until(lambda: len(request_ids(new)) >= 6, timeout=DEADLINE_S,
                   what="six requests published to the newer connection",
                   show=lambda: (request_ids(new), request_ids(old)))
        round_trip(old, 1)
        assert request_ids(new) == [1, 2, 3, 4, 5, 6]
        assert request_ids(old) == []
        # DELIVERED by their PUBACKs (QoS 1), which the client has sent or is sending
        wait_until(lambda: [r.status for r in rpcs(app, dev)] == [RpcStatus.DELIVERED] * 6,
                   timeout=DEADLINE_S, what="the six requests DELIVERED by their PUBACKs")

        # the newer connection ends: the older one, still open, gets what comes next
        new.close()
        logs.wait_for("disconnected from MQTT", device=str(dev.id))
        for n in (7, 8):
            fake.send_downlink(rpc_downlink(fake, dev, n, "setGpio", {"n": n}))
        wait_until(lambda: len(request_ids(old)) >= 2, timeout=DEADLINE_S,
                   what="two requests published to the older connection",
                   show=lambda: request_ids(old))
        assert request_ids(old) == [7, 8]
        assert request_ids(new) == [1, 2, 3, 4, 5, 6]
        assert not old.disconnected.is_set()
    finally:
        old.close()
        new.close()
        logs.close()
