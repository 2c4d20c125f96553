"""ThingsBoard's own Python SDK (tb-mqtt-client, TBDeviceMqttClient: MQTT 5 always) against
the edge: it connects with its token, its QoS 1 telemetry is acknowledged and stored, its
attribute request is answered, and a server-side RPC request reaches its handler and its
answer is uplinked to the cloud; its gateway client (TBGatewayMqttClient, as ThingsBoard's IoT
Gateway uses it) connects a device, whose telemetry and attributes are stored.

The SDK ships a fork of paho (tb-paho-mqtt-client) that cannot share a venv with paho-mqtt, so
it runs in its own Python, named by EDGE_TEST_TB_SDK_PYTHON:

    python3 -m venv /tmp/tb-sdk && /tmp/tb-sdk/bin/pip install tb-mqtt-client==1.13.14
    EDGE_TEST_TB_SDK_PYTHON=/tmp/tb-sdk/bin/python scripts/test tests/integration/test_mqtt_tb_sdk.py

Without it the test is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from edge_sync.devices.rpc import RpcStatus
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.records import Action
from tests.helpers.mqtt_app import MQTT_ON, events_of, no_connections
from tests.integration.test_device_sessions import (
    Harness,
    deliver,
    make_device,
    rpc_downlink,
    rpc_uplinks,
    rpcs,
)

SDK_PYTHON = os.environ.get("EDGE_TEST_TB_SDK_PYTHON", "")
HELPERS = Path(__file__).resolve().parent.parent / "helpers"
DEVICE = HELPERS / "tb_sdk_device.py"
GATEWAY = HELPERS / "tb_sdk_gateway.py"

pytestmark = pytest.mark.skipif(
    not SDK_PYTHON, reason="EDGE_TEST_TB_SDK_PYTHON names no Python with tb-mqtt-client")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def line(out: IO[str]) -> dict[str, Any]:
    text = out.readline()
    assert text, "the SDK's device ended early"
    step: dict[str, Any] = json.loads(text)
    return step


def test_thingsboards_python_sdk_connects_with_mqtt5_and_is_served(harness: Harness) -> None:
    fake, app = harness.connected_edge(**MQTT_ON)
    dev = make_device(app, "tb-sdk")
    app.service.post_attributes(dev.token, {"fw": "v1"}).result(10)
    sdk = subprocess.Popen([SDK_PYTHON, str(DEVICE), str(app.mqtt_port), dev.token],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr,
                           text=True)
    try:
        assert sdk.stdin is not None and sdk.stdout is not None
        assert line(sdk.stdout) == {"connected": True}
        assert line(sdk.stdout) == {"telemetry": 0}  # PUBACK success, once stored
        assert line(sdk.stdout) == {"attributes": {"client": {"fw": "v1"}}}
        assert line(sdk.stdout) == {"ready": True}
        deliver(fake, rpc_downlink(fake, dev, 5, "setGpio", {"pin": 2}))
        assert line(sdk.stdout) == {"rpc": {"id": "5", "method": "setGpio"}}
        up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
        assert (up.requestId, json.loads(up.responseMsg.response)) == (
            5, {"done": {"pin": 2}})
        sdk.stdin.write("disconnect\n")  # the answer is at the edge: the device may go
        sdk.stdin.flush()
        assert sdk.wait(30) == 0
    finally:
        if sdk.poll() is None:
            sdk.kill()
            sdk.wait()
        for pipe in (sdk.stdin, sdk.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):  # never hides the test's failure
                    pipe.close()
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.SUCCESSFUL]
    assert [e.body["values"] for e in events_of(app, dev.id, Action.TIMESERIES_UPDATED)] == [
        {"sdk": 1}]
    no_connections(app)


def test_thingsboards_gateway_client_connects_a_device_and_sends_its_data(
        harness: Harness) -> None:
    _, app = harness.connected_edge(**MQTT_ON)
    _, created = app.service.create_device("sdk-gateway", token="sdk-gw-token", gateway=True)
    created.result(10)
    sdk = subprocess.run([SDK_PYTHON, str(GATEWAY), str(app.mqtt_port), "sdk-gw-token"],
                         capture_output=True, text=True, timeout=60, check=True)
    steps = [json.loads(text) for text in sdk.stdout.splitlines()]
    assert steps == [{"connected": True}, {"device": 0}, {"telemetry": 0}, {"attributes": 0}]
    with app.store.read() as txn:
        sensor = EntityStore(app.store).device_by_name(txn, "SDK Sensor")
    assert sensor is not None and sensor.type == "thermo"
    assert [e.body["values"] for e in events_of(app, sensor.id, Action.TIMESERIES_UPDATED)] == [
        {"t": 21.5}]
    assert [e.body["kv"] for e in events_of(app, sensor.id, Action.ATTRIBUTES_UPDATED)] == [
        {"fw": "v2.0"}]
    no_connections(app)
