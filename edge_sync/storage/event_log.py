"""The cloud event log: append in seq order, read the next batch (high lane first), mark
deployed, dead-letter, purge, evict under the full-storage policy, count and list.

Layout (all keys fixed-width big-endian, so byte order is numeric order):
  events            seq -> encoded event (immutable once written)
  pending_high      seq -> b""   (PENDING events of the high lane)
  pending_normal    seq -> b""   (PENDING events of the normal lane)
  dead              seq -> (error, time)
  deployed_by_time  deployed_ms + seq -> b""  (for purging by age)
  events_by_entity  entity id (16 bytes) + seq -> b""  (an entity's events, for the events
                    query; written in the append's transaction, removed with the event)
An event in `events` that is neither pending nor dead is DEPLOYED. Counts come from LMDB's entry
counts and the next seq from the last key, so opening never scans the log.
A store made before ``events_by_entity`` gets it built once, at its first writable open
(ensure_entity_index, logged); meta ``entity_index`` marks it complete, and until then (a
read-only open of such a store) an entity's events are found by scanning the log.
Values are in the checksummed envelope of codec.py; a store upgraded from the previous format
may still hold values of that format, which are read as they are (LmdbStore.previous_values).
"""

from __future__ import annotations

import heapq
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import lmdb
from loguru import logger

from edge_sync.errors import QueueFull, StorageCorrupt, StorageError
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import NIL_UUID, Counts, Lane, NewEvent, Status, StoredEvent

_PENDING_DB = {Lane.HIGH: "pending_high", Lane.NORMAL: "pending_normal"}
_NEXT_SEQ = b"next_seq"
_EVICTED = b"evicted_total"
_LAST_ACK = b"last_ack_ms"
_TENANT = b"tenant_id"
_EDGE = b"edge_id"
_BY_ENTITY = "events_by_entity"
_ENTITY_INDEX_BUILT = b"entity_index"  # meta: events_by_entity holds every event
_ENTITY_INDEX_UPTO = b"entity_index_upto"  # meta: the build's resume point (last seq seen)
_ENTITY_INDEX_GAP = b"entity_index_gap"  # meta: events without an entry (damaged) when built
_INDEX_BUILD_CHUNK = 2_000  # events per transaction (one QueueActor message) of the index build

_log = logger.bind(component="storage")


def entity_key(entity_id: uuid.UUID, seq: int) -> bytes:
    """Key of the events_by_entity index: the entity's 16 bytes, then the seq (big-endian)."""
    return entity_id.bytes + codec.u64(seq)


class EntityIndexBuild:
    """Build events_by_entity where it does not hold every event: a store made before it, or
    one an earlier release wrote to (it appends and purges without the index). The agent's
    QueueActor runs it after it starts, one ``step()`` (one transaction of _INDEX_BUILD_CHUNK
    events) per message, so ingest goes on meanwhile and opening the store stays constant-time.
    Appends always write their entries, so the build only has to reach the events committed
    before it began; each step saves how far it got, so a build cut short (kill -9, a stop)
    resumes there at the next start. Whether the index is in step is checked in constant time:
    the marker, the number of events without an entry (damaged ones) unchanged since the build,
    and the newest event's entry. A step is a data write: on a store too full for it (it never
    uses the reserve above the size cap) the build stops with a warning, the agent runs without
    it, and the next start tries again. Until it is complete the entity filter scans the log."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.indexed = 0
        self.finished = False
        self._after: int | None = None  # None: not checked yet
        self._started = time.monotonic()

    def step(self) -> bool:
        """One transaction of the build; True once the index holds every event (or the store
        is too full to build it now)."""
        if self.finished:
            return True
        store = self.store
        try:
            if self._after is None and self._check():
                self.finished = True
                return True
            n, last = store.write(self._chunk)
            self.indexed += n
            if n and last != self._after:
                self._after = last
                return False
            store.write(self._mark, maintenance=True)
        except QueueFull as exc:
            _log.bind(path=str(store.path), events=self.indexed, upto=self._after).warning(
                "entity index of the event log not built: {}; filtering by entity scans the "
                "log until a later start has room", exc)
            self.finished = True
            return True
        self.finished = True
        if self.indexed:
            _log.bind(path=str(store.path), events=self.indexed,
                      seconds=round(time.monotonic() - self._started, 2)).info(
                "entity index of the event log built for a store made before it")
        return True

    def _check(self) -> bool:
        """Whether the index is in step already; else where the build starts."""
        store = self.store
        with store.read() as txn:
            built = store.meta_int(txn, _ENTITY_INDEX_BUILT)
            total = store.entries(txn, "events")
            gap = total - store.entries(txn, _BY_ENTITY)
            if built and gap == store.meta_int(txn, _ENTITY_INDEX_GAP) and _newest_indexed(store, txn):
                return True
            self._after = store.meta_int(txn, _ENTITY_INDEX_UPTO) if not built else 0
        if built:  # written to without the index meanwhile: start again from an empty index
            _log.bind(path=str(store.path), events=total, unindexed=gap).warning(
                "entity index of the event log out of step with the log (written by an earlier "
                "release?): rebuilding it")

            def restart(txn: lmdb.Transaction) -> None:
                txn.drop(store.dbs[_BY_ENTITY], delete=False)
                store.put_meta_int(txn, _ENTITY_INDEX_BUILT, 0)
                store.put_meta_int(txn, _ENTITY_INDEX_UPTO, 0)
            store.write(restart, maintenance=True)  # it frees pages
        return False

    def _chunk(self, txn: lmdb.Transaction) -> tuple[int, int]:
        store = self.store
        after = self._after or 0
        n, last = 0, after
        with txn.cursor(db=store.dbs["events"]) as cur:
            if cur.set_range(codec.u64(after + 1)):
                for key, raw in cur.iternext():
                    last = codec.from_u64(key, "events: key")
                    try:
                        entity = codec.decode_event(last, raw,
                                                    previous=store.previous_values).entity_id
                    except StorageCorrupt:
                        continue  # a damaged event: nothing to index (reported where it is read)
                    txn.put(entity.bytes + key, b"", db=store.dbs[_BY_ENTITY])
                    n += 1
                    if n >= _INDEX_BUILD_CHUNK:
                        break
        store.put_meta_int(txn, _ENTITY_INDEX_UPTO, last)
        return n, last

    def _mark(self, txn: lmdb.Transaction) -> None:
        store = self.store
        store.put_meta_int(txn, _ENTITY_INDEX_GAP,
                           store.entries(txn, "events") - store.entries(txn, _BY_ENTITY))
        store.put_meta_int(txn, _ENTITY_INDEX_BUILT, 1)


def ensure_entity_index(store: LmdbStore) -> int:
    """The whole build at once (tests and tools; the agent steps it): how many events it
    indexed."""
    build = EntityIndexBuild(store)
    while not build.step():
        pass
    return build.indexed


def _newest_indexed(store: LmdbStore, txn: lmdb.Transaction) -> bool:
    """The newest event has its entry (an earlier release that appended and purged as many
    events leaves the count of unindexed ones unchanged, never this)."""
    with txn.cursor(db=store.dbs["events"]) as cur:
        if not cur.last():
            return True
        key, raw = cur.item()
    try:
        entity = codec.decode_event(codec.from_u64(key, "events: key"), raw,
                                    previous=store.previous_values).entity_id
    except StorageCorrupt:
        return True  # a damaged event has no entry; the count of those is checked
    return txn.get(entity.bytes + key, db=store.dbs[_BY_ENTITY]) is not None


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
        by_entity = self._db[_BY_ENTITY]
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
                                append=True)
                    and txn.put(event.entity_id.bytes + key, b"", db=by_entity)):
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
        if entity_id is not None and self.entity_index_ready(txn):
            for seq in self.walk_seqs(txn, "entity", after_seq + 1, descending=False,
                                      entity_id=entity_id):
                found = self.get(txn, seq)
                if found is not None and (status is None or found.status is status):
                    yield found
            return
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
                self._delete_event(txn, codec.u64(seq))
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
                self._delete_event(txn, key)
                n += 1
                cur.delete()
        if n == 0 or first is None or last is None:
            return None
        self.store.put_meta_int(txn, _EVICTED, self.store.meta_int(txn, _EVICTED) + n)
        return Eviction(n, first, last)


    def _delete_event(self, txn: lmdb.Transaction, raw_key: codec.Raw) -> None:
        """Delete an event and its entity index entry (the status indexes are the caller's)."""
        key = bytes(raw_key)
        raw = txn.pop(key, db=self._db["events"])
        if raw is None:
            return
        try:
            event = codec.decode_event(codec.from_u64(key, "events: key"), raw,
                                       previous=self.store.previous_values)
        except StorageCorrupt:
            return  # its entity is unknown: the index entry, if any, points at nothing now
        txn.delete(event.entity_id.bytes + key, db=self._db[_BY_ENTITY])

    # -- walking seqs (the events query, api/events_query.py) --------------------------------------

    def entity_index_ready(self, txn: lmdb.Transaction) -> bool:
        """Whether events_by_entity holds every event (else an entity's events need a scan)."""
        return _BY_ENTITY in self._db and bool(self.store.meta_int(txn, _ENTITY_INDEX_BUILT))

    def walk_seqs(self, txn: lmdb.Transaction, source: str, start: int, *,
                  descending: bool, entity_id: uuid.UUID | None = None) -> Iterator[int]:
        """Seqs of one source from ``start`` on (inclusive), ascending or descending:
        ``all`` (every event), ``pending`` (both lanes merged), ``dead``, or ``entity`` (the
        entity index; entity_id required, entity_index_ready() must be true)."""
        if source == "all":
            return _walk(txn, self._db["events"], b"", start, descending)
        if source == "dead":
            return _walk(txn, self._db["dead"], b"", start, descending)
        if source == "pending":
            return heapq.merge(
                _walk(txn, self._db["pending_high"], b"", start, descending),
                _walk(txn, self._db["pending_normal"], b"", start, descending),
                reverse=descending)
        if source == "entity" and entity_id is not None:
            return _walk(txn, self._db[_BY_ENTITY], entity_id.bytes, start, descending)
        raise ValueError(f"unknown seq source {source!r}")


def _walk(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes, start: int,
          descending: bool) -> Iterator[int]:
    """Seqs of the keys ``prefix + u64(seq)`` of db from start on (inclusive), either way."""
    first = prefix + codec.u64(min(max(start, 0), 2**64 - 1))
    width = len(prefix)
    with txn.cursor(db=db) as cur:
        if descending:
            if cur.set_range(first):
                if cur.key() != first and not cur.prev():
                    return
            elif not cur.last():
                return
            keys = cur.iterprev(keys=True, values=False)
        else:
            if not cur.set_range(first):
                return
            keys = cur.iternext(keys=True, values=False)
        for key in keys:
            if key[:width] != prefix:
                return
            yield codec.from_u64(key[width:], "seq index: key")


def _replace_status(event: StoredEvent, status: Status, error: str | None) -> StoredEvent:
    return replace(event, status=status, error=error)
