"""The reference cloud's side of the uplink mapping: every payload of an UplinkMsg validated
into an AppliedEvent, or refused with PayloadRejected naming the payload and its edgeSeqId.

Entity JSON is accepted in ThingsBoard 4.x form (typed ids, tenantId and customerId, as the edge
sends it) and in the earlier form without them; a typed id must name the right entityType."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_sync.cloud.rpc import Answer
from edge_sync.common.entity_graph import relation_key
from edge_sync.common.json_body import parse_json
from edge_sync.common.wire import (
    ACTION_OF_ALARM_UPDATE,
    ACTION_OF_UPDATE,
    entity_id_in,
    kv_dict,
    parse_entity_json,
    uuid_of,
)
from edge_sync.errors import BadRequest, PayloadRejected
from edge_sync.proto import edge_pb2
from edge_sync.storable import check_json_value
from edge_sync.storage.records import Action


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    """An uplink payload as the reference cloud records it."""

    seq: int | None  # edgeSeqId, None from a peer without the extension
    entity_type: str
    entity_id: uuid.UUID
    action: str
    body: Any
    ts: int
    answer: Answer | None = None
    """For the answer to a server-side RPC request of the cloud (a deviceRpcCallMsg with
    responseMsg and requestUuid): what it answers, for cloud/rpc.apply_answer."""


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
    for rel in uplink.relationUpdateMsg:
        out.append(_guard(rel, _relation_update))
    for asset in uplink.assetUpdateMsg:
        out.append(_guard(asset, _asset_update))
    return out


def _guard(msg: Any, parse: Callable[[Any], AppliedEvent]) -> AppliedEvent:
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
        scope = d.attributeDeleteMsg.scope
        if scope not in ("CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE"):
            raise BadRequest(f"attributeDeleteMsg: unknown attribute scope {scope[:40]!r}")
        if not names:
            raise BadRequest("attributeDeleteMsg has no attributeNames")
        return AppliedEvent(_seq(d), d.entityType, eid, Action.ATTRIBUTES_DELETED,
                            {"scope": scope, "keys": names}, 0)
    keys = _timeseries_delete_keys(d)
    if keys is not None:
        if not keys:
            raise BadRequest("timeseriesDeleteMsg has no keys")
        return AppliedEvent(_seq(d), d.entityType, eid, Action.TIMESERIES_DELETED,
                            {"keys": keys}, 0)
    raise BadRequest("entityData carries no telemetry, attributes, attribute or timeseries delete")


def _timeseries_delete_keys(d: edge_pb2.EntityDataProto) -> list[str] | None:
    """The keys of a timeseries delete (EntityDataProto's edge-sync extension
    ``timeseriesDeleteMsg = 1001``: ThingsBoard has no uplink for it and skips the field as
    unknown); None when the message carries none."""
    if not d.HasField("timeseriesDeleteMsg"):
        return None
    return [str(k) for k in d.timeseriesDeleteMsg.keys]


def _entity_update(m: Any, name: str, entity_type: str, actions: Mapping[Any, Action],
                   required: str, ts_field: str) -> AppliedEvent:
    """A create/update/delete of one entity: its typed id must match idMSB/LSB, the field
    ``required`` must be set and its owner ids (when present) well formed."""
    action = actions.get(m.msgType)
    if action is None:
        raise BadRequest(f"{name} type {m.msgType} is not one of {sorted(actions.values())}")
    eid = uuid_of(m.idMSB, m.idLSB)
    body = parse_entity_json(m.entity, name) if m.entity else {}
    if action != Action.DELETED:
        if entity_id_in(body, "id", name, entity_type) != eid:
            raise BadRequest(f"{name}: entity id differs from idMSB/idLSB")
        if not body.get(required):
            raise BadRequest(f"{name}: {entity_type.lower()} has no {required}")
        _owner_ids(body, name)
    return AppliedEvent(_seq(m), entity_type, eid, action, body, int(body.get(ts_field) or 0))


def _device_update(m: edge_pb2.DeviceUpdateMsg) -> AppliedEvent:
    return _entity_update(m, "deviceUpdateMsg", "DEVICE", ACTION_OF_UPDATE, "name", "createdTime")


def _alarm_update(m: edge_pb2.AlarmUpdateMsg) -> AppliedEvent:
    return _entity_update(m, "alarmUpdateMsg", "ALARM", ACTION_OF_ALARM_UPDATE, "type", "startTs")


def _credentials_update(m: edge_pb2.DeviceCredentialsUpdateMsg) -> AppliedEvent:
    body = parse_entity_json(m.entity, "deviceCredentialsUpdateMsg")
    eid = entity_id_in(body, "deviceId", "deviceCredentialsUpdateMsg", "DEVICE")
    if not body.get("credentialsId"):
        raise BadRequest("deviceCredentialsUpdateMsg: no credentialsId")
    return AppliedEvent(_seq(m), "DEVICE", eid, Action.CREDENTIALS_UPDATED, body, 0)


def _rpc_answer(text: str) -> Any:
    """A device's RPC answer as the cloud keeps it: the JSON value of the text when it is JSON
    the store can hold, else the text itself (a device may answer any text, as ThingsBoard's
    transports take it; a number beyond 64 bits, NaN or a lone surrogate stays text rather
    than failing the uplink at the store)."""
    if not text:
        return None
    try:
        value = parse_json(text.encode("utf-8", "surrogatepass"))
        check_json_value("rpc answer", value)
    except BadRequest:
        return text
    return value


def _rpc_call(m: edge_pb2.DeviceRpcCallMsg) -> AppliedEvent:
    eid = uuid_of(m.deviceIdMSB, m.deviceIdLSB)
    if eid.int == 0:
        raise BadRequest("deviceRpcCallMsg: device id is nil")
    if m.HasField("responseMsg"):
        response = _rpc_answer(m.responseMsg.response)
        body = {"requestId": m.requestId, "response": response, "error": m.responseMsg.error}
        if m.requestUuidMSB or m.requestUuidLSB:  # the answer to a request of the cloud
            request_uuid = uuid_of(m.requestUuidMSB, m.requestUuidLSB)
            body.update(requestUuid=str(request_uuid), oneway=m.oneway,
                        expirationTime=m.expirationTime)
            answer = Answer(request_uuid, eid, m.responseMsg.response,
                            m.responseMsg.error or None)
            return AppliedEvent(_seq(m), "DEVICE", eid, Action.RPC_CALL, body, 0, answer)
    else:
        body = {"requestId": m.requestId, "method": m.requestMsg.method,
                "params": m.requestMsg.params}
    return AppliedEvent(_seq(m), "DEVICE", eid, Action.RPC_CALL, body, 0)


def _owner_ids(body: dict[str, Any], what: str) -> None:
    """tenantId and customerId, when present, are typed TENANT / CUSTOMER ids."""
    for field, entity_type in (("tenantId", "TENANT"), ("customerId", "CUSTOMER")):
        if body.get(field) is not None:
            entity_id_in(body, field, what, entity_type)


def _asset_update(m: edge_pb2.AssetUpdateMsg) -> AppliedEvent:
    """An asset the edge created, changed or deleted (ThingsBoard's AssetEdgeProcessor): Asset
    JSON whose id is idMSB/idLSB and that has a name; a deletion carries the id only."""
    if uuid_of(m.idMSB, m.idLSB).int == 0:
        raise BadRequest("assetUpdateMsg: asset id is nil")
    return _entity_update(m, "assetUpdateMsg", "ASSET", ACTION_OF_UPDATE, "name", "createdTime")


_RELATION_ACTION = {
    edge_pb2.ENTITY_CREATED_RPC_MESSAGE: Action.RELATION_ADD_OR_UPDATE,
    edge_pb2.ENTITY_UPDATED_RPC_MESSAGE: Action.RELATION_ADD_OR_UPDATE,
    edge_pb2.ENTITY_DELETED_RPC_MESSAGE: Action.RELATION_DELETED,
}


def _relation_update(m: edge_pb2.RelationUpdateMsg) -> AppliedEvent:
    """A relation the edge added or deleted (ThingsBoard's RelationEdgeProcessor): EntityRelation
    JSON with typed ``from`` and ``to`` ids and a type. Recorded under its ``from`` entity."""
    action = _RELATION_ACTION.get(m.msgType)
    if action is None:
        raise BadRequest(f"relationUpdateMsg type {m.msgType} is not a relation change")
    body = parse_entity_json(m.entity, "relationUpdateMsg")
    key = relation_key(body)
    if key is None:
        raise BadRequest("relationUpdateMsg: from and to must be typed entity ids")
    if not isinstance(body.get("type"), str) or not body["type"]:
        raise BadRequest("relationUpdateMsg: relation has no type")
    src = key[0]
    return AppliedEvent(_seq(m), src.kind, uuid.UUID(src.key), action, body, 0)
