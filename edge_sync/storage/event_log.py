"""The cloud event log: append in seq order, read the next batch (high lane first), mark
deployed, dead-letter, purge, evict under the full-storage policy, count and list.

Layout (all keys fixed-width big-endian, so byte order is numeric order):
  events            seq -> encoded event (immutable once written)
  pending_high      seq -> b""   (PENDING events of the high lane)
  pending_normal    seq -> b""   (PENDING events of the normal lane)
  dead              seq -> (error, time)
  deployed_by_time  deployed_ms + seq -> b""  (for purging by age)
An event in `events` that is neither pending nor dead is DEPLOYED. Counts come from LMDB's entry
counts and the next seq from the last key, so opening never scans the log.
Values are in the checksummed envelope of codec.py; a store upgraded from the previous format
may still hold values of that format, which are read as they are (LmdbStore.previous_values).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import lmdb

from edge_sync.errors import StorageError
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import NIL_UUID, Counts, Lane, NewEvent, Status, StoredEvent

_PENDING_DB = {Lane.HIGH: "pending_high", Lane.NORMAL: "pending_normal"}
_NEXT_SEQ = b"next_seq"
_EVICTED = b"evicted_total"
_LAST_ACK = b"last_ack_ms"
_TENANT = b"tenant_id"
_EDGE = b"edge_id"


@dataclass(frozen=True, slots=True)
class Eviction:
    """What an eviction removed: how many events and the seq range."""

    count: int
    first_seq: int
    last_seq: int


class EventLog:
    """Synchronous access to the event log inside LmdbStore transactions."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self._db = store.dbs

    # -- identity ------------------------------------------------------------------------------

    def identity(self, txn: lmdb.Transaction) -> tuple[uuid.UUID, uuid.UUID]:
        """(tenant_id, edge_id) as last learnt from the cloud; nil UUIDs before the first connect."""
        meta = self._db["meta"]
        tenant = txn.get(_TENANT, db=meta)
        edge = txn.get(_EDGE, db=meta)
        return (
            uuid.UUID(bytes=bytes(tenant)) if tenant else NIL_UUID,
            uuid.UUID(bytes=bytes(edge)) if edge else NIL_UUID,
        )

    def set_identity(self, txn: lmdb.Transaction, tenant_id: uuid.UUID, edge_id: uuid.UUID) -> None:
        txn.put(_TENANT, tenant_id.bytes, db=self._db["meta"])
        txn.put(_EDGE, edge_id.bytes, db=self._db["meta"])

    # -- appending -------------------------------------------------------------------------------

    def next_seq(self, txn: lmdb.Transaction) -> int:
        """The seq the next append gets. O(log n): the meta counter or the last key, not a scan."""
        stored = self.store.meta_int(txn, _NEXT_SEQ, 1)
        with txn.cursor(db=self._db["events"]) as cur:
            if cur.last():
                stored = max(stored, codec.from_u64(cur.key(), "events: key") + 1)
        return stored

    def append(
        self,
        txn: lmdb.Transaction,
        events: Sequence[NewEvent],
        *,
        first_seq: int,
        created_time: int,
        tenant_id: bytes,
        edge_id: bytes,
    ) -> int:
        """Append events with consecutive seqs from first_seq; returns the next free seq."""
        events_db = self._db["events"]
        high_db = self._db["pending_high"]
        normal_db = self._db["pending_normal"]
        seq = first_seq
        ids = os.urandom(16 * len(events))  # random event ids, one system call per append
        for i, event in enumerate(events):
            key = codec.u64(seq)
            value = codec.encode_event(
                event,
                event_id=ids[16 * i:16 * i + 16],
                created_time=created_time,
                tenant_id=tenant_id,
                edge_id=edge_id,
            )
            if not (txn.put(key, value, db=events_db, append=True)
                    and txn.put(key, b"", db=high_db if event.lane is Lane.HIGH else normal_db,
                                append=True)):
                raise StorageError(
                    f"seq {seq} is already taken in {self.store.path}: another process is "
                    "writing this store; only one edge-sync may run on a data folder")
            seq += 1
        self.store.put_meta_int(txn, _NEXT_SEQ, seq)  # a purged-empty log never reuses a seq
        return seq

    # -- reading ---------------------------------------------------------------------------------

    def read_batch(
        self,
        txn: lmdb.Transaction,
        *,
        max_events: int,
        max_bytes: int,
        after: dict[Lane, int] | None = None,
    ) -> list[StoredEvent]:
        """Up to max_events PENDING events, high lane first, each lane in seq order, skipping
        seqs at or below after[lane] (those already in flight). max_bytes bounds the total
        encoded size, but the first event is always returned so one large event cannot stall."""
        out: list[StoredEvent] = []
        total = 0
        events_db = self._db["events"]
        for lane in (Lane.HIGH, Lane.NORMAL):
            start = (after or {}).get(lane, 0) + 1
            with txn.cursor(db=self._db[_PENDING_DB[lane]]) as cur:
                if not cur.set_range(codec.u64(start)):
                    continue
                for key in cur.iternext(keys=True, values=False):
                    if len(out) >= max_events:
                        return out
                    raw = txn.get(key, db=events_db)
                    if raw is None:
                        continue
                    if out and total + len(raw) > max_bytes:
                        return out
                    out.append(codec.decode_event(codec.from_u64(key, "pending: key"), raw,
                                                   previous=self.store.previous_values))
                    total += len(raw)
        return out

    def get(self, txn: lmdb.Transaction, seq: int) -> StoredEvent | None:
        key = codec.u64(seq)
        raw = txn.get(key, db=self._db["events"])
        if raw is None:
            return None
        return self._with_status(
            txn, codec.decode_event(seq, raw, previous=self.store.previous_values))

    def _with_status(self, txn: lmdb.Transaction, event: StoredEvent) -> StoredEvent:
        key = codec.u64(event.seq)
        if txn.get(key, db=self._db[_PENDING_DB[event.lane]]) is not None:
            return event
        dead = txn.get(key, db=self._db["dead"])
        if dead is not None:
            error, _when = codec.unpack_fields(dead, f"dead: seq {event.seq}", 2,
                                               previous=self.store.previous_values)
            return _replace_status(event, Status.DEAD, error)
        return _replace_status(event, Status.DEPLOYED, None)

    def iter_events(
        self,
        txn: lmdb.Transaction,
        *,
        status: Status | None = None,
        entity_id: uuid.UUID | None = None,
        after_seq: int = 0,
    ) -> Iterator[StoredEvent]:
        """Events oldest first (seq order), filtered; used by the CLI and the admin API."""
        events_db = self._db["events"]
        with txn.cursor(db=events_db) as cur:
            if not cur.set_range(codec.u64(after_seq + 1)):
                return
            for key, raw in cur.iternext():
                event = codec.decode_event(codec.from_u64(key, "events: key"), raw,
                                           previous=self.store.previous_values)
                if entity_id is not None and event.entity_id != entity_id:
                    continue
                event = self._with_status(txn, event)
                if status is not None and event.status is not status:
                    continue
                yield event

    def counts(self, txn: lmdb.Transaction) -> Counts:
        s = self.store
        high = s.entries(txn, "pending_high")
        normal = s.entries(txn, "pending_normal")
        dead = s.entries(txn, "dead")
        total = s.entries(txn, "events")
        return Counts(
            pending_high=high,
            pending_normal=normal,
            deployed=total - high - normal - dead,
            dead=dead,
            total=total,
            next_seq=self.next_seq(txn),
            evicted=s.meta_int(txn, _EVICTED),
        )

    def oldest_pending(self, txn: lmdb.Transaction) -> StoredEvent | None:
        """The lowest-seq PENDING event of either lane."""
        best: int | None = None
        for lane in (Lane.HIGH, Lane.NORMAL):
            with txn.cursor(db=self._db[_PENDING_DB[lane]]) as cur:
                if cur.first():
                    seq = codec.from_u64(cur.key(), "pending: key")
                    best = seq if best is None else min(best, seq)
        return None if best is None else self.get(txn, best)

    # -- state changes ---------------------------------------------------------------------------

    def mark_deployed(self, txn: lmdb.Transaction, seqs: Sequence[int], *, now_ms: int) -> int:
        """PENDING -> DEPLOYED; returns how many changed (already deployed ones are skipped)."""
        changed = 0
        by_time = self._db["deployed_by_time"]
        for seq in seqs:
            key = codec.u64(seq)
            if txn.delete(key, db=self._db["pending_high"]) or txn.delete(
                key, db=self._db["pending_normal"]
            ):
                txn.put(codec.time_seq_key(now_ms, seq), b"", db=by_time)
                changed += 1
        if changed:
            self.store.put_meta_int(txn, _LAST_ACK, now_ms)
        return changed

    def last_ack_ms(self, txn: lmdb.Transaction) -> int | None:
        """When events were last marked DEPLOYED (ms), None if never."""
        return self.store.meta_int(txn, _LAST_ACK) or None

    def dead_letter(self, txn: lmdb.Transaction, seq: int, error: str, *, now_ms: int) -> bool:
        """PENDING -> DEAD with its error; False when seq was not pending."""
        key = codec.u64(seq)
        if not (
            txn.delete(key, db=self._db["pending_high"])
            or txn.delete(key, db=self._db["pending_normal"])
        ):
            return False
        txn.put(key, codec.pack((error, now_ms)), db=self._db["dead"])
        return True

    def replay_dead(self, txn: lmdb.Transaction, seq: int) -> bool:
        """DEAD -> PENDING (operator's replay); False when seq was not dead."""
        key = codec.u64(seq)
        raw = txn.get(key, db=self._db["events"])
        if raw is None or not txn.delete(key, db=self._db["dead"]):
            return False
        lane = codec.decode_event(seq, raw, previous=self.store.previous_values).lane
        txn.put(key, b"", db=self._db[_PENDING_DB[lane]])
        return True

    def purge_deployed(self, txn: lmdb.Transaction, *, older_than_ms: int, limit: int) -> int:
        """Delete up to limit DEPLOYED events deployed before older_than_ms; returns how many."""
        purged = 0
        events_db = self._db["events"]
        with txn.cursor(db=self._db["deployed_by_time"]) as cur:
            if not cur.first():
                return 0
            while purged < limit:
                key = cur.key()
                if not key:
                    break
                deployed_ms, seq = codec.from_time_seq_key(key)
                if deployed_ms >= older_than_ms:
                    break
                txn.delete(codec.u64(seq), db=events_db)
                cur.delete()  # also moves to the next entry
                purged += 1
        return purged

    def evict_oldest_normal(self, txn: lmdb.Transaction, *, count: int) -> Eviction | None:
        """Delete the count oldest PENDING normal-lane events (the evict_oldest_normal policy)."""
        first = last = None
        n = 0
        with txn.cursor(db=self._db["pending_normal"]) as cur:
            if not cur.first():
                return None
            while n < count:
                key = cur.key()
                if not key:
                    break
                seq = codec.from_u64(key, "pending_normal: key")
                first = seq if first is None else first
                last = seq
                txn.delete(key, db=self._db["events"])
                n += 1
                cur.delete()
        if n == 0 or first is None or last is None:
            return None
        self.store.put_meta_int(txn, _EVICTED, self.store.meta_int(txn, _EVICTED) + n)
        return Eviction(n, first, last)


def _replace_status(event: StoredEvent, status: Status, error: str | None) -> StoredEvent:
    return replace(event, status=status, error=error)
