"""Asking a ThingsBoard cloud for the relations of what it puts on the edge.

A ThingsBoard server's sync has no relation step (EdgeSyncCursor): relations reach an edge as
the answer to its RelationRequestMsg (DefaultEdgeRequestsService.processRelationRequestMsg:
every relation from and to the entity, one level deep, except those of an EDGE, each sent as a
relationUpdateMsg ENTITY_CREATED after the sync). ThingsBoard Edge asks for them for every
device, asset, entity view, dashboard and tenant it creates and for every customer and user it
saves (BaseEdgeProcessor.requestForAdditionalData, from DeviceCloudProcessor,
AssetCloudProcessor, EntityViewCloudProcessor, DashboardCloudProcessor, TenantCloudProcessor,
CustomerCloudProcessor, UserCloudProcessor). The edge does the same, and also for every such
entity a full sync sends, changed or not: the requests stand in for the relations that sync
does not carry (an edge that held the entities before it asked for relations gets them then).
The reference cloud sends relations in its full sync and in its downlink queue: nothing is
asked of it (a downlink says which peer it came from: ``ApplyDownlink.peer_ordered``).

Durable: the entities are recorded in the transaction of the downlink that put them on the edge
(storage/relation_requests.py); after the commit one RELATION_REQUEST event each is appended
through the QueueActor (normal lane: it follows the edge's own relation changes recorded before
it, which the answer must not undo; the uplink packer keeps it behind those of its relations
still held or in flight, link/packer.py); once appended they are no longer recorded. What is still
recorded (a crash in between, an append refused) is appended at start and after every
SyncCompletedMsg. One thread: the DownlinkActor's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import lmdb
from loguru import logger

from edge_sync.actors.messages import Append
from edge_sync.clock import Clock
from edge_sync.errors import EdgeSyncError
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_keys import CHANGED, CREATED
from edge_sync.storage.records import Action, NewEvent, lane_for
from edge_sync.storage.relation_requests import RelationRequestBook, Wanted

_log = logger.bind(component="downlink")

ASKED_ON_CREATE = frozenset({"TENANT", "CUSTOMER", "USER", "DASHBOARD", "DEVICE", "ASSET",
                             "ENTITY_VIEW"})
"""The kinds whose relations are asked for when the cloud creates one on the edge."""
ASKED_ON_UPDATE = frozenset({"CUSTOMER", "USER"})
"""... and when it changes one (ThingsBoard Edge asks on every save of these two)."""
APPEND_CHUNK = 500
"""Requests appended in one Append at most."""

Entity = tuple[str, uuid.UUID]  # (entity type, id)


@dataclass(frozen=True, slots=True)
class RelationRequestsAppended:
    """To the DownlinkActor, from the QueueActor's commit: the RELATION_REQUEST events of
    ``entities`` are in the event log (``seqs``), or were refused (``error``)."""

    entities: tuple[Wanted, ...]
    seqs: range | None = None
    error: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ClearQueuedRequests:
    """To the DownlinkActor, from itself: no longer record the requests appended so far (one
    write for every append answered meanwhile)."""


def to_ask(saved: Sequence[tuple[str, uuid.UUID, str]], *, full_sync: bool) -> list[Entity]:
    """The entities, of those a downlink put on the edge ((type, id, created / updated /
    unchanged), graph_apply.GraphOutcome.saved), whose relations are asked for; ``full_sync``:
    the downlink belongs to a full sync."""
    out: list[Entity] = []
    for entity_type, entity_id, result in saved:
        if entity_type not in ASKED_ON_CREATE:
            continue
        if result == CREATED or full_sync or (result == CHANGED
                                              and entity_type in ASKED_ON_UPDATE):
            out.append((entity_type, entity_id))
    return out


class RelationRequests:
    """Records, appends and settles the requests (see the module docstring)."""

    def __init__(self, store: LmdbStore, clock: Clock, *,
                 append: Callable[[Append], None] | None,
                 tell_self: Callable[[object], None]) -> None:
        self._store = store
        self._clock = clock
        self._append = append
        self._tell_self = tell_self
        self._book = RelationRequestBook(store)
        self._in_flight: dict[uuid.UUID, bytes] = {}  # appended, still recorded: its stamp
        self._to_clear: list[Wanted] = []  # appended, not cleared yet
        self._recorded = False  # something may have been recorded since the last send

    def record(self, txn: lmdb.Transaction, saved: Sequence[tuple[str, uuid.UUID, str]], *,
               full_sync: bool) -> int:
        """In the downlink's transaction: record the entities whose relations are to be asked
        for. How many (none when there is no queue to append to)."""
        if self._append is None:
            return 0
        wanted = to_ask(saved, full_sync=full_sync)
        for entity_type, entity_id in wanted:
            self._book.want(txn, entity_type, entity_id)
        if wanted:
            self._recorded = True
        return len(wanted)

    def send(self, *, everything: bool = False) -> int:
        """After a commit that recorded requests (or, ``everything``, at start and after a
        SyncCompletedMsg: whatever is still recorded): append a RELATION_REQUEST event for each
        recorded entity not being appended already (recorded again since: appended again). How
        many were handed to the queue."""
        if self._append is None or not (everything or self._recorded):
            return 0
        self._recorded = False
        try:
            with self._store.read() as txn:
                wanted = [w for w in self._book.wanted(txn)
                          if self._in_flight.get(w.entity_id) != w.stamp]
        except EdgeSyncError as exc:  # asked again at the next start or sync completion
            _log.bind(error=str(exc)).error("relation requests not read: {}", exc)
            return 0
        now = self._clock.now_ms()
        for start in range(0, len(wanted), APPEND_CHUNK):
            chunk = tuple(wanted[start:start + APPEND_CHUNK])
            events = tuple(NewEvent(w.entity_type, w.entity_type, w.entity_id,
                                    Action.RELATION_REQUEST, {}, now,
                                    lane_for(w.entity_type, Action.RELATION_REQUEST))
                           for w in chunk)
            reply: Future[range] = Future()
            reply.add_done_callback(self._on_commit(chunk))
            self._in_flight.update((w.entity_id, w.stamp) for w in chunk)
            self._append(Append(chunk[0].entity_id, events, reply))
        return len(wanted)

    def _on_commit(self, chunk: tuple[Wanted, ...]) -> Callable[[Future[range]], None]:
        """The append's reply callback (the QueueActor's thread): tell the actor."""
        def settled(done: Future[range]) -> None:
            error = done.exception()
            self._tell_self(RelationRequestsAppended(
                chunk, None if error is not None else done.result(), error))
        return settled

    def appended(self, done: RelationRequestsAppended) -> None:
        """The QueueActor answered an append: the entities are to be no longer recorded (one
        ClearQueuedRequests for the appends answered meanwhile), or, refused, they stay recorded
        for the next start or sync completion."""
        n = len(done.entities)
        if done.error is not None or done.seqs is None:
            self._settle(done.entities)
            _log.bind(entities=n, error=str(done.error)).warning(
                "relation requests for {} entities not queued ({}): asked again at the next "
                "start or sync completion", n, done.error)
            return
        if not self._to_clear:
            self._tell_self(ClearQueuedRequests())
        self._to_clear.extend(done.entities)
        seqs = done.seqs
        log = _log.bind(action=Action.RELATION_REQUEST, entities=n, first_seq=seqs.start)
        if n == 1:
            w = done.entities[0]
            log.bind(entity_type=w.entity_type, entity_id=str(w.entity_id)).info(
                "relations of {} {} asked for from the cloud (seq {})", w.entity_type,
                w.entity_id, seqs.start)
        else:
            log.info("relations of {} entities asked for from the cloud (seqs {}..{})", n,
                     seqs.start, seqs.stop - 1)

    def clear(self) -> None:
        """No longer record what was appended (one write). Should the write fail, they stay
        recorded and are appended again (the cloud answers a second request with the same
        relations, which change nothing)."""
        entities, self._to_clear = self._to_clear, []
        try:
            self._store.write(lambda txn: self._book.queued(txn, entities), maintenance=True)
        except EdgeSyncError as exc:
            _log.bind(entities=len(entities), error=str(exc)).error(
                "queued relation requests not cleared: {}", exc)
        self._settle(entities)

    def _settle(self, entities: Sequence[Wanted]) -> None:
        """These appends are over: their entities are no longer in flight (unless appended
        again since, under another stamp)."""
        for w in entities:
            if self._in_flight.get(w.entity_id) == w.stamp:
                del self._in_flight[w.entity_id]
