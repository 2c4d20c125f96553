"""Where the edge stands with full syncs: the durable sync state (what link/state.py sync_mode
reads: the last completed full sync, one in progress, an operator's request, damage found) and
the marks of the running full sync (what it has sent, applied or held, so that its end removes
only the rest: storage/graph_sweep.py).

Layout (storage/graph_keys.py):
  meta                graph/sync              -> (completed_version, completed_ms, in_progress,
                                                  generation, started_ms, started_reason,
                                                  requested, damaged)
  meta                graph/full_sync_active  -> generation(u64), present while a full sync
                                                  marks what it sees
  graph_seen          E + entity key / R + relation key / H + held key -> b""
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

import lmdb

from edge_sync.common.entity_graph import Ref
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.graph_keys import SEEN, GraphTables, entity_key, relation_db_key

_SYNC = b"graph/sync"
_ACTIVE = b"graph/full_sync_active"  # present while a full sync marks what it sees


@dataclass(frozen=True, slots=True)
class SyncState:
    """Where the edge stands with full syncs (what the sync-mode decision reads)."""

    completed_version: str | None = None  # the edge version of the last completed full sync
    completed_ms: int | None = None
    in_progress: bool = False  # a full sync started and did not complete (yet)
    generation: int = 0  # full syncs started in this store
    started_ms: int | None = None
    started_reason: str = ""
    requested: str | None = None  # an operator asked for a full sync: why
    damaged: str | None = None  # damage found in the graph: what


class FullSyncState:
    """The sync state and the running full sync's seen marks, in a store's transactions."""

    def __init__(self, tables: GraphTables) -> None:
        self._t = tables

    # -- the sync state -------------------------------------------------------------------------

    def state(self, txn: lmdb.Transaction) -> SyncState:
        raw = txn.get(_SYNC, db=self._t.meta)
        if raw is None:
            return SyncState()
        f = codec.unpack_fields(raw, "meta: graph sync state", 8)
        try:
            return SyncState(
                completed_version=None if f[0] is None else str(f[0]),
                completed_ms=None if f[1] is None else int(f[1]), in_progress=bool(f[2]),
                generation=int(f[3]), started_ms=None if f[4] is None else int(f[4]),
                started_reason=str(f[5]), requested=None if f[6] is None else str(f[6]),
                damaged=None if f[7] is None else str(f[7]))
        except (TypeError, ValueError) as exc:
            raise StorageCorrupt(f"meta: graph sync state with a malformed field ({exc})") from exc

    def put_state(self, txn: lmdb.Transaction, s: SyncState) -> None:
        txn.put(_SYNC, codec.pack((s.completed_version, s.completed_ms, s.in_progress,
                                   s.generation, s.started_ms, s.started_reason, s.requested,
                                   s.damaged)), db=self._t.meta)

    def state_or_fresh(self, txn: lmdb.Transaction) -> SyncState:
        """The state; a fresh one saying it was unreadable when it is damaged."""
        try:
            return self.state(txn)
        except StorageCorrupt as exc:
            return SyncState(damaged=f"sync state unreadable: {exc}")

    def request(self, txn: lmdb.Transaction, reason: str) -> None:
        """An operator asked for a full sync: durable until one completes."""
        self.put_state(txn, replace(self.state_or_fresh(txn), requested=reason or "asked"))

    def mark_damaged(self, txn: lmdb.Transaction, what: str) -> None:
        """Damage was found in the graph: the next connect asks for a full sync."""
        self.put_state(txn, replace(self.state_or_fresh(txn), damaged=what or "damaged"))

    def start(self, txn: lmdb.Transaction, *, now_ms: int, reason: str) -> int:
        """A full sync starts: a new generation, nothing seen yet, marked in progress until
        it completes (a crash in between leaves it in progress). Its generation."""
        state = self.state_or_fresh(txn)
        generation = state.generation + 1
        self.put_state(txn, replace(state, in_progress=True, generation=generation,
                                    started_ms=now_ms, started_reason=reason))
        txn.drop(self._t.db(SEEN), delete=False)
        txn.put(_ACTIVE, codec.u64(generation), db=self._t.meta)
        return generation

    def end_marks(self, txn: lmdb.Transaction) -> None:
        """The running full sync's marks are done with (its end has swept)."""
        txn.drop(self._t.db(SEEN), delete=False)
        txn.delete(_ACTIVE, db=self._t.meta)

    # -- the seen marks -------------------------------------------------------------------------

    def active(self, txn: lmdb.Transaction) -> bool:
        """Whether a full sync marks what it sees (False in a store without the graph)."""
        return self._t.present and self.marking(txn)

    def marking(self, txn: lmdb.Transaction) -> bool:
        return txn.get(_ACTIVE, db=self._t.meta) is not None

    def mark_seen(self, txn: lmdb.Transaction, *,
                  entity: tuple[str, uuid.UUID] | None = None,
                  relation: tuple[Ref, Ref, str, str] | None = None) -> None:
        """During a full sync: an entity or relation (applied, or held) counts as sent."""
        if entity is not None:
            key = entity_key(*entity)
            self.mark(txn, b"E" + key)
            self.mark(txn, b"HE" + key)
        if relation is not None:
            key = relation_db_key(*relation)
            self.mark(txn, b"R" + key)
            self.mark(txn, b"HR" + key)

    def mark(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Mark ``key`` (E/R/H + key) seen, when a full sync is under way."""
        if self.marking(txn):
            txn.put(key, b"", db=self._t.db(SEEN))

    def unmark(self, txn: lmdb.Transaction, key: bytes) -> None:
        """What ``key`` names is gone: no mark of it stays."""
        txn.delete(key, db=self._t.db(SEEN))

    def seen(self, txn: lmdb.Transaction, key: bytes) -> bool:
        return txn.get(key, db=self._t.db(SEEN)) is not None

    def held_outside_sync(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Whether a full sync is under way and has not sent this held entity again (it is
        removed at the sync's end unless it comes; releasing it now would keep it)."""
        return self.marking(txn) and not self.seen(txn, b"H" + key)
