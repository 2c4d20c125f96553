"""The ConnectResponseMsg of an accepted edge carries the EdgeConfiguration a ThingsBoard CE
server sends: time-based edge and tenant ids, the NULL_UUID customer, the secret echoed,
cloudType "CE". Built directly, then through a stream's connect (no gRPC server)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from edge_sync.cloud.records import EdgeRecord
from edge_sync.cloud.registry import StreamRegistry
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.session import LinkSettings, StreamSession, edge_configuration
from edge_sync.cloud.store import CloudStore
from edge_sync.common import ids
from edge_sync.common.wire import uuid_halves, uuid_of
from edge_sync.proto import edge_pb2

EDGE_ID = uuid.UUID("0f1e2d3c-7d4c-11ee-9234-010000abcdef")
TENANT_ID = uuid.UUID("04c284b0-833b-11ee-9234-010000abcdef")
# ThingsBoard's NULL_UUID 13814000-1dd2-11b2-8080-808080808080 as the signed halves of the wire
NULL_MSB, NULL_LSB = 0x1381_4000_1DD2_11B2, 0x8080_8080_8080_8080 - 2**64


class FakeContext:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"

    def cancel(self) -> None:
        pass

    def add_callback(self, callback: object) -> bool:
        return True


@pytest.fixture
def service(tmp_path: Path) -> Iterator[CloudService]:
    store = CloudStore(tmp_path / "cloud")
    yield CloudService(store)
    store.close()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    yield lines
    logger.remove(sink)


def connect(service: CloudService, routing_key: str, secret: str,
            store_id: str | None = None) -> edge_pb2.ConnectResponseMsg:
    session = StreamSession(service, StreamRegistry(), LinkSettings(), FakeContext())  # type: ignore[arg-type]
    req = edge_pb2.ConnectRequestMsg(edgeRoutingKey=routing_key, edgeSecret=secret,
                                     edgeVersion=edge_pb2.V_4_3_0, maxInboundMessageSize=65536)
    if store_id is not None:
        req.edgeStoreId = store_id
    out: edge_pb2.ConnectResponseMsg = session._connect(req).connectResponseMsg
    return out


def test_the_null_uuid_halves_are_thingsboards() -> None:
    assert uuid_halves(ids.NULL_UUID) == (NULL_MSB, NULL_LSB)


def test_edge_configuration_has_every_field_a_thingsboard_server_fills() -> None:
    edge = EdgeRecord(edge_id=EDGE_ID, tenant_id=TENANT_ID, routing_key="rk-1", name="plant-1",
                      type="gateway", created_time=1, salt=b"s", secret_hash=b"h",
                      kdf=("scrypt", 2, 1, 1))
    conf = edge_configuration(edge, "s3cret")
    e_msb, e_lsb = uuid_halves(EDGE_ID)
    t_msb, t_lsb = uuid_halves(TENANT_ID)
    assert conf == edge_pb2.EdgeConfiguration(
        edgeIdMSB=e_msb, edgeIdLSB=e_lsb, tenantIdMSB=t_msb, tenantIdLSB=t_lsb,
        customerIdMSB=NULL_MSB, customerIdLSB=NULL_LSB, name="plant-1", type="gateway",
        routingKey="rk-1", secret="s3cret", additionalInfo="", cloudType="CE")
    assert conf.ListFields()[-1][0].name == "cloudType" and conf.cloudType == "CE"


def test_an_accepted_connect_returns_the_configuration_with_time_based_ids_and_the_secret(
        service: CloudService, warnings: list[str]) -> None:
    edge, _, _ = service.create_edge("plant-1", routing_key="rk-1", secret="s3cret", type_="gateway")
    resp = connect(service, "rk-1", "s3cret", store_id="store-a")
    assert resp.responseCode == edge_pb2.ACCEPTED
    conf = resp.configuration
    edge_id, tenant_id = uuid_of(conf.edgeIdMSB, conf.edgeIdLSB), uuid_of(conf.tenantIdMSB, conf.tenantIdLSB)
    assert (edge_id, tenant_id) == (edge.edge_id, service.store.tenant_id())
    assert (edge_id.version, tenant_id.version) == (1, 1)
    assert uuid_of(conf.customerIdMSB, conf.customerIdLSB) == ids.NULL_UUID
    assert (conf.name, conf.type, conf.routingKey, conf.secret, conf.additionalInfo, conf.cloudType) == (
        "plant-1", "gateway", "rk-1", "s3cret", "", "CE")
    assert resp.maxInboundMessageSize == LinkSettings().max_inbound_message_size
    assert warnings == []


def test_a_refused_connect_carries_no_configuration(service: CloudService) -> None:
    service.create_edge("plant-1", routing_key="rk-1", secret="s3cret")
    resp = connect(service, "rk-1", "wrong")
    assert resp.responseCode == edge_pb2.BAD_CREDENTIALS
    assert not resp.HasField("configuration")


def test_a_thingsboard_edge_on_ids_made_before_is_warned_about(
        service: CloudService, warnings: list[str]) -> None:
    """Ids stored before the cloud made time-based ones keep their values; an edge that sends no
    store id (a ThingsBoard Edge) is told in the log why it may not initialise."""
    old_tenant = uuid.UUID("8c7f6a9e-5b4d-4c3b-9a29-1f0e0d0c0b0a")
    store = service.store
    store.lmdb.write(lambda txn: txn.put(b"tenant", old_tenant.bytes, db=store.lmdb.dbs["meta"]))
    service.create_edge("plant-1", routing_key="rk-1", secret="s3cret")
    resp = connect(service, "rk-1", "s3cret", store_id="store-a")  # edge-sync's edge: no warning
    assert uuid_of(resp.configuration.tenantIdMSB, resp.configuration.tenantIdLSB) == old_tenant
    assert warnings == []
    connect(service, "rk-1", "s3cret")
    assert warnings == [
        "the tenant id is not time-based (made before the cloud made time-based ids): a "
        "ThingsBoard Edge cannot initialise with it, only with a cloud store (data_dir) made anew"]


def test_downlinked_devices_name_the_edges_time_based_tenant_and_the_null_customer(
        service: CloudService) -> None:
    """Created (queued at once) and in a full sync: ThingsBoard's device JSON with the tenant
    of the EdgeConfiguration and no customer."""
    edge, _, _ = service.create_edge("plant-1", routing_key="rk-1", secret="s3cret")
    device, numbers = service.create_device("rk-1", "pump", token="tok-1")
    tenant = {"entityType": "TENANT", "id": str(edge.tenant_id)}
    customer = {"entityType": "CUSTOMER", "id": "13814000-1dd2-11b2-8080-808080808080"}
    first = service.store.first_downlink(edge.edge_id)
    assert first is not None
    queued = edge_pb2.DownlinkMsg.FromString(first.payload)
    sent = json.loads(queued.deviceUpdateMsg[0].entity)
    assert (sent["id"], sent["tenantId"], sent["customerId"]) == (
        {"entityType": "DEVICE", "id": str(device.id)}, tenant, customer)
    assert uuid.UUID(sent["id"]["id"]).version == 1 and numbers == [1]

    session = StreamSession(service, StreamRegistry(), LinkSettings(), FakeContext())  # type: ignore[arg-type]
    session._connect(edge_pb2.ConnectRequestMsg(edgeRoutingKey="rk-1", edgeSecret="s3cret"))
    session._start_sync(True)
    synced = [edge_pb2.DownlinkMsg.FromString(d.payload) for d in session._sync]
    (device_msg,) = [d for d in synced if d.deviceUpdateMsg]
    entity = json.loads(device_msg.deviceUpdateMsg[0].entity)
    assert (entity["id"]["id"], entity["tenantId"], entity["customerId"]) == (
        str(device.id), tenant, customer)
    assert json.loads(device_msg.deviceCredentialsUpdateMsg[0].entity)["credentialsId"] == "tok-1"
    assert synced[-1].HasField("syncCompletedMsg")
