"""The edge's side of the uplink mapping: one stored event -> the ThingsBoard uplink payload
that carries it, with the edge seq in its ``edgeSeqId`` extension (docs/link-protocol.md)."""

from __future__ import annotations

import json
from typing import Any

from edge_sync.common.wire import (
    ALARM_UPDATE_TYPE,
    UPDATE_TYPE,
    alarm_json,
    credentials_json,
    device_json,
    to_kv,
    uuid_halves,
)
from edge_sync.errors import BadRequest
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.records import Action, StoredEvent

PayloadField = str  # the UplinkMsg list the payload goes into, e.g. "entityData"


def event_payload(event: StoredEvent) -> tuple[PayloadField, Any]:
    """The uplink payload for one event (edgeSeqId set). BadRequest when it has no mapping."""
    msb, lsb = uuid_halves(event.entity_id)
    body = event.body
    action = event.action
    if action == Action.TIMESERIES_UPDATED:
        ts_kv = transport_pb2.TsKvListProto(
            ts=body["ts"], kv=[to_kv(k, v) for k, v in body["values"].items()])
        msg = edge_pb2.EntityDataProto(
            entityIdMSB=msb, entityIdLSB=lsb, entityType=event.entity_type,
            postTelemetryMsg=transport_pb2.PostTelemetryMsg(tsKvList=[ts_kv]),
            edgeSeqId=event.seq)
        return "entityData", msg
    if action == Action.ATTRIBUTES_UPDATED:
        msg = edge_pb2.EntityDataProto(
            entityIdMSB=msb, entityIdLSB=lsb, entityType=event.entity_type,
            postAttributesMsg=transport_pb2.PostAttributeMsg(
                kv=[to_kv(k, v) for k, v in body["kv"].items()]),
            postAttributeScope=body.get("scope", "CLIENT_SCOPE"), edgeSeqId=event.seq)
        return "entityData", msg
    if event.type == "ALARM" and action in ALARM_UPDATE_TYPE:
        msg = edge_pb2.AlarmUpdateMsg(
            msgType=ALARM_UPDATE_TYPE[Action(action)], idMSB=msb, idLSB=lsb,
            entity=alarm_json(body), edgeSeqId=event.seq)
        return "alarmUpdateMsg", msg
    if action == Action.RPC_CALL:
        msg = edge_pb2.DeviceRpcCallMsg(
            deviceIdMSB=msb, deviceIdLSB=lsb, requestId=int(body["requestId"]),
            responseMsg=edge_pb2.RpcResponseMsg(
                response=json.dumps(body.get("response"), separators=(",", ":"))),
            edgeSeqId=event.seq)
        return "deviceRpcCallMsg", msg
    if event.type == "DEVICE" and action in UPDATE_TYPE:
        msg = edge_pb2.DeviceUpdateMsg(
            msgType=UPDATE_TYPE[Action(action)], idMSB=msb, idLSB=lsb,
            entity=device_json(body), edgeSeqId=event.seq)
        return "deviceUpdateMsg", msg
    if action == Action.CREDENTIALS_UPDATED:
        msg = edge_pb2.DeviceCredentialsUpdateMsg(entity=credentials_json(body), edgeSeqId=event.seq)
        return "deviceCredentialsUpdateMsg", msg
    raise BadRequest(f"no uplink mapping for {event.type} {action}")
