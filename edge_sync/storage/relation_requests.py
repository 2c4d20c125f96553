"""The relation requests the edge owes a ThingsBoard cloud (link/relation_requests.py decides
which): an entity is recorded here in the transaction of the downlink that put it on the edge,
and removed once its RELATION_REQUEST event is in the event log. Between the two a crash loses
nothing: what is still recorded is queued again when the DownlinkActor starts.

Layout (the ``meta`` database, one key per entity):
  meta  relation_request/ + entity id (16 bytes) -> entity type (UTF-8)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import lmdb

from edge_sync.errors import StorageCorrupt
from edge_sync.storage.env import LmdbStore

_PREFIX = b"relation_request/"


class RelationRequestBook:
    """The recorded requests, in a store's transactions."""

    def __init__(self, store: LmdbStore) -> None:
        self._meta = store.dbs["meta"]

    def want(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID) -> None:
        """Record that ``entity_id``'s relations are to be asked for (once, however often)."""
        txn.put(_PREFIX + entity_id.bytes, entity_type.encode(), db=self._meta)

    def wanted(self, txn: lmdb.Transaction) -> list[tuple[str, uuid.UUID]]:
        """Every recorded request, (entity type, id), in id order (one range read)."""
        out: list[tuple[str, uuid.UUID]] = []
        with txn.cursor(db=self._meta) as cur:
            if not cur.set_range(_PREFIX):
                return out
            for k, v in cur.iternext():
                key = bytes(k)
                if not key.startswith(_PREFIX):
                    break
                raw = key[len(_PREFIX):]
                if len(raw) != 16:
                    raise StorageCorrupt(f"meta: relation request key of {len(raw)} bytes")
                try:
                    entity_type = bytes(v).decode()
                except UnicodeDecodeError as exc:
                    raise StorageCorrupt(f"meta: relation request of {uuid.UUID(bytes=raw)}: "
                                         f"entity type unreadable ({exc})") from exc
                out.append((entity_type, uuid.UUID(bytes=raw)))
        return out

    def queued(self, txn: lmdb.Transaction, entities: Iterable[tuple[str, uuid.UUID]]) -> int:
        """The requests of ``entities`` are in the event log: no longer recorded. How many
        were."""
        return sum(1 for _type, entity_id in entities
                   if txn.delete(_PREFIX + entity_id.bytes, db=self._meta))
