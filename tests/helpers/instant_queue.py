"""A stand-in for the QueueActor in shard and entity tests that need no event log: it keeps
every Append it is told and commits it at once, with seqs 1, 2, ..."""

from __future__ import annotations

from edge_sync.actors.messages import Append


class InstantQueue:
    """Commits every Append at once (seqs 1, 2, ...), keeping it in ``appends``."""

    def __init__(self) -> None:
        self.appends: list[Append] = []

    def tell(self, message: Append) -> None:
        self.appends.append(message)
        assert message.reply is not None
        message.reply.set_result(range(len(self.appends), len(self.appends) + 1))
