"""The uplink window of one stream (docs/link-protocol.md, "Uplink"): the read cursor, the
messages in flight and their events, the epoch, go-back-N resends, the resend and batch
deadlines, acknowledgement matching and the dead-letter skip. Pure logic: no I/O, no threads,
time is passed in.

How the ConnectionActor drives it:
- ``wants_events(now)``: is there room to send (and no resend waiting)? Then it reads pending
  events after ``cursor`` and hands them to ``take(events, now)``, which packs at most one
  message (uplinkMsgId and uplinkEpoch set) and says which events to dead-letter and whether
  to read again.
- ``on_ack`` / ``on_failure``: the cloud's UplinkResponseMsg, matched by uplinkMsgId.
- ``expire(now)``: the oldest message got no answer within the ack timeout.
- ``next_deadline()``: when time next matters (a resend, an unanswered message, a partial
  batch); nothing to wait for is None.
- ``reset()``: a new stream (msg ids from 1, a new epoch, the cursor back to the start).

Go-back-N: a failed or unanswered message makes the edge forget every message in flight,
move the cursor back to where the oldest one started and resend from there, in seq order, under
epoch + 1 (the events acknowledged meanwhile, and the dead-lettered ones, are passed over).
The reference cloud's half is edge_sync.cloud.uplink.GoBackN: the epoch of the failed uplink
becomes its failed epoch, and it refuses every uplink of that epoch or an older one until the
resend arrives under a higher epoch.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_sync.common.wire import Owner
from edge_sync.link.packer import pack
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import Lane, StoredEvent

MAX_UPLINK_MSG_ID = 2**31 - 1  # uplinkMsgId is an int32; it wraps to 1


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
    """Resends of the same oldest message before the link reconnects (cloud.retry.max_retries)."""
    ack_timeout_s: float = 60.0
    """How long a sent message may stay unanswered before it is resent
    (cloud.retry.ack_timeout_ms); a slower answer within it causes no resend."""


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


class UplinkWindow:
    def __init__(self, policy: WindowPolicy) -> None:
        self.policy = policy
        self.epoch = 0
        self.cursor: dict[Lane, int] = {Lane.HIGH: 0, Lane.NORMAL: 0}
        self._next_msg_id = 1
        self._in_flight: OrderedDict[int, InFlight] = OrderedDict()
        self._passed: dict[int, Lane] = {}  # acknowledged or dead-lettered: never resent
        self._partial_since: float | None = None
        self._blocked = False  # an entity in flight holds the next event back (ThingsBoard)
        self._resend_at: float | None = None
        self._oldest_attempts = 0
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
    def waiting_for_batch(self) -> bool:
        """A partial batch was read and set aside to fill while messages are in flight."""
        return self._partial_since is not None

    def next_deadline(self) -> float | None:
        """The earliest time at which ``wants_events`` or ``expire`` may answer differently
        without anything arriving; None when only an arrival can change anything."""
        if self._resend_at is not None:
            return self._resend_at
        deadlines: list[float] = []
        if self._in_flight:
            oldest = next(iter(self._in_flight.values()))
            deadlines.append(oldest.sent_at + self.policy.ack_timeout_s)
            if (self._partial_since is not None and not self._blocked
                    and len(self._in_flight) < self.policy.window):
                deadlines.append(self._partial_since + self.policy.batch_timeout_s)
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

    # -- sending -------------------------------------------------------------------------------

    def wants_events(self, now: float) -> bool:
        """Room for one more message, and no go-back-N resend waiting for its time."""
        if self._resend_at is not None:
            if now < self._resend_at:
                return False
            self._resend_at = None
        return len(self._in_flight) < self.policy.window

    def take(self, events: Sequence[StoredEvent], now: float, *, max_bytes: int,
             ordered_peer: bool, owner: Owner) -> Take:
        """Pack the front of ``events`` (pending events after ``cursor``, as read) into at most
        one message, its entity JSON owned by ``owner`` (the connection's tenant and customer).
        A partial batch waits up to batch_timeout_s while messages are in flight; for a peer
        without ordered apply (ThingsBoard) an event waits while its entity has an
        order-conflicting event in flight."""
        if not events:
            self._partial_since = None
            return Take()
        p = self.policy
        if len(events) < p.batch_size and self._in_flight:
            if self._partial_since is None:
                self._partial_since = now
            if now - self._partial_since < p.batch_timeout_s:
                return Take()  # wait for the batch to fill (or for the window to drain)
        busy: set[uuid.UUID] = set()
        busy_sensitive: set[uuid.UUID] = set()
        if not ordered_peer:
            for f in self._in_flight.values():
                busy |= f.entities
                busy_sensitive |= f.sensitive
        packed = pack(events, max_bytes=max_bytes, max_events=p.batch_size,
                      ordered_peer=ordered_peer, owner=owner, busy=busy,
                      busy_sensitive=busy_sensitive,
                      skip=set(self._passed))
        out = Take()
        for event, size in packed.too_large:
            out.dead.append((event.seq, f"event of {size} bytes exceeds the cloud's "
                                        f"maxInboundMessageSize ({max_bytes} bytes)"))
            self._passed[event.seq] = event.lane
        for event, why in packed.unmappable:
            out.dead.append((event.seq, f"cannot be sent: {why}"))
            self._passed[event.seq] = event.lane
        if not packed.seqs and not packed.last_seq:
            self._blocked = True  # wait for an acknowledgement
            return out
        cursor_before = dict(self.cursor)
        self.cursor.update(packed.last_seq)
        out.more = True
        if not packed.seqs:
            return out  # only passed-over events: read on
        msg_id = self._next_msg_id
        self._next_msg_id = msg_id + 1 if msg_id < MAX_UPLINK_MSG_ID else 1
        packed.msg.uplinkMsgId = msg_id
        packed.msg.uplinkEpoch = self.epoch
        lanes = _lanes_of(events, packed.seqs)
        self._in_flight[msg_id] = InFlight(
            msg_id, self.epoch, tuple(packed.seqs), lanes, packed.entities,
            packed.sensitive_entities, cursor_before, now)
        self._partial_since = None
        out.msg = packed.msg
        out.seqs = tuple(packed.seqs)
        return out

    # -- answers -------------------------------------------------------------------------------

    def on_ack(self, msg_id: int) -> tuple[int, ...] | None:
        """UplinkResponseMsg success: the seqs now DEPLOYED, or None for a message this window
        no longer has in flight (given up by a go-back-N resend, or of an older stream)."""
        flight = self._in_flight.get(msg_id)
        if flight is None:
            return None
        was_oldest = next(iter(self._in_flight)) == msg_id
        del self._in_flight[msg_id]
        self._passed.update(flight.lanes)
        if was_oldest:  # the retry count belongs to the oldest unacknowledged message
            self._oldest_attempts = 0
        self._blocked = False
        self._prune()
        return flight.seqs

    def on_failure(self, msg_id: int, now: float, *, rejected_seq: int | None = None,
                   permanent: bool = False) -> GoBack | GiveUp | None:
        """UplinkResponseMsg without success. The event the cloud rejected for good (a
        permanent failure naming a seq of this message) is dead-lettered and the rest resent
        at once; any other failure resends after retry_interval_s. None: not in flight."""
        flight = self._in_flight.get(msg_id)
        if flight is None:
            return None
        if rejected_seq is not None and permanent and rejected_seq in flight.lanes:
            self._passed[rejected_seq] = flight.lanes[rejected_seq]
            return self._go_back(now, delay=0.0, dead_seq=rejected_seq)
        return self._go_back(now, delay=self.policy.retry_interval_s)

    def expire(self, now: float) -> GoBack | GiveUp | None:
        """The oldest message unanswered for ack_timeout_s: resend at once."""
        if not self._in_flight:
            return None
        oldest = next(iter(self._in_flight.values()))
        if now - oldest.sent_at < self.policy.ack_timeout_s:
            return None
        return self._go_back(now, delay=0.0)

    def oldest(self) -> InFlight | None:
        return next(iter(self._in_flight.values()), None)

    def flight(self, msg_id: int) -> InFlight | None:
        return self._in_flight.get(msg_id)

    # -- internals -----------------------------------------------------------------------------

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


def _lanes_of(events: Sequence[StoredEvent], seqs: Sequence[int]) -> dict[int, Lane]:
    wanted = set(seqs)
    return {e.seq: e.lane for e in events if e.seq in wanted}
