"""The operator's replay of dead letters: which dead letters a selection names (seqs, one
entity's, or all), and putting them back in their lane as PENDING, in seq order, in the caller's
write transaction. Shared by the QueueActor (the agent running) and ``edge-sync replay --dead``
(the agent stopped), so both replay the same way.

A replayed event keeps its seq, its lane and its record; only its status changes (the ``dead``
entry is removed, the lane's pending entry is added back), so the link reads it again in seq
order with the rest of its lane. What the dead entry said (the error) is returned for the log.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import lmdb

from edge_sync.errors import BadRequest
from edge_sync.storage import codec
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Lane, StoredEvent
from edge_sync.validators import UINT64_MAX

NOT_DEAD = "not dead"
UNKNOWN_SEQ = "unknown seq"
MAX_SEQS = 100_000  # one request names at most this many seqs
MAX_SEQ = UINT64_MAX  # seqs are stored as 8-byte unsigned keys: none is larger


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters: the listed ``seqs``, or those of ``entity``, or ``all``. Exactly one."""

    seqs: tuple[int, ...] | None = None
    entity: uuid.UUID | None = None
    all: bool = False

    def __post_init__(self) -> None:
        chosen = sum((self.seqs is not None, self.entity is not None, self.all))
        if chosen != 1:
            raise BadRequest("name the dead letters: seqs, entity or all (exactly one)")
        if self.seqs is not None:
            if not self.seqs:
                raise BadRequest("seqs: at least one seq")
            if len(self.seqs) > MAX_SEQS:
                raise BadRequest(f"seqs: at most {MAX_SEQS} in one request")
            if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_SEQ
                   for s in self.seqs):
                raise BadRequest(f"seqs: integers from 1 to {MAX_SEQ} only")

    @classmethod
    def from_json(cls, body: object) -> Selection:
        """``{"seqs": [int, ...]}`` | ``{"entity": "<uuid>"}`` | ``{"all": true}``; BadRequest."""
        if not isinstance(body, dict) or len(body) != 1:
            raise BadRequest('expected one of {"seqs": [n, ...]}, {"entity": "<uuid>"}, '
                             '{"all": true}')
        ((key, value),) = body.items()
        if key == "seqs":
            if not isinstance(value, list):
                raise BadRequest("seqs: a list of positive integers")
            return cls(seqs=tuple(value))
        if key == "entity":
            try:
                return cls(entity=uuid.UUID(str(value)) if isinstance(value, str) else None)
            except ValueError:
                raise BadRequest(f"entity: {str(value)[:64]!r} is not a UUID") from None
        if key == "all":
            if value is not True:
                raise BadRequest("all: must be true")
            return cls(all=True)
        raise BadRequest(f"unknown field {str(key)[:32]!r}: expected seqs, entity or all")

    def as_json(self) -> dict[str, object]:
        if self.seqs is not None:
            return {"seqs": list(self.seqs)}
        if self.entity is not None:
            return {"entity": str(self.entity)}
        return {"all": True}


@dataclass(frozen=True, slots=True)
class Replayed:
    """One dead letter put back as PENDING: its seq, entity, lane and the error it was dead for."""

    seq: int
    entity_id: uuid.UUID
    lane: Lane
    reason: str


@dataclass(slots=True)
class ReplayResult:
    replayed: list[Replayed] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (seq, NOT_DEAD|UNKNOWN_SEQ)

    def as_json(self) -> dict[str, object]:
        """The admin API's answer: ``{"replayed": [seq, ...], "skipped": [{seq, reason}]}``."""
        return {"replayed": [r.seq for r in self.replayed],
                "skipped": [{"seq": s, "reason": why} for s, why in self.skipped]}


def replay(log: EventLog, txn: lmdb.Transaction, selection: Selection) -> ReplayResult:
    """Put the selected dead letters back as PENDING, in seq order, inside ``txn`` (a write
    transaction). Seqs named explicitly that are not dead are reported as skipped."""
    out = ReplayResult()
    dead_db = log.store.dbs["dead"]
    if selection.seqs is not None:
        candidates = sorted(set(selection.seqs))
    else:
        with txn.cursor(db=dead_db) as cur:
            candidates = [codec.from_u64(k, "dead: key")
                          for k in cur.iternext(keys=True, values=False)]
    for seq in candidates:
        raw_dead = txn.get(codec.u64(seq), db=dead_db)
        if raw_dead is None:
            if selection.seqs is not None:
                known = txn.get(codec.u64(seq), db=log.store.dbs["events"]) is not None
                out.skipped.append((seq, NOT_DEAD if known else UNKNOWN_SEQ))
            continue
        event = log.get(txn, seq)
        if event is None:  # a dead entry without its event: nothing to replay (verify says so)
            if selection.seqs is not None:
                out.skipped.append((seq, UNKNOWN_SEQ))
            continue
        if selection.entity is not None and event.entity_id != selection.entity:
            continue
        if log.replay_dead(txn, seq):
            out.replayed.append(Replayed(seq, event.entity_id, event.lane, event.error or ""))
    return out


def dead_events(log: EventLog, txn: lmdb.Transaction) -> Iterator[StoredEvent]:
    """Every dead letter, in seq order, with its error (one read of the ``dead`` index)."""
    with txn.cursor(db=log.store.dbs["dead"]) as cur:
        seqs = [codec.from_u64(k, "dead: key") for k in cur.iternext(keys=True, values=False)]
    for seq in seqs:
        event = log.get(txn, seq)
        if event is not None:
            yield event
