"""How the cloud store keeps server-side RPC requests: the `rpcs` database (rpc id, 16 raw UUID
bytes -> the record in codec's checksummed envelope) and the per-device requestId counter in
`meta` (b"rpcseq:" + device id -> u64). Record encoding only; cloud/store.py runs the
transactions.

The `rpcs` database came after the edge-cloud/3 format: a store of that format made by an
earlier release has none. It is created when the store is opened for writing (no new stamp:
nothing else changed), and a read-only open of a store without it reads as no requests.
"""

from __future__ import annotations

import uuid

from edge_sync.cloud.rpc import RpcRecord, RpcStatus
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec

DB_NAME = "rpcs"
_FIELDS = 16


def request_seq_key(device_id: uuid.UUID) -> bytes:
    return b"rpcseq:" + device_id.bytes


def pack(record: RpcRecord) -> bytes:
    return codec.pack((
        record.edge_id.bytes, record.device_id.bytes, record.request_id, record.method,
        record.params, record.oneway, record.persistent, record.expiration_time,
        record.created_time, str(record.status), record.updated_time, record.response,
        record.error, record.retries, record.additional_info, record.downlink,
    ))


def unpack(rpc_id: uuid.UUID, raw: codec.Raw) -> RpcRecord:
    what = f"rpcs: {rpc_id}"
    fields = codec.unpack(raw, what)
    if not isinstance(fields, list | tuple) or len(fields) < _FIELDS:
        raise StorageCorrupt(f"{what}: record of an unexpected shape")
    (edge, device, request_id, method, params, oneway, persistent, expiration, created, status,
     updated, response, error, retries, info, downlink) = fields[:_FIELDS]
    try:
        return RpcRecord(
            id=rpc_id, edge_id=uuid.UUID(bytes=edge), device_id=uuid.UUID(bytes=device),
            request_id=int(request_id), method=str(method), params=params, oneway=bool(oneway),
            persistent=bool(persistent), expiration_time=int(expiration),
            created_time=int(created), status=RpcStatus(status), updated_time=int(updated),
            response=response, error=error, retries=retries, additional_info=info,
            downlink=int(downlink))
    except (TypeError, ValueError) as exc:
        raise StorageCorrupt(f"{what}: {exc}") from exc
