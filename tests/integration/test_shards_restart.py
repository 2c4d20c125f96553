"""The nested ``shards`` supervisor restarted by the agent's root supervisor (its shards failed
past the restart intensity) while devices post: with the real agent (real LMDB, real actors),
every post is either committed (in the event log exactly once, answered with its seqs) or
answered Unavailable (HTTP 503) at once, never left to wait for ``http.request_timeout_s``.

Faults that cannot be produced on purpose for real are injected: a shard's thread is held on
an Event through pykka's public proxy messages, so that posts queue up in its inbox before and
after its supervisor asked it to stop.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pykka
import pytest
from pykka.messages import ProxyCall, ProxySetAttr

from edge_sync.actors.messages import (
    BuildEntityIndex,
    FlushGroup,
    PassivateIdle,
    PurgeDeployed,
    RpcQueued,
)
from edge_sync.actors.queue_actor import RefusalsTick
from edge_sync.actors.shard import shard_of
from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.devices.rpc import RpcRequest
from edge_sync.errors import Restarting
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Device
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.supervisor import Supervisor, _is_stop_request
from tests.helpers.log_capture import log_records
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
"""How long any answer may take here; the agent's request timeout is three times as long, so a
post left waiting for it fails the test."""

REQUEST_TIMEOUT_S = 30.0


class Hold:
    """Set on a shard (ProxySetAttr) and called on its thread (ProxyCall): the shard waits in
    ``hold`` until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        self.released.wait(60)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_MQTT_ENABLED": "false",
        "EDGE_ACTORS_SHARDS": "2",
        # a second crash within the window makes the shards supervisor give up (escalate)
        "EDGE_SUPERVISOR_MAX_RESTARTS": "1", "EDGE_SUPERVISOR_WITHIN_S": "600",
        "EDGE_HTTP_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    })
    edge = EdgeApp(cfg).start()
    yield edge
    edge.stop(timeout=30)


def device_on(app: EdgeApp, shard: int, prefix: str) -> Device:
    """A new device (committed) whose entity actor lives on ``shard``."""
    for i in range(64):
        device, created = app.service.create_device(f"{prefix}-{i}")
        created.result(DEADLINE_S)
        if shard_of(device.id, app.cfg.actors.shards) == shard:
            return device
    raise AssertionError(f"no device on shard {shard}")


def shards_supervisor(app: EdgeApp) -> Supervisor:
    sup = app.supervisor.child("shards")
    assert isinstance(sup, Supervisor)
    return sup


def shard_ref(app: EdgeApp, index: int) -> pykka.ActorRef[Any]:
    ref = app._actor_ref("shards", f"shard-{index}")
    assert ref is not None and ref.is_alive()
    return ref


def hold(ref: pykka.ActorRef[Any]) -> Hold:
    """The shard's thread held in Hold.hold until released."""
    held = Hold()
    ref.tell(ProxySetAttr(attr_path=("_test_hold",), value=held))
    ref.tell(ProxyCall(attr_path=("_test_hold", "hold"), args=(), kwargs={}))
    assert held.entered.wait(DEADLINE_S)
    return held


def inbox(ref: pykka.ActorRef[Any]) -> list[str]:
    """The kinds of the messages waiting in the actor's inbox, in order (its own timers' ticks
    left out: they may come at any time)."""
    with ref.actor_inbox.mutex:  # type: ignore[attr-defined]
        messages = [envelope.message for envelope in ref.actor_inbox.queue]  # type: ignore[attr-defined]
    return ["stop" if _is_stop_request(m) else type(m).__name__ for m in messages
            if not isinstance(m, PassivateIdle | FlushGroup | PurgeDeployed | RefusalsTick
                              | BuildEntityIndex)]


def post(app: EdgeApp, device: Device, value: int) -> Future[range]:
    return app.service.post_telemetry(device.token, {"ts": 1_000 + value, "values": {"v": value}})


def outcomes(posts: dict[int, Future[range]]) -> dict[int, str]:
    """What each poster was told within DEADLINE_S: 'committed' (one seq), or its error's name
    ('Restarting', a kind of Unavailable: HTTP 503); 'left waiting' when it got no answer by then."""
    concurrent.futures.wait(posts.values(), timeout=DEADLINE_S)
    out = {}
    for value, future in posts.items():
        if not future.done():
            out[value] = "left waiting"
        elif (exc := future.exception()) is not None:
            out[value] = type(exc).__name__
        else:
            out[value] = f"committed {len(future.result())}"
    return out


def values_in_log(app: EdgeApp, device: Device) -> list[int]:
    with app.store.read() as txn:
        return [e.body["values"]["v"] for e in EventLog(app.store).iter_events(txn)
                if e.entity_id == device.id and e.action == Action.TIMESERIES_UPDATED.value]


def test_posts_caught_in_a_restart_of_the_shards_supervisor_are_committed_or_refused_at_once(
        app: EdgeApp) -> None:
    held_shard, other_shard = 0, 1  # the supervisor stops shard-1 first, then shard-0
    a = device_on(app, held_shard, "held")
    b = device_on(app, other_shard, "other")
    old_shards = shards_supervisor(app)
    held_ref = shard_ref(app, held_shard)
    held = hold(held_ref)

    # 1. posts queued in the held shard's inbox before its supervisor gives up
    before = {v: post(app, a, v) for v in range(1, 6)}
    wait_until(lambda: inbox(held_ref) == ["PostTelemetry"] * 5, timeout=DEADLINE_S,
               what="five posts queued in the held shard", show=lambda: inbox(held_ref))

    with log_records() as records:
        # 2. the other shard crashes twice: past the intensity, the shards supervisor gives up
        #    and stops its shards (shard-1, crashed already, then shard-0: held, so its stop
        #    request waits in its inbox behind the posts)
        assert app._crash(f"shard-{other_shard}")
        wait_until(lambda: old_shards.restarts(f"shard-{other_shard}") == 1, timeout=DEADLINE_S,
                   what="shard-1 restarted once")
        wait_until(lambda: app._actor_ref("shards", f"shard-{other_shard}") is not None,
                   timeout=DEADLINE_S, what="shard-1 running again")
        assert app._crash(f"shard-{other_shard}")
        wait_until(lambda: inbox(held_ref) == ["PostTelemetry"] * 5 + ["stop"],
                   timeout=DEADLINE_S, what="the held shard asked to stop",
                   show=lambda: inbox(held_ref))

        # 3. posts told to the held shard after it was asked to stop (its ref is still alive)
        after = {v: post(app, a, v) for v in range(6, 9)}
        assert inbox(held_ref) == ["PostTelemetry"] * 5 + ["stop"] + ["PostTelemetry"] * 3
        held.released.set()

        # 4. while the shards are down (between the old supervisor's give-up and the new one in
        #    place) a post is refused at once; once the new shards run, posts are committed
        answers = outcomes(before | after)
        wait_until(lambda: app.supervisor.restarts("shards") == 1, timeout=DEADLINE_S,
                   what="the root supervisor restarted the shards supervisor")
        wait_until(lambda: all(app.readiness()[f"shard-{i}"] for i in range(2)),
                   timeout=DEADLINE_S, what="the new shards running")
        assert outcomes({9: post(app, a, 9), 1: post(app, b, 1)}) == {
            9: "committed 1", 1: "committed 1"}

    assert answers == {**dict.fromkeys(range(1, 6), "committed 1"),
                       **dict.fromkeys(range(6, 9), "Restarting")}
    assert isinstance(after[6].exception(), Restarting)
    assert values_in_log(app, a) == [1, 2, 3, 4, 5, 9]
    assert values_in_log(app, b) == [1]
    refused = [r for r in records if "answered Unavailable" in r["message"]]
    assert [(r["level"].name, r["message"]) for r in refused] == [
        ("WARNING", "shard-0 stopped with 3 requests waiting in its inbox: answered Unavailable "
                    "(HTTP 503, try again)")]


def test_shards_start_once_the_root_holds_their_supervisor_so_nothing_refused_meanwhile_is_missed(
        app: EdgeApp) -> None:
    """The root supervisor's slot gets the new shards supervisor only when its start returns;
    until then an Address finds no shard and refuses what is told (a device's post: 503; the
    downlink's notification of an RPC request it committed: no one to answer). The new shards
    read the store at start (open RPC requests) only after that, so the request is delivered.
    The window, a few milliseconds for real, is held open here by a start that returns late."""
    a = device_on(app, 0, "dev")
    root_slot = next(s for s in app.supervisor._slots if s.spec.id == "shards")
    started, release = threading.Event(), threading.Event()
    original = root_slot.spec

    def start_returning_late(report: Any) -> Any:
        child = original.start(report)
        started.set()
        release.wait(60)
        return child

    root_slot.spec = dataclasses.replace(original, start=start_returning_late)
    old_shards = shards_supervisor(app)
    with log_records() as records:
        assert app._crash("shard-1")
        wait_until(lambda: old_shards.restarts("shard-1") == 1, timeout=DEADLINE_S,
                   what="shard-1 restarted once")
        wait_until(lambda: app._actor_ref("shards", "shard-1") is not None,
                   timeout=DEADLINE_S, what="shard-1 running again")
        assert app._crash("shard-1")  # past the intensity: the shards supervisor gives up
        assert started.wait(DEADLINE_S)
        assert app.supervisor.child("shards") is None

        # the new shards run, but the root does not hold them yet: refused at once
        assert outcomes({1: post(app, a, 1), 2: post(app, a, 2)}) == {
            1: "Restarting", 2: "Restarting"}
        # over HTTP too: 503, and the device API's line for it at DEBUG only (the run has its
        # WARNING and INFO; a line per request would flood the log at the devices' rate)
        status, _ = http_post(app, f"/api/v1/{a.token}/telemetry", b'{"v": 0}')
        assert status == 503
        # what the downlink does with a server-side RPC request: commit it, then tell the
        # device's entity actor (refused here: nobody is told)
        now = app.clock.now_ms()
        request = RpcRequest(device_id=a.id, request_uuid=uuid.uuid4(), request_id=7,
                             method="reboot", params='{"delay": 1}', oneway=False,
                             expiration_time=now + 600_000, queued_at=now, updated_at=now)
        app.store.write(lambda txn: RpcStore(app.store).put(txn, request))
        app.router.tell(RpcQueued(a.id, (request,)))
        release.set()

        wait_until(lambda: app.supervisor.restarts("shards") == 1, timeout=DEADLINE_S,
                   what="the root holds the new shards supervisor")
        # the run's INFO comes with the restart, before any message finds the shard back
        wait_until(lambda: any(r["extra"].get("actor") == "shard-0" and r["level"].name == "INFO"
                               for r in records), timeout=DEADLINE_S, what="shard-0's back line")
        status, body = http_get(app, f"/api/v1/{a.token}/rpc?timeout=5000")
        assert (status, json.loads(body) if status == 200 else body) == (
            200, {"id": 7, "method": "reboot", "params": {"delay": 1}})
        assert outcomes({3: post(app, a, 3)}) == {3: "committed 1"}

    assert values_in_log(app, a) == [3]
    assert [(r["level"].name, r["extra"]["code"]) for r in records
            if " refused with " in r["message"]] == [("DEBUG", "503")]
    lines = [(r["level"].name, r["message"]) for r in records
             if r["extra"].get("actor") == "shard-0" and "Unavailable" in r["message"]]
    assert lines[0] == ("WARNING", "shard-0 is not running: messages to it are answered "
                                   "Unavailable (HTTP 503, try again) until it is back")
    assert len(lines) == 2 and lines[1][0] == "INFO"
    # the three posts: the RPC notification had nobody waiting on it, so it is not counted
    assert re.fullmatch(r"shard-0 is back after \d+\.\d s: 3 requests to it were answered "
                        r"Unavailable meanwhile", lines[1][1])


def http_get(app: EdgeApp, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.http_port}{path}",
                                    timeout=DEADLINE_S) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(app: EdgeApp, path: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{app.http_port}{path}", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE_S) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_change_committed_after_its_shard_restarted_is_answered(app: EdgeApp) -> None:
    """A device's deletion goes through its entity actor to the queue; the commit's callback
    tells the entity (its waiting polls are answered) and then the sender. Its shard restarted
    while the commit waited: the told incarnation is gone, and the sender is answered all the
    same (it used to wait for its timeout, the deletion committed)."""
    d = device_on(app, 0, "gone")
    queue_ref = app._actor_ref("queue")
    assert queue_ref is not None
    held = hold(queue_ref)
    deleted = app.entities.delete_device(d.id)
    wait_until(lambda: inbox(queue_ref) == ["Append"], timeout=DEADLINE_S,
               what="the deletion waiting in the queue's inbox", show=lambda: inbox(queue_ref))
    dead = shard_ref(app, 0)
    assert app._crash("shard-0")
    wait_until(lambda: app._actor_ref("shards", "shard-0") not in (None, dead),
               timeout=DEADLINE_S, what="shard-0 restarted")
    held.released.set()
    assert outcomes({1: deleted}) == {1: "committed 1"}
    with app.store.read() as txn:
        assert EntityStore(app.store).device(txn, d.id) is None


def test_long_polls_open_when_the_agent_stops_get_503_with_no_line_each(tmp_path: Path) -> None:
    """The agent stopping ends every open long poll at once with 503 ("poll again"): an actor
    not running (Restarting), so each answer is a DEBUG line, not a WARNING per poll."""
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_MQTT_ENABLED": "false"})
    edge = EdgeApp(cfg).start()
    stopped = False
    try:
        devices = [device_on(edge, shard, f"poller-{shard}") for shard in (0, 1)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool, log_records() as records:
            polls = [pool.submit(http_get, edge, f"/api/v1/{d.token}/rpc?timeout=20000")
                     for d in devices]
            wait_until(lambda: len(edge.device_api._polls) == 2, timeout=DEADLINE_S,
                       what="both long polls open")
            edge.stop(timeout=30)
            stopped = True
            answers = [future.result(DEADLINE_S) for future in polls]
    finally:
        if not stopped:
            edge.stop(timeout=30)
    assert [status for status, _ in answers] == [503, 503]
    assert sorted((r["level"].name, r["extra"]["code"]) for r in records
                  if " refused with " in r["message"]) == [("DEBUG", "503")] * 2


def test_the_queue_s_back_line_comes_with_its_restart_and_a_stopping_edge_refuses_as_stopping(
        app: EdgeApp) -> None:
    """The root supervisor's restart hook tells the restarted actor's Address: a run of
    refusals of the queue ends with its INFO line at the queue's restart, with no message sent
    after it. Once the edge stops, a message to the queue is refused as "stopping", and the
    run is one INFO line (no outage WARNING)."""
    with log_records() as records:
        app.queue._count_refusal(True)  # a message refused while the queue was down
        assert app._crash("queue")
        wait_until(lambda: any(r["extra"].get("actor") == "queue" and r["level"].name == "INFO"
                               for r in records), timeout=DEADLINE_S, what="the queue's back line")
        app.stop(timeout=30)
        reply: Future[range] = Future()
        app.queue.tell(Waiting(reply))
    lines = [(r["level"].name, r["message"]) for r in records if r["extra"].get("actor") == "queue"]
    assert lines[0] == ("WARNING", "queue is not running: messages to it are answered "
                                   "Unavailable (HTTP 503, try again) until it is back")
    assert lines[1][0] == "INFO" and re.fullmatch(
        r"queue is back after \d+\.\d s: 1 requests to it were answered Unavailable meanwhile",
        lines[1][1])
    assert lines[2:] == [("INFO", "queue has stopped with the edge: messages to it are answered "
                                  "Unavailable")]
    error = reply.exception()
    assert isinstance(error, Restarting) and str(error) == (
        "queue is stopping: the edge is shutting down")


@dataclasses.dataclass
class Waiting:
    """A message its sender waits on (its ``reply``), as a device's request is."""

    reply: Future[range]
