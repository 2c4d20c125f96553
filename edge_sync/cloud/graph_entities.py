"""The cloud graph's entity records: creating, updating and deleting an entity (with its
cascade: entity views, a rule chain's metadata, relations, assignments), a rule chain's
metadata, and reading entities by id, kind, name or edge. Each change queues its downlink for
every edge that holds the entity.

Layout (cloud/graph_keys.py): g_entities, g_names, g_kinds, g_refby (through GraphTables._put
and _unindex), g_metadata (a rule chain's metadata), and rows of g_relations, g_assign and
g_assigned dropped with a deleted entity.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks, tb_import
from edge_sync.cloud.graph_checks import GraphChecks
from edge_sync.cloud.graph_keys import (
    GRAPH_KINDS,
    METADATA,
    TENANT_WIDE,
    CloudEntity,
    _Change,
    _compact,
    _Rec,
    _refs,
    kind_label,
)
from edge_sync.common import entity_graph
from edge_sync.common.entity_graph import Ref
from edge_sync.common.wire import typed_id
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.storage import codec

_log = logger.bind(component="cloud-graph")


class GraphEntities(GraphChecks):
    """Create, update, delete and read CloudGraph's entities and rule chain metadata."""

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

    def _create(self, txn: lmdb.Transaction, change: _Change, kind: str, body: Any,
                now_ms: int) -> CloudEntity:
        entity_id, name, prepared = self._prepare(txn, kind, body, None, None, now_ms, change)
        if self._get(txn, entity_id) is not None:
            raise Conflict(f"an entity with id {entity_id} already exists")
        self._check_name(txn, kind, name, entity_id)
        self._check_fqn(txn, kind, prepared, entity_id)
        text = _compact(prepared)
        self._check_size(kind, entity_id, name, text)
        refs = _refs(kind, prepared)
        self._check_refs(txn, kind, name, refs, entity_id)
        self._check_cycle(txn, kind, entity_id, refs)
        rec = _Rec(kind, entity_id, name, text, prepared["createdTime"], now_ms, "cloud")
        self._put(txn, rec, None, prepared)
        if kind in TENANT_WIDE:
            # on every edge from the start (ThingsBoard sends a new profile, user, widget type to
            # every edge; a customer's user to the edges holding that customer): ADDED for each
            self._queue(txn, change, self._edges_holding(txn, kind, entity_id),
                        self.entity_downlink(txn, rec, "ADDED"),
                        entity_graph.BY_TYPE[kind].downlink_field)
        _log.bind(entity_type=kind, entity_id=str(entity_id), name=name, action="ADDED").info(
            "entity created")
        return self._entity(txn, rec)

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
            self._check_fqn(txn, kind, prepared, entity_id)
            text = _compact(prepared)
            if text == old.json:
                return self._entity(txn, old)
            self._check_size(kind, entity_id, name, text)
            refs = _refs(kind, prepared)
            self._check_refs(txn, kind, name, refs, entity_id)
            self._check_cycle(txn, kind, entity_id, refs)
            rec = _Rec(kind, entity_id, name, text, prepared["createdTime"], now_ms, old.origin)
            before = self._edges_holding(txn, kind, entity_id) if kind == "USER" else set()
            self._put(txn, rec, old, prepared)
            self._changed(txn, change, rec, "UPDATED", exclude=None)
            if kind == "USER":  # a user moved to another customer leaves the edges of the first
                left = before - self._edges_holding(txn, kind, entity_id)
                if left:
                    self._queue(txn, change, left, self.entity_downlink(txn, rec, "DELETED"),
                                "userUpdateMsg")
            return self._entity(txn, rec)

        updated: CloudEntity = self._write(fn)
        return updated

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
        tb_import.check_metadata(body, f"rule chain {chain.name!r} metadata")
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

    def count(self, entity_type: str | None = None) -> int:
        with self._read() as txn:
            kinds = [entity_type] if entity_type else [k for k in GRAPH_KINDS if k != METADATA]
            return sum(sum(1 for _ in self._ids_of_kind(txn, k)) for k in kinds)
