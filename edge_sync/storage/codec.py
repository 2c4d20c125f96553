"""On-disk encodings: fixed-width big-endian keys (byte order is numeric order) and versioned
msgpack values. Nothing else in the project knows the byte layout of a record."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import msgpack

from edge_sync.errors import StorageCorrupt
from edge_sync.storage.records import Device, Lane, NewEvent, StoredEvent

SCHEMA_VERSION = 1

_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(raw: bytes) -> int:
    return _U64.unpack(raw)[0]


def time_seq_key(time_ms: int, seq: int) -> bytes:
    """Key of the deployed-by-time index: deployment time first, then seq."""
    return _U64X2.pack(time_ms, seq)


def from_time_seq_key(raw: bytes) -> tuple[int, int]:
    t, s = _U64X2.unpack(raw)
    return t, s


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def encode_event(
    event: NewEvent, *, event_id: bytes, created_time: int, tenant_id: bytes, edge_id: bytes
) -> bytes:
    return msgpack.packb(
        (
            SCHEMA_VERSION,
            event_id,
            created_time,
            tenant_id,
            edge_id,
            event.type,
            event.entity_type,
            event.entity_id.bytes,
            event.action,
            event.body,
            event.ts,
            int(event.lane),
        ),
        use_bin_type=True,
    )


def decode_event(seq: int, raw: bytes | memoryview) -> StoredEvent:
    try:
        (ver, eid, created, tenant, edge, etype, ent_type, ent_id, action, body, ts, lane) = (
            msgpack.unpackb(raw, raw=False, strict_map_key=False)
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StorageCorrupt(f"event seq {seq}: undecodable record ({exc})") from exc
    if ver != SCHEMA_VERSION:
        raise StorageCorrupt(f"event seq {seq}: schema version {ver}, expected {SCHEMA_VERSION}")
    return StoredEvent(
        seq=seq,
        id=uuid.UUID(bytes=eid),
        created_time=created,
        tenant_id=uuid.UUID(bytes=tenant),
        edge_id=uuid.UUID(bytes=edge),
        type=etype,
        entity_type=ent_type,
        entity_id=uuid.UUID(bytes=ent_id),
        action=action,
        body=body,
        ts=ts,
        lane=Lane(lane),
        size=len(raw),
    )


def encode_device(device: Device) -> bytes:
    return pack(
        (
            SCHEMA_VERSION,
            device.name,
            device.type,
            device.token,
            device.created_time,
            device.label,
            device.version,
        )
    )


def decode_device(device_id: bytes, raw: bytes) -> Device:
    ver, name, dtype, token, created, label, version = unpack(raw)
    if ver != SCHEMA_VERSION:
        raise StorageCorrupt(f"device {uuid.UUID(bytes=device_id)}: schema version {ver}")
    return Device(
        id=uuid.UUID(bytes=device_id),
        name=name,
        type=dtype,
        token=token,
        created_time=created,
        label=label,
        version=version,
    )
