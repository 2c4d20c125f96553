"""On-disk encodings, shared by the edge (storage/) and the reference cloud (cloud/store.py):
fixed-width big-endian keys (byte order is numeric order) and one value envelope.

Every msgpack record value is ``version (1 byte) | CRC-32 of the body (4 bytes, big-endian) |
msgpack body``. Decoding checks the version, the checksum and the record's shape, and raises
StorageCorrupt naming the record when any of them is wrong, so damaged or foreign data is
reported where it is read instead of surfacing as a TypeError somewhere else. Fixed-width
numbers (counters, seqs, times) are stored as 8-byte big-endian values and checked for length.

Nothing else in the project knows the byte layout of a value.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import Any

import msgpack

from edge_sync.errors import StorageCorrupt, Unstorable
from edge_sync.storage.records import Device, Lane, NewEvent, StoredEvent

# 1: a msgpack array whose first element was a per-record schema number, no checksum (and some
#    records unversioned). 2: the envelope above. The stores' format stamps changed with it.
VALUE_VERSION = 2

Raw = bytes | memoryview
"""What LMDB returns for a key or value (bytes when the transaction is opened buffers=False)."""

_HEADER = struct.Struct(">BI")
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")


def u64(value: int) -> bytes:
    return _U64.pack(value)


def from_u64(raw: Raw, what: str = "number") -> int:
    """An 8-byte big-endian unsigned number (a key or a counter value)."""
    if len(raw) != _U64.size:
        raise StorageCorrupt(f"{what}: {len(raw)} bytes where an 8-byte number is stored")
    value: int = _U64.unpack(raw)[0]
    return value


def to_uuid(raw: Raw, what: str) -> uuid.UUID:
    """A 16-byte id stored as a key part or an index value."""
    if len(raw) != 16:
        raise StorageCorrupt(f"{what}: {len(raw)} bytes where a 16-byte id is stored")
    return uuid.UUID(bytes=bytes(raw))


def time_seq_key(time_ms: int, seq: int) -> bytes:
    """Key of the deployed-by-time index: deployment time first, then seq."""
    return _U64X2.pack(time_ms, seq)


def from_time_seq_key(raw: Raw) -> tuple[int, int]:
    if len(raw) != _U64X2.size:
        raise StorageCorrupt(f"deployed_by_time: key of {len(raw)} bytes, expected {_U64X2.size}")
    t, s = _U64X2.unpack(raw)
    return t, s


def pack(value: Any) -> bytes:
    """Encode a record value; Unstorable when msgpack cannot hold it (an integer beyond 64 bits,
    text with a lone surrogate, an unsupported type)."""
    try:
        body: bytes = msgpack.packb(value, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise Unstorable(f"value cannot be stored ({exc})") from exc
    return _HEADER.pack(VALUE_VERSION, zlib.crc32(body)) + body


def text_key(text: str) -> bytes:
    """A name or key as it goes into an LMDB key (UTF-8); Unstorable for a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Unstorable(f"text cannot be stored ({exc.reason})") from exc


def unpack(raw: Raw, what: str) -> Any:
    """Decode a value written by pack(); StorageCorrupt names ``what`` when it is damaged."""
    if len(raw) < _HEADER.size:
        raise StorageCorrupt(f"{what}: damaged record ({len(raw)} bytes, shorter than its header)")
    version, crc = _HEADER.unpack_from(raw)
    if version != VALUE_VERSION:
        raise StorageCorrupt(
            f"{what}: record format version {version}, this program reads {VALUE_VERSION}")
    body = memoryview(raw)[_HEADER.size:]
    if zlib.crc32(body) != crc:
        raise StorageCorrupt(f"{what}: damaged record (checksum mismatch)")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StorageCorrupt(f"{what}: undecodable record ({exc})") from exc


def unpack_fields(raw: Raw, what: str, count: int) -> list[Any]:
    """Decode a record written as a tuple of ``count`` fields."""
    value = unpack(raw, what)
    if not isinstance(value, list) or len(value) != count:
        raise StorageCorrupt(f"{what}: record of an unexpected shape")
    return value


def encode_event(
    event: NewEvent, *, event_id: bytes, created_time: int, tenant_id: bytes, edge_id: bytes
) -> bytes:
    return pack(
        (
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
        )
    )


def decode_event(seq: int, raw: Raw) -> StoredEvent:
    what = f"events: seq {seq}"
    eid, created, tenant, edge, etype, ent_type, ent_id, action, body, ts, lane = unpack_fields(
        raw, what, 11)
    try:
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
    except (TypeError, ValueError) as exc:
        raise StorageCorrupt(f"{what}: record with a malformed field ({exc})") from exc


def encode_device(device: Device) -> bytes:
    return pack(
        (
            device.name,
            device.type,
            device.token,
            device.created_time,
            device.label,
            device.version,
        )
    )


def decode_device(device_id: Raw, raw: Raw) -> Device:
    did = uuid.UUID(bytes=bytes(device_id))
    name, dtype, token, created, label, version = unpack_fields(raw, f"devices: {did}", 6)
    return Device(
        id=did,
        name=name,
        type=dtype,
        token=token,
        created_time=created,
        label=label,
        version=version,
    )
