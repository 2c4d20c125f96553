"""Server-side RPC requests on the edge, durable: what the cloud asked of a device and how far it
got (devices/rpc.py has the lifecycle).

Layout: keys in the ``meta`` database (added without a format change, like the ``synced/``
keys: a store of an earlier release simply has none and opens read-only as it did):
    rpc/ + device_id(16) + queued_at(u64, ms) + request_uuid(16)
        -> (request_id, method, params, oneway, expiration_time, status, updated_at,
            response, error[, origin, node_key, msg_type, metadata])
        one device's requests in arrival order, one range read; the last four only for a
        request the edge's rule chain made (origin "rule", and where its end goes on: the
        node's key, the type and metadata of the message that made it): a cloud request's
        record is as an earlier release wrote it, so it reads this store as before (one with
        rule-made requests it does not read: docs/device-rpc.md);
    rpc_id/ + device_id(16) + request_uuid(16) -> queued_at(u64): a request the cloud sends
        again is found with one read, however long the device's history;
    rpc_open/ + device_id(16) + queued_at(u64) + request_uuid(16) -> empty: the requests not
        finished (QUEUED, DELIVERED), what the agent loads at start;
    rpc_done/ + updated_at(u64) + device_id(16) + queued_at(u64) + request_uuid(16) -> empty:
        finished requests by the time they finished, what the purge reads from the oldest.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import lmdb

from edge_sync.devices.rpc import RpcOrigin, RpcRequest, RpcStatus, RuleSource
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_keys import prefixed

_RPC = b"rpc/"
_ID = b"rpc_id/"
_OPEN = b"rpc_open/"
_DONE = b"rpc_done/"
_FIELDS = 9  # a cloud request's record; a rule-made one has 4 more (its origin and source)
_RULE_FIELDS = _FIELDS + 4
_TAIL = 16 + 8 + 16  # device, queued_at, request uuid


def _tail(r: RpcRequest) -> bytes:
    return r.device_id.bytes + codec.u64(r.queued_at) + r.request_uuid.bytes


class RpcStore:
    """Synchronous access inside LmdbStore transactions."""

    def __init__(self, store: LmdbStore) -> None:
        self._meta = store.dbs["meta"]

    def put(self, txn: lmdb.Transaction, r: RpcRequest) -> None:
        """Insert or update a request (a finished one stays as it finished)."""
        tail = _tail(r)
        fields: tuple[object, ...] = (
            r.request_id, r.method, r.params, r.oneway, r.expiration_time, r.status.value,
            r.updated_at, r.response, r.error)
        if r.source is not None:
            fields = (*fields, r.origin.value, r.source.node_key, r.source.msg_type,
                      [list(kv) for kv in r.source.metadata])
        txn.put(_RPC + tail, codec.pack(fields), db=self._meta)
        txn.put(_ID + r.device_id.bytes + r.request_uuid.bytes, codec.u64(r.queued_at),
                db=self._meta)
        if r.status.final:
            txn.delete(_OPEN + tail, db=self._meta)
            txn.put(_DONE + codec.u64(r.updated_at) + tail, b"", db=self._meta)
        else:
            txn.put(_OPEN + tail, b"", db=self._meta)

    def close_device(self, txn: lmdb.Transaction, device_id: uuid.UUID, *, now_ms: int) -> int:
        """A deleted device's open requests (QUEUED, DELIVERED) are finished: FAILED, "device
        deleted", reported to nobody (the cloud deletes a device's requests with it). Never
        loaded at the next start, never expired into events of a device that is gone. Called
        wherever a device is removed (the graph's delete, its cascades and a full sync's
        sweep: storage/graph_entities.py). How many were closed."""
        closed = 0
        for request in list(self.scan(txn, device_id)):
            if not request.status.final:
                self.put(txn, replace(request, status=RpcStatus.FAILED, error="device deleted",
                                      updated_at=now_ms))
                closed += 1
        return closed

    def find(self, txn: lmdb.Transaction, device_id: uuid.UUID, request_uuid: uuid.UUID
             ) -> RpcRequest | None:
        """The device's request with this uuid (a request the cloud sent again)."""
        queued = txn.get(_ID + device_id.bytes + request_uuid.bytes, db=self._meta)
        if queued is None:
            return None
        return self._get(txn, device_id.bytes + bytes(queued) + request_uuid.bytes)

    def scan(self, txn: lmdb.Transaction, device_id: uuid.UUID | None = None
             ) -> Iterator[RpcRequest]:
        """Every request (of one device), in (device, arrival) order."""
        prefix = _RPC + (device_id.bytes if device_id is not None else b"")
        for key, value in prefixed(txn, self._meta, prefix):
            yield _decode(key[len(_RPC):], value)

    def open_requests(self, txn: lmdb.Transaction) -> list[RpcRequest]:
        """Requests not finished yet (QUEUED, DELIVERED): what the entity actors load at start."""
        out: list[RpcRequest] = []
        for key, _ in prefixed(txn, self._meta, _OPEN):
            found = self._get(txn, key[len(_OPEN):])
            if found is not None:
                out.append(found)
        return out

    def open_count(self, txn: lmdb.Transaction) -> int:
        """How many requests are not finished (one key read each, no record decoded)."""
        return sum(1 for _ in prefixed(txn, self._meta, _OPEN))

    def purge_finished(self, txn: lmdb.Transaction, *, older_than_ms: int, limit: int) -> int:
        """Delete up to ``limit`` requests that finished before ``older_than_ms``, oldest first."""
        doomed: list[bytes] = []
        for key, _ in prefixed(txn, self._meta, _DONE):
            if len(doomed) >= limit or codec.from_u64(key[len(_DONE):len(_DONE) + 8]) >= older_than_ms:
                break
            doomed.append(key)
        for key in doomed:
            tail = key[len(_DONE) + 8:]
            txn.delete(key, db=self._meta)
            txn.delete(_RPC + tail, db=self._meta)
            txn.delete(_ID + tail[:16] + tail[24:], db=self._meta)
        return len(doomed)

    def _get(self, txn: lmdb.Transaction, tail: bytes) -> RpcRequest | None:
        raw = txn.get(_RPC + tail, db=self._meta)
        return None if raw is None else _decode(tail, raw)


def _decode(tail: bytes, raw: codec.Raw) -> RpcRequest:
    if len(tail) != _TAIL:
        raise StorageCorrupt(f"meta: RPC key of {len(tail)} bytes after its prefix")
    device_id = uuid.UUID(bytes=tail[:16])
    queued_at = codec.from_u64(tail[16:24], "meta: RPC queued time")
    request_uuid = uuid.UUID(bytes=tail[24:])
    what = f"meta: RPC {request_uuid} of device {device_id}"
    value = codec.unpack(raw, what)
    if not isinstance(value, list) or len(value) not in (_FIELDS, _RULE_FIELDS):
        raise StorageCorrupt(f"{what}: record of an unexpected shape")
    (request_id, method, params, oneway, expiration, status, updated_at, response,
     error) = value[:_FIELDS]
    source = None
    try:
        state = RpcStatus(status)
        if len(value) == _RULE_FIELDS:
            if RpcOrigin(value[_FIELDS]) is not RpcOrigin.RULE:
                raise ValueError("a request with a source is the rule chain's")
            node_key, msg_type, metadata = value[_FIELDS + 1:]
            source = RuleSource(str(node_key), str(msg_type),
                                tuple((str(k), str(v)) for k, v in metadata))
    except (ValueError, TypeError) as exc:
        raise StorageCorrupt(f"{what}: unknown status {status!r}, or a rule-made request's "
                             f"origin and source {value[_FIELDS:]!r}") from exc
    return RpcRequest(device_id, request_uuid, int(request_id), str(method), str(params),
                      bool(oneway), int(expiration), queued_at, state, int(updated_at), response,
                      str(error), source)
