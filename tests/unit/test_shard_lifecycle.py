"""What a shard owes the devices waiting on it when it goes away: a message with a
``subscriber`` told while its shard is down fails that subscriber (Unavailable, 503 "poll
again") as a ``reply`` is failed, instead of leaving the poll to wait for its timeout."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any

from edge_sync.actors.address import Address
from edge_sync.actors.messages import PollRpc, PostRpcResponse
from edge_sync.errors import Unavailable

DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d2")


class Poll:
    """A one-shot subscriber that records what it was told."""

    def __init__(self, *, gone: bool = False) -> None:
        self.state = "gone" if gone else "waiting"
        self.got: list[Any] = []

    @property
    def live(self) -> bool:
        return self.state == "waiting"

    def claim(self) -> bool:
        if self.state != "waiting":
            return False
        self.state = "claimed"
        return True

    def resolve(self, value: Any) -> None:
        self.got.append(value)

    def fail(self, exc: BaseException) -> None:
        self.got.append(exc)


def test_a_poll_told_to_a_shard_that_is_down_fails_at_once_with_unavailable() -> None:
    down = Address("shard-0", lambda: None)
    poll, gone = Poll(), Poll(gone=True)
    down.tell(PollRpc(DEVICE, poll))
    down.tell(PollRpc(DEVICE, gone))
    reply: Future[range] = Future()
    down.tell(PostRpcResponse(DEVICE, 1, {}, 0, reply))
    assert [(type(e), str(e)) for e in poll.got] == [
        (Unavailable, "shard-0 is restarting; try again")]
    assert gone.got == []  # timed out already: nothing to tell it
    assert isinstance(reply.exception(), Unavailable)
