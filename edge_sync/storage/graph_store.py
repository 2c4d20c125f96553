"""The entity graph on the edge: every entity the cloud syncs (and the edge makes) as its
ThingsBoard 4.x JSON, exactly as received, with the indexes that keep it consistent: by id, by
(type, name), relations by either end, what references what (so a delete cascades), entities
held back until their references arrive, an apply log, and the state of the full sync.

The vocabulary (kinds, hard references, what an entity provides) is common/entity_graph.py;
applying downlinks is link/graph_apply.py. ThingsBoard's own edge keeps the same data in its
SQL tables (thingsboard-edge, ``service/cloud/rpc/processor/*CloudProcessor``); unlike it, this
store holds an entity back until what it references is on the edge instead of failing it, and
removes after a full sync what the cloud no longer assigns to the edge.

Layout (named databases of the edge's LMDB environment, storage/env.py LATER_DB_NAMES; every
value in codec.py's checksummed envelope):
  graph_entities      id(16) + type           -> (type, name, json, updated_ms, origin,
                                                  origin_seq, extra, refs, provides)
  graph_names         type \\0 name \\0 id(16)  -> b""   (also the index by type)
  graph_provided      ref                     -> entity key (what satisfies a reference)
  graph_refs          ref \\0 entity key        -> b""   (dependants: who references ref)
  graph_relations     from(16) to(16) tail    -> (from kind, from id, to kind, to id, type,
                                                  group, json, updated_ms, origin, origin_seq)
  graph_relations_to  to(16) from(16) tail    -> b""
  graph_held          held key                -> (type, id or None, what, list field,
                                                  payload, waiting_for, since_ms)
  graph_waiting       ref \\0 held key          -> b""
  graph_seen          E/R/H + key             -> b""   (marks of the running full sync)
  graph_log           index(u64)              -> (ts, type, id, action, origin)
  meta                graph/... keys: per-type counts, the log's next index, the sync state
A ref is ``kind \\0 key`` (entity_graph.Ref); an entity key is id(16) + type, so a rule chain
and its metadata (or a device and its credentials) share an id. A relation's tail is
``type \\0 group`` (a 16-byte digest when that is longer than 200 bytes). Names longer than 400
bytes are cut in the name index; lookups compare the full name of the record.

The apply log keeps the newest 200,000 entries (APPLY_LOG_KEEP); older ones are dropped as new
ones come, one deletion per append.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import lmdb
from loguru import logger

from edge_sync.common.entity_graph import BY_TYPE, Ref, provides, references, relation_key
from edge_sync.errors import BadRequest, StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Status

_log = logger.bind(component="graph")

APPLY_LOG_KEEP = 200_000
"""Apply log entries kept (the newest)."""

CLOUD, EDGE = "cloud", "edge"
ADDED, UPDATED, DELETED = "ADDED", "UPDATED", "DELETED"
CREATED, CHANGED, UNCHANGED = "created", "updated", "unchanged"

_ENT, _NAMES, _PROVIDED, _REFS = "graph_entities", "graph_names", "graph_provided", "graph_refs"
_RELS, _RELS_TO, _HELD, _WAITING = ("graph_relations", "graph_relations_to", "graph_held",
                                    "graph_waiting")
_SEEN, _LOG = "graph_seen", "graph_log"

_COUNT = b"graph/count/"
_LOG_NEXT = b"graph/log_next"
_SYNC = b"graph/sync"
_ACTIVE = b"graph/full_sync_active"  # present while a full sync marks what it sees
_SEP = b"\x00"
_NAME_MAX = 400
_TAIL_MAX = 200
# kinds an entity record shares its id with: an id alone finds the main record first
_DERIVED = frozenset({"RULE_CHAIN_METADATA", "USER_CREDENTIALS", "DEVICE_CREDENTIALS"})
# kinds the edge may wait for: the graph's kinds and widget type fqns. A reference to any other
# kind (the edge itself, an alarm) can never arrive, so nothing waits for it.
WAITABLE = frozenset(BY_TYPE) | {"WIDGET_TYPE_FQN"}


# -- records ----------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class HeldEntity:
    """An entity (or relation) waiting for its references."""

    entity_type: str
    id: uuid.UUID | None  # None for a relation (its key is in `what`)
    what: str  # "DEVICE 1234… (pump-7)" / "RELATION A -Contains-> B"
    waiting_for: tuple[Ref, ...]
    since_ms: int


@dataclass(frozen=True, slots=True)
class HeldPayload:
    """What a held entity needs to be applied later: the DownlinkMsg list it came in and that
    one payload, serialized."""

    key: bytes
    entity: HeldEntity
    field: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ApplyLogEntry:
    index: int
    ts: int
    entity_type: str
    id: str  # the entity id; for a relation "FROM->TO TYPE/GROUP"
    action: str  # ADDED / UPDATED / DELETED
    origin: str


@dataclass(frozen=True, slots=True)
class SyncState:
    """Where the edge stands with full syncs (what the sync-mode decision reads)."""

    completed_version: str | None = None  # the edge version of the last completed full sync
    completed_ms: int | None = None
    in_progress: bool = False  # a full sync started and did not complete (yet)
    generation: int = 0  # full syncs started in this store
    started_ms: int | None = None
    started_reason: str = ""
    requested: str | None = None  # an operator asked for a full sync: why
    damaged: str | None = None  # damage found in the graph: what


@dataclass(frozen=True, slots=True)
class Removal:
    """An entity or relation removed by a full sync's end (no longer assigned to the edge)."""

    entity_type: str
    id: str
    what: str


@dataclass(slots=True)
class _Rec:
    entity_type: str
    name: str
    json: str
    updated_ms: int
    origin: str
    origin_seq: int | None
    extra: str | None
    refs: list[str]
    provides: list[str]


# -- keys ---------------------------------------------------------------------------------------


def ref_bytes(ref: Ref) -> bytes:
    return codec.text_key(ref.kind) + _SEP + codec.text_key(ref.key)


def _ref_of(raw: bytes) -> Ref:
    kind, _, key = raw.partition(_SEP)
    return Ref(kind.decode(), key.decode())


def entity_key(entity_type: str, entity_id: uuid.UUID) -> bytes:
    return entity_id.bytes + codec.text_key(entity_type)


def _split_entity_key(key: bytes) -> tuple[uuid.UUID, str]:
    if len(key) <= 16:
        raise StorageCorrupt(f"graph: entity key of {len(key)} bytes")
    return uuid.UUID(bytes=key[:16]), key[16:].decode()


def _rel_tail(rel_type: str, group: str) -> bytes:
    tail = codec.text_key(rel_type) + _SEP + codec.text_key(group)
    if len(tail) > _TAIL_MAX:
        tail = b"\x01" + hashlib.blake2b(tail, digest_size=16).digest()
    return tail


def _ref_uuid(ref: Ref) -> uuid.UUID:
    try:
        return uuid.UUID(ref.key)
    except ValueError as exc:
        raise BadRequest(f"relation end {ref} is not an entity id") from exc


def relation_db_key(src: Ref, dst: Ref, rel_type: str, group: str) -> bytes:
    return _ref_uuid(src).bytes + _ref_uuid(dst).bytes + _rel_tail(rel_type, group)


def held_entity_key(entity_type: str, entity_id: uuid.UUID) -> bytes:
    return b"E" + entity_key(entity_type, entity_id)


def held_relation_key(src: Ref, dst: Ref, rel_type: str, group: str) -> bytes:
    return b"R" + relation_db_key(src, dst, rel_type, group)


def _name_key(entity_type: str, name: str, entity_id: uuid.UUID) -> bytes:
    return _name_prefix(entity_type, name) + entity_id.bytes


def _name_prefix(entity_type: str, name: str) -> bytes:
    raw = codec.text_key(name)[:_NAME_MAX]
    return codec.text_key(entity_type) + _SEP + raw.replace(_SEP, b"\x01") + _SEP


def relation_text(src: Ref, dst: Ref, rel_type: str, group: str) -> str:
    """A relation's id in the apply log."""
    return f"{src.key}->{dst.key} {rel_type}/{group}"


def describe_relation(src: Ref, dst: Ref, rel_type: str) -> str:
    return f"RELATION {src} -{rel_type}-> {dst}"


# -- JSON -----------------------------------------------------------------------------------------


def name_of(entity_type: str, body: Mapping[str, Any]) -> str:
    """The entity's name as ThingsBoard shows it."""
    field = ("email" if entity_type == "USER"
             else "title" if entity_type in ("DASHBOARD", "CUSTOMER", "TENANT") else "name")
    for key in (field, "name", "title"):  # a widgets bundle has a title, say
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def hard_references(entity_type: str, body: Mapping[str, Any]) -> list[Ref]:
    """entity_graph.references (kept as this module's name for it)."""
    return references(entity_type, body)


def _json_body(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{what}: entity is not JSON") from exc
    if not isinstance(value, dict):
        raise BadRequest(f"{what}: entity is not a JSON object")
    return value


def _prefixed(txn: lmdb.Transaction, db: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    with txn.cursor(db=db) as cur:
        if not cur.set_range(prefix):
            return
        for k, v in cur.iternext():
            key = bytes(k)
            if not key.startswith(prefix):
                break
            yield key, bytes(v)


# -- the store ------------------------------------------------------------------------------------


class GraphStore:
    """Synchronous access to the entity graph inside LmdbStore transactions. On a read-only
    open of a store of an earlier release (no graph databases) every read finds nothing."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self._dbs = store.dbs
        self._meta = store.dbs["meta"]
        self.entities_store = EntityStore(store)
        self._present = all(name in store.dbs for name in (_ENT, _LOG))

    def _db(self, name: str) -> Any:
        return self._dbs[name]

    # -- reading ------------------------------------------------------------------------------

    def _get(self, txn: lmdb.Transaction, key: bytes) -> _Rec | None:
        raw = txn.get(key, db=self._db(_ENT))
        if raw is None:
            return None
        what = f"graph: entity {key[:16].hex()}"
        fields = codec.unpack_fields(raw, what, 9)
        try:
            (etype, name, text, updated, origin, origin_seq, extra, refs, provided) = fields
            return _Rec(str(etype), str(name), str(text), int(updated), str(origin),
                        None if origin_seq is None else int(origin_seq),
                        None if extra is None else str(extra), [str(r) for r in refs],
                        [str(p) for p in provided])
        except (TypeError, ValueError) as exc:
            raise StorageCorrupt(f"{what}: record with a malformed field ({exc})") from exc

    @staticmethod
    def _record(key: bytes, rec: _Rec) -> EntityRecord:
        return EntityRecord(rec.entity_type, uuid.UUID(bytes=key[:16]), rec.name, rec.json,
                            rec.updated_ms, rec.origin, rec.origin_seq, rec.extra)

    def entity(self, txn: lmdb.Transaction, entity_id: uuid.UUID,
               entity_type: str | None = None) -> EntityRecord | None:
        """The entity with this id (of this type; without a type the main record: a rule
        chain rather than its metadata)."""
        if not self._present:
            return None
        if entity_type is not None:
            key = entity_key(entity_type, entity_id)
            rec = self._get(txn, key)
            return None if rec is None else self._record(key, rec)
        found: EntityRecord | None = None
        for key, _ in _prefixed(txn, self._db(_ENT), entity_id.bytes):
            rec = self._get(txn, key)
            if rec is None:
                continue
            if rec.entity_type not in _DERIVED:
                return self._record(key, rec)
            found = found or self._record(key, rec)
        return found

    def entities(self, txn: lmdb.Transaction, *, entity_type: str | None = None,
                 name: str | None = None) -> list[EntityRecord]:
        """Entities of a type and/or name (by type, then name); all of them with neither."""
        if not self._present:
            return []
        out: list[EntityRecord] = []
        if entity_type is None and name is None:
            with txn.cursor(db=self._db(_ENT)) as cur:
                for k, _ in cur.iternext():
                    key = bytes(k)
                    rec = self._get(txn, key)
                    if rec is not None:
                        out.append(self._record(key, rec))
            return out
        if entity_type is None:
            prefixes = [b""]
        elif name is None:
            prefixes = [codec.text_key(entity_type) + _SEP]
        else:
            prefixes = [_name_prefix(entity_type, name)]
        for prefix in prefixes:
            for key, _ in _prefixed(txn, self._db(_NAMES), prefix):
                etype = key.partition(_SEP)[0].decode()
                ekey = key[-16:] + codec.text_key(etype)
                rec = self._get(txn, ekey)
                if rec is None or (name is not None and rec.name != name):
                    continue
                out.append(self._record(ekey, rec))
        return out

    def count(self, txn: lmdb.Transaction, entity_type: str | None = None) -> int:
        """Entities (of a type); O(1)."""
        if not self._present:
            return 0
        if entity_type is None:
            return self.store.entries(txn, _ENT)
        return self.store.meta_int(txn, _COUNT + codec.text_key(entity_type))

    def relations(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        """The relation JSON objects from and to an entity (from first)."""
        if not self._present:
            return []
        out: list[dict[str, Any]] = []
        for _, raw in _prefixed(txn, self._db(_RELS), entity_id.bytes):
            out.append(json.loads(self._relation_fields(raw)[6]))
        for key, _ in _prefixed(txn, self._db(_RELS_TO), entity_id.bytes):
            raw_rel = txn.get(key[16:32] + key[:16] + key[32:], db=self._db(_RELS))
            if raw_rel is not None and key[16:32] != entity_id.bytes:  # a self-relation: once
                out.append(json.loads(self._relation_fields(bytes(raw_rel))[6]))
        return out

    def relation_count(self, txn: lmdb.Transaction) -> int:
        return self.store.entries(txn, _RELS) if self._present else 0

    @staticmethod
    def _relation_fields(raw: bytes) -> list[Any]:
        return codec.unpack_fields(raw, "graph: relation", 10)

    def present(self, txn: lmdb.Transaction, ref: Ref) -> bool:
        """Whether what ``ref`` names is on the edge: an entity (or a widget type fqn) of the
        graph, a device of the device table, or a kind the edge never waits for."""
        if ref.kind not in WAITABLE:
            return True
        if txn.get(ref_bytes(ref), db=self._db(_PROVIDED)) is not None:
            return True
        if ref.kind == "DEVICE":
            try:
                return self.entities_store.has_device(txn, uuid.UUID(ref.key))
            except ValueError:
                return False
        return False

    # -- writing entities -----------------------------------------------------------------------

    def put_entity(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID,
                   json_text: str, *, now_ms: int, origin: str = CLOUD,
                   origin_seq: int | None = None, extra: str | None = None,
                   body: Mapping[str, Any] | None = None,
                   refs: Sequence[Ref] | None = None) -> str:
        """Insert or replace an entity's JSON: "created", "updated", or "unchanged" (the same
        JSON and extra: nothing written, no apply log entry). ``body``: the JSON already
        parsed, ``refs`` its hard_references, when the caller has them. A held payload of the
        same entity is dropped (this write is newer)."""
        key = entity_key(entity_type, entity_id)
        try:
            old = self._get(txn, key)
        except StorageCorrupt as exc:  # overwritten: the write repairs the record
            _log.bind(entity_type=entity_type, entity_id=str(entity_id)).warning(
                "damaged graph record of {} {} replaced: {}", entity_type, entity_id, exc)
            old = None
            txn.delete(key, db=self._db(_ENT))
            self._count(txn, entity_type, -1)
        self.drop_held(txn, held_entity_key(entity_type, entity_id))
        if old is not None and old.json == json_text and old.extra == extra:
            self._mark_seen(txn, b"E" + key)
            return UNCHANGED
        if body is None:
            body = _json_body(json_text, entity_type)
        name = name_of(entity_type, body)
        ref_texts = [ref_bytes(r).decode() for r in (
            refs if refs is not None else hard_references(entity_type, body))]
        provided = [ref_bytes(r).decode() for r in provides(entity_type, entity_id, body)]
        names, rdb, pdb = self._db(_NAMES), self._db(_REFS), self._db(_PROVIDED)
        if old is not None:
            if old.name != name:
                txn.delete(_name_key(entity_type, old.name, entity_id), db=names)
            for r in set(old.refs) - set(ref_texts):
                txn.delete(r.encode() + _SEP + key, db=rdb)
            for p in set(old.provides) - set(provided):
                pb = p.encode()
                holder = txn.get(pb, db=pdb)
                if holder is not None and bytes(holder) == key:
                    txn.delete(pb, db=pdb)
        rec = _Rec(entity_type, name, json_text, now_ms, origin, origin_seq, extra, ref_texts,
                   provided)
        txn.put(key, self._pack(rec), db=self._db(_ENT))
        txn.put(_name_key(entity_type, name, entity_id), b"", db=names)
        for r in ref_texts:
            txn.put(r.encode() + _SEP + key, b"", db=rdb)
        for p in provided:
            txn.put(p.encode(), key, db=pdb)
        if old is None:
            self._count(txn, entity_type, +1)
        self._append_log(txn, now_ms, entity_type, str(entity_id),
                         ADDED if old is None else UPDATED, origin)
        self._mark_seen(txn, b"E" + key)
        return CREATED if old is None else CHANGED

    @staticmethod
    def _pack(rec: _Rec) -> bytes:
        return codec.pack((rec.entity_type, rec.name, rec.json, rec.updated_ms, rec.origin,
                           rec.origin_seq, rec.extra, rec.refs, rec.provides))

    def _count(self, txn: lmdb.Transaction, entity_type: str, delta: int) -> None:
        key = _COUNT + codec.text_key(entity_type)
        self.store.put_meta_int(txn, key, max(0, self.store.meta_int(txn, key) + delta))

    def dependants(self, txn: lmdb.Transaction, ref: Ref) -> list[tuple[str, uuid.UUID]]:
        """The entities that hard-reference ``ref`` (type, id)."""
        out: list[tuple[str, uuid.UUID]] = []
        for key, _ in _prefixed(txn, self._db(_REFS), ref_bytes(ref) + _SEP):
            dep_id, dep_type = _split_entity_key(key[len(ref_bytes(ref)) + 1:])
            out.append((dep_type, dep_id))
        return out

    def delete_entity(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID, *,
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
        rec = self._get(txn, entity_key(entity_type, entity_id))
        refs = ([_ref_of(p.encode()) for p in rec.provides] if rec is not None
                else [Ref(entity_type, str(entity_id))])
        out: list[tuple[str, uuid.UUID]] = []
        for ref in refs:
            out.extend(self.dependants(txn, ref))
        return out

    def _remove_one(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID, *,
                    now_ms: int, origin: str, relations_removed: list[str] | None) -> bool:
        """Remove one entity (its dependants are gone already); whether anything was there."""
        key = entity_key(entity_type, entity_id)
        rec = self._get(txn, key)
        found = rec is not None
        found |= self.delete_relations(txn, Ref(entity_type, str(entity_id)), now_ms=now_ms,
                                       origin=origin, removed=relations_removed) > 0
        found |= self.drop_held(txn, held_entity_key(entity_type, entity_id))
        found |= self._remove_operational(txn, entity_type, entity_id)
        if rec is not None:
            pdb = self._db(_PROVIDED)
            for r in rec.refs:
                txn.delete(r.encode() + _SEP + key, db=self._db(_REFS))
            for p in rec.provides:
                holder = txn.get(p.encode(), db=pdb)
                if holder is not None and bytes(holder) == key:
                    txn.delete(p.encode(), db=pdb)
            txn.delete(_name_key(entity_type, rec.name, entity_id), db=self._db(_NAMES))
            txn.delete(key, db=self._db(_ENT))
            txn.delete(b"E" + key, db=self._db(_SEEN))
            self._count(txn, entity_type, -1)
        if found:
            self._append_log(txn, now_ms, entity_type, str(entity_id), DELETED, origin)
            _log.bind(entity_type=entity_type, entity_id=str(entity_id), action=DELETED,
                      origin=origin).debug("{} {} removed", entity_type, entity_id)
        return found

    def _remove_operational(self, txn: lmdb.Transaction, entity_type: str,
                            entity_id: uuid.UUID) -> bool:
        """The operational records of the entity store that go with an entity."""
        es = self.entities_store
        found = es.delete_entity_data(txn, entity_id) > 0
        if entity_type == "DEVICE":
            found |= es.delete_device(txn, entity_id)
        elif entity_type == "DEVICE_PROFILE":
            found |= es.delete_device_profile(txn, entity_id)
        elif entity_type == "TENANT":
            tenant = es.tenant(txn)
            if tenant is not None and tenant.id == entity_id:
                found |= es.delete_tenant(txn)
        return found

    # -- relations ------------------------------------------------------------------------------

    def put_relation(self, txn: lmdb.Transaction, json_text: str, *, now_ms: int,
                     origin: str = CLOUD, origin_seq: int | None = None,
                     body: Mapping[str, Any] | None = None) -> str:
        """Insert or replace a relation (ThingsBoard's EntityRelation JSON): created, updated
        or unchanged. BadRequest when an end is missing."""
        if body is None:
            body = _json_body(json_text, "RELATION")
        found = relation_key(body)
        if found is None:
            raise BadRequest("relation without both ends (from, to)")
        src, dst, rel_type, group = found
        key = relation_db_key(src, dst, rel_type, group)
        self.drop_held(txn, b"R" + key)
        old = txn.get(key, db=self._db(_RELS))
        if old is not None and self._relation_fields(bytes(old))[6] == json_text:
            self._mark_seen(txn, b"R" + key)
            return UNCHANGED
        txn.put(key, codec.pack((src.kind, src.key, dst.kind, dst.key, rel_type, group,
                                 json_text, now_ms, origin, origin_seq)), db=self._db(_RELS))
        txn.put(key[16:32] + key[:16] + key[32:], b"", db=self._db(_RELS_TO))
        self._append_log(txn, now_ms, "RELATION", relation_text(src, dst, rel_type, group),
                         ADDED if old is None else UPDATED, origin)
        self._mark_seen(txn, b"R" + key)
        return CREATED if old is None else CHANGED

    def delete_relation(self, txn: lmdb.Transaction, src: Ref, dst: Ref, rel_type: str,
                        group: str, *, now_ms: int, origin: str = CLOUD) -> bool:
        """Remove one relation (and a held version of it); whether it was there."""
        key = relation_db_key(src, dst, rel_type, group)
        dropped = self.drop_held(txn, b"R" + key)
        gone = self._delete_relation_key(txn, key, now_ms=now_ms, origin=origin) is not None
        return gone or dropped

    def _delete_relation_key(self, txn: lmdb.Transaction, key: bytes, *, now_ms: int,
                             origin: str) -> str | None:
        """Remove a relation by its key; its apply log id, None when there was none."""
        raw = txn.get(key, db=self._db(_RELS))
        if raw is None:
            return None
        f = self._relation_fields(bytes(raw))
        txn.delete(key, db=self._db(_RELS))
        txn.delete(key[16:32] + key[:16] + key[32:], db=self._db(_RELS_TO))
        txn.delete(b"R" + key, db=self._db(_SEEN))
        text = relation_text(Ref(f[0], f[1]), Ref(f[2], f[3]), f[4], f[5])
        self._append_log(txn, now_ms, "RELATION", text, DELETED, origin)
        return text

    def delete_relations(self, txn: lmdb.Transaction, ref: Ref, *, now_ms: int,
                         origin: str = CLOUD, removed: list[str] | None = None) -> int:
        """Remove every relation from or to ``ref`` (that kind and id); how many (their apply
        log ids appended to ``removed``)."""
        try:
            rid = uuid.UUID(ref.key).bytes
        except ValueError:
            return 0
        keys = [k for k, v in _prefixed(txn, self._db(_RELS), rid)
                if self._relation_fields(v)[0] == ref.kind]
        for k, _ in _prefixed(txn, self._db(_RELS_TO), rid):
            key = k[16:32] + k[:16] + k[32:]
            raw = txn.get(key, db=self._db(_RELS))
            if raw is not None and self._relation_fields(bytes(raw))[2] == ref.kind:
                keys.append(key)
        n = 0
        for k in dict.fromkeys(keys):
            text = self._delete_relation_key(txn, k, now_ms=now_ms, origin=origin)
            if text is not None:
                n += 1
                if removed is not None:
                    removed.append(text)
        return n

    # -- held entities --------------------------------------------------------------------------

    def hold(self, txn: lmdb.Transaction, key: bytes, *, entity_type: str,
             entity_id: uuid.UUID | None, what: str, field: str, payload: bytes,
             waiting_for: Sequence[Ref], now_ms: int) -> None:
        """Keep a payload until every ref of ``waiting_for`` is on the edge (replacing an
        earlier held payload of the same key). During a full sync the held payload, and the
        applied version of the entity if there is one, count as seen."""
        self.drop_held(txn, key)
        txn.put(key, codec.pack((entity_type, None if entity_id is None else str(entity_id),
                                 what, field, payload, [ref_bytes(r).decode()
                                                        for r in waiting_for], now_ms)),
                db=self._db(_HELD))
        for ref in waiting_for:
            txn.put(ref_bytes(ref) + _SEP + key, b"", db=self._db(_WAITING))
        self._mark_seen(txn, b"H" + key)
        self._mark_seen(txn, key)  # E + entity key / R + relation key: the applied version

    def _held(self, txn: lmdb.Transaction, key: bytes) -> HeldPayload | None:
        raw = txn.get(key, db=self._db(_HELD))
        if raw is None:
            return None
        etype, eid, what, field, payload, waiting, since = codec.unpack_fields(
            bytes(raw), f"graph: held {key[:17].hex()}", 7)
        try:
            entity = HeldEntity(str(etype), None if eid is None else uuid.UUID(eid), str(what),
                                tuple(_ref_of(w.encode()) for w in waiting), int(since))
        except (TypeError, ValueError) as exc:
            raise StorageCorrupt(f"graph: held record with a malformed field ({exc})") from exc
        return HeldPayload(key, entity, str(field), bytes(payload))

    def held_payload(self, txn: lmdb.Transaction, key: bytes) -> HeldPayload | None:
        return self._held(txn, key)

    def held_keys(self, txn: lmdb.Transaction) -> list[bytes]:
        """The keys of everything held (one read of the held table)."""
        if not self._present:
            return []
        with txn.cursor(db=self._db(_HELD)) as cur:
            return [bytes(k) for k in cur.iternext(values=False)]

    def narrow_held(self, txn: lmdb.Transaction, key: bytes, waiting_for: Sequence[Ref]) -> None:
        """Some of what a held entity waited for has arrived: it now waits for ``waiting_for``
        only (held since the same time)."""
        found = self._held(txn, key)
        if found is None:
            return
        h = found.entity
        for ref in set(h.waiting_for) - set(waiting_for):
            txn.delete(ref_bytes(ref) + _SEP + key, db=self._db(_WAITING))
        txn.put(key, codec.pack((h.entity_type, None if h.id is None else str(h.id), h.what,
                                 found.field, found.payload,
                                 [ref_bytes(r).decode() for r in waiting_for], h.since_ms)),
                db=self._db(_HELD))

    def drop_held(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Forget a held payload (applied, replaced or deleted); whether there was one."""
        if not self._present:
            return False
        try:
            found = self._held(txn, key)
        except StorageCorrupt as exc:  # what it waited for is unknown: its index entries stay
            _log.bind(held_key=key.hex()).warning("damaged held entity dropped: {}", exc)
            txn.delete(key, db=self._db(_HELD))
            return True
        if found is None:
            return False
        for ref in found.entity.waiting_for:
            txn.delete(ref_bytes(ref) + _SEP + key, db=self._db(_WAITING))
        txn.delete(key, db=self._db(_HELD))
        txn.delete(b"H" + key, db=self._db(_SEEN))
        return True

    def waiting_on(self, txn: lmdb.Transaction, ref: Ref) -> list[bytes]:
        """The held keys waiting for ``ref``."""
        prefix = ref_bytes(ref) + _SEP
        return [key[len(prefix):] for key, _ in _prefixed(txn, self._db(_WAITING), prefix)]

    def held(self, txn: lmdb.Transaction) -> list[HeldEntity]:
        """Everything that waits, and for what."""
        if not self._present:
            return []
        out: list[HeldEntity] = []
        with txn.cursor(db=self._db(_HELD)) as cur:
            for k in cur.iternext(keys=True, values=False):
                found = self._held(txn, bytes(k))
                if found is not None:
                    out.append(found.entity)
        return out

    def held_count(self, txn: lmdb.Transaction) -> int:
        return self.store.entries(txn, _HELD) if self._present else 0

    def is_held(self, txn: lmdb.Transaction, key: bytes) -> bool:
        return self._present and txn.get(key, db=self._db(_HELD)) is not None

    # -- the apply log --------------------------------------------------------------------------

    def _append_log(self, txn: lmdb.Transaction, now_ms: int, entity_type: str, entity_id: str,
                    action: str, origin: str) -> None:
        index = self.store.meta_int(txn, _LOG_NEXT, 1)
        db = self._db(_LOG)
        txn.put(codec.u64(index), codec.pack((now_ms, entity_type, entity_id, action, origin)),
                db=db, append=True)
        self.store.put_meta_int(txn, _LOG_NEXT, index + 1)
        if self.store.entries(txn, _LOG) > APPLY_LOG_KEEP:
            with txn.cursor(db=db) as cur:
                if cur.first():
                    cur.delete()

    def apply_log(self, txn: lmdb.Transaction, *, after: int = 0, limit: int = 0
                  ) -> list[ApplyLogEntry]:
        """Apply log entries with an index above ``after``, oldest first (``limit`` 0: all)."""
        if not self._present:
            return []
        out: list[ApplyLogEntry] = []
        with txn.cursor(db=self._db(_LOG)) as cur:
            if not cur.set_range(codec.u64(after + 1)):
                return out
            for k, v in cur.iternext():
                if limit and len(out) >= limit:
                    break
                index = codec.from_u64(k, "graph_log: key")
                ts, etype, eid, action, origin = codec.unpack_fields(
                    v, f"graph_log: {index}", 5)
                out.append(ApplyLogEntry(index, int(ts), str(etype), str(eid), str(action),
                                         str(origin)))
        return out

    # -- full sync ------------------------------------------------------------------------------

    def sync_state(self, txn: lmdb.Transaction) -> SyncState:
        raw = txn.get(_SYNC, db=self._meta)
        if raw is None:
            return SyncState()
        f = codec.unpack_fields(raw, "meta: graph sync state", 8)
        try:
            return SyncState(
                completed_version=None if f[0] is None else str(f[0]),
                completed_ms=None if f[1] is None else int(f[1]), in_progress=bool(f[2]),
                generation=int(f[3]), started_ms=None if f[4] is None else int(f[4]),
                started_reason=str(f[5]), requested=None if f[6] is None else str(f[6]),
                damaged=None if f[7] is None else str(f[7]))
        except (TypeError, ValueError) as exc:
            raise StorageCorrupt(f"meta: graph sync state with a malformed field ({exc})") from exc

    def _put_sync_state(self, txn: lmdb.Transaction, s: SyncState) -> None:
        txn.put(_SYNC, codec.pack((s.completed_version, s.completed_ms, s.in_progress,
                                   s.generation, s.started_ms, s.started_reason, s.requested,
                                   s.damaged)), db=self._meta)

    def _state_or_fresh(self, txn: lmdb.Transaction) -> SyncState:
        try:
            return self.sync_state(txn)
        except StorageCorrupt as exc:
            return SyncState(damaged=f"sync state unreadable: {exc}")

    def request_full_sync(self, txn: lmdb.Transaction, reason: str) -> None:
        """An operator asked for a full sync: durable until one completes."""
        self._put_sync_state(txn, replace(self._state_or_fresh(txn), requested=reason or "asked"))

    def mark_damaged(self, txn: lmdb.Transaction, what: str) -> None:
        """Damage was found in the graph: the next connect asks for a full sync."""
        self._put_sync_state(txn, replace(self._state_or_fresh(txn), damaged=what or "damaged"))

    def full_sync_active(self, txn: lmdb.Transaction) -> bool:
        return self._present and txn.get(_ACTIVE, db=self._meta) is not None

    def start_full_sync(self, txn: lmdb.Transaction, *, now_ms: int, reason: str) -> int:
        """A full sync starts: a new generation, nothing seen yet, marked in progress until
        complete_full_sync (a crash in between leaves it in progress). Its generation."""
        state = self._state_or_fresh(txn)
        generation = state.generation + 1
        self._put_sync_state(txn, replace(state, in_progress=True, generation=generation,
                                          started_ms=now_ms, started_reason=reason))
        txn.drop(self._db(_SEEN), delete=False)
        txn.put(_ACTIVE, codec.u64(generation), db=self._meta)
        return generation

    def mark_seen(self, txn: lmdb.Transaction, *,
                  entity: tuple[str, uuid.UUID] | None = None,
                  relation: tuple[Ref, Ref, str, str] | None = None) -> None:
        """During a full sync: an entity or relation (applied, or held) counts as sent."""
        if entity is not None:
            key = entity_key(*entity)
            self._mark_seen(txn, b"E" + key)
            self._mark_seen(txn, b"HE" + key)
        if relation is not None:
            key = relation_db_key(*relation)
            self._mark_seen(txn, b"R" + key)
            self._mark_seen(txn, b"HR" + key)

    def held_outside_sync(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Whether a full sync is under way and has not sent this held entity again (it is
        removed at the sync's end unless it comes; releasing it now would keep it)."""
        return (txn.get(_ACTIVE, db=self._meta) is not None
                and txn.get(b"H" + key, db=self._db(_SEEN)) is None)

    def _mark_seen(self, txn: lmdb.Transaction, key: bytes) -> None:
        if txn.get(_ACTIVE, db=self._meta) is not None:
            txn.put(key, b"", db=self._db(_SEEN))

    def complete_full_sync(self, txn: lmdb.Transaction, *, now_ms: int, version: str
                           ) -> list[Removal]:
        """The full sync's SyncCompletedMsg: remove every entity and relation it did not send
        (with their dependants) and every held payload it did not send again, except what the
        edge made whose last change the cloud may not have yet (its event not DEPLOYED, or
        deployed after the sync started); record the edge version and clear the flags. What
        was removed, in order (an entity's dependants included)."""
        state = self._state_or_fresh(txn)
        removed: list[Removal] = []
        if txn.get(_ACTIVE, db=self._meta) is not None:
            removed = self._sweep(txn, now_ms=now_ms, started_ms=state.started_ms or now_ms)
            txn.drop(self._db(_SEEN), delete=False)
            txn.delete(_ACTIVE, db=self._meta)
        self._put_sync_state(txn, replace(state, completed_version=version, completed_ms=now_ms,
                                          in_progress=False, requested=None, damaged=None))
        return removed

    def _sweep(self, txn: lmdb.Transaction, *, now_ms: int, started_ms: int) -> list[Removal]:
        seen = self._db(_SEEN)
        events = EventLog(self.store)
        deployed_since = self._deployed_since(txn, started_ms)

        def keep(origin: str, origin_seq: int | None) -> bool:
            if origin != EDGE or origin_seq is None:
                return False
            if origin_seq in deployed_since:
                return True
            event = events.get(txn, origin_seq)
            return event is not None and event.status is not Status.DEPLOYED

        doomed: list[tuple[str, uuid.UUID]] = []
        with txn.cursor(db=self._db(_ENT)) as cur:  # the one scan of the sweep
            for k, _ in cur.iternext():
                key = bytes(k)
                if txn.get(b"E" + key, db=seen) is not None:
                    continue
                rec = self._get(txn, key)
                if rec is not None and not keep(rec.origin, rec.origin_seq):
                    doomed.append((rec.entity_type, uuid.UUID(bytes=key[:16])))
        doomed_rels: list[tuple[bytes, list[Any]]] = []
        with txn.cursor(db=self._db(_RELS)) as cur:
            for k, v in cur.iternext():
                key = bytes(k)
                if txn.get(b"R" + key, db=seen) is None:
                    f = self._relation_fields(bytes(v))
                    if not keep(f[8], f[9]):
                        doomed_rels.append((key, f))
        with txn.cursor(db=self._db(_HELD)) as cur:
            doomed_held = [bytes(k) for k in cur.iternext(values=False)
                           if txn.get(b"H" + bytes(k), db=seen) is None]
        out: list[Removal] = []
        for etype, eid in doomed:
            if self._get(txn, entity_key(etype, eid)) is None:
                continue  # gone already with an entity it depended on
            rels: list[str] = []
            for ref in self.delete_entity(txn, etype, eid, now_ms=now_ms,
                                          relations_removed=rels):
                out.append(Removal(ref.kind, ref.key, f"{ref.kind} {ref.key}"))
            out.extend(Removal("RELATION", text, f"RELATION {text}") for text in rels)
        for key, f in doomed_rels:
            if self._delete_relation_key(txn, key, now_ms=now_ms, origin=CLOUD) is not None:
                src, dst = Ref(f[0], f[1]), Ref(f[2], f[3])
                out.append(Removal("RELATION", relation_text(src, dst, f[4], f[5]),
                                   describe_relation(src, dst, f[4])))
        for key in doomed_held:
            found = self._held(txn, key)
            if found is not None and self.drop_held(txn, key):
                out.append(Removal(found.entity.entity_type, "" if found.entity.id is None
                                   else str(found.entity.id), f"held {found.entity.what}"))
        return out

    def _deployed_since(self, txn: lmdb.Transaction, since_ms: int) -> set[int]:
        """Seqs of the events marked DEPLOYED at or after ``since_ms`` (one range read of the
        event log's deployed-by-time index, from that time on)."""
        out: set[int] = set()
        with txn.cursor(db=self._db("deployed_by_time")) as cur:
            if cur.set_range(codec.time_seq_key(since_ms, 0)):
                for k in cur.iternext(values=False):
                    out.add(codec.from_time_seq_key(k)[1])
        return out
