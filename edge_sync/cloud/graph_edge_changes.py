"""Changes an edge made to the cloud graph, applied with its uplink in that transaction: an
asset ADDED / UPDATED / DELETED (a taken name renamed, the cloud's JSON sent back when it is not
what the edge sent), a relation added or deleted, every relation of an entity deleted; each
queued for the other edges that hold it, as ThingsBoard's AssetEdgeProcessor /
RelationEdgeProcessor do.

No tables of its own: records, relations and assignment rows through the parts below it
(cloud/graph_keys.py).

ECHO_DELETES: a delete an edge made is queued back to that edge as well. It is a no-op there
(the entity is gone), except after a full sync that ran before the edge's delete reached the
cloud (uplinks start once a sync completes): that sync brought the entity back, and the echo
removes it again, so edge and cloud agree.
"""

from __future__ import annotations

import secrets
import string
import uuid
from collections import Counter
from typing import Any

import lmdb
from loguru import logger

from edge_sync.cloud.graph_assign import GraphAssignment
from edge_sync.cloud.graph_keys import (
    _Change,
    _compact,
    _edge_differs,
    _rank,
    _Rec,
    kind_label,
)
from edge_sync.common import entity_graph
from edge_sync.errors import BadRequest

_log = logger.bind(component="cloud-graph")


class GraphEdgeChanges(GraphAssignment):
    """Entity and relation changes from an edge's uplinks, for CloudGraph."""

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
                # queued back to its edge too (ECHO_DELETES)
                done = self._delete_relation(txn, change, key, exclude=None)
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
            self._delete(txn, change, "ASSET", asset_id, exclude=None)  # ECHO_DELETES
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
            if key is not None and self._delete_relation(txn, change, key, exclude=None):
                count += 1
        return f"deleted {count}"
