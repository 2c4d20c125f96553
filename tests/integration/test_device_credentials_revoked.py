"""Credentials the cloud turns from an access token into another type, a token the cloud
changes, and a device the cloud deletes, through the link for real: a whole EdgeApp (real LMDB,
the device HTTP API and the MQTT server on loopback) linked to the scripted gRPC peer of
tests/helpers/fake_peer.py, devices on a real MQTT client (paho-mqtt).

ThingsBoard keeps one credentials row per device (DeviceCredentialsServiceImpl
.updateDeviceCredentials replaces it), so once they are MQTT_BASIC or X509_CERTIFICATE the old
access token names no device (DefaultTransportApiService.validateCredentials /
validateUserNameCredentials find no ACCESS_TOKEN credentials): the edge removes the token, so
it gets HTTP 401 and MQTT CONNACK 5. One WARNING line names the device and the credentials
type, never the token. Whatever took the device's token away (another token, another type, the
device deleted), every MQTT connection authenticated with it closes as soon as the downlink
commits, publishing or not, and an HTTP long poll with it ends, as ThingsBoard closes every
session of the device (DeviceActorMessageProcessor.processCredentialsUpdate).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.app import EdgeApp
from edge_sync.common.wire import uuid_halves
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import TOKEN_CHANGED, Revocation
from edge_sync.storage.records import Action
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.log_capture import log_records
from tests.helpers.mqtt_app import MQTT_ON, events_of, no_connections, publish_once
from tests.helpers.mqtt_device import MqttDevice
from tests.helpers.mqtt_gateway import CONNECT as GATEWAY_CONNECT
from tests.helpers.mqtt_gateway import RPC as GATEWAY_RPC
from tests.helpers.mqtt_gateway import MqttGateway
from tests.helpers.wait import wait_until
from tests.integration.test_device_sessions import Harness, deliver, http, in_thread, polls_open
from tests.unit.test_downlink_actor import device_msg

DEADLINE_S = 10.0
TOKEN = "tok-pump-revoked"
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
        # the connection it opened with the token was closed once the downlink committed
        assert live.disconnected.wait(DEADLINE_S), "the old connection stayed open"
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


NEW_TOKEN = "tok-pump-renewed"
CHANGES = ("token-changed", "mqtt-basic", "deleted")
REASONS = {  # the reason field, and the words of the message
    "token-changed": ("token_changed", "its access token was changed by the cloud"),
    "mqtt-basic": ("token_removed",
                   "its access token was removed: the cloud gave it MQTT_BASIC credentials"),
    "deleted": ("device_deleted", "it was deleted by the cloud"),
}
DEVICE_RPC = "v1/devices/me/rpc/request/+"


def change_downlink(fake: FakeCloud, dev: uuid.UUID, change: str) -> edge_pb2.DownlinkMsg:
    if change == "token-changed":
        return credentials_downlink(fake, dev, "ACCESS_TOKEN", NEW_TOKEN)
    if change == "mqtt-basic":
        return credentials_downlink(fake, dev, "MQTT_BASIC", *CREDENTIALS["MQTT_BASIC"])
    return device_msg(fake.new_downlink_id(), dev, "pump",
                      kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE)


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("gateway", [False, True], ids=["device", "gateway"])
def test_a_connection_that_only_subscribes_is_closed_once_the_change_commits(
        harness: Harness, change: str, gateway: bool) -> None:
    """A client that subscribed and publishes nothing is disconnected as soon as the downlink
    that changes the device's token, removes it, or deletes the device commits, as ThingsBoard
    closes every session of the device (DeviceActorMessageProcessor.processCredentialsUpdate;
    MqttTransportHandler.onDeviceDeleted): it no longer gets what is meant for the device. A
    gateway's own connection too (its devices disconnect with it). One INFO line per
    connection names the device and why, never a token."""
    fake, app = harness.connected_edge(**MQTT_ON)
    dev = uuid.uuid4()
    deliver(fake, device_downlink(fake, dev, gateway=gateway))
    with MqttGateway(app.mqtt_port, TOKEN, client_id="pump-sub") as live:
        assert live.connect() == 0
        assert live.subscribe(GATEWAY_RPC if gateway else DEVICE_RPC, qos=1) == [1]
        if gateway:
            live.send(GATEWAY_CONNECT, {"device": "Pump 7"})
        with log_records() as records:
            deliver(fake, change_downlink(fake, dev, change))
            assert live.disconnected.wait(DEADLINE_S), "the connection stayed open"
            no_connections(app)
        closing = [r for r in records if r["message"].startswith("closing the MQTT connection")]
        reason, why = REASONS[change]
        assert [(r["level"].name, r["message"], r["extra"]["device"], r["extra"]["client_id"],
                 r["extra"]["reason"]) for r in closing] == [
            ("INFO", f"closing the MQTT connection of device pump: {why}", str(dev), "pump-sub",
             reason)]
        assert not any(mentions_token(r) or NEW_TOKEN in r["message"] for r in records)
        assert live.messages == []
    with MqttDevice(app.mqtt_port, TOKEN) as again:  # the old token names no device
        reason = again.connect()
        assert reason is not None and reason.getName() == "Not authorized"
        assert again.disconnected.wait(DEADLINE_S)
    if change == "token-changed":
        with MqttDevice(app.mqtt_port, NEW_TOKEN) as renewed:
            assert renewed.connect() == 0
            publish_once(renewed, 1)
        assert telemetry(app, dev) == [{"n": 1}]
    no_connections(app)


def test_a_connection_whose_token_still_names_its_device_stays_open(harness: Harness) -> None:
    """Only a token that no longer names the device closes a connection: a device changed
    otherwise (renamed) and its credentials sent again unchanged (as a full sync resends them)
    close nothing; and a revocation told for the device while the connection's token names it
    still (it connected with the new token before the news reached the server) leaves it
    open."""
    fake, app = harness.connected_edge(**MQTT_ON)
    dev = uuid.uuid4()
    deliver(fake, device_downlink(fake, dev))
    server = app.mqtt_server
    loop = server._loop if server is not None else None
    assert server is not None and loop is not None, "the MQTT server is not running"
    with MqttDevice(app.mqtt_port, TOKEN) as live, log_records() as records:
        assert live.connect() == 0
        deliver(fake, device_msg(fake.new_downlink_id(), dev, "pump-renamed",
                                 kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE))
        deliver(fake, credentials_downlink(fake, dev, "ACCESS_TOKEN", TOKEN))
        told = threading.Event()
        loop.call_soon_threadsafe(
            server.registry.revoke,
            {dev: Revocation(dev, TOKEN_CHANGED, "its access token was changed")})
        loop.call_soon_threadsafe(told.set)
        assert told.wait(DEADLINE_S), "the MQTT server's loop did not run a callback"
        publish_once(live, 1)
        assert not live.disconnected.is_set()
        assert [r for r in records if r["message"].startswith("closing the MQTT")] == []
    no_connections(app)
    assert telemetry(app, dev) == [{"n": 1}]


@pytest.mark.parametrize("change", CHANGES)
def test_a_long_poll_with_the_old_token_ends_once_the_change_commits(
        harness: Harness, change: str) -> None:
    """An HTTP long poll waiting for an RPC request ends at once: 408 when the token was
    changed or removed, as ThingsBoard's HTTP transport answers a session the device actor
    closes (DeviceApiController.HttpSessionListener.onRemoteSessionCloseCommand:
    REQUEST_TIMEOUT), then 401 for the old token; 404 when the device was deleted (its entity
    actor answers the polls it held)."""
    fake, app = harness.connected_edge(**MQTT_ON)
    dev = uuid.uuid4()
    deliver(fake, device_downlink(fake, dev))
    poll = in_thread(http, app, "GET", f"/api/v1/{TOKEN}/rpc?timeout=60000")
    polls_open(app, 1)
    with log_records() as records:
        deliver(fake, change_downlink(fake, dev, change))
        status, _, body = poll.result(DEADLINE_S)
    ended = [r for r in records if r["message"].startswith("long poll of device")]
    if change == "deleted":
        assert status == 404, body
        assert ended == []
    else:
        assert (status, body) == (408, b"")
        reason, why = REASONS[change]
        assert [(r["level"].name, r["message"], r["extra"]["device"], r["extra"]["reason"])
                for r in ended] == [
            ("INFO", f"long poll of device pump ended with 408: {why}", str(dev), reason)]
    assert not any(mentions_token(r) for r in records)
    status, _, _ = http(app, "GET", f"/api/v1/{TOKEN}/rpc?timeout=1000")
    assert status == 401


def test_a_device_deleted_on_the_edge_has_its_connections_closed(harness: Harness) -> None:
    """The admin API's delete (EntityService.delete_device) closes the device's connections
    once it commits, as a deletion by the cloud does."""
    _fake, app = harness.connected_edge(**MQTT_ON)
    device, created = app.service.create_device("pump", token=TOKEN)
    created.result(DEADLINE_S)
    with MqttDevice(app.mqtt_port, TOKEN, client_id="pump-local") as live:
        assert live.connect() == 0
        assert live.subscribe(DEVICE_RPC, qos=1) == [1]
        with log_records() as records:
            app.entities.delete_device(device.id).result(DEADLINE_S)
            assert live.disconnected.wait(DEADLINE_S), "the connection stayed open"
            no_connections(app)
    closing = [r for r in records if r["message"].startswith("closing the MQTT connection")]
    assert [(r["message"], r["extra"]["device"], r["extra"]["client_id"], r["extra"]["reason"])
            for r in closing] == [
        ("closing the MQTT connection of device pump: it was deleted on the edge",
         str(device.id), "pump-local", "device_deleted")]
