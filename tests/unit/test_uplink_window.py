"""The uplink window on its own: every transition driven by plain calls and an explicit time,
against a list standing in for the pending queue (read as EventLog.read_batch reads it: high
lane first, each lane in seq order, after the window's cursor)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field

from edge_sync.cloud.uplink_payloads import uplink_events
from edge_sync.common.wire import Owner
from edge_sync.config import load_edge_config
from edge_sync.link.connection import window_policy
from edge_sync.link.failures import is_transient
from edge_sync.link.uplink_window import Dead, GiveUp, GoBack, Retry, UplinkWindow, WindowPolicy
from edge_sync.storage.records import NIL_UUID, Action, Lane, StoredEvent

MAX_BYTES = 4 << 20
A, B = uuid.UUID(int=1), uuid.UUID(int=2)
OWNER = Owner(uuid.UUID(int=7))


def event(seq: int, entity: uuid.UUID = A, *, lane: Lane = Lane.NORMAL, size: int = 1,
          action: str = Action.TIMESERIES_UPDATED) -> StoredEvent:
    body: object = ({"ts": 1000 + seq, "values": {"v": "x" * size}}
                    if action == Action.TIMESERIES_UPDATED
                    else {"id": str(entity), "name": f"d-{entity}", "type": "default"})
    return StoredEvent(seq=seq, id=uuid.UUID(int=1000 + seq), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="DEVICE", entity_type="DEVICE", entity_id=entity,
                       action=action, body=body, ts=1000 + seq, lane=lane)


@dataclass
class Queue:
    """The pending events; committing a state change removes them, as the QueueActor does."""

    events: list[StoredEvent]
    batch: int = 3
    reads: int = 0
    deployed: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)

    def read(self, cursor: dict[Lane, int]) -> list[StoredEvent]:
        self.reads += 1
        out = [e for lane in (Lane.HIGH, Lane.NORMAL) for e in self.events
               if e.lane is lane and e.seq > cursor[lane]]
        return out[:self.batch]

    def commit_deployed(self, seqs: tuple[int, ...]) -> None:
        self.deployed += seqs
        self.events = [e for e in self.events if e.seq not in seqs]

    def commit_dead(self, seq: int) -> None:
        self.dead.append(seq)
        self.events = [e for e in self.events if e.seq != seq]


Sent = tuple[int, int, tuple[int, ...]]  # (uplinkMsgId, uplinkEpoch, seqs)


def pump(w: UplinkWindow, q: Queue, now: float, *, ordered: bool = True,
         settled: bool = True) -> list[Sent]:
    """What the ConnectionActor does when told of new events or a free slot: a resend due
    first (no read), else read and take. ``settled``: every acknowledgement and dead letter
    told to the queue is committed."""
    sent: list[Sent] = []
    while w.wants_events(now, writes_settled=settled):
        took = None if ordered else w.take_resend(now, max_bytes=MAX_BYTES, owner=OWNER)
        if took is None:
            took = w.take(q.read(w.cursor), now, max_bytes=MAX_BYTES, owner=OWNER,
                          ordered_peer=ordered)
        for seq, _reason in took.dead:
            q.commit_dead(seq)
        if took.msg is not None:
            carried = [e.seq or 0 for e in uplink_events(took.msg)]
            carried += [r.edgeSeqId for r in took.msg.relationRequestMsg]
            assert sorted(carried) == sorted(took.seqs)
            sent.append((took.msg.uplinkMsgId, took.msg.uplinkEpoch, took.seqs))
        if not took.more:
            break
    return sent


def window(*, window: int = 2, batch_size: int = 3) -> UplinkWindow:
    return UplinkWindow(WindowPolicy(window=window, batch_size=batch_size, batch_timeout_s=1.0,
                                     retry_interval_s=5.0, max_retries=2, ack_timeout_s=5.0))


def test_in_order_acks_deploy_and_free_the_window() -> None:
    q = Queue([event(s) for s in range(1, 10)])
    w = window()
    assert w.epoch == 1
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3)), (2, 1, (4, 5, 6))]
    assert not w.wants_events(0.0)  # two messages in flight: the window is full
    assert w.next_deadline() == 5.0  # the oldest message's answer is due
    assert w.on_ack(1) == (1, 2, 3)
    assert pump(w, q, 0.1) == [(3, 1, (7, 8, 9))]
    assert w.on_ack(2) == (4, 5, 6)
    assert w.on_ack(3) == (7, 8, 9)
    assert w.on_ack(3) is None  # answered twice: only once deployed
    assert pump(w, q, 0.2) == []
    assert w.in_flight == [] and w.next_deadline() is None  # idle: nothing to wake up for


def test_high_lane_first_then_normal_in_seq_order() -> None:
    q = Queue([event(1), event(2, lane=Lane.HIGH, action=Action.ADDED), event(3),
               event(4, B, lane=Lane.HIGH, action=Action.ADDED)])
    w = window(batch_size=10)
    q.batch = 10
    assert pump(w, q, 0.0) == [(1, 1, (2, 4, 1, 3))]
    assert w.cursor == {Lane.HIGH: 4, Lane.NORMAL: 3}


def test_out_of_order_acks_keep_the_oldest_retry_count_and_are_never_resent() -> None:
    q = Queue([event(s) for s in range(1, 10)])
    w = window(window=3)
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3)), (2, 1, (4, 5, 6)), (3, 1, (7, 8, 9))]
    assert w.on_ack(2) == (4, 5, 6)  # acknowledged before message 1, not yet committed
    assert [f.msg_id for f in w.in_flight] == [1, 3]
    assert w.passed == {4, 5, 6}
    verdict = w.on_failure(1, 1.0)  # retryable failure of the oldest
    assert verdict == GoBack(epoch=2, from_seq=1, attempt=1, resend_at=6.0)
    assert pump(w, q, 5.9) == []  # the resend waits for retry_interval_s
    assert w.next_deadline() == 6.0
    # everything unacknowledged again, in seq order, under the new epoch; 4..6 passed over
    assert pump(w, q, 6.0) == [(4, 2, (1, 2, 3)), (5, 2, (7, 8, 9))]
    assert w.on_ack(3) is None  # an answer to a message given up by the resend
    assert w.on_ack(4) == (1, 2, 3) and w.on_ack(5) == (7, 8, 9)
    assert w.passed == frozenset()  # nothing left a resend could reach


def test_a_failed_message_goes_back_n_under_a_new_epoch_until_max_retries() -> None:
    q = Queue([event(s) for s in range(1, 7)])
    w = window()
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3)), (2, 1, (4, 5, 6))]
    assert w.on_failure(2, 0.5) == GoBack(epoch=2, from_seq=1, attempt=1, resend_at=5.5)
    assert w.on_failure(1, 0.6) is None  # given up already: no second go-back
    assert pump(w, q, 5.5) == [(3, 2, (1, 2, 3)), (4, 2, (4, 5, 6))]
    assert w.on_failure(3, 6.0) == GoBack(epoch=3, from_seq=1, attempt=2, resend_at=11.0)
    assert pump(w, q, 11.0) == [(5, 3, (1, 2, 3)), (6, 3, (4, 5, 6))]
    assert w.on_failure(5, 12.0) == GiveUp(seq=1, retries=2)  # third failure: reconnect


def test_an_ack_of_the_oldest_resets_its_retry_count() -> None:
    q = Queue([event(s) for s in range(1, 7)])
    w = window(window=1)
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3))]
    assert w.on_failure(1, 0.0) == GoBack(epoch=2, from_seq=1, attempt=1, resend_at=5.0)
    assert pump(w, q, 5.0) == [(2, 2, (1, 2, 3))]
    assert w.on_ack(2) == (1, 2, 3)
    assert pump(w, q, 5.0) == [(3, 2, (4, 5, 6))]
    assert w.on_failure(3, 6.0) == GoBack(epoch=3, from_seq=4, attempt=1, resend_at=11.0)


def test_an_unanswered_message_is_resent_at_once_when_its_deadline_passes() -> None:
    q = Queue([event(s) for s in range(1, 6)])
    w = window()
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3))]  # 4, 5: a partial batch waits while
    assert w.next_deadline() == 1.0  # message 1 is in flight, for batch_timeout_s
    assert pump(w, q, 0.5) == []
    assert pump(w, q, 1.0) == [(2, 1, (4, 5))]
    assert w.next_deadline() == 5.0
    assert w.expire(4.9) is None
    assert w.expire(5.0) == GoBack(epoch=2, from_seq=1, attempt=1, resend_at=None)
    assert pump(w, q, 5.0) == [(3, 2, (1, 2, 3))]
    assert pump(w, q, 6.0) == [(4, 2, (4, 5))]  # a partial batch waits, as on the first send
    assert w.next_deadline() == 10.0


def test_a_rejected_event_is_dead_lettered_and_the_rest_resent_at_once() -> None:
    q = Queue([event(s) for s in range(1, 7)])
    w = window()
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3)), (2, 1, (4, 5, 6))]
    verdict = w.on_failure(1, 1.0, rejected_seq=2, permanent=True)
    assert verdict == GoBack(epoch=2, from_seq=1, attempt=1, resend_at=None, dead_seq=2)
    # the DeadLetter is not committed yet: the resend passes over seq 2 all the same
    assert pump(w, q, 1.0) == [(3, 2, (1, 3)), (4, 2, (4, 5, 6))]
    assert w.on_ack(3) == (1, 3) and w.on_ack(4) == (4, 5, 6)
    # a retryable failure naming a seq, or a seq of another message, dead-letters nothing
    q2 = Queue([event(s) for s in range(1, 4)])
    w2 = window()
    pump(w2, q2, 0.0)
    assert w2.on_failure(1, 0.0, rejected_seq=2, permanent=False) == GoBack(2, 1, 1, 5.0)
    pump(w2, q2, 5.0)
    assert w2.on_failure(2, 5.0, rejected_seq=9, permanent=True) == GoBack(3, 1, 2, 10.0)


def test_events_no_message_can_carry_are_dead_letters_and_the_queue_moves_on() -> None:
    q = Queue([event(1), event(2, size=5000), event(3)])
    w = window()
    took = w.take(q.read(w.cursor), 0.0, max_bytes=4000, owner=OWNER, ordered_peer=True)
    assert took.seqs == (1, 3) and took.more
    assert [(seq, "exceeds the cloud's maxInboundMessageSize" in why) for seq, why in took.dead] \
        == [(2, True)]
    assert w.passed == {2}
    assert w.on_failure(1, 0.0) == GoBack(epoch=2, from_seq=1, attempt=1, resend_at=5.0)
    resend = w.take(q.read(w.cursor), 5.0, max_bytes=4000, owner=OWNER, ordered_peer=True)
    assert resend.seqs == (1, 3) and resend.dead == []  # not dead-lettered twice


def test_thingsboard_peer_holds_an_entity_in_flight_and_sends_the_others() -> None:
    q = Queue([event(1, action=Action.ADDED, lane=Lane.HIGH), event(2), event(3, B)])
    w = window(batch_size=3)
    # A's telemetry waits for A's creation to be acknowledged; B's goes with the creation
    assert pump(w, q, 0.0, ordered=False) == [(1, 1, (1, 3))]
    assert w.held == (2,) and w.cursor == {Lane.HIGH: 1, Lane.NORMAL: 3}
    assert pump(w, q, 1.0, ordered=False) == []
    assert w.next_deadline() == 5.0  # blocked: only the ack matters, no deadline to spin on
    assert w.on_ack(1) == (1, 3)
    q.commit_deployed((1, 3))
    assert pump(w, q, 1.1, ordered=False) == [(2, 1, (2,))]
    assert w.held == ()


def test_a_reconnect_with_events_in_flight_starts_over_under_a_new_epoch() -> None:
    q = Queue([event(s) for s in range(1, 8)])
    w = window()
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3)), (2, 1, (4, 5, 6))]
    assert w.on_ack(1) == (1, 2, 3)
    q.commit_deployed((1, 2, 3))
    assert w.on_failure(2, 1.0) == GoBack(epoch=2, from_seq=4, attempt=1, resend_at=6.0)
    w.reset()  # the stream broke: a new one
    assert w.epoch == 3 and w.in_flight == [] and w.next_deadline() is None
    assert w.on_ack(2) is None  # an answer from the old stream changes nothing
    # uplinkMsgIds start at 1 again; everything still pending is read from the start
    assert pump(w, q, 7.0) == [(1, 3, (4, 5, 6))]
    assert pump(w, q, 8.0) == [(2, 3, (7,))]  # the partial batch after batch_timeout_s


def test_idle_reads_nothing_until_told() -> None:
    q = Queue([])
    w = window()
    assert pump(w, q, 0.0) == [] and q.reads == 1
    assert w.next_deadline() is None
    q.events.append(event(1))
    assert pump(w, q, 9.0) == [(1, 1, (1,))]  # the first message never waits to fill


def test_msg_ids_wrap_to_one() -> None:
    q = Queue([event(s) for s in range(1, 4)])
    q.batch = 1
    w = window(batch_size=1, window=3)
    w._next_msg_id = 2**31 - 1
    assert [m for m, _e, _s in pump(w, q, 0.0)] == [2**31 - 1, 1, 2]


def test_a_partial_batch_waits_to_fill_while_messages_are_in_flight() -> None:
    """The actor reads on a commit only when a batch may be full or the batch deadline passed:
    ``waiting_for_batch`` says a partial batch was read and set aside."""
    q = Queue([event(s) for s in range(1, 5)])
    w = window(window=3)
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3))]  # then seq 4 alone: partial, one in flight
    assert w.waiting_for_batch
    assert w.next_deadline() == 1.0  # the batch timeout, before the retry interval
    assert pump(w, q, 0.5) == []
    assert w.waiting_for_batch
    assert pump(w, q, 1.0) == [(2, 1, (4,))]  # the deadline: sent as it is
    assert not w.waiting_for_batch


def test_a_slow_answer_within_the_ack_timeout_is_not_resent_a_failure_waits_the_retry_interval(
        ) -> None:
    """Default settings: an answer 5 s late causes no resend (ack timeout 60 s); a failure
    answer is resent after cloud.retry.interval_ms (3 s), not after the ack timeout."""
    policy = window_policy(load_edge_config(env={}).cloud)
    assert (policy.ack_timeout_s, policy.retry_interval_s) == (60.0, 3.0)
    q = Queue([event(s) for s in range(1, 4)])
    w = UplinkWindow(policy)
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3))]
    assert w.next_deadline() == 60.0
    assert w.expire(5.0) is None and pump(w, q, 5.0) == []  # slow, not lost: nothing resent
    assert w.on_ack(1) == (1, 2, 3)
    q.commit_deployed((1, 2, 3))
    q.events += [event(4)]
    assert pump(w, q, 6.0) == [(2, 1, (4,))]
    assert w.expire(65.9) is None
    assert w.expire(66.0) == GoBack(epoch=2, from_seq=4, attempt=1, resend_at=None)
    assert pump(w, q, 66.0) == [(3, 2, (4,))]
    assert w.on_failure(3, 70.0) == GoBack(epoch=3, from_seq=4, attempt=2, resend_at=73.0)
    assert w.next_deadline() == 73.0


# -- a peer without ordered apply and without retry hints (ThingsBoard) -------------------------------

C, D, P = uuid.UUID(int=3), uuid.UUID(int=4), uuid.UUID(int=99)  # P: the poison event's entity
TENANT_ERROR = "Device should be assigned to tenant!"


def tb_window(*, window: int = 4, batch_size: int = 3, max_retries: int = 10,
              permanent_after: int = 3, max_held: int = 10_000,
              max_held_bytes: int = 8 << 20) -> UplinkWindow:
    return UplinkWindow(WindowPolicy(
        window=window, batch_size=batch_size, batch_timeout_s=1.0, retry_interval_s=3.0,
        max_retries=max_retries, ack_timeout_s=60.0, permanent_after=permanent_after,
        max_backoff_s=60.0, max_held=max_held, max_held_bytes=max_held_bytes))


def tb_pump(w: UplinkWindow, q: Queue, now: float) -> list[Sent]:
    return pump(w, q, now, ordered=False)


def test_transient_failures_are_resent_with_growing_delay_and_never_dead_lettered() -> None:
    assert is_transient("Failed to process uplink message. Rate limit reached")
    assert is_transient("java.util.concurrent.TimeoutException") and is_transient("timed out")
    assert is_transient("UNAVAILABLE: io exception") and is_transient("Service Unavailable")
    assert not is_transient(TENANT_ERROR)
    # ThingsBoard's text: the root cause's message, then its stack frames; the frames of a
    # permanent error do not make it transient, a cause without a message is read from them
    frames = "\n".join(["com.google.common.util.concurrent.TimeoutFuture.run(TimeoutFuture.java:1)",
                        "org.thingsboard.server.dao.service.DataValidator.validate(DataValidator.java:2)"])
    assert not is_transient("Device should be assigned to tenant!\n" + frames)
    assert is_transient("\n" + frames)  # a TimeoutException without a message
    assert is_transient("Rate limit reached\n" + frames)
    q = Queue([event(1)])
    w = tb_window()
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    errors = ["Failed to process uplink message. Rate limit reached", "timed out", "UNAVAILABLE"]
    delays: list[float] = []
    now, msg_id = 0.0, 1
    for i in range(10):
        verdict = w.on_failure(msg_id, now, error=errors[i % 3])
        assert isinstance(verdict, Retry) and verdict.cause == "transient" and verdict.dead == ()
        assert (verdict.seqs, verdict.attempt) == ((1,), i + 1)
        delays.append(verdict.resend_at - now)
        assert w.next_deadline() == verdict.resend_at
        assert tb_pump(w, q, verdict.resend_at - 0.01) == []
        now = verdict.resend_at
        [(msg_id, _epoch, seqs)] = tb_pump(w, q, now)
        assert seqs == (1,)
    assert delays == [3, 6, 12, 24, 48, 60, 60, 60, 60, 60]
    # max_retries (10) transient resends of one message: the link reconnects, nothing dead
    assert w.on_failure(msg_id, now, error="Rate limit reached") == GiveUp(seq=1, retries=10)
    assert q.dead == []


def test_a_poison_event_is_isolated_then_dead_lettered_while_other_entities_flow() -> None:
    q = Queue([event(1, A), event(2, P), event(3, B), event(4, C), event(5, D), event(6, B)])
    w = tb_window()
    assert tb_pump(w, q, 0.0) == [(1, 1, (1, 2, 3)), (2, 1, (4, 5, 6))]
    assert w.on_failure(1, 0.1, error=TENANT_ERROR) == Retry(1, "failure", (1, 2, 3), 1, 3.1)
    assert w.on_ack(2) == (4, 5, 6)  # the other message in flight is not given up
    q.commit_deployed((4, 5, 6))
    # meanwhile: C's new event goes; P's and A's wait for their failed message to settle
    q.events += [event(7, C), event(8, P), event(9, A)]
    assert tb_pump(w, q, 0.2) == [(3, 1, (7,))]
    assert w.held == (8, 9) and w.waiting == ((1, 2, 3),)
    assert w.on_ack(3) == (7,)
    q.commit_deployed((7,))
    assert tb_pump(w, q, 3.0) == []  # the resend waits for retry_interval_s
    assert tb_pump(w, q, 3.1) == [(4, 2, (1, 2, 3))]  # only the failed message, new id and epoch
    assert w.on_failure(4, 3.2, error=TENANT_ERROR) == Retry(4, "failure", (1, 2, 3), 2, 6.2)
    assert tb_pump(w, q, 6.2) == [(5, 3, (1, 2, 3))]
    # the third failure of the message: its events go one per message
    assert w.on_failure(5, 6.3, error=TENANT_ERROR) == Retry(
        5, "failure", (1, 2, 3), 3, 9.3, isolated=True)
    assert w.waiting == ((1,), (2,), (3,))
    assert tb_pump(w, q, 9.3) == [(6, 4, (1,)), (7, 5, (2,)), (8, 6, (3,))]
    assert w.on_ack(6) == (1,)
    q.commit_deployed((1,))
    assert w.on_failure(7, 9.4, error=TENANT_ERROR) == Retry(7, "failure", (2,), 1, 12.4)
    assert w.on_ack(8) == (3,)
    q.commit_deployed((3,))
    assert tb_pump(w, q, 9.5) == [(9, 6, (9,))]  # A settled: its held event goes; P's waits
    assert w.held == (8,)
    assert w.on_ack(9) == (9,)
    q.commit_deployed((9,))
    assert tb_pump(w, q, 12.4) == [(10, 7, (2,))]
    assert w.on_failure(10, 12.5, error=TENANT_ERROR) == Retry(10, "failure", (2,), 2, 15.5)
    assert tb_pump(w, q, 15.5) == [(11, 8, (2,))]
    # the third failure alone: dead, with the cloud's text; 6 sends in all (3 + 3 isolated)
    verdict = w.on_failure(11, 15.6, error=TENANT_ERROR)
    assert verdict == Retry(11, "failure", (), 3, 18.6, dead=(
        Dead(2, "DEVICE", P, f"rejected by the cloud: {TENANT_ERROR}"),))
    q.commit_dead(2)
    assert w.waiting == () and w.in_flight == []
    assert tb_pump(w, q, 15.6) == [(12, 8, (8,))]  # P settled: its later event follows
    assert w.on_ack(12) == (8,)
    q.commit_deployed((8,))
    assert q.dead == [2] and sorted(q.deployed) == [1, 3, 4, 5, 6, 7, 8, 9]
    assert q.events == [] and w.held == () and w.next_deadline() is None


def test_an_entitys_later_events_follow_its_failed_event_in_order_once_settled() -> None:
    q = Queue([event(1, A, action=Action.ADDED, lane=Lane.HIGH)])
    w = tb_window(batch_size=4)
    q.batch = 4
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    assert w.on_failure(1, 0.0, error="Rate limit reached") == Retry(1, "transient", (1,), 1, 3.0)
    q.events += [event(2, A, action=Action.UPDATED, lane=Lane.HIGH), event(3, A),
                 event(4, B), event(5, A)]
    assert tb_pump(w, q, 1.0) == [(2, 1, (4,))]  # B's goes; A's three wait
    assert w.held == (2, 3, 5)
    assert tb_pump(w, q, 3.0) == [(3, 2, (1,))]
    assert w.on_ack(2) == (4,) and w.on_ack(3) == (1,)
    q.commit_deployed((4, 1))
    # settled: the update alone first (order-sensitive), then the telemetry together
    assert tb_pump(w, q, 3.1) == [(4, 2, (2,))]
    assert tb_pump(w, q, 3.2) == []
    assert w.on_ack(4) == (2,)
    q.commit_deployed((2,))
    assert tb_pump(w, q, 3.3) == [(5, 2, (3, 5))]
    assert w.held == ()


def test_an_unanswered_message_is_resent_alone_and_the_others_stay_in_flight() -> None:
    q = Queue([event(1, A), event(2, B), event(3, C)])
    q.batch = 1
    w = tb_window(batch_size=1, max_retries=1)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,)), (2, 1, (2,)), (3, 1, (3,))]
    assert w.on_ack(2) == (2,)
    assert w.next_deadline() == 60.0
    assert w.expire(59.9) is None  # slow is not lost: no resend within the ack timeout
    assert w.expire(60.0) == Retry(1, "unanswered", (1,), 1, 60.0)
    assert w.expire(60.0) == Retry(3, "unanswered", (3,), 1, 60.0)
    assert w.expire(60.0) is None
    assert tb_pump(w, q, 60.0) == [(4, 2, (1,)), (5, 3, (3,))]
    assert w.on_ack(5) == (3,)
    assert w.expire(120.0) == GiveUp(seq=1, retries=1)  # unanswered again: max_retries (1)


def test_permanent_failures_never_make_the_link_reconnect() -> None:
    """max_retries 0: a transient failure would reconnect at once; permanent ones do not."""
    q = Queue([event(1, A), event(2, B)])
    w = tb_window(max_retries=0, permanent_after=2)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1, 2))]
    verdicts = [w.on_failure(1, 0.0, error="bad")]
    for now in (3.0, 6.0, 9.0, 12.0):
        sent = tb_pump(w, q, now)
        verdicts += [w.on_failure(msg_id, now, error="bad") for msg_id, _e, _s in sent]
    assert [(v.cause, v.seqs, v.isolated, [d.seq for d in v.dead]) for v in verdicts
            if isinstance(v, Retry)] == [
        ("failure", (1, 2), False, []), ("failure", (1, 2), True, []),
        ("failure", (1,), False, []), ("failure", (2,), False, []),
        ("failure", (), False, [1]), ("failure", (), False, [2])]
    assert len(verdicts) == 6 and w.in_flight == [] and w.waiting == ()


def test_explicit_hints_decide_over_the_error_text() -> None:
    q = Queue([event(1, A), event(2, B), event(3, C)])
    w = tb_window()
    assert tb_pump(w, q, 0.0) == [(1, 1, (1, 2, 3))]
    # retryable=true with a text that is not transient: transient all the same
    assert w.on_failure(1, 0.0, retryable=True, error="bad") == Retry(1, "transient", (1, 2, 3),
                                                                       1, 3.0)
    assert tb_pump(w, q, 3.0) == [(2, 2, (1, 2, 3))]
    # retryable=false naming an event: dead at once, the rest resent at once
    assert w.on_failure(2, 3.0, rejected_seq=2, retryable=False, error="no") == Retry(
        2, "rejected", (1, 3), 0, 3.0, dead=(Dead(2, "DEVICE", B, "rejected by the cloud: no"),))
    assert tb_pump(w, q, 3.0) == [(3, 3, (1, 3))]
    # retryable=false without a seq, with a "transient" text: it counts against the message
    assert w.on_failure(3, 3.0, retryable=False, error="Rate limit reached") == Retry(
        3, "failure", (1, 3), 1, 6.0)


def test_held_events_are_bounded_then_reading_pauses() -> None:
    q = Queue([event(1, A)])
    q.batch = 5
    w = tb_window(batch_size=5, max_held=2)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    assert w.on_failure(1, 0.0, error="bad") == Retry(1, "failure", (1,), 1, 3.0)
    q.events += [event(2, A), event(3, B), event(4, A), event(5, A), event(6, C)]
    # 2 and 4 held; 5 would be a third: reading stops before it (still pending in the store)
    assert tb_pump(w, q, 1.0) == [(2, 1, (3,))]
    assert w.held == (2, 4) and w.cursor[Lane.NORMAL] == 4
    assert tb_pump(w, q, 3.0) == [(3, 2, (1,))]
    assert w.on_ack(3) == (1,) and w.on_ack(2) == (3,)
    q.commit_deployed((1, 3))
    assert tb_pump(w, q, 3.1) == [(4, 2, (2, 4, 5, 6))]  # the held ones first, then read on


def test_ordered_peer_ignores_the_error_text() -> None:
    """Our own cloud: its hints decide; a rate-limit text changes nothing (go-back-N)."""
    q = Queue([event(s) for s in range(1, 4)])
    w = window()
    assert pump(w, q, 0.0) == [(1, 1, (1, 2, 3))]
    assert w.on_failure(1, 0.0, error="Rate limit reached") == GoBack(2, 1, 1, 5.0)
    assert pump(w, q, 5.0) == [(2, 2, (1, 2, 3))]
    assert w.on_failure(2, 5.0, error="bad") == GoBack(3, 1, 2, 10.0)


def test_held_then_another_entitys_event_committed_goes_at_its_batch_deadline() -> None:
    """A's telemetry held behind A's creation in flight: only A's answer can change that, so the
    window waits for no batch (the actor reads on the next commit again) and B's telemetry,
    committed then, goes at its own batch deadline, not after A's answer."""
    q = Queue([event(1, A, action=Action.ADDED, lane=Lane.HIGH)])
    q.batch = 5
    w = tb_window(batch_size=5)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    q.events.append(event(2, A))
    assert tb_pump(w, q, 0.5) == []  # a partial batch waits to fill
    assert w.waiting_for_batch and w.next_deadline() == 1.5
    assert tb_pump(w, q, 1.5) == []
    assert w.held == (2,)
    assert not w.waiting_for_batch  # so a commit makes the actor read
    assert w.next_deadline() == 60.0  # A's answer is all there is to wait for
    q.events.append(event(3, B))
    assert tb_pump(w, q, 2.0) == []
    assert w.next_deadline() == 3.0  # B's partial batch: its own deadline
    assert tb_pump(w, q, 3.0) == [(2, 1, (3,))]
    assert w.held == (2,)


def test_a_late_success_of_a_message_resent_after_its_ack_timeout_settles_it_once() -> None:
    q = Queue([event(1, A), event(2, B)])
    q.batch = 1
    w = tb_window(batch_size=1)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,)), (2, 1, (2,))]
    assert w.expire(60.0) == Retry(1, "unanswered", (1,), 1, 60.0)
    assert w.expire(60.0) == Retry(2, "unanswered", (2,), 1, 60.0)
    # message 2 answered late, before its resend went: it leaves the resend queue
    assert w.on_ack(2) == (2,)
    q.commit_deployed((2,))
    assert w.waiting == ((1,),)
    assert tb_pump(w, q, 60.0) == [(3, 2, (1,))]  # message 1 alone is resent
    # message 1 answered late while its resend is in flight: settled now, and only now
    assert w.on_ack(1) == (1,)
    q.commit_deployed((1,))
    assert w.on_ack(1) is None and w.on_ack(2) is None  # each answered once
    assert w.on_ack(3) == ()  # the resend's answer settles nothing more
    assert q.deployed == [2, 1] and w.in_flight == [] and w.waiting == ()
    assert w.next_deadline() is None


def test_a_resend_of_events_settled_late_is_not_resent_again_when_it_fails_or_expires() -> None:
    q = Queue([event(1, A), event(2, B)])
    q.batch = 1
    w = tb_window(batch_size=1)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,)), (2, 1, (2,))]
    assert w.expire(60.0) == Retry(1, "unanswered", (1,), 1, 60.0)
    assert w.expire(60.0) == Retry(2, "unanswered", (2,), 1, 60.0)
    assert tb_pump(w, q, 60.0) == [(3, 2, (1,)), (4, 3, (2,))]
    assert w.on_ack(1) == (1,) and w.on_ack(2) == (2,)
    assert w.on_failure(3, 61.0, error="bad") == Retry(3, "settled", (), 0, 61.0)
    assert w.expire(119.9) is None
    assert w.expire(120.0) == Retry(4, "settled", (), 1, 120.0)
    assert w.in_flight == [] and w.waiting == () and tb_pump(w, q, 120.0) == []
    # a late failure of a resent message changes nothing: its resend is on its way
    q.events.append(event(5, C))
    assert tb_pump(w, q, 121.0) == [(5, 3, (5,))]
    assert w.expire(181.0) == Retry(5, "unanswered", (5,), 1, 181.0)
    assert tb_pump(w, q, 181.0) == [(6, 4, (5,))]
    assert w.on_failure(5, 182.0, error="bad") is None
    assert w.on_ack(5) is None  # its failure was its answer: no success can follow
    assert w.on_ack(6) == (5,)


def test_the_ordered_peer_still_ignores_an_answer_to_a_message_it_went_back_over() -> None:
    q = Queue([event(1)])
    w = window()
    assert pump(w, q, 0.0) == [(1, 1, (1,))]
    assert w.expire(5.0) == GoBack(epoch=2, from_seq=1, attempt=1, resend_at=None)
    assert pump(w, q, 5.0) == [(2, 2, (1,))]
    assert w.on_ack(1) is None
    assert w.on_ack(2) == (1,)


def sized(e: StoredEvent, size: int) -> StoredEvent:
    """The event as the store reads it: ``size`` encoded bytes."""
    return dataclasses.replace(e, size=size)


def test_held_events_are_bounded_by_their_stored_size_too() -> None:
    q = Queue([event(1, A)])
    q.batch = 5
    w = tb_window(batch_size=5, max_held=100, max_held_bytes=3000)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    assert w.on_failure(1, 0.0, error="bad") == Retry(1, "failure", (1,), 1, 3.0)
    q.events += [sized(event(2, A), 1000), sized(event(3, B), 5000), sized(event(4, A), 1500),
                 sized(event(5, A), 1000), sized(event(6, C), 10)]
    # 2 and 4 held (2500 bytes); 5 would make 3500: reading stops before it
    assert tb_pump(w, q, 1.0) == [(2, 1, (3,))]
    assert w.held == (2, 4) and w.cursor[Lane.NORMAL] == 4
    assert tb_pump(w, q, 2.0) == []  # still stopped: C's event waits in the store
    assert w.held == (2, 4) and w.cursor[Lane.NORMAL] == 4
    assert tb_pump(w, q, 3.0) == [(3, 2, (1,))]
    assert w.on_ack(3) == (1,) and w.on_ack(2) == (3,)
    q.commit_deployed((1, 3))
    assert tb_pump(w, q, 3.1) == [(4, 2, (2, 4, 5, 6))]


ALARM = uuid.UUID(int=50)


def alarm(seq: int, alarm_id: uuid.UUID, device: uuid.UUID,
          action: str = Action.ADDED) -> StoredEvent:
    """An alarm event as the edge records it: its entity is the alarm, its device the
    originator in the body."""
    return StoredEvent(seq=seq, id=uuid.UUID(int=1000 + seq), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="ALARM", entity_type="ALARM", entity_id=alarm_id,
                       action=action, body={"id": str(alarm_id), "originator": str(device),
                                            "type": "overheat", "severity": "MAJOR"},
                       ts=1000 + seq, lane=Lane.HIGH)


def test_an_alarm_waits_for_its_devices_unsettled_creation() -> None:
    q = Queue([event(1, A, action=Action.ADDED, lane=Lane.HIGH)])
    q.batch = 4
    w = tb_window(batch_size=4)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    q.events += [alarm(2, ALARM, A), event(3, B)]
    assert tb_pump(w, q, 1.0) == []  # a partial batch waits to fill
    assert tb_pump(w, q, 2.0) == [(2, 1, (3,))]  # A's creation in flight: its alarm waits
    assert w.held == (2,)
    assert w.on_failure(1, 2.0, error=TENANT_ERROR) == Retry(1, "failure", (1,), 1, 5.0)
    assert w.on_ack(2) == (3,)
    q.commit_deployed((3,))
    assert tb_pump(w, q, 4.0) == []  # A's creation failed, not settled: the alarm still waits
    assert tb_pump(w, q, 5.0) == [(3, 2, (1,))]
    assert w.held == (2,)
    assert w.on_ack(3) == (1,)
    q.commit_deployed((1,))
    assert tb_pump(w, q, 5.1) == [(4, 2, (2,))]  # settled: the alarm follows
    assert w.held == ()


def asset_added(seq: int, asset: uuid.UUID) -> StoredEvent:
    return StoredEvent(seq=seq, id=uuid.UUID(int=1000 + seq), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="ASSET", entity_type="ASSET", entity_id=asset,
                       action=Action.ADDED, body={"id": str(asset), "name": f"a-{asset}",
                                                  "type": "building"},
                       ts=1000 + seq, lane=Lane.HIGH)


def relation(seq: int, src: uuid.UUID, dst: uuid.UUID,
             action: str = Action.RELATION_ADD_OR_UPDATE) -> StoredEvent:
    """A relation event as the edge records it (actors/graph_changes.py): its entity is the
    ``from`` end, the ``to`` end is in the EntityRelation JSON of its body."""
    return StoredEvent(seq=seq, id=uuid.UUID(int=1000 + seq), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="RELATION", entity_type="ASSET", entity_id=src,
                       action=action,
                       body={"from": {"entityType": "ASSET", "id": str(src)},
                             "to": {"entityType": "ASSET", "id": str(dst)}, "type": "Contains",
                             "typeGroup": "COMMON", "additionalInfo": None},
                       ts=1000 + seq, lane=Lane.NORMAL)


def test_a_relation_waits_for_the_unsettled_creation_of_its_to_end() -> None:
    q = Queue([asset_added(1, B)])
    q.batch = 4
    w = tb_window(batch_size=4)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    q.events += [relation(2, A, B), event(3, C)]
    assert tb_pump(w, q, 1.0) == []  # a partial batch waits to fill
    # B's creation in flight: the relation A -> B waits (A itself is free), C's data goes
    assert tb_pump(w, q, 2.0) == [(2, 1, (3,))]
    assert w.held == (2,)
    assert w.on_failure(1, 2.0, error=TENANT_ERROR) == Retry(1, "failure", (1,), 1, 5.0)
    assert w.on_ack(2) == (3,)
    q.commit_deployed((3,))
    assert tb_pump(w, q, 4.0) == []  # B's creation failed, not settled: the relation waits
    assert tb_pump(w, q, 5.0) == [(3, 2, (1,))]
    assert w.held == (2,)
    assert w.on_ack(3) == (1,)
    q.commit_deployed((1,))
    assert tb_pump(w, q, 5.1) == [(4, 2, (2,))]  # B acknowledged: the relation follows
    assert w.held == ()


def test_a_relation_and_the_creation_of_its_to_end_never_share_a_message() -> None:
    q = Queue([asset_added(1, B), relation(2, A, B)])
    w = tb_window(batch_size=4)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]  # read together, the relation still waits
    assert w.held == (2,)
    assert w.on_ack(1) == (1,)
    q.commit_deployed((1,))
    assert tb_pump(w, q, 0.1) == [(2, 1, (2,))]
    assert w.held == ()


def test_the_ordered_peer_sends_a_relation_with_the_creation_of_its_to_end() -> None:
    q = Queue([asset_added(1, B), relation(2, A, B)])
    w = window(batch_size=4)
    assert pump(w, q, 0.0) == [(1, 1, (1, 2))]  # applied in order: nothing to wait for


def relation_request(seq: int, entity: uuid.UUID) -> StoredEvent:
    """A request for an entity's relations as link/relation_requests.py appends it."""
    return StoredEvent(seq=seq, id=uuid.UUID(int=1000 + seq), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="ASSET", entity_type="ASSET", entity_id=entity,
                       action=Action.RELATION_REQUEST, body={}, ts=1000 + seq, lane=Lane.NORMAL)


def test_a_relation_request_stays_behind_a_held_relation_to_its_entity() -> None:
    """ThingsBoard answers a request with the relations as they are when it reads them: a
    request for A sent ahead of the edge's delete of C -> A (held while C is busy) would bring
    C -> A back onto the edge, and the delete would then remove it from the cloud only."""
    q = Queue([asset_added(1, C)])
    q.batch = 4
    w = tb_window(batch_size=4)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    q.events += [relation(2, C, A, Action.RELATION_DELETED), relation_request(3, A), event(4, B)]
    assert tb_pump(w, q, 1.0) == []  # a partial batch waits to fill
    # C's creation in flight: the delete of C -> A waits, and so does the request for A; B goes
    assert tb_pump(w, q, 2.0) == [(2, 1, (4,))]
    assert w.held == (2, 3)
    assert w.on_ack(2) == (4,)
    q.commit_deployed((4,))
    assert w.on_ack(1) == (1,)
    q.commit_deployed((1,))
    # C acknowledged: the delete goes alone, the request waits for its answer
    assert tb_pump(w, q, 2.1) == [(3, 1, (2,))]
    assert w.held == (3,)
    assert tb_pump(w, q, 3.5) == []  # past the batch deadline: the delete still in flight
    assert w.held == (3,)
    assert w.on_ack(3) == (2,)
    q.commit_deployed((2,))
    assert tb_pump(w, q, 3.6) == [(4, 1, (3,))]
    assert w.held == ()


def test_a_relation_request_waits_for_a_relation_to_its_entity_in_flight_or_failed() -> None:
    q = Queue([relation(1, C, A, Action.RELATION_DELETED)])
    w = tb_window(batch_size=4)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]
    q.events += [relation_request(2, A), relation_request(3, C), relation_request(4, B)]
    assert tb_pump(w, q, 1.0) == []  # a partial batch waits to fill
    # C -> A in flight: neither end's request goes (C is the relation's entity, A its to end)
    assert tb_pump(w, q, 2.0) == [(2, 1, (4,))]
    assert w.held == (2, 3)
    assert w.on_ack(2) == (4,)
    q.commit_deployed((4,))
    # the delete failed: while it waits for its resend, and while the resend is in flight,
    # both requests wait
    assert w.on_failure(1, 2.0, error=TENANT_ERROR) == Retry(1, "failure", (1,), 1, 5.0)
    assert tb_pump(w, q, 3.0) == []
    assert w.held == (2, 3)
    assert tb_pump(w, q, 5.0) == [(3, 2, (1,))]
    assert tb_pump(w, q, 6.5) == []
    assert w.held == (2, 3)
    assert w.on_ack(3) == (1,)
    q.commit_deployed((1,))
    assert tb_pump(w, q, 6.6) == [(4, 2, (2, 3))]
    assert w.held == ()


def test_a_relation_request_and_a_relation_to_its_entity_never_share_a_message() -> None:
    q = Queue([relation(1, C, A, Action.RELATION_DELETED), relation_request(2, A)])
    w = tb_window(batch_size=4)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,))]  # read together, the request still waits
    assert w.held == (2,)
    assert w.on_ack(1) == (1,)
    q.commit_deployed((1,))
    assert tb_pump(w, q, 0.1) == [(2, 1, (2,))]


def test_a_resend_due_is_taken_without_reading_the_queue() -> None:
    q = Queue([event(1, A), event(2, B)])
    q.batch = 1
    w = tb_window(window=2, batch_size=1)
    assert tb_pump(w, q, 0.0) == [(1, 1, (1,)), (2, 1, (2,))]
    assert w.on_failure(1, 0.0, error="bad") == Retry(1, "failure", (1,), 1, 3.0)
    reads = q.reads
    assert w.take_resend(2.9, max_bytes=MAX_BYTES, owner=OWNER) is None  # not due yet
    took = w.take_resend(3.0, max_bytes=MAX_BYTES, owner=OWNER)
    assert took is not None and took.msg is not None
    assert (took.msg.uplinkMsgId, took.seqs, took.more) == (3, (1,), True)
    assert q.reads == reads  # nothing read for it
    assert w.on_failure(3, 3.0, error="bad") == Retry(3, "failure", (1,), 2, 6.0)
    q.events.append(event(4, C))
    assert tb_pump(w, q, 3.0) == [(4, 2, (4,))]  # the window is full again (2 and 4)
    assert w.take_resend(6.0, max_bytes=MAX_BYTES, owner=OWNER) is None  # due, but no room
    assert w.on_ack(4) == (4,)
    assert tb_pump(w, q, 6.0) == [(5, 3, (1,))]
    assert q.reads == reads + 1  # only the read that found event 4


def test_a_message_left_with_one_event_counts_that_events_failures_from_zero() -> None:
    q = Queue([event(1, A), event(2, B)])
    w = tb_window()
    assert tb_pump(w, q, 0.0) == [(1, 1, (1, 2))]
    assert w.on_failure(1, 0.0, error="bad") == Retry(1, "failure", (1, 2), 1, 3.0)
    assert tb_pump(w, q, 3.0) == [(2, 2, (1, 2))]
    assert w.on_failure(2, 3.0, error="bad") == Retry(2, "failure", (1, 2), 2, 6.0)
    assert tb_pump(w, q, 6.0) == [(3, 3, (1, 2))]
    # the cloud names event 2 for good: event 1 is left alone, with permanent_after failures
    assert w.on_failure(3, 6.0, rejected_seq=2, retryable=False, error="no") == Retry(
        3, "rejected", (1,), 0, 6.0, dead=(Dead(2, "DEVICE", B, "rejected by the cloud: no"),))
    q.commit_dead(2)
    assert tb_pump(w, q, 6.0) == [(4, 4, (1,))]
    assert w.on_failure(4, 6.0, error="bad") == Retry(4, "failure", (1,), 1, 9.0)
    assert tb_pump(w, q, 9.0) == [(5, 5, (1,))]
    assert w.on_failure(5, 9.0, error="bad") == Retry(5, "failure", (1,), 2, 12.0)
    assert tb_pump(w, q, 12.0) == [(6, 6, (1,))]
    assert w.on_failure(6, 12.0, error="bad") == Retry(6, "failure", (), 3, 15.0, dead=(
        Dead(1, "DEVICE", A, "rejected by the cloud: bad"),))


def test_msg_ids_wrapping_skip_ids_still_in_flight() -> None:
    q = Queue([event(1)])
    q.batch = 1
    w = window(batch_size=1, window=3)
    assert pump(w, q, 0.0) == [(1, 1, (1,))]
    w._next_msg_id = 2**31 - 1
    q.events += [event(2), event(3)]
    assert pump(w, q, 1.0) == [(2**31 - 1, 1, (2,)), (2, 1, (3,))]  # 1 is still in flight
    assert [f.msg_id for f in w.in_flight] == [1, 2**31 - 1, 2]
    assert w.on_ack(1) == (1,) and w.on_ack(2**31 - 1) == (2,) and w.on_ack(2) == (3,)


# -- the operator's replay of dead letters ------------------------------------------------------


def test_replayed_dead_letters_are_read_again_once_nothing_is_in_flight() -> None:
    """A replayed dead letter is below the cursor: the window reads from just before it, but
    only once no message read after it awaits an answer (those would be read twice)."""
    w = window(window=2, batch_size=3)
    q = Queue([event(s) for s in (1, 3, 4, 5, 6, 7)])  # seq 2 is a dead letter
    assert pump(w, q, 0.0) == [(1, 1, (1, 3, 4)), (2, 1, (5, 6, 7))]
    q.commit_deployed(w.on_ack(1) or ())
    q.events.insert(0, event(2))  # the operator's replay: PENDING again
    w.replayed([(2, Lane.NORMAL)])
    assert pump(w, q, 0.1) == []  # message 2 still in flight: the rewind waits
    assert w.cursor[Lane.NORMAL] == 7
    q.commit_deployed(w.on_ack(2) or ())
    assert pump(w, q, 0.2) == [(3, 1, (2,))]
    q.commit_deployed(w.on_ack(3) or ())
    assert q.events == [] and q.deployed == [1, 3, 4, 5, 6, 7, 2]
    assert pump(w, q, 0.3) == []  # read once


def test_a_replay_waits_for_the_acknowledgements_to_be_committed() -> None:
    """Acknowledged a moment ago, its MarkDeployed not yet committed, an event is still
    PENDING in the store: the rewind waits for the commit, else it would be sent twice."""
    w = window(window=2, batch_size=3)
    q = Queue([event(s) for s in (5, 6, 7)])  # seq 2 is a dead letter
    assert pump(w, q, 0.0) == [(1, 1, (5, 6, 7))]
    q.events.insert(0, event(2))  # the operator's replay
    w.replayed([(2, Lane.NORMAL)])
    acked = w.on_ack(1)
    assert acked == (5, 6, 7)
    assert pump(w, q, 0.1, settled=False) == []  # 5, 6, 7 still PENDING in the store
    q.commit_deployed(acked)
    assert pump(w, q, 0.2) == [(2, 1, (2,))]
    q.commit_deployed(w.on_ack(2) or ())
    assert q.deployed == [5, 6, 7, 2] and q.events == []


def test_a_pending_replay_stops_new_reads_until_the_window_drains() -> None:
    """A busy link would otherwise keep the window full and the replay waiting for the whole
    backlog: while a rewind waits, nothing new is sent; the replay goes first, then the rest."""
    w = window(window=2, batch_size=1)
    q = Queue([event(s) for s in (5, 6, 7, 8)])
    q.batch = 1
    assert pump(w, q, 0.0) == [(1, 1, (5,)), (2, 1, (6,))]
    q.events.insert(0, event(2))
    w.replayed([(2, Lane.NORMAL)])
    q.commit_deployed(w.on_ack(1) or ())
    assert pump(w, q, 0.1) == []  # message 2 in flight: nothing new (7 waits)
    q.commit_deployed(w.on_ack(2) or ())
    assert pump(w, q, 0.2) == [(3, 1, (2,)), (4, 1, (7,))]
    q.commit_deployed(w.on_ack(3) or ())
    q.commit_deployed(w.on_ack(4) or ())
    assert pump(w, q, 0.3) == [(5, 1, (8,))]
    q.commit_deployed(w.on_ack(5) or ())
    assert q.deployed == [5, 6, 2, 7, 8] and q.events == []
