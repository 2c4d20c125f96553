"""The DownlinkActor's messages with the ConnectionActor: a downlink to apply, the start of a
full sync, and the answer that the ConnectionActor turns into a DownlinkResponseMsg (with the
identity, customer and device profiles a downlink brought). link/downlink_actor.py re-exports
them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_sync.proto import edge_pb2


@dataclass(frozen=True, slots=True)
class ApplyDownlink:
    """From the ConnectionActor: a downlink that arrived on stream ``stream_id``. The message
    object is handed over; the sender never touches it again. ``peer_ordered``: the peer of that
    stream, as its ConnectResponseMsg said (whatever the link has become since), is the
    reference cloud (cloudCapabilities with orderedApply): it sends relations in its full sync
    and resends a downlink answered ``retryable``. False: a ThingsBoard server, whose full sync
    carries no relations (it sends an entity's relations when asked, link/relation_requests.py)
    and which drops a downlink answered success=false (a store failure leaves it unanswered)."""

    stream_id: int
    msg: Any = field(compare=False)  # edge_pb2.DownlinkMsg
    peer_ordered: bool = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class FullSyncStarted:
    """From the ConnectionActor, just before it sends SyncRequestMsg{fullSync=true} on stream
    ``stream_id``: a new sync generation starts. ``earlier_syncs``: the sync requests sent on
    that stream before it; as many SyncCompletedMsgs on the stream are theirs, not this
    sync's (the cloud answers a stream's requests in order)."""

    stream_id: int
    reason: str
    earlier_syncs: int = 0


@dataclass(frozen=True, slots=True)
class DownlinkApplied:
    """To the ConnectionActor: acknowledge downlink_id on stream_id."""

    stream_id: int
    downlink_id: int
    success: bool
    error: str = ""
    duplicate: bool = False
    sync_completed: bool = False
    identity: tuple[uuid.UUID, uuid.UUID] | None = None  # (tenant, edge) from edgeConfiguration
    customer_id: uuid.UUID | None = None  # ... and its customer (nil: none)
    # the synced device profiles (name -> id) after this downlink, when it changed them
    device_profiles: Mapping[str, uuid.UUID] | None = field(default=None, hash=False)
    # on failure: the edge's own temporary failure (its store), worth resending (True), or
    # content it refuses (False); None on success
    retryable: bool | None = None

    def response(self) -> edge_pb2.DownlinkResponseMsg:
        """The DownlinkResponseMsg answering the downlink (retryable set on a failure)."""
        msg = edge_pb2.DownlinkResponseMsg(success=self.success, errorMsg=self.error,
                                           downlinkMsgId=self.downlink_id)
        if self.retryable is not None:
            msg.retryable = self.retryable
        return msg
