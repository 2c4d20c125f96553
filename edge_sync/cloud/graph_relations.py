"""The cloud graph's relations: ThingsBoard's EntityRelation JSON between two entities (of the
graph, devices or edges), readable from either end. Adding or deleting one queues its
relationUpdateMsg (RELATION_ADD_OR_UPDATE / RELATION_DELETED) for every edge holding both ends.

Layout (cloud/graph_keys.py):
  g_relations     from id + to id + typeGroup + 0 + type -> EntityRelation JSON
  g_relations_to  to id + from id + typeGroup + 0 + type -> b""
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import lmdb
from loguru import logger

from edge_sync.cloud import downlinks
from edge_sync.cloud.graph_keys import (
    MAX_RELATION_TYPE_BYTES,
    MAX_TYPE_GROUP_BYTES,
    _Change,
    _compact,
    kind_label,
)
from edge_sync.cloud.graph_tables import GraphTables
from edge_sync.common import entity_graph
from edge_sync.common.entity_graph import Ref
from edge_sync.common.wire import typed_id
from edge_sync.errors import BadRequest
from edge_sync.storage import codec
from edge_sync.validators import text_fits

_log = logger.bind(component="cloud-graph")


class GraphRelations(GraphTables):
    """Relations of CloudGraph: checked, stored, deleted, read, and queued for the edges."""

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
