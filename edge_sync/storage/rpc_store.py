"""Server-side RPC requests on the edge, durable: what the cloud asked of a device and how far it
got (devices/rpc.py has the lifecycle).

Layout: keys in the ``meta`` database (added without a format change, like the ``synced/``
keys: a store of an earlier release simply has none and opens read-only as it did):
    rpc/ + device_id(16) + queued_at(u64, ms) + request_uuid(16)
        -> (request_id, method, params, oneway, expiration_time, status, updated_at,
            response, error)
so one device's requests are read in arrival order with one range read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import lmdb

from edge_sync.devices.rpc import RpcRequest, RpcStatus
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore

_RPC = b"rpc/"
_FIELDS = 9


def _key(r: RpcRequest) -> bytes:
    return _RPC + r.device_id.bytes + codec.u64(r.queued_at) + r.request_uuid.bytes


class RpcStore:
    """Synchronous access inside LmdbStore transactions."""

    def __init__(self, store: LmdbStore) -> None:
        self._meta = store.dbs["meta"]

    def put(self, txn: lmdb.Transaction, r: RpcRequest) -> None:
        txn.put(_key(r), codec.pack((
            r.request_id, r.method, r.params, r.oneway, r.expiration_time, r.status.value,
            r.updated_at, r.response, r.error)), db=self._meta)

    def find(self, txn: lmdb.Transaction, device_id: uuid.UUID, request_uuid: uuid.UUID
             ) -> RpcRequest | None:
        """The device's request with this uuid (a request the cloud sent again)."""
        return next((r for r in self.scan(txn, device_id) if r.request_uuid == request_uuid),
                    None)

    def scan(self, txn: lmdb.Transaction, device_id: uuid.UUID | None = None
             ) -> Iterator[RpcRequest]:
        """Every request (of one device), in (device, arrival) order."""
        prefix = _RPC + (device_id.bytes if device_id is not None else b"")
        with txn.cursor(db=self._meta) as cur:
            if not cur.set_range(prefix):
                return
            for k, v in cur.iternext():
                key = bytes(k)
                if not key.startswith(prefix):
                    break
                yield _decode(key, v)

    def purge_finished(self, txn: lmdb.Transaction, *, older_than_ms: int, limit: int) -> int:
        """Delete up to ``limit`` finished requests last changed before ``older_than_ms``."""
        doomed: list[bytes] = []
        with txn.cursor(db=self._meta) as cur:
            if cur.set_range(_RPC):
                for k, v in cur.iternext():
                    key = bytes(k)
                    if not key.startswith(_RPC) or len(doomed) >= limit:
                        break
                    r = _decode(key, v)
                    if r.status.final and r.updated_at < older_than_ms:
                        doomed.append(key)
        for key in doomed:
            txn.delete(key, db=self._meta)
        return len(doomed)

    def open_requests(self, txn: lmdb.Transaction) -> list[RpcRequest]:
        """Requests not finished yet (QUEUED, DELIVERED): what the entity actors load at start."""
        return [r for r in self.scan(txn) if not r.status.final]


def _decode(key: bytes, raw: codec.Raw) -> RpcRequest:
    body = key[len(_RPC):]
    if len(body) != 40:
        raise StorageCorrupt(f"meta: RPC key of {len(key)} bytes")
    device_id = uuid.UUID(bytes=body[:16])
    queued_at = codec.from_u64(body[16:24], "meta: RPC queued time")
    request_uuid = uuid.UUID(bytes=body[24:])
    what = f"meta: RPC {request_uuid} of device {device_id}"
    (request_id, method, params, oneway, expiration, status, updated_at, response,
     error) = codec.unpack_fields(raw, what, _FIELDS)
    try:
        state = RpcStatus(status)
    except ValueError as exc:
        raise StorageCorrupt(f"{what}: unknown status {status!r}") from exc
    return RpcRequest(device_id, request_uuid, int(request_id), str(method), str(params),
                      bool(oneway), int(expiration), queued_at, state, int(updated_at), response,
                      str(error))
