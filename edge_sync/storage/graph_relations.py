"""The entity graph's relations: ThingsBoard's EntityRelation JSON as received (or as the edge
made it), keyed by its two ends, type and group, readable from either end; each change in the
apply log and, during a full sync, marked seen.

Layout (storage/graph_keys.py):
  graph_relations     from(16) to(16) tail    -> (from kind, from id, to kind, to id, type,
                                                  group, json, updated_ms, origin, origin_seq)
  graph_relations_to  to(16) from(16) tail    -> b""
A relation's tail is ``type \\0 group`` (a 16-byte digest when that is longer than 200 bytes).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import lmdb

from edge_sync.common.entity_graph import Ref, relation_key
from edge_sync.errors import BadRequest
from edge_sync.storage import codec
from edge_sync.storage.graph_held import HeldTable
from edge_sync.storage.graph_json import parse_entity_json
from edge_sync.storage.graph_keys import (
    ADDED,
    CHANGED,
    CLOUD,
    CREATED,
    DELETED,
    RELATIONS,
    RELATIONS_TO,
    UNCHANGED,
    UPDATED,
    GraphTables,
    prefixed,
    relation_db_key,
    relation_text,
    swap_ends,
)
from edge_sync.storage.graph_log import ApplyLog
from edge_sync.storage.graph_sync import FullSyncState


def relation_fields(raw: bytes) -> list[Any]:
    """A graph_relations value's ten fields (see the module docstring)."""
    return codec.unpack_fields(raw, "graph: relation", 10)


# what names a relation rather than says something of it; "version" is the sender's own
# counter, never the relation's content (ThingsBoard bumps it on every save and sends it null:
# EdgeMsgConstructorUtils.constructRelationUpdatedMsg resets it before JacksonUtil.toString)
_NOT_CONTENT = frozenset(("from", "to", "type", "typeGroup", "version"))


def _content(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a relation says beyond its identity: its additionalInfo (absent is null) and any
    other field."""
    return {k: v for k, v in body.items()
            if k not in _NOT_CONTENT and not (k == "additionalInfo" and v is None)}


def _canonical(content: Mapping[str, Any]) -> str:
    """A relation's content as text that tells JSON values apart as ThingsBoard's JsonNode
    does (Jackson's ObjectMapper in JacksonUtil.toJsonNode, compared by JsonNode.equals):
    true is not 1, 1 (an IntNode) is not 1.0 (a DoubleNode), -0.0 is not 0.0; key order does
    not matter (ObjectNode compares its fields as a map). Python's ``==`` takes
    True == 1 == 1.0."""
    return json.dumps(content, sort_keys=True)


def same_relation(stored_text: str, json_text: str, body: Mapping[str, Any]) -> bool:
    """Whether ``body`` (``json_text`` parsed) is the relation stored as ``stored_text``: the
    same text, or the same ends, type, group and content in other JSON text (spacing, key
    order, a null version or additionalInfo; values of other JSON types differ, ``_canonical``).
    The cloud sends the relations the edge made back in its own text when the edge asks for an
    entity's relations (a RelationRequestMsg's answer): that changes nothing and is no
    update."""
    if stored_text == json_text:
        return True
    stored = json.loads(stored_text)
    return (isinstance(stored, dict) and relation_key(stored) == relation_key(body)
            and _canonical(_content(stored)) == _canonical(_content(body)))


class RelationTable:
    """Relations in a store's transactions."""

    def __init__(self, tables: GraphTables, held: HeldTable, sync: FullSyncState,
                 log: ApplyLog) -> None:
        self._t = tables
        self._held = held
        self._sync = sync
        self._log = log

    def of(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        """The relation JSON objects from and to an entity (from first)."""
        if not self._t.present:
            return []
        rels = self._t.db(RELATIONS)
        out: list[dict[str, Any]] = []
        for _, raw in prefixed(txn, rels, entity_id.bytes):
            out.append(json.loads(relation_fields(raw)[6]))
        for key, _ in prefixed(txn, self._t.db(RELATIONS_TO), entity_id.bytes):
            raw_rel = txn.get(swap_ends(key), db=rels)
            if raw_rel is not None and key[16:32] != entity_id.bytes:  # a self-relation: once
                out.append(json.loads(relation_fields(bytes(raw_rel))[6]))
        return out

    def count(self, txn: lmdb.Transaction) -> int:
        return self._t.store.entries(txn, RELATIONS) if self._t.present else 0

    def put(self, txn: lmdb.Transaction, json_text: str, *, now_ms: int, origin: str = CLOUD,
            origin_seq: int | None = None, body: Mapping[str, Any] | None = None) -> str:
        """Insert or replace a relation (ThingsBoard's EntityRelation JSON): created, updated
        or unchanged (the same relation in any JSON text, ``same_relation``: nothing written,
        nothing in the apply log). BadRequest when an end is missing."""
        if body is None:
            body = parse_entity_json(json_text, "RELATION")
        found = relation_key(body)
        if found is None:
            raise BadRequest("relation without both ends (from, to)")
        src, dst, rel_type, group = found
        key = relation_db_key(src, dst, rel_type, group)
        self._held.drop(txn, b"R" + key)
        old = txn.get(key, db=self._t.db(RELATIONS))
        if old is not None and same_relation(relation_fields(bytes(old))[6], json_text, body):
            self._sync.mark(txn, b"R" + key)
            return UNCHANGED
        txn.put(key, codec.pack((src.kind, src.key, dst.kind, dst.key, rel_type, group,
                                 json_text, now_ms, origin, origin_seq)),
                db=self._t.db(RELATIONS))
        txn.put(swap_ends(key), b"", db=self._t.db(RELATIONS_TO))
        self._log.append(txn, now_ms, "RELATION", relation_text(src, dst, rel_type, group),
                         ADDED if old is None else UPDATED, origin)
        self._sync.mark(txn, b"R" + key)
        return CREATED if old is None else CHANGED

    def delete(self, txn: lmdb.Transaction, src: Ref, dst: Ref, rel_type: str, group: str, *,
               now_ms: int, origin: str = CLOUD) -> bool:
        """Remove one relation (and a held version of it); whether it was there."""
        key = relation_db_key(src, dst, rel_type, group)
        dropped = self._held.drop(txn, b"R" + key)
        gone = self.delete_key(txn, key, now_ms=now_ms, origin=origin) is not None
        return gone or dropped

    def delete_key(self, txn: lmdb.Transaction, key: bytes, *, now_ms: int,
                   origin: str) -> str | None:
        """Remove a relation by its key; its apply log id, None when there was none."""
        raw = txn.get(key, db=self._t.db(RELATIONS))
        if raw is None:
            return None
        f = relation_fields(bytes(raw))
        txn.delete(key, db=self._t.db(RELATIONS))
        txn.delete(swap_ends(key), db=self._t.db(RELATIONS_TO))
        self._sync.unmark(txn, b"R" + key)
        text = relation_text(Ref(f[0], f[1]), Ref(f[2], f[3]), f[4], f[5])
        self._log.append(txn, now_ms, "RELATION", text, DELETED, origin)
        return text

    def delete_all(self, txn: lmdb.Transaction, ref: Ref, *, now_ms: int, origin: str = CLOUD,
                   removed: list[str] | None = None) -> int:
        """Remove every relation from or to ``ref`` (that kind and id); how many (their apply
        log ids appended to ``removed``)."""
        try:
            rid = uuid.UUID(ref.key).bytes
        except ValueError:
            return 0
        rels = self._t.db(RELATIONS)
        keys = [k for k, v in prefixed(txn, rels, rid) if relation_fields(v)[0] == ref.kind]
        for k, _ in prefixed(txn, self._t.db(RELATIONS_TO), rid):
            key = swap_ends(k)
            raw = txn.get(key, db=rels)
            if raw is not None and relation_fields(bytes(raw))[2] == ref.kind:
                keys.append(key)
        n = 0
        for k in dict.fromkeys(keys):
            text = self.delete_key(txn, k, now_ms=now_ms, origin=origin)
            if text is not None:
                n += 1
                if removed is not None:
                    removed.append(text)
        return n
