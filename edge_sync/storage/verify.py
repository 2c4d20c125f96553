"""The integrity audit of the edge's store (``edge-sync verify``): what the log, its indexes,
the stored counters, the entity store and the entity graph's indexes must agree on, each
disagreement named (database, key, what is wrong), and for what can be rebuilt from the log and
the records, the fix, applied with ``--repair`` in the caller's one write transaction.

Checks, in order:
- the event log: every ``events`` key an 8-byte seq, every value a readable event (a damaged
  value cannot be rebuilt: reported, never repaired); ``meta next_seq`` above the last seq.
- the log's indexes, table-driven (LOG_INDEXES): each entry's key decodes, points at an event
  that exists, of the right lane; ``dead`` values decode. Each event is in exactly one status
  index (pending_high / pending_normal / dead / deployed_by_time). Repairs: entries pointing
  nowhere are removed, a pending entry in the wrong lane moves, a damaged dead value is
  rewritten, an event in several keeps one (PENDING before DEAD before DEPLOYED), an event in
  none is put back PENDING in its lane (delivery is at least once: the cloud deduplicates by
  seq; losing an event is never the repair).
- full indexes of the log (FULL_INDEXES: one entry per event, derived from it alone, e.g.
  ``events_by_entity``, entity(16) + seq(8) -> b""): each event's entry present, no other
  entry; rebuilt when wrong. A table listed there is checked only where the store has it.
- counters: ``graph/count/<type>`` equals the graph's entities of that type; ``graph/log_next``
  above the apply log's last index. Repaired by setting them.
- the entity store: every device decodes; ``device_names`` and ``device_tokens`` hold exactly
  each device's name and token. Rebuilt from the device records.
- the entity graph: every record decodes; ``graph_names`` holds exactly each record's
  (type, name, id) entry; ``graph_relations_to`` mirrors ``graph_relations``; ``graph_refs``
  and ``graph_provided`` entries name entities that exist. Rebuilt from the records.
- entity references of the events (notes, not problems: an entity the cloud deleted leaves
  its earlier events behind): an event of a graph kind whose entity is neither a device, nor
  in the graph, nor deleted by a later event or an apply log entry.

Pure logic over an LMDB transaction: no threads, no printing, no logging (the caller logs the
repairs it applies).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb

from edge_sync.common.entity_graph import BY_TYPE
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_keys import (
    ENTITIES,
    LOG,
    NAMES,
    PROVIDED,
    REFS,
    RELATIONS,
    RELATIONS_TO,
    SEP,
    name_key,
    prefixed,
    swap_ends,
)
from edge_sync.storage.records import Lane, Status

Fix = Callable[[lmdb.Transaction], None]

_NEXT_SEQ = b"next_seq"
_COUNT = b"graph/count/"
_LOG_NEXT = b"graph/log_next"
_REPAIRED_DEAD = "dead-letter record damaged; rewritten by edge-sync verify --repair"


@dataclass(frozen=True, slots=True)
class Problem:
    """One disagreement: where (database and key) and what; ``fix`` when it can be rebuilt."""

    db: str
    key: str
    what: str
    fix: Fix | None = field(default=None, compare=False, repr=False)
    repair: str = ""  # what the fix does, in words

    def __str__(self) -> str:
        return f"{self.db} {self.key}: {self.what}"


@dataclass(slots=True)
class Audit:
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # database -> entries read

    @property
    def healthy(self) -> bool:
        return not self.problems

    def add(self, db: str, key: str, what: str, fix: Fix | None = None,
            repair: str = "") -> None:
        self.problems.append(Problem(db, key, what, fix, repair))


@dataclass(frozen=True, slots=True)
class StatusIndex:
    """A log index that says an event's status: its entries' keys give the seq."""

    db: str
    status: Status
    lane: Lane | None  # the lane its events must be of (pending indexes)
    seq_of: Callable[[bytes], int]
    describe: Callable[[bytes], str]


@dataclass(frozen=True, slots=True)
class FullIndex:
    """A log index with exactly one entry per event, derived from the event alone."""

    db: str
    key_of: Callable[[int, Any], bytes]  # (seq, StoredEvent) -> its entry's key
    seq_of: Callable[[bytes], int]
    value: bytes = b""


def _seq_key(raw: bytes) -> int:
    return codec.from_u64(raw, "key")


def _time_seq(raw: bytes) -> int:
    return codec.from_time_seq_key(raw)[1]


def _seq_text(raw: bytes) -> str:
    return f"seq {codec.from_u64(raw)}" if len(raw) == 8 else f"key {raw.hex()}"


def _time_seq_text(raw: bytes) -> str:
    if len(raw) != 16:
        return f"key {raw.hex()}"
    ms, seq = codec.from_time_seq_key(raw)
    return f"seq {seq} (deployed at {ms})"


LOG_INDEXES: tuple[StatusIndex, ...] = (
    StatusIndex("pending_high", Status.PENDING, Lane.HIGH, _seq_key, _seq_text),
    StatusIndex("pending_normal", Status.PENDING, Lane.NORMAL, _seq_key, _seq_text),
    StatusIndex("dead", Status.DEAD, None, _seq_key, _seq_text),
    StatusIndex("deployed_by_time", Status.DEPLOYED, None, _time_seq, _time_seq_text),
)
"""The status indexes: each event is in exactly one (storage/event_log.py's layout)."""

_PRIORITY = {"pending_high": 0, "pending_normal": 0, "dead": 1, "deployed_by_time": 2}


def _by_entity_seq(raw: bytes) -> int:
    if len(raw) != 24:
        raise StorageCorrupt(f"{len(raw)} bytes where entity(16) + seq(8) is stored")
    return codec.from_u64(raw[16:], "key")


FULL_INDEXES: tuple[FullIndex, ...] = (
    FullIndex("events_by_entity", lambda seq, e: e.entity_id.bytes + codec.u64(seq),
              _by_entity_seq),
)
"""One entry per event; checked where the store has the database."""


def audit(store: LmdbStore, txn: lmdb.Transaction) -> Audit:
    """Every check on one snapshot (a read or the repair's write transaction)."""
    out = Audit()
    events, damaged = _events(store, txn, out)
    _status_indexes(store, txn, out, events, damaged)
    _full_indexes(store, txn, out, events, damaged)
    _entity_store(store, txn, out)
    graph_ids = _graph(store, txn, out)
    _references(store, txn, out, events, graph_ids)
    return out


def repair(store: LmdbStore, txn: lmdb.Transaction) -> Audit:
    """Audit, then apply every fix in ``txn``; the audit (its problems with a fix are what was
    repaired, the others what could not be)."""
    found = audit(store, txn)
    for p in found.problems:
        if p.fix is not None:
            p.fix(txn)
    return found


# -- the event log -----------------------------------------------------------------------------


def _cursor(txn: lmdb.Transaction, db: Any) -> Iterator[tuple[bytes, bytes]]:
    with txn.cursor(db=db) as cur:
        for k, v in cur.iternext():
            yield bytes(k), bytes(v)


def _delete(db: Any, key: bytes) -> Fix:
    def fix(txn: lmdb.Transaction) -> None:
        txn.delete(key, db=db)
    return fix


def _put(db: Any, key: bytes, value: bytes) -> Fix:
    def fix(txn: lmdb.Transaction) -> None:
        txn.put(key, value, db=db)
    return fix


def _events(store: LmdbStore, txn: lmdb.Transaction, out: Audit
            ) -> tuple[dict[int, Any], set[int]]:
    """seq -> StoredEvent of every readable event; the seqs of damaged ones."""
    db = store.dbs["events"]
    events: dict[int, Any] = {}
    damaged: set[int] = set()
    last = 0
    n = 0
    for key, raw in _cursor(txn, db):
        n += 1
        if len(key) != 8:
            out.add("events", f"key {key.hex()}", f"a key of {len(key)} bytes, not an 8-byte seq")
            continue
        seq = codec.from_u64(key)
        last = seq
        try:
            events[seq] = codec.decode_event(seq, raw, previous=store.previous_values)
        except StorageCorrupt as exc:
            damaged.add(seq)
            out.add("events", f"seq {seq}", f"record unreadable ({exc}); it cannot be rebuilt: "
                    "restore the store from a backup, or replay what the device sends again")
    out.checked["events"] = n
    meta = store.dbs["meta"]
    raw_next = txn.get(_NEXT_SEQ, db=meta)
    if raw_next is None:
        if last:
            out.add("meta", "next_seq", f"missing while the last event is seq {last}",
                    _put(meta, _NEXT_SEQ, codec.u64(last + 1)), f"set to {last + 1}")
    else:
        try:
            stored = codec.from_u64(raw_next, "meta: next_seq")
        except StorageCorrupt as exc:
            out.add("meta", "next_seq", str(exc), _put(meta, _NEXT_SEQ, codec.u64(last + 1)),
                    f"set to {last + 1}")
        else:
            if stored <= last:
                out.add("meta", "next_seq", f"{stored}, but the last event is seq {last} "
                        "(a seq would be handed out twice)",
                        _put(meta, _NEXT_SEQ, codec.u64(last + 1)), f"set to {last + 1}")
    return events, damaged


def _status_indexes(store: LmdbStore, txn: lmdb.Transaction, out: Audit,
                    events: dict[int, Any], damaged: set[int]) -> None:
    member: dict[int, list[tuple[str, bytes]]] = {}
    for index in LOG_INDEXES:
        db = store.dbs[index.db]
        n = 0
        for key, value in _cursor(txn, db):
            n += 1
            try:
                seq = index.seq_of(key)
            except StorageCorrupt as exc:
                out.add(index.db, f"key {key.hex()}", f"key unreadable ({exc})",
                        _delete(db, key), "entry removed")
                continue
            where = index.describe(key)
            if seq in damaged:
                member.setdefault(seq, []).append((index.db, key))
                continue
            event = events.get(seq)
            if event is None:
                out.add(index.db, where, "points at no event", _delete(db, key), "entry removed")
                continue
            if index.lane is not None and event.lane is not index.lane:
                right = f"pending_{event.lane.name.lower()}"
                out.add(index.db, where, f"the event is of the {event.lane.name.lower()} lane",
                        _move(db, store.dbs[right], key), f"moved to {right}")
                member.setdefault(seq, []).append((right, key))
                continue
            if index.status is Status.DEAD:
                try:
                    codec.unpack_fields(value, f"dead: seq {seq}", 2,
                                        previous=store.previous_values)
                except StorageCorrupt as exc:
                    out.add(index.db, where, f"dead-letter record unreadable ({exc})",
                            _put(db, key, codec.pack((_REPAIRED_DEAD, 0))),
                            "record rewritten (its error text is lost)")
            member.setdefault(seq, []).append((index.db, key))
        out.checked[index.db] = n
    for seq, event in events.items():
        # one entry per (db, key): a wrong-lane entry moved onto the right lane's existing
        # entry is that entry, not a second one (dropping "both" would leave it in none)
        found = list(dict.fromkeys(member.get(seq, [])))
        if not found:
            lane_db = f"pending_{event.lane.name.lower()}"
            out.add("events", f"seq {seq}", "in no status index (pending, dead or deployed)",
                    _put(store.dbs[lane_db], codec.u64(seq), b""),
                    f"put back PENDING in {lane_db} (sent again: at least once)")
        elif len(found) > 1:
            keep = min(found, key=lambda f: _PRIORITY[f[0]])
            drop = [f for f in found if f is not keep]
            out.add("events", f"seq {seq}", "in several status indexes: "
                    + ", ".join(name for name, _ in found),
                    _delete_all([(store.dbs[name], key) for name, key in drop]),
                    f"kept in {keep[0]}")


def _move(src: Any, dst: Any, key: bytes) -> Fix:
    def fix(txn: lmdb.Transaction) -> None:
        txn.delete(key, db=src)
        txn.put(key, b"", db=dst)
    return fix


def _delete_all(entries: list[tuple[Any, bytes]]) -> Fix:
    def fix(txn: lmdb.Transaction) -> None:
        for db, key in entries:
            txn.delete(key, db=db)
    return fix


def _full_indexes(store: LmdbStore, txn: lmdb.Transaction, out: Audit,
                  events: dict[int, Any], damaged: set[int]) -> None:
    """An entry of a damaged event is left alone: its event is reported, and the entry cannot
    be told right or wrong without it."""
    for index in FULL_INDEXES:
        if index.db not in store.dbs:
            continue
        db = store.dbs[index.db]
        expected = {index.key_of(seq, e): seq for seq, e in events.items()}
        n = 0
        for key, _value in _cursor(txn, db):
            n += 1
            if key in expected:
                del expected[key]
                continue
            try:
                seq = index.seq_of(key)
                if seq in damaged:
                    continue
                what = f"seq {seq}: no such event, or not this entry's event"
            except StorageCorrupt as exc:
                what = f"key unreadable ({exc})"
            out.add(index.db, f"key {key.hex()}", what, _delete(db, key), "entry removed")
        out.checked[index.db] = n
        for key, seq in expected.items():
            out.add(index.db, f"seq {seq}", "the event's entry is missing",
                    _put(db, key, index.value), "entry added")


# -- the entity store --------------------------------------------------------------------------


def _entity_store(store: LmdbStore, txn: lmdb.Transaction, out: Audit) -> None:
    dbs = store.dbs
    names: dict[bytes, bytes] = {}
    tokens: dict[bytes, bytes] = {}
    n = 0
    for key, raw in _cursor(txn, dbs["devices"]):
        n += 1
        try:
            device = codec.decode_device(key, raw, previous=store.previous_values)
        except StorageCorrupt as exc:
            out.add("devices", f"key {key.hex()}", f"record unreadable ({exc}); it cannot be "
                    "rebuilt here (a full sync from the cloud sends it again)")
            continue
        names[device.name.encode()] = key
        if device.token:
            tokens[device.token.encode()] = key
    out.checked["devices"] = n
    for db_name, expected, shown in (("device_names", names, True),
                                     ("device_tokens", tokens, False)):
        db = dbs[db_name]
        left = dict(expected)
        m = 0
        for key, value in _cursor(txn, db):
            m += 1
            label = f"name {key.decode(errors='replace')!r}" if shown else "a token"
            want = left.pop(key, None)
            if want is None:
                out.add(db_name, label, f"names device {_id_text(value)}, which does not have it",
                        _delete(db, key), "entry removed")
            elif value != want:
                out.add(db_name, label, f"names device {_id_text(value)} instead of "
                        f"{_id_text(want)}", _put(db, key, want), "entry corrected")
        out.checked[db_name] = m
        for key, device_key in left.items():
            label = f"name {key.decode(errors='replace')!r}" if shown else "a token"
            out.add(db_name, label, f"missing for device {_id_text(device_key)}",
                    _put(db, key, device_key), "entry added")


def _id_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else raw.hex()


# -- the entity graph --------------------------------------------------------------------------


def _graph(store: LmdbStore, txn: lmdb.Transaction, out: Audit) -> set[bytes]:
    """Check the graph; the ids (16 bytes) of its entities."""
    dbs = store.dbs
    if ENTITIES not in dbs:
        return set()
    ids: set[bytes] = set()
    keys: set[bytes] = set()
    names: set[bytes] = set()
    counts: dict[str, int] = {}
    n = 0
    for key, raw in _cursor(txn, dbs[ENTITIES]):
        n += 1
        keys.add(key)
        ids.add(key[:16])
        entity_type = key[16:].decode(errors="replace")
        try:
            fields = codec.unpack_fields(raw, f"graph: entity {key[:16].hex()}", 9)
            name = str(fields[1])
        except (StorageCorrupt, IndexError) as exc:
            out.add(ENTITIES, f"{entity_type} {_id_text(key[:16])}", f"record unreadable "
                    f"({exc}); a full sync from the cloud sends it again")
            counts[entity_type] = counts.get(entity_type, 0) + 1
            continue
        counts[entity_type] = counts.get(entity_type, 0) + 1
        names.add(name_key(entity_type, name, uuid.UUID(bytes=key[:16])))
    out.checked[ENTITIES] = n
    _exact(txn, out, NAMES, dbs[NAMES], names, "its entity's name index entry")
    _counts(store, txn, out, counts)
    _mirror(txn, out, dbs[RELATIONS], dbs[RELATIONS_TO])
    for db_name in (REFS, PROVIDED):
        db = dbs[db_name]
        m = 0
        for key, value in _cursor(txn, db):
            m += 1
            entity = _refs_entity(key) if db_name == REFS else value
            if entity not in keys:
                out.add(db_name, f"key {key[:80]!r}", "names an entity the graph does not hold",
                        _delete(db, key), "entry removed")
        out.checked[db_name] = m
    if LOG in dbs:
        with txn.cursor(db=dbs[LOG]) as cur:
            last = codec.from_u64(cur.key(), "graph_log: key") if cur.last() else 0
        stored = store.meta_int(txn, _LOG_NEXT, 1)
        if stored <= last:
            out.add("meta", "graph/log_next", f"{stored}, but the apply log's last entry is "
                    f"{last}", _put(dbs["meta"], _LOG_NEXT, codec.u64(last + 1)),
                    f"set to {last + 1}")
    return ids


def _refs_entity(key: bytes) -> bytes:
    """graph_refs keys are ``ref \\0 entity key``; the ref itself holds one SEP (kind \\0 key)
    and an entity key may hold any byte, so the entity key is what follows the second SEP."""
    first = key.find(SEP)
    second = key.find(SEP, first + 1) if first >= 0 else -1
    return key[second + 1:] if second >= 0 else b""


def _exact(txn: lmdb.Transaction, out: Audit, db_name: str, db: Any, expected: set[bytes],
           missing_what: str) -> None:
    left = set(expected)
    n = 0
    for key, _value in _cursor(txn, db):
        n += 1
        if key in left:
            left.discard(key)
        else:
            out.add(db_name, f"key {key[:80]!r}", "names no entity record with that name",
                    _delete(db, key), "entry removed")
    out.checked[db_name] = n
    for key in sorted(left):
        out.add(db_name, f"key {key[:80]!r}", f"missing: {missing_what}",
                _put(db, key, b""), "entry added")


def _counts(store: LmdbStore, txn: lmdb.Transaction, out: Audit, counts: dict[str, int]) -> None:
    meta = store.dbs["meta"]
    stored: dict[str, int] = {}
    for key, value in prefixed(txn, meta, _COUNT):
        kind = key[len(_COUNT):].decode(errors="replace")
        try:
            stored[kind] = codec.from_u64(value, f"meta: {key.decode(errors='replace')}")
        except StorageCorrupt:
            stored[kind] = -1
    for kind in sorted(set(stored) | set(counts)):
        have, want = stored.get(kind, 0), counts.get(kind, 0)
        if have != want:
            out.add("meta", f"graph/count/{kind}", f"{have if have >= 0 else 'unreadable'}, but "
                    f"the graph holds {want} {kind} entities",
                    _put(meta, _COUNT + kind.encode(), codec.u64(want)), f"set to {want}")


def _mirror(txn: lmdb.Transaction, out: Audit, rel: Any, rel_to: Any) -> None:
    forward = {key for key, _ in _cursor(txn, rel)}
    backward = {key for key, _ in _cursor(txn, rel_to)}
    out.checked[RELATIONS], out.checked[RELATIONS_TO] = len(forward), len(backward)
    for key in sorted(forward):
        if swap_ends(key) not in backward:
            out.add(RELATIONS_TO, _relation_text(key), "missing (the relation is not found from "
                    "its target)", _put(rel_to, swap_ends(key), b""), "entry added")
    for key in sorted(backward):
        if swap_ends(key) not in forward:
            out.add(RELATIONS_TO, _relation_text(swap_ends(key)), "names no relation",
                    _delete(rel_to, key), "entry removed")


def _relation_text(key: bytes) -> str:
    if len(key) < 32:
        return f"key {key.hex()}"
    return f"{_id_text(key[:16])} -> {_id_text(key[16:32])} {key[32:80]!r}"


# -- entity references -----------------------------------------------------------------------


def _references(store: LmdbStore, txn: lmdb.Transaction, out: Audit, events: dict[int, Any],
                graph_ids: set[bytes]) -> None:
    deleted = {e.entity_id for e in events.values() if e.action == "DELETED"}
    if LOG in store.dbs:
        for _key, raw in _cursor(txn, store.dbs[LOG]):
            try:
                _ts, _type, entity_id, action, _origin = codec.unpack_fields(raw, "graph_log", 5)
                if action == "DELETED":
                    deleted.add(uuid.UUID(str(entity_id)))
            except (StorageCorrupt, ValueError, TypeError):
                continue
    devices = store.dbs["devices"]
    seen: set[uuid.UUID] = set()
    for seq, e in events.items():
        if e.entity_type not in BY_TYPE or e.entity_id in seen or e.entity_id in deleted:
            continue
        seen.add(e.entity_id)
        if e.entity_id.bytes in graph_ids or txn.get(e.entity_id.bytes, db=devices) is not None:
            continue
        out.notes.append(Problem("events", f"seq {seq}", f"{e.entity_type} {e.entity_id} is "
                                 "neither on the edge nor deleted in the log (deleted by the "
                                 "cloud before the apply log's oldest entry?)"))
