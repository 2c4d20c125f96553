"""Credentials the cloud turns from an access token into another type, through the link for
real: a whole EdgeApp (real LMDB, the device HTTP API and the MQTT server on loopback) linked to
the scripted gRPC peer of tests/helpers/fake_peer.py, a device on a real MQTT client
(paho-mqtt).

ThingsBoard keeps one credentials row per device (DeviceCredentialsServiceImpl
.updateDeviceCredentials replaces it), so once they are MQTT_BASIC or X509_CERTIFICATE the old
access token names no device (DefaultTransportApiService.validateCredentials /
validateUserNameCredentials find no ACCESS_TOKEN credentials): the edge removes the token, so
it gets HTTP 401 and MQTT CONNACK 5, and a connection it opened before is closed at its next
publish of any kind (telemetry, an attribute request, a gateway's data), as after a token
change, with nothing of that publish taken. One WARNING line names the device and the
credentials type, never the token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.common.wire import uuid_halves
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.records import Action
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.log_capture import log_records
from tests.helpers.mqtt_app import events_of, no_connections, publish_once
from tests.helpers.mqtt_device import TELEMETRY, MqttDevice
from tests.helpers.mqtt_gateway import TELEMETRY as GATEWAY_TELEMETRY
from tests.helpers.mqtt_gateway import MqttGateway
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import Harness, deliver, http

DEADLINE_S = 10.0
TOKEN = "tok-pump-revoked"
MQTT_ON = {"EDGE_MQTT_ENABLED": "true", "EDGE_MQTT_HOST": "127.0.0.1", "EDGE_MQTT_PORT": "0"}
CREDENTIALS = {  # DeviceCredentials JSON as ThingsBoard sends it (formatCredentials)
    "MQTT_BASIC": ("9c1c01dc3ac1445a500251fc34a15d3e75a849df",
                   json.dumps({"clientId": "pump-1", "userName": "pump", "password": "pw-1"})),
    "X509_CERTIFICATE": ("4f0c2ab4b5e2d1f6c7a8b9c0d1e2f3a4b5c6d7e8",
                         "MIIBszCCAVmgAwIBAgIUUkVkZ2Ugc3luYyB0ZXN0"),
}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def credentials_downlink(fake: FakeCloud, device_id: uuid.UUID, kind: str,
                         credentials_id: str, value: str | None = None) -> edge_pb2.DownlinkMsg:
    body = {"deviceId": {"entityType": "DEVICE", "id": str(device_id)}, "credentialsType": kind,
            "credentialsId": credentials_id, "credentialsValue": value}
    return edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id(), deviceCredentialsUpdateMsg=[
        edge_pb2.DeviceCredentialsUpdateMsg(entity=json.dumps(body))])


def device_downlink(fake: FakeCloud, device_id: uuid.UUID, *,
                    gateway: bool = False) -> edge_pb2.DownlinkMsg:
    msb, lsb = uuid_halves(device_id)
    device = {"id": {"entityType": "DEVICE", "id": str(device_id)}, "name": "pump",
              "type": "default", "createdTime": 1_700_000_000_000,
              "additionalInfo": {"gateway": gateway}}
    msg = credentials_downlink(fake, device_id, "ACCESS_TOKEN", TOKEN)
    msg.deviceUpdateMsg.append(edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=json.dumps(device)))
    return msg


def telemetry(app: EdgeApp, device_id: uuid.UUID) -> list[Any]:
    return [e.body["values"] for e in events_of(app, device_id, Action.TIMESERIES_UPDATED)]


def mentions_token(record: Any) -> bool:
    return TOKEN in record["message"] or TOKEN in json.dumps(record["extra"], default=str)


@pytest.mark.parametrize("kind", sorted(CREDENTIALS))
def test_credentials_of_another_type_from_the_cloud_revoke_the_access_token(
        harness: Harness, kind: str) -> None:
    fake, app = harness.connected_edge(**MQTT_ON)
    dev = uuid.uuid4()
    deliver(fake, device_downlink(fake, dev))
    status, _, _ = http(app, "POST", f"/api/v1/{TOKEN}/telemetry", {"n": 1})
    assert status == 200  # the token is in the device API's cache now
    live = MqttDevice(app.mqtt_port, TOKEN)
    try:
        assert live.connect() == 0
        publish_once(live, 2)

        with log_records() as records:
            deliver(fake, credentials_downlink(fake, dev, kind, *CREDENTIALS[kind]))
        revoked = [r for r in records if r["message"].startswith(f"device {dev}: access token")]
        assert [(r["level"].name, r["message"]) for r in revoked] == [(
            "WARNING", f"device {dev}: access token removed, the cloud gave it {kind} "
            "credentials: the edge refuses the token from now on (HTTP 401, MQTT CONNACK 5)")]
        assert (revoked[0]["extra"]["entity_id"], revoked[0]["extra"]["credentials_type"]) == (
            str(dev), kind)
        assert not any(mentions_token(r) for r in records)

        status, _, body = http(app, "POST", f"/api/v1/{TOKEN}/telemetry", {"n": 3})
        assert status == 401, body
        status, _, body = http(app, "GET", f"/api/v1/{TOKEN}/attributes")
        assert status == 401, body
        with MqttDevice(app.mqtt_port, TOKEN) as again:
            reason = again.connect()
            assert reason is not None and reason.getName() == "Not authorized"
            wait_until(again.disconnected.is_set, timeout=DEADLINE_S, what="refused, closed")
        # the connection it opened with the token is closed at its next publish, unacknowledged
        late = live.publish(TELEMETRY, {"n": 4})
        wait_until(live.disconnected.is_set, timeout=DEADLINE_S, what="the old session closed")
        assert late.mid not in live.acked_ids()
    finally:
        live.close()
    no_connections(app)
    assert telemetry(app, dev) == [{"n": 1}, {"n": 2}]
    device = app.service.device(dev)
    assert device is not None and (device.name, device.token) == ("pump", "")

    # access token credentials again: the device authenticates with that token once more
    deliver(fake, credentials_downlink(fake, dev, "ACCESS_TOKEN", TOKEN))
    status, _, _ = http(app, "POST", f"/api/v1/{TOKEN}/telemetry", {"n": 5})
    assert status == 200
    with MqttDevice(app.mqtt_port, TOKEN) as back:
        assert back.connect() == 0
        publish_once(back, 6)
    no_connections(app)
    assert telemetry(app, dev) == [{"n": 1}, {"n": 2}, {"n": 5}, {"n": 6}]


ATTRIBUTES_REQUEST = "v1/devices/me/attributes/request/1"


@pytest.mark.parametrize("gateway", [False, True], ids=["attribute-request", "gateway-data"])
def test_every_later_publish_of_a_connection_with_the_removed_token_closes_it(
        harness: Harness, gateway: bool) -> None:
    """Not only telemetry and attributes: an attribute request is not answered and a gateway's
    data for its devices is not taken; the connection closes instead."""
    fake, app = harness.connected_edge(**MQTT_ON)
    dev = uuid.uuid4()
    deliver(fake, device_downlink(fake, dev, gateway=gateway))
    with MqttGateway(app.mqtt_port, TOKEN) as live:
        assert live.connect() == 0
        if gateway:
            live.send(GATEWAY_TELEMETRY, {"Pump 7": [{"n": 1}]})
        deliver(fake, credentials_downlink(fake, dev, "MQTT_BASIC", *CREDENTIALS["MQTT_BASIC"]))
        if gateway:
            live.refused(GATEWAY_TELEMETRY, {"Pump 7": [{"n": 2}]})
        else:
            live.refused(ATTRIBUTES_REQUEST, {"clientKeys": "n"})
            assert live.messages == []  # no answer
    no_connections(app)
    if gateway:
        with app.store.read() as txn:
            pump = EntityStore(app.store).device_by_name(txn, "Pump 7")
        assert pump is not None and telemetry(app, pump.id) == [{"n": 1}]
