"""The rule engine's durable data on the edge: each entity's rule state (its open windows and
active alarms, one record per entity, as rules/session.py hands it over) and the local
timeseries the rule chain keeps on the edge, with their expiry.

Layout (named databases of the edge's LMDB environment, storage/env.py LATER_DB_NAMES: a store
of an earlier release gets them at its first writable open, a read-only open of such a store
finds nothing; every value in codec.py's checksummed envelope):
  rule_state         entity(16)                               -> the state record (msgpack)
  rule_local_ts      entity(16) + len(u16) + key + ts(u64)    -> (expires_at_ms | None, value)
  rule_local_expiry  expires_at(u64) + entity(16) + len(u16) + key + ts(u64) -> b""
A point's key is length-prefixed (not separated), so no key is a prefix of another key's rows
whatever bytes it holds: one entity's points are one range, one key's points one range in
ascending ts, and a time range of a key one cursor scan. The expiry index orders points by the
time they expire, so the purge reads from its start and stops at the first point still due.
A point kept until its entity is deleted (``expires_at_ms`` None) has no expiry index entry.
A point written again (same entity, key and ts) replaces the previous value and expiry.

Nothing here is read outside a transaction the caller holds (LmdbStore.read / write).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import lmdb

from edge_sync.errors import StorageCorrupt, Unstorable
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore

STATE, LOCAL_TS, LOCAL_EXPIRY = "rule_state", "rule_local_ts", "rule_local_expiry"
TABLES = (STATE, LOCAL_TS, LOCAL_EXPIRY)

_LMDB_MAX_KEY = 511
_U16 = struct.Struct(">H")
_U64_MAX = (1 << 64) - 1
MAX_LOCAL_KEY_BYTES = _LMDB_MAX_KEY - 8 - 16 - _U16.size - 8
"""The longest timeseries key (UTF-8 bytes) a local point may have: its expiry index key must
fit LMDB's key size. A longer one is Unstorable."""

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
        self.present = all(name in store.dbs for name in TABLES)
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
        already kept (same key and ts) is replaced, its expiry too. How many points were
        written. Unstorable for a value msgpack cannot hold or a key longer than
        MAX_LOCAL_KEY_BYTES."""
        rows, index = self._dbs[LOCAL_TS], self._dbs[LOCAL_EXPIRY]
        expiry = None if expires_at_ms is None else _u64(expires_at_ms, "expiry")
        entity = entity_id.bytes
        prefixes: dict[str, bytes] = {}  # a post's points share a few keys
        written = 0
        for ts, values in entries:
            stamp = _u64(ts, "timestamp")
            for key, value in values:
                prefix = prefixes.get(key)
                if prefix is None:
                    prefix = prefixes[key] = _series_prefix(entity, key)
                row = prefix + stamp
                old = txn.replace(row, codec.pack((expires_at_ms, value)), db=rows)
                if old is not None:  # a point written again: its old expiry entry goes
                    old_expiry = self._expiry_of(row, old)
                    if old_expiry is not None:
                        txn.delete(codec.u64(old_expiry) + row, db=index)
                if expiry is not None:
                    txn.put(expiry + row, b"", db=index)
                written += 1
        return written

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

    def purge_expired(self, txn: lmdb.Transaction, now_ms: int, limit: int) -> int:
        """Delete up to ``limit`` points whose expiry is at or before ``now_ms``, the earliest
        expiring first; how many went."""
        rows, index = self._dbs[LOCAL_TS], self._dbs[LOCAL_EXPIRY]
        purged = 0
        with txn.cursor(db=index) as cur:
            if not cur.first():
                return 0
            while purged < limit:
                key = bytes(cur.key())
                if not key or codec.from_u64(key[:8], f"{LOCAL_EXPIRY}: time") > now_ms:
                    break
                row = key[8:]
                raw = txn.get(row, db=rows)
                # (the row's own expiry is this one while the two tables are kept in step)
                if raw is not None and self._expiry_of(row, raw) == codec.from_u64(key[:8]):
                    txn.delete(row, db=rows)
                    purged += 1
                if not cur.delete():  # moves to the next entry; False past the end
                    break
        return purged

    def delete_entity(self, txn: lmdb.Transaction, entity_id: uuid.UUID) -> int:
        """The entity is gone: its rule state and every local point go. How many records went
        (points, plus one for the state)."""
        rows, index = self._dbs[LOCAL_TS], self._dbs[LOCAL_EXPIRY]
        removed = 1 if txn.delete(entity_id.bytes, db=self._dbs[STATE]) else 0
        with txn.cursor(db=rows) as cur:
            if not cur.set_range(entity_id.bytes):
                return removed
            while bytes(cur.key()).startswith(entity_id.bytes):
                row = bytes(cur.key())
                expiry = self._expiry_of(row, cur.value())
                if expiry is not None:
                    txn.delete(codec.u64(expiry) + row, db=index)
                cur.delete()  # moves to the next entry (an empty key past the end)
                removed += 1
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

    def _expiry_of(self, row: bytes, raw: codec.Raw) -> int | None:
        try:  # the row's name is made only for a damaged record's message
            expires = codec.unpack_fields(raw, LOCAL_TS, 2)[0]
        except StorageCorrupt:
            return self._decode(row, raw)[0]
        if expires is not None and not isinstance(expires, int):
            return self._decode(row, raw)[0]
        return expires
