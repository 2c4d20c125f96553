"""The downlinks a change of the cloud graph queues: an entity's DownlinkMsg (ADDED with an
asset's profile or a rule chain's metadata along, as ThingsBoard's edge processors send them),
its relations whose other end an edge holds, and a change queued for every edge holding it.

No tables of its own: reads g_entities, g_metadata and the relations (cloud/graph_keys.py),
writes the edges' queues (cloud/store.py) through GraphTables._queue.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks
from edge_sync.cloud.graph_keys import (
    METADATA,
    _Change,
    _compact,
    _Rec,
)
from edge_sync.cloud.graph_relations import GraphRelations
from edge_sync.common import entity_graph

_log = logger.bind(component="cloud-graph")


class GraphDownlinks(GraphRelations):
    """The downlinks of CloudGraph's changes."""

    def entity_downlink(self, txn: lmdb.Transaction, rec: _Rec, action: str) -> bytes:
        """The DownlinkMsg of a change of ``rec``: ADDED carries an asset's profile and a rule
        chain's metadata along (ThingsBoard's AssetEdgeProcessor sends an asset's profile with
        its creation; a sync sends a chain's metadata right after it). What does not fit with
        it is left out here: entity_downlinks() says what then travels on its own."""
        return self.entity_downlinks(txn, rec, action)[0][0]

    def entity_downlinks(self, txn: lmdb.Transaction, rec: _Rec, action: str
                         ) -> list[tuple[bytes, str]]:
        """(DownlinkMsg, its list's field) to queue, in order, for a change of ``rec``: one
        message (entity_downlink's), or, when what travels with it would not fit in one edge
        message, the entity alone then a rule chain's metadata in a second message (the
        ADDED of an asset's profile is dropped: the profile is on every edge already)."""
        field = entity_graph.BY_TYPE[rec.kind].downlink_field
        own = downlinks.entity_message(rec.kind, action, rec.id,
                                       None if action == "DELETED" else rec.json)
        entries = [own]
        meta_entry = None
        if action == "ADDED" and rec.kind == "ASSET":
            profile = entity_graph.references("ASSET", json.loads(rec.json))
            prof = self._get(txn, uuid.UUID(profile[0].key)) if profile else None
            if prof is not None and prof.kind == "ASSET_PROFILE":
                entries.insert(0, downlinks.entity_message("ASSET_PROFILE", "ADDED", prof.id,
                                                           prof.json))
        if action == "ADDED" and rec.kind == "RULE_CHAIN":
            meta = self._metadata(txn, rec.id)
            if meta is not None:
                meta_entry = downlinks.entity_message(METADATA, "ADDED", rec.id, meta)
                entries.append(meta_entry)
        payload = downlinks.message_of(entries)
        if len(entries) == 1 or downlinks.stamped_size(len(payload)) <= self.max_message_bytes:
            return [(payload, field)]
        out = [(downlinks.message_of([own]), field)]  # what travels with it would not fit
        if meta_entry is not None:
            out.append((downlinks.message_of([meta_entry]), "ruleChainMetadataUpdateMsg"))
        return out

    def _queue_entity(self, txn: lmdb.Transaction, change: _Change, edges: Iterable[uuid.UUID],
                      rec: _Rec, action: str) -> None:
        """Queue entity_downlinks() of a change of ``rec`` for ``edges``."""
        edges = list(edges)
        for payload, field in self.entity_downlinks(txn, rec, action):
            self._queue(txn, change, edges, payload, field)

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

    def _changed(self, txn: lmdb.Transaction, change: _Change, rec: _Rec, action: str,
                 exclude: uuid.UUID | None) -> None:
        edges = self._edges_holding(txn, rec.kind, rec.id) - {exclude}
        if edges:
            self._queue_entity(txn, change, edges, rec, action)
        _log.bind(entity_type=rec.kind, entity_id=str(rec.id), name=rec.name, action=action,
                  edges=len(edges)).info("entity {}", action.lower())
