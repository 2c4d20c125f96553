"""An operator's sync request held while a sync runs (link/held_sync.py): requests merged into
one, full if any was; sent when the running sync completes, or dropped as covered by the sync
a reconnect asked for when that sync was full (or the request incremental)."""

from __future__ import annotations

import pytest

from edge_sync.link.held_sync import HeldSync, hold

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
