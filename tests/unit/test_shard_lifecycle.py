"""What a shard owes the devices waiting on it when it goes away: a message with a
``subscriber`` told while its shard is down fails that subscriber (Unavailable, 503 "poll
again") as a ``reply`` is failed, instead of leaving the poll to wait for its timeout. And the
shard's RPC deadlines: one per entity, however many requests come."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import Future
from typing import Any

import pykka

from edge_sync.actors.address import Address
from edge_sync.actors.messages import Append, ExpireRpcs, PollRpc, PostRpcResponse, PutRpc, RpcQueued
from edge_sync.actors.shard import ShardActor
from edge_sync.devices.rpc import RpcRequest, RpcStatus
from edge_sync.errors import Restarting
from tests.helpers.log_capture import log_records
from tests.helpers.rpc_poll import RecordingPoll
from tests.helpers.set_clock import SetClock

DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d2")


def test_a_poll_told_to_a_shard_that_is_down_fails_at_once_with_unavailable() -> None:
    down = Address("shard-0", lambda: None)
    poll, gone = RecordingPoll(), RecordingPoll(gone=True)
    down.tell(PollRpc(DEVICE, poll))
    down.tell(PollRpc(DEVICE, gone))
    reply: Future[range] = Future()
    down.tell(PostRpcResponse(DEVICE, 1, {}, 0, reply))
    assert [(type(e), str(e)) for e in poll.got] == [
        (Restarting, "shard-0 is restarting; try again")]
    assert gone.got == []  # timed out already: nothing to tell it
    assert isinstance(reply.exception(), Restarting)


# -- the shard's RPC deadlines -------------------------------------------------------------------

T0 = 1_700_000_000_000


class Sink:
    """A QueueActor that takes every Append and commits none."""

    def __init__(self) -> None:
        self.appends: list[Append] = []

    def tell(self, message: Append) -> None:
        self.appends.append(message)


def test_the_deadline_heap_holds_one_entry_per_entity_whatever_the_request_rate() -> None:
    clock, sink = SetClock(T0), Sink()
    shard = ShardActor(lambda _reason: None, 0, sink, passivate_after_s=60.0,  # type: ignore[arg-type]
                       clock=clock)
    busy, devices = uuid.UUID(int=1), [uuid.UUID(int=100 + i) for i in range(50)]

    def queued(device: uuid.UUID, n: int, expires: int) -> RpcQueued:
        return RpcQueued(device, (RpcRequest(device, uuid.UUID(int=n), n, "m", "", False,
                                             expires, T0 + n),))

    for n in range(1, 1_001):  # a steady stream, each request expiring a minute after it came
        shard.on_receive(queued(busy, n, T0 + 60_000 + n))
    assert len(shard._deadlines) == 1
    for n in range(1_001, 2_001):  # each one earlier than all before it: stale entries compacted
        shard.on_receive(queued(busy, n, T0 + 60_000 - n))
    for i, device in enumerate(devices):
        shard.on_receive(queued(device, 20_000 + i, T0 + 30_000))
    assert len(shard._deadlines) <= 2 * 51 + 64 and len(shard._scheduled) == 51
    clock.ms = T0 + 70_000
    shard.on_receive(ExpireRpcs())
    expired = [m.request.status for a in sink.appends for m in a.mutations
               if isinstance(m, PutRpc)]
    assert expired == [RpcStatus.EXPIRED] * 2_050
    assert shard._deadlines == [] and shard._scheduled == {}


class Sleeper(pykka.ThreadingActor):
    """A live target for an Address."""


def test_an_address_logs_when_its_target_is_found_down_and_when_it_is_back() -> None:
    """One WARNING at the first message refused, one INFO with the count once the target is
    back; nothing per message."""
    target: list[pykka.ActorRef[Any]] = []
    address = Address("shard-3", lambda: target[0] if target else None)
    replies = [Future[range]() for _ in range(3)]
    with log_records() as records:
        for reply in replies:
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, reply))
        target.append(Sleeper.start())
        try:
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
        finally:
            target[0].stop()
    assert [type(r.exception()) for r in replies] == [Restarting] * 3
    lines = [(r["level"].name, r["message"], r["extra"]) for r in records]
    assert lines[0] == ("WARNING", "shard-3 is not running: messages to it are answered "
                                   "Unavailable (HTTP 503, try again) until it is back",
                        {"actor": "shard-3"})
    assert len(lines) == 2 and lines[1][0] == "INFO" and lines[1][2] == {
        "actor": "shard-3", "messages": 3}
    assert re.fullmatch(r"shard-3 is back after \d+\.\d s: 3 requests to it were answered "
                        r"Unavailable meanwhile", lines[1][1])


def test_an_address_told_its_target_restarted_ends_the_run_at_once() -> None:
    """The supervisor's restart hook (``started``) logs the run's INFO line when the target is
    back, not with the next message, which may come much later; that message then logs
    nothing more. A restart with no refusal before it logs nothing."""
    target: list[pykka.ActorRef[Any]] = []
    address = Address("shard-2", lambda: target[0] if target else None)
    with log_records() as records:
        address.started()  # no run of refusals: nothing to end
        assert records == []
        for _ in range(2):
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
        target.append(Sleeper.start())
        try:
            address.started()
            assert [(r["level"].name, r["extra"]) for r in records] == [
                ("WARNING", {"actor": "shard-2"}), ("INFO", {"actor": "shard-2", "messages": 2})]
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
            address.started()
        finally:
            target[0].stop()
    assert len(records) == 2
    assert re.fullmatch(r"shard-2 is back after \d+\.\d s: 2 requests to it were answered "
                        r"Unavailable meanwhile", records[1]["message"])


def test_an_address_of_a_stopping_agent_says_so_and_logs_no_outage() -> None:
    """Once the agent stops, a message to an actor that has stopped is refused as "stopping",
    and the run is one INFO line, not the WARNING of an outage."""
    address = Address("shard-4", lambda: None)
    reply = Future[range]()
    with log_records() as records:
        address.stopping()
        address.tell(PostRpcResponse(DEVICE, 1, {}, 0, reply))
        address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
    error = reply.exception()
    assert isinstance(error, Restarting)
    assert str(error) == "shard-4 is stopping: the edge is shutting down"
    assert [(r["level"].name, r["message"], r["extra"]) for r in records] == [
        ("INFO", "shard-4 has stopped with the edge: messages to it are answered Unavailable",
         {"actor": "shard-4"})]


def test_a_refusal_counted_after_another_thread_found_the_target_back_still_ends_its_run() -> None:
    """Two threads: one resolves the restarted target and delivers (or the restart hook ran),
    the other had found it down an instant before and counts its refusal only then. That run
    ends at once with its INFO line, the target being back: not with the next delivery, which
    may never come (before that, not at all: the address stayed "down" for good, with no INFO
    and no WARNING at the next real outage)."""
    target = Sleeper.start()
    address = Address("shard-5", lambda: target)
    try:
        with log_records() as records:
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))  # caches the live target
            address._count_refusal(True)  # the late thread's count, after the target was back
            lines = [(r["level"].name, r["extra"]) for r in records]
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
    finally:
        target.stop()
    assert lines == [("WARNING", {"actor": "shard-5"}),
                     ("INFO", {"actor": "shard-5", "messages": 1})]
    assert len(records) == 2  # the delivery after it logs nothing


def test_only_requests_someone_waits_on_are_counted_as_refused() -> None:
    """A notification (nobody waits on its answer) told while the target is down starts the
    run's WARNING but is not counted among the requests answered Unavailable."""
    target: list[pykka.ActorRef[Any]] = []
    address = Address("shard-6", lambda: target[0] if target else None)
    with log_records() as records:
        address.tell(ExpireRpcs())  # no reply, no subscriber
        address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
        target.append(Sleeper.start())
        try:
            address.tell(PostRpcResponse(DEVICE, 1, {}, 0, Future()))
        finally:
            target[0].stop()
    lines = [(r["level"].name, r["extra"]) for r in records]
    assert lines == [("WARNING", {"actor": "shard-6"}),
                     ("INFO", {"actor": "shard-6", "messages": 1})]
