"""The protobuf boundary shared by the edge and the reference cloud: UUID halves, key/value
lists, ThingsBoard's entity JSON and the update-type mappings (docs/link-protocol.md). The edge's
event -> payload mapping is in ``edge_sync.link.event_payloads``, the cloud's payload -> applied
event parsing in ``edge_sync.cloud.uplink_payloads``. Only those, ``edge_sync.link`` and
``edge_sync.cloud`` touch protobuf. ``parse_entity_json`` is re-exported from
``edge_sync.storage.graph_json``: one parser of entity JSON text, there because storage may not
import common/.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_sync.errors import BadRequest
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.graph_json import parse_entity_json as parse_entity_json
from edge_sync.storage.records import Action

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
RELATION_UPDATE_TYPE = {
    # ThingsBoard's BaseEdgeProcessor.getUpdateMsgType: RELATION_ADD_OR_UPDATE is a creation
    Action.RELATION_ADD_OR_UPDATE: edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
    Action.RELATION_DELETED: edge_pb2.ENTITY_DELETED_RPC_MESSAGE,
}


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
#
# ThingsBoard 4.x carries an entity only as JSON (Jackson on its entity classes); every id in it
# is typed, {"entityType": "DEVICE", "id": "<uuid>"}. docs/link-protocol.md, "Entity JSON".

NULL_UUID = uuid.UUID("13814000-1dd2-11b2-8080-808080808080")
"""ThingsBoard's EntityId.NULL_UUID: the customer id of an entity assigned to no customer."""

SCOPES = ("CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE")
_ACKED = ("ACTIVE_ACK", "CLEARED_ACK")
_CLEARED = ("CLEARED_UNACK", "CLEARED_ACK")


@dataclass(frozen=True, slots=True)
class Owner:
    """The tenant and customer the edge's entities belong to: those of the edge, from the
    EdgeConfiguration of the connect response. ThingsBoard refuses a device or an alarm without
    a tenant. ``device_profiles`` (profile name -> id) are the device profiles the cloud synced:
    a device's ``type`` names its profile, whose id its Device JSON then carries."""

    tenant_id: uuid.UUID
    customer_id: uuid.UUID = NULL_UUID
    device_profiles: Mapping[str, uuid.UUID] = field(default_factory=dict, hash=False)

    @classmethod
    def of(cls, tenant_id: uuid.UUID, customer_id: uuid.UUID | None,
           device_profiles: Mapping[str, uuid.UUID] | None = None) -> Owner:
        """The owner of an EdgeConfiguration: no customer (nil or absent) is NULL_UUID."""
        if customer_id is None or customer_id.int == 0:
            customer_id = NULL_UUID
        return cls(tenant_id, customer_id, device_profiles or {})


def typed_id(entity_type: str, value: uuid.UUID | str) -> dict[str, str]:
    """A ThingsBoard EntityId as JSON: {"entityType": ..., "id": "<uuid>"}."""
    return {"entityType": entity_type, "id": str(value)}


def _owned(owner: Owner | None) -> dict[str, Any]:
    if owner is None:
        return {}
    return {"tenantId": typed_id("TENANT", owner.tenant_id),
            "customerId": typed_id("CUSTOMER", owner.customer_id)}


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def device_json(body: dict[str, Any], owner: Owner | None) -> str:
    """The edge's device body -> ThingsBoard's Device JSON text. Without an owner (the reference
    cloud, whose edge ignores them) tenantId and customerId are left out. deviceProfileId is the
    body's ``device_profile_id`` (the profile the cloud gave the device), else the id of the
    owner's synced profile named by ``type``; with neither it is left out, and ThingsBoard finds
    or creates the profile named by ``type``. additionalInfo null leaves the cloud's own
    additionalInfo as it is on an update."""
    dtype = body.get("type", "default")
    profile = body.get("device_profile_id")
    if profile is None and owner is not None:
        profile = owner.device_profiles.get(dtype)
    return _compact({
        "id": typed_id("DEVICE", body["id"]),
        "createdTime": body.get("created_time", 0),
        **_owned(owner),
        "name": body.get("name", ""),
        "type": dtype,
        "label": body.get("label", ""),
        **({"deviceProfileId": typed_id("DEVICE_PROFILE", profile)} if profile is not None else {}),
        "additionalInfo": body.get("additionalInfo"),
    })


def owned_json(entity: Mapping[str, Any], owner: Owner | None) -> str:
    """An entity's JSON as the edge sends it: the tenantId and customerId it holds (one the
    cloud synced, assigned to a customer of its own, keeps them: ThingsBoard takes the JSON's
    customer on an update), else those of ``owner`` right after ``createdTime``, as
    device_json places them (an entity the edge made holds none); without an owner (a peer
    that announced no tenant) none are added. A ``version`` goes as null, as ThingsBoard's
    message constructors reset it (resetVersion): the cloud's optimistic lock is not the
    edge's to hold."""
    missing = {k: v for k, v in _owned(owner).items() if entity.get(k) is None}
    out: dict[str, Any] = {}
    for key, value in entity.items():
        if key not in missing:
            out[key] = None if key == "version" else value
        if key == "createdTime":
            out.update(missing)
    out.update(missing)  # no createdTime: at the end (a no-op after it)
    return _compact(out)


def asset_entity(asset_id: uuid.UUID, *, created_time: int, name: str, type_: str, label: str,
                 profile_id: uuid.UUID | None, additional_info: Any) -> dict[str, Any]:
    """ThingsBoard 4.x Asset JSON (as a dict, without tenant and customer: owned_json adds
    them when sent). ``assetProfileId`` only when the edge knows the profile; without it
    ThingsBoard's saveAsset finds or creates the profile named by ``type``."""
    out: dict[str, Any] = {
        "id": typed_id("ASSET", asset_id),
        "createdTime": created_time,
        "name": name,
        "type": type_,
        "label": label,
    }
    if profile_id is not None:
        out["assetProfileId"] = typed_id("ASSET_PROFILE", profile_id)
    out["additionalInfo"] = additional_info
    return out


RELATION_GROUPS = ("COMMON",)
"""The relation type groups an edge-made relation may have: ThingsBoard syncs only COMMON
relations with its edges (EdgeEventSourcingListener skips the others)."""


def relation_entity(src: tuple[str, uuid.UUID], dst: tuple[str, uuid.UUID], rel_type: str,
                    group: str = "COMMON", additional_info: Any = None) -> dict[str, Any]:
    """ThingsBoard's EntityRelation JSON (as a dict): typed ``from`` and ``to``, ``type``,
    ``typeGroup`` and ``additionalInfo``."""
    return {
        "from": typed_id(*src),
        "to": typed_id(*dst),
        "type": rel_type,
        "typeGroup": group,
        "additionalInfo": additional_info,
    }


def compact_json(value: Any) -> str:
    """JSON text without spaces, as the edge sends and stores entity JSON."""
    return json.dumps(value, separators=(",", ":"))


def alarm_json(body: dict[str, Any], action: str, ts: int, owner: Owner | None) -> str:
    """The edge's alarm body (id, originator, type, severity, status, startTs, details, and
    from an alarm node the propagation: propagate, propagateToOwner, propagateToTenant,
    propagateRelationTypes) of an ADDED / ALARM_ACK / ALARM_CLEAR event at ``ts`` ->
    ThingsBoard's Alarm JSON text. A body without the propagation (the device API's alarms,
    events recorded by an earlier edge-sync) is not propagated: false, false, false, [].
    ThingsBoard acknowledges with the JSON's ackTs and clears with its clearTs and details, so
    an ALARM_ACK carries ackTs = ts and an ALARM_CLEAR clearTs = ts.

    The owner's tenant goes in, its customer does not: ThingsBoard gives an alarm the customer
    of its originator. BaseAlarmProcessor.processAlarmMsg creates it with
    AlarmCreateOrUpdateActiveRequest.fromAlarm(alarm, ...), which copies the JSON's customerId,
    and BaseAlarmService.createAlarm refuses a customerId other than the originator's ("Can't
    assign alarm to customer. Originator belongs to different customer!", or "... Originator
    is not assigned to customer!" when the cloud does not know the originator); a null one it
    fills with the originator's own (fetchEntityCustomerId). The edge's customer is not its
    devices': an edge assigned to a customer also holds the tenant's devices, and a device of
    another customer. No other alarm message reads the customer (AlarmUpdateRequest has
    none)."""
    status = body.get("status", "")
    acknowledged = action == Action.ALARM_ACK or status in _ACKED
    cleared = action == Action.ALARM_CLEAR or status in _CLEARED
    start = int(body.get("startTs") or ts)
    ack_ts = int(body.get("ackTs") or (ts if action == Action.ALARM_ACK else 0))
    clear_ts = int(body.get("clearTs") or (ts if action == Action.ALARM_CLEAR else 0))
    relation_types = body.get("propagateRelationTypes")
    return _compact({
        "id": typed_id("ALARM", body["id"]),
        **({"tenantId": typed_id("TENANT", owner.tenant_id)} if owner is not None else {}),
        "type": body.get("type", ""),
        "originator": typed_id("DEVICE", body["originator"]),
        "severity": body.get("severity", "CRITICAL"),
        "acknowledged": acknowledged,
        "cleared": cleared,
        "startTs": start,
        "endTs": int(body.get("endTs") or start),
        "ackTs": ack_ts,
        "clearTs": clear_ts,
        "details": body.get("details"),
        "propagate": body.get("propagate") is True,
        "propagateToOwner": body.get("propagateToOwner") is True,
        "propagateToTenant": body.get("propagateToTenant") is True,
        "propagateRelationTypes": [str(t) for t in relation_types]
        if isinstance(relation_types, list) else [],
    })


RPC_ERRORS = ("NOT_FOUND", "FORBIDDEN", "NO_ACTIVE_CONNECTION", "TIMEOUT", "INTERNAL")
"""org.thingsboard.server.common.data.rpc.RpcError's names: the only errors an RPC answer may
carry."""


def rpc_error_name(error: str) -> str:
    """An RPC answer's error as it may go in RpcResponseMsg.error: an RpcError name as it is,
    anything else INTERNAL. ThingsBoard's DeviceEdgeProcessor.processDeviceRpcResponseFromEdge
    reads the field with RpcError.valueOf, which throws on any other text and fails the whole
    UplinkMsg; the edge reports its own errors by name already, so this only catches a report
    recorded by an older edge-sync (which sent "no method")."""
    return error if error in RPC_ERRORS else "INTERNAL"


def credentials_json(body: dict[str, Any]) -> str:
    """The edge's credentials body -> ThingsBoard's DeviceCredentials JSON text. ThingsBoard
    updates the device's existing credentials (found by deviceId) with credentialsType,
    credentialsId and credentialsValue, so no credentials id travels."""
    return _compact({
        "deviceId": typed_id("DEVICE", body["deviceId"]),
        "credentialsType": body.get("credentialsType", "ACCESS_TOKEN"),
        "credentialsId": body["credentialsId"],
    })


_JAVA_TRIMMED = "".join(chr(c) for c in range(0x21))
"""What Java's String.trim() takes off both ends: every character up to the space (U+0020)."""


def gateway_flag(additional_info: Any) -> bool | None:
    """Whether a ThingsBoard entity's additionalInfo marks a gateway (``"gateway": true``),
    read as ThingsBoard's MQTT transport reads it, with Jackson's JsonNode.asBoolean(): true
    for the boolean true, the string "true" once trimmed (Java's trim; case-sensitive), an
    integer other than 0; false for anything else, a floating-point number included (Jackson's
    DoubleNode keeps asBoolean's default). None when there is no additionalInfo at all
    (null)."""
    if additional_info is None:
        return None
    info = additional_info
    if isinstance(info, str):  # additionalInfo as JSON text
        try:
            info = json.loads(info)
        except ValueError:
            return False
    flag = info.get("gateway") if isinstance(info, dict) else None
    if isinstance(flag, bool):
        return flag
    if isinstance(flag, str):
        return flag.strip(_JAVA_TRIMMED) == "true"
    if isinstance(flag, int):  # IntNode, LongNode, BigIntegerNode: non-zero
        return flag != 0
    return False


def entity_id_in(obj: dict[str, Any], field: str, what: str,
                 entity_type: str | None = None) -> uuid.UUID:
    """The UUID of ``field``: a typed id (ThingsBoard 4.x) or a bare UUID string. A typed id
    naming another entityType than ``entity_type`` (when given) is refused."""
    ref = obj.get(field)
    raw = ref.get("id") if isinstance(ref, dict) else ref
    if entity_type is not None and isinstance(ref, dict) and "entityType" in ref \
            and ref["entityType"] != entity_type:
        raise BadRequest(f"{what}: {field} is a {str(ref['entityType'])[:40]!r} id, "
                         f"not {entity_type}")
    try:
        return uuid.UUID(str(raw))
    except ValueError as exc:
        raise BadRequest(f"{what}: {field} is not a UUID") from exc
