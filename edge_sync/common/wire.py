"""The protobuf boundary shared by the edge and the reference cloud: UUID halves, key/value
lists, ThingsBoard's entity JSON and the update-type mappings (docs/link-protocol.md). The edge's
event -> payload mapping is in ``edge_sync.link.event_payloads``, the cloud's payload -> applied
event parsing in ``edge_sync.cloud.uplink_payloads``. Only those, ``edge_sync.link`` and
``edge_sync.cloud`` touch protobuf.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from edge_sync.errors import BadRequest
from edge_sync.proto import edge_pb2, transport_pb2
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
