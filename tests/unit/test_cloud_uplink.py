"""Pure rules of the reference cloud: uplink validation and ordering, go-back-N, downlink
builders, the CLI's attribute parsing."""

from __future__ import annotations

import json
import uuid

import pytest

from edge_sync.cli.cloud import attribute_values
from edge_sync.cloud import downlinks
from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.uplink import GoBackN, epoch_of, events_to_apply
from edge_sync.cloud.uplink_payloads import PayloadRejected
from edge_sync.common.wire import to_kv, uuid_halves, uuid_of
from edge_sync.errors import BadRequest
from edge_sync.proto import edge_pb2, transport_pb2


def data(seq: int | None, entity_type: str = "DEVICE") -> edge_pb2.EntityDataProto:
    msb, lsb = uuid_halves(uuid.UUID(int=7))
    d = edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType=entity_type,
        postTelemetryMsg=transport_pb2.PostTelemetryMsg(
            tsKvList=[transport_pb2.TsKvListProto(ts=5, kv=[to_kv("a", 1)])]))
    if seq is not None:
        d.edgeSeqId = seq
    return d


def test_events_are_applied_in_seq_order_across_payload_lists():
    dev = uuid.UUID(int=7)
    msb, lsb = uuid_halves(dev)
    entity = json.dumps({"id": {"entityType": "DEVICE", "id": str(dev)}, "name": "n"})
    up = edge_pb2.UplinkMsg(entityData=[data(3), data(1)], deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb, entity=entity, edgeSeqId=0)])
    assert [e.seq for e in events_to_apply(up)] == [0, 1, 3]


def test_without_seqs_the_message_order_is_kept():
    up = edge_pb2.UplinkMsg(entityData=[data(None), data(None, "ASSET")])
    assert [e.entity_type for e in events_to_apply(up)] == ["DEVICE", "ASSET"]


@pytest.mark.parametrize("payload,needle", [
    (data(-1), "negative"),
    (data(4, "GADGET"), "unknown entityType"),
])
def test_extra_validation(payload, needle):
    with pytest.raises(PayloadRejected, match=needle) as info:
        events_to_apply(edge_pb2.UplinkMsg(entityData=[data(1), payload]))
    assert info.value.seq == payload.edgeSeqId


def device_update(entity: dict) -> edge_pb2.UplinkMsg:
    msb, lsb = uuid_halves(uuid.UUID(int=7))
    return edge_pb2.UplinkMsg(deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=json.dumps(entity), edgeSeqId=4)])


def test_device_json_with_or_without_its_owner_is_accepted():
    typed = {"entityType": "DEVICE", "id": str(uuid.UUID(int=7))}
    tenant = {"entityType": "TENANT", "id": str(uuid.UUID(int=9))}
    customer = {"entityType": "CUSTOMER", "id": "13814000-1dd2-11b2-8080-808080808080"}
    owned = {"id": typed, "tenantId": tenant, "customerId": customer, "name": "n"}
    for entity in (owned, {"id": typed, "name": "n"}, {"id": str(uuid.UUID(int=7)), "name": "n"}):
        [applied] = events_to_apply(device_update(entity))
        assert (applied.seq, applied.entity_id, applied.body) == (4, uuid.UUID(int=7), entity)


@pytest.mark.parametrize("entity,needle", [
    ({"id": {"entityType": "ASSET", "id": str(uuid.UUID(int=7))}, "name": "n"},
     "id is a 'ASSET' id, not DEVICE"),
    ({"id": str(uuid.UUID(int=7)), "name": "n",
      "tenantId": {"entityType": "CUSTOMER", "id": str(uuid.UUID(int=9))}},
     "tenantId is a 'CUSTOMER' id, not TENANT"),
    ({"id": str(uuid.UUID(int=7)), "name": "n", "customerId": {"entityType": "CUSTOMER", "id": "x"}},
     "customerId is not a UUID"),
])
def test_device_json_with_a_wrong_typed_id_is_rejected(entity, needle):
    with pytest.raises(PayloadRejected, match=needle) as info:
        events_to_apply(device_update(entity))
    assert info.value.seq == 4


def test_go_back_n_gate():
    gate = GoBackN()
    assert not gate.refuses(0) and not gate.refuses(None)
    gate.failed(2)
    assert gate.refuses(2) and gate.refuses(1) and not gate.refuses(3)
    assert not gate.refuses(None)  # a peer without epochs is never refused
    assert "epoch 2" in gate.refusal() and "go-back-N" in gate.refusal()
    gate.failed(1)  # never lowers the failed epoch
    assert gate.refuses(2)
    gate.failed(None)
    assert gate.failed_epoch == 2
    assert epoch_of(edge_pb2.UplinkMsg()) is None and epoch_of(edge_pb2.UplinkMsg(uplinkEpoch=0)) == 0


def test_downlink_builders():
    dev = CloudDevice(uuid.uuid4(), uuid.uuid4(), "pump", "t", "L", "tok", 9, "cloud")
    tenant, profile = uuid.uuid4(), uuid.uuid4()
    # one message with the device, its credentials and its profile (a sync's and a device
    # created later alike)
    synced = edge_pb2.DownlinkMsg.FromString(downlinks.device_synced(dev, tenant, profile))
    msg = synced.deviceUpdateMsg[0]
    assert uuid_of(msg.idMSB, msg.idLSB) == dev.id and msg.msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
    assert json.loads(msg.entity) == {
        "id": {"entityType": "DEVICE", "id": str(dev.id)}, "createdTime": 9,
        "tenantId": {"entityType": "TENANT", "id": str(tenant)},
        "customerId": {"entityType": "CUSTOMER", "id": "13814000-1dd2-11b2-8080-808080808080"},
        "name": "pump", "type": "t", "label": "L",
        "deviceProfileId": {"entityType": "DEVICE_PROFILE", "id": str(profile)},
        "deviceData": {"configuration": {"type": "DEFAULT"},
                       "transportConfiguration": {"type": "DEFAULT"}},
        "firmwareId": None, "softwareId": None, "externalId": None, "version": None,
        "additionalInfo": None}
    assert json.loads(synced.deviceCredentialsUpdateMsg[0].entity) == {
        "deviceId": {"entityType": "DEVICE", "id": str(dev.id)}, "credentialsType": "ACCESS_TOKEN",
        "credentialsId": "tok"}
    assert json.loads(synced.deviceProfileUpdateMsg[0].entity)["name"] == "t"
    assert uuid_of(synced.deviceProfileUpdateMsg[0].idMSB, synced.deviceProfileUpdateMsg[0].idLSB) == profile
    attrs = edge_pb2.DownlinkMsg.FromString(downlinks.shared_attributes(dev, {"x": {"a": 1}}, 5))
    kv = attrs.entityData[0].attributesUpdatedMsg.kv[0]
    assert kv.type == transport_pb2.JSON_V and json.loads(kv.json_v) == {"a": 1}
    out = downlinks.stamp(downlinks.sync_completed(), 12, 34)
    assert out.downlinkMsg.downlinkMsgId == 12 and out.downlinkMsg.cloudTimeMillis == 34
    assert out.downlinkMsg.HasField("syncCompletedMsg")
    assert "tok" not in downlinks.describe(downlinks.device_synced(dev, tenant, profile))


def test_cli_attribute_values():
    assert attribute_values(["a=1", "b=true", 'c="x"', "d=text", "e={\"k\":[1]}", "f="], None, None) == {
        "a": 1, "b": True, "c": "x", "d": "text", "e": {"k": [1]}, "f": ""}
    assert attribute_values([], "k", "2.5") == {"k": 2.5}
    bad = ((["novalue"], None, None), ([], None, None), ([], "k", None), (["=1"], None, None))
    for pairs, key, value in bad:
        with pytest.raises(BadRequest):
            attribute_values(pairs, key, value)
