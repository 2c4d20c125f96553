"""The edge's side of the uplink mapping: one stored event -> the ThingsBoard uplink payload
that carries it, with the edge seq in its ``edgeSeqId`` extension (docs/link-protocol.md). An
ATTRIBUTES_REQUEST event (a device asked for shared attributes the edge does not hold) becomes
an AttributesRequestMsg; the cloud answers with an attributes downlink.

Entity JSON names the edge's tenant and customer (``Owner``): they are taken when the event is
sent, from the identity of the connection, so an event recorded before the edge ever connected
carries them too. Alarm JSON names the tenant only: ThingsBoard gives an alarm its originator's
customer (``alarm_json``). Likewise a device's deviceProfileId: the synced profile named by its type, as
the Owner knows them when the event is sent.

Edge-originated changes of the entity graph (docs/edge-entities.md, "What goes to the cloud"),
matched against ThingsBoard Edge's AssetCloudProcessor, RelationCloudProcessor and
EdgeMsgConstructorUtils, and the server's EdgeUplinkMessageDispatcher: an asset's ADDED /
UPDATED / DELETED an AssetUpdateMsg (a delete with the id halves only, as constructAssetDeleteMsg),
a device's DELETED a DeviceUpdateMsg with the id halves only, a relation change a
RelationUpdateMsg with the EntityRelation JSON, ATTRIBUTES_DELETED an EntityDataProto's
attributeDeleteMsg, a request for a rule chain's metadata a RuleChainMetadataRequestMsg, a
request for an entity's relations a RelationRequestMsg (RelationCloudProcessor
.convertRelationRequestEventToUplink: the entity's id halves and type).
TIMESERIES_DELETED has no ThingsBoard message (ThingsBoard Edge keeps such deletes local): an
EntityDataProto with only the entity, which ThingsBoard applies as a no-op, and the keys in the
edge-sync extension field 1001 (``timeseriesDeleteMsg``) for the reference cloud.

What a rule chain's push to cloud node made (actors/rule_outcomes.py) goes as ThingsBoard
Edge's TbMsgPushToCloudNode events go (UplinkMsgMapper, EdgeMsgConstructorUtils
.constructEntityDataMsg): a pushed ATTRIBUTES_UPDATED message (body ``attributesUpdated``) as
entityData's attributesUpdatedMsg, which ThingsBoard saves itself, where a device's own post
goes as postAttributesMsg, for the cloud's rule chain; a device's RPC request to the server
(an RPC_CALL body with neither ``response`` nor ``error``) as a deviceRpcCallMsg with a
requestMsg."""

from __future__ import annotations

import json
import uuid
from typing import Any

from edge_sync.common.wire import (
    ALARM_UPDATE_TYPE,
    RELATION_UPDATE_TYPE,
    SCOPES,
    UPDATE_TYPE,
    Owner,
    alarm_json,
    compact_json,
    credentials_json,
    device_json,
    owned_json,
    rpc_error_name,
    to_kv,
    uuid_halves,
)
from edge_sync.errors import BadRequest
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.records import NIL_UUID, Action, StoredEvent

PayloadField = str  # the UplinkMsg list the payload goes into, e.g. "entityData"


def event_payload(event: StoredEvent, owner: Owner) -> tuple[PayloadField, Any]:
    """The uplink payload for one event (edgeSeqId set), its entity JSON owned by ``owner``.
    A peer that announced no tenant (nil: not ThingsBoard, which always does) gets the JSON
    without tenantId and customerId, and no deviceProfileId from the owner's synced profiles.
    BadRequest when the event has no mapping."""
    owned: Owner | None = owner if owner.tenant_id != NIL_UUID else None
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
        scope = body.get("scope") or "CLIENT_SCOPE"
        if scope not in SCOPES:
            raise BadRequest(f"attribute scope {str(scope)[:40]!r} is not one of {', '.join(SCOPES)}")
        msg = edge_pb2.EntityDataProto(
            entityIdMSB=msb, entityIdLSB=lsb, entityType=event.entity_type,
            postAttributeScope=scope, attributeTs=int(body.get("ts") or event.ts),
            edgeSeqId=event.seq)
        kv = transport_pb2.PostAttributeMsg(kv=[to_kv(k, v) for k, v in body["kv"].items()])
        if body.get("attributesUpdated"):  # an ATTRIBUTES_UPDATED message a chain pushed
            msg.attributesUpdatedMsg.CopyFrom(kv)
        else:
            msg.postAttributesMsg.CopyFrom(kv)
        return "entityData", msg
    if event.type == "ALARM" and action in ALARM_UPDATE_TYPE:
        msg = edge_pb2.AlarmUpdateMsg(
            msgType=ALARM_UPDATE_TYPE[Action(action)], idMSB=msb, idLSB=lsb,
            entity=alarm_json(body, action, event.ts, owned), edgeSeqId=event.seq)
        return "alarmUpdateMsg", msg
    if action == Action.RPC_CALL:
        if not RPC_ANSWER_KEYS & body.keys():  # a device's request, pushed
            return "deviceRpcCallMsg", _rpc_request(event, msb, lsb)
        return "deviceRpcCallMsg", _rpc_response(event, msb, lsb)
    if action == Action.ATTRIBUTES_REQUEST:
        scope = body.get("scope") or "SHARED_SCOPE"
        if scope not in SCOPES:
            raise BadRequest(f"attribute scope {str(scope)[:40]!r} is not one of {', '.join(SCOPES)}")
        msg = edge_pb2.AttributesRequestMsg(entityIdMSB=msb, entityIdLSB=lsb,
                                            entityType=event.entity_type, scope=scope,
                                            edgeSeqId=event.seq)
        return "attributesRequestMsg", msg
    if action == Action.ATTRIBUTES_DELETED:
        scope = body.get("scope")
        if scope not in SCOPES:
            raise BadRequest(f"attribute scope {str(scope)[:40]!r} is not one of {', '.join(SCOPES)}")
        msg = edge_pb2.EntityDataProto(
            entityIdMSB=msb, entityIdLSB=lsb, entityType=event.entity_type,
            attributeDeleteMsg=edge_pb2.AttributeDeleteMsg(
                scope=scope, attributeNames=[str(k) for k in body["keys"]]),
            edgeSeqId=event.seq)
        return "entityData", msg
    if action == Action.TIMESERIES_DELETED:
        msg = edge_pb2.EntityDataProto(
            entityIdMSB=msb, entityIdLSB=lsb, entityType=event.entity_type,
            timeseriesDeleteMsg=edge_pb2.TimeseriesDeleteMsg(keys=[str(k) for k in body["keys"]]),
            edgeSeqId=event.seq)
        return "entityData", msg
    if action == Action.RULE_CHAIN_METADATA_REQUEST:
        return "ruleChainMetadataRequestMsg", edge_pb2.RuleChainMetadataRequestMsg(
            ruleChainIdMSB=msb, ruleChainIdLSB=lsb, edgeSeqId=event.seq)
    if action == Action.RELATION_REQUEST:
        return "relationRequestMsg", edge_pb2.RelationRequestMsg(
            entityIdMSB=msb, entityIdLSB=lsb, entityType=event.entity_type, edgeSeqId=event.seq)
    if event.type == "RELATION" and action in RELATION_UPDATE_TYPE:
        msg = edge_pb2.RelationUpdateMsg(msgType=RELATION_UPDATE_TYPE[Action(action)],
                                         entity=compact_json(body), edgeSeqId=event.seq)
        return "relationUpdateMsg", msg
    if event.type == "ASSET" and action in UPDATE_TYPE:
        msg = edge_pb2.AssetUpdateMsg(msgType=UPDATE_TYPE[Action(action)], idMSB=msb, idLSB=lsb,
                                      edgeSeqId=event.seq)
        if action != Action.DELETED:
            msg.entity = owned_json(body, owned)
        return "assetUpdateMsg", msg
    if event.type == "DEVICE" and action == Action.DELETED:
        return "deviceUpdateMsg", edge_pb2.DeviceUpdateMsg(
            msgType=edge_pb2.ENTITY_DELETED_RPC_MESSAGE, idMSB=msb, idLSB=lsb, edgeSeqId=event.seq)
    if event.type == "DEVICE" and action in UPDATE_TYPE:
        msg = edge_pb2.DeviceUpdateMsg(
            msgType=UPDATE_TYPE[Action(action)], idMSB=msb, idLSB=lsb,
            entity=device_json(body, owned), edgeSeqId=event.seq)
        return "deviceUpdateMsg", msg
    if action == Action.CREDENTIALS_UPDATED:
        msg = edge_pb2.DeviceCredentialsUpdateMsg(entity=credentials_json(body), edgeSeqId=event.seq)
        return "deviceCredentialsUpdateMsg", msg
    raise BadRequest(f"no uplink mapping for {event.type} {action}")


RPC_ANSWER_KEYS = frozenset(("response", "responseText", "error"))
"""An RPC_CALL body with one of these is a device's answer; without, its own request."""


def _rpc_request(event: StoredEvent, msb: int, lsb: int) -> edge_pb2.DeviceRpcCallMsg:
    """A device's RPC request to the server a rule chain pushed (TO_SERVER_RPC_REQUEST), as
    ThingsBoard Edge's EdgeMsgConstructorUtils.constructDeviceRpcCallMsg sends a body with
    neither ``response`` nor ``error``: requestMsg {method, params}, requestId, serviceId and
    sessionId when the body has them."""
    body = event.body
    msg = edge_pb2.DeviceRpcCallMsg(
        deviceIdMSB=msb, deviceIdLSB=lsb, requestId=int(body["requestId"]),
        requestMsg=edge_pb2.RpcRequestMsg(method=str(body["method"]), params=str(body["params"])),
        edgeSeqId=event.seq)
    for key in ("serviceId", "sessionId"):
        if body.get(key) is not None:
            setattr(msg, key, str(body[key]))
    return msg


def _rpc_response(event: StoredEvent, msb: int, lsb: int) -> edge_pb2.DeviceRpcCallMsg:
    """A device's RPC answer, or the edge's report that a request failed (``error``: TIMEOUT
    for an expired or unanswered one, as ThingsBoard Edge reports both). ThingsBoard finds the
    waiting request by requestUuid, so the request's uuid, oneway and expirationTime are echoed
    when the event body has them. The error is always an RpcError name (``rpc_error_name``):
    ThingsBoard's RpcError.valueOf throws on any other text and fails the whole message. An
    answer that is not JSON (``responseText``) goes as its text, as ThingsBoard's transports
    pass a device's payload on; a JSON answer as compact JSON text."""
    body = event.body
    if body.get("error"):
        answer = edge_pb2.RpcResponseMsg(error=rpc_error_name(str(body["error"])))
    elif "responseText" in body:  # an answer that is not JSON: its text as the device sent it
        answer = edge_pb2.RpcResponseMsg(response=str(body["responseText"]))
    else:
        answer = edge_pb2.RpcResponseMsg(
            response=json.dumps(body.get("response"), separators=(",", ":")))
    msg = edge_pb2.DeviceRpcCallMsg(
        deviceIdMSB=msb, deviceIdLSB=lsb, requestId=int(body["requestId"]), responseMsg=answer,
        edgeSeqId=event.seq)
    if body.get("requestUuid") is not None:
        msg.requestUuidMSB, msg.requestUuidLSB = uuid_halves(uuid.UUID(str(body["requestUuid"])))
    if body.get("oneway") is not None:
        msg.oneway = bool(body["oneway"])
    if body.get("expirationTime") is not None:
        msg.expirationTime = int(body["expirationTime"])
    return msg
