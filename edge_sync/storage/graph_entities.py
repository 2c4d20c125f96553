"""The entity graph's entities: every entity's ThingsBoard 4.x JSON as received (or as the edge
made it) with its indexes, by id, by (type, name), what it provides (what satisfies a
reference) and what it references (its dependants, so a delete cascades), and per-type counts.
A delete removes, first, everything that depends on the entity, with their relations, held
versions and operational records (storage/entity_store.py: a device's record, token,
attributes and latest values).

Layout (storage/graph_keys.py):
  graph_entities      id(16) + type           -> (type, name, json, updated_ms, origin,
                                                  origin_seq, extra, refs, provides)
  graph_names         type \\0 name \\0 id(16)  -> b""   (also the index by type)
  graph_provided      ref                     -> entity key (what satisfies a reference)
  graph_refs          ref \\0 entity key        -> b""   (dependants: who references ref)
  meta                graph/count/<type>      -> the entities of that type (u64)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb
from loguru import logger

from edge_sync.common.entity_graph import Ref, provides
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.graph_held import HeldTable
from edge_sync.storage.graph_json import hard_references, name_of, parse_entity_json
from edge_sync.storage.graph_keys import (
    ADDED,
    CHANGED,
    CLOUD,
    CREATED,
    DELETED,
    DERIVED,
    ENTITIES,
    NAMES,
    PROVIDED,
    REFS,
    SEP,
    UNCHANGED,
    UPDATED,
    WAITABLE,
    GraphTables,
    entity_key,
    held_entity_key,
    name_key,
    name_prefix,
    prefixed,
    ref_bytes,
    ref_of,
    split_entity_key,
)
from edge_sync.storage.graph_log import ApplyLog
from edge_sync.storage.graph_relations import RelationTable
from edge_sync.storage.graph_sync import FullSyncState
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.storage.rule_store import RuleStore

_log = logger.bind(component="graph")

_COUNT = b"graph/count/"


@dataclass(frozen=True, slots=True)
class EntityRecord:
    """One entity as the edge keeps it."""

    entity_type: str  # ThingsBoard EntityType name: "ASSET", "DASHBOARD", ...
    id: uuid.UUID
    name: str  # "name", or "title" for dashboards/customers/tenant, "email" for users
    json: str  # ThingsBoard 4.x JSON, exactly as received (or as the edge made it)
    updated_ms: int
    origin: str  # "cloud" or "edge"
    origin_seq: int | None  # edge-originated: the seq of the event that carried its last change
    extra: str | None = None  # a widgets bundle's ``widgets`` field, kept alongside its JSON


@dataclass(slots=True)
class EntityRow:
    """A graph_entities value as stored (its id is in the key)."""

    entity_type: str
    name: str
    json: str
    updated_ms: int
    origin: str
    origin_seq: int | None
    extra: str | None
    refs: list[str]
    provides: list[str]

    def packed(self) -> bytes:
        return codec.pack((self.entity_type, self.name, self.json, self.updated_ms, self.origin,
                           self.origin_seq, self.extra, self.refs, self.provides))

    def record(self, key: bytes) -> EntityRecord:
        return EntityRecord(self.entity_type, uuid.UUID(bytes=key[:16]), self.name, self.json,
                            self.updated_ms, self.origin, self.origin_seq, self.extra)


class EntityTable:
    """Entities and their indexes in a store's transactions."""

    def __init__(self, tables: GraphTables, held: HeldTable, relations: RelationTable,
                 sync: FullSyncState, log: ApplyLog, entities_store: EntityStore) -> None:
        self._t = tables
        self._held = held
        self._relations = relations
        self._sync = sync
        self._log = log
        self._es = entities_store
        self._rpcs = RpcStore(tables.store)
        self._rules = RuleStore(tables.store)

    # -- reading ------------------------------------------------------------------------------

    def row(self, txn: lmdb.Transaction, key: bytes) -> EntityRow | None:
        raw = txn.get(key, db=self._t.db(ENTITIES))
        if raw is None:
            return None
        what = f"graph: entity {key[:16].hex()}"
        fields = codec.unpack_fields(raw, what, 9)
        try:
            (etype, name, text, updated, origin, origin_seq, extra, refs, provided) = fields
            return EntityRow(str(etype), str(name), str(text), int(updated), str(origin),
                             None if origin_seq is None else int(origin_seq),
                             None if extra is None else str(extra), [str(r) for r in refs],
                             [str(p) for p in provided])
        except (TypeError, ValueError) as exc:
            raise StorageCorrupt(f"{what}: record with a malformed field ({exc})") from exc

    def entity(self, txn: lmdb.Transaction, entity_id: uuid.UUID,
               entity_type: str | None = None) -> EntityRecord | None:
        """The entity with this id (of this type; without a type the main record: a rule
        chain rather than its metadata)."""
        if not self._t.present:
            return None
        if entity_type is not None:
            key = entity_key(entity_type, entity_id)
            row = self.row(txn, key)
            return None if row is None else row.record(key)
        found: EntityRecord | None = None
        for key, _ in prefixed(txn, self._t.db(ENTITIES), entity_id.bytes):
            row = self.row(txn, key)
            if row is None:
                continue
            if row.entity_type not in DERIVED:
                return row.record(key)
            found = found or row.record(key)
        return found

    def entities(self, txn: lmdb.Transaction, *, entity_type: str | None = None,
                 name: str | None = None) -> list[EntityRecord]:
        """Entities of a type and/or name (by type, then name); all of them with neither."""
        if not self._t.present:
            return []
        out: list[EntityRecord] = []
        if entity_type is None and name is None:
            with txn.cursor(db=self._t.db(ENTITIES)) as cur:
                for k, _ in cur.iternext():
                    key = bytes(k)
                    row = self.row(txn, key)
                    if row is not None:
                        out.append(row.record(key))
            return out
        if entity_type is None:
            prefixes = [b""]
        elif name is None:
            prefixes = [codec.text_key(entity_type) + SEP]
        else:
            prefixes = [name_prefix(entity_type, name)]
        for prefix in prefixes:
            for key, _ in prefixed(txn, self._t.db(NAMES), prefix):
                etype = key.partition(SEP)[0].decode()
                ekey = key[-16:] + codec.text_key(etype)
                row = self.row(txn, ekey)
                if row is None or (name is not None and row.name != name):
                    continue
                out.append(row.record(ekey))
        return out

    def count(self, txn: lmdb.Transaction, entity_type: str | None = None) -> int:
        """Entities (of a type); O(1)."""
        if not self._t.present:
            return 0
        if entity_type is None:
            return self._t.store.entries(txn, ENTITIES)
        return self._t.store.meta_int(txn, _COUNT + codec.text_key(entity_type))

    def present(self, txn: lmdb.Transaction, ref: Ref) -> bool:
        """Whether what ``ref`` names is on the edge: an entity (or a widget type fqn) of the
        graph, a device of the device table, or a kind the edge never waits for."""
        if ref.kind not in WAITABLE:
            return True
        if txn.get(ref_bytes(ref), db=self._t.db(PROVIDED)) is not None:
            return True
        if ref.kind == "DEVICE":
            try:
                return self._es.has_device(txn, uuid.UUID(ref.key))
            except ValueError:
                return False
        return False

    def dependants(self, txn: lmdb.Transaction, ref: Ref) -> list[tuple[str, uuid.UUID]]:
        """The entities that hard-reference ``ref`` (type, id)."""
        out: list[tuple[str, uuid.UUID]] = []
        for key, _ in prefixed(txn, self._t.db(REFS), ref_bytes(ref) + SEP):
            dep_id, dep_type = split_entity_key(key[len(ref_bytes(ref)) + 1:])
            out.append((dep_type, dep_id))
        return out

    # -- writing ------------------------------------------------------------------------------

    def put(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID,
            json_text: str, *, now_ms: int, origin: str = CLOUD, origin_seq: int | None = None,
            extra: str | None = None, body: Mapping[str, Any] | None = None,
            refs: Sequence[Ref] | None = None) -> str:
        """Insert or replace an entity's JSON: "created", "updated", or "unchanged" (the same
        JSON and extra: nothing written, no apply log entry). ``body``: the JSON already
        parsed, ``refs`` its hard_references, when the caller has them. A held payload of the
        same entity is dropped (this write is newer)."""
        key = entity_key(entity_type, entity_id)
        try:
            old = self.row(txn, key)
        except StorageCorrupt as exc:  # overwritten: the write repairs the record
            _log.bind(entity_type=entity_type, entity_id=str(entity_id)).warning(
                "damaged graph record of {} {} replaced: {}", entity_type, entity_id, exc)
            old = None
            txn.delete(key, db=self._t.db(ENTITIES))
            self._count(txn, entity_type, -1)
        self._held.drop(txn, held_entity_key(entity_type, entity_id))
        if old is not None and old.json == json_text and old.extra == extra:
            self._sync.mark(txn, b"E" + key)
            return UNCHANGED
        if body is None:
            body = parse_entity_json(json_text, entity_type)
        name = name_of(entity_type, body)
        ref_texts = [ref_bytes(r).decode() for r in (
            refs if refs is not None else hard_references(entity_type, body))]
        provided = [ref_bytes(r).decode() for r in provides(entity_type, entity_id, body)]
        names, rdb, pdb = self._t.db(NAMES), self._t.db(REFS), self._t.db(PROVIDED)
        if old is not None:
            if old.name != name:
                txn.delete(name_key(entity_type, old.name, entity_id), db=names)
            for r in set(old.refs) - set(ref_texts):
                txn.delete(r.encode() + SEP + key, db=rdb)
            self._release_provided(txn, key, set(old.provides) - set(provided))
        row = EntityRow(entity_type, name, json_text, now_ms, origin, origin_seq, extra,
                        ref_texts, provided)
        txn.put(key, row.packed(), db=self._t.db(ENTITIES))
        txn.put(name_key(entity_type, name, entity_id), b"", db=names)
        for r in ref_texts:
            txn.put(r.encode() + SEP + key, b"", db=rdb)
        for p in provided:
            txn.put(p.encode(), key, db=pdb)
        if old is None:
            self._count(txn, entity_type, +1)
        self._log.append(txn, now_ms, entity_type, str(entity_id),
                         ADDED if old is None else UPDATED, origin)
        self._sync.mark(txn, b"E" + key)
        return CREATED if old is None else CHANGED

    def _release_provided(self, txn: lmdb.Transaction, key: bytes, refs: Iterable[str]
                          ) -> None:
        """Forget that the entity at ``key`` provides ``refs`` (ref texts), where it still is
        their provider."""
        pdb = self._t.db(PROVIDED)
        for p in refs:
            pb = p.encode()
            holder = txn.get(pb, db=pdb)
            if holder is not None and bytes(holder) == key:
                txn.delete(pb, db=pdb)

    def _count(self, txn: lmdb.Transaction, entity_type: str, delta: int) -> None:
        store = self._t.store
        key = _COUNT + codec.text_key(entity_type)
        store.put_meta_int(txn, key, max(0, store.meta_int(txn, key) + delta))

    # -- deleting, with what depends on it ------------------------------------------------------

    def delete(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID, *,
               now_ms: int, origin: str = CLOUD,
               relations_removed: list[str] | None = None) -> list[Ref]:
        """Remove an entity and, first, everything that depends on it: entities that
        hard-reference it (recursively), relations from or to each, a device's record, token,
        attributes and latest values, a held update of each. Each removal is logged; the
        entities removed are returned, dependants before what they referenced (the relations
        removed go to ``relations_removed``, as the apply log names them)."""
        order: list[tuple[str, uuid.UUID]] = []
        visited: set[tuple[str, uuid.UUID]] = set()
        stack: list[tuple[tuple[str, uuid.UUID], Iterator[tuple[str, uuid.UUID]]]] = []
        start = (entity_type, entity_id)
        visited.add(start)
        stack.append((start, iter(self._dependants_of(txn, *start))))
        while stack:  # post-order: an entity after everything that references it
            node, deps = stack[-1]
            nxt = next(deps, None)
            if nxt is None:
                stack.pop()
                order.append(node)
            elif nxt not in visited:
                visited.add(nxt)
                stack.append((nxt, iter(self._dependants_of(txn, *nxt))))
        removed: list[Ref] = []
        for etype, eid in order:
            if self._remove_one(txn, etype, eid, now_ms=now_ms, origin=origin,
                                relations_removed=relations_removed):
                removed.append(Ref(etype, str(eid)))
        return removed

    def _dependants_of(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID
                       ) -> list[tuple[str, uuid.UUID]]:
        row = self.row(txn, entity_key(entity_type, entity_id))
        refs = ([ref_of(p.encode()) for p in row.provides] if row is not None
                else [Ref(entity_type, str(entity_id))])
        out: list[tuple[str, uuid.UUID]] = []
        for ref in refs:
            out.extend(self.dependants(txn, ref))
        return out

    def _remove_one(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID, *,
                    now_ms: int, origin: str, relations_removed: list[str] | None) -> bool:
        """Remove one entity (its dependants are gone already); whether anything was there."""
        key = entity_key(entity_type, entity_id)
        row = self.row(txn, key)
        found = row is not None
        found |= self._relations.delete_all(txn, Ref(entity_type, str(entity_id)),
                                            now_ms=now_ms, origin=origin,
                                            removed=relations_removed) > 0
        found |= self._held.drop(txn, held_entity_key(entity_type, entity_id))
        found |= self._remove_operational(txn, entity_type, entity_id, now_ms=now_ms)
        if row is not None:
            for r in row.refs:
                txn.delete(r.encode() + SEP + key, db=self._t.db(REFS))
            self._release_provided(txn, key, row.provides)
            txn.delete(name_key(entity_type, row.name, entity_id), db=self._t.db(NAMES))
            txn.delete(key, db=self._t.db(ENTITIES))
            self._sync.unmark(txn, b"E" + key)
            self._count(txn, entity_type, -1)
        if found:
            self._log.append(txn, now_ms, entity_type, str(entity_id), DELETED, origin)
            _log.bind(entity_type=entity_type, entity_id=str(entity_id), action=DELETED,
                      origin=origin).debug("{} {} removed", entity_type, entity_id)
        return found

    def _remove_operational(self, txn: lmdb.Transaction, entity_type: str,
                            entity_id: uuid.UUID, *, now_ms: int) -> bool:
        """The operational records of the entity store that go with an entity (a device's
        open RPC requests are closed, whatever removed it: RpcStore.close_device), and its rule
        state and local timeseries (RuleStore.delete_entity)."""
        es = self._es
        # a derived record (credentials, metadata) shares its owner's id: the owner's attributes
        # and latest values (and rule data) stay while the owner does
        found = entity_type not in DERIVED and es.delete_entity_data(txn, entity_id) > 0
        if entity_type not in DERIVED:
            self._rules.delete_entity(txn, entity_id)
        if entity_type == "DEVICE":
            found |= es.delete_device(txn, entity_id)
            self._rpcs.close_device(txn, entity_id, now_ms=now_ms)
        elif entity_type == "DEVICE_PROFILE":
            found |= es.delete_device_profile(txn, entity_id)
        elif entity_type == "TENANT":
            tenant = es.tenant(txn)
            if tenant is not None and tenant.id == entity_id:
                found |= es.delete_tenant(txn)
        return found
