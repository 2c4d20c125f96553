"""The end of a full sync on the edge: everything the sync did not send (no seen mark,
storage/graph_sync.py) is removed, entities with their dependants, relations and held
payloads, except what the edge made whose last change the cloud may not have yet; then the
edge version is recorded and the sync flags cleared. ThingsBoard Edge leaves such orphans.
A ThingsBoard server's full sync sends no relations (its EdgeSyncCursor has no relation step;
they come as answers to the edge's RelationRequestMsgs, after SyncCompletedMsg): the end of such
a sync (``sweep_relations`` False) removes no relation the edge holds, only those of the
entities it removes.

It writes no table of its own: it reads graph_seen, graph_entities, graph_relations and
graph_held (storage/graph_keys.py) and the event log's ``events`` and ``deployed_by_time``
(storage/event_log.py), and removes through the entity, relation and held tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import lmdb

from edge_sync.common.entity_graph import Ref
from edge_sync.storage import codec
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_entities import EntityTable
from edge_sync.storage.graph_held import HeldTable
from edge_sync.storage.graph_keys import (
    CLOUD,
    EDGE,
    ENTITIES,
    HELD,
    RELATIONS,
    GraphTables,
    describe_relation,
    entity_key,
    relation_text,
)
from edge_sync.storage.graph_relations import RelationTable, relation_fields
from edge_sync.storage.graph_sync import FullSyncState
from edge_sync.storage.records import Status


@dataclass(frozen=True, slots=True)
class Removal:
    """An entity or relation removed by a full sync's end (no longer assigned to the edge)."""

    entity_type: str
    id: str
    what: str
    held: bool = False  # a held payload dropped (no record of the entity was removed)


class FullSyncEnd:
    """Completes full syncs in a store's transactions."""

    def __init__(self, tables: GraphTables, sync: FullSyncState, entities: EntityTable,
                 relations: RelationTable, held: HeldTable) -> None:
        self._t = tables
        self._sync = sync
        self._entities = entities
        self._relations = relations
        self._held = held

    def complete(self, txn: lmdb.Transaction, *, now_ms: int, version: str,
                 sweep_relations: bool = True) -> list[Removal]:
        """The full sync's SyncCompletedMsg: remove every entity and relation it did not send
        (with their dependants) and every held payload it did not send again, except what the
        edge made whose last change the cloud may not have yet (its event not DEPLOYED, or
        deployed after the sync started); record the edge version and clear the flags. What
        was removed, in order (an entity's dependants included). ``sweep_relations`` False (a
        sync without relations, ThingsBoard's): the relations applied on the edge stay, but
        those of a removed entity go with it."""
        state = self._sync.state_or_fresh(txn)
        removed: list[Removal] = []
        if self._sync.marking(txn):
            removed = self._sweep(txn, now_ms=now_ms, started_ms=state.started_ms or now_ms,
                                  relations=sweep_relations)
            self._sync.end_marks(txn)
        self._sync.put_state(txn, replace(state, completed_version=version, completed_ms=now_ms,
                                          in_progress=False, requested=None, damaged=None))
        return removed

    def _sweep(self, txn: lmdb.Transaction, *, now_ms: int, started_ms: int,
               relations: bool) -> list[Removal]:
        sync = self._sync
        events = EventLog(self._t.store)
        deployed_since = self._deployed_since(txn, started_ms)

        def keep(origin: str, origin_seq: int | None) -> bool:
            if origin != EDGE or origin_seq is None:
                return False
            if origin_seq in deployed_since:
                return True
            event = events.get(txn, origin_seq)  # still on its way (a DEAD one never will be)
            return event is not None and event.status is Status.PENDING

        doomed: list[tuple[str, uuid.UUID]] = []
        with txn.cursor(db=self._t.db(ENTITIES)) as cur:  # the one scan of the sweep
            for k, _ in cur.iternext():
                key = bytes(k)
                if sync.seen(txn, b"E" + key):
                    continue
                row = self._entities.row(txn, key)
                if row is not None and not keep(row.origin, row.origin_seq):
                    doomed.append((row.entity_type, uuid.UUID(bytes=key[:16])))
        doomed_rels = self._unseen_relations(txn, keep) if relations else []
        with txn.cursor(db=self._t.db(HELD)) as cur:
            doomed_held = [bytes(k) for k in cur.iternext(values=False)
                           if not sync.seen(txn, b"H" + bytes(k))]
        out: list[Removal] = []
        for etype, eid in doomed:
            if self._entities.row(txn, entity_key(etype, eid)) is None:
                continue  # gone already with an entity it depended on
            rels: list[str] = []
            for ref in self._entities.delete(txn, etype, eid, now_ms=now_ms,
                                             relations_removed=rels):
                out.append(Removal(ref.kind, ref.key, f"{ref.kind} {ref.key}"))
            out.extend(Removal("RELATION", text, f"RELATION {text}") for text in rels)
        for key, f in doomed_rels:
            if self._relations.delete_key(txn, key, now_ms=now_ms, origin=CLOUD) is not None:
                src, dst = Ref(f[0], f[1]), Ref(f[2], f[3])
                out.append(Removal("RELATION", relation_text(src, dst, f[4], f[5]),
                                   describe_relation(src, dst, f[4])))
        for key in doomed_held:
            found = self._held.get(txn, key)
            if found is not None and self._held.drop(txn, key):
                out.append(Removal(found.entity.entity_type, "" if found.entity.id is None
                                   else str(found.entity.id), f"held {found.entity.what}",
                                   held=True))
        return out

    def _unseen_relations(self, txn: lmdb.Transaction, keep: Callable[[str, int | None], bool]
                          ) -> list[tuple[bytes, list[Any]]]:
        """The relations the sync did not send and ``keep`` does not keep: (key, fields)."""
        out: list[tuple[bytes, list[Any]]] = []
        with txn.cursor(db=self._t.db(RELATIONS)) as cur:
            for k, v in cur.iternext():
                key = bytes(k)
                if not self._sync.seen(txn, b"R" + key):
                    f = relation_fields(bytes(v))
                    if not keep(f[8], f[9]):
                        out.append((key, f))
        return out

    def _deployed_since(self, txn: lmdb.Transaction, since_ms: int) -> set[int]:
        """Seqs of the events marked DEPLOYED at or after ``since_ms`` (one range read of the
        event log's deployed-by-time index, from that time on)."""
        out: set[int] = set()
        with txn.cursor(db=self._t.db("deployed_by_time")) as cur:
            if cur.set_range(codec.time_seq_key(since_ms, 0)):
                for k in cur.iternext(values=False):
                    out.add(codec.from_time_seq_key(k)[1])
        return out
