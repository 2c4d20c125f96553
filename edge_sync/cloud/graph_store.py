"""The reference cloud's entity graph: every kind of ThingsBoard entity but devices (the tenant,
customers, device and asset profiles, assets, dashboards, widget bundles and types, rule chains
with their metadata, users, entity views, queues), which edge each is assigned to, and the
relations between entities. Devices keep their own tables (cloud/store.py, one edge each); the
graph refers to them and relations may name them.

Each change is one transaction that also queues, durably, the downlink of the change for every
edge that holds the entity (the edge's queue of cloud/store.py), so an edge offline gets it when
it connects. What "holds" means:

- the tenant, queues, users, widget types and bundles, device and asset profiles are on every
  edge, as ThingsBoard's full sync sends them to every edge (its EdgeSyncCursor: tenant, queues,
  tenant admin users, widget types and bundles, profiles);
- rule chains, customers, dashboards, assets and entity views are on the edges they are
  assigned to (the cloud's edge root rule chain is on every edge);
- a device is on its edge; a relation is on every edge that holds both its ends.

Downlinks, as ThingsBoard's edge processors build them: an assignment queues the entity ADDED
(ENTITY_CREATED; an asset with its asset profile, a rule chain with its metadata, as
AssetEdgeProcessor / a sync send them), then one relationUpdateMsg per relation whose other end is
on that edge, then (again) what on that edge was waiting for it; an update queues UPDATED to each
edge holding it; a deletion or an unassignment queues DELETED (the id only; the edge removes what
depends on the entity itself). An unassignment also takes off that edge, first, what is assigned
to it and hard-references the entity (its entity views, recursively): the edge's delete removed
them, and left assigned they would be sent by every full sync and held on the edge for ever. A
relation added or deleted queues its relationUpdateMsg (ENTITY_CREATED / ENTITY_DELETED,
ThingsBoard's getUpdateMsgType for RELATION_ADD_OR_UPDATE / RELATION_DELETED) to each edge
holding both ends. A device put on an edge (created there, or assigned to it) queues one
DownlinkMsg with the device, its credentials and its device profile as the graph stores it
(device_downlink_in: the JSON a full sync sends, so a device never overwrites the edge's copy of
its profile). An asset an edge sends is sent back to it (UPDATED) whenever the cloud's JSON is not
what the edge sent, tenant and customer aside (a new name, the profile its type names).

Refused at creation (BadRequest, nothing stored): an unknown kind, a missing name (``title`` of
a dashboard, customer or tenant, ``email`` of a user, ``title`` or else ``name`` of a widgets
bundle, whose ``name`` is then its title, as ThingsBoard's is), a reference to an entity that does
not exist, JSON that would not fit in one message to an edge (the limit named), a reference cycle
(entity_graph.find_cycle: rule chain A forwarding to B forwarding to A). Conflict: the name is
taken in its kind. A user's password (and password history, activation and reset tokens) is
never stored.

Layout (ids: 16 raw bytes; every value in storage/codec's checksummed envelope):
  g_entities   id -> (entity type, name, JSON, createdTime, updated ms, origin)
  g_names      entity type + 0 + name (or 1 + sha256 of a long one) -> id; also
               "WIDGET_TYPE_FQN" + 0 + fqn -> widget type id
  g_kinds      entity type + 0 + id -> b""
  g_metadata   rule chain id -> (RuleChainMetaData JSON, updated ms)
  g_relations  from id + to id + typeGroup + 0 + type -> EntityRelation JSON
  g_relations_to  to id + from id + typeGroup + 0 + type -> b""
  g_assign     edge id + sync rank (1 byte) + id -> entity type
  g_assigned   id + edge id -> b""
  g_refby      sha256(kind + 0 + key) + dependant id -> dependant's entity type
               (hard references, entity_graph.references: what a deletion would break)
The databases were added to the edge-cloud/3 format: created on a writable open, absent from a
read-only open of an older store (the graph then reads as empty).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import string
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks, tb_entities
from edge_sync.cloud.records import CloudDevice
from edge_sync.common import entity_graph, ids
from edge_sync.common.entity_graph import NULL_ID, Ref
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.common.wire import typed_id
from edge_sync.errors import BadRequest, Conflict, NotFound, StorageError
from edge_sync.proto import edge_pb2
from edge_sync.storage import codec
from edge_sync.validators import MAX_NAME_BYTES, text_fits

if TYPE_CHECKING:
    from edge_sync.cloud.store import CloudStore

_log = logger.bind(component="cloud-graph")

GRAPH_DB_NAMES = ("g_entities", "g_names", "g_kinds", "g_metadata", "g_relations",
                  "g_relations_to", "g_assign", "g_assigned", "g_refby")

METADATA = "RULE_CHAIN_METADATA"
GRAPH_KINDS: tuple[str, ...] = tuple(
    k.entity_type for k in entity_graph.KINDS
    if k.entity_type not in ("DEVICE", "DEVICE_CREDENTIALS", "USER_CREDENTIALS", "RELATION"))
"""The kinds the graph keeps (rule chain metadata under its rule chain's id)."""
TENANT_WIDE = frozenset({"TENANT", "QUEUE", "USER", "WIDGET_TYPE", "WIDGETS_BUNDLE",
                         "DEVICE_PROFILE", "ASSET_PROFILE"})
"""Kinds on every edge (ThingsBoard's sync sends them all); the others are assigned."""
NAME_FIELD: Mapping[str, str] = {"TENANT": "title", "CUSTOMER": "title", "DASHBOARD": "title",
                                 "USER": "email"}


def name_field(kind: str, body: Mapping[str, Any]) -> str:
    """The field of an entity's JSON that is its name: NAME_FIELD's, else ``name``; for a
    widgets bundle its ``title`` when it has one (ThingsBoard's WidgetsBundle.getName() returns
    the title, and its JSON's ``name`` is a read-only copy of it), else ``name``."""
    if kind == "WIDGETS_BUNDLE":
        return "title" if body.get("title") is not None else "name"
    return NAME_FIELD.get(kind, "name")

_CUSTOMER_OWNED = frozenset({"ASSET", "ENTITY_VIEW", "USER"})
_USER_SECRETS = ("password", "activateToken", "resetToken")
_USER_INFO_SECRETS = ("userPasswordHistory",)
MAX_RELATION_TYPE_BYTES = 255
MAX_TYPE_GROUP_BYTES = 64
MAX_NAME_KEY = 300
UNASSIGNED = uuid.UUID(int=0)
"""The edge of a device unassigned from its edge (CloudDevice.edge_id)."""

# The stable ids of the cloud's own entities (CloudStore.named_ids, meta "id:" + name).
ROOT_CHAIN = "rule_chain:edge_root"
ASSET_PROFILE = "asset_profile:" + tb_entities.DEFAULT_PROFILE
QUEUES = tuple("queue:" + q[0] for q in tb_entities.DEFAULT_QUEUES)


def node_name(index: int) -> str:
    return f"rule_node:edge_root:{index}"


def profile_name(device_type: str) -> str:
    return f"device_profile:{device_type}"


def named_id_key(name: str) -> bytes:
    """The meta key of a named id (a long name, e.g. a device type, by its digest)."""
    raw = name.encode()
    return b"id:" + (raw if len(raw) <= 392 else hashlib.sha256(raw).digest())


@dataclass(frozen=True, slots=True)
class CloudEntity:
    """An entity of the graph: its ThingsBoard 4.x JSON and the edges it is assigned to (for
    the kinds on every edge: every edge)."""

    entity_type: str
    id: uuid.UUID
    name: str
    json: str
    created_time: int
    edges: tuple[uuid.UUID, ...]

    def body(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.json)
        return value

    def as_json(self) -> dict[str, Any]:
        return {"entity_type": self.entity_type, "id": str(self.id), "name": self.name,
                "created_time": self.created_time, "edges": [str(e) for e in self.edges],
                "entity": self.body()}


@dataclass(frozen=True, slots=True)
class _Rec:
    kind: str
    id: uuid.UUID
    name: str
    json: str
    created: int
    updated: int
    origin: str


@dataclass(slots=True)
class _Change:
    """What one write did: edges whose queue grew, downlinks by kind."""

    woken: set[uuid.UUID]
    queued: Counter[str]

    @classmethod
    def new(cls) -> _Change:
        return cls(set(), Counter())


def kind_label(entity_type: str) -> str:
    """"DASHBOARD" -> "dashboard", "WIDGETS_BUNDLE" -> "widgets bundle"."""
    return entity_type.lower().replace("_", " ")


def _name_key(kind: str, name: str) -> bytes:
    raw = name.encode()
    part = b"\0" + raw if len(raw) <= MAX_NAME_KEY else b"\1" + hashlib.sha256(raw).digest()
    return kind.encode() + part


def _ref_digest(ref: Ref) -> bytes:
    return hashlib.sha256(f"{ref.kind}\0{ref.key}".encode()).digest()


def _rank(kind: str) -> int:
    return entity_graph.BY_TYPE[kind].sync_rank


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


EDGE_FILLED = frozenset({"tenantId", "customerId"})
"""Fields the cloud fills into an entity an edge sends, which the edge keeps out of its own
copy (it adds its tenant and customer when it sends): no reason to send the entity back."""


def _edge_differs(sent: Any, kept: Mapping[str, Any]) -> list[str]:
    """The fields (sorted) in which the cloud's JSON of an entity differs from what an edge
    sent, tenantId and customerId aside (EDGE_FILLED)."""
    if not isinstance(sent, Mapping):
        return sorted(set(kept) - EDGE_FILLED)
    keys = (set(sent) | set(kept)) - EDGE_FILLED
    return sorted(k for k in keys if k not in sent or k not in kept or sent[k] != kept[k])


def _refs(kind: str, body: Mapping[str, Any]) -> list[Ref]:
    """The hard references of an entity as the graph keeps them. A rule chain's metadata names
    its own chain (``ruleChainId``): that is where it lives, not a reference."""
    if kind == METADATA:
        return entity_graph.references(METADATA, {**body, "ruleChainId": None})
    return entity_graph.references(kind, body)


class CloudGraph:
    """The graph's operations. Each is one durable transaction (shared with other writes made at
    the same time: the store's group commit); any thread. ``notify(edge_id)`` is called after a
    commit that queued downlinks for an edge (the service sets it to wake the edge's stream)."""

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

    # -- plumbing --------------------------------------------------------------------------------

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

    # -- records ---------------------------------------------------------------------------------

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

    # -- where entities are ----------------------------------------------------------------------

    def _all_edges(self, txn: lmdb.Transaction) -> list[uuid.UUID]:
        with txn.cursor(db=self._db["edge_ids"]) as cur:
            return [uuid.UUID(bytes=bytes(k)) for k in cur.iternext(values=False)]

    def _on_every_edge(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID) -> bool:
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

    # -- queueing --------------------------------------------------------------------------------

    def _queue(self, txn: lmdb.Transaction, change: _Change, edges: Iterable[uuid.UUID],
               payload: bytes, kind: str) -> None:
        for edge_id in sorted(edges):
            self._store._enqueue(txn, edge_id, [payload])
            change.woken.add(edge_id)
            change.queued[kind] += 1

    def entity_downlink(self, txn: lmdb.Transaction, rec: _Rec, action: str) -> bytes:
        """The DownlinkMsg of a change of ``rec``: ADDED carries an asset's profile and a rule
        chain's metadata along (ThingsBoard's AssetEdgeProcessor sends an asset's profile with
        its creation; a sync sends a chain's metadata right after it)."""
        own = downlinks.entity_message(rec.kind, action, rec.id,
                                       None if action == "DELETED" else rec.json)
        entries = [own]
        if action == "ADDED" and rec.kind == "ASSET":
            profile = entity_graph.references("ASSET", json.loads(rec.json))
            prof = self._get(txn, uuid.UUID(profile[0].key)) if profile else None
            if prof is not None and prof.kind == "ASSET_PROFILE":
                entries.insert(0, downlinks.entity_message("ASSET_PROFILE", "ADDED", prof.id,
                                                           prof.json))
        if action == "ADDED" and rec.kind == "RULE_CHAIN":
            meta = self._metadata(txn, rec.id)
            if meta is not None:
                entries.append(downlinks.entity_message(METADATA, "ADDED", rec.id, meta))
        payload = downlinks.message_of(entries)
        if len(entries) > 1 and downlinks.stamped_size(len(payload)) > self.max_message_bytes:
            payload = downlinks.message_of([own])  # what travels with it would not fit
        return payload

    def _relation_downlinks(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                            entity_id: uuid.UUID, besides: uuid.UUID | None = None) -> int:
        """Queue for ``edge_id`` the relations of ``entity_id`` whose other end it holds (but
        those with ``besides``, queued already)."""
        count = 0
        for rel in self._relations_of(txn, entity_id):
            key = entity_graph.relation_key(rel)
            if key is None:
                continue
            other = key[1] if key[0].key == str(entity_id) else key[0]
            if besides is not None and other.key == str(besides):
                continue
            if edge_id in self._ref_edges(txn, other):
                payload = downlinks.message_of([downlinks.relation_message(
                    "RELATION_ADD_OR_UPDATE", _compact(rel))])
                self._queue(txn, change, [edge_id], payload, "relationUpdateMsg")
                count += 1
        return count

    # -- checks ----------------------------------------------------------------------------------

    def _check_size(self, kind: str, entity_id: uuid.UUID, name: str, text: str) -> None:
        payload = downlinks.message_of([downlinks.entity_message(kind, "ADDED", entity_id, text)])
        size = downlinks.stamped_size(len(payload))
        if size > self.max_message_bytes:
            raise BadRequest(
                f"{kind_label(kind)} {name!r} is {size:,} bytes as a downlink ({len(text.encode()):,} "
                f"bytes of JSON); an edge accepts at most {self.max_message_bytes:,} in one message")

    def _check_cycle(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID,
                     refs: list[Ref]) -> None:
        start = Ref("RULE_CHAIN" if kind == METADATA else kind, str(entity_id))

        def refs_of(ref: Ref) -> list[Ref]:
            if ref == start:
                return refs
            return self._stored_refs(txn, ref)

        cycle = entity_graph.find_cycle(start, refs_of)
        if cycle is not None:
            path = " -> ".join(self._describe(txn, r) for r in cycle)
            raise BadRequest(f"reference cycle: {path}")

    def _stored_refs(self, txn: lmdb.Transaction, ref: Ref) -> list[Ref]:
        if ref.kind == "WIDGET_TYPE_FQN":
            return []
        try:
            entity_id = uuid.UUID(ref.key)
        except ValueError:
            return []
        if ref.kind == "RULE_CHAIN":
            meta = self._metadata(txn, entity_id)
            return _refs(METADATA, json.loads(meta)) if meta is not None else []
        rec = self._get(txn, entity_id)
        return _refs(rec.kind, json.loads(rec.json)) if rec is not None else []

    def _describe(self, txn: lmdb.Transaction, ref: Ref) -> str:
        name = None
        try:
            rec = self._get(txn, uuid.UUID(ref.key))
            name = rec.name if rec is not None else None
        except ValueError:
            pass
        return f"{kind_label(ref.kind)} {name!r} ({ref.key})" if name else f"{kind_label(ref.kind)} {ref.key}"

    def _check_refs(self, txn: lmdb.Transaction, kind: str, name: str, refs: list[Ref],
                    own: uuid.UUID) -> None:
        for ref in refs:
            if ref.kind == "RULE_CHAIN" and ref.key == str(own):
                continue  # a chain whose metadata forwards to itself: the cycle check names it
            if not self._exists(txn, ref):
                raise BadRequest(f"{kind_label(kind)} {name!r} references {kind_label(ref.kind)} "
                                 f"{ref.key}, which does not exist")

    def _prepare(self, txn: lmdb.Transaction, kind: str, body: Any, entity_id: uuid.UUID | None,
                 old: _Rec | None, now_ms: int, change: _Change
                 ) -> tuple[uuid.UUID, str, dict[str, Any]]:
        """(id, name, body) of an entity about to be written: typed id, createdTime, tenantId
        (and customerId, an asset's profile) filled when absent; a user's secrets dropped."""
        if not isinstance(body, dict):
            raise BadRequest(f"{kind_label(kind)}: expected a JSON object")
        body = dict(body)
        given = body.get("id")
        if given is not None:
            if isinstance(given, dict):
                if given.get("entityType") not in (None, kind):
                    raise BadRequest(f"{kind_label(kind)}: id is a {str(given.get('entityType'))[:40]!r} "
                                     f"id, not {kind}")
                raw_id = given.get("id")
            else:
                raw_id = given
            try:
                parsed = uuid.UUID(str(raw_id))
            except ValueError as exc:
                raise BadRequest(f"{kind_label(kind)}: id is not a UUID") from exc
            if entity_id is not None and parsed != entity_id:
                raise BadRequest(f"{kind_label(kind)}: the body's id {parsed} is not {entity_id}")
            entity_id = parsed
        if entity_id is None:
            entity_id = self._ids.new(now_ms)
        if entity_id.int == 0 or entity_id == NULL_ID:
            raise BadRequest(f"{kind_label(kind)}: id {entity_id} is ThingsBoard's null id")
        field = name_field(kind, body)
        name = body.get(field)
        if not text_fits(name, MAX_NAME_BYTES):
            raise BadRequest(f"{kind_label(kind)} has no {field} (text of 1 to {MAX_NAME_BYTES} bytes)")
        if kind == "WIDGETS_BUNDLE" and field == "title":
            body["name"] = name  # ThingsBoard's WidgetsBundle.getName(): a read-only copy
        body["id"] = typed_id(kind, entity_id)
        if body.get("createdTime") is None:
            body["createdTime"] = (old.created if old is not None else
                                   tb_entities.created_time(entity_id) or now_ms)
        if not isinstance(body["createdTime"], int) or isinstance(body["createdTime"], bool):
            raise BadRequest(f"{kind_label(kind)}: createdTime is not a whole number")
        if kind != "TENANT" and body.get("tenantId") is None:
            body["tenantId"] = typed_id("TENANT", self._tenant_id(txn))
        if kind in _CUSTOMER_OWNED and body.get("customerId") is None:
            body["customerId"] = typed_id("CUSTOMER", NULL_ID)
        if kind == "ASSET":
            self._asset_profile(txn, body, change, now_ms)
        if kind == "USER":
            for secret in _USER_SECRETS:
                body.pop(secret, None)
            info = body.get("additionalInfo")
            if isinstance(info, dict):
                body["additionalInfo"] = {k: v for k, v in info.items() if k not in _USER_INFO_SECRETS}
        return entity_id, name, body

    def _asset_profile(self, txn: lmdb.Transaction, body: dict[str, Any], change: _Change,
                       now_ms: int) -> None:
        """An asset without a profile gets the one named by its type, made when there is none
        (ThingsBoard's AssetService: findOrCreateAssetProfile; on every edge, so queued for
        each), or the default one without a type; without a type, its profile's name."""
        if body.get("assetProfileId") is None:
            wanted = body.get("type")
            if isinstance(wanted, str) and text_fits(wanted, MAX_NAME_BYTES):
                found = self._named(txn, "ASSET_PROFILE", wanted)
                if found is None:
                    found = self._ids.new(now_ms)
                    text = tb_entities.asset_profile_json(found, self._tenant_id(txn), wanted)
                    rec = _Rec("ASSET_PROFILE", found, wanted, text,
                               tb_entities.created_time(found), now_ms, "cloud")
                    self._put(txn, rec, None, json.loads(text))
                    self._queue(txn, change, self._all_edges(txn),
                                self.entity_downlink(txn, rec, "ADDED"), "assetProfileUpdateMsg")
            else:
                found = self._named(txn, "ASSET_PROFILE", tb_entities.DEFAULT_PROFILE)
            if found is not None:
                body["assetProfileId"] = typed_id("ASSET_PROFILE", found)
        if not body.get("type"):
            ref = entity_graph.references("ASSET", body)
            prof = self._get(txn, uuid.UUID(ref[0].key)) if ref else None
            body["type"] = prof.name if prof is not None else tb_entities.DEFAULT_PROFILE

    def _kind(self, entity_type: object, *, metadata: bool = True) -> str:
        if not isinstance(entity_type, str) or entity_type not in GRAPH_KINDS or (
                entity_type == METADATA and not metadata):
            hint = " (devices: create_device)" if entity_type == "DEVICE" else ""
            raise BadRequest(f"unknown entity kind {str(entity_type)[:40]!r}{hint}: one of "
                             f"{', '.join(k for k in GRAPH_KINDS if metadata or k != METADATA)}")
        return entity_type

    # -- create / update / delete ----------------------------------------------------------------

    def create_entity(self, entity_type: str, body: dict[str, Any], *, now_ms: int) -> CloudEntity:
        """A new entity (not assigned to any edge: creating is not assigning). Rule chain
        metadata (kind RULE_CHAIN_METADATA, ``ruleChainId`` naming an existing chain) is set on
        its chain, as update_entity does."""
        kind = self._kind(entity_type)
        if kind == METADATA:
            return self.set_metadata(body, now_ms=now_ms)
        if kind == "TENANT":
            raise BadRequest("the cloud has one tenant: update it (update_entity)")
        created: CloudEntity = self._write(
            lambda txn, change: self._create(txn, change, kind, body, now_ms))
        return created

    def create_entities(self, items: Sequence[tuple[str, dict[str, Any]]], *, now_ms: int,
                        edge_id: uuid.UUID | None = None) -> list[CloudEntity]:
        """Several entities (and rule chain metadata) in one transaction, in the order given
        (references first), each assigned to ``edge_id`` when given; all or none."""

        def fn(txn: lmdb.Transaction, change: _Change) -> list[CloudEntity]:
            out = []
            for entity_type, body in items:
                kind = self._kind(entity_type)
                if kind == METADATA:
                    out.append(self._set_metadata(txn, change, body, now_ms))
                    continue
                if kind == "TENANT":
                    raise BadRequest("the cloud has one tenant: update it (update_entity)")
                entity = self._create(txn, change, kind, body, now_ms)
                if edge_id is not None and kind not in TENANT_WIDE:
                    self._assign(txn, change, edge_id, kind, entity.id)
                    entity = self._entity(txn, self._must(txn, kind, entity.id))
                out.append(entity)
            return out

        if edge_id is not None:
            self._edge_exists(edge_id)
        return list(self._write(fn))

    def _create(self, txn: lmdb.Transaction, change: _Change, kind: str, body: Any,
                now_ms: int) -> CloudEntity:
        entity_id, name, prepared = self._prepare(txn, kind, body, None, None, now_ms, change)
        if self._get(txn, entity_id) is not None:
            raise Conflict(f"an entity with id {entity_id} already exists")
        self._check_name(txn, kind, name, entity_id)
        text = _compact(prepared)
        self._check_size(kind, entity_id, name, text)
        refs = _refs(kind, prepared)
        self._check_refs(txn, kind, name, refs, entity_id)
        self._check_cycle(txn, kind, entity_id, refs)
        rec = _Rec(kind, entity_id, name, text, prepared["createdTime"], now_ms, "cloud")
        self._put(txn, rec, None, prepared)
        if self._on_every_edge(txn, kind, entity_id):
            # on every edge from the start (ThingsBoard sends a new profile, user, widget type to
            # every edge): queued ADDED for each
            self._queue(txn, change, self._all_edges(txn), self.entity_downlink(txn, rec, "ADDED"),
                        entity_graph.BY_TYPE[kind].downlink_field)
        _log.bind(entity_type=kind, entity_id=str(entity_id), name=name, action="ADDED").info(
            "entity created")
        return self._entity(txn, rec)

    def _check_name(self, txn: lmdb.Transaction, kind: str, name: str, own: uuid.UUID) -> None:
        found = self._named(txn, kind, name)
        if found is not None and found != own:
            raise Conflict(f"a {kind_label(kind)} named {name!r} already exists ({found})")

    def _must(self, txn: lmdb.Transaction, kind: str, entity_id: uuid.UUID) -> _Rec:
        rec = self._get(txn, entity_id)
        if rec is None or rec.kind != kind:
            raise NotFound(f"no {kind_label(kind)} {entity_id}")
        return rec

    def update_entity(self, entity_type: str, entity_id: uuid.UUID, body: dict[str, Any], *,
                      now_ms: int) -> CloudEntity:
        """Replace an entity's JSON (id and createdTime kept); UPDATED queued for every edge that
        holds it, when the JSON changed. RULE_CHAIN_METADATA: ``entity_id`` is the chain's."""
        kind = self._kind(entity_type)
        if kind == METADATA:
            if not isinstance(body, dict):
                raise BadRequest("rule chain metadata: expected a JSON object")
            return self.set_metadata({**body, "ruleChainId": typed_id("RULE_CHAIN", entity_id)},
                                     now_ms=now_ms)

        def fn(txn: lmdb.Transaction, change: _Change) -> CloudEntity:
            old = self._must(txn, kind, entity_id)
            _, name, prepared = self._prepare(txn, kind, body, entity_id, old, now_ms, change)
            self._check_name(txn, kind, name, entity_id)
            text = _compact(prepared)
            if text == old.json:
                return self._entity(txn, old)
            self._check_size(kind, entity_id, name, text)
            refs = _refs(kind, prepared)
            self._check_refs(txn, kind, name, refs, entity_id)
            self._check_cycle(txn, kind, entity_id, refs)
            rec = _Rec(kind, entity_id, name, text, prepared["createdTime"], now_ms, old.origin)
            self._put(txn, rec, old, prepared)
            self._changed(txn, change, rec, "UPDATED", exclude=None)
            return self._entity(txn, rec)

        updated: CloudEntity = self._write(fn)
        return updated

    def _changed(self, txn: lmdb.Transaction, change: _Change, rec: _Rec, action: str,
                 exclude: uuid.UUID | None) -> None:
        edges = self._edges_holding(txn, rec.kind, rec.id) - {exclude}
        if edges:
            self._queue(txn, change, edges, self.entity_downlink(txn, rec, action),
                        entity_graph.BY_TYPE[rec.kind].downlink_field)
        _log.bind(entity_type=rec.kind, entity_id=str(rec.id), name=rec.name, action=action,
                  edges=len(edges)).info("entity {}", action.lower())

    def set_metadata(self, body: dict[str, Any], *, now_ms: int) -> CloudEntity:
        """Set a rule chain's metadata (RuleChainMetaData JSON: ``ruleChainId``, nodes,
        connections); queued for every edge holding the chain. Refused when a node forwards to a
        rule chain that does not exist or that forwards back (a cycle)."""
        entity: CloudEntity = self._write(
            lambda txn, change: self._set_metadata(txn, change, body, now_ms))
        return entity

    def _set_metadata(self, txn: lmdb.Transaction, change: _Change, body: Any,
                      now_ms: int) -> CloudEntity:
        if not isinstance(body, dict):
            raise BadRequest("rule chain metadata: expected a JSON object")
        ref = body.get("ruleChainId")
        raw = ref.get("id") if isinstance(ref, dict) else ref
        try:
            chain_id = uuid.UUID(str(raw))
        except ValueError as exc:
            raise BadRequest("rule chain metadata: ruleChainId is not a rule chain id") from exc
        chain = self._must(txn, "RULE_CHAIN", chain_id)
        prepared = {**body, "ruleChainId": typed_id("RULE_CHAIN", chain_id)}
        text = _compact(prepared)
        old = self._metadata(txn, chain_id)
        if text != old:
            self._check_size(METADATA, chain_id, chain.name, text)
            refs = _refs(METADATA, prepared)
            self._check_refs(txn, METADATA, chain.name, refs, chain_id)
            self._check_cycle(txn, METADATA, chain_id, refs)
            if old is not None:
                self._unindex_refs(txn, chain_id, _refs(METADATA, json.loads(old)))
            txn.put(chain_id.bytes, codec.pack((text, now_ms)), db=self._dbh("g_metadata"))
            self._index_refs(txn, chain_id, METADATA, refs)
            edges = self._edges_holding(txn, "RULE_CHAIN", chain_id)
            action = "ADDED" if old is None else "UPDATED"
            if edges:
                payload = downlinks.message_of([downlinks.entity_message(METADATA, action, chain_id, text)])
                self._queue(txn, change, edges, payload, "ruleChainMetadataUpdateMsg")
            _log.bind(entity_type=METADATA, entity_id=str(chain_id), name=chain.name,
                      action=action, edges=len(edges)).info("rule chain metadata set")
        return CloudEntity(METADATA, chain_id, chain.name, text, chain.created,
                           tuple(sorted(self._edges_holding(txn, "RULE_CHAIN", chain_id))))

    def metadata(self, chain_id: uuid.UUID) -> str | None:
        """A rule chain's metadata JSON, None when it has none."""
        with self._read() as txn:
            return self._metadata(txn, chain_id)

    def delete_entity(self, entity_type: str, entity_id: uuid.UUID, *, now_ms: int) -> list[Ref]:
        """Delete an entity, and what cannot stand without it: its entity views, a rule chain's
        metadata, its relations and assignments. DELETED is queued for every edge that held each
        (the edge removes its relations itself). Refused (Conflict) while other entities need it
        (assets of an asset profile, devices of a device profile, dashboards using a widget
        type, rule chains forwarding to a chain), and for the tenant, the default profiles and
        the edge root rule chain. The refs removed, the entity first."""
        kind = self._kind(entity_type)
        if kind == METADATA:
            return list(self._write(lambda txn, change: self._delete_metadata(txn, change, entity_id)))
        return list(self._write(lambda txn, change: self._delete(txn, change, kind, entity_id,
                                                                 exclude=None)))

    def _delete_metadata(self, txn: lmdb.Transaction, change: _Change, chain_id: uuid.UUID) -> list[Ref]:
        old = self._metadata(txn, chain_id)
        if old is None:
            raise NotFound(f"rule chain {chain_id} has no metadata")
        if chain_id == self._root_chain_in(txn):
            raise Conflict("the edge root rule chain's metadata cannot be deleted")
        self._unindex_refs(txn, chain_id, _refs(METADATA, json.loads(old)))
        txn.delete(chain_id.bytes, db=self._dbh("g_metadata"))
        return [Ref(METADATA, str(chain_id))]

    def _delete(self, txn: lmdb.Transaction, change: _Change, kind: str, entity_id: uuid.UUID,
                exclude: uuid.UUID | None) -> list[Ref]:
        rec = self._must(txn, kind, entity_id)
        body = json.loads(rec.json)
        if kind == "TENANT":
            raise Conflict("the tenant cannot be deleted")
        if kind in ("DEVICE_PROFILE", "ASSET_PROFILE") and body.get("default"):
            raise Conflict(f"the default {kind_label(kind)} cannot be deleted")
        if entity_id == self._root_chain_in(txn):
            raise Conflict("the edge root rule chain cannot be deleted")
        cascade: list[_Rec] = []
        blocking: list[str] = []
        provided = entity_graph.provides(kind, entity_id, body)
        for ref in provided:
            for dep_kind, dep_id in self._dependants(txn, ref):
                if dep_kind == "ENTITY_VIEW":
                    dep = self._get(txn, dep_id)
                    if dep is not None:
                        cascade.append(dep)
                elif not (dep_kind == METADATA and dep_id == entity_id):
                    blocking.append(self._describe(txn, Ref("RULE_CHAIN" if dep_kind == METADATA
                                                            else dep_kind, str(dep_id))))
        if kind == "DEVICE_PROFILE":
            users = [d.name for d in self._store._all_devices(txn) if d.type == rec.name]
            if users:
                blocking.append(f"{len(users)} device(s) of type {rec.name!r} "
                                f"({', '.join(repr(n) for n in users[:5])})")
        if blocking:
            raise Conflict(f"{kind_label(kind)} {rec.name!r} is used by {'; '.join(blocking[:10])}"
                           f"{' and more' if len(blocking) > 10 else ''}: delete or change them first")
        removed: list[Ref] = [Ref(kind, str(entity_id))]
        for dep in cascade:
            self._remove(txn, change, dep, exclude)
            removed.append(Ref(dep.kind, str(dep.id)))
        self._remove(txn, change, rec, exclude)
        if kind == "RULE_CHAIN" and self._metadata(txn, entity_id) is not None:
            removed.append(Ref(METADATA, str(entity_id)))
            self._delete_metadata(txn, change, entity_id)
        return removed

    def _remove(self, txn: lmdb.Transaction, change: _Change, rec: _Rec,
                exclude: uuid.UUID | None) -> None:
        """Remove one entity, its relations and its assignments; DELETED queued for its edges."""
        self._changed(txn, change, rec, "DELETED", exclude=exclude)
        for edge_id in self._edges_holding(txn, rec.kind, rec.id):
            self._drop_assignment(txn, edge_id, rec.kind, rec.id)
        for rel in self._relations_of(txn, rec.id):
            key = entity_graph.relation_key(rel)
            if key is not None:
                self._drop_relation(txn, key)
        self._unindex(txn, rec)
        txn.delete(rec.id.bytes, db=self._dbh("g_entities"))
        txn.delete(rec.kind.encode() + b"\0" + rec.id.bytes, db=self._dbh("g_kinds"))

    # -- reading ---------------------------------------------------------------------------------

    def entity(self, entity_id: uuid.UUID) -> CloudEntity | None:
        with self._read() as txn:
            rec = self._get(txn, entity_id)
            return None if rec is None else self._entity(txn, rec)

    def entities(self, *, entity_type: str | None = None, name: str | None = None,
                 edge_id: uuid.UUID | None = None) -> list[CloudEntity]:
        """Entities of the graph (not devices), in sync order, then in creation order: of one
        kind, of one name, on one edge (assigned to it, or on every edge)."""
        if entity_type is not None:
            self._kind(entity_type, metadata=False)
        out: list[CloudEntity] = []
        with self._read() as txn:
            if not self.available:
                return out
            kinds = [entity_type] if entity_type else [k for k in GRAPH_KINDS if k != METADATA]
            for kind in kinds:
                if name is not None:
                    found = self._named(txn, kind, name)
                    ids_ = [found] if found is not None else []
                else:
                    ids_ = list(self._ids_of_kind(txn, kind))
                listed: list[CloudEntity] = []
                for entity_id in ids_:
                    rec = self._get(txn, entity_id)
                    if rec is None:
                        continue
                    entity = self._entity(txn, rec)
                    if edge_id is None or edge_id in entity.edges:
                        listed.append(entity)
                listed.sort(key=lambda e: (e.created_time, e.id.time if e.id.version == 1 else 0,
                                           e.id.bytes))
                out += listed
        return out

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

    def count(self, entity_type: str | None = None) -> int:
        with self._read() as txn:
            kinds = [entity_type] if entity_type else [k for k in GRAPH_KINDS if k != METADATA]
            return sum(sum(1 for _ in self._ids_of_kind(txn, k)) for k in kinds)

    # -- assignment ------------------------------------------------------------------------------

    def _edge_exists(self, edge_id: uuid.UUID) -> None:
        if self._store.edge_by_id(edge_id) is None:
            raise NotFound(f"no edge {edge_id}")

    def assign(self, edge_id: uuid.UUID, entity_type: str, entity_id: uuid.UUID, *,
               now_ms: int) -> bool:
        """Put an entity on an edge: ADDED queued for it, then each relation of the entity whose
        other end the edge holds, then (again) what is on the edge and was waiting for it
        (_dependants_again). False when it was on the edge already (the kinds on every edge
        always are). A device (kind DEVICE) unassigned from its edge may be assigned to one
        again (its device downlink, as at its creation)."""
        self._edge_exists(edge_id)
        if entity_type == "DEVICE":
            return bool(self._write(lambda txn, change: self._assign_device(txn, change, edge_id,
                                                                            entity_id)))
        kind = self._kind(entity_type, metadata=False)
        return bool(self._write(lambda txn, change: self._assign(txn, change, edge_id, kind,
                                                                 entity_id)))

    def _assign(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID, kind: str,
                entity_id: uuid.UUID) -> bool:
        rec = self._must(txn, kind, entity_id)
        if self._on_every_edge(txn, kind, entity_id) or self._is_assigned(txn, edge_id, kind, entity_id):
            return False
        txn.put(edge_id.bytes + bytes([_rank(kind)]) + entity_id.bytes, kind.encode(),
                db=self._dbh("g_assign"))
        txn.put(entity_id.bytes + edge_id.bytes, b"", db=self._dbh("g_assigned"))
        self._queue(txn, change, [edge_id], self.entity_downlink(txn, rec, "ADDED"),
                    entity_graph.BY_TYPE[kind].downlink_field)
        relations = self._relation_downlinks(txn, change, edge_id, entity_id)
        again = self._dependants_again(txn, change, edge_id, kind, entity_id, json.loads(rec.json))
        _log.bind(entity_type=kind, entity_id=str(entity_id), name=rec.name, edge_id=str(edge_id),
                  action="ASSIGNED_TO_EDGE", relations=relations, dependants=again).info(
            "entity assigned to an edge")
        return True

    def _dependants_again(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                          kind: str, entity_id: uuid.UUID, body: Mapping[str, Any]) -> int:
        """Queue for the edge, again, the ADDED of what is on it and hard-references the entity
        just put on it (an entity view of it, a rule chain's metadata forwarding to it), with
        its relations, once every reference of it is on the edge: a full sync leaves such an
        entity out while one is missing (full_sync.py), so it would otherwise never come. An
        edge that holds it already finds it unchanged. How many."""
        count = 0
        for ref in entity_graph.provides(kind, entity_id, body):
            for dep_kind, dep_id in self._dependants(txn, ref):
                if dep_kind == METADATA:
                    text = self._metadata(txn, dep_id)
                    if text is None or edge_id not in self._edges_holding(txn, "RULE_CHAIN", dep_id) \
                            or not self._refs_on_edge(txn, edge_id, _refs(METADATA, json.loads(text))):
                        continue
                    payload = downlinks.message_of(
                        [downlinks.entity_message(METADATA, "ADDED", dep_id, text)])
                    self._queue(txn, change, [edge_id], payload, "ruleChainMetadataUpdateMsg")
                else:
                    dep = self._get(txn, dep_id)
                    if dep is None or dep.kind != dep_kind \
                            or not self._is_assigned(txn, edge_id, dep_kind, dep_id) \
                            or not self._refs_on_edge(txn, edge_id, _refs(dep_kind, json.loads(dep.json))):
                        continue
                    self._queue(txn, change, [edge_id], self.entity_downlink(txn, dep, "ADDED"),
                                entity_graph.BY_TYPE[dep_kind].downlink_field)
                    self._relation_downlinks(txn, change, edge_id, dep_id, besides=entity_id)
                count += 1
        return count

    def _refs_on_edge(self, txn: lmdb.Transaction, edge_id: uuid.UUID, refs: Iterable[Ref]) -> bool:
        """Whether every one of ``refs`` is on the edge (a kind the edge never waits for, such
        as an edge, counts as there: storage/graph_store.WAITABLE)."""
        for ref in refs:
            if ref.kind == "WIDGET_TYPE_FQN":
                if self._named(txn, "WIDGET_TYPE_FQN", ref.key) is None:  # tenant-wide
                    return False
            elif ref.kind in entity_graph.BY_TYPE and edge_id not in self._ref_edges(txn, ref):
                return False
        return True

    def _assign_device(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                       device_id: uuid.UUID) -> bool:
        dev = self._store._device(txn, device_id)
        if dev is None:
            raise NotFound(f"no device {device_id}")
        if dev.edge_id == edge_id:
            return False
        if dev.edge_id != UNASSIGNED:
            raise Conflict(f"device {dev.name!r} is on edge {dev.edge_id}: a device is on one "
                           "edge; unassign it first")
        if self._store._ids_named(txn, dev.name, edge_id):
            raise Conflict(f"a device named {dev.name!r} already exists on that edge")
        moved = dataclasses.replace(dev, edge_id=edge_id)
        self._store._put_device(txn, moved, dev)
        self._queue(txn, change, [edge_id], self.device_downlink_in(txn, moved),
                    "deviceUpdateMsg")
        self._relation_downlinks(txn, change, edge_id, device_id)
        self._dependants_again(txn, change, edge_id, "DEVICE", device_id, {})
        _log.bind(entity_type="DEVICE", entity_id=str(device_id), name=dev.name,
                  edge_id=str(edge_id), action="ASSIGNED_TO_EDGE").info("device assigned to an edge")
        return True

    def unassign(self, edge_id: uuid.UUID, entity_type: str, entity_id: uuid.UUID, *,
                 now_ms: int) -> bool:
        """Take an entity off an edge: DELETED queued for it (the edge removes its relations
        and dependants itself), and every entity assigned to that edge that hard-references it
        (recursively: its entity views, rule chains whose metadata forwards to it) taken off
        too, each DELETED queued before it. False when it was not assigned to the edge. A
        device is kept, on no edge (it may be assigned again)."""
        if entity_type == "DEVICE":
            return bool(self._write(lambda txn, change: self._unassign_device(txn, change, edge_id,
                                                                              entity_id)))
        kind = self._kind(entity_type, metadata=False)

        def fn(txn: lmdb.Transaction, change: _Change) -> bool:
            rec = self._must(txn, kind, entity_id)
            if not self._is_assigned(txn, edge_id, kind, entity_id):
                return False
            self._unassign_in(txn, change, edge_id, rec, because=None)
            return True

        return bool(self._write(fn))

    def _unassign_in(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                     rec: _Rec, because: Ref | None) -> None:
        """Take ``rec`` (assigned to the edge) off it, with everything assigned to that edge
        that hard-references it (recursively): the edge's delete of ``rec`` removes those too
        (its cascade), so assigned they would be sent again by every full sync and held on the
        edge for ever. Their DELETED is queued first, dependants before what they reference,
        as the edge's cascade removes them."""
        self._drop_assignment(txn, edge_id, rec.kind, rec.id)
        cascade = self._unassign_dependants(txn, change, edge_id, rec.kind, rec.id,
                                            json.loads(rec.json))
        self._queue(txn, change, [edge_id], self.entity_downlink(txn, rec, "DELETED"),
                    entity_graph.BY_TYPE[rec.kind].downlink_field)
        log = _log.bind(entity_type=rec.kind, entity_id=str(rec.id), name=rec.name,
                        edge_id=str(edge_id), action="UNASSIGNED_FROM_EDGE", dependants=cascade)
        if because is None:
            log.info("entity unassigned from an edge")
        else:
            log.bind(references=str(because)).info(
                "entity unassigned from an edge with {} it references", because)

    def _unassign_dependants(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                             kind: str, entity_id: uuid.UUID, body: Mapping[str, Any]) -> int:
        """Unassign from the edge every entity assigned to it whose hard references
        (entity_graph.references: an entity view's device or asset, a rule chain's metadata
        forwarding to a chain) name the entity ``kind``/``entity_id`` that is leaving it; how
        many, recursively. A rule chain's metadata goes with its chain (a chain is of no use
        without it). What is on every edge cannot leave one: logged, and left out of the edge's
        full syncs while what it references is not there (full_sync.py)."""
        count = 0
        leaving = Ref(kind, str(entity_id))
        for ref in entity_graph.provides(kind, entity_id, body):
            for dep_kind, dep_id in self._dependants(txn, ref):
                dep_kind = "RULE_CHAIN" if dep_kind == METADATA else dep_kind
                if dep_kind not in GRAPH_KINDS:
                    continue
                if self._on_every_edge(txn, dep_kind, dep_id):
                    _log.bind(entity_type=dep_kind, entity_id=str(dep_id), edge_id=str(edge_id),
                              references=str(leaving)).warning(
                        "{} {} is on every edge and references {}, which leaves edge {}: it "
                        "stays, and waits there for it", kind_label(dep_kind), dep_id, leaving,
                        edge_id)
                    continue
                if not self._is_assigned(txn, edge_id, dep_kind, dep_id):
                    continue
                dep = self._get(txn, dep_id)
                if dep is None or dep.kind != dep_kind:
                    continue
                self._unassign_in(txn, change, edge_id, dep, because=leaving)
                count += 1
        return count

    def _unassign_device(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                         device_id: uuid.UUID) -> bool:
        dev = self._store._device(txn, device_id)
        if dev is None:
            raise NotFound(f"no device {device_id}")
        if dev.edge_id != edge_id:
            return False
        kept = dataclasses.replace(dev, edge_id=UNASSIGNED)
        self._store._put_device(txn, kept, dev)
        txn.delete(UNASSIGNED.bytes + dev.id.bytes, db=self._db["edge_devices"])
        # its entity views leave the edge with it (the edge's delete removes them)
        cascade = self._unassign_dependants(txn, change, edge_id, "DEVICE", device_id, {})
        self._queue(txn, change, [edge_id], downlinks.device_deleted(device_id), "deviceUpdateMsg")
        _log.bind(entity_type="DEVICE", entity_id=str(device_id), name=dev.name,
                  edge_id=str(edge_id), action="UNASSIGNED_FROM_EDGE", dependants=cascade).info(
            "device unassigned from its edge")
        return True

    def _drop_assignment(self, txn: lmdb.Transaction, edge_id: uuid.UUID, kind: str,
                         entity_id: uuid.UUID) -> None:
        db = self._db.get("g_assign")
        if db is None:
            return
        txn.delete(edge_id.bytes + bytes([_rank(kind)]) + entity_id.bytes, db=db)
        txn.delete(entity_id.bytes + edge_id.bytes, db=self._dbh("g_assigned"))

    def assigned(self, txn: lmdb.Transaction, edge_id: uuid.UUID, *, rank: int | None = None,
                 after: bytes = b"", limit: int = 0) -> list[tuple[bytes, str, uuid.UUID]]:
        """(key, kind, id) of the entities assigned to the edge (of one sync rank), in sync rank
        order, after key ``after`` (for reading a large assignment in chunks)."""
        db = self._db.get("g_assign")
        out: list[tuple[bytes, str, uuid.UUID]] = []
        if db is None:
            return out
        prefix = edge_id.bytes + (bytes([rank]) if rank is not None else b"")
        with txn.cursor(db=db) as cur:
            if not cur.set_range(after + b"\0" if after else prefix):
                return out
            for key, value in cur.iternext():
                if key[:len(prefix)] != prefix or (limit and len(out) >= limit):
                    break
                out.append((bytes(key), bytes(value).decode(), uuid.UUID(bytes=bytes(key[17:33]))))
        return out

    def assignment(self, edge_id: uuid.UUID) -> list[tuple[str, uuid.UUID, str]]:
        """(entity type, id, JSON as sent) of everything on the edge, in full-sync order: the
        graph's entities (a rule chain followed by its metadata, as RULE_CHAIN_METADATA under
        the chain's id) and the edge's devices. Relations are in relations()."""
        from edge_sync.cloud import full_sync  # full_sync reads the graph: imported late

        out: list[tuple[str, uuid.UUID, str]] = []
        for kind, entity_id, text in full_sync.edge_entities(self._store, edge_id):
            out.append((kind, entity_id, text))
        return out

    # -- relations -------------------------------------------------------------------------------

    def _relations_of(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        out = self.relations_from(txn, entity_id)
        rel_db, to_db = self._db.get("g_relations"), self._db.get("g_relations_to")
        if rel_db is None or to_db is None:
            return out
        own = entity_id.bytes
        with txn.cursor(db=to_db) as cur:
            if cur.set_range(own):
                for key in cur.iternext(values=False):
                    if key[:16] != own:
                        break
                    raw = txn.get(bytes(key[16:32]) + own + bytes(key[32:]), db=rel_db)
                    if raw is not None and key[16:32] != own:
                        out.append(json.loads(codec.unpack(raw, "g_relations")))
        return out

    def relations_from(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        """The relations from an entity (EntityRelation JSON objects)."""
        out: list[dict[str, Any]] = []
        rel_db = self._db.get("g_relations")
        if rel_db is None:
            return out
        own = entity_id.bytes
        with txn.cursor(db=rel_db) as cur:
            if cur.set_range(own):
                for key, value in cur.iternext():
                    if key[:16] != own:
                        break
                    out.append(json.loads(codec.unpack(value, "g_relations")))
        return out

    @staticmethod
    def _rel_key(key: tuple[Ref, Ref, str, str]) -> tuple[bytes, bytes]:
        src, dst, rel_type, group = key
        tail = group.encode() + b"\0" + rel_type.encode()
        s, d = uuid.UUID(src.key).bytes, uuid.UUID(dst.key).bytes
        return s + d + tail, d + s + tail

    def _drop_relation(self, txn: lmdb.Transaction, key: tuple[Ref, Ref, str, str]) -> bool:
        fwd, back = self._rel_key(key)
        found = bool(txn.delete(fwd, db=self._dbh("g_relations")))
        txn.delete(back, db=self._dbh("g_relations_to"))
        return found

    def relation_body(self, body: Any) -> tuple[tuple[Ref, Ref, str, str], dict[str, Any]]:
        """A relation checked and in ThingsBoard's EntityRelation form (from, to, type,
        typeGroup COMMON when absent, additionalInfo); BadRequest names the problem."""
        if not isinstance(body, dict):
            raise BadRequest("relation: expected a JSON object")
        key = entity_graph.relation_key(body)
        if key is None:
            raise BadRequest("relation: from and to must be typed ids ({\"entityType\", \"id\"}) "
                             "of entities")
        src, dst, rel_type, group = key
        if not text_fits(body.get("type"), MAX_RELATION_TYPE_BYTES):
            raise BadRequest(f"relation: type must be text of 1 to {MAX_RELATION_TYPE_BYTES} bytes")
        if not text_fits(group, MAX_TYPE_GROUP_BYTES):
            raise BadRequest(f"relation: typeGroup must be text of 1 to {MAX_TYPE_GROUP_BYTES} bytes")
        normal = {**body, "from": typed_id(src.kind, src.key), "to": typed_id(dst.kind, dst.key),
                  "type": rel_type, "typeGroup": group,
                  "additionalInfo": body.get("additionalInfo")}
        return key, normal

    def add_relation(self, body: dict[str, Any], *, now_ms: int) -> None:
        """Add (or replace) a relation between two existing entities (of the graph, devices or
        edges); RELATION_ADD_OR_UPDATE queued for every edge that holds both ends."""
        key, normal = self.relation_body(body)

        def fn(txn: lmdb.Transaction, change: _Change) -> None:
            for end in key[:2]:
                if not self._exists(txn, end):
                    raise BadRequest(f"relation: {kind_label(end.kind)} {end.key} does not exist")
            self._put_relation(txn, change, key, normal, exclude=None)

        self._write(fn)

    def _put_relation(self, txn: lmdb.Transaction, change: _Change,
                      key: tuple[Ref, Ref, str, str], normal: dict[str, Any],
                      exclude: uuid.UUID | None) -> bool:
        fwd, back = self._rel_key(key)
        text = _compact(normal)
        old = txn.get(fwd, db=self._dbh("g_relations"))
        if old is not None and codec.unpack(old, "g_relations") == text:
            return False
        txn.put(fwd, codec.pack(text), db=self._dbh("g_relations"))
        txn.put(back, b"", db=self._dbh("g_relations_to"))
        edges = (self._ref_edges(txn, key[0]) & self._ref_edges(txn, key[1])) - {exclude}
        if edges:
            payload = downlinks.message_of([downlinks.relation_message("RELATION_ADD_OR_UPDATE", text)])
            self._queue(txn, change, edges, payload, "relationUpdateMsg")
        _log.bind(entity_type="RELATION", src=str(key[0]), dst=str(key[1]), relation_type=key[2],
                  action="RELATION_ADD_OR_UPDATE", edges=len(edges)).info("relation saved")
        return True

    def delete_relation(self, src: Ref, dst: Ref, rel_type: str, group: str, *,
                        now_ms: int) -> bool:
        """Delete a relation; RELATION_DELETED queued for every edge that holds both ends. False
        when there was none."""
        return bool(self._write(lambda txn, change: self._delete_relation(
            txn, change, (src, dst, rel_type, group or "COMMON"), exclude=None)))

    def _delete_relation(self, txn: lmdb.Transaction, change: _Change,
                         key: tuple[Ref, Ref, str, str], exclude: uuid.UUID | None) -> bool:
        try:
            fwd, _ = self._rel_key(key)
        except ValueError:
            return False
        raw = txn.get(fwd, db=self._dbh("g_relations"))
        if raw is None:
            return False
        text = str(codec.unpack(raw, "g_relations"))
        self._drop_relation(txn, key)
        edges = (self._ref_edges(txn, key[0]) & self._ref_edges(txn, key[1])) - {exclude}
        if edges:
            payload = downlinks.message_of([downlinks.relation_message("RELATION_DELETED", text)])
            self._queue(txn, change, edges, payload, "relationUpdateMsg")
        _log.bind(entity_type="RELATION", src=str(key[0]), dst=str(key[1]), relation_type=key[2],
                  action="RELATION_DELETED", edges=len(edges)).info("relation deleted")
        return True

    def drop_relations(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> int:
        """Remove every relation from or to an entity (a device its edge deleted: no other edge
        holds it, so nothing is queued); how many."""
        count = 0
        for rel in self._relations_of(txn, entity_id):
            key = entity_graph.relation_key(rel)
            if key is not None and self._drop_relation(txn, key):
                count += 1
        return count

    def relations(self, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        """The relations from and to an entity (EntityRelation JSON objects)."""
        with self._read() as txn:
            return self._relations_of(txn, entity_id)

    def relations_on_edge(self, edge_id: uuid.UUID, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        """The relations of an entity whose both ends the edge holds (a RelationRequestMsg's
        answer)."""
        with self._read() as txn:
            out = []
            for rel in self._relations_of(txn, entity_id):
                key = entity_graph.relation_key(rel)
                if key is not None and all(edge_id in self._ref_edges(txn, end) for end in key[:2]):
                    out.append(rel)
            return out

    # -- the cloud's own entities ----------------------------------------------------------------

    def _named_id(self, txn: lmdb.Transaction, name: str, make: uuid.UUID) -> uuid.UUID:
        key = named_id_key(name)
        raw = txn.get(key, db=self._db["meta"])
        if raw is not None:
            return codec.to_uuid(raw, f"meta: id of {name!r}")
        txn.put(key, make.bytes, db=self._db["meta"])
        return make

    def ensure_defaults(self, now_ms: int | None = None) -> None:
        """Make the cloud's own entities real entities of the graph, with the ids it always
        gave them (meta "id:" names): the tenant, ThingsBoard's three default queues, the edge
        root rule chain and its metadata, the default device and asset profiles, and a device
        profile per device type in use. Once per store (a marker in meta); a few KB."""
        if not self.available:
            return
        with self._read() as txn:
            if txn.get(b"graph:defaults", db=self._db["meta"]) is not None:
                return

        def fn(txn: lmdb.Transaction) -> None:
            if txn.get(b"graph:defaults", db=self._db["meta"]) is not None:
                return
            made = self._make_defaults(txn, now_ms)
            types = sorted({d.type for d in self._store._all_devices(txn)})
            for device_type in types:
                self.device_profile_in(txn, device_type, self._ids.new(now_ms))
            txn.put(b"graph:defaults", codec.u64(1), db=self._db["meta"])
            _log.bind(entities=made, device_types=len(types)).info(
                "entity graph: the cloud's own entities made real")

        # maintenance: a few KB, once, and a store must open on a full disk
        self._lmdb.write(fn, maintenance=True)

    def _make_defaults(self, txn: lmdb.Transaction, now_ms: int | None) -> int:
        tenant = self._tenant_id(txn)
        made = 0

        def put(kind: str, entity_id: uuid.UUID, text: str) -> None:
            nonlocal made
            body = json.loads(text)
            name = body.get(name_field(kind, body))
            if self._get(txn, entity_id) is not None or self._named(txn, kind, name) is not None:
                return
            created = int(body.get("createdTime") or 0)
            self._put(txn, _Rec(kind, entity_id, name, text, created, created, "cloud"), None, body)
            made += 1

        put("TENANT", tenant, tb_entities.tenant_json(tenant))
        for (qname, *_), key in zip(tb_entities.DEFAULT_QUEUES, QUEUES, strict=True):
            queue_id = self._named_id(txn, key, self._ids.new(now_ms))
            put("QUEUE", queue_id, tb_entities.queue_json(queue_id, qname))
        chain = self._named_id(txn, ROOT_CHAIN, self._ids.new(now_ms))
        nodes = [self._named_id(txn, node_name(i), self._ids.new(now_ms))
                 for i in range(len(tb_entities.ROOT_CHAIN_NODES))]
        put("RULE_CHAIN", chain, tb_entities.rule_chain_json(
            chain, tenant, nodes[tb_entities.ROOT_CHAIN_FIRST_NODE]))
        if self._metadata(txn, chain) is None:
            meta = tb_entities.rule_chain_metadata_json(chain, nodes)
            txn.put(chain.bytes, codec.pack((meta, 0)), db=self._dbh("g_metadata"))
        self._root_chain = chain
        asset_profile = self._named_id(txn, ASSET_PROFILE, self._ids.new(now_ms))
        put("ASSET_PROFILE", asset_profile, tb_entities.asset_profile_json(asset_profile, tenant))
        self.device_profile_in(txn, tb_entities.DEFAULT_PROFILE, self._ids.new(now_ms))
        return made

    def device_profile_id(self, device_type: str, now_ms: int | None = None) -> uuid.UUID:
        """The id of the device profile named ``device_type`` (a device's type names its
        profile), made (with the id the cloud keeps for that name) when there is none."""
        with self._read() as txn:
            found = self._named(txn, "DEVICE_PROFILE", device_type) if self.available else None
        if found is not None:
            return found
        if not self.available:
            return self._store.named_ids([profile_name(device_type)],
                                         lambda: self._ids.new(now_ms))[profile_name(device_type)]
        # not queued for the edges: a device of the type carries its profile in its downlink,
        # and every full sync sends every profile (maintenance: a few bytes a sync may need on
        # a full disk, as CloudStore.named_ids)
        make = self._ids.new(now_ms)
        result: uuid.UUID = self._lmdb.write(
            lambda txn: self.device_profile_in(txn, device_type, make), maintenance=True)
        return result

    def device_profile_in(self, txn: lmdb.Transaction, device_type: str, make: uuid.UUID,
                          change: _Change | None = None) -> uuid.UUID:
        """device_profile_id() in a write transaction. A profile made here (a new device type)
        is on every edge: ADDED queued for each when ``change`` is given (else it reaches them
        with a device of its type, or their next full sync)."""
        found = self._named(txn, "DEVICE_PROFILE", device_type)
        if found is not None:
            return found
        profile_id = self._named_id(txn, profile_name(device_type), make)
        text = tb_entities.device_profile_json(profile_id, self._tenant_id(txn), device_type)
        if self._get(txn, profile_id) is None:
            body = json.loads(text)
            rec = _Rec("DEVICE_PROFILE", profile_id, device_type, text, body["createdTime"],
                       body["createdTime"], "cloud")
            self._put(txn, rec, None, body)
            if change is not None:
                self._queue(txn, change, self._all_edges(txn),
                            self.entity_downlink(txn, rec, "ADDED"), "deviceProfileUpdateMsg")
        return profile_id

    def device_downlink_in(self, txn: lmdb.Transaction, device: CloudDevice) -> bytes:
        """The downlink of a device put on its edge (created there, or assigned to it): the
        device, its credentials and its device profile as the graph stores it, exactly the JSON
        a full sync sends (downlinks.device_synced), so the edge's copy of the profile stays the
        cloud's. In a write transaction: the profile of the device's type is made (its id made
        at the device's creation time) when there is none. Without the profile when the two
        would not fit in one message to an edge (the profile reaches every edge on its own: its
        ADDED, or a full sync)."""
        profile_id = self._named(txn, "DEVICE_PROFILE", device.type)
        if profile_id is None:
            profile_id = self.device_profile_in(txn, device.type,
                                                self._ids.new(device.created_time or None))
        rec = self._get(txn, profile_id)
        tenant = self._tenant_id(txn)
        payload = downlinks.device_synced(device, tenant, profile_id,
                                          rec.json if rec is not None else None)
        if downlinks.stamped_size(len(payload)) > self.max_message_bytes:
            msg = edge_pb2.DownlinkMsg.FromString(payload)
            msg.ClearField("deviceProfileUpdateMsg")
            payload = bytes(msg.SerializeToString())
        return payload

    # -- changes an edge made (applied with its uplink, in that transaction) ---------------------

    def apply_edge_change(self, txn: lmdb.Transaction, edge_id: uuid.UUID, entity_type: str,
                          entity_id: uuid.UUID, action: str, body: Any, now_ms: int,
                          woken: set[uuid.UUID], queued: Counter[str]) -> str:
        """Apply an entity change an edge sent (an asset ADDED/UPDATED/DELETED, a relation
        RELATION_ADD_OR_UPDATE / RELATION_DELETED, RELATIONS_DELETED of an entity), as
        ThingsBoard's AssetEdgeProcessor / RelationEdgeProcessor do, and queue it for the other
        edges that hold the entity. What was done, for the log ("created", "updated",
        "deleted", "renamed", "unchanged", "unknown")."""
        change = _Change(woken, queued)
        if entity_type == "ASSET":
            return self._edge_asset(txn, change, edge_id, entity_id, action, body, now_ms)
        if entity_type == "RELATION":
            if action == "RELATIONS_DELETED":
                return self._edge_relations_deleted(txn, change, edge_id, body)
            key, normal = self.relation_body(body)
            if action == "RELATION_DELETED":
                done = self._delete_relation(txn, change, key, exclude=edge_id)
                return "deleted" if done else "unknown"
            done = self._put_relation(txn, change, key, normal, exclude=edge_id)
            return "updated" if done else "unchanged"
        return "unknown"

    def _edge_asset(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                    asset_id: uuid.UUID, action: str, body: Any, now_ms: int) -> str:
        old = self._get(txn, asset_id)
        if old is not None and old.kind != "ASSET":
            raise BadRequest(f"assetUpdateMsg: {asset_id} is a {kind_label(old.kind)}")
        if old is not None and edge_id not in self._edges_holding(txn, "ASSET", asset_id):
            # another edge's asset (or one unassigned from this edge meanwhile): not this
            # edge's to change; recorded in the apply log only
            _log.bind(entity_type="ASSET", entity_id=str(asset_id), edge_id=str(edge_id),
                      action=action).warning("asset change from an edge that does not hold it ignored")
            return "unknown"
        if action == "DELETED":
            # ThingsBoard 4.x (AssetEdgeProcessor): an asset the edge deleted is deleted
            if old is None:
                return "unknown"
            self._delete(txn, change, "ASSET", asset_id, exclude=edge_id)
            return "deleted"
        _, name, prepared = self._prepare(txn, "ASSET", body, asset_id, old, now_ms, change)
        renamed = False
        taken = self._named(txn, "ASSET", name)
        if taken is not None and taken != asset_id:
            # ThingsBoard renames an edge's asset whose name is taken (BaseEdgeProcessor
            # generateUniqueNameIfDuplicateExists) and sends the edge the new name
            alphabet = string.ascii_letters + string.digits
            name = f"{name}_{''.join(secrets.choice(alphabet) for _ in range(15))}"
            prepared["name"] = name
            renamed = True
        # the edge is sent the cloud's JSON back whenever it is not what the edge sent (a new
        # name, the profile found or made for its type, a createdTime or type filled in), as
        # ThingsBoard's server sends a renamed asset back: else the edge would never hold it
        echo = _edge_differs(body, prepared)
        text = _compact(prepared)
        if old is not None and old.json == text:
            if echo:
                self._queue(txn, change, [edge_id], self.entity_downlink(txn, old, "UPDATED"),
                            "assetUpdateMsg")
                _log.bind(entity_type="ASSET", entity_id=str(asset_id), edge_id=str(edge_id),
                          action=action, differs=echo).info(
                    "asset change from an edge unchanged in the cloud; the cloud's sent back")
            return "unchanged"
        rec = _Rec("ASSET", asset_id, name, text, prepared["createdTime"], now_ms,
                   old.origin if old is not None else "edge")
        self._put(txn, rec, old, prepared)
        if old is None:
            txn.put(edge_id.bytes + bytes([_rank("ASSET")]) + asset_id.bytes, b"ASSET",
                    db=self._dbh("g_assign"))
            txn.put(asset_id.bytes + edge_id.bytes, b"", db=self._dbh("g_assigned"))
        if echo:
            self._queue(txn, change, [edge_id], self.entity_downlink(txn, rec, "UPDATED"),
                        "assetUpdateMsg")
        if old is not None:
            self._changed(txn, change, rec, "UPDATED", exclude=edge_id)
        _log.bind(entity_type="ASSET", entity_id=str(asset_id), name=name, edge_id=str(edge_id),
                  action=action, renamed=renamed, sent_back=echo or None).info(
            "asset change from an edge applied")
        return "renamed" if renamed else ("created" if old is None else "updated")

    def _edge_relations_deleted(self, txn: lmdb.Transaction, change: _Change, edge_id: uuid.UUID,
                                body: Any) -> str:
        """Every relation of an entity deleted (RELATIONS_DELETED; body: the entity's typed id,
        as ``{"entityId": {...}}`` or the typed id itself)."""
        ref = body.get("entityId", body) if isinstance(body, dict) else None
        try:
            entity_id = uuid.UUID(str(ref.get("id"))) if isinstance(ref, dict) else None
        except ValueError:
            entity_id = None
        if entity_id is None:
            raise BadRequest("RELATIONS_DELETED: no entity id")
        count = 0
        for rel in self._relations_of(txn, entity_id):
            key = entity_graph.relation_key(rel)
            if key is not None and self._delete_relation(txn, change, key, exclude=edge_id):
                count += 1
        return f"deleted {count}"


__all__ = ["GRAPH_DB_NAMES", "GRAPH_KINDS", "METADATA", "TENANT_WIDE", "UNASSIGNED", "CloudEntity",
           "CloudGraph", "kind_label"]
