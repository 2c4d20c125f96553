"""mqtt/acks.py: acknowledgements leave in arrival order, each once its commit settled; the
line's length is the connection's inflight count; deadlines are checked on the oldest waiting
entry only; draining at the end hands over what was still owed."""

from __future__ import annotations

import math

from edge_sync.mqtt.acks import AckQueue, Reply


def test_replies_leave_in_arrival_order_once_settled() -> None:
    q = AckQueue()
    first = q.add(Reply.PUBACK, 1, deadline=10.0)
    second = q.add(Reply.PUBREC, 2, deadline=11.0)
    q.add_settled(Reply.PUBCOMP, 7)
    assert len(q) == 3
    second.settle()
    assert q.pop_due() is None  # the first still waits: nothing overtakes it
    first.settle()
    assert [(e.reply, e.packet_id) for e in iter(q.pop_due, None)] == [
        (Reply.PUBACK, 1), (Reply.PUBREC, 2), (Reply.PUBCOMP, 7)]
    assert len(q) == 0


def test_a_settled_entry_on_an_empty_line_is_due_at_once() -> None:
    q = AckQueue()
    entry = q.add_settled(Reply.PUBACK, 3)
    assert entry.deadline == math.inf
    assert q.pop_due() is entry
    assert q.pop_due() is None


def test_a_failure_is_handed_over_in_its_turn_with_its_error() -> None:
    q = AckQueue()
    ok = q.add(Reply.NONE, 0, deadline=1.0)
    bad = q.add(Reply.PUBACK, 5, deadline=2.0)
    error = RuntimeError("storage full")
    bad.settle(error)
    bad.settle(None)  # only the first outcome counts
    ok.settle()
    assert q.pop_due() is ok
    due = q.pop_due()
    assert due is bad and due.error is error


def test_only_the_oldest_waiting_entry_can_be_overdue() -> None:
    q = AckQueue()
    assert q.next_deadline() is None
    first = q.add(Reply.PUBACK, 1, deadline=5.0)
    q.add(Reply.PUBACK, 2, deadline=6.0)
    assert q.next_deadline() == 5.0
    assert q.pop_overdue(4.9) is None
    assert q.pop_overdue(5.0) is first
    assert q.next_deadline() == 6.0
    q.add_settled(Reply.PUBACK, 3)
    assert len(q) == 2


def test_a_settled_head_has_no_deadline_and_is_never_overdue() -> None:
    q = AckQueue()
    q.add(Reply.PUBACK, 1, deadline=5.0).settle()
    assert q.next_deadline() is None
    assert q.pop_overdue(100.0) is None


def test_drain_empties_the_line_and_returns_what_was_owed() -> None:
    q = AckQueue()
    a = q.add(Reply.PUBREC, 1, deadline=1.0)
    b = q.add_settled(Reply.PUBACK, 2)
    assert q.drain() == [a, b]
    assert len(q) == 0 and q.pop_due() is None


def test_a_long_line_taken_while_it_grows_keeps_its_order() -> None:
    """The line is a list read from a head index, cut now and then: thousands of entries
    added and taken in turns come out once each, in order."""
    q = AckQueue()
    added, taken = 0, []
    for _ in range(50):
        for _ in range(100):
            q.add(Reply.PUBACK, added, deadline=1.0).settle()
            added += 1
        for _ in range(60):
            entry = q.pop_due()
            assert entry is not None
            taken.append(entry.packet_id)
        assert len(q) == added - len(taken)
    taken += [e.packet_id for e in iter(q.pop_due, None)]
    assert taken == list(range(added)) and len(q) == 0
