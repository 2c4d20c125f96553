"""The uplink payloads of edge-originated changes of the entity graph, exactly as the contract
("Uplink shapes") fixes them after ThingsBoard's own processors: asset creation, update and
delete, device delete, relation add and delete, attribute and timeseries key deletes, and the
request for a rule chain's metadata; lanes of the new actions."""

from __future__ import annotations

import json
import uuid
from typing import Any

from edge_sync.common.wire import (
    NULL_UUID,
    Owner,
    asset_entity,
    owned_json,
    relation_entity,
    uuid_halves,
    uuid_of,
)
from edge_sync.link.event_payloads import event_payload
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import NIL_UUID, Action, Lane, StoredEvent, lane_for

TENANT = uuid.UUID("6a1b0e40-0000-1000-8000-000000000001")
ASSET = uuid.UUID("00000000-0000-4000-8000-0000000000a5")
PROFILE = uuid.UUID("00000000-0000-4000-8000-0000000000f1")
DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d1")
CHAIN = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
OWNER = Owner(TENANT)


def stored(action: str, body: Any, *, entity: uuid.UUID, kind: str, entity_type: str | None = None,
           seq: int = 9, ts: int = 1_700_000_000_500) -> StoredEvent:
    return StoredEvent(seq=seq, id=uuid.UUID(int=900 + seq), created_time=ts, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type=kind, entity_type=entity_type or kind,
                       entity_id=entity, action=action, body=body, ts=ts,
                       lane=lane_for(kind, action))


def the_asset(**extra: Any) -> dict[str, Any]:
    return asset_entity(ASSET, created_time=1_700_000_000_123, name="line-1", type_="line",
                        label="north", profile_id=extra.get("profile"),
                        additional_info=extra.get("info"))


def test_asset_added_is_an_asset_update_msg_with_the_asset_json_owned_at_send_time() -> None:
    field, msg = event_payload(stored(Action.ADDED, the_asset(info={"k": 1}), entity=ASSET,
                                      kind="ASSET"), OWNER)
    assert (field, msg.msgType, uuid_of(msg.idMSB, msg.idLSB), msg.edgeSeqId) == (
        "assetUpdateMsg", edge_pb2.ENTITY_CREATED_RPC_MESSAGE, ASSET, 9)
    assert msg.entity == (
        '{"id":{"entityType":"ASSET","id":"00000000-0000-4000-8000-0000000000a5"},'
        '"createdTime":1700000000123,'
        '"tenantId":{"entityType":"TENANT","id":"6a1b0e40-0000-1000-8000-000000000001"},'
        '"customerId":{"entityType":"CUSTOMER","id":"13814000-1dd2-11b2-8080-808080808080"},'
        '"name":"line-1","type":"line","label":"north","additionalInfo":{"k":1}}')


def test_asset_updated_names_its_profile_and_a_nil_tenant_peer_gets_no_owner() -> None:
    event = stored(Action.UPDATED, the_asset(profile=PROFILE), entity=ASSET, kind="ASSET")
    _, msg = event_payload(event, Owner(NIL_UUID))
    assert msg.msgType == edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
    assert json.loads(msg.entity) == {
        "id": {"entityType": "ASSET", "id": str(ASSET)}, "createdTime": 1_700_000_000_123,
        "name": "line-1", "type": "line", "label": "north",
        "assetProfileId": {"entityType": "ASSET_PROFILE", "id": str(PROFILE)},
        "additionalInfo": None}


def test_asset_deleted_carries_the_id_halves_only() -> None:
    field, msg = event_payload(stored(Action.DELETED, {"id": str(ASSET), "name": "line-1"},
                                      entity=ASSET, kind="ASSET"), OWNER)
    msb, lsb = uuid_halves(ASSET)
    assert field == "assetUpdateMsg"
    assert msg == edge_pb2.AssetUpdateMsg(msgType=edge_pb2.ENTITY_DELETED_RPC_MESSAGE,
                                          idMSB=msb, idLSB=lsb, edgeSeqId=9)


def test_device_deleted_carries_the_id_halves_only() -> None:
    field, msg = event_payload(stored(Action.DELETED, {"id": str(DEVICE), "name": "pump"},
                                      entity=DEVICE, kind="DEVICE"), OWNER)
    msb, lsb = uuid_halves(DEVICE)
    assert field == "deviceUpdateMsg"
    assert msg == edge_pb2.DeviceUpdateMsg(msgType=edge_pb2.ENTITY_DELETED_RPC_MESSAGE,
                                           idMSB=msb, idLSB=lsb, edgeSeqId=9)


def test_relation_changes_are_relation_update_msgs_with_the_entity_relation_json() -> None:
    rel = relation_entity(("ASSET", ASSET), ("DEVICE", DEVICE), "Contains")
    text = ('{"from":{"entityType":"ASSET","id":"00000000-0000-4000-8000-0000000000a5"},'
            '"to":{"entityType":"DEVICE","id":"00000000-0000-4000-8000-0000000000d1"},'
            '"type":"Contains","typeGroup":"COMMON","additionalInfo":null}')
    for action, msg_type in ((Action.RELATION_ADD_OR_UPDATE, edge_pb2.ENTITY_CREATED_RPC_MESSAGE),
                             (Action.RELATION_DELETED, edge_pb2.ENTITY_DELETED_RPC_MESSAGE)):
        event = stored(action, rel, entity=ASSET, kind="RELATION", entity_type="ASSET")
        assert event_payload(event, OWNER) == (
            "relationUpdateMsg", edge_pb2.RelationUpdateMsg(msgType=msg_type, entity=text,
                                                            edgeSeqId=9))


def test_attributes_deleted_is_an_attribute_delete_msg_of_its_scope() -> None:
    event = stored(Action.ATTRIBUTES_DELETED, {"scope": "SERVER_SCOPE", "keys": ["a", "b"]},
                   entity=ASSET, kind="ASSET")
    msb, lsb = uuid_halves(ASSET)
    assert event_payload(event, OWNER) == ("entityData", edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="ASSET",
        attributeDeleteMsg=edge_pb2.AttributeDeleteMsg(scope="SERVER_SCOPE",
                                                       attributeNames=["a", "b"]),
        edgeSeqId=9))


def test_timeseries_deleted_is_an_empty_entity_data_with_the_keys_in_field_1001() -> None:
    event = stored(Action.TIMESERIES_DELETED, {"keys": ["temp", "hum"]}, entity=DEVICE,
                   kind="DEVICE")
    field, msg = event_payload(event, OWNER)
    msb, lsb = uuid_halves(DEVICE)
    assert field == "entityData"
    # what ThingsBoard sees: the entity and nothing to apply (its processTelemetryMsg: a no-op;
    # field 1001 is unknown to it)
    seen_by_tb = edge_pb2.EntityDataProto.FromString(msg.SerializeToString())
    assert (seen_by_tb.entityIdMSB, seen_by_tb.entityIdLSB, seen_by_tb.entityType) == (
        msb, lsb, "DEVICE")
    assert not seen_by_tb.HasField("postTelemetryMsg")
    assert not seen_by_tb.HasField("attributeDeleteMsg")
    # the extension, byte for byte: field 1001, length-delimited, keys as field 1 strings
    inner = b"\n\x04temp\n\x03hum"
    assert msg.SerializeToString().endswith(b"\xca\x3e" + bytes([len(inner)]) + inner)
    assert list(seen_by_tb.timeseriesDeleteMsg.keys) == ["temp", "hum"]
    # it survives being packed into an UplinkMsg
    uplink = edge_pb2.UplinkMsg()
    uplink.entityData.append(msg)
    assert edge_pb2.UplinkMsg.FromString(uplink.SerializeToString()).entityData[0] \
        .SerializeToString() == msg.SerializeToString()


def test_rule_chain_metadata_request() -> None:
    event = stored(Action.RULE_CHAIN_METADATA_REQUEST, {}, entity=CHAIN, kind="RULE_CHAIN")
    msb, lsb = uuid_halves(CHAIN)
    assert event_payload(event, OWNER) == ("ruleChainMetadataRequestMsg",
                                           edge_pb2.RuleChainMetadataRequestMsg(
                                               ruleChainIdMSB=msb, ruleChainIdLSB=lsb,
                                               edgeSeqId=9))


def test_lanes_creation_and_requests_high_deletes_and_relations_normal() -> None:
    assert [lane_for(kind, action) for kind, action in (
        ("ASSET", Action.ADDED), ("ASSET", Action.UPDATED),
        ("RULE_CHAIN", Action.RULE_CHAIN_METADATA_REQUEST), ("ALARM", Action.ALARM_ACK),
        ("ASSET", Action.DELETED), ("DEVICE", Action.DELETED),
        ("RELATION", Action.RELATION_ADD_OR_UPDATE), ("RELATION", Action.RELATION_DELETED),
        ("ASSET", Action.ATTRIBUTES_DELETED), ("DEVICE", Action.TIMESERIES_DELETED),
    )] == [Lane.HIGH] * 4 + [Lane.NORMAL] * 6


def test_owned_json_keeps_the_owner_an_entity_holds_and_fills_in_the_edges() -> None:
    synced = {"id": {"entityType": "ASSET", "id": str(ASSET)}, "createdTime": 1,
              "tenantId": {"entityType": "TENANT", "id": str(uuid.UUID(int=5))},
              "customerId": {"entityType": "CUSTOMER", "id": str(uuid.UUID(int=6))}, "name": "x"}
    assert json.loads(owned_json(synced, OWNER)) == synced
    assert json.loads(owned_json({**synced, "version": 7}, OWNER)) == {**synced, "version": None}
    made = {"id": {"entityType": "ASSET", "id": str(ASSET)}, "createdTime": 1, "name": "x",
            "customerId": None}
    assert list(json.loads(owned_json(made, OWNER)).items()) == [
        ("id", {"entityType": "ASSET", "id": str(ASSET)}), ("createdTime", 1),
        ("tenantId", {"entityType": "TENANT", "id": str(TENANT)}),
        ("customerId", {"entityType": "CUSTOMER", "id": str(NULL_UUID)}), ("name", "x")]
    assert json.loads(owned_json(made, None)) == made
