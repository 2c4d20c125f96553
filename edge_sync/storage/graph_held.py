"""The entity graph's held entities: a payload that references something the edge does not
have yet is kept, serialized, with what it waits for, until link/graph_apply.py releases it
(or a newer version replaces it, or a delete drops it), and the index from each awaited
reference to who waits for it.

Layout (storage/graph_keys.py):
  graph_held          held key                -> (type, id or None, what, list field,
                                                  payload, waiting_for, since_ms)
  graph_waiting       ref \\0 held key          -> b""
A held key is ``E`` + entity key or ``R`` + relation key; during a full sync a held payload is
marked seen as ``H`` + held key (storage/graph_sync.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import lmdb
from loguru import logger

from edge_sync.common.entity_graph import Ref
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.graph_keys import HELD, SEP, WAITING, GraphTables, prefixed, ref_bytes, ref_of
from edge_sync.storage.graph_sync import FullSyncState

_log = logger.bind(component="graph")


@dataclass(frozen=True, slots=True)
class HeldEntity:
    """An entity (or relation) waiting for its references."""

    entity_type: str
    id: uuid.UUID | None  # None for a relation (its key is in `what`)
    what: str  # "DEVICE 1234… (pump-7)" / "RELATION A -Contains-> B"
    waiting_for: tuple[Ref, ...]
    since_ms: int


@dataclass(frozen=True, slots=True)
class HeldPayload:
    """What a held entity needs to be applied later: the DownlinkMsg list it came in and that
    one payload, serialized."""

    key: bytes
    entity: HeldEntity
    field: str
    payload: bytes


class HeldTable:
    """Held payloads in a store's transactions."""

    def __init__(self, tables: GraphTables, sync: FullSyncState) -> None:
        self._t = tables
        self._sync = sync

    def hold(self, txn: lmdb.Transaction, key: bytes, *, entity_type: str,
             entity_id: uuid.UUID | None, what: str, field: str, payload: bytes,
             waiting_for: Sequence[Ref], now_ms: int) -> None:
        """Keep a payload until every ref of ``waiting_for`` is on the edge (replacing an
        earlier held payload of the same key). During a full sync the held payload, and the
        applied version of the entity if there is one, count as seen."""
        self.drop(txn, key)
        txn.put(key, codec.pack((entity_type, None if entity_id is None else str(entity_id),
                                 what, field, payload, [ref_bytes(r).decode()
                                                        for r in waiting_for], now_ms)),
                db=self._t.db(HELD))
        for ref in waiting_for:
            txn.put(ref_bytes(ref) + SEP + key, b"", db=self._t.db(WAITING))
        self._sync.mark(txn, b"H" + key)
        self._sync.mark(txn, key)  # E + entity key / R + relation key: the applied version

    def get(self, txn: lmdb.Transaction, key: bytes) -> HeldPayload | None:
        raw = txn.get(key, db=self._t.db(HELD))
        if raw is None:
            return None
        etype, eid, what, field, payload, waiting, since = codec.unpack_fields(
            bytes(raw), f"graph: held {key[:17].hex()}", 7)
        try:
            entity = HeldEntity(str(etype), None if eid is None else uuid.UUID(eid), str(what),
                                tuple(ref_of(w.encode()) for w in waiting), int(since))
        except (TypeError, ValueError) as exc:
            raise StorageCorrupt(f"graph: held record with a malformed field ({exc})") from exc
        return HeldPayload(key, entity, str(field), bytes(payload))

    def keys(self, txn: lmdb.Transaction) -> list[bytes]:
        """The keys of everything held (one read of the held table)."""
        if not self._t.present:
            return []
        with txn.cursor(db=self._t.db(HELD)) as cur:
            return [bytes(k) for k in cur.iternext(values=False)]

    def narrow(self, txn: lmdb.Transaction, key: bytes, waiting_for: Sequence[Ref]) -> None:
        """Some of what a held entity waited for has arrived: it now waits for ``waiting_for``
        only (held since the same time)."""
        found = self.get(txn, key)
        if found is None:
            return
        h = found.entity
        for ref in set(h.waiting_for) - set(waiting_for):
            txn.delete(ref_bytes(ref) + SEP + key, db=self._t.db(WAITING))
        txn.put(key, codec.pack((h.entity_type, None if h.id is None else str(h.id), h.what,
                                 found.field, found.payload,
                                 [ref_bytes(r).decode() for r in waiting_for], h.since_ms)),
                db=self._t.db(HELD))

    def drop(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Forget a held payload (applied, replaced or deleted); whether there was one."""
        if not self._t.present:
            return False
        try:
            found = self.get(txn, key)
        except StorageCorrupt as exc:  # what it waited for is unknown: its index entries stay
            _log.bind(held_key=key.hex()).warning("damaged held entity dropped: {}", exc)
            txn.delete(key, db=self._t.db(HELD))
            return True
        if found is None:
            return False
        for ref in found.entity.waiting_for:
            txn.delete(ref_bytes(ref) + SEP + key, db=self._t.db(WAITING))
        txn.delete(key, db=self._t.db(HELD))
        self._sync.unmark(txn, b"H" + key)
        return True

    def waiting_on(self, txn: lmdb.Transaction, ref: Ref) -> list[bytes]:
        """The held keys waiting for ``ref``."""
        prefix = ref_bytes(ref) + SEP
        return [key[len(prefix):] for key, _ in prefixed(txn, self._t.db(WAITING), prefix)]

    def all(self, txn: lmdb.Transaction) -> list[HeldEntity]:
        """Everything that waits, and for what."""
        if not self._t.present:
            return []
        out: list[HeldEntity] = []
        with txn.cursor(db=self._t.db(HELD)) as cur:
            for k in cur.iternext(keys=True, values=False):
                found = self.get(txn, bytes(k))
                if found is not None:
                    out.append(found.entity)
        return out

    def count(self, txn: lmdb.Transaction) -> int:
        return self._t.store.entries(txn, HELD) if self._t.present else 0

    def is_held(self, txn: lmdb.Transaction, key: bytes) -> bool:
        return self._t.present and txn.get(key, db=self._t.db(HELD)) is not None
