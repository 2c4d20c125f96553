"""On-disk encodings, shared by the edge (storage/) and the reference cloud (cloud/store.py):
fixed-width big-endian keys (byte order is numeric order) and one value envelope.

Every msgpack record value is ``version (1 byte) | CRC-32 of the body (4 bytes, big-endian) |
msgpack body``. Decoding checks the version, the checksum and the record's shape, and raises
StorageCorrupt naming the record when any of them is wrong, so damaged or foreign data is
reported where it is read instead of surfacing as a TypeError somewhere else. Fixed-width
numbers (counters, seqs, times) are stored as 8-byte big-endian values and checked for length.

Values of the previous release (store stamps edge-sync/1 and edge-cloud/2) were plain msgpack
arrays, without version byte or checksum: some record types with a leading schema number 1
(``schema=True`` below), others without one. Each of them begins with a msgpack array header
(0x90-0x9f, 0xdc, 0xdd), never with the version byte 2, so a value says itself which format it
is in. A store that was upgraded from the previous format (LmdbStore.previous_values) mixes both
until the old values are purged or rewritten; decoders accept a previous-format value only when
told the store may hold one (``previous=True``), so in a store created at the new format any
value without the envelope is damage. Previous-format values have no checksum to verify.

Nothing else in the project knows the byte layout of a value.
"""

from __future__ import annotations

import struct
import threading
import uuid
import zlib
from collections.abc import Iterable
from typing import Any

import msgpack

from edge_sync.errors import StorageCorrupt, Unstorable
from edge_sync.storage.records import Device, Lane, NewEvent, StoredEvent

# 1: a msgpack array whose first element was a per-record schema number, no checksum (and some
#    records unversioned). 2: the envelope above. The stores' format stamps changed with it.
VALUE_VERSION = 2
PREVIOUS_SCHEMA = 1  # the leading schema number of the previous format's versioned records
# first bytes of a msgpack array (fixarray, array 16, array 32): how every previous value began
_ARRAY_HEADS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}

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


_KEEP_BUFFER_BYTES = 1 << 20


class _Packers(threading.local):
    """One msgpack Packer per thread, reused: ``msgpack.packb`` builds a Packer (and its
    256 KiB buffer) on every call, which cost more than the packing itself for the small
    records stored here (about 0.5 µs a record against 0.2). A Packer is not thread-safe, hence
    one per thread; it resets its buffer after each ``pack``, on an error too, but never
    shrinks it, so after a record over ``_KEEP_BUFFER_BYTES`` (a large entity from the cloud)
    the thread gets a fresh one (``shed``) instead of keeping that memory for its life. Not
    reentrant: nothing packed here calls back into Python (plain types only, no ``default``
    hook), so no pack starts inside another."""

    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)

    def shed(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)


_PACKERS = _Packers()


def pack(value: Any) -> bytes:
    """Encode a record value; Unstorable when msgpack cannot hold it (an integer beyond 64 bits,
    text with a lone surrogate, an unsupported type)."""
    try:
        body: bytes = _PACKERS.packer.pack(value)
    except (OverflowError, TypeError, ValueError) as exc:
        _PACKERS.shed()  # (its buffer may have grown before the refusal)
        raise Unstorable(f"value cannot be stored ({exc})") from exc
    if len(body) > _KEEP_BUFFER_BYTES:
        _PACKERS.shed()
    return _HEADER.pack(VALUE_VERSION, zlib.crc32(body)) + body


def pack_led(first: Any, values: Iterable[Any]) -> list[bytes]:
    """``[pack((first, value)) for value in values]``, byte for byte, for records written many
    at a time (the local timeseries' points of a post, which share their expiry): the array
    header and ``first`` are encoded once and the checksum goes on from theirs, which makes it
    about four times cheaper a record. Unstorable as pack()."""
    packer = _PACKERS.packer
    try:
        head: bytes = packer.pack_array_header(2) + packer.pack(first)
        head_crc = zlib.crc32(head)
        header, crc32 = _HEADER.pack, zlib.crc32
        return [header(VALUE_VERSION, crc32(tail, head_crc)) + head + tail
                for tail in map(packer.pack, values)]
    except (OverflowError, TypeError, ValueError) as exc:
        _PACKERS.shed()
        raise Unstorable(f"value cannot be stored ({exc})") from exc


def text_key(text: str) -> bytes:
    """A name or key as it goes into an LMDB key (UTF-8); Unstorable for a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Unstorable(f"text cannot be stored ({exc.reason})") from exc


def is_previous_format(raw: Raw) -> bool:
    """Whether a value is in the previous release's layout (a bare msgpack array)."""
    return len(raw) > 0 and raw[0] in _ARRAY_HEADS


class _Damaged(Exception):
    """Why a value is not what pack() wrote; unpack() names the record (built only then)."""


def _checked(raw: Raw) -> Any:
    """The hot path of every read: check the envelope and decode the body (_Damaged if not)."""
    if len(raw) < _HEADER.size:
        raise _Damaged(f"damaged record ({len(raw)} bytes, shorter than its header)")
    version, crc = _HEADER.unpack_from(raw)
    if version != VALUE_VERSION:
        raise _Damaged(f"record format version {version}, this program reads {VALUE_VERSION}")
    body = memoryview(raw)[_HEADER.size:]
    if zlib.crc32(body) != crc:
        raise _Damaged("damaged record (checksum mismatch)")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _Damaged(f"undecodable record ({exc})") from exc


def unpack(raw: Raw, what: str, *, previous: bool = False, schema: bool = False) -> Any:
    """Decode a value written by pack(); StorageCorrupt names ``what`` when it is damaged.

    With ``previous`` a value of the previous format is accepted too (see the module doc): it is
    returned as decoded, without its leading schema number when the record type had one
    (``schema``), so as the list of the record's fields."""
    if previous and is_previous_format(raw):
        return _unpack_previous(raw, what, schema)
    try:
        return _checked(raw)
    except _Damaged as exc:
        raise StorageCorrupt(f"{what}: {exc}") from exc.__cause__


def _unpack_previous(raw: Raw, what: str, schema: bool) -> list[Any]:
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StorageCorrupt(f"{what}: undecodable record of the previous format ({exc})") from exc
    if not isinstance(value, list):  # (cannot happen: it began with an array header)
        raise StorageCorrupt(f"{what}: record of the previous format of an unexpected shape")
    if schema:
        if not value or value[0] != PREVIOUS_SCHEMA:
            found = value[0] if value else None
            raise StorageCorrupt(f"{what}: record of the previous format with schema number "
                                 f"{found!r}, this program reads {PREVIOUS_SCHEMA}")
        value = value[1:]
    return value


def unpack_fields(
    raw: Raw, what: str, count: int, *, previous: bool = False, schema: bool = False
) -> list[Any]:
    """Decode a record written as a tuple of ``count`` fields (``previous``, ``schema``: see
    unpack())."""
    value = unpack(raw, what, previous=previous, schema=schema)
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


def decode_event(seq: int, raw: Raw, *, previous: bool = False) -> StoredEvent:
    """An event record; with ``previous`` also one of the previous format (an array led by the
    schema number 1)."""
    fields: Any = None
    if not (previous and is_previous_format(raw)):
        try:  # the hot path (a drain decodes every event): no message built unless damaged
            fields = _checked(raw)
        except _Damaged:
            fields = None
    if not isinstance(fields, list) or len(fields) != 11:
        fields = unpack_fields(raw, f"events: seq {seq}", 11, previous=previous, schema=True)
    eid, created, tenant, edge, etype, ent_type, ent_id, action, body, ts, lane = fields
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
        raise StorageCorrupt(f"events: seq {seq}: record with a malformed field ({exc})") from exc


_DEVICE_FIELDS = 6
"""A device record's fields before the gateway flag; a record of a gateway has a 7th, True."""


def encode_device(device: Device) -> bytes:
    """Six fields, and a seventh (True) for a gateway: a store without gateways keeps the
    layout earlier releases read."""
    fields: tuple[Any, ...] = (device.name, device.type, device.token, device.created_time,
                               device.label, device.version)
    return pack((*fields, True) if device.gateway else fields)


def decode_device(device_id: Raw, raw: Raw, *, previous: bool = False) -> Device:
    """A device record (six fields, seven for a gateway); with ``previous`` also one of the
    previous format (led by the schema number 1, six fields: that format predates gateways,
    so a seventh field there is damage, not a gateway)."""
    did = to_uuid(device_id, "devices: key")
    what = f"devices: {did}"
    fields = unpack(raw, what, previous=previous, schema=True)
    counts = ((_DEVICE_FIELDS,) if previous and is_previous_format(raw)
              else (_DEVICE_FIELDS, _DEVICE_FIELDS + 1))
    if not isinstance(fields, list) or len(fields) not in counts:
        raise StorageCorrupt(f"{what}: record of an unexpected shape")
    name, dtype, token, created, label, version = fields[:_DEVICE_FIELDS]
    gateway = fields[_DEVICE_FIELDS] if len(fields) > _DEVICE_FIELDS else False
    if not isinstance(gateway, bool):
        raise StorageCorrupt(f"{what}: record with a malformed gateway flag")
    return Device(
        id=did,
        name=name,
        type=dtype,
        token=token,
        created_time=created,
        label=label,
        version=version,
        gateway=gateway,
    )
