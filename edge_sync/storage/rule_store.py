"""The rule engine's durable data on the edge: each entity's rule state (its open windows and
active alarms, one record per entity, as rules/session.py hands it over) and the local
timeseries the rule chain keeps on the edge, with their expiry.

Layout (named databases of the edge's LMDB environment, storage/env.py LATER_DB_NAMES: a store
of an earlier release gets them at its first writable open, a read-only open of such a store
finds nothing; every value but the empty ones in codec.py's checksummed envelope):
  rule_state              entity(16)                               -> the state record (msgpack)
  rule_local_ts           entity(16) + len(u16) + key + ts(u64)    -> (expires_at_ms | None, value)
  rule_local_expiry_sets  expires_at(u64) + entity(16) + len(u16) + key + ts(u64)
                                                                   -> the ts(u64) of the points
  rule_local_expiry       expires_at(u64) + entity(16) + len(u16) + key + ts(u64) -> b""
A point's key is length-prefixed (not separated), so no key is a prefix of another key's rows
whatever bytes it holds: one entity's points are one range, one key's points one range in
ascending ts, and a time range of a key one cursor scan.

The expiry index orders points by the time they expire, so the purge reads from its start and
stops at the first entry still due. A write of a post's points (one expiry) adds one entry to
``rule_local_expiry_sets`` per key: named by its expiry, the series and the first of its points'
ts, listing the ts of all of them (8 bytes each, in the order written, each once). A point
kept until its entity is deleted (``expires_at_ms`` None) is in no entry.

A point written again (same entity, key and ts) replaces the previous value and expiry, and
its ts is taken out of the entry that listed it under the previous expiry (the entry goes when
it lists nothing else), so a point written again and again is listed once. The write finds
such points without reading: its putmulti overwrites nothing, and only when LMDB did not add
every row is the post written again row by row, reading what it replaces. A point is purged
only when its own expiry (in its row) is the entry's, so a listing left behind (by an earlier
release that wrote the point again, or by one that did not yet take it out) deletes nothing; the
purge takes it out all the same, and counts it against the listings one batch may visit
(VISITS_PER_POINT per point it may delete).

``rule_local_expiry`` is the index of an earlier release: one entry per point, named by the
point's expiry and row. Nothing writes it any more; the purge reads it beside the new one, in
expiry order, until its entries are gone (a store of that release, or one that release ran on
again, keeps its points' expiry), and a point of it written again leaves it.

Nothing here is read outside a transaction the caller holds (LmdbStore.read / write).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb

from edge_sync.errors import StorageCorrupt, Unstorable
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore

STATE, LOCAL_TS = "rule_state", "rule_local_ts"
LOCAL_EXPIRY_SETS, LOCAL_EXPIRY = "rule_local_expiry_sets", "rule_local_expiry"
TABLES = (STATE, LOCAL_TS, LOCAL_EXPIRY_SETS, LOCAL_EXPIRY)

_LMDB_MAX_KEY = 511
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_U64_MAX = (1 << 64) - 1
MAX_LOCAL_KEY_BYTES = _LMDB_MAX_KEY - 8 - 16 - _U16.size - 8
"""The longest timeseries key (UTF-8 bytes) a local point may have: its expiry index key must
fit LMDB's key size. A longer one is Unstorable."""

_SET_KEY_MIN = 8 + 16 + _U16.size + 8

VISITS_PER_POINT = 4
"""How many expiry index listings one purge may visit per point it may delete: listings left
behind (a point written again by an earlier release, or by this one before it took a replaced
point out of its entry) delete nothing, yet a purge's transaction stays bounded."""

@dataclass(frozen=True, slots=True)
class LocalPurge:
    """What one purge batch did: ``points`` deleted, ``stale`` index listings visited that
    deleted nothing (gone from the index all the same), and ``more``: it stopped at its limit
    of points or of visits, so due entries may be left for the next batch."""

    points: int
    stale: int
    more: bool


Entries = Sequence[tuple[int, Sequence[tuple[str, Any]]]]
"""Points as a telemetry post carries them: (ts, ((key, value), ...)), ..."""


def _series_prefix(entity: bytes, key: str) -> bytes:
    raw = codec.text_key(key)
    if len(raw) > MAX_LOCAL_KEY_BYTES:
        raise Unstorable(f"timeseries key of {len(raw)} bytes cannot be kept locally "
                         f"(at most {MAX_LOCAL_KEY_BYTES})")
    return entity + _U16.pack(len(raw)) + raw


def _u64(value: int, what: str) -> bytes:
    """A time as a key part; Unstorable when it is not an unsigned 64-bit number."""
    if not 0 <= value <= _U64_MAX:
        raise Unstorable(f"{what} {value} cannot be stored (0 .. 2^64-1)")
    return codec.u64(value)


def _split_row_key(row: bytes) -> tuple[str, int]:
    """A rule_local_ts key's (timeseries key, ts); the entity is its first 16 bytes."""
    if len(row) < 16 + _U16.size + 8:
        raise StorageCorrupt(f"{LOCAL_TS}: key of {len(row)} bytes")
    (length,) = _U16.unpack_from(row, 16)
    if len(row) != 16 + _U16.size + length + 8:
        raise StorageCorrupt(f"{LOCAL_TS}: key of {len(row)} bytes, its key length says {length}")
    start = 16 + _U16.size
    try:
        key = row[start:start + length].decode()
    except UnicodeDecodeError as exc:
        raise StorageCorrupt(f"{LOCAL_TS}: key not UTF-8 ({exc})") from exc
    return key, codec.from_u64(row[-8:], f"{LOCAL_TS}: ts")


class RuleStore:
    """Synchronous access to the rule engine's tables inside LmdbStore transactions. On a
    read-only open of a store of an earlier release (no rule tables) every read finds nothing."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        # what the reads need: a read-only open of a store of the release before the expiry
        # sets has the points without them (a writable open has every table)
        self.present = STATE in store.dbs and LOCAL_TS in store.dbs
        self._dbs = store.dbs

    # -- rule state ---------------------------------------------------------------------------

    def put_state(self, txn: lmdb.Transaction, entity_id: uuid.UUID,
                  record: dict[str, Any] | None) -> None:
        """Replace the entity's rule state; None deletes it. Unstorable when msgpack cannot
        hold the record."""
        if record is None:
            txn.delete(entity_id.bytes, db=self._dbs[STATE])
        else:
            txn.put(entity_id.bytes, codec.pack(record), db=self._dbs[STATE])

    def state(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> dict[str, Any] | None:
        if not self.present:
            return None
        raw = txn.get(entity_id.bytes, db=self._dbs[STATE])
        if raw is None:
            return None
        record = codec.unpack(raw, f"{STATE}: {entity_id}")
        if not isinstance(record, dict):
            raise StorageCorrupt(f"{STATE}: {entity_id}: record of an unexpected shape")
        return record

    def entities_with_state(self, txn: lmdb.Transaction) -> list[uuid.UUID]:
        """Every entity that has a rule state record, in id byte order (keys only)."""
        if not self.present:
            return []
        with txn.cursor(db=self._dbs[STATE]) as cur:
            return [codec.to_uuid(k, f"{STATE}: key") for k in cur.iternext(values=False)]

    def state_count(self, txn: lmdb.Transaction) -> int:
        """How many entities have a rule state record, O(1)."""
        return self.store.entries(txn, STATE) if self.present else 0

    # -- local timeseries ---------------------------------------------------------------------

    def put_local(self, txn: lmdb.Transaction, entity_id: uuid.UUID, entries: Entries,
                  expires_at_ms: int | None) -> int:
        """Keep the points until ``expires_at_ms`` (None: until the entity is deleted). A point
        already kept (same key and ts) is replaced, its expiry too, and taken out of the expiry
        index entry that listed it; a point twice in ``entries`` keeps the later value. How
        many points were written. Unstorable for a value msgpack cannot hold or a key longer
        than MAX_LOCAL_KEY_BYTES.

        The rows go in with one putmulti that overwrites nothing (LMDB's loop, not Python's),
        the values packed in one call (codec.pack_led), and the expiry index gets one entry per
        key (see the module doc). When LMDB added every row, nothing was replaced and nothing
        is read; otherwise the post is written again row by row (_rewrite)."""
        expiry = None if expires_at_ms is None else _u64(expires_at_ms, "expiry")
        entity = entity_id.bytes
        series: dict[str, tuple[bytes, list[bytes]]] = {}  # key: (row prefix, its points' ts)
        rows: list[bytes] = []
        values: list[Any] = []
        pack_ts = _U64.pack
        for ts, pairs in entries:
            try:
                stamp = pack_ts(ts)
            except struct.error:
                raise Unstorable(f"timestamp {ts!r} cannot be stored (0 .. 2^64-1)") from None
            for key, value in pairs:
                found = series.get(key)
                if found is None:
                    found = series[key] = (_series_prefix(entity, key), [])
                rows.append(found[0] + stamp)
                found[1].append(stamp)
                values.append(value)
        if not rows:
            return 0
        packed = codec.pack_led(expires_at_ms, values)
        with txn.cursor(db=self._dbs[LOCAL_TS]) as cur:
            added = cur.putmulti(zip(rows, packed, strict=True), overwrite=False)[1]
        if added != len(rows):  # a point kept already, or one twice in the post
            self._rewrite(txn, rows, packed)
            for _, stamps in series.values():
                stamps[:] = dict.fromkeys(stamps)
        if expiry is not None:
            index = self._dbs[LOCAL_EXPIRY_SETS]
            for prefix, stamps in series.values():
                name = expiry + prefix + stamps[0]
                listed = b"".join(stamps)
                if not txn.put(name, codec.pack(listed), overwrite=False, db=index):
                    # (the same series, expiry and first ts written twice in one commit)
                    listed = self._listed(name, txn.get(name, db=index)) + listed
                    txn.put(name, codec.pack(listed), db=index)
        return len(rows)

    def _rewrite(self, txn: lmdb.Transaction, rows: list[bytes], packed: list[bytes]) -> None:
        """The rows of a post that putmulti did not all add: each written again in order (the
        later of a row twice in the post wins), and a point kept before this post taken out of
        the index entries that list it under its previous expiry, so that a point written again
        and again stays listed once (and its earlier release's entry goes too). A row added by
        this post's putmulti reads back with this post's expiry, where no entry lists it yet."""
        db = self._dbs[LOCAL_TS]
        earlier = self._dbs[LOCAL_EXPIRY] if self.store.entries(txn, LOCAL_EXPIRY) else None
        done: set[bytes] = set()
        listed: dict[bytes, set[bytes]] = {}  # expiry + row prefix: the ts to take out
        for row, value in zip(rows, packed, strict=True):
            previous = txn.replace(row, value, db=db)
            if row in done or previous is None:
                continue
            done.add(row)
            try:
                expires = self._expiry_of(row, previous)
            except StorageCorrupt:  # a damaged point is replaced; its listing purges nothing
                continue
            if expires is None:
                continue
            start = codec.u64(expires) + row[:-8]
            found = listed.get(start)
            if found is None:
                found = listed[start] = set()
            found.add(row[-8:])
            if earlier is not None:
                txn.delete(start + row[-8:], db=earlier)
        with txn.cursor(db=self._dbs[LOCAL_EXPIRY_SETS]) as sets:
            for start, stamps in listed.items():
                self._unlist(sets, start, stamps)

    def _unlist(self, sets: lmdb.Cursor, start: bytes, stamps: set[bytes]) -> None:
        """Take ``stamps`` out of the expiry set entries named ``start`` (expiry + row prefix)
        + a first ts; an entry left listing nothing goes."""
        found = sets.set_range(start)
        while found:
            name = bytes(sets.key())
            if not name.startswith(start):
                return
            listed = self._listed(name, sets.value())
            rest = b"".join(stamp for at in range(0, len(listed), 8)
                            if (stamp := listed[at:at + 8]) not in stamps)
            if len(rest) == len(listed):
                found = sets.next()
            elif rest:
                sets.put(name, codec.pack(rest))
                found = sets.next()
            else:
                sets.delete()  # moves to the next entry (an empty key past the end)
                found = bool(sets.key())

    def local_series(self, txn: lmdb.Transaction, entity_id: uuid.UUID,
                     keys: Iterable[str] | None, start_ms: int, end_ms: int, limit: int
                     ) -> dict[str, list[tuple[int, Any]]]:
        """The entity's points with ``start_ms <= ts < end_ms`` (ThingsBoard's interval), per
        key in ascending ts, at most ``limit`` per key (the earliest). ``keys`` None: every key
        the entity has; a key without points in the range is left out."""
        out: dict[str, list[tuple[int, Any]]] = {}
        if not self.present or limit <= 0 or end_ms <= start_ms:
            return out
        entity = entity_id.bytes
        if keys is None:
            series = self._series(txn, entity)
        else:
            series = []
            for key in dict.fromkeys(keys):
                try:
                    series.append((key, _series_prefix(entity, key)))
                except Unstorable:  # a key that cannot be kept has no points
                    continue
        start = codec.u64(min(max(0, start_ms), _U64_MAX))
        with txn.cursor(db=self._dbs[LOCAL_TS]) as cur:
            for key, prefix in series:
                points: list[tuple[int, Any]] = []
                if cur.set_range(prefix + start):
                    for k, v in cur.iternext():
                        row = bytes(k)
                        if len(points) >= limit or not row.startswith(prefix):
                            break
                        ts = codec.from_u64(row[len(prefix):], f"{LOCAL_TS}: ts")
                        if ts >= end_ms:
                            break
                        points.append((ts, self._decode(row, v)[1]))
                if points:
                    out[key] = points
        return out

    def local_points(self, txn: lmdb.Transaction) -> int:
        """How many local points are kept, O(1)."""
        return self.store.entries(txn, LOCAL_TS) if self.present else 0

    def purge_expired_batch(self, txn: lmdb.Transaction, now_ms: int, limit: int) -> LocalPurge:
        """Delete up to ``limit`` points whose expiry is at or before ``now_ms``, the earliest
        expiring first, visiting at most ``VISITS_PER_POINT * limit`` listings of the expiry
        indexes (a listing that deletes nothing counts too), so one transaction's work is
        bounded whatever the indexes hold. The entries of both indexes are taken in expiry
        order (the earlier release's first on a tie); every listing visited leaves its index."""
        if limit <= 0:
            return LocalPurge(0, 0, False)
        rows = self._dbs[LOCAL_TS]
        purged = visits = 0
        budget = VISITS_PER_POINT * limit
        with txn.cursor(db=self._dbs[LOCAL_EXPIRY_SETS]) as sets, \
                txn.cursor(db=self._dbs[LOCAL_EXPIRY]) as points:
            set_key = bytes(sets.key()) if sets.first() else b""
            point_key = bytes(points.key()) if points.first() else b""
            while set_key or point_key:
                if purged >= limit or visits >= budget:
                    return LocalPurge(purged, visits - purged, True)
                if point_key and (not set_key or point_key[:8] <= set_key[:8]):
                    expires = codec.from_u64(point_key[:8], f"{LOCAL_EXPIRY}: time")
                    if expires > now_ms:
                        break
                    purged += self._purge_row(txn, rows, point_key[8:], expires)
                    visits += 1
                    points.delete()  # moves to the next entry (an empty key past the end)
                    point_key = bytes(points.key())
                    continue
                if len(set_key) < _SET_KEY_MIN:
                    raise StorageCorrupt(f"{LOCAL_EXPIRY_SETS}: key of {len(set_key)} bytes")
                expires = codec.from_u64(set_key[:8])
                if expires > now_ms:
                    break
                prefix = set_key[8:-8]
                listed = self._listed(set_key, sets.value())
                for at in range(0, len(listed), 8):
                    if purged >= limit or visits >= budget:
                        # the rest of the entry stays for the next batch
                        sets.put(set_key, codec.pack(listed[at:]))
                        return LocalPurge(purged, visits - purged, True)
                    purged += self._purge_row(txn, rows, prefix + listed[at:at + 8], expires)
                    visits += 1
                sets.delete()
                set_key = bytes(sets.key())
        return LocalPurge(purged, visits - purged, False)

    def delete_entity(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> int:
        """The entity is gone: its rule state and every local point go, and the expiry index's
        entries of the expiries its points had. How many records went (points, plus one for
        the state)."""
        rows = self._dbs[LOCAL_TS]
        points = self._dbs[LOCAL_EXPIRY] if self.store.entries(txn, LOCAL_EXPIRY) else None
        entity = entity_id.bytes
        removed = 1 if txn.delete(entity, db=self._dbs[STATE]) else 0
        expiries: set[int] = set()
        with txn.cursor(db=rows) as cur:
            if cur.set_range(entity):
                while (row := bytes(cur.key())).startswith(entity):
                    expiry = self._expiry_of(row, cur.value())
                    if expiry is not None:
                        expiries.add(expiry)
                        if points is not None:  # an entry of the earlier release's index
                            txn.delete(codec.u64(expiry) + row, db=points)
                    cur.delete()  # moves to the next entry (an empty key past the end)
                    removed += 1
        with txn.cursor(db=self._dbs[LOCAL_EXPIRY_SETS]) as sets:
            for expiry in sorted(expiries):
                start = codec.u64(expiry) + entity
                if sets.set_range(start):
                    while bytes(sets.key()).startswith(start):
                        sets.delete()
        return removed

    # -- helpers ------------------------------------------------------------------------------

    def _series(self, txn: lmdb.Transaction, entity: bytes) -> list[tuple[str, bytes]]:
        """(key, row prefix: entity + length + key) of every key the entity has points of, in
        key order: one seek per key, past all of that key's points."""
        out: list[tuple[str, bytes]] = []
        with txn.cursor(db=self._dbs[LOCAL_TS]) as cur:
            found = cur.set_range(entity)
            while found:
                row = bytes(cur.key())
                if not row.startswith(entity):
                    break
                prefix = row[:-8]
                out.append((_split_row_key(row)[0], prefix))
                found = cur.set_range(prefix + b"\xff" * 8 + b"\x00")
        return out

    @staticmethod
    def _decode(row: bytes, raw: codec.Raw) -> tuple[int | None, Any]:
        key, ts = _split_row_key(row)
        what = f"{LOCAL_TS}: {uuid.UUID(bytes=row[:16])} {key!r} at {ts}"
        expires, value = codec.unpack_fields(raw, what, 2)
        if expires is not None and not isinstance(expires, int):
            raise StorageCorrupt(f"{what}: malformed expiry {expires!r}")
        return expires, value

    def _purge_row(self, txn: lmdb.Transaction, rows: lmdb._Database, row: bytes,
                   expires: int) -> int:
        """Delete the point of ``row`` when its own expiry is ``expires`` (an index entry left
        behind by a point written again, or one already gone, deletes nothing): 1 if it went."""
        raw = txn.get(row, db=rows)
        if raw is None or self._expiry_of(row, raw) != expires:
            return 0
        txn.delete(row, db=rows)
        return 1

    @staticmethod
    def _listed(name: bytes, raw: codec.Raw | None) -> bytes:
        """The ts (8 bytes each) the expiry set entry ``name`` lists; StorageCorrupt naming the
        entry (its expiry, entity and key) when it is damaged."""
        listed: Any = None
        if raw is not None:
            try:  # the entry's name is made only for a damaged entry's message
                listed = codec.unpack(raw, LOCAL_EXPIRY_SETS)
            except StorageCorrupt:
                listed = None
        if isinstance(listed, bytes) and listed and not len(listed) % 8:
            return listed
        try:
            key, first = _split_row_key(name[8:])
            what = (f"{LOCAL_EXPIRY_SETS}: {uuid.UUID(bytes=name[8:24])} {key!r} from {first} "
                    f"expiring at {codec.from_u64(name[:8])}")
        except StorageCorrupt:
            what = f"{LOCAL_EXPIRY_SETS}: key of {len(name)} bytes"
        if raw is None:
            raise StorageCorrupt(f"{what}: missing")
        codec.unpack(raw, what)  # raises naming the entry when the envelope is damaged
        raise StorageCorrupt(f"{what}: record of an unexpected shape")

    def _expiry_of(self, row: bytes, raw: codec.Raw) -> int | None:
        try:  # the row's name is made only for a damaged record's message
            expires = codec.unpack_fields(raw, LOCAL_TS, 2)[0]
        except StorageCorrupt:
            return self._decode(row, raw)[0]
        if expires is not None and not isinstance(expires, int):
            return self._decode(row, raw)[0]
        return expires
