"""The cloud events query behind ``GET /api/cloud-events`` and the Cloud Events page: filters
(status, entity, type, action, created-time range), seq cursors in both directions, and rows
with the entity's name and ISO 8601 times. Pure logic over one LMDB read transaction.

No offset scans: a page starts at its cursor with one B-tree seek, in the index that fits the
filters, so the millionth event pages as fast as the tenth:

- ``status=pending`` walks pending_high and pending_normal merged by seq, ``status=dead`` the
  dead index, ``entity=`` the events_by_entity index (dead wins when both are given: dead
  letters are few); anything else (and ``status=deployed``, which has no seq index: deployed
  is "neither pending nor dead") walks the log itself and checks each event.
- Filters without an index (type, action, deployed, and the second of entity + status) are
  checked event by event, at most ``scan`` candidates per request (default 10,000). When the
  budget runs out before ``limit`` rows are found the answer is ``partial`` and its cursor
  continues from the last seq examined, so the client asks again from there.
- The time range (``from``, ``to``: created time in ms, both inclusive) becomes a seq range
  by binary search over the log (about 20 seeks for a million events), on the premise that
  created time grows with seq: it is the wall clock at the commit that assigned the seq. Each
  row is then checked against the range too, so no row outside it is ever shown; after the
  wall clock stepped back, events whose created time lies in the range but whose seqs fall
  outside the seq range found may be left out.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import lmdb

from edge_sync.api.entity_service import parse_uuid
from edge_sync.common.iso_time import iso_ms as iso_ms  # also this module's: callers import it here
from edge_sync.errors import BadRequest
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.records import Status, StoredEvent
from edge_sync.validators import INT64_MAX

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
DEFAULT_SCAN = 10_000
MAX_SCAN = 1_000_000
_MAX_SEQ = INT64_MAX

PARAMETERS = frozenset({"status", "entity", "type", "action", "from", "to", "after",
                        "after_seq", "before", "limit", "order", "scan", "envelope"})


@dataclass(frozen=True, slots=True)
class EventQuery:
    """One request's filters and cursor. ``after``/``before`` are exclusive seq bounds; with
    ``before`` the scan goes down from it (the rows just below), else up from ``after``, or,
    with neither and ``order="desc"``, down from the newest event."""

    status: Status | None = None
    entity: uuid.UUID | None = None
    type: str | None = None
    action: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    after: int | None = None
    before: int | None = None
    limit: int = DEFAULT_LIMIT
    order: str = "asc"
    scan: int = DEFAULT_SCAN

    @property
    def descending(self) -> bool:
        """The scan's direction (the rows' order is ``order``)."""
        return self.before is not None or (self.after is None and self.order == "desc")


@dataclass(slots=True)
class EventPage:
    """Rows in ``order``; ``next_after``: pass as ``after`` for the rows following (higher
    seqs), ``prev_before``: as ``before`` for the rows preceding (lower seqs); None when the
    log (within the filters' index and time range) holds nothing further that way."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    next_after: int | None = None
    prev_before: int | None = None
    scanned: int = 0
    partial: bool = False
    server_ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"rows": self.rows,
                "next": None if self.next_after is None else {"after": self.next_after},
                "previous": None if self.prev_before is None else {"before": self.prev_before},
                "scanned": self.scanned, "partial": self.partial}


def parse_query(query: Any) -> EventQuery:
    """EventQuery from query parameters (``after_seq`` is the older name of ``after``);
    BadRequest naming the parameter."""
    raw_status = str(query.get("status", "all") or "all").upper()
    status = None
    if raw_status != "ALL":
        try:
            status = Status(raw_status)
        except ValueError as exc:
            raise BadRequest(f"status: {raw_status[:32]!r} is not one of pending, deployed, "
                             "dead, all") from exc
    entity = parse_uuid(str(query["entity"]).strip(), "entity") if query.get("entity") else None
    after = _opt_int(query, "after") if query.get("after") not in (None, "") else None
    if after is None and query.get("after_seq") not in (None, ""):
        after = _opt_int(query, "after_seq")
    order = str(query.get("order", "asc")).lower()
    if order not in ("asc", "desc"):
        raise BadRequest(f"order: {order[:16]!r} is not asc or desc")
    from_ms, to_ms = _opt_int(query, "from"), _opt_int(query, "to")
    if from_ms is not None and to_ms is not None and from_ms > to_ms:
        raise BadRequest(f"from ({from_ms}) is after to ({to_ms})")
    return EventQuery(
        status=status, entity=entity,
        type=_word(query, "type"), action=_word(query, "action"),
        from_ms=from_ms, to_ms=to_ms, after=after, before=_opt_int(query, "before"),
        limit=query_int(query.get("limit", DEFAULT_LIMIT), "limit", 1, MAX_LIMIT),
        order=order, scan=query_int(query.get("scan", DEFAULT_SCAN), "scan", 1, MAX_SCAN))


def _word(query: Any, name: str) -> str | None:
    raw = str(query.get(name, "") or "").strip().upper()
    if len(raw) > 64:
        raise BadRequest(f"{name}: longer than 64 characters")
    return raw or None


def _opt_int(query: Any, name: str) -> int | None:
    raw = query.get(name)
    return None if raw in (None, "") else query_int(raw, name, 0, _MAX_SEQ)


def query_int(raw: Any, name: str, low: int, high: int = INT64_MAX) -> int:
    """An integer query parameter within low..high (by default at most the largest 64-bit
    signed integer: every seq, index and time in ms fits, and one past it still fits the
    store's 8-byte keys); BadRequest naming the parameter and the range."""
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError) as exc:  # also a literal of more than 4300 digits
        raise BadRequest(f"{name}: {str(raw)[:32]!r} is not an integer") from exc
    if not low <= value <= high:
        raise BadRequest(f"{name}: {str(raw).strip()[:32]} is out of range {low}..{high}")
    return value


class _Names:
    """Entity names for the rows (devices from the entity store, the rest from the graph),
    looked up once per entity per request."""

    def __init__(self, store: LmdbStore, txn: lmdb.Transaction) -> None:
        self._txn = txn
        self._devices = EntityStore(store)
        self._graph = GraphStore(store) if "graph_entities" in store.dbs else None
        self._known: dict[uuid.UUID, str | None] = {}

    def __call__(self, entity_type: str, entity_id: uuid.UUID) -> str | None:
        if entity_id not in self._known:
            self._known[entity_id] = self._lookup(entity_type, entity_id)
        return self._known[entity_id]

    def _lookup(self, entity_type: str, entity_id: uuid.UUID) -> str | None:
        if entity_type == "DEVICE":
            device = self._devices.device(self._txn, entity_id)
            if device is not None:
                return device.name
        if self._graph is None:
            return None
        record = self._graph.entity(self._txn, entity_id, entity_type or None)
        return None if record is None else record.name


def row(event: StoredEvent, name: str | None) -> dict[str, Any]:
    """One row: the event as ``edge-sync events --json`` prints it, plus its created time in
    ISO 8601 UTC, its lane and its entity's name (None when the edge does not hold it)."""
    out = event.as_json()
    out["created_iso"] = iso_ms(event.created_time)
    out["lane"] = event.lane.name
    out["entity_name"] = name
    return out


def _created(log: EventLog, txn: lmdb.Transaction, seq: int) -> tuple[int, int] | None:
    """(seq, created_time) of the first event at or above seq, None past the end."""
    with txn.cursor(db=log.store.dbs["events"]) as cur:
        if not cur.set_range(codec.u64(seq)):
            return None
        found = codec.from_u64(cur.key(), "events: key")
        try:
            return found, codec.decode_event(found, cur.value(),
                                             previous=log.store.previous_values).created_time
        except Exception:
            return found, 0


def _first_seq_created_after(log: EventLog, txn: lmdb.Transaction, limit_ms: int,
                             strict: bool) -> int:
    """The lowest seq whose event was created at or after limit_ms (after it when strict),
    by binary search over seqs (created time taken as non-decreasing in seq); one past the last
    seq when none is."""
    events = log.store.dbs["events"]
    with txn.cursor(db=events) as cur:
        if not cur.last():
            return 1
        hi = codec.from_u64(cur.key(), "events: key") + 1
        cur.first()
        lo = codec.from_u64(cur.key(), "events: key")
    while lo < hi:
        mid = (lo + hi) // 2
        found = _created(log, txn, mid)
        if found is None:
            hi = mid
            continue
        seq, created = found
        if created > limit_ms or (created == limit_ms and not strict):
            hi = mid
        else:
            lo = seq + 1
    return lo


def run_query(store: LmdbStore, q: EventQuery) -> EventPage:
    """Answer one query from one read transaction (see the module doc)."""
    started = time.perf_counter()
    log = EventLog(store)
    page = EventPage()
    with store.read() as txn:
        t_low, t_high = 1, _MAX_SEQ  # inclusive seq bounds of the time range
        if q.from_ms is not None:
            t_low = _first_seq_created_after(log, txn, q.from_ms, strict=False)
        if q.to_ms is not None:
            t_high = _first_seq_created_after(log, txn, q.to_ms, strict=True) - 1
        low = t_low if q.after is None else max(t_low, q.after + 1)
        high = t_high if q.before is None else min(t_high, q.before - 1)
        source, entity = "all", None
        if q.status is Status.DEAD:
            source = "dead"
        elif q.entity is not None and log.entity_index_ready(txn):
            source, entity = "entity", q.entity
        elif q.status is Status.PENDING:
            source = "pending"
        descending = q.descending
        names = _Names(store, txn)
        found: list[StoredEvent] = []
        last_examined: int | None = None
        exhausted = True
        if low <= high:
            walk = log.walk_seqs(txn, source, high if descending else low,
                                 descending=descending, entity_id=entity)
            for seq in walk:
                if (seq < low) if descending else (seq > high):
                    break
                if page.scanned >= q.scan or len(found) >= q.limit:
                    exhausted = False
                    break
                page.scanned += 1
                last_examined = seq
                event = log.get(txn, seq)
                if event is not None and _matches(event, q):
                    found.append(event)
        page.partial = not exhausted and len(found) < q.limit
        # the cursor that continues the scan, and the one that goes the other way from its start
        if descending:
            page.prev_before = None if exhausted else last_examined
            beyond = _beyond(log, txn, source, entity, high + 1, False)
            page.next_after = high if beyond is not None and beyond <= t_high else None
        else:
            page.next_after = None if exhausted else last_examined
            beyond = _beyond(log, txn, source, entity, low - 1, True) if low > 1 else None
            page.prev_before = low if beyond is not None and beyond >= t_low else None
        if found:  # the other way's cursor from the rows themselves (tighter than the start)
            seqs = [e.seq for e in found]
            if descending and page.next_after is not None:
                page.next_after = max(seqs)
            if not descending and page.prev_before is not None:
                page.prev_before = min(seqs)
        found.sort(key=lambda e: e.seq, reverse=q.order == "desc")
        page.rows = [row(e, names(e.entity_type, e.entity_id)) for e in found]
    page.server_ms = (time.perf_counter() - started) * 1000
    return page


def _beyond(log: EventLog, txn: lmdb.Transaction, source: str, entity: uuid.UUID | None,
            start: int, descending: bool) -> int | None:
    """The source's first seq from start on, that way (one seek); None when there is none."""
    if start > _MAX_SEQ:
        return None
    return next(iter(log.walk_seqs(txn, source, start, descending=descending,
                                   entity_id=entity)), None)


def _matches(event: StoredEvent, q: EventQuery) -> bool:
    return ((q.status is None or event.status is q.status)
            and (q.entity is None or event.entity_id == q.entity)
            and (q.type is None or event.type.upper() == q.type)
            and (q.action is None or event.action.upper() == q.action)
            and (q.from_ms is None or event.created_time >= q.from_ms)
            and (q.to_ms is None or event.created_time <= q.to_ms))
