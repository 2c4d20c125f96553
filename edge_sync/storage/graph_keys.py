"""The entity graph's LMDB layout on the edge: the names of its databases and meta keys, how
every key is made and read back, and the graph's databases of one store (GraphTables). Each
graph_*.py module owns some of these databases; this one owns only their names and key shapes.

Layout (named databases of the edge's LMDB environment, storage/env.py LATER_DB_NAMES; every
value in codec.py's checksummed envelope), and the module that writes each:
  graph_entities      id(16) + type           -> the entity record        graph_entities.py
  graph_names         type \\0 name \\0 id(16)  -> b""                      graph_entities.py
  graph_provided      ref                     -> entity key               graph_entities.py
  graph_refs          ref \\0 entity key        -> b""                      graph_entities.py
  graph_relations     from(16) to(16) tail    -> the relation record      graph_relations.py
  graph_relations_to  to(16) from(16) tail    -> b""                      graph_relations.py
  graph_held          held key                -> the held record          graph_held.py
  graph_waiting       ref \\0 held key          -> b""                      graph_held.py
  graph_seen          E/R/H + key             -> b""                      graph_sync.py
  graph_log           index(u64)              -> the log entry            graph_log.py
  meta                graph/count/<type> (graph_entities.py), graph/log_next (graph_log.py),
                      graph/sync and graph/full_sync_active (graph_sync.py)
A ref is ``kind \\0 key`` (entity_graph.Ref); an entity key is id(16) + type, so a rule chain
and its metadata (or a device and its credentials) share an id. A relation's tail is
``type \\0 group`` (a 16-byte digest when that is longer than 200 bytes). A held key is ``E`` +
entity key or ``R`` + relation key. Names longer than 400 bytes are cut in the name index;
lookups compare the full name of the record.

``prefixed`` is the one range read every table uses (storage/rpc_store.py's ``meta`` keys too).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import lmdb

from edge_sync.common.entity_graph import BY_TYPE, Ref
from edge_sync.errors import BadRequest, StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore

ENTITIES, NAMES, PROVIDED, REFS = "graph_entities", "graph_names", "graph_provided", "graph_refs"
RELATIONS, RELATIONS_TO = "graph_relations", "graph_relations_to"
HELD, WAITING = "graph_held", "graph_waiting"
SEEN, LOG = "graph_seen", "graph_log"

CLOUD, EDGE = "cloud", "edge"
"""Where an entity's last change came from (its ``origin``)."""
ADDED, UPDATED, DELETED = "ADDED", "UPDATED", "DELETED"
"""Apply log actions."""
CREATED, CHANGED, UNCHANGED = "created", "updated", "unchanged"
"""What a put did."""

SEP = b"\x00"
_NAME_MAX = 400
_TAIL_MAX = 200
DERIVED = frozenset({"RULE_CHAIN_METADATA", "USER_CREDENTIALS", "DEVICE_CREDENTIALS"})
"""Kinds an entity record shares its id with: an id alone finds the main record first."""
WAITABLE = frozenset(BY_TYPE) | {"WIDGET_TYPE_FQN"}
"""Kinds the edge may wait for: the graph's kinds and widget type fqns. A reference to any other
kind (the edge itself, an alarm) can never arrive, so nothing waits for it."""


class GraphTables:
    """The graph's databases in one LmdbStore. On a read-only open of a store of an earlier
    release (no graph databases) ``present`` is False and every read finds nothing."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self._dbs = store.dbs
        self.meta = store.dbs["meta"]
        self.present = all(name in store.dbs for name in (ENTITIES, LOG))

    def db(self, name: str) -> Any:
        return self._dbs[name]


def prefixed(txn: lmdb.Transaction, db: Any, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) pairs of ``db`` whose key starts with ``prefix``, in key order."""
    with txn.cursor(db=db) as cur:
        if not cur.set_range(prefix):
            return
        for k, v in cur.iternext():
            key = bytes(k)
            if not key.startswith(prefix):
                break
            yield key, bytes(v)


# -- refs and entity keys -----------------------------------------------------------------------


def ref_bytes(ref: Ref) -> bytes:
    return codec.text_key(ref.kind) + SEP + codec.text_key(ref.key)


def ref_of(raw: bytes) -> Ref:
    kind, _, key = raw.partition(SEP)
    return Ref(kind.decode(), key.decode())


def entity_key(entity_type: str, entity_id: uuid.UUID) -> bytes:
    return entity_id.bytes + codec.text_key(entity_type)


def split_entity_key(key: bytes) -> tuple[uuid.UUID, str]:
    if len(key) <= 16:
        raise StorageCorrupt(f"graph: entity key of {len(key)} bytes")
    return uuid.UUID(bytes=key[:16]), key[16:].decode()


def name_key(entity_type: str, name: str, entity_id: uuid.UUID) -> bytes:
    return name_prefix(entity_type, name) + entity_id.bytes


def name_prefix(entity_type: str, name: str) -> bytes:
    raw = codec.text_key(name)[:_NAME_MAX]
    return codec.text_key(entity_type) + SEP + raw.replace(SEP, b"\x01") + SEP


# -- relations ----------------------------------------------------------------------------------


def _rel_tail(rel_type: str, group: str) -> bytes:
    tail = codec.text_key(rel_type) + SEP + codec.text_key(group)
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


def swap_ends(key: bytes) -> bytes:
    """A graph_relations key as its graph_relations_to key, and back."""
    return key[16:32] + key[:16] + key[32:]


def relation_text(src: Ref, dst: Ref, rel_type: str, group: str) -> str:
    """A relation's id in the apply log."""
    return f"{src.key}->{dst.key} {rel_type}/{group}"


def describe_relation(src: Ref, dst: Ref, rel_type: str) -> str:
    return f"RELATION {src} -{rel_type}-> {dst}"


# -- held keys ----------------------------------------------------------------------------------


def held_entity_key(entity_type: str, entity_id: uuid.UUID) -> bytes:
    return b"E" + entity_key(entity_type, entity_id)


def held_relation_key(src: Ref, dst: Ref, rel_type: str, group: str) -> bytes:
    return b"R" + relation_db_key(src, dst, rel_type, group)
