"""Which edge an entity of the cloud graph is assigned to: assign (ADDED queued, then its
relations, then what on that edge waited for it) and unassign (DELETED queued, after what is
assigned there and hard-references it, recursively), for devices too (one edge each), entities
created and assigned in one transaction, and reading an edge's assignment in sync order.

Layout (cloud/graph_keys.py):
  g_assign     edge id + sync rank (1 byte) + id -> entity type
  g_assigned   id + edge id -> b""
a device's edge in the store's device tables (cloud/store.py).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks
from edge_sync.cloud.graph_defaults import GraphDefaults
from edge_sync.cloud.graph_keys import (
    GRAPH_KINDS,
    METADATA,
    TENANT_WIDE,
    UNASSIGNED,
    CloudEntity,
    _Change,
    _rank,
    _Rec,
    _refs,
    kind_label,
)
from edge_sync.common import entity_graph
from edge_sync.common.entity_graph import Ref
from edge_sync.errors import BadRequest, Conflict, NotFound

_log = logger.bind(component="cloud-graph")


class GraphAssignment(GraphDefaults):
    """Assignment of CloudGraph's entities and devices to edges, with their cascades."""

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
        if kind == "USER" or self._on_every_edge(txn, kind, entity_id) \
                or self._is_assigned(txn, edge_id, kind, entity_id):
            return False  # a user is on every edge, or follows its customer's assignment
        txn.put(edge_id.bytes + bytes([_rank(kind)]) + entity_id.bytes, kind.encode(),
                db=self._dbh("g_assign"))
        txn.put(entity_id.bytes + edge_id.bytes, b"", db=self._dbh("g_assigned"))
        self._queue_entity(txn, change, [edge_id], rec, "ADDED")
        if kind == "CUSTOMER":  # its users come to the edge with it (CustomerUsersEdgeEventFetcher)
            for user in self._customer_users(txn, entity_id):
                self._queue(txn, change, [edge_id], self.entity_downlink(txn, user, "ADDED"),
                            "userUpdateMsg")
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
                    self._queue_entity(txn, change, [edge_id], dep, "ADDED")
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
        if rec.kind == "CUSTOMER":  # its users leave the edge with it
            for user in self._customer_users(txn, rec.id):
                self._queue(txn, change, [edge_id], self.entity_downlink(txn, user, "DELETED"),
                            "userUpdateMsg")
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
