"""The uplink window of one stream (docs/link-protocol.md, "Uplink"): the read cursor, the
messages in flight and their events, the epoch, resends (go-back-N for an ordered peer, one
message at a time otherwise), the resend and batch deadlines, acknowledgement matching, the
dead-letter skip, and the permanent-error policy for a peer without retry hints. Pure logic: no
I/O, no threads, time is passed in.

How the ConnectionActor drives it:
- ``wants_events(now)``: is there room to send (and no resend waiting)? Then
  ``take_resend(now)`` first: a failed message due for its resend is sent again without reading
  anything. Otherwise it reads pending events after ``cursor`` and hands them to
  ``take(events, now)``, which packs at most one message (uplinkMsgId and uplinkEpoch set) and
  says which events to dead-letter and whether to read again.
- ``on_ack`` / ``on_failure``: the cloud's UplinkResponseMsg, matched by uplinkMsgId.
- ``expire(now)``: the oldest message got no answer within the ack timeout (call it again until
  it answers None: against an unordered peer each call handles one message).
- ``next_deadline()``: when time next matters (a resend, an unanswered message, a partial
  batch); nothing to wait for is None.
- ``reset()``: a new stream (msg ids from 1, a new epoch, the cursor back to the start).

Go-back-N: a failed or unanswered message makes the edge forget every message in flight,
move the cursor back to where the oldest one started and resend from there, in seq order, under
epoch + 1 (the events acknowledged meanwhile, and the dead-lettered ones, are passed over).
The reference cloud's half is edge_sync.cloud.uplink.GoBackN: the epoch of the failed uplink
becomes its failed epoch, and it refuses every uplink of that epoch or an older one until the
resend arrives under a higher epoch. Its answers say what a failure is (``retryable``,
``rejectedEdgeSeqId``); that alone decides, as before.

A peer without ordered apply (a ThingsBoard server) gets no go-back-N. Each message is a unit
of its own: a failed or unanswered message is resent alone (under a new uplinkMsgId and epoch),
the others stay in flight, and new events keep being read and sent. While a message has failed
and is not settled (acknowledged or dead-lettered), its entities' later events (those of both
ends of a relation event) are held: the cursor passes them, they are remembered in read order
(at most ``max_held`` events and ``max_held_bytes`` of their stored size; then reading stops at
the next event that would be held) and sent once their entity is free. The same holding keeps
an entity's order-sensitive events out of concurrent flight. An alarm event is held for its
originator device too, a relation event for its ``to`` end, and a RELATION_REQUEST for an
entity while a relation event with that entity at either end is in flight
(``InFlight.relation_ends``), held or failed (see edge_sync.link.packer). A message resent after
an ack timeout may still be answered: a late success settles its events (they leave the resend
queue; a resend in flight is answered for nothing more), so they are DEPLOYED once. A failure
answer with neither hint is classified by its errorMsg (edge_sync.link.failures):
- transient: resent after retry_interval_s, doubling per transient failure of that message up
  to max_backoff_s; never counted against its events; max_retries of them (or of ack timeouts)
  for one message make the link reconnect (GiveUp);
- any other: counts against the message; after permanent_after of them a message of several
  events is split into one message per event, and a lone event that failed permanent_after
  times is dead-lettered with the cloud's errorMsg (a message left with one event, the others
  dead-lettered, starts that count again). Such failures never make the link reconnect.
Held events and messages waiting for a resend live only in memory: they are still PENDING in
the store, and a new stream (``reset``) reads them again.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_sync.common.wire import Owner
from edge_sync.link.failures import is_transient
from edge_sync.link.packer import Packed, hold_keys, holds, pack
from edge_sync.link.peer_text import rejection_reason
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import Lane, StoredEvent

MAX_UPLINK_MSG_ID = 2**31 - 1  # uplinkMsgId is an int32; it wraps to 1
MAX_SUPERSEDED = 4096  # unordered peer: resent messages whose late answer is still awaited


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    window: int = 4
    """Messages in flight at most (cloud.window)."""
    batch_size: int = 100
    """Events per message at most (cloud.batch.size)."""
    batch_timeout_s: float = 0.1
    """How long a partial batch waits to fill while other messages are in flight."""
    retry_interval_s: float = 5.0
    """The wait before resending a message the cloud answered with a failure
    (cloud.retry.interval_ms)."""
    max_retries: int = 5
    """Resends of the same oldest message before the link reconnects (cloud.retry.max_retries).
    Unordered peer: resends of one message after transient failures or ack timeouts."""
    ack_timeout_s: float = 60.0
    """How long a sent message may stay unanswered before it is resent
    (cloud.retry.ack_timeout_ms); a slower answer within it causes no resend."""
    permanent_after: int = 3
    """Unordered peer: non-transient failures of one message before its events are resent one
    per message, and of one event alone before it is dead-lettered
    (cloud.retry.permanent_after)."""
    max_backoff_s: float = 60.0
    """Unordered peer: the longest wait before resending after a transient failure."""
    max_held: int = 2000
    """Unordered peer: events held in memory at most; then reading stops at the next event that
    would be held (it stays pending in the store)."""
    max_held_bytes: int = 8 << 20
    """Unordered peer: the stored size of the held events at most (8 MiB), as for max_held."""


@dataclass(slots=True, eq=False)
class Unit:
    """Unordered peer: events sent in one message and resent together until settled, with what
    their failures so far count."""

    events: list[StoredEvent]
    failed: bool = False  # failed or went unanswered at least once: its entities are held
    strikes: int = 0  # non-transient failures (towards permanent_after)
    retries: int = 0  # resends after a transient failure or an ack timeout (towards max_retries)
    transient: int = 0  # transient failures (the backoff's exponent)
    resend_at: float = 0.0  # while waiting for a resend

    @property
    def seqs(self) -> tuple[int, ...]:
        return tuple(e.seq for e in self.events)


@dataclass(slots=True)
class InFlight:
    """One sent, unacknowledged message."""

    msg_id: int
    epoch: int
    seqs: tuple[int, ...]
    lanes: dict[int, Lane]
    entities: set[uuid.UUID]
    sensitive: set[uuid.UUID]
    cursor_before: dict[Lane, int]
    sent_at: float
    unit: Unit | None = None  # unordered peer: its events, for a resend of this message alone
    relation_ends: set[uuid.UUID] = field(default_factory=set)  # of its relation events


@dataclass(slots=True)
class Take:
    """What ``take`` made of the events read: at most one message to send, the events to
    dead-letter (seq, reason), and whether the window wants another read at once."""

    msg: edge_pb2.UplinkMsg | None = None
    seqs: tuple[int, ...] = ()
    dead: list[tuple[int, str]] = field(default_factory=list)
    more: bool = False


@dataclass(frozen=True, slots=True)
class GoBack:
    """Resend everything unacknowledged from ``from_seq`` under ``epoch`` (go-back-N), at
    ``resend_at`` (None: at once). ``dead_seq``: the event the cloud rejected for good, to be
    dead-lettered; the resend passes over it."""

    epoch: int
    from_seq: int
    attempt: int
    resend_at: float | None
    dead_seq: int | None = None


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The oldest event stayed unacknowledged through max_retries resends: reconnect."""

    seq: int
    retries: int
    dead_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Dead:
    """An event the cloud refused for good: dead-letter it with ``reason``."""

    seq: int
    entity_type: str
    entity_id: uuid.UUID
    reason: str


Cause = Literal["transient", "failure", "rejected", "unanswered", "settled"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Unordered peer: message ``msg_id`` failed (or went unanswered) and only its events are
    resent, at ``resend_at``; the other messages in flight stay in flight.

    cause: "transient" (retryable, or an errorMsg naming a transient cause), "failure" (any
    other failure), "rejected" (the cloud named one event, dead-lettered, the rest resent at
    once), "unanswered" (no answer within the ack timeout), "settled" (a resend whose events a
    late success of an earlier send settled meanwhile: nothing to resend). attempt: for
    "transient" and "unanswered" the message's resends so far (max_retries bounds them), for
    "failure" its non-transient failures (permanent_after bounds them). isolated: this failure
    split the message: its events are resent one per message from now on. dead: the events to
    dead-letter now; seqs: the events still to be resent."""

    msg_id: int
    cause: Cause
    seqs: tuple[int, ...]
    attempt: int
    resend_at: float
    isolated: bool = False
    dead: tuple[Dead, ...] = ()


class UplinkWindow:
    def __init__(self, policy: WindowPolicy) -> None:
        self.policy = policy
        self.epoch = 0
        self.cursor: dict[Lane, int] = {Lane.HIGH: 0, Lane.NORMAL: 0}
        self._next_msg_id = 1
        self._in_flight: OrderedDict[int, InFlight] = OrderedDict()
        self._passed: dict[int, Lane] = {}  # acknowledged or dead-lettered: never resent
        self._partial_since: float | None = None
        self._blocked = False  # nothing could be sent: only an answer or a resend time helps
        self._resend_at: float | None = None
        self._oldest_attempts = 0
        self._held: list[StoredEvent] = []  # unordered peer: read, not sent yet, in read order
        self._waiting: list[Unit] = []  # unordered peer: failed messages waiting for a resend
        # unordered peer: msg id of a message resent after its ack timeout -> its seqs; a late
        # success settles them (oldest forgotten first beyond MAX_SUPERSEDED)
        self._superseded: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self._rewind: dict[Lane, int] = {}  # replayed dead letters: read again from here
        self.reset()

    # -- views ---------------------------------------------------------------------------------

    @property
    def in_flight(self) -> list[InFlight]:
        """The messages in flight, oldest first."""
        return list(self._in_flight.values())

    @property
    def passed(self) -> frozenset[int]:
        """Seqs a resend passes over (acknowledged or dead-lettered, above the rewind point)."""
        return frozenset(self._passed)

    @property
    def held(self) -> tuple[int, ...]:
        """Unordered peer: the seqs read but held back, in read order."""
        return tuple(e.seq for e in self._held)

    @property
    def waiting(self) -> tuple[tuple[int, ...], ...]:
        """Unordered peer: the seqs of each failed message waiting for its resend."""
        return tuple(u.seqs for u in self._waiting)

    @property
    def waiting_for_batch(self) -> bool:
        """A partial batch was read and set aside to fill while messages are in flight."""
        return self._partial_since is not None

    def next_deadline(self) -> float | None:
        """The earliest time at which ``wants_events`` or ``expire`` may answer differently
        without anything arriving; None when only an arrival can change anything."""
        if self._resend_at is not None:
            return self._resend_at
        deadlines: list[float] = []
        room = len(self._in_flight) < self.policy.window
        if self._in_flight:
            oldest = next(iter(self._in_flight.values()))
            deadlines.append(oldest.sent_at + self.policy.ack_timeout_s)
            if self._partial_since is not None and not self._blocked and room:
                deadlines.append(self._partial_since + self.policy.batch_timeout_s)
        if self._waiting and room:
            deadlines.append(min(u.resend_at for u in self._waiting))
        return min(deadlines) if deadlines else None

    # -- a new stream --------------------------------------------------------------------------

    def reset(self) -> None:
        """A new stream: uplinkMsgIds from 1, a new epoch, read again from the start."""
        self._next_msg_id = 1
        self.epoch += 1
        self._in_flight.clear()
        self.cursor = {Lane.HIGH: 0, Lane.NORMAL: 0}
        self._passed.clear()
        self._partial_since = None
        self._blocked = False
        self._resend_at = None
        self._oldest_attempts = 0
        self._held = []
        self._waiting = []
        self._superseded.clear()
        self._rewind = {}

    def replayed(self, seqs: Sequence[tuple[int, Lane]]) -> None:
        """Dead letters the operator made PENDING again (below the cursor): they are read
        again. The cursor goes back to just before the first of each lane once nothing read is
        awaiting an answer, held or waiting, and every acknowledgement and dead letter told to
        the queue is committed (else an event acknowledged a moment ago, still PENDING in the
        store, would be read and sent twice). Until then no new message is sent, so the window
        drains and the replay goes out soon (held or waiting events of an unordered peer keep
        flowing: they are what has to drain)."""
        for seq, lane in seqs:
            self._passed.pop(seq, None)
            self._rewind[lane] = min(self._rewind.get(lane, seq), seq)

    @property
    def rewind_pending(self) -> bool:
        return bool(self._rewind)

    def _rewind_blocks(self, writes_settled: bool) -> bool:
        """Apply a pending rewind when it is safe; whether sending must wait for it."""
        if not self._rewind:
            return False
        if self._held or self._waiting:
            return False  # an unordered peer's held or waiting events must flow to drain
        if self._in_flight or not writes_settled:
            return True
        for lane, first in self._rewind.items():
            self.cursor[lane] = min(self.cursor[lane], first - 1)
        self._rewind = {}
        self._blocked = False
        return False

    # -- sending -------------------------------------------------------------------------------

    def wants_events(self, now: float, *, writes_settled: bool = True) -> bool:
        """Room for one more message, and no go-back-N resend waiting for its time, and no
        replay waiting for the window to drain. ``writes_settled``: every MarkDeployed and
        DeadLetter told to the queue is committed."""
        if self._rewind_blocks(writes_settled):
            return False
        if self._resend_at is not None:
            if now < self._resend_at:
                return False
            self._resend_at = None
        return len(self._in_flight) < self.policy.window

    def take(self, events: Sequence[StoredEvent], now: float, *, max_bytes: int,
             ordered_peer: bool, owner: Owner) -> Take:
        """Pack the front of ``events`` (pending events after ``cursor``, as read) into at most
        one message, its entity JSON owned by ``owner`` (the connection's tenant and customer).
        A partial batch waits up to batch_timeout_s while messages are in flight. For a peer
        without ordered apply (ThingsBoard) a failed message due for its resend goes first;
        otherwise held events and then ``events`` are packed, an event waiting (its entity has
        a failed message unsettled, or an order-conflicting event in flight) being held."""
        self._blocked = False  # recomputed by this take
        if not ordered_peer:
            return self._take_unordered(events, now, max_bytes=max_bytes, owner=owner)
        if not events:
            self._partial_since = None
            return Take()
        p = self.policy
        if len(events) < p.batch_size and self._in_flight:
            if self._partial_since is None:
                self._partial_since = now
            if now - self._partial_since < p.batch_timeout_s:
                return Take()  # wait for the batch to fill (or for the window to drain)
        packed = pack(events, max_bytes=max_bytes, max_events=p.batch_size, ordered_peer=True,
                      owner=owner, skip=set(self._passed))
        out = Take()
        out.dead = _refused(packed, max_bytes)
        for seq, _why in out.dead:
            self._passed[seq] = _lane_of(packed, seq)
        if not packed.seqs and not packed.last_seq:
            self._block()  # wait for an acknowledgement
            return out
        cursor_before = dict(self.cursor)
        self.cursor.update(packed.last_seq)
        out.more = True
        if not packed.seqs:
            return out  # only passed-over events: read on
        lanes = _lanes_of(events, packed.seqs)
        self._send(packed, lanes, cursor_before, now, out)
        return out

    def take_resend(self, now: float, *, max_bytes: int, owner: Owner) -> Take | None:
        """Unordered peer: the failed message due for its resend, packed again, without any
        read; None when none is due or the window has no room (then read and ``take``)."""
        if len(self._in_flight) >= self.policy.window:
            return None
        due = self._due(now)
        if due is None:
            return None
        self._blocked = False
        return self._resend(due, now, max_bytes=max_bytes, owner=owner)

    # -- answers -------------------------------------------------------------------------------

    def on_ack(self, msg_id: int) -> tuple[int, ...] | None:
        """UplinkResponseMsg success: the seqs now DEPLOYED, or None for a message this window
        no longer has in flight (given up by a go-back-N resend, or of an older stream).

        Unordered peer: a late success of a message resent after its ack timeout settles its
        events that are not settled yet (those answered: empty), wherever they wait; a resend of
        them still in flight then settles nothing more when it is answered. So each seq is
        answered here at most once."""
        flight = self._in_flight.get(msg_id)
        if flight is None:
            seqs = self._superseded.pop(msg_id, None)
            if seqs is None:
                return None
            self._blocked = False
            return self._settle(set(seqs))
        was_oldest = next(iter(self._in_flight)) == msg_id
        del self._in_flight[msg_id]
        self._blocked = False
        if flight.unit is not None:
            return flight.unit.seqs  # unordered: the events of the unit not settled before
        self._passed.update(flight.lanes)
        if was_oldest:  # the retry count belongs to the oldest unacknowledged message
            self._oldest_attempts = 0
        self._prune()
        return flight.seqs

    def on_failure(self, msg_id: int, now: float, *, rejected_seq: int | None = None,
                   permanent: bool = False, retryable: bool | None = None,
                   error: str = "") -> GoBack | GiveUp | Retry | None:
        """UplinkResponseMsg without success. ``retryable``: the answer's hint, None when
        absent; ``permanent`` is the same as retryable=False. None: not in flight.

        Ordered peer: the event the cloud rejected for good (a permanent failure naming a seq
        of this message) is dead-lettered and the rest resent at once; any other failure goes
        back N after retry_interval_s. Unordered peer: see the module docstring."""
        flight = self._in_flight.get(msg_id)
        if flight is None:
            self._superseded.pop(msg_id, None)  # a late failure: its resend is on its way
            return None
        if permanent:
            retryable = False
        if flight.unit is not None:
            return self._fail_unit(flight, flight.unit, now, rejected_seq=rejected_seq,
                                   retryable=retryable, error=error)
        if rejected_seq is not None and retryable is False and rejected_seq in flight.lanes:
            self._passed[rejected_seq] = flight.lanes[rejected_seq]
            return self._go_back(now, delay=0.0, dead_seq=rejected_seq)
        return self._go_back(now, delay=self.policy.retry_interval_s)

    def expire(self, now: float) -> GoBack | GiveUp | Retry | None:
        """The oldest message unanswered for ack_timeout_s: resend at once (ordered: go back N;
        unordered: that message alone; call again for the next one)."""
        if not self._in_flight:
            return None
        oldest = next(iter(self._in_flight.values()))
        if now - oldest.sent_at < self.policy.ack_timeout_s:
            return None
        unit = oldest.unit
        if unit is None:
            return self._go_back(now, delay=0.0)
        del self._in_flight[oldest.msg_id]
        self._blocked = False
        if not unit.events:  # settled meanwhile by a late success: nothing to resend
            return Retry(oldest.msg_id, "settled", (), unit.retries, now)
        self._supersede(oldest.msg_id, unit.seqs)
        unit.failed = True
        unit.retries += 1
        if unit.retries > self.policy.max_retries:
            return GiveUp(unit.events[0].seq, self.policy.max_retries)
        unit.resend_at = now
        self._waiting.append(unit)
        return Retry(oldest.msg_id, "unanswered", unit.seqs, unit.retries, now)

    def oldest(self) -> InFlight | None:
        return next(iter(self._in_flight.values()), None)

    def flight(self, msg_id: int) -> InFlight | None:
        return self._in_flight.get(msg_id)

    # -- internals: ordered peer ---------------------------------------------------------------

    def _go_back(self, now: float, *, delay: float,
                 dead_seq: int | None = None) -> GoBack | GiveUp:
        oldest = next(iter(self._in_flight.values()))
        self._oldest_attempts += 1
        if self._oldest_attempts > self.policy.max_retries:
            return GiveUp(oldest.seqs[0], self.policy.max_retries, dead_seq)
        self.cursor = dict(oldest.cursor_before)
        self._in_flight.clear()
        self.epoch += 1
        self._partial_since = None
        self._blocked = False
        self._resend_at = now + delay if delay > 0 else None
        self._prune()
        return GoBack(self.epoch, oldest.seqs[0], self._oldest_attempts, self._resend_at, dead_seq)

    def _prune(self) -> None:
        """Forget passed seqs no resend can reach: at or below the point a go-back-N would
        rewind to (the oldest message's start, or the cursor when nothing is in flight)."""
        oldest = next(iter(self._in_flight.values()), None)
        floor = oldest.cursor_before if oldest is not None else self.cursor
        self._passed = {s: lane for s, lane in self._passed.items() if s > floor[lane]}

    # -- internals: both -----------------------------------------------------------------------

    def _send(self, packed: Packed, lanes: dict[int, Lane], cursor_before: dict[Lane, int],
              now: float, out: Take, unit: Unit | None = None) -> None:
        msg_id = self._next_msg_id
        while msg_id in self._in_flight or msg_id in self._superseded:  # after a wrap
            msg_id = msg_id + 1 if msg_id < MAX_UPLINK_MSG_ID else 1
        self._next_msg_id = msg_id + 1 if msg_id < MAX_UPLINK_MSG_ID else 1
        packed.msg.uplinkMsgId = msg_id
        packed.msg.uplinkEpoch = self.epoch
        self._in_flight[msg_id] = InFlight(
            msg_id, self.epoch, tuple(packed.seqs), lanes, packed.entities,
            packed.sensitive_entities, cursor_before, now, unit,
            relation_ends=packed.relation_ends)
        self._partial_since = None
        out.msg = packed.msg
        out.seqs = tuple(packed.seqs)
        out.more = True

    # -- internals: unordered peer -------------------------------------------------------------

    def _take_unordered(self, events: Sequence[StoredEvent], now: float, *, max_bytes: int,
                        owner: Owner) -> Take:
        p = self.policy
        due = self._due(now)
        if due is not None:
            return self._resend(due, now, max_bytes=max_bytes, owner=owner)
        failed = self._failed_entities()
        ready = sum(1 for e in self._held if failed.isdisjoint(hold_keys(e)))
        if not events and not ready:
            self._partial_since = None
            return Take()
        if len(events) + ready < p.batch_size and self._in_flight:
            if self._partial_since is None:
                self._partial_since = now
            if now - self._partial_since < p.batch_timeout_s:
                return Take()  # wait for the batch to fill (or for the window to drain)
        busy: set[uuid.UUID] = set()
        busy_sensitive: set[uuid.UUID] = set()
        busy_relations: set[uuid.UUID] = set()
        for f in self._in_flight.values():
            busy |= f.entities
            busy_sensitive |= f.sensitive
            busy_relations |= f.relation_ends
        old = self._held
        candidates = [*old, *events]
        packed = pack(candidates, max_bytes=max_bytes, max_events=p.batch_size,
                      ordered_peer=False, owner=owner, busy=busy, busy_sensitive=busy_sensitive,
                      busy_relations=busy_relations, hold=failed, max_hold=p.max_held,
                      max_hold_bytes=p.max_held_bytes)
        out = Take()
        out.dead = _refused(packed, max_bytes)
        self._held = [*packed.held, *old[packed.consumed:]]
        fresh = candidates[len(old):packed.consumed]
        for e in fresh:
            self.cursor[e.lane] = max(self.cursor[e.lane], e.seq)
        if not packed.seqs:
            if not fresh and not out.dead:
                self._block()  # only an answer or a resend time can change anything
                return out
            out.more = True  # events consumed (held or refused): read on
            return out
        by_seq = {e.seq: e for e in candidates[:packed.consumed]}
        unit = Unit([by_seq[s] for s in packed.seqs])
        self._send(packed, _lanes_of(unit.events, packed.seqs), dict(self.cursor), now, out, unit)
        return out

    def _resend(self, unit: Unit, now: float, *, max_bytes: int, owner: Owner) -> Take:
        """Send a failed message's events again, alone, under a new uplinkMsgId and epoch."""
        self._waiting.remove(unit)
        packed = pack(unit.events, max_bytes=max_bytes, max_events=len(unit.events),
                      ordered_peer=False, owner=owner)
        out = Take()
        out.dead = _refused(packed, max_bytes)
        gone = {seq for seq, _why in out.dead}
        rest = [e for e in unit.events[packed.consumed:] if e.seq not in gone]
        if rest:  # did not all fit (the owner's JSON grew): the rest is a message of its own
            self._waiting.insert(0, _shrunk(Unit(rest, unit.failed, unit.strikes, unit.retries,
                                                 unit.transient, now), len(unit.events)))
        before = len(unit.events)
        unit.events = [e for e in unit.events if e.seq in set(packed.seqs)]
        _shrunk(unit, before)
        out.more = True
        if not packed.seqs:
            return out
        self.epoch += 1
        self._send(packed, _lanes_of(unit.events, packed.seqs), dict(self.cursor), now, out, unit)
        return out

    def _fail_unit(self, flight: InFlight, unit: Unit, now: float, *, rejected_seq: int | None,
                   retryable: bool | None, error: str) -> Retry | GiveUp:
        p = self.policy
        del self._in_flight[flight.msg_id]
        self._blocked = False
        if not unit.events:  # settled meanwhile by a late success: nothing to resend
            return Retry(flight.msg_id, "settled", (), unit.strikes, now)
        unit.failed = True
        reason = rejection_reason(error)  # one line, bounded
        if rejected_seq is not None and retryable is False and rejected_seq in flight.lanes:
            dead = tuple(_dead(e, reason) for e in unit.events if e.seq == rejected_seq)
            before = len(unit.events)
            unit.events = [e for e in unit.events if e.seq != rejected_seq]
            _shrunk(unit, before)  # a lone event left gets its permanent_after failures alone
            return self._wait(flight.msg_id, unit, "rejected", unit.strikes, now, dead=dead)
        if retryable is True or (retryable is None and is_transient(error)):
            unit.retries += 1
            if unit.retries > p.max_retries:
                return GiveUp(unit.events[0].seq, p.max_retries)
            unit.transient += 1
            delay = min(p.max_backoff_s, p.retry_interval_s * 2 ** (unit.transient - 1))
            return self._wait(flight.msg_id, unit, "transient", unit.retries, now + delay)
        unit.strikes += 1
        strikes = unit.strikes
        at = now + p.retry_interval_s
        if strikes < p.permanent_after:
            return self._wait(flight.msg_id, unit, "failure", strikes, at)
        if len(unit.events) == 1:
            return Retry(flight.msg_id, "failure", (), strikes, at,
                         dead=(_dead(unit.events[0], reason),))
        for e in unit.events:  # isolate: one message per event, each with its own count
            self._waiting.append(Unit([e], failed=True, retries=unit.retries, resend_at=at))
        return Retry(flight.msg_id, "failure", unit.seqs, strikes, at, isolated=True)

    def _wait(self, msg_id: int, unit: Unit, cause: Cause, attempt: int, at: float, *,
              dead: tuple[Dead, ...] = ()) -> Retry:
        """Queue a failed message's events (if any are left) for a resend at ``at``."""
        if unit.events:
            unit.resend_at = at
            self._waiting.append(unit)
        return Retry(msg_id, cause, unit.seqs, attempt, at, dead=dead)

    def _due(self, now: float) -> Unit | None:
        return next((u for u in self._waiting if u.resend_at <= now), None)

    def _block(self) -> None:
        """Nothing can be sent until an answer or a resend time: no batch deadline to wait for,
        so a commit of other events reads at once (``waiting_for_batch`` is False)."""
        self._blocked = True
        self._partial_since = None

    def _supersede(self, msg_id: int, seqs: tuple[int, ...]) -> None:
        """Remember a message resent after its ack timeout: its answer may still come."""
        self._superseded[msg_id] = seqs
        while len(self._superseded) > MAX_SUPERSEDED:
            self._superseded.popitem(last=False)

    def _settle(self, seqs: set[int]) -> tuple[int, ...]:
        """A late success of a superseded message: its events still in a unit (waiting for a
        resend, or in a resend in flight) leave it; returned in seq order. Events settled
        otherwise already (acknowledged, dead-lettered) are in no unit and not returned."""
        settled: list[int] = []
        units = [*self._waiting, *(f.unit for f in self._in_flight.values() if f.unit)]
        for unit in units:
            keep = [e for e in unit.events if e.seq not in seqs]
            if len(keep) == len(unit.events):
                continue
            settled += (e.seq for e in unit.events if e.seq in seqs)
            unit.events = keep
        self._waiting = [u for u in self._waiting if u.events]
        return tuple(sorted(settled))

    def _failed_entities(self) -> set[uuid.UUID]:
        """Entities with a failed message not settled (both ends of a relation event): their
        later events are held."""
        out = {k for u in self._waiting for e in u.events for k in holds(e)}
        for f in self._in_flight.values():
            if f.unit is not None and f.unit.failed:
                out |= f.entities | f.relation_ends
        return out


def _refused(packed: Packed, max_bytes: int) -> list[tuple[int, str]]:
    """The events no message can carry, with the dead letter's reason."""
    out = [(event.seq, f"event of {size} bytes exceeds the cloud's maxInboundMessageSize "
                       f"({max_bytes} bytes)") for event, size in packed.too_large]
    out += [(event.seq, f"cannot be sent: {why}") for event, why in packed.unmappable]
    return out


def _lane_of(packed: Packed, seq: int) -> Lane:
    for event, _ in (*packed.too_large, *packed.unmappable):
        if event.seq == seq:
            return event.lane
    raise KeyError(seq)


def _shrunk(unit: Unit, before: int) -> Unit:
    """A unit of several events left with one: its non-transient count starts again, so the
    event gets permanent_after failures alone before it is dead-lettered."""
    if before > 1 and len(unit.events) == 1:
        unit.strikes = 0
    return unit


def _dead(event: StoredEvent, reason: str) -> Dead:
    return Dead(event.seq, event.entity_type, event.entity_id, reason)


def _lanes_of(events: Sequence[StoredEvent], seqs: Sequence[int]) -> dict[int, Lane]:
    wanted = set(seqs)
    return {e.seq: e.lane for e in events if e.seq in wanted}
