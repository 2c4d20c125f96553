"""A device that keeps reading a shared key the edge does not hold while the link is down: its
entity actor queues one ATTRIBUTES_REQUEST and no other until that one is deployed, however
many refetch intervals pass (a fake QueueActor that commits each Append with the next seq)."""

from __future__ import annotations

import uuid

from edge_sync.actors.entity import EntityActor
from edge_sync.actors.messages import Append, FetchSharedAttributes
from edge_sync.devices.fetch import DEFAULT_REFETCH_INTERVAL_MS
from edge_sync.storage.records import Action

DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d4")
T0 = 1_700_000_000_000


class Queue:
    def __init__(self, *, refuse: bool = False) -> None:
        self.appends: list[Append] = []
        self.refuse = refuse

    def tell(self, message: Append) -> None:
        assert message.reply is not None
        if self.refuse:
            message.reply.set_exception(RuntimeError("storage full"))
            return
        self.appends.append(message)
        message.reply.set_result(range(100 + len(self.appends), 101 + len(self.appends)))


def test_one_attribute_request_waits_in_the_queue_until_deployed_whatever_the_reads() -> None:
    now, queue, inbox, deployed = [T0], Queue(), [], set()  # type: ignore[var-annotated]
    entity = EntityActor(DEVICE, queue, 0.0, now_ms=lambda: now[0],  # type: ignore[arg-type]
                         tell_self=inbox.append, event_pending=lambda seq: seq not in deployed)

    def read() -> None:
        entity.handle(FetchSharedAttributes(DEVICE, None, 1_000), 0.0)
        while inbox:
            entity.handle(inbox.pop(0), 0.0)

    for _ in range(10):  # five minutes of reads with the link down
        read()
        now[0] += DEFAULT_REFETCH_INTERVAL_MS
    seqs = [list(a.reply.result()) for a in queue.appends if a.reply is not None]
    assert [(e.action, s) for a, s in zip(queue.appends, seqs, strict=True) for e in a.events] \
        == [(Action.ATTRIBUTES_REQUEST, [101])]
    deployed.add(101)  # the link came back and the cloud took it
    read()
    assert len(queue.appends) == 2


def test_a_request_that_could_not_be_appended_is_asked_again_after_the_interval() -> None:
    now, queue, inbox = [T0], Queue(refuse=True), []  # type: ignore[var-annotated]
    entity = EntityActor(DEVICE, queue, 0.0, now_ms=lambda: now[0],  # type: ignore[arg-type]
                         tell_self=inbox.append, event_pending=lambda _seq: True)
    replies: list[int] = []
    for step in (0, 1, DEFAULT_REFETCH_INTERVAL_MS):
        now[0] = T0 + step
        entity.handle(FetchSharedAttributes(DEVICE, None, 1_000), 0.0)
        replies.append(len(inbox))
        while inbox:
            entity.handle(inbox.pop(0), 0.0)
    assert replies == [1, 0, 1]  # asked, held by the interval, asked again
