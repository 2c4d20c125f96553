"""When the link may send an operator's sync request (link/held_sync.py): requests held while a
sync runs are merged into one, full if any was, dated by the latest; sent RELEASE_DELAY_S after
the running sync completes (a request within RELEASE_DELAY_S of a completion waits too), or
dropped as covered by the sync a reconnect asked for; a request the cloud does not answer in
time is sent again once, then the link reconnects."""

from __future__ import annotations

import pytest

from edge_sync.link.held_sync import (
    MAX_WAITS_AFTER_RESEND,
    RELEASE_DELAY_S,
    HeldSync,
    SyncGate,
    Unanswered,
    hold,
)

T0 = 1_700_000_000_000


def test_requests_held_together_become_one_full_if_any_was_dated_by_the_latest() -> None:
    held = hold(None, full=False, reason="ops: check", now_ms=T0, stream_id=3)
    assert held == HeldSync(False, "ops: check", T0, 3, 1)
    held = hold(held, full=True, reason="ops: restore", now_ms=T0 + 5, stream_id=3)
    assert held == HeldSync(True, "ops: restore", T0 + 5, 3, 2)
    held = hold(held, full=False, reason="ops: again", now_ms=T0 + 9, stream_id=3)
    assert held == HeldSync(True, "ops: restore", T0 + 9, 3, 3)
    held = hold(held, full=True, reason="ops: later full", now_ms=T0 + 20, stream_id=4)
    assert held == HeldSync(True, "ops: restore", T0 + 20, 4, 4)
    assert held.view() == {"full": True, "reason": "ops: restore", "requested_ms": T0 + 20,
                           "requests": 4}


@pytest.mark.parametrize("full", [True, False])
def test_a_request_merged_during_a_reconnects_sync_is_not_covered_by_that_sync(
        full: bool) -> None:
    """Held on stream 3, which was lost; asked again while stream 4's connect sync runs: that
    sync started before the second request, so its completion does not cover it (a full one
    would also have cleared the durable request, losing it)."""
    held = hold(None, full=full, reason="ops: first", now_ms=T0, stream_id=3)
    held = hold(held, full=full, reason="ops: second", now_ms=T0 + 50, stream_id=4)
    assert (held.stream_id, held.requested_ms, held.requests) == (4, T0 + 50, 2)
    assert held.release(4, completed_full=True) == "send"
    assert held.release(4, completed_full=False) == "send"
    assert held.release(5, completed_full=True) == "covered"  # a sync started after it


@pytest.mark.parametrize(("full", "completed_on", "completed_full", "expected"), [
    (True, 3, False, "send"),  # the sync it waited for, on its stream
    (True, 3, True, "send"),  # a full sync that started before the request: not this one
    (False, 3, True, "send"),
    (True, 4, False, "send"),  # a reconnect's incremental sync does not do a full one's work
    (True, 4, True, "covered"),  # the reconnect's full sync (the request is durable)
    (False, 4, False, "covered"),  # any sync after the reconnect is a sync
])
def test_a_held_request_is_sent_unless_a_reconnects_sync_covered_it(
        full: bool, completed_on: int, completed_full: bool, expected: str) -> None:
    held = hold(None, full=full, reason="ops", now_ms=T0, stream_id=3)
    assert held.release(completed_on, completed_full) == expected


WAIT_S = 30.0  # the link's sync deadline


def connected_gate(completed_at: float) -> SyncGate:
    """A gate whose connect sync completed at ``completed_at``."""
    gate = SyncGate()
    gate.stream_syncing()
    gate.completed(completed_at)
    return gate


def test_nothing_goes_out_while_the_connects_sync_runs_nor_within_the_delay_after_it() -> None:
    gate = SyncGate()
    gate.stream_syncing()
    assert (gate.may_send(0.0), gate.quiet_in(0.0), gate.next_due()) == (False, None, None)
    held = gate.hold(full=False, reason="ops", now_ms=T0, stream_id=1)
    assert gate.release(1000.0) is None  # still running: its completion comes first
    gate.completed(10.0)
    assert gate.next_due() == 10.0 + RELEASE_DELAY_S
    assert gate.release(10.0 + RELEASE_DELAY_S - 0.01) is None
    assert gate.release(10.0 + RELEASE_DELAY_S) == held
    assert (gate.held, gate.next_due()) == (None, None)
    assert gate.may_send(10.0 + RELEASE_DELAY_S)


def test_a_request_right_after_a_completion_is_held_until_the_delay_has_passed() -> None:
    gate = connected_gate(10.0)
    assert not gate.may_send(10.4)
    assert gate.quiet_in(10.4) == pytest.approx(RELEASE_DELAY_S - 0.4)
    held = gate.hold(full=True, reason="ops", now_ms=T0, stream_id=1)
    assert gate.next_due() == 10.0 + RELEASE_DELAY_S
    assert not gate.may_send(10.0 + RELEASE_DELAY_S)  # the held one goes first
    assert gate.release(10.0 + RELEASE_DELAY_S) == held
    assert gate.may_send(10.0 + RELEASE_DELAY_S)


def test_a_request_sent_waits_for_its_completion_the_wait_restarting_on_progress() -> None:
    gate = connected_gate(0.0)
    asked = HeldSync(False, "ops", T0, 1)
    gate.sent(asked, 5.0, WAIT_S)
    assert (gate.may_send(6.0), gate.quiet_in(6.0), gate.next_due()) == (False, None, 35.0)
    gate.progress(20.0, WAIT_S, peer_answers_every_request=True)  # the reference cloud
    assert gate.next_due() == 50.0
    assert gate.unanswered(49.9, WAIT_S) is None
    gate.completed(40.0)
    assert (gate.unanswered(100.0, WAIT_S), gate.next_due()) == (None, None)
    assert gate.may_send(40.0 + RELEASE_DELAY_S)


def test_an_unanswered_request_is_sent_again_once_then_the_link_reconnects() -> None:
    gate = connected_gate(0.0)
    asked = HeldSync(False, "check", T0, 1)
    gate.sent(asked, 5.0, WAIT_S)
    held = gate.hold(full=True, reason="restore", now_ms=T0 + 1, stream_id=1)
    assert gate.unanswered(35.0, WAIT_S) == Unanswered(asked, again=True)
    assert gate.held == held  # not merged into the resend: held until its completion
    assert gate.next_due() == 65.0
    assert (gate.unanswered(64.0, WAIT_S), gate.release(64.0)) == (None, None)
    assert gate.unanswered(65.0, WAIT_S) == Unanswered(asked, again=False)
    assert (gate.next_due(), gate.may_send(65.0), gate.release(65.0)) == (None, False, None)
    gate.stream_syncing()  # the reconnect
    gate.completed(70.0)
    assert gate.release(70.0 + RELEASE_DELAY_S) == held


def test_a_resend_answered_ends_the_wait_and_releases_the_held_request() -> None:
    gate = connected_gate(0.0)
    asked = HeldSync(True, "restore", T0, 1)
    gate.sent(asked, 5.0, WAIT_S)
    assert gate.unanswered(35.0, WAIT_S) == Unanswered(asked, again=True)
    held = gate.hold(full=False, reason="check", now_ms=T0 + 40_000, stream_id=1)
    gate.completed(50.0)
    assert gate.unanswered(200.0, WAIT_S) is None
    assert gate.release(50.0 + RELEASE_DELAY_S) == held
    gate.sent(held, 51.0, WAIT_S)  # a new request: a resend of its own if ignored
    assert gate.unanswered(81.0, WAIT_S) == Unanswered(held, again=True)


def test_a_peer_that_may_ignore_a_request_does_not_put_its_resend_off_with_other_downlinks(
        ) -> None:
    """ThingsBoard ignored the request and goes on sending its ordinary downlinks (one every
    20 s here): they do not restart the wait before the resend, and after it only up to
    MAX_WAITS_AFTER_RESEND waits from the resend; then the link reconnects."""
    gate = connected_gate(0.0)
    asked = HeldSync(True, "restore", T0, 1)
    gate.sent(asked, 5.0, WAIT_S)
    gate.progress(20.0, WAIT_S, peer_answers_every_request=False)
    assert gate.next_due() == 35.0
    assert gate.unanswered(35.0, WAIT_S) == Unanswered(asked, again=True)
    now, outcome = 35.0, None
    while outcome is None and now < 10_000.0:
        now += 20.0
        gate.progress(now, WAIT_S, peer_answers_every_request=False)
        due = gate.next_due()
        assert due is not None and due <= 35.0 + MAX_WAITS_AFTER_RESEND * WAIT_S
        outcome = gate.unanswered(now, WAIT_S)
    assert outcome == Unanswered(asked, again=False)
    assert 35.0 + (MAX_WAITS_AFTER_RESEND - 1) * WAIT_S < now <= (
        35.0 + MAX_WAITS_AFTER_RESEND * WAIT_S + 20.0)
