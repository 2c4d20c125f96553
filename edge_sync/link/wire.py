"""The protobuf boundary, shared by the edge and the reference cloud: UUID halves, key/value
lists, and the mapping between the project's events and ThingsBoard's uplink payloads
(docs/link-protocol.md). Nothing outside edge_sync/link and edge_sync/cloud touches protobuf.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from edge_sync.errors import BadRequest
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.records import Action, StoredEvent

_INT64 = 1 << 64
_SIGN = 1 << 63

UPDATE_TYPE = {
    Action.ADDED: edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
    Action.UPDATED: edge_pb2.ENTITY_UPDATED_RPC_MESSAGE,
    Action.DELETED: edge_pb2.ENTITY_DELETED_RPC_MESSAGE,
}
ACTION_OF_UPDATE = {v: k for k, v in UPDATE_TYPE.items()}
ALARM_UPDATE_TYPE = {
    **UPDATE_TYPE,
    Action.ALARM_ACK: edge_pb2.ALARM_ACK_RPC_MESSAGE,
    Action.ALARM_CLEAR: edge_pb2.ALARM_CLEAR_RPC_MESSAGE,
}
ACTION_OF_ALARM_UPDATE = {v: k for k, v in ALARM_UPDATE_TYPE.items()}


# -- UUIDs -------------------------------------------------------------------------------------


def uuid_halves(value: uuid.UUID) -> tuple[int, int]:
    """(MSB, LSB) as signed int64, ThingsBoard's layout."""
    msb, lsb = value.int >> 64, value.int & (_INT64 - 1)
    return (msb - _INT64 if msb & _SIGN else msb, lsb - _INT64 if lsb & _SIGN else lsb)


def uuid_of(msb: int, lsb: int) -> uuid.UUID:
    return uuid.UUID(int=((msb % _INT64) << 64) | (lsb % _INT64))


# -- key/value lists ---------------------------------------------------------------------------


def to_kv(key: str, value: Any) -> transport_pb2.KeyValueProto:
    kv = transport_pb2.KeyValueProto(key=key)
    if isinstance(value, bool):
        kv.type, kv.bool_v = transport_pb2.BOOLEAN_V, value
    elif isinstance(value, int):
        kv.type, kv.long_v = transport_pb2.LONG_V, value
    elif isinstance(value, float):
        kv.type, kv.double_v = transport_pb2.DOUBLE_V, value
    elif isinstance(value, str):
        kv.type, kv.string_v = transport_pb2.STRING_V, value
    else:
        kv.type, kv.json_v = transport_pb2.JSON_V, json.dumps(value, separators=(",", ":"))
    return kv


def from_kv(kv: transport_pb2.KeyValueProto) -> Any:
    match kv.type:
        case transport_pb2.BOOLEAN_V:
            return kv.bool_v
        case transport_pb2.LONG_V:
            return kv.long_v
        case transport_pb2.DOUBLE_V:
            return kv.double_v
        case transport_pb2.STRING_V:
            return kv.string_v
        case transport_pb2.JSON_V:
            try:
                return json.loads(kv.json_v)
            except ValueError as exc:
                raise BadRequest(f"key {kv.key!r}: JSON_V value is not JSON") from exc
    raise BadRequest(f"key {kv.key!r}: unknown value type {kv.type}")


def kv_dict(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        if not kv.key:
            raise BadRequest("a key/value pair has an empty key")
        out[kv.key] = from_kv(kv)
    return out


# -- ThingsBoard entity JSON -------------------------------------------------------------------


def device_json(body: dict[str, Any]) -> str:
    """The edge's device body -> ThingsBoard's device JSON text."""
    return json.dumps({
        "id": {"entityType": "DEVICE", "id": body["id"]},
        "name": body.get("name", ""),
        "type": body.get("type", "default"),
        "label": body.get("label", ""),
        "createdTime": body.get("created_time", 0),
    }, separators=(",", ":"))


def alarm_json(body: dict[str, Any]) -> str:
    """The edge's alarm body -> ThingsBoard's alarm JSON text."""
    return json.dumps({
        "id": {"entityType": "ALARM", "id": body["id"]},
        "originator": {"entityType": "DEVICE", "id": body["originator"]},
        "type": body.get("type", ""),
        "severity": body.get("severity", "CRITICAL"),
        "status": body.get("status", "ACTIVE_UNACK"),
        "startTs": body.get("startTs", 0),
        "details": body.get("details"),
    }, separators=(",", ":"))


def credentials_json(body: dict[str, Any]) -> str:
    return json.dumps({
        "deviceId": {"entityType": "DEVICE", "id": body["deviceId"]},
        "credentialsType": body.get("credentialsType", "ACCESS_TOKEN"),
        "credentialsId": body["credentialsId"],
    }, separators=(",", ":"))


def parse_entity_json(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{what}: entity is not JSON") from exc
    if not isinstance(value, dict):
        raise BadRequest(f"{what}: entity is not a JSON object")
    return value


def entity_id_in(obj: dict[str, Any], field: str, what: str) -> uuid.UUID:
    ref = obj.get(field)
    raw = ref.get("id") if isinstance(ref, dict) else ref
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise BadRequest(f"{what}: {field} is not a UUID") from exc


# -- edge event -> uplink payload --------------------------------------------------------------

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


# -- uplink payload -> what the cloud applies ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    """An uplink payload as the reference cloud records it."""

    seq: int | None  # edgeSeqId, None from a peer without the extension
    entity_type: str
    entity_id: uuid.UUID
    action: str
    body: Any
    ts: int


def _seq(msg: Any) -> int | None:
    return msg.edgeSeqId if msg.HasField("edgeSeqId") else None


def uplink_events(uplink: edge_pb2.UplinkMsg) -> list[AppliedEvent]:
    """Every payload of an UplinkMsg as AppliedEvents, validated; BadRequest names the first bad
    one (with its edgeSeqId in the exception's ``seq`` attribute when it has one)."""
    out: list[AppliedEvent] = []
    for data in uplink.entityData:
        out.append(_guard(data, _entity_data))
    for dev in uplink.deviceUpdateMsg:
        out.append(_guard(dev, _device_update))
    for cred in uplink.deviceCredentialsUpdateMsg:
        out.append(_guard(cred, _credentials_update))
    for alarm in uplink.alarmUpdateMsg:
        out.append(_guard(alarm, _alarm_update))
    for rpc in uplink.deviceRpcCallMsg:
        out.append(_guard(rpc, _rpc_call))
    for name in ("relationUpdateMsg", "assetUpdateMsg"):
        for msg in getattr(uplink, name):
            out.append(_guard(msg, lambda m, n=name: _opaque(m, n)))
    return out


class PayloadRejected(BadRequest):
    def __init__(self, message: str, seq: int | None) -> None:
        super().__init__(message)
        self.seq = seq


def _guard(msg: Any, parse: Any) -> AppliedEvent:
    try:
        return parse(msg)
    except PayloadRejected:
        raise
    except BadRequest as exc:
        seq = _seq(msg)
        where = f"payload with edgeSeqId {seq}" if seq is not None else "payload"
        raise PayloadRejected(f"{where}: {exc}", seq) from exc
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise PayloadRejected(f"payload: malformed ({type(exc).__name__}: {str(exc)[:200]})",
                              _seq(msg)) from exc


def _entity_data(d: edge_pb2.EntityDataProto) -> AppliedEvent:
    if not d.entityType:
        raise BadRequest("entityType is empty")
    eid = uuid_of(d.entityIdMSB, d.entityIdLSB)
    if eid.int == 0:
        raise BadRequest("entity id is nil")
    if d.HasField("postTelemetryMsg"):
        lists = d.postTelemetryMsg.tsKvList
        if not lists:
            raise BadRequest("postTelemetryMsg has no tsKvList")
        values: dict[str, Any] = {}
        ts = lists[0].ts
        for entry in lists:
            if entry.ts <= 0:
                raise BadRequest(f"telemetry ts {entry.ts} is not positive")
            if not entry.kv:
                raise BadRequest("telemetry entry has no key/value pairs")
            values.update(kv_dict(entry.kv))
        body = ({"ts": ts, "values": values} if len(lists) == 1 else
                [{"ts": e.ts, "values": kv_dict(e.kv)} for e in lists])
        return AppliedEvent(_seq(d), d.entityType, eid, Action.TIMESERIES_UPDATED, body, ts)
    for field, action in (("postAttributesMsg", Action.ATTRIBUTES_UPDATED),
                          ("attributesUpdatedMsg", Action.ATTRIBUTES_UPDATED)):
        if d.HasField(field):
            kvs = getattr(d, field).kv
            if not kvs:
                raise BadRequest(f"{field} has no key/value pairs")
            scope = d.postAttributeScope or "CLIENT_SCOPE"
            if scope not in ("CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE"):
                raise BadRequest(f"unknown attribute scope {scope!r}")
            ts = d.attributeTs if d.HasField("attributeTs") else 0
            return AppliedEvent(_seq(d), d.entityType, eid, action,
                                {"scope": scope, "kv": kv_dict(kvs)}, ts)
    if d.HasField("attributeDeleteMsg"):
        names = list(d.attributeDeleteMsg.attributeNames)
        return AppliedEvent(_seq(d), d.entityType, eid, Action.ATTRIBUTES_DELETED,
                            {"scope": d.attributeDeleteMsg.scope, "keys": names}, 0)
    raise BadRequest("entityData carries no telemetry, attributes or attribute delete")


def _device_update(m: edge_pb2.DeviceUpdateMsg) -> AppliedEvent:
    action = ACTION_OF_UPDATE.get(m.msgType)
    if action is None:
        raise BadRequest(f"deviceUpdateMsg type {m.msgType} is not create/update/delete")
    eid = uuid_of(m.idMSB, m.idLSB)
    body = parse_entity_json(m.entity, "deviceUpdateMsg") if m.entity else {}
    if action != Action.DELETED:
        if entity_id_in(body, "id", "deviceUpdateMsg") != eid:
            raise BadRequest("deviceUpdateMsg: entity id differs from idMSB/idLSB")
        if not body.get("name"):
            raise BadRequest("deviceUpdateMsg: device has no name")
    return AppliedEvent(_seq(m), "DEVICE", eid, action, body, int(body.get("createdTime", 0)))


def _credentials_update(m: edge_pb2.DeviceCredentialsUpdateMsg) -> AppliedEvent:
    body = parse_entity_json(m.entity, "deviceCredentialsUpdateMsg")
    eid = entity_id_in(body, "deviceId", "deviceCredentialsUpdateMsg")
    if not body.get("credentialsId"):
        raise BadRequest("deviceCredentialsUpdateMsg: no credentialsId")
    return AppliedEvent(_seq(m), "DEVICE", eid, Action.CREDENTIALS_UPDATED, body, 0)


def _alarm_update(m: edge_pb2.AlarmUpdateMsg) -> AppliedEvent:
    action = ACTION_OF_ALARM_UPDATE.get(m.msgType)
    if action is None:
        raise BadRequest(f"alarmUpdateMsg type {m.msgType} unknown")
    eid = uuid_of(m.idMSB, m.idLSB)
    body = parse_entity_json(m.entity, "alarmUpdateMsg") if m.entity else {}
    if action != Action.DELETED:
        if entity_id_in(body, "id", "alarmUpdateMsg") != eid:
            raise BadRequest("alarmUpdateMsg: entity id differs from idMSB/idLSB")
        if not body.get("type"):
            raise BadRequest("alarmUpdateMsg: alarm has no type")
    return AppliedEvent(_seq(m), "ALARM", eid, action, body, int(body.get("startTs") or 0))


def _rpc_call(m: edge_pb2.DeviceRpcCallMsg) -> AppliedEvent:
    eid = uuid_of(m.deviceIdMSB, m.deviceIdLSB)
    if eid.int == 0:
        raise BadRequest("deviceRpcCallMsg: device id is nil")
    if m.HasField("responseMsg"):
        try:
            response = json.loads(m.responseMsg.response) if m.responseMsg.response else None
        except ValueError:
            response = m.responseMsg.response
        body = {"requestId": m.requestId, "response": response, "error": m.responseMsg.error}
    else:
        body = {"requestId": m.requestId, "method": m.requestMsg.method,
                "params": m.requestMsg.params}
    return AppliedEvent(_seq(m), "DEVICE", eid, Action.RPC_CALL, body, 0)


def _opaque(m: Any, name: str) -> AppliedEvent:
    body = parse_entity_json(m.entity, name) if getattr(m, "entity", "") else {}
    msb = getattr(m, "idMSB", 0) or getattr(m, "deviceIdMSB", 0)
    lsb = getattr(m, "idLSB", 0) or getattr(m, "deviceIdLSB", 0)
    return AppliedEvent(_seq(m), name.removesuffix("Msg").upper(), uuid_of(msb, lsb), name, body, 0)
