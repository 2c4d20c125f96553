"""Requests made by a rule chain's RPC call request node, on a real entity actor and shard with a
real LMDB store (the queue commits at once, or refuses, in the test): the message's Append
carries the request QUEUED and no event; it is handed over after the commit, counted QUEUED,
delivered, answered or expired, and never reported to the cloud (no event in any Append). An
Append refused hands nothing over and the device's retry makes one request. A shard that
restarts while the Append is on its way still delivers the request once it commits (the
request is handed to the shard's address, not to the incarnation that made the Append)."""
from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka

from edge_sync.actors.address import Address
from edge_sync.actors.entity import EntityActor
from edge_sync.actors.messages import (
    Append,
    ExpireRpcs,
    PassivateIdle,
    PollRpc,
    PostRpcResponse,
    PostTelemetry,
    PutRpc,
    RpcQueued,
)
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import RuleCounters
from edge_sync.actors.shard import ShardActor
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.devices.rpc import RpcStatus
from edge_sync.errors import Unavailable, Unstorable
from edge_sync.rules.chain import parse
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rpc_store import RpcStore
from tests.helpers.instant_queue import InstantQueue
from tests.helpers.log_capture import log_records
from tests.helpers.rpc_poll import RecordingPoll
from tests.helpers.set_clock import SetClock

DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000e1")
T0 = 1_700_000_000_000
CHAIN = {"ruleChain": {"name": "rpc", "type": "CORE"}, "metadata": {
    "firstNodeIndex": 0, "connections": [], "nodes": [
        {"type": "org.thingsboard.rule.engine.rpc.TbSendRPCRequestNode", "name": "Fan",
         "configuration": {"timeoutInSeconds": 60}}]}}


class Queue(InstantQueue):
    """Commits at once, or fails the next ``failing`` Appends (storage full)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = 0

    def tell(self, message: Append) -> None:
        if not self.failing:
            return super().tell(message)
        self.appends.append(message)
        self.failing -= 1
        message.reply.set_exception(Unavailable("storage full"))


def rig(tmp_path: Path, now: list[int], counted: list[str] | None = None,
        chain: dict[str, Any] = CHAIN) -> tuple[LmdbStore, Queue, EntityActor, list[Any]]:
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    runtime = RulesRuntime()
    runtime.install(*parse(chain), "file:x.json", T0)
    rules = ShardRules(RuleCounters(runtime), store, now_ms=lambda: now[0],
                       new_id=lambda: str(uuid.uuid4()))
    queue = Queue()
    told: list[Any] = []
    entity = EntityActor(DEVICE, queue, 0.0, now_ms=lambda: now[0],  # type: ignore[arg-type]
                         rules=rules, tell_self=told.append,
                         count_rpc=None if counted is None else counted.append)
    return store, queue, entity, told


def pump(entity: EntityActor, told: list[Any]) -> None:
    while told:
        entity.handle(told.pop(0), 0.0)


def post_fan(entity: EntityActor, told: list[Any], ts: int, params: int = 3) -> Future[range]:
    """A device's reading that makes the chain ask for the fan (``params``), handled."""
    reply: Future[range] = Future()
    entity.handle(PostTelemetry(DEVICE, ((ts, (("method", "setFan"), ("params", params))),),
                                reply), 0.0)
    pump(entity, told)
    return reply


def poll_next(entity: EntityActor, told: list[Any]) -> RecordingPoll:
    """A device's long poll, handled: what it got is in ``got``."""
    poll = RecordingPoll()
    entity.handle(PollRpc(DEVICE, poll), 0.0)
    pump(entity, told)
    return poll


def answer(entity: EntityActor, told: list[Any], request_id: int, body: Any, ts: int
           ) -> Future[range]:
    """The device's answer to ``request_id``, handled."""
    answered: Future[range] = Future()
    entity.handle(PostRpcResponse(DEVICE, request_id, body, ts, answered), 0.0)
    pump(entity, told)
    return answered


def puts(queue: Queue) -> list[tuple[str, str, int]]:
    return [(m.request.status.value, m.request.origin.value, len(a.events))
            for a in queue.appends for m in a.mutations if isinstance(m, PutRpc)]


def test_rule_request_lifecycle_makes_no_event(tmp_path: Path) -> None:
    now, counted = [T0], []
    store, queue, entity, told = rig(tmp_path, now, counted)
    try:
        reply: Future[range] = Future()
        entity.handle(PostTelemetry(DEVICE, ((T0, (("method", "setFan"), ("params", 3))),),
                                    reply), 0.0)
        assert reply.result(0)
        assert [len(a.events) for a in queue.appends] == [0]
        assert [type(m) for m in told] == [RpcQueued]
        pump(entity, told)
        poll = poll_next(entity, told)
        assert len(poll.got) == 1 and poll.got[0]["method"] == "setFan", poll.got
        rid = poll.got[0]["id"]
        assert answer(entity, told, rid, {"ok": 1}, now[0]).result(0)
        # a second one, never polled: it expires
        post_fan(entity, told, T0 + 1, 0)
        now[0] = T0 + 61_000
        entity.expire_due()
        pump(entity, told)
        assert puts(queue) == [("QUEUED", "rule", 0), ("DELIVERED", "rule", 0),
                               ("SUCCESSFUL", "rule", 0), ("QUEUED", "rule", 0),
                               ("EXPIRED", "rule", 0)]
        assert all(not a.events for a in queue.appends)
        assert counted == ["QUEUED", "DELIVERED", "SUCCESSFUL", "QUEUED", "EXPIRED"]
    finally:
        store.close()


def test_a_refused_append_hands_nothing_over_and_the_retry_makes_one(tmp_path: Path) -> None:
    now = [T0]
    store, queue, entity, told = rig(tmp_path, now)
    try:
        queue.failing = 1
        first: Future[range] = Future()
        entry = ((T0, (("method", "setFan"), ("params", 3))),)
        entity.handle(PostTelemetry(DEVICE, entry, first), 0.0)
        assert isinstance(first.exception(0), Unavailable)
        assert not any(isinstance(m, RpcQueued) for m in told)
        pump(entity, told)
        retry: Future[range] = Future()
        entity.handle(PostTelemetry(DEVICE, entry, retry), 0.0)
        assert retry.result(0)
        pump(entity, told)
        session = entity.session
        assert session is not None and len(session.rpc) == 1
    finally:
        store.close()


class Holding(InstantQueue):
    """Commits at once, writing the PutRpc records, but for the first Append ``hold`` picks
    (once): kept in ``held`` for the test to write and commit."""

    def __init__(self, store: LmdbStore) -> None:
        super().__init__()
        self.store, self.held = store, list[Append]()
        self.hold: Callable[[Append], bool] | None = None

    def write(self, message: Append) -> None:
        rpcs = RpcStore(self.store)
        self.store.write(lambda txn: [rpcs.put(txn, m.request) for m in message.mutations
                                      if isinstance(m, PutRpc)])

    def commit(self, message: Append) -> None:
        self.write(message)
        message.reply.set_result(range(1, 1 + max(1, len(message.events))))

    def tell(self, message: Append) -> None:
        self.appends.append(message)
        if self.hold is not None and self.hold(message):
            self.hold = None
            self.held.append(message)
            return
        self.commit(message)


def shard_rig(tmp_path: Path, chain: dict[str, Any], clock: Clock = SYSTEM_CLOCK
              ) -> tuple[LmdbStore, Holding, Callable[[], Any], list[Any]]:
    """A store, a Holding queue, and ``start``: a ShardActor incarnation of shard 0 behind one
    address (as the supervisor restarts it), started and past its on_start."""
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    runtime = RulesRuntime()
    runtime.install(*parse(chain), "file:x.json", clock.now_ms())

    def rules(index: int) -> ShardRules:
        return ShardRules(RuleCounters(runtime), store, now_ms=clock.now_ms,
                          new_id=lambda: str(uuid.uuid4()))

    queue = Holding(store)
    current: list[pykka.ActorRef[Any]] = []
    address = Address("shard-0", lambda: current[-1] if current else None)

    def start() -> pykka.ActorRef[Any]:
        ref = ShardActor.start(lambda _r: None, 0, queue, passivate_after_s=600.0, store=store,
                               rules=rules, address=address, clock=clock)
        current.append(ref)
        ref.ask(PassivateIdle())  # answered after its on_start
        return ref

    return store, queue, start, current


def _stopped(store: LmdbStore, current: list[Any]) -> None:
    for ref in current:
        if ref.is_alive():
            ref.stop()
    store.close()


def _fan_posted(queue: Holding, shard: Any) -> Future[range]:
    """A hot reading posted, the Append of the request it makes held on its way."""
    queue.hold = lambda message: True
    reply: Future[range] = Future()
    shard.ask(PostTelemetry(DEVICE, ((int(time.time() * 1000),
                                      (("method", "setFan"), ("params", 3))),), reply))
    return reply


def test_a_request_committed_after_its_shard_restarted_is_delivered_by_the_successor(
        tmp_path: Path) -> None:
    """The successor read the open requests from the store before the commit landed: the
    request reaches it through the shard's address."""
    store, queue, start, current = shard_rig(tmp_path, CHAIN)
    try:
        old = start()
        reply = _fan_posted(queue, old)
        old.stop()  # the shard goes (a crash; the supervisor starts its successor)
        new = start()
        queue.commit(queue.held.pop())  # the queue commits the Append now
        assert reply.result(1)  # the device's 200
        with store.read() as txn:
            assert [r.method for r in RpcStore(store).open_requests(txn)] == ["setFan"]
        poll = RecordingPoll()
        new.ask(PollRpc(DEVICE, poll))
        new.ask(PollRpc(DEVICE, RecordingPoll()))  # let anything told meanwhile run
        assert [g["method"] for g in poll.got] == ["setFan"], (
            f"the stored request is not delivered by the new incarnation: {poll.got}")
    finally:
        _stopped(store, current)


def test_a_request_told_of_again_after_the_successor_finished_it_is_not_delivered_again(
        tmp_path: Path) -> None:
    """The commit lands before the successor reads the store, its callback (the hand-over
    through the shard's address) after the successor delivered and finished the request: the
    late QUEUED copy is not taken again (RpcBook.add knows the finished ones)."""
    store, queue, start, current = shard_rig(tmp_path, CHAIN)
    try:
        old = start()
        _fan_posted(queue, old)
        old.stop()  # the shard goes (a crash; the supervisor starts its successor)
        held = queue.held.pop()
        queue.write(held)  # the commit, its callback not run yet
        new = start()  # on_start reads the request
        first = RecordingPoll()
        new.ask(PollRpc(DEVICE, first))
        answered: Future[range] = Future()
        new.ask(PostRpcResponse(DEVICE, first.got[0]["id"], {"ok": 1},
                                int(time.time() * 1000), answered))
        assert answered.result(1)
        held.reply.set_result(range(1, 2))  # the queue's callback: the late hand-over
        second = RecordingPoll()
        new.ask(PollRpc(DEVICE, second))
        new.ask(PollRpc(DEVICE, RecordingPoll()))
        assert second.got == [], f"the answered request was delivered again: {second.got}"
    finally:
        _stopped(store, current)


ANSWERED_ON = {"ruleChain": {"name": "rpc answered on", "type": "CORE"}, "metadata": {
    "firstNodeIndex": 0,
    "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Success"},
                    {"fromIndex": 0, "toIndex": 2, "type": "Failure"}],
    "nodes": [
        {"type": "org.thingsboard.rule.engine.rpc.TbSendRPCRequestNode", "name": "Fan",
         "configuration": {"timeoutInSeconds": 60}},
        {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "Answer up",
         "configuration": {"scope": "SERVER_SCOPE"}},
        {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "Error up",
         "configuration": {"scope": "SERVER_SCOPE"}}]}}


def test_the_answer_goes_on_by_success_and_an_expiry_by_failure(tmp_path: Path) -> None:
    """TbSendRPCRequestNode's callback: the device's answer as the data of a message of the
    type and metadata of the one that made the request, by Success; an error as
    {"error": NAME} by Failure. Each after the request's end is committed, in an Append of
    its own; the request's own records carry no event."""
    now = [T0]
    store, queue, entity, told = rig(tmp_path, now, chain=ANSWERED_ON)
    try:
        post_fan(entity, told, T0)
        poll = poll_next(entity, told)
        now[0] = T0 + 5
        assert answer(entity, told, poll.got[0]["id"], {"fan": "on"}, now[0]).result(0)
        # a second request, never polled: it expires, and its error goes on by Failure
        post_fan(entity, told, T0 + 1, 0)
        now[0] = T0 + 61_000
        entity.expire_due()
        pump(entity, told)
        appended = [([type(m).__name__ for m in a.mutations],
                     [(e.action.value, e.body, e.ts) for e in a.events]) for a in queue.appends]
        assert appended == [
            (["PutRpc"], []),  # QUEUED with the message
            (["PutRpc"], []),  # DELIVERED
            (["PutRpc"], []),  # SUCCESSFUL
            ([], [("TIMESERIES_UPDATED", {"ts": T0, "values": {"fan": "on"}}, T0)]),  # Success
            (["PutRpc"], []),  # the second, QUEUED
            (["PutRpc"], []),  # EXPIRED
            ([], [("TIMESERIES_UPDATED",
                   {"ts": T0 + 1, "values": {"error": "NO_ACTIVE_CONNECTION"}},
                   T0 + 1)]),  # by Failure: never delivered
        ]
    finally:
        store.close()


def test_the_end_of_a_request_whose_node_left_the_chain_goes_no_further(tmp_path: Path) -> None:
    now = [T0]
    store, queue, entity, told = rig(tmp_path, now, chain=ANSWERED_ON)
    try:
        post_fan(entity, told, T0)
        assert entity.rules is not None
        renamed = copy.deepcopy(ANSWERED_ON)
        renamed["metadata"]["nodes"][0]["name"] = "Pump"  # another node: another key
        entity.rules.runtime.install(*parse(renamed), "file:x.json", T0)
        now[0] = T0 + 61_000
        entity.expire_due()
        pump(entity, told)
        assert [[type(m).__name__ for m in a.mutations] for a in queue.appends] == [
            ["PutRpc"], ["PutRpc"]]  # QUEUED, EXPIRED: no Failure branch of another node
        assert all(not a.events for a in queue.appends)
    finally:
        store.close()


def _warnings_of_lost_ends(records: list[Any]) -> list[str]:
    return [str(r["message"]) for r in records if r["level"].name == "WARNING"
            and "its end did not go on through the rule chain" in str(r["message"])]


def test_a_refused_run_of_an_end_is_logged_and_not_stored(tmp_path: Path) -> None:
    """The request's end is committed; the Append of the chain's run after it is refused
    (storage full): one WARNING names the request (the run is not tried again: ThingsBoard
    runs its callback once, from memory)."""
    now = [T0]
    store, queue, entity, told = rig(tmp_path, now, chain=ANSWERED_ON)
    try:
        post_fan(entity, told, T0)
        now[0] = T0 + 61_000
        with log_records() as records:
            entity.expire_due()  # EXPIRED committed; its end told
            queue.failing = 1  # the run's Append is refused
            pump(entity, told)
        assert [(len(a.events), a.reply.exception() is None) for a in queue.appends] == [
            (0, True), (0, True), (1, False)]
        [line] = _warnings_of_lost_ends(records)
        request_id = next(m.request.request_id for m in queue.appends[0].mutations
                          if isinstance(m, PutRpc))
        assert line == (f"RPC {request_id} EXPIRED: its end did not go on through the rule "
                        "chain: storage full")
    finally:
        store.close()


TWICE = {"ruleChain": {"name": "rpc twice", "type": "CORE"}, "metadata": {
    "firstNodeIndex": 0,
    "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Success"}],
    "nodes": [
        {"type": "org.thingsboard.rule.engine.rpc.TbSendRPCRequestNode", "name": "A",
         "configuration": {"timeoutInSeconds": 60}},
        {"type": "org.thingsboard.rule.engine.rpc.TbSendRPCRequestNode", "name": "B",
         "configuration": {"timeoutInSeconds": 60}}]}}


def test_an_answer_that_reaches_another_rpc_node_makes_its_request(tmp_path: Path) -> None:
    """A's answer {"method", "params"} goes on by Success to B: B's request has another id, a
    later queued time, and is delivered."""
    now = [T0]
    store, queue, entity, told = rig(tmp_path, now, chain=TWICE)
    try:
        post_fan(entity, told, T0)
        poll = poll_next(entity, told)
        first = poll.got[0]
        now[0] = T0 + 5
        entity.handle(PostRpcResponse(DEVICE, first["id"], {"method": "setPump", "params": 1},
                                      now[0], Future()), 0.0)
        pump(entity, told)
        second = poll_next(entity, told)
        assert [(g["method"], g["params"]) for g in second.got] == [("setPump", 1)]
        assert second.got[0]["id"] != first["id"]
        made = [m.request for a in queue.appends for m in a.mutations
                if isinstance(m, PutRpc) and m.request.status is RpcStatus.QUEUED]
        assert [r.method for r in made] == ["setFan", "setPump"]
        assert made[1].queued_at > made[0].queued_at
    finally:
        store.close()


EXPIRES_AT_ONCE = copy.deepcopy(ANSWERED_ON)
EXPIRES_AT_ONCE["metadata"]["nodes"][0]["configuration"]["timeoutInSeconds"] = 0


def _expired_on_its_way(queue: Holding, shard: Any) -> None:
    """A request made, expired at once, its EXPIRED record held on its way to the store."""
    queue.hold = lambda message: any(isinstance(m, PutRpc) and m.request.status.final
                                     for m in message.mutations)
    reply: Future[range] = Future()
    shard.ask(PostTelemetry(DEVICE, ((int(time.time() * 1000),
                                      (("method", "setFan"), ("params", 3))),), reply))
    assert reply.result(1)
    shard.ask(PassivateIdle())
    assert len(queue.held) == 1


def test_an_end_recorded_twice_across_a_shard_restart_goes_on_once(tmp_path: Path) -> None:
    """The first EXPIRED record is on its way when the shard restarts: the successor loads the
    request open, expires it again and runs the Failure branch; the first record then lands
    and its end reaches the successor too: it does not go on a second time."""
    store, queue, start, current = shard_rig(tmp_path, EXPIRES_AT_ONCE)
    try:
        old = start()
        _expired_on_its_way(queue, old)
        old.stop()
        new = start()  # loads the request QUEUED, expires it at once, runs its Failure
        queue.commit(queue.held.pop())  # the first record lands: its end -> the address
        new.ask(PassivateIdle())
        finals = [m.request.status for a in queue.appends for m in a.mutations
                  if isinstance(m, PutRpc) and m.request.status.final]
        assert finals == [RpcStatus.EXPIRED, RpcStatus.EXPIRED]
        assert [e.body["values"] for a in queue.appends for e in a.events] == [
            {"error": "TIMEOUT"}]  # expired when made: ThingsBoard's rule engine timeout
    finally:
        _stopped(store, current)


def test_an_end_recorded_while_the_shard_is_down_is_logged_as_not_gone_on(tmp_path: Path
                                                                          ) -> None:
    """The EXPIRED record lands while no incarnation of the shard runs: its end cannot go on
    (the successor finds the request finished); one WARNING names it."""
    store, queue, start, current = shard_rig(tmp_path, EXPIRES_AT_ONCE)
    try:
        old = start()
        _expired_on_its_way(queue, old)
        old.stop()
        with log_records() as records:
            held = queue.held.pop()
            queue.commit(held)  # between the two incarnations
        new = start()
        new.ask(PassivateIdle())
        assert [e for a in queue.appends for e in a.events] == []
        request_id = next(m.request.request_id for m in held.mutations if isinstance(m, PutRpc))
        assert _warnings_of_lost_ends(records) == [
            f"RPC {request_id} EXPIRED: its end did not go on through the rule chain: shard-0 "
            "is restarting; try again"]
    finally:
        _stopped(store, current)


def test_an_end_that_lands_after_the_restart_closes_the_request_in_the_successor(
        tmp_path: Path) -> None:
    """The device's answer (SUCCESSFUL) is on its way to the store when the shard restarts:
    the successor loads the request DELIVERED; when the answer's record lands, its end goes on
    by Success, and the successor no longer holds the request open (it does not time it out
    over the answer later)."""
    clock = SetClock(T0)
    store, queue, start, current = shard_rig(tmp_path, ANSWERED_ON, clock)
    try:
        old = start()
        reply: Future[range] = Future()
        old.ask(PostTelemetry(DEVICE, ((T0, (("method", "setFan"), ("params", 3))),), reply))
        assert reply.result(1)
        poll = RecordingPoll()
        old.ask(PollRpc(DEVICE, poll))
        queue.hold = lambda message: any(isinstance(m, PutRpc) and m.request.status.final
                                         for m in message.mutations)
        clock.ms = T0 + 5
        old.ask(PostRpcResponse(DEVICE, poll.got[0]["id"], {"fan": "on"}, T0 + 5, Future()))
        assert len(queue.held) == 1
        old.stop()
        new = start()  # loads the request DELIVERED
        queue.commit(queue.held.pop())  # SUCCESSFUL lands; its end reaches the successor
        new.ask(PassivateIdle())
        clock.ms = T0 + 61_000  # past its expiry
        new.ask(ExpireRpcs())
        new.ask(PassivateIdle())
        finals = [m.request.status for a in queue.appends for m in a.mutations
                  if isinstance(m, PutRpc) and m.request.status.final]
        assert finals == [RpcStatus.SUCCESSFUL]
        assert [e.body["values"] for a in queue.appends for e in a.events] == [{"fan": "on"}]
    finally:
        _stopped(store, current)


def test_a_run_of_an_end_the_store_cannot_hold_tells_no_device_of_a_500(tmp_path: Path
                                                                         ) -> None:
    """The run's Append refused as Unstorable: the ERROR line says nothing was kept, and not
    that a device is answered 500 (the device had its answer's 200); the WARNING names the
    request."""
    now = [T0]
    store, queue, entity, told = rig(tmp_path, now, chain=ANSWERED_ON)
    try:
        post_fan(entity, told, T0)
        poll = poll_next(entity, told)
        commit = queue.tell

        def refuse_events(message: Append) -> None:
            if not message.events:
                return commit(message)
            queue.appends.append(message)
            message.reply.set_exception(Unstorable("value cannot be stored (x)"))

        queue.tell = refuse_events  # type: ignore[method-assign]
        with log_records() as records:
            assert answer(entity, told, poll.got[0]["id"], {"fan": "on"}, T0 + 5).result(0)
        lines = [(r["level"].name, str(r["message"])) for r in records
                 if r["level"].name in ("ERROR", "WARNING")]
        rid = poll.got[0]["id"]
        assert lines == [
            ("ERROR", "the rule chain's outcome cannot be stored: value cannot be stored (x); "
                      "nothing of it was kept"),
            ("WARNING", f"RPC {rid} SUCCESSFUL: its end did not go on through the rule chain: "
                        "the rule chain's outcome cannot be stored: value cannot be stored (x)"),
        ]
    finally:
        store.close()
