"""An operator's sync request held while a sync runs on the link, and what becomes of it when
that sync completes. Pure logic: the ConnectionActor keeps at most one ``HeldSync``.

ThingsBoard runs one sync per edge session: EdgeGrpcSession.startSyncProcess ignores a
SyncRequestMsg while its sync is in progress ("Sync is already started, skipping starting it
now") and sends no SyncCompletedMsg for it. So the edge never sends a second request while one
is unanswered: it holds the operator's request and sends it once the running sync completes,
with every peer. Requests held together become one: full if any of them was.

It is sent RELEASE_DELAY_S after that sync's SyncCompletedMsg is applied, not at once:
ThingsBoard clears its "sync in progress" flag only when the future of the SyncCompletedMsg's
pack completes, in a callback on another executor (EdgeGrpcSession.doSync ->
markSyncCompletedSendEdgeEventUpdate, run after onDownlinkResponse found the pack answered), so
a request right behind the acknowledgement can still find the old sync "already started".

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
