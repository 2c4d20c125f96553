"""The DownlinkActor's in-memory bookkeeping of the full sync under way (its generation and
flags are durable in the graph store, storage/graph_sync.py): the stream it runs on, how many
SyncCompletedMsgs on that stream still answer earlier sync requests (the cloud answers a
stream's requests in order), and the completions counted on the latest stream. A write
attempt works on a copy (LmdbStore.write may run its function again), adopted once the write
commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Completion = Literal["full", "earlier", "other"]
"""What a SyncCompletedMsg is: the end of the full sync under way, the answer to an earlier
request on its stream, or the end of some other sync."""


@dataclass(slots=True)
class FullSync:
    """The full sync under way (in memory; its generation and flags are durable)."""

    stream_id: int
    skip: int  # sync completions on the stream that belong to earlier requests


@dataclass(slots=True)
class SyncTrack:
    """The full sync as one write attempt sees it: a copy, adopted once the write commits;
    with the SyncCompletedMsgs applied on the latest stream (stream id, count)."""

    full: FullSync | None
    completions: tuple[int, int]

    def in_sync(self, stream_id: int) -> bool:
        """Whether a downlink of ``stream_id`` belongs to the full sync under way."""
        return self.full is not None and self.full.stream_id == stream_id

    def completed(self, stream_id: int) -> Completion:
        """A SyncCompletedMsg on ``stream_id``: counted, and what it is (the full sync under
        way is over when it is "full")."""
        stream, n = self.completions
        self.completions = (stream_id, n + 1 if stream == stream_id else 1)
        full = self.full
        if full is None or full.stream_id != stream_id:
            return "other"
        if full.skip > 0:  # an earlier request's completion
            full.skip -= 1
            return "earlier"
        self.full = None
        return "full"


class FullSyncBook:
    """The DownlinkActor's own (one thread) record of the full sync under way."""

    def __init__(self) -> None:
        self._full: FullSync | None = None
        self._completions = (0, 0)  # (stream, SyncCompletedMsgs applied on it)

    def attempt(self) -> SyncTrack:
        """A copy for one write attempt."""
        full = None if self._full is None else FullSync(self._full.stream_id, self._full.skip)
        return SyncTrack(full, self._completions)

    def adopt(self, track: SyncTrack) -> None:
        """The write of ``track``'s attempt committed."""
        self._full, self._completions = track.full, track.completions

    def started(self, stream_id: int, earlier_syncs: int) -> None:
        """A full sync starts on ``stream_id`` after ``earlier_syncs`` requests on it (those
        already answered are not waited for)."""
        done = self._completions[1] if self._completions[0] == stream_id else 0
        self._full = FullSync(stream_id, max(0, earlier_syncs - done))

    def abandon(self) -> None:
        """No full sync is tracked (its start could not be recorded)."""
        self._full = None
