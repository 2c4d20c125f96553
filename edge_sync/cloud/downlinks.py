"""DownlinkMsgs the reference cloud sends: a device and its credentials, shared attributes, the
end of a sync. Each builder returns the serialized message without downlinkMsgId and
cloudTimeMillis; the stream sets both when it sends (`stamp`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from edge_sync.cloud.records import CloudDevice
from edge_sync.common.wire import Owner, credentials_json, device_json, to_kv, uuid_halves
from edge_sync.proto import edge_pb2, transport_pb2


def _serialized(msg: edge_pb2.DownlinkMsg) -> bytes:
    data: bytes = msg.SerializeToString()  # typed Any: protobuf has no stubs installed
    return data


def device_created(device: CloudDevice, tenant_id: uuid.UUID | None = None) -> list[bytes]:
    """deviceUpdateMsg ENTITY_CREATED, then deviceCredentialsUpdateMsg (when it has a token).
    The device JSON is ThingsBoard's; with the edge's ``tenant_id`` it names the tenant and the
    NULL_UUID customer, as ThingsBoard's does (the edge reads neither)."""
    msb, lsb = uuid_halves(device.id)
    body = {"id": str(device.id), "name": device.name, "type": device.type,
            "label": device.label, "created_time": device.created_time}
    owner = Owner.of(tenant_id, None) if tenant_id is not None else None
    out = [edge_pb2.DownlinkMsg(deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=device_json(body, owner))]).SerializeToString()]
    if device.token:
        cred = credentials_json({"deviceId": str(device.id), "credentialsId": device.token})
        out.append(edge_pb2.DownlinkMsg(deviceCredentialsUpdateMsg=[
            edge_pb2.DeviceCredentialsUpdateMsg(entity=cred)]).SerializeToString())
    return out


def shared_attributes(device: CloudDevice, values: Mapping[str, Any], ts: int) -> bytes:
    """entityData.attributesUpdatedMsg with postAttributeScope SHARED_SCOPE (shared=true)."""
    msb, lsb = uuid_halves(device.id)
    data = edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
        attributesUpdatedMsg=transport_pb2.PostAttributeMsg(
            kv=[to_kv(k, v) for k, v in values.items()], shared=True),
        postAttributeScope="SHARED_SCOPE", attributeTs=ts)
    return _serialized(edge_pb2.DownlinkMsg(entityData=[data]))


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
