"""DownlinkMsgs the reference cloud sends: the tenant, queues, profiles and root rule chain of a
full sync, a device (with its credentials and profile, as ThingsBoard sends one in a sync),
attributes, the end of a sync. Each builder returns the serialized message without
downlinkMsgId and cloudTimeMillis; the stream sets both when it sends (`stamp`). The entity
JSON comes from the entity graph (cloud/graph_store.py) or, for the cloud's own defaults, from
tb_entities.py. Also what a queued downlink is (`describe`, `rpc_request_of`, `graph_only`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError

from edge_sync.cloud import tb_entities
from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.rpc import RpcRecord, compact
from edge_sync.common import entity_graph
from edge_sync.common.wire import credentials_json, to_kv, uuid_halves, uuid_of
from edge_sync.proto import edge_pb2, transport_pb2


def _serialized(msg: edge_pb2.DownlinkMsg) -> bytes:
    data: bytes = msg.SerializeToString()  # typed Any: protobuf has no stubs installed
    return data


def device_update(device: CloudDevice, tenant_id: uuid.UUID, profile_id: uuid.UUID
                   ) -> edge_pb2.DeviceUpdateMsg:
    msb, lsb = uuid_halves(device.id)
    return edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=tb_entities.device_json(device.id, tenant_id, profile_id, name=device.name,
                                       type_=device.type, label=device.label,
                                       created=device.created_time))


def credentials_update(device: CloudDevice) -> edge_pb2.DeviceCredentialsUpdateMsg:
    assert device.token
    return edge_pb2.DeviceCredentialsUpdateMsg(entity=credentials_json(
        {"deviceId": str(device.id), "credentialsId": device.token}))


def _device_profile_update(profile_id: uuid.UUID, tenant_id: uuid.UUID, name: str
                           ) -> edge_pb2.DeviceProfileUpdateMsg:
    msb, lsb = uuid_halves(profile_id)
    return edge_pb2.DeviceProfileUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=tb_entities.device_profile_json(profile_id, tenant_id, name))


def device_synced(device: CloudDevice, tenant_id: uuid.UUID, profile_id: uuid.UUID,
                  profile_json: str | None = None) -> bytes:
    """A device, as ThingsBoard sends one in a full sync: one DownlinkMsg carrying the device,
    its credentials (when it has a token) and its device profile. Also the shape of a device
    created after the sync, so the profile it names always comes with it (an edge applies the
    profile first, in the same transaction).

    ``profile_json``: the device profile as the entity graph stores it, the JSON a full sync
    sends (CloudGraph.device_downlink_in passes it), so the edge's copy stays the cloud's: a
    profile's description, alarm rules and the rest are the operator's, and a device must not
    overwrite them. None only where no graph holds the profile (a store of an earlier release
    read without one): then a default profile named by the device's type (tb_entities)."""
    if profile_json is None:
        profile = _device_profile_update(profile_id, tenant_id, device.type)
    else:
        _, profile = entity_message("DEVICE_PROFILE", "ADDED", profile_id, profile_json)
    msg = edge_pb2.DownlinkMsg(
        deviceUpdateMsg=[device_update(device, tenant_id, profile_id)],
        deviceProfileUpdateMsg=[profile])
    if device.token:
        msg.deviceCredentialsUpdateMsg.append(credentials_update(device))
    return _serialized(msg)


def device_profile(profile_id: uuid.UUID, tenant_id: uuid.UUID, name: str) -> bytes:
    return _serialized(edge_pb2.DownlinkMsg(
        deviceProfileUpdateMsg=[_device_profile_update(profile_id, tenant_id, name)]))


def asset_profile(profile_id: uuid.UUID, tenant_id: uuid.UUID) -> bytes:
    msb, lsb = uuid_halves(profile_id)
    return _serialized(edge_pb2.DownlinkMsg(assetProfileUpdateMsg=[edge_pb2.AssetProfileUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=tb_entities.asset_profile_json(profile_id, tenant_id))]))


def tenant(tenant_id: uuid.UUID) -> bytes:
    """TenantUpdateMsg ENTITY_UPDATED (a ThingsBoard Edge made its tenant from the
    EdgeConfiguration already; this updates it, as ThingsBoard's sync does)."""
    return _serialized(edge_pb2.DownlinkMsg(tenantUpdateMsg=[edge_pb2.TenantUpdateMsg(
        msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, entity=tb_entities.tenant_json(tenant_id))]))


def queue(queue_id: uuid.UUID, name: str) -> bytes:
    """QueueUpdateMsg ENTITY_CREATED of one of ThingsBoard's default queues."""
    msb, lsb = uuid_halves(queue_id)
    return _serialized(edge_pb2.DownlinkMsg(queueUpdateMsg=[edge_pb2.QueueUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=tb_entities.queue_json(queue_id, name))]))


def root_rule_chain(chain_id: uuid.UUID, tenant_id: uuid.UUID, first_node_id: uuid.UUID) -> bytes:
    msb, lsb = uuid_halves(chain_id)
    return _serialized(edge_pb2.DownlinkMsg(ruleChainUpdateMsg=[edge_pb2.RuleChainUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=tb_entities.rule_chain_json(chain_id, tenant_id, first_node_id))]))


def root_rule_chain_metadata(chain_id: uuid.UUID, node_ids: list[uuid.UUID]) -> bytes:
    return _serialized(edge_pb2.DownlinkMsg(
        ruleChainMetadataUpdateMsg=[edge_pb2.RuleChainMetadataUpdateMsg(
            msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
            entity=tb_entities.rule_chain_metadata_json(chain_id, node_ids))]))


def attributes_entry(entity_type: str, entity_id: uuid.UUID, scope: str,
                     values: Mapping[str, Any], ts: int) -> edge_pb2.EntityDataProto:
    """entityData.attributesUpdatedMsg with postAttributeScope ``scope`` and attributeTs, as
    ThingsBoard answers an attributes request (shared=true for SHARED_SCOPE)."""
    msb, lsb = uuid_halves(entity_id)
    return edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType=entity_type,
        attributesUpdatedMsg=transport_pb2.PostAttributeMsg(
            kv=[to_kv(k, v) for k, v in values.items()], shared=scope == "SHARED_SCOPE"),
        postAttributeScope=scope, attributeTs=ts)


def attributes(entity_type: str, entity_id: uuid.UUID, scope: str, values: Mapping[str, Any],
               ts: int) -> bytes:
    """One DownlinkMsg of attributes_entry()."""
    return _serialized(edge_pb2.DownlinkMsg(
        entityData=[attributes_entry(entity_type, entity_id, scope, values, ts)]))


def shared_attributes(device: CloudDevice, values: Mapping[str, Any], ts: int) -> bytes:
    """entityData.attributesUpdatedMsg with postAttributeScope SHARED_SCOPE (shared=true)."""
    return attributes("DEVICE", device.id, "SHARED_SCOPE", values, ts)


def device_rpc_request(record: RpcRecord) -> bytes:
    """A server-side RPC request for a device of the edge, as ThingsBoard builds it from its
    RPC_CALL edge event: deviceRpcCallMsg{deviceId, requestUuid, requestId, expirationTime,
    oneway, persisted, retries, additionalInfo, requestMsg{method, params (JSON text)}}."""
    d_msb, d_lsb = uuid_halves(record.device_id)
    r_msb, r_lsb = uuid_halves(record.id)
    msg = edge_pb2.DeviceRpcCallMsg(
        deviceIdMSB=d_msb, deviceIdLSB=d_lsb, requestUuidMSB=r_msb, requestUuidLSB=r_lsb,
        requestId=record.request_id, expirationTime=record.expiration_time,
        oneway=record.oneway, persisted=record.persistent,
        requestMsg=edge_pb2.RpcRequestMsg(method=record.method, params=compact(record.params)))
    if record.retries is not None:
        msg.retries = record.retries
    if record.additional_info is not None:
        msg.additionalInfo = compact(record.additional_info)
    return _serialized(edge_pb2.DownlinkMsg(deviceRpcCallMsg=[msg]))


def rpc_request_of(payload: bytes) -> tuple[uuid.UUID, int] | None:
    """(rpc id, expirationTime) of a queued server-side RPC request downlink, else None."""
    msg = edge_pb2.DownlinkMsg.FromString(payload)
    for call in msg.deviceRpcCallMsg:
        if call.HasField("requestMsg") and (call.requestUuidMSB or call.requestUuidLSB):
            return uuid_of(call.requestUuidMSB, call.requestUuidLSB), call.expirationTime
    return None


def sync_completed() -> bytes:
    return _serialized(edge_pb2.DownlinkMsg(syncCompletedMsg=edge_pb2.SyncCompletedMsg()))


def stamp(payload: bytes, msg_id: int, now_ms: int) -> edge_pb2.ResponseMsg:
    """The ResponseMsg carrying a queued downlink, with its id and the cloud's time."""
    msg = edge_pb2.DownlinkMsg.FromString(payload)
    msg.downlinkMsgId = msg_id
    msg.cloudTimeMillis = now_ms
    return edge_pb2.ResponseMsg(downlinkMsg=msg)


def describe(payload: bytes) -> str:
    """A short description of a queued downlink for the log (never its values or tokens)."""
    msg = edge_pb2.DownlinkMsg.FromString(payload)
    parts = [f"{field.name}" for field, _ in msg.ListFields()]
    return ",".join(parts) or "empty"


# -- entities of the graph (cloud/graph_store.py) ------------------------------------------------

_UPDATE_TYPE = {
    "ADDED": edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
    "UPDATED": edge_pb2.ENTITY_UPDATED_RPC_MESSAGE,
    "DELETED": edge_pb2.ENTITY_DELETED_RPC_MESSAGE,
}


def _message_class(field: str) -> Any:
    """The protobuf class of a DownlinkMsg list (``assetUpdateMsg`` -> AssetUpdateMsg)."""
    return getattr(edge_pb2, edge_pb2.DownlinkMsg.DESCRIPTOR.fields_by_name[field].message_type.name)


def entity_message(entity_type: str, action: str, entity_id: uuid.UUID, entity_json: str | None
                   ) -> tuple[str, Any]:
    """(DownlinkMsg field, the update message) of one entity of the graph, as ThingsBoard's
    edge processors build it: msgType from the action (ADDED: ENTITY_CREATED, UPDATED:
    ENTITY_UPDATED, DELETED: ENTITY_DELETED), idMSB/idLSB for the kinds that carry them, and the
    entity JSON (none for a deletion: ThingsBoard's delete messages carry the id only)."""
    kind = entity_graph.BY_TYPE[entity_type]
    msg = _message_class(kind.downlink_field)(msgType=_UPDATE_TYPE[action])
    if kind.has_id_halves:
        msg.idMSB, msg.idLSB = uuid_halves(entity_id)
    if entity_json is not None and (action != "DELETED" or not kind.has_id_halves):
        msg.entity = entity_json
    return kind.downlink_field, msg


def relation_message(action: str, relation_json: str) -> tuple[str, Any]:
    """relationUpdateMsg: ENTITY_CREATED for RELATION_ADD_OR_UPDATE, ENTITY_DELETED for
    RELATION_DELETED (ThingsBoard's getUpdateMsgType), with the EntityRelation JSON."""
    msg_type = (edge_pb2.ENTITY_DELETED_RPC_MESSAGE if action == "RELATION_DELETED"
                else edge_pb2.ENTITY_CREATED_RPC_MESSAGE)
    return "relationUpdateMsg", edge_pb2.RelationUpdateMsg(msgType=msg_type, entity=relation_json)


def message_of(entries: list[tuple[str, Any]]) -> bytes:
    """One DownlinkMsg carrying ``entries`` (field, message), each list in the given order."""
    msg = edge_pb2.DownlinkMsg()
    for field, entry in entries:
        getattr(msg, field).append(entry)
    return _serialized(msg)


GRAPH_FIELDS: frozenset[str] = frozenset(k.downlink_field for k in entity_graph.KINDS)
"""The DownlinkMsg lists of the entity graph's kinds (entity creates, updates and deletes,
devices with their credentials and profiles, rule chain metadata, relations)."""


def graph_only(payload: bytes) -> bool:
    """Whether a serialized DownlinkMsg carries entity graph changes and nothing else (only
    lists of GRAPH_FIELDS): what a full sync, which sends the graph as it is, makes redundant.
    False for anything else (RPC requests, attribute updates, an empty or unparseable
    message), and for any message carrying a delete: an edge's sweep removes only what its
    graph holds (a device of a release before the graph is not there), and a delete applied
    twice is harmless, so deletes are always delivered."""
    try:
        msg = edge_pb2.DownlinkMsg.FromString(payload)
    except DecodeError:  # kept: not ours to judge
        return False
    fields = {fd.name for fd, _ in msg.ListFields()}
    if not fields or not fields <= GRAPH_FIELDS:
        return False
    return not any(getattr(entry, "msgType", None) == edge_pb2.ENTITY_DELETED_RPC_MESSAGE
                   for name in fields for entry in getattr(msg, name))


def device_deleted(device_id: uuid.UUID) -> bytes:
    """deviceUpdateMsg ENTITY_DELETED (the device unassigned from, or deleted for, the edge)."""
    msb, lsb = uuid_halves(device_id)
    return _serialized(edge_pb2.DownlinkMsg(deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_DELETED_RPC_MESSAGE, idMSB=msb, idLSB=lsb)]))


def stamped_size(payload_size: int) -> int:
    """An upper bound of the ResponseMsg carrying a DownlinkMsg of ``payload_size`` bytes once
    stamped with its downlinkMsgId and cloudTimeMillis (what an edge's maxInboundMessageSize
    limits)."""
    return payload_size + ENVELOPE_BYTES


ENVELOPE_BYTES = 32
"""downlinkMsgId (tag + up to 5 bytes), cloudTimeMillis (field 1000: 2-byte tag + up to 10),
and the ResponseMsg's own tag and length (up to 6)."""
