"""When the link may send an operator's SyncRequestMsg on its stream, the request held until
then, and what becomes of a request the cloud does not answer. Pure logic: the ConnectionActor
keeps one ``SyncGate``, which holds at most one ``HeldSync``.

ThingsBoard runs one sync per edge session: EdgeGrpcSession.startSyncProcess ignores a
SyncRequestMsg while its sync is in progress ("Sync is already started, skipping starting it
now") and sends no SyncCompletedMsg for it. So the edge never sends a second request while one
is unanswered: it holds the operator's request and sends it once the running sync completes,
with every peer. Requests held together become one: full if any of them was.

It is sent RELEASE_DELAY_S after that sync's SyncCompletedMsg is applied, not at once, and a
request that comes within RELEASE_DELAY_S of a completion is held until then too:
ThingsBoard clears its "sync in progress" flag only when the future of the SyncCompletedMsg's
pack completes, in a callback on another executor (EdgeGrpcSession.doSync ->
markSyncCompletedSendEdgeEventUpdate, run after onDownlinkResponse found the pack answered), so
a request right behind the acknowledgement can still find the old sync "already started".

A request sent while connected waits ``wait_s`` (the link's sync deadline) for its
SyncCompletedMsg. With the reference cloud, which answers every request, the wait restarts on
every downlink applied for the first time, as the connect's does: they are the sync's. A
ThingsBoard server that ignored the request goes on sending its ordinary downlinks (changes
queued meanwhile, attribute updates, RPC requests), which would put the wait off for ever: its
downlinks do not restart the wait before the resend below (a resend while its sync runs is
ignored too, so sending it early costs nothing), and after it they restart it only up to
MAX_WAITS_AFTER_RESEND waits from the resend. When the wait runs out, the cloud ignored the
request (its flag was cleared later than RELEASE_DELAY_S): the same request is sent once more.
It is the same request: no new full sync generation, and not counted as another request on the
stream (the DownlinkActor counts a stream's SyncCompletedMsgs against its requests), so the one
SyncCompletedMsg that comes answers it whether the cloud ran the first or the second. The
request held meanwhile is not merged into it (a full one would start a generation that a slow
incremental sync's completion could end, removing what it never sent): it waits for that
completion. When the resent request is not answered either, the cloud's session does not sync
at all (its flag stays set for good when a sync fails: doSync's onFailure only logs): the link
reconnects, and the new session's sync answers for both (a full request is durable).

A held request outlives its stream: the next connect asks for a sync of its own (a full one
when a full sync was asked for: the request is durable, link/state.py sync_mode). When that
sync completes, the held request is sent only if the connect's sync did not cover it (a full
request after an incremental sync). A request merged into it while that sync ran came after
the sync started: the merged request belongs to the new stream and is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Release = Literal["send", "covered"]

RELEASE_DELAY_S = 1.0
"""How long after the running sync's completion the held request is sent (see above)."""
MAX_WAITS_AFTER_RESEND = 10
"""With a peer that may ignore a request (ThingsBoard): after the resend, downlinks restart the
wait for its completion up to this many waits from the resend, no further (see above)."""


@dataclass(frozen=True, slots=True)
class HeldSync:
    """A sync request not sent yet: a sync was running on stream ``stream_id`` when the latest
    of the ``requests`` merged into it came, at ``requested_ms``."""

    full: bool
    reason: str
    requested_ms: int
    stream_id: int
    requests: int = 1  # operator requests merged into it

    def merged(self, full: bool, reason: str, now_ms: int, stream_id: int) -> HeldSync:
        """Another request, at ``now_ms`` on stream ``stream_id``, while this one is held: one
        request, full if either is (with the full one's reason; the first's when both are
        alike), made when and where the latest was. The latest came after the sync running on
        ``stream_id`` started, so only a sync started later covers the merged request (see
        ``release``): were it still dated by an earlier stream, that stream's reconnect sync,
        already under way when the latest request came, would count as covering it."""
        upgraded = full and not self.full
        return HeldSync(self.full or full, reason if upgraded else self.reason,
                        now_ms, stream_id, self.requests + 1)

    def release(self, stream_id: int, completed_full: bool) -> Release:
        """A sync completed on ``stream_id`` (a full one or not): "send" this request now, or
        it was "covered" by that sync, the one a reconnect asked for after this request's
        stream ended."""
        if stream_id != self.stream_id and (completed_full or not self.full):
            return "covered"
        return "send"

    def view(self) -> dict[str, Any]:
        """What status shows of it."""
        return {"full": self.full, "reason": self.reason, "requested_ms": self.requested_ms,
                "requests": self.requests}


def hold(held: HeldSync | None, *, full: bool, reason: str, now_ms: int,
         stream_id: int) -> HeldSync:
    """The request held, merged with the one held already (if any)."""
    if held is None:
        return HeldSync(full, reason, now_ms, stream_id)
    return held.merged(full, reason, now_ms, stream_id)


@dataclass(frozen=True, slots=True)
class Unanswered:
    """The cloud did not answer the sync request ``request`` in time: send it ``again``, or
    (the second time) reconnect."""

    request: HeldSync
    again: bool


class SyncGate:
    """The sync requests the link sends after its connect's, on one stream at a time (times on
    the clock's monotonic scale; one thread)."""

    def __init__(self) -> None:
        self.held: HeldSync | None = None
        self._quiet_at: float | None = None  # requests may go from then; None: one outstanding
        self._asked: HeldSync | None = None  # the request sent while connected, unanswered
        self._answer_due: float | None = None  # ... when it counts as ignored
        self._resent_at: float | None = None  # ... when it was sent the second time

    def stream_syncing(self) -> None:
        """The connect's sync request went out on a new stream (the link times it itself)."""
        self._quiet_at = self._asked = self._answer_due = self._resent_at = None

    def may_send(self, now: float) -> bool:
        """Whether a request may go out now: no sync outstanding, the last one completed at
        least RELEASE_DELAY_S ago, and none held (it would go first)."""
        return self.held is None and self._quiet_at is not None and now >= self._quiet_at

    def quiet_in(self, now: float) -> float | None:
        """How long until requests may go out, the last sync having completed; None while a
        sync is outstanding."""
        return None if self._quiet_at is None else max(0.0, self._quiet_at - now)

    def hold(self, *, full: bool, reason: str, now_ms: int, stream_id: int) -> HeldSync:
        """A request that may not go out now: held, merged with the one held already."""
        self.held = hold(self.held, full=full, reason=reason, now_ms=now_ms, stream_id=stream_id)
        return self.held

    def sent(self, request: HeldSync, now: float, wait_s: float) -> None:
        """``request`` went out on the connected stream: it waits for its SyncCompletedMsg."""
        self._quiet_at = self._resent_at = None
        self._asked, self._answer_due = request, now + wait_s

    def progress(self, now: float, wait_s: float, *, peer_answers_every_request: bool) -> None:
        """A downlink applied for the first time while a request is outstanding: the wait for
        its completion starts again, if the downlink can be the sync's (see the module's
        docstring)."""
        if self._answer_due is None:
            return
        if peer_answers_every_request:
            self._answer_due = now + wait_s
        elif self._resent_at is not None:
            self._answer_due = min(now + wait_s,
                                   self._resent_at + MAX_WAITS_AFTER_RESEND * wait_s)

    def completed(self, now: float) -> None:
        """The sync outstanding on the stream completed (its SyncCompletedMsg applied)."""
        self._quiet_at = now + RELEASE_DELAY_S
        self._asked = self._answer_due = self._resent_at = None

    def next_due(self) -> float | None:
        """When ``unanswered`` or ``release`` next has something to do; None: nothing to wait
        for."""
        due = [t for t in (self._answer_due, self._quiet_at if self.held else None)
               if t is not None]
        return min(due) if due else None

    def unanswered(self, now: float, wait_s: float) -> Unanswered | None:
        """The request sent while connected, if its wait ran out: ``again`` the first time (it
        is sent again now and waits anew), not the second (the link reconnects)."""
        if self._answer_due is None or now < self._answer_due or self._asked is None:
            return None
        if self._resent_at is not None:
            self._answer_due = None
            return Unanswered(self._asked, again=False)
        self._answer_due, self._resent_at = now + wait_s, now
        return Unanswered(self._asked, again=True)

    def release(self, now: float) -> HeldSync | None:
        """The held request, taken, once its time has come (RELEASE_DELAY_S after the last
        completion)."""
        if self.held is None or self._quiet_at is None or now < self._quiet_at:
            return None
        held, self.held = self.held, None
        return held
