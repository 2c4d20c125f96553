"""The cloud graph's tables: the base of CloudGraph (cloud/graph_store.py) that every other
part builds on. Owns the write and read transactions (the store's group commit, the notify /
on_queued hooks after a commit), an entity's record and its indexes, where an entity is (which
edges hold it), queueing a downlink on edges, and the assignment index rows.

Layout (cloud/graph_keys.py): g_entities, g_names, g_kinds (records and their indexes),
g_metadata (read), g_refby (hard references, written with a record), g_assign / g_assigned
(read; a row dropped); the store's meta (tenant, root rule chain id) and edge_ids.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import lmdb
from loguru import logger

from edge_sync.cloud.graph_keys import (
    METADATA,
    ROOT_CHAIN,
    TENANT_WIDE,
    UNASSIGNED,
    CloudEntity,
    _Change,
    _name_key,
    _rank,
    _Rec,
    _ref_digest,
    _refs,
    named_id_key,
    user_customer,
)
from edge_sync.common import ids
from edge_sync.common.entity_graph import Ref
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.errors import StorageError
from edge_sync.storage import codec

if TYPE_CHECKING:
    from edge_sync.cloud.store import CloudStore

_log = logger.bind(component="cloud-graph")


class GraphTables:
    """Transactions, records, indexes and where entities are (the shared state of CloudGraph)."""

    def __init__(self, store: CloudStore, *, id_source: ids.TimeBasedIds = ids.PROCESS_IDS,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._store = store
        self._lmdb = store.lmdb
        self._db = store.lmdb.dbs
        self._ids = id_source
        self.max_message_bytes = max_message_bytes
        """The largest downlink an edge accepts (the default every edge announces): an entity
        whose message would be larger is refused at creation."""
        self.notify: Callable[[uuid.UUID], None] | None = None
        self.on_queued: Callable[[Mapping[str, int]], None] | None = None
        """Called with the downlinks queued by kind (DownlinkMsg field) after each commit."""
        self._root_chain: uuid.UUID | None = None

    @property
    def available(self) -> bool:
        """False in a read-only open of a store made before the graph (it reads as empty)."""
        return "g_entities" in self._db

    def _dbh(self, name: str) -> Any:
        db = self._db.get(name)
        if db is None:
            raise StorageError(f"{self._store.path}: store opened read-only (no entity graph yet)")
        return db

    def _write(self, fn: Callable[[lmdb.Transaction, _Change], Any]) -> Any:
        change = _Change.new()

        def run(txn: lmdb.Transaction) -> Any:
            change.woken.clear()
            change.queued.clear()
            return fn(txn, change)

        if not self.available:
            raise StorageError(f"{self._store.path}: store opened read-only")
        result = self._store.commits.submit(run).result()
        self._after(change)
        return result

    def _after(self, change: _Change) -> None:
        if change.queued and self.on_queued is not None:
            self.on_queued(dict(change.queued))
        if self.notify is not None:
            for edge_id in change.woken:
                self.notify(edge_id)

    def _read(self) -> Any:
        return self._lmdb.read()

    def _get(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> _Rec | None:
        db = self._db.get("g_entities")
        raw = None if db is None else txn.get(entity_id.bytes, db=db)
        if raw is None:
            return None
        kind, name, text, created, updated, origin = codec.unpack_fields(
            raw, f"g_entities: {entity_id}", 6)
        return _Rec(kind, entity_id, name, text, created, updated, origin)

    def _metadata(self, txn: lmdb.Transaction, chain_id: uuid.UUID) -> str | None:
        db = self._db.get("g_metadata")
        raw = None if db is None else txn.get(chain_id.bytes, db=db)
        if raw is None:
            return None
        return str(codec.unpack_fields(raw, f"g_metadata: {chain_id}", 2)[0])

    def _named(self, txn: lmdb.Transaction, kind: str, name: str) -> uuid.UUID | None:
        db = self._db.get("g_names")
        raw = None if db is None else txn.get(_name_key(kind, name), db=db)
        return None if raw is None else codec.to_uuid(raw, f"g_names: {kind} {name[:40]!r}")

    def _put(self, txn: lmdb.Transaction, rec: _Rec, old: _Rec | None,
             body: Mapping[str, Any]) -> None:
        names = self._dbh("g_names")
        if old is not None:
            self._unindex(txn, old)
        txn.put(rec.id.bytes, codec.pack((rec.kind, rec.name, rec.json, rec.created, rec.updated,
                                          rec.origin)), db=self._dbh("g_entities"))
        txn.put(_name_key(rec.kind, rec.name), rec.id.bytes, db=names)
        txn.put(rec.kind.encode() + b"\0" + rec.id.bytes, b"", db=self._dbh("g_kinds"))
        if rec.kind == "WIDGET_TYPE":
            fqn = body.get("fqn")
            if isinstance(fqn, str) and fqn:
                txn.put(_name_key("WIDGET_TYPE_FQN", fqn), rec.id.bytes, db=names)
        self._index_refs(txn, rec.id, rec.kind, _refs(rec.kind, body))

    def _unindex(self, txn: lmdb.Transaction, old: _Rec) -> None:
        names = self._dbh("g_names")
        key = _name_key(old.kind, old.name)
        if txn.get(key, db=names) == old.id.bytes:
            txn.delete(key, db=names)
        body = json.loads(old.json)
        if old.kind == "WIDGET_TYPE" and isinstance(body.get("fqn"), str):
            key = _name_key("WIDGET_TYPE_FQN", body["fqn"])
            if txn.get(key, db=names) == old.id.bytes:
                txn.delete(key, db=names)
        self._unindex_refs(txn, old.id, _refs(old.kind, body))

    def _index_refs(self, txn: lmdb.Transaction, dependant: uuid.UUID, kind: str,
                    refs: Iterable[Ref]) -> None:
        db = self._dbh("g_refby")
        for ref in refs:
            txn.put(_ref_digest(ref) + dependant.bytes, kind.encode(), db=db)

    def _unindex_refs(self, txn: lmdb.Transaction, dependant: uuid.UUID, refs: Iterable[Ref]) -> None:
        db = self._dbh("g_refby")
        for ref in refs:
            txn.delete(_ref_digest(ref) + dependant.bytes, db=db)

    def _dependants(self, txn: lmdb.Transaction, ref: Ref) -> list[tuple[str, uuid.UUID]]:
        """(kind, id) of the entities whose hard references name ``ref`` (a rule chain's
        metadata as kind RULE_CHAIN_METADATA, under the chain's id)."""
        db = self._db.get("g_refby")
        if db is None:
            return []
        prefix = _ref_digest(ref)
        out: list[tuple[str, uuid.UUID]] = []
        with txn.cursor(db=db) as cur:
            if not cur.set_range(prefix):
                return out
            for key, value in cur.iternext():
                if key[:32] != prefix:
                    break
                out.append((bytes(value).decode(), uuid.UUID(bytes=bytes(key[32:48]))))
        return out

    def _entity(self, txn: lmdb.Transaction, rec: _Rec) -> CloudEntity:
        edges = tuple(sorted(self._edges_holding(txn, rec.kind, rec.id)))
        return CloudEntity(rec.kind, rec.id, rec.name, rec.json, rec.created, edges)

    def _tenant_id(self, txn: lmdb.Transaction) -> uuid.UUID:
        return uuid.UUID(bytes=bytes(txn.get(b"tenant", db=self._db["meta"]) or bytes(16)))

    def root_chain_id(self) -> uuid.UUID | None:
        """The cloud's edge root rule chain (on every edge), once made."""
        if self._root_chain is None:
            with self._read() as txn:
                self._root_chain = self._root_chain_in(txn)
        return self._root_chain

    def _root_chain_in(self, txn: lmdb.Transaction) -> uuid.UUID | None:
        raw = txn.get(named_id_key(ROOT_CHAIN), db=self._db["meta"])
        return None if raw is None else codec.to_uuid(raw, "meta: root rule chain id")

    def _customer_users(self, txn: lmdb.Transaction, customer_id: uuid.UUID) -> list[_Rec]:
        """The users of a customer (a scan of the users: a handful per tenant)."""
        out = []
        for user_id in self._ids_of_kind(txn, "USER"):
            rec = self._get(txn, user_id)
            if rec is not None and user_customer(json.loads(rec.json)) == customer_id:
                out.append(rec)
        return out

    def _all_edges(self, txn: lmdb.Transaction) -> list[uuid.UUID]:
        with txn.cursor(db=self._db["edge_ids"]) as cur:
            return [uuid.UUID(bytes=bytes(k)) for k in cur.iternext(values=False)]

    def _on_every_edge(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID) -> bool:
        if kind == "USER":
            rec = self._get(txn, entity_id)
            return rec is None or user_customer(json.loads(rec.json)) is None
        if kind in TENANT_WIDE:
            return True
        return kind in ("RULE_CHAIN", METADATA) and entity_id == self._root_chain_in(txn)

    def _edges_holding(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID) -> set[uuid.UUID]:
        """The edges an entity of the graph (or a device, or an edge) is on."""
        if kind == "DEVICE":
            dev = self._store._device(txn, entity_id)
            return {dev.edge_id} if dev is not None and dev.edge_id != UNASSIGNED else set()
        if kind == "EDGE":
            return {entity_id} if txn.get(entity_id.bytes, db=self._db["edge_ids"]) else set()
        if self._on_every_edge(txn, kind, entity_id):
            return set(self._all_edges(txn))
        if kind == "USER":  # a customer user: on the edges holding its customer
            rec = self._get(txn, entity_id)
            customer = None if rec is None else user_customer(json.loads(rec.json))
            return set() if customer is None else self._edges_holding(txn, "CUSTOMER", customer)
        db = self._db.get("g_assigned")
        out: set[uuid.UUID] = set()
        if db is None:
            return out
        owner = entity_id.bytes
        with txn.cursor(db=db) as cur:
            if not cur.set_range(owner):
                return out
            for key in cur.iternext(values=False):
                if key[:16] != owner:
                    break
                out.add(uuid.UUID(bytes=bytes(key[16:32])))
        return out

    def _ref_edges(self, txn: lmdb.Transaction, ref: Ref) -> set[uuid.UUID]:
        try:
            entity_id = uuid.UUID(ref.key)
        except ValueError:
            return set()
        if ref.kind not in ("DEVICE", "EDGE") and self._get(txn, entity_id) is None:
            return set()
        return self._edges_holding(txn, ref.kind, entity_id)

    def _exists(self, txn: lmdb.Transaction, ref: Ref) -> bool:
        if ref.kind == "WIDGET_TYPE_FQN":
            return self._named(txn, "WIDGET_TYPE_FQN", ref.key) is not None
        try:
            entity_id = uuid.UUID(ref.key)
        except ValueError:
            return False
        if ref.kind == "DEVICE":
            return self._store._device(txn, entity_id) is not None
        if ref.kind == "EDGE":
            return txn.get(entity_id.bytes, db=self._db["edge_ids"]) is not None
        rec = self._get(txn, entity_id)
        return rec is not None and rec.kind == ref.kind

    def _is_assigned(self, txn: lmdb.Transaction, edge_id: uuid.UUID, kind: str,
                     entity_id: uuid.UUID) -> bool:
        db = self._db.get("g_assign")
        key = edge_id.bytes + bytes([_rank(kind)]) + entity_id.bytes
        return db is not None and txn.get(key, db=db) is not None

    def _ids_of_kind(self, txn: lmdb.Transaction, kind: str, after: uuid.UUID | None = None,
                     limit: int = 0) -> Iterator[uuid.UUID]:
        db = self._db.get("g_kinds")
        if db is None:
            return
        prefix = kind.encode() + b"\0"
        start = prefix + (after.bytes + b"\0" if after is not None else b"")
        count = 0
        with txn.cursor(db=db) as cur:
            if not cur.set_range(start):
                return
            for key in cur.iternext(values=False):
                if not bytes(key).startswith(prefix) or (limit and count >= limit):
                    return
                count += 1
                yield uuid.UUID(bytes=bytes(key[len(prefix):]))

    def _drop_assignment(self, txn: lmdb.Transaction, edge_id: uuid.UUID, kind: str,
                         entity_id: uuid.UUID) -> None:
        db = self._db.get("g_assign")
        if db is None:
            return
        txn.delete(edge_id.bytes + bytes([_rank(kind)]) + entity_id.bytes, db=db)
        txn.delete(entity_id.bytes + edge_id.bytes, db=self._dbh("g_assigned"))

    def _queue(self, txn: lmdb.Transaction, change: _Change, edges: Iterable[uuid.UUID],
               payload: bytes, kind: str) -> None:
        for edge_id in sorted(edges):
            self._store._enqueue(txn, edge_id, [payload])
            change.woken.add(edge_id)
            change.queued[kind] += 1
