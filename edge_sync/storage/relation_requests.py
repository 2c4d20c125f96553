"""The relation requests the edge owes a ThingsBoard cloud (link/relation_requests.py decides
which): an entity is recorded here in the transaction of the downlink that put it on the edge,
and removed once its RELATION_REQUEST event is in the event log. Between the two a crash loses
nothing: what is still recorded is queued again when the DownlinkActor starts.

Each recording carries a random stamp: removing what was appended leaves an entity recorded
again meanwhile (a customer changed once more), so that one is asked for again.

Layout (the ``meta`` database, one key per entity):
  meta  relation_request/ + entity id (16 bytes) -> stamp (8 random bytes) + entity type (UTF-8)
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import lmdb

from edge_sync.errors import StorageCorrupt
from edge_sync.storage.env import LmdbStore

_PREFIX = b"relation_request/"
_STAMP = 8


@dataclass(frozen=True, slots=True)
class Wanted:
    """One recorded request."""

    entity_type: str
    entity_id: uuid.UUID
    stamp: bytes  # this recording's (a later one of the entity replaces it)


class RelationRequestBook:
    """The recorded requests, in a store's transactions."""

    def __init__(self, store: LmdbStore) -> None:
        self._meta = store.dbs["meta"]

    def want(self, txn: lmdb.Transaction, entity_type: str, entity_id: uuid.UUID) -> None:
        """Record that ``entity_id``'s relations are to be asked for (a recording still there
        is replaced: one request covers both)."""
        txn.put(_PREFIX + entity_id.bytes, os.urandom(_STAMP) + entity_type.encode(),
                db=self._meta)

    def wanted(self, txn: lmdb.Transaction) -> list[Wanted]:
        """Every recorded request, in id order (one range read)."""
        out: list[Wanted] = []
        with txn.cursor(db=self._meta) as cur:
            if not cur.set_range(_PREFIX):
                return out
            for k, v in cur.iternext():
                key = bytes(k)
                if not key.startswith(_PREFIX):
                    break
                out.append(_decode(key[len(_PREFIX):], bytes(v)))
        return out

    def queued(self, txn: lmdb.Transaction, appended: Iterable[Wanted]) -> int:
        """The requests ``appended`` are in the event log: no longer recorded, unless recorded
        again since (another stamp). How many were removed."""
        removed = 0
        for w in appended:
            key = _PREFIX + w.entity_id.bytes
            raw = txn.get(key, db=self._meta)
            if raw is not None and bytes(raw)[:_STAMP] == w.stamp:
                removed += bool(txn.delete(key, db=self._meta))
        return removed


def _decode(raw_id: bytes, value: bytes) -> Wanted:
    if len(raw_id) != 16 or len(value) <= _STAMP:
        raise StorageCorrupt(f"meta: relation request of {len(raw_id)} + {len(value)} bytes")
    entity_id = uuid.UUID(bytes=raw_id)
    try:
        entity_type = value[_STAMP:].decode()
    except UnicodeDecodeError as exc:
        raise StorageCorrupt(f"meta: relation request of {entity_id}: entity type unreadable "
                             f"({exc})") from exc
    return Wanted(entity_type, entity_id, value[:_STAMP])
