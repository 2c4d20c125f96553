"""The entity graph's apply log: one entry per entity or relation added, updated or deleted on
the edge (by the cloud or by the edge), oldest first, bounded.

Layout (storage/graph_keys.py):
  graph_log           index(u64)              -> (ts, type, id, action, origin)
  meta                graph/log_next          -> the next index (u64)
The log keeps the newest 200,000 entries (APPLY_LOG_KEEP); older ones are dropped as new ones
come, one deletion per append.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import lmdb

from edge_sync.storage import codec
from edge_sync.storage.graph_keys import LOG, GraphTables

APPLY_LOG_KEEP = 200_000
"""Apply log entries kept (the newest)."""

_LOG_NEXT = b"graph/log_next"


@dataclass(frozen=True, slots=True)
class ApplyLogEntry:
    index: int
    ts: int
    entity_type: str
    id: str  # the entity id; for a relation "FROM->TO TYPE/GROUP"
    action: str  # ADDED / UPDATED / DELETED
    origin: str


class ApplyLog:
    """The apply log in a store's transactions. ``keep`` gives the entries kept, read at each
    append (graph_store.APPLY_LOG_KEEP, the setting a test may lower)."""

    def __init__(self, tables: GraphTables, keep: Callable[[], int]) -> None:
        self._t = tables
        self._keep = keep

    def append(self, txn: lmdb.Transaction, now_ms: int, entity_type: str, entity_id: str,
               action: str, origin: str) -> None:
        store = self._t.store
        index = store.meta_int(txn, _LOG_NEXT, 1)
        db = self._t.db(LOG)
        txn.put(codec.u64(index), codec.pack((now_ms, entity_type, entity_id, action, origin)),
                db=db, append=True)
        store.put_meta_int(txn, _LOG_NEXT, index + 1)
        if store.entries(txn, LOG) > self._keep():
            with txn.cursor(db=db) as cur:
                if cur.first():
                    cur.delete()

    def entries(self, txn: lmdb.Transaction, *, after: int = 0, limit: int = 0
                ) -> list[ApplyLogEntry]:
        """Entries with an index above ``after``, oldest first (``limit`` 0: all)."""
        if not self._t.present:
            return []
        out: list[ApplyLogEntry] = []
        with txn.cursor(db=self._t.db(LOG)) as cur:
            if not cur.set_range(codec.u64(after + 1)):
                return out
            for k, v in cur.iternext():
                if limit and len(out) >= limit:
                    break
                index = codec.from_u64(k, "graph_log: key")
                ts, etype, eid, action, origin = codec.unpack_fields(
                    v, f"graph_log: {index}", 5)
                out.append(ApplyLogEntry(index, int(ts), str(etype), str(eid), str(action),
                                         str(origin)))
        return out
