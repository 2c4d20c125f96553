"""The entity graph on the edge: every entity the cloud syncs (and the edge makes) as its
ThingsBoard 4.x JSON, exactly as received, with the indexes that keep it consistent: by id, by
(type, name), relations by either end, what references what (so a delete cascades), entities
held back until their references arrive, an apply log, and the state of the full sync.

This module owns GraphStore, the one API the rest of the edge calls, and is where every public
name of the graph's storage is imported from. GraphStore composes the parts, each in its own
module with its LMDB layout:
  graph_keys.py       database names, key shapes, GraphTables, the prefix range read
  graph_json.py       an entity's JSON: parsed, its name, its hard references
  graph_entities.py   entities and their indexes, per-type counts, the cascading delete
  graph_relations.py  relations, from either end
  graph_held.py       held payloads and who waits for what
  graph_log.py        the apply log
  graph_sync.py       the sync state and the running full sync's seen marks
  graph_sweep.py      the end of a full sync: what it did not send is removed

The vocabulary (kinds, hard references, what an entity provides) is common/entity_graph.py;
applying downlinks is link/graph_apply.py. ThingsBoard's own edge keeps the same data in its
SQL tables (thingsboard-edge, ``service/cloud/rpc/processor/*CloudProcessor``); unlike it, this
store holds an entity back until what it references is on the edge instead of failing it, and
removes after a full sync what the cloud no longer assigns to the edge.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import lmdb

from edge_sync.common.entity_graph import Ref
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_entities import EntityRecord, EntityTable
from edge_sync.storage.graph_held import HeldEntity, HeldPayload, HeldTable
from edge_sync.storage.graph_json import hard_references, name_of
from edge_sync.storage.graph_keys import (
    ADDED,
    CHANGED,
    CLOUD,
    CREATED,
    DELETED,
    EDGE,
    UNCHANGED,
    UPDATED,
    WAITABLE,
    GraphTables,
    describe_relation,
    entity_key,
    held_entity_key,
    held_relation_key,
    ref_bytes,
    relation_db_key,
    relation_text,
)
from edge_sync.storage.graph_log import APPLY_LOG_KEEP, ApplyLog, ApplyLogEntry
from edge_sync.storage.graph_relations import RelationTable
from edge_sync.storage.graph_sweep import FullSyncEnd, Removal
from edge_sync.storage.graph_sync import FullSyncState, SyncState
from edge_sync.storage.records import Status

__all__ = [
    "ADDED", "APPLY_LOG_KEEP", "CHANGED", "CLOUD", "CREATED", "DELETED", "EDGE", "UNCHANGED",
    "UPDATED", "WAITABLE", "ApplyLogEntry", "EntityRecord", "GraphStore", "HeldEntity",
    "HeldPayload", "Removal", "SyncState", "describe_relation", "entity_key", "hard_references",
    "held_entity_key", "held_relation_key", "name_of", "ref_bytes", "relation_db_key",
    "relation_text",
]


class GraphStore:
    """Synchronous access to the entity graph inside LmdbStore transactions. On a read-only
    open of a store of an earlier release (no graph databases) every read finds nothing."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.entities_store = EntityStore(store)
        tables = GraphTables(store)
        # read at each append: this module's APPLY_LOG_KEEP is the setting
        log = ApplyLog(tables, keep=lambda: APPLY_LOG_KEEP)
        self._sync = FullSyncState(tables)
        self._held = HeldTable(tables, self._sync)
        self._relations = RelationTable(tables, self._held, self._sync, log)
        self._entities = EntityTable(tables, self._held, self._relations, self._sync, log,
                                     self.entities_store)
        self._end = FullSyncEnd(tables, self._sync, self._entities, self._relations, self._held)
        self._log = log

    # -- entities -------------------------------------------------------------------------------

    def entity(self, txn: lmdb.Transaction, entity_id: uuid.UUID,
               entity_type: str | None = None) -> EntityRecord | None:
        """The entity with this id (of this type; without a type the main record: a rule
        chain rather than its metadata)."""
        return self._entities.entity(txn, entity_id, entity_type)

    def edge_change_pending(self, txn: lmdb.Transaction, entity_id: uuid.UUID,
                            entity_type: str) -> bool:
        """Whether the entity's last change was made on the edge and its event has not reached
        the cloud yet (PENDING): what the cloud sends for it meanwhile predates that change."""
        rec = self._entities.entity(txn, entity_id, entity_type)
        if rec is None or rec.origin != EDGE or rec.origin_seq is None:
            return False
        event = EventLog(self.store).get(txn, rec.origin_seq)
        return event is not None and event.status is Status.PENDING

    def entities(self, txn: lmdb.Transaction, *, entity_type: str | None = None,
                 name: str | None = None) -> list[EntityRecord]:
        """Entities of a type and/or name (by type, then name); all of them with neither."""
        return self._entities.entities(txn, entity_type=entity_type, name=name)

    def count(self, txn: lmdb.Transaction, entity_type: str | None = None) -> int:
        """Entities (of a type); O(1)."""
        return self._entities.count(txn, entity_type)

    def present(self, txn: lmdb.Transaction, ref: Ref) -> bool:
        """Whether what ``ref`` names is on the edge: an entity (or a widget type fqn) of the
        graph, a device of the device table, or a kind the edge never waits for."""
        return self._entities.present(txn, ref)

    def dependants(self, txn: lmdb.Transaction, ref: Ref) -> list[tuple[str, uuid.UUID]]:
        """The entities that hard-reference ``ref`` (type, id)."""
        return self._entities.dependants(txn, ref)

    def put_entity(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID,
                   json_text: str, *, now_ms: int, origin: str = CLOUD,
                   origin_seq: int | None = None, extra: str | None = None,
                   body: Mapping[str, Any] | None = None,
                   refs: Sequence[Ref] | None = None) -> str:
        """Insert or replace an entity's JSON: "created", "updated", or "unchanged" (the same
        JSON and extra: nothing written, no apply log entry). ``body``: the JSON already
        parsed, ``refs`` its hard_references, when the caller has them. A held payload of the
        same entity is dropped (this write is newer)."""
        return self._entities.put(txn, entity_type, entity_id, json_text, now_ms=now_ms,
                                  origin=origin, origin_seq=origin_seq, extra=extra, body=body,
                                  refs=refs)

    def delete_entity(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID, *,
                      now_ms: int, origin: str = CLOUD,
                      relations_removed: list[str] | None = None) -> list[Ref]:
        """Remove an entity and, first, everything that depends on it (recursively), with
        their relations, operational records and held updates; the entities removed,
        dependants first (the relations removed go to ``relations_removed``)."""
        return self._entities.delete(txn, entity_type, entity_id, now_ms=now_ms, origin=origin,
                                     relations_removed=relations_removed)

    # -- relations ------------------------------------------------------------------------------

    def relations(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        """The relation JSON objects from and to an entity (from first)."""
        return self._relations.of(txn, entity_id)

    def relation_count(self, txn: lmdb.Transaction) -> int:
        return self._relations.count(txn)

    def put_relation(self, txn: lmdb.Transaction, json_text: str, *, now_ms: int,
                     origin: str = CLOUD, origin_seq: int | None = None,
                     body: Mapping[str, Any] | None = None) -> str:
        """Insert or replace a relation (ThingsBoard's EntityRelation JSON): created, updated
        or unchanged. BadRequest when an end is missing."""
        return self._relations.put(txn, json_text, now_ms=now_ms, origin=origin,
                                   origin_seq=origin_seq, body=body)

    def delete_relation(self, txn: lmdb.Transaction, src: Ref, dst: Ref, rel_type: str,
                        group: str, *, now_ms: int, origin: str = CLOUD) -> bool:
        """Remove one relation (and a held version of it); whether it was there."""
        return self._relations.delete(txn, src, dst, rel_type, group, now_ms=now_ms,
                                      origin=origin)

    def delete_relations(self, txn: lmdb.Transaction, ref: Ref, *, now_ms: int,
                         origin: str = CLOUD, removed: list[str] | None = None) -> int:
        """Remove every relation from or to ``ref`` (that kind and id); how many (their apply
        log ids appended to ``removed``)."""
        return self._relations.delete_all(txn, ref, now_ms=now_ms, origin=origin,
                                          removed=removed)

    # -- held entities --------------------------------------------------------------------------

    def hold(self, txn: lmdb.Transaction, key: bytes, *, entity_type: str,
             entity_id: uuid.UUID | None, what: str, field: str, payload: bytes,
             waiting_for: Sequence[Ref], now_ms: int) -> None:
        """Keep a payload until every ref of ``waiting_for`` is on the edge (replacing an
        earlier held payload of the same key); during a full sync it counts as seen."""
        self._held.hold(txn, key, entity_type=entity_type, entity_id=entity_id, what=what,
                        field=field, payload=payload, waiting_for=waiting_for, now_ms=now_ms)

    def held_payload(self, txn: lmdb.Transaction, key: bytes) -> HeldPayload | None:
        return self._held.get(txn, key)

    def held_keys(self, txn: lmdb.Transaction) -> list[bytes]:
        """The keys of everything held (one read of the held table)."""
        return self._held.keys(txn)

    def narrow_held(self, txn: lmdb.Transaction, key: bytes, waiting_for: Sequence[Ref]) -> None:
        """Some of what a held entity waited for has arrived: it now waits for ``waiting_for``
        only (held since the same time)."""
        self._held.narrow(txn, key, waiting_for)

    def drop_held(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Forget a held payload (applied, replaced or deleted); whether there was one."""
        return self._held.drop(txn, key)

    def waiting_on(self, txn: lmdb.Transaction, ref: Ref) -> list[bytes]:
        """The held keys waiting for ``ref``."""
        return self._held.waiting_on(txn, ref)

    def held(self, txn: lmdb.Transaction) -> list[HeldEntity]:
        """Everything that waits, and for what."""
        return self._held.all(txn)

    def held_count(self, txn: lmdb.Transaction) -> int:
        return self._held.count(txn)

    def is_held(self, txn: lmdb.Transaction, key: bytes) -> bool:
        return self._held.is_held(txn, key)

    # -- the apply log --------------------------------------------------------------------------

    def apply_log(self, txn: lmdb.Transaction, *, after: int = 0, limit: int = 0
                  ) -> list[ApplyLogEntry]:
        """Apply log entries with an index above ``after``, oldest first (``limit`` 0: all)."""
        return self._log.entries(txn, after=after, limit=limit)

    # -- full sync ------------------------------------------------------------------------------

    def sync_state(self, txn: lmdb.Transaction) -> SyncState:
        return self._sync.state(txn)

    def request_full_sync(self, txn: lmdb.Transaction, reason: str) -> None:
        """An operator asked for a full sync: durable until one completes."""
        self._sync.request(txn, reason)

    def mark_damaged(self, txn: lmdb.Transaction, what: str) -> None:
        """Damage was found in the graph: the next connect asks for a full sync."""
        self._sync.mark_damaged(txn, what)

    def full_sync_active(self, txn: lmdb.Transaction) -> bool:
        return self._sync.active(txn)

    def start_full_sync(self, txn: lmdb.Transaction, *, now_ms: int, reason: str) -> int:
        """A full sync starts: a new generation, nothing seen yet, marked in progress until
        complete_full_sync (a crash in between leaves it in progress). Its generation."""
        return self._sync.start(txn, now_ms=now_ms, reason=reason)

    def mark_seen(self, txn: lmdb.Transaction, *,
                  entity: tuple[str, uuid.UUID] | None = None,
                  relation: tuple[Ref, Ref, str, str] | None = None) -> None:
        """During a full sync: an entity or relation (applied, or held) counts as sent."""
        self._sync.mark_seen(txn, entity=entity, relation=relation)

    def held_outside_sync(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Whether a full sync is under way and has not sent this held entity again (it is
        removed at the sync's end unless it comes; releasing it now would keep it)."""
        return self._sync.held_outside_sync(txn, key)

    def drop_full_sync_marks(self, txn: lmdb.Transaction) -> bool:
        """Forget the seen marks of a full sync nobody tracks any more (its DownlinkActor
        restarted, or the process did): its completion will sweep nothing, and the marker must
        not keep held entities back until the next full sync. The sync state's in_progress
        stays, so the next connect asks for a full sync again. Whether there were marks."""
        if not self._sync.active(txn):
            return False
        self._sync.end_marks(txn)
        return True

    def complete_full_sync(self, txn: lmdb.Transaction, *, now_ms: int, version: str,
                           sweep_relations: bool = True) -> list[Removal]:
        """The full sync's SyncCompletedMsg: remove what it did not send (with dependants),
        except what the edge made that the cloud may not have yet; record the edge version
        and clear the flags. What was removed, in order. ``sweep_relations`` False: a sync that
        sends no relations (ThingsBoard's) removes none but those of the entities it removes."""
        return self._end.complete(txn, now_ms=now_ms, version=version,
                                  sweep_relations=sweep_relations)
