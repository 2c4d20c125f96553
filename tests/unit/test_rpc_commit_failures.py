"""An RPC request's change whose commit fails, or completes too late, with the entity actor
driven by hand: a fake QueueActor that commits or refuses each Append when the test says, a
clock the test sets, and the entity's messages to itself handed back in order."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any

import pytest

from edge_sync.actors.entity import RECORD_RETRY_MS, EntityActor
from edge_sync.actors.messages import Append, PollRpc, PostRpcResponse, PutRpc, RpcQueued
from edge_sync.devices.rpc import RpcRequest
from edge_sync.errors import Conflict, QueueFull
from edge_sync.storage.records import Action
from tests.helpers.rpc_poll import RecordingPoll

DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d3")
T0 = 1_700_000_000_000


class Queue:
    """Holds each Append until the test commits or refuses it; keeps what was committed."""

    def __init__(self) -> None:
        self.pending: list[Append] = []
        self.committed: list[Append] = []

    def tell(self, message: Append) -> None:
        self.pending.append(message)

    def commit(self) -> None:
        append = self.pending.pop(0)
        self.committed.append(append)
        assert append.reply is not None
        append.reply.set_result(range(0))

    def refuse(self) -> None:
        append = self.pending.pop(0)
        assert append.reply is not None
        append.reply.set_exception(QueueFull("storage full, new data refused"))

    def statuses(self) -> list[tuple[int, str]]:
        return [(m.request.request_id, m.request.status.value)
                for a in self.committed for m in a.mutations if isinstance(m, PutRpc)]

    def reports(self) -> list[dict[str, Any]]:
        return [e.body for a in self.committed for e in a.events if e.action == Action.RPC_CALL]


class Rig:
    def __init__(self) -> None:
        self.now = T0
        self.queue = Queue()
        self.inbox: list[Any] = []
        self.entity = EntityActor(DEVICE, self.queue, 0.0,  # type: ignore[arg-type]
                                  now_ms=lambda: self.now, tell_self=self.inbox.append)

    def handle(self, message: Any) -> None:
        self.entity.handle(message, 0.0)
        self.drain()

    def drain(self) -> None:
        while self.inbox:
            self.entity.handle(self.inbox.pop(0), 0.0)

    def queue_request(self, n: int, expires: int) -> None:
        self.handle(RpcQueued(DEVICE, (RpcRequest(DEVICE, uuid.UUID(int=n), n, "m", "{}", False,
                                                  expires, T0),)))

    def delivered(self, n: int, expires: int) -> RecordingPoll:
        self.queue_request(n, expires)
        poll = RecordingPoll()
        self.handle(PollRpc(DEVICE, poll))
        self.queue.commit()
        self.drain()
        assert poll.got == [{"id": n, "method": "m", "params": {}}]
        return poll

    def answer(self, n: int) -> Future[range]:
        reply: Future[range] = Future()
        self.handle(PostRpcResponse(DEVICE, n, {"ok": n}, self.now, reply))
        return reply


def test_an_answer_whose_commit_fails_can_be_sent_again_and_reaches_the_cloud() -> None:
    rig = Rig()
    rig.delivered(7, T0 + 60_000)
    first = rig.answer(7)
    rig.queue.refuse()
    assert isinstance(first.exception(), QueueFull)
    rig.drain()  # the request is DELIVERED again, awaiting the answer
    again = rig.answer(7)
    rig.queue.commit()
    assert again.result() == range(0)
    assert rig.queue.statuses() == [(7, "DELIVERED"), (7, "SUCCESSFUL")]
    assert rig.queue.reports()[-1]["response"] == {"ok": 7}
    with pytest.raises(Conflict, match="SUCCESSFUL"):
        rig.answer(7).result()


def test_an_expiry_whose_commit_fails_is_recorded_again_after_the_retry_pause() -> None:
    rig = Rig()
    rig.queue_request(3, T0 + 1_000)
    rig.now = T0 + 1_000
    rig.entity.expire_due()
    rig.queue.refuse()
    rig.drain()
    assert rig.entity.next_deadline() == T0 + 1_000 + RECORD_RETRY_MS
    rig.now += RECORD_RETRY_MS - 1
    rig.entity.expire_due()
    assert rig.queue.pending == []  # not before the pause
    rig.now += 1
    rig.entity.expire_due()
    rig.queue.commit()
    assert rig.queue.statuses() == [(3, "EXPIRED")]
    assert rig.queue.reports() == [{"requestUuid": str(uuid.UUID(int=3)), "requestId": 3,
                                    "oneway": False, "expirationTime": T0 + 1_000,
                                    "error": "TIMEOUT"}]
    assert rig.entity.next_deadline() is None


def test_a_delivery_that_fails_and_expires_before_it_is_put_back_is_expired_not_timed_out() -> None:
    rig = Rig()
    rig.queue_request(4, T0 + 1_000)
    poll = RecordingPoll()
    rig.handle(PollRpc(DEVICE, poll))
    rig.now = T0 + 1_000
    rig.entity.expire_due()  # the deadline comes while the delivery is being recorded
    assert len(rig.queue.pending) == 1
    rig.queue.refuse()
    assert isinstance(poll.got[0], QueueFull)
    rig.drain()
    rig.queue.commit()
    assert rig.queue.statuses() == [(4, "EXPIRED")]


def test_a_delivery_recorded_only_after_the_expiration_is_not_given_and_the_poll_waits_on() -> None:
    rig = Rig()
    rig.queue_request(5, T0 + 1_000)
    rig.queue_request(6, T0 + 60_000)
    poll = RecordingPoll()
    rig.handle(PollRpc(DEVICE, poll))
    rig.now = T0 + 1_000  # the commit completes at the expiration
    rig.queue.commit()
    assert poll.got == [] and poll.state == "waiting"
    rig.drain()  # EXPIRED recorded; the same poll gets the next request
    rig.queue.commit()
    rig.queue.commit()
    rig.drain()
    assert rig.queue.statuses() == [(5, "DELIVERED"), (5, "EXPIRED"), (6, "DELIVERED")]
    assert poll.got == [{"id": 6, "method": "m", "params": {}}]
    assert [r["requestId"] for r in rig.queue.reports()] == [5]


def test_a_request_handed_over_then_past_its_expiration_times_out() -> None:
    rig = Rig()
    rig.delivered(8, T0 + 1_000)
    rig.now = T0 + 1_000
    rig.entity.expire_due()
    rig.queue.commit()
    assert rig.queue.statuses() == [(8, "DELIVERED"), (8, "TIMEOUT")]


def test_a_refused_answer_whose_sender_left_does_not_break_the_entity() -> None:
    rig = Rig()
    reply: Future[range] = Future()
    assert reply.cancel()  # the device disconnected: its handler cancelled the wait
    rig.handle(PostRpcResponse(DEVICE, 99, {}, rig.now, reply))
    rig.delivered(9, T0 + 60_000)  # and it keeps serving
