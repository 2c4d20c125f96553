"""Both ways to the device, in one process: a whole EdgeApp (real LMDB, the real aiohttp device
API on loopback) linked to the scripted gRPC peer of tests/helpers/fake_peer.py.

Server-side RPC (a deviceRpcCallMsg downlink -> the device's long poll -> its answer -> an
uplink DeviceRpcCallMsg), its expiry, answers no request awaits (taken and dropped, as
ThingsBoard takes them), wrong timeouts, shared attribute updates to long polls, and shared
attributes fetched from the cloud (or not, when it cannot be reached).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_sync.actors.messages import ExpireRpcs
from edge_sync.actors.shard import shard_of
from edge_sync.app import EdgeApp
from edge_sync.common.wire import uuid_halves
from edge_sync.config import load_edge_config
from edge_sync.devices.rpc import RpcRequest, RpcStatus
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Device
from edge_sync.storage.rpc_store import RpcStore
from tests.helpers.agent import Agent
from tests.helpers.fake_peer import FakeCloud
from tests.helpers.log_capture import log_records
from tests.helpers.metric_values import metric_total
from tests.helpers.ports import free_ports
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
ROUTING_KEY, SECRET = "rk-sessions", "secret-sessions"


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.fakes: list[FakeCloud] = []
        self.apps: list[EdgeApp] = []

    def fake(self) -> FakeCloud:
        fake = FakeCloud(uplinks="ack").start()
        self.fakes.append(fake)
        return fake

    def edge(self, port: int, **env: str) -> EdgeApp:
        base = {
            "EDGE_DATA_DIR": str(self.tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
            "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "2",
            "EDGE_MQTT_ENABLED": "false",
            "CLOUD_ROUTING_KEY": ROUTING_KEY, "CLOUD_ROUTING_SECRET": SECRET,
            "CLOUD_RPC_HOST": "127.0.0.1", "CLOUD_RPC_PORT": str(port),
            "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "200",
            "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000", "EDGE_CLOUD_RECONNECT_JITTER": "0",
            "EDGE_CLOUD_BATCH_TIMEOUT_MS": "20",
        }
        app = EdgeApp(load_edge_config(env={**base, **env})).start()
        self.apps.append(app)
        return app

    def connected_edge(self, **env: str) -> tuple[FakeCloud, EdgeApp]:
        fake = self.fake()
        app = self.edge(fake.port, **env)
        wait_until(lambda: app.link_board.value["state"] == "CONNECTED", timeout=DEADLINE_S,
                   what="link CONNECTED")
        return fake, app

    def stop(self, app: EdgeApp) -> None:
        app.stop(timeout=30)
        self.apps.remove(app)

    def close(self) -> None:
        for app in self.apps:
            app.stop(timeout=30)
        for fake in self.fakes:
            fake.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


# -- helpers -----------------------------------------------------------------------------------


def make_device(app: EdgeApp, name: str) -> Device:
    device, fut = app.service.create_device(name, token=f"tok-{name}")
    assert len(fut.result(DEADLINE_S)) == 2
    return device


def http(app: EdgeApp, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{app.http_port}{path}", data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Future[Any]:
    out: Future[Any] = Future()

    def run() -> None:
        try:
            out.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            out.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return out


def polls_open(app: EdgeApp, n: int) -> None:
    """Wait until ``n`` long polls are registered with their devices' entities on the shards,
    not only held by the HTTP server: its handler adds a poll to its set, then tells the shard,
    which registers it later on its own thread (an update handled before that registration
    would not reach the poll). No figure counts registered waiters, so two barriers make it
    sure: the handler adds and tells in one step of the server's loop, so a callback run on that
    loop afterwards comes after every tell of the polls counted; and a shard handles its mailbox
    in order, so its answer to a later ask comes after those registrations."""
    wait_until(lambda: len(app.device_api._polls) >= n, timeout=DEADLINE_S,
               what=f"{n} long polls open")
    host = app.supervisor.child("device-http")
    loop = getattr(host, "_loop", None)
    assert loop is not None, "the device HTTP server is not running"
    told = threading.Event()
    loop.call_soon_threadsafe(told.set)
    assert told.wait(DEADLINE_S), "the device HTTP server's loop did not run a callback"
    for i in range(app.cfg.actors.shards):
        shard = app._actor_ref("shards", f"shard-{i}")
        assert shard is not None, f"shard-{i} is not running"
        shard.ask(ExpireRpcs(), timeout=DEADLINE_S)  # only what is due: a no-op here


def rpc_downlink(fake: FakeCloud, device: Device, request_id: int, method: str = "setGpio",
                 params: Any = None, *, oneway: bool = False, expires_in_ms: int = 60_000,
                 request_uuid: uuid.UUID | None = None) -> edge_pb2.DownlinkMsg:
    msb, lsb = uuid_halves(device.id)
    umsb, ulsb = uuid_halves(request_uuid or uuid.uuid4())
    return edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id(), deviceRpcCallMsg=[
        edge_pb2.DeviceRpcCallMsg(
            deviceIdMSB=msb, deviceIdLSB=lsb, requestUuidMSB=umsb, requestUuidLSB=ulsb,
            requestId=request_id, oneway=oneway,
            expirationTime=int(time.time() * 1000) + expires_in_ms,
            requestMsg=edge_pb2.RpcRequestMsg(method=method, params=json.dumps(params)))])


def shared_downlink(fake: FakeCloud, device: Device, values: dict[str, int] | None = None,
                    deleted: list[str] | None = None) -> edge_pb2.DownlinkMsg:
    msb, lsb = uuid_halves(device.id)
    data = edge_pb2.EntityDataProto(entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE")
    if deleted is not None:
        data.attributeDeleteMsg.scope = "SHARED_SCOPE"
        data.attributeDeleteMsg.attributeNames.extend(deleted)
    else:
        data.attributesUpdatedMsg.kv.extend(
            transport_pb2.KeyValueProto(key=k, type=transport_pb2.LONG_V, long_v=v)
            for k, v in (values or {}).items())
        data.postAttributeScope = "SHARED_SCOPE"
    return edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id(), entityData=[data])


def deliver(fake: FakeCloud, msg: edge_pb2.DownlinkMsg, acks: int = 1) -> None:
    fake.send_downlink(msg)
    fake.wait_for(lambda: len(fake.acks_for(msg.downlinkMsgId)) >= acks,
                  what=f"ack {acks} of downlink {msg.downlinkMsgId}")
    assert all(a.success for a in fake.acks_for(msg.downlinkMsgId))


def rpc_uplinks(fake: FakeCloud) -> list[edge_pb2.DeviceRpcCallMsg]:
    return [m for up in list(fake.uplinks) for m in up.msg.deviceRpcCallMsg]


def rpcs(app: EdgeApp, device: Device) -> list[RpcRequest]:
    with app.store.read() as txn:
        return list(RpcStore(app.store).scan(txn, device.id))


def event_count(app: EdgeApp) -> int:
    with app.store.read() as txn:
        return EventLog(app.store).counts(txn).total


def dropped(app: EdgeApp) -> float:
    """RPC answers no request awaited, taken and dropped (any transport)."""
    return metric_total(app.metrics.snapshot(), "edge_sync_rpc_answers_dropped_total")


# -- server-side RPC -----------------------------------------------------------------------------


def test_two_way_rpc_to_a_waiting_poll_and_its_answer_upstream(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-wait")
    poll = in_thread(http, app, "GET", f"/api/v1/{dev.token}/rpc?timeout=20000")
    polls_open(app, 1)
    msg = rpc_downlink(fake, dev, 7, "setGpio", {"pin": 1})
    deliver(fake, msg)
    status, _, body = poll.result(DEADLINE_S)
    assert (status, json.loads(body)) == (200, {"id": 7, "method": "setGpio", "params": {"pin": 1}})
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.DELIVERED]

    assert http(app, "POST", f"/api/v1/{dev.token}/rpc/7", {"pin": 1, "value": True})[0] == 200
    up = fake.wait_for(lambda: rpc_uplinks(fake), what="the RPC answer uplinked")[0]
    call = msg.deviceRpcCallMsg[0]
    assert (up.requestId, up.requestUuidMSB, up.requestUuidLSB, up.oneway, up.expirationTime,
            json.loads(up.responseMsg.response), up.responseMsg.error) == (
        7, call.requestUuidMSB, call.requestUuidLSB, False, call.expirationTime,
        {"pin": 1, "value": True}, "")
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, {"pin": 1, "value": True})]
    counts = app.metrics.snapshot()
    assert [counts.get(f'edge_sync_rpc_requests_total{{status="{s}"}}') for s in
            ("QUEUED", "DELIVERED", "SUCCESSFUL")] == [1, 1, 1]
    # answered once: a second answer is taken (200, as ThingsBoard), dropped and counted;
    # nothing is queued
    before, dropped_before = event_count(app), dropped(app)
    with log_records() as records:
        status, _, body = http(app, "POST", f"/api/v1/{dev.token}/rpc/7", {"again": 1})
    assert (status, body) == (200, b"")
    assert event_count(app) == before
    assert dropped(app) == dropped_before + 1
    assert [(r["level"].name, r["message"], r["extra"]["device"], r["extra"]["rpc_id"])
            for r in records if r["message"].startswith("RPC answer dropped")] == [
        ("WARNING", "RPC answer dropped: RPC request 7 is SUCCESSFUL; it takes no answer",
         str(dev.id), 7)]


def test_a_request_queued_before_the_poll_is_delivered_at_once_in_order(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-later")
    deliver(fake, rpc_downlink(fake, dev, 1, "first"))
    deliver(fake, rpc_downlink(fake, dev, 2, "second", [1, 2]))
    s1, _, b1 = http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=5000")
    s2, _, b2 = http(app, "GET", f"/api/v1/{dev.token}/rpc")
    assert (s1, json.loads(b1)) == (200, {"id": 1, "method": "first", "params": None})
    assert (s2, json.loads(b2)) == (200, {"id": 2, "method": "second", "params": [1, 2]})


def test_a_poll_with_nothing_to_deliver_times_out_with_408_and_no_body(harness: Harness) -> None:
    _, app = harness.connected_edge()
    dev = make_device(app, "rpc-idle")
    started = time.monotonic()
    status, _, body = http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=300")
    assert (status, body) == (408, b"")
    assert 0.29 <= time.monotonic() - started < 5
    status, _, body = http(app, "GET", f"/api/v1/{dev.token}/attributes/updates?timeout=200")
    assert (status, body) == (408, b"")


def test_a_timeout_above_300000_waits_as_a_poll_of_300000(harness: Harness) -> None:
    """ThingsBoard's HTTP transport ends every request at transport.http.max_request_timeout
    (300000 ms, HttpTransportContext's Tomcat asyncTimeout) whatever timeout it asks: such a
    poll is taken, and waits (the wait itself clamped: tests/unit/test_device_rpc.py)."""
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-long")
    poll = in_thread(http, app, "GET", f"/api/v1/{dev.token}/rpc?timeout=600000")
    polls_open(app, 1)
    deliver(fake, rpc_downlink(fake, dev, 4, "reboot", {}))
    status, _, body = poll.result(DEADLINE_S)
    assert (status, json.loads(body)) == (200, {"id": 4, "method": "reboot", "params": {}})


@pytest.mark.parametrize("timeout", ["-1", "abc", "1.5", "99999999999999999999"])
def test_a_timeout_out_of_range_is_refused_with_400(harness: Harness, timeout: str) -> None:
    _, app = harness.connected_edge()
    dev = make_device(app, "rpc-range")
    for path in ("rpc", "attributes/updates"):
        status, _, body = http(app, "GET", f"/api/v1/{dev.token}/{path}?timeout={timeout}")
        assert status == 400, (path, body)
        assert "timeout" in json.loads(body)["message"]


def test_an_expired_request_is_never_delivered_and_is_reported_upstream(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-expired")
    msg = rpc_downlink(fake, dev, 3, "late", expires_in_ms=300)
    deliver(fake, msg)
    up = fake.wait_for(lambda: rpc_uplinks(fake), what="the expiry reported")[0]
    assert (up.requestId, up.responseMsg.error, up.oneway, up.expirationTime) == (
        3, "TIMEOUT", False, msg.deviceRpcCallMsg[0].expirationTime)
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.EXPIRED]
    assert http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=200")[:2][0] == 408
    # already expired when it arrives: never delivered either
    deliver(fake, rpc_downlink(fake, dev, 4, "dead", expires_in_ms=-1000))
    fake.wait_for(lambda: len(rpc_uplinks(fake)) == 2, what="the second expiry reported")
    assert http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=200")[0] == 408


def test_answers_no_request_awaits_are_taken_dropped_and_counted(harness: Harness) -> None:
    """As ThingsBoard's DeviceApiController.replyToCommand: 200 whatever becomes of the answer;
    here nothing is queued, and each one is logged and counted."""
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-wrong")
    deliver(fake, rpc_downlink(fake, dev, 5, "soon", expires_in_ms=1500))
    assert http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=5000")[0] == 200
    before = event_count(app)
    status, _, body = http(app, "POST", f"/api/v1/{dev.token}/rpc/99", {"x": 1})
    assert (status, body) == (200, b"")
    assert dropped(app) == 1
    assert http(app, "POST", f"/api/v1/{dev.token}/rpc/abc", {"x": 1})[0] == 400
    assert http(app, "POST", f"/api/v1/{dev.token}/rpc/5", raw=b"")[0] == 400
    assert event_count(app) == before
    assert dropped(app) == 1  # refused answers are not dropped answers
    # the request times out unanswered: reported, and a late answer is taken and dropped
    fake.wait_for(lambda: rpc_uplinks(fake), what="the time-out reported")
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.TIMEOUT]
    before = event_count(app)
    with log_records() as records:
        status, _, body = http(app, "POST", f"/api/v1/{dev.token}/rpc/5", {"x": 1})
    assert (status, body) == (200, b"")
    assert event_count(app) == before
    assert dropped(app) == 2
    assert [r["message"] for r in records if r["message"].startswith("RPC answer dropped")] \
        == ["RPC answer dropped: RPC request 5 is TIMEOUT; it takes no answer"]
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.TIMEOUT]


def test_an_answer_that_is_not_json_is_carried_to_the_cloud_as_its_text(harness: Harness) -> None:
    """ThingsBoard's DeviceApiController.replyToCommand takes the body as a String and passes
    it on as the response: text that is not JSON (or JSON the store cannot hold) goes to the
    cloud unchanged, not refused with 400; an empty body is 400 there (a required
    @RequestBody), and here."""
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-text")
    bodies = [b"OK", b"{not json", b"\xff done", b'{"big": 1' + b"0" * 30 + b"}", b'"quoted"']
    for n, raw in enumerate(bodies, start=1):
        deliver(fake, rpc_downlink(fake, dev, n, "ping"))
        status, _, body = http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=5000")
        assert (status, json.loads(body)["id"]) == (200, n)
        assert http(app, "POST", f"/api/v1/{dev.token}/rpc/{n}", raw=raw)[:3:2] == (200, b"")
    assert http(app, "POST", f"/api/v1/{dev.token}/rpc/1", raw=b"")[0] == 400
    ups = fake.wait_for(lambda: len(rpc_uplinks(fake)) >= 5 and rpc_uplinks(fake),
                        what="five answers uplinked")
    assert [(u.requestId, u.responseMsg.response, u.responseMsg.error) for u in ups] == [
        (1, "OK", ""), (2, "{not json", ""), (3, "\ufffd done", ""),
        (4, '{"big": 1' + "0" * 30 + "}", ""), (5, '"quoted"', "")]
    assert [(r.status, r.response) for r in rpcs(app, dev)] == [
        (RpcStatus.SUCCESSFUL, "OK"), (RpcStatus.SUCCESSFUL, "{not json"),
        (RpcStatus.SUCCESSFUL, "\ufffd done"),
        (RpcStatus.SUCCESSFUL, '{"big": 1' + "0" * 30 + "}"), (RpcStatus.SUCCESSFUL, "quoted")]
    assert dropped(app) == 0


def test_a_poll_whose_connection_closed_gives_up_and_the_new_poll_gets_the_request(
        harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-closed-poll")
    with socket.create_connection(("127.0.0.1", app.http_port)) as sock:
        sock.sendall(f"GET /api/v1/{dev.token}/rpc?timeout=30000 HTTP/1.1\r\nHost: edge\r\n"
                     "\r\n".encode())
        polls_open(app, 1)
    # the device went away: its handler is cancelled and the poll stops waiting at once
    wait_until(lambda: not app.device_api._polls, timeout=DEADLINE_S,
               what="the closed poll given up")
    live = in_thread(http, app, "GET", f"/api/v1/{dev.token}/rpc?timeout=20000")
    polls_open(app, 1)
    deliver(fake, rpc_downlink(fake, dev, 5, "reboot"))
    status, _, body = live.result(DEADLINE_S)
    assert (status, json.loads(body)) == (200, {"id": 5, "method": "reboot", "params": None})
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.DELIVERED]


def test_an_rpc_id_that_is_not_an_ascii_int32_is_refused_with_400(harness: Harness) -> None:
    _fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-bad-id")
    before = event_count(app)
    # "²", Arabic-Indic "١٢" (str.isdigit takes both), 5,000 digits, just past int32
    for raw in ("%C2%B2", "%D9%A1%D9%A2", "9" * 5000, "2147483648", "99999999999"):
        status, _, body = http(app, "POST", f"/api/v1/{dev.token}/rpc/{raw}", {"x": 1})
        assert (status, json.loads(body)["message"].endswith("is not a number 0..2147483647")) \
            == (400, True), raw[:16]
    status, _, body = http(app, "POST", f"/api/v1/{dev.token}/rpc/2147483647", {"x": 1})
    assert (status, body) == (200, b"")  # in range, awaited by no request: dropped
    assert dropped(app) == 1
    assert event_count(app) == before


def test_a_one_way_request_is_successful_on_delivery(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-oneway")
    msg = rpc_downlink(fake, dev, 9, "blink", {"n": 3}, oneway=True)
    deliver(fake, msg)
    status, _, body = http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=5000")
    assert (status, json.loads(body)) == (200, {"id": 9, "method": "blink", "params": {"n": 3}})
    up = fake.wait_for(lambda: rpc_uplinks(fake), what="the one-way success reported")[0]
    assert (up.requestId, up.oneway, up.responseMsg.response, up.responseMsg.error) == (
        9, True, "{}", "")
    assert [r.status for r in rpcs(app, dev)] == [RpcStatus.SUCCESSFUL]


def test_a_redelivered_rpc_downlink_is_delivered_once(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-redelivered")
    msg = rpc_downlink(fake, dev, 11, "once")
    deliver(fake, msg)
    deliver(fake, msg, acks=2)  # the same downlink again: acknowledged only
    # the same request in a new downlink (another id): known by its requestUuid
    again = edge_pb2.DownlinkMsg(downlinkMsgId=fake.new_downlink_id(),
                                 deviceRpcCallMsg=list(msg.deviceRpcCallMsg))
    deliver(fake, again)
    assert http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=5000")[0] == 200
    assert http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=300")[0] == 408
    assert len(rpcs(app, dev)) == 1


def test_a_queued_request_survives_a_restart(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "rpc-restart")
    deliver(fake, rpc_downlink(fake, dev, 13, "persisted", {"a": 1}))
    harness.stop(app)
    app = harness.edge(fake.port)
    status, _, body = http(app, "GET", f"/api/v1/{dev.token}/rpc?timeout=5000")
    assert (status, json.loads(body)) == (200, {"id": 13, "method": "persisted", "params": {"a": 1}})


def test_a_poll_waiting_when_the_agent_stops_is_answered_503(harness: Harness) -> None:
    _, app = harness.connected_edge()
    dev = make_device(app, "rpc-stop")
    poll = in_thread(http, app, "GET", f"/api/v1/{dev.token}/rpc?timeout=60000")
    polls_open(app, 1)
    started = time.monotonic()
    harness.stop(app)
    assert poll.result(DEADLINE_S)[0] == 503
    assert time.monotonic() - started < 5


def test_polls_waiting_on_a_shard_that_crashes_are_answered_503_at_once(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "shard-crash")
    rpc_poll = in_thread(http, app, "GET", f"/api/v1/{dev.token}/rpc?timeout=60000")
    updates = in_thread(http, app, "GET", f"/api/v1/{dev.token}/attributes/updates?timeout=60000")
    polls_open(app, 2)
    started = time.monotonic()
    assert app._crash(f"shard-{shard_of(dev.id, 2)}")
    for poll in (rpc_poll, updates):
        status, _, body = poll.result(DEADLINE_S)
        assert (status, b"poll again" in body) == (503, True)
    assert time.monotonic() - started < 5
    # the restarted shard serves the device's next poll
    again = wait_until(lambda: app.readiness()[f"shard-{shard_of(dev.id, 2)}"], timeout=DEADLINE_S,
                       what="the shard restarted")
    assert again
    live = in_thread(http, app, "GET", f"/api/v1/{dev.token}/rpc?timeout=20000")
    polls_open(app, 1)
    deliver(fake, rpc_downlink(fake, dev, 8, "reboot"))
    status, _, body = live.result(DEADLINE_S)
    assert (status, json.loads(body)["id"]) == (200, 8)


# -- shared attributes to devices ----------------------------------------------------------------


async def _polls(port: int, tokens: list[str], timeout_ms: int) -> list[tuple[int, Any]]:
    async with aiohttp.ClientSession() as session:
        async def one(token: str) -> tuple[int, Any]:
            url = f"http://127.0.0.1:{port}/api/v1/{token}/attributes/updates?timeout={timeout_ms}"
            async with session.get(url) as resp:
                text = await resp.text()
                return resp.status, (json.loads(text) if text else None)

        return list(await asyncio.gather(*(one(t) for t in tokens)))


def test_a_shared_attribute_update_wakes_only_that_devices_polls_with_the_changed_keys(
        harness: Harness) -> None:
    fake, app = harness.connected_edge()
    a, b = make_device(app, "attr-a"), make_device(app, "attr-b")
    deliver(fake, shared_downlink(fake, a, {"x": 1, "y": 2}))
    # a's polls would wait 30 s: a 200 within the deadline can only mean the update woke them
    a_polls = in_thread(asyncio.run, _polls(app.http_port, [a.token] * 3, 30_000))
    b_poll = in_thread(asyncio.run, _polls(app.http_port, [b.token], 3000))
    polls_open(app, 4)
    deliver(fake, shared_downlink(fake, a, {"x": 1, "y": 3, "z": 4}))  # x unchanged
    assert a_polls.result(DEADLINE_S) == [(200, {"y": 3, "z": 4})] * 3
    assert b_poll.result(DEADLINE_S) == [(408, None)]  # not woken by a's update

    polls = in_thread(asyncio.run, _polls(app.http_port, [a.token], 5000))
    polls_open(app, 1)
    deliver(fake, shared_downlink(fake, a, deleted=["z", "never-held"]))
    assert polls.result(DEADLINE_S) == [(200, {"deleted": ["z"]})]


# -- attributes asked of the cloud ---------------------------------------------------------------


def test_a_shared_key_the_edge_does_not_hold_is_fetched_from_the_cloud(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    dev = make_device(app, "attr-fetch")

    def requests() -> list[edge_pb2.AttributesRequestMsg]:
        return [m for up in list(fake.uplinks) for m in up.msg.attributesRequestMsg]

    answer = in_thread(http, app, "GET", f"/api/v1/{dev.token}/attributes?sharedKeys=mode,rate")
    req = fake.wait_for(lambda: requests(), what="an AttributesRequestMsg")[0]
    assert (uuid.UUID(int=0) != dev.id, req.scope, req.entityType) == (True, "SHARED_SCOPE", "DEVICE")
    deliver(fake, shared_downlink(fake, dev, {"mode": 2, "rate": 5, "other": 1}))
    status, headers, body = answer.result(DEADLINE_S)
    assert (status, json.loads(body)) == (200, {"shared": {"mode": 2, "rate": 5}})
    assert "X-Edge-Sync-Missing-Shared-Keys" not in headers
    # cached now: served from the store, nothing asked again
    status, headers, body = http(app, "GET", f"/api/v1/{dev.token}/attributes?sharedKeys=rate")
    assert (status, json.loads(body)) == (200, {"shared": {"rate": 5}})
    assert len(requests()) == 1


def test_with_the_cloud_unreachable_what_is_known_is_answered_at_once(harness: Harness) -> None:
    app = harness.edge(free_ports()[0])  # nobody listens there: the link never connects
    dev = make_device(app, "attr-offline")
    app.service.post_attributes(dev.token, {"fw": "1.0.1"}).result(DEADLINE_S)
    started = time.monotonic()
    status, headers, body = http(
        app, "GET", f"/api/v1/{dev.token}/attributes?clientKeys=fw&sharedKeys=mode")
    assert (status, json.loads(body)) == (200, {"client": {"fw": "1.0.1"}, "shared": {}})
    assert headers["X-Edge-Sync-Missing-Shared-Keys"] == "mode"
    assert time.monotonic() - started < 2
    assert http(app, "GET", f"/api/v1/{dev.token}/attributes?sharedKeys=mode")[0] == 200

    def requests() -> list[str]:
        with app.store.read() as txn:
            return [e.lane.name for e in EventLog(app.store).iter_events(txn)
                    if e.action == "ATTRIBUTES_REQUEST"]

    # the request waits in the queue for the link (high lane), asked once for both reads
    assert wait_until(requests, timeout=DEADLINE_S, what="the request queued") == ["HIGH"]


def test_a_silent_cloud_is_waited_for_up_to_the_request_timeout_once(harness: Harness) -> None:
    _, app = harness.connected_edge(EDGE_HTTP_REQUEST_TIMEOUT_S="1")
    dev = make_device(app, "attr-silent")
    started = time.monotonic()
    status, headers, body = http(app, "GET", f"/api/v1/{dev.token}/attributes?sharedKeys=a,b")
    assert (status, json.loads(body)) == (200, {"shared": {}})
    assert headers["X-Edge-Sync-Missing-Shared-Keys"] == "a,b"
    assert 0.9 <= time.monotonic() - started < 5
    # asked lately: a read now waits no more for a cloud that has nothing to say
    started = time.monotonic()
    status, headers, _ = http(app, "GET", f"/api/v1/{dev.token}/attributes?sharedKeys=a")
    assert (status, headers["X-Edge-Sync-Missing-Shared-Keys"]) == (200, "a")
    assert time.monotonic() - started < 0.5
    # a key no header may carry as it is (a control character) is percent-encoded
    status, headers, _ = http(app, "GET", f"/api/v1/{dev.token}/attributes?sharedKeys=%08,a%20b")
    assert (status, headers["X-Edge-Sync-Missing-Shared-Keys"]) == (200, "%08,a%20b")


# -- visible: the CLI and the admin API ----------------------------------------------------------


def test_requests_are_listed_by_the_admin_api_and_the_cli(harness: Harness, tmp_path: Path) -> None:
    fake, app = harness.connected_edge()
    a, b = make_device(app, "list-a"), make_device(app, "list-b")
    deliver(fake, rpc_downlink(fake, a, 1, "first"))
    deliver(fake, rpc_downlink(fake, b, 2, "second", expires_in_ms=-1))
    wait_until(lambda: [r.status for r in rpcs(app, b)] == [RpcStatus.EXPIRED],
               timeout=DEADLINE_S, what="b's request EXPIRED")

    def admin(query: str) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{app.admin_port}/api/rpc{query}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, listed = admin(f"?device={a.id}")
    assert status == 200
    assert [(r["request_id"], r["method"], r["status"]) for r in listed] == [(1, "first", "QUEUED")]
    status, listed = admin("?status=expired")
    assert [(r["device_id"], r["request_id"], r["error"]) for r in listed] == [
        (str(b.id), 2, "TIMEOUT")]
    assert admin("?status=LOST")[0] == 400
    with urllib.request.urlopen(f"http://127.0.0.1:{app.admin_port}/api/status", timeout=10) as resp:
        assert json.loads(resp.read())["rpc_open"] == 1  # a's, queued
    assert admin("?device=nope")[0] == 400

    env = {**os.environ, "EDGE_DATA_DIR": str(tmp_path / "edge")}
    out = subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "rpc", "list", "--json",
                          "--status", "queued"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert [(json.loads(line)["device_id"], json.loads(line)["method"])
            for line in out.splitlines()] == [(str(a.id), "first")]
    out = subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "rpc", "list",
                          "--device", str(b.id)], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.split()[:4] == [str(b.id), "2", "EXPIRED", "two-way"]


# -- kill -9 between the acknowledgement and the delivery ------------------------------------------


@pytest.mark.slow
def test_a_request_acknowledged_then_killed_is_delivered_once_after_restart(
        tmp_path: Path, procs: Any) -> None:
    fake = FakeCloud(uplinks="ack").start()
    try:
        agent = procs(Agent(tmp_path / "agent", env={
            "CLOUD_ROUTING_KEY": ROUTING_KEY, "CLOUD_ROUTING_SECRET": SECRET,
            "CLOUD_RPC_HOST": "127.0.0.1", "CLOUD_RPC_PORT": str(fake.port),
            "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "200", "EDGE_CLOUD_RECONNECT_JITTER": "0",
            "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000"})).start()
        device_id, token = agent.create_device("rpc-kill9")
        dev = Device(uuid.UUID(device_id), "rpc-kill9", "default", token, 0)
        fake.wait_for(lambda: fake.sync_completed_ids, what="the edge synced")
        msg = rpc_downlink(fake, dev, 21, "survive", {"k": 9})
        deliver(fake, msg)
        assert agent.kill9() == -9
        agent.start()
        answer = agent.device("GET", f"/api/v1/{token}/rpc?timeout=5000")
        assert (answer.status, answer.json()) == (
            200, {"id": 21, "method": "survive", "params": {"k": 9}})
        # the cloud resends the same downlink after the restart: acknowledged, not delivered
        fake.wait_for(lambda: (fake.accepted_stream() or 0) >= 2,
                      what="the edge reconnected and its stream was accepted")
        deliver(fake, msg, acks=2)
        assert agent.device("GET", f"/api/v1/{token}/rpc?timeout=300").status == 408
        assert agent.device("POST", f"/api/v1/{token}/rpc/21", {"done": True}).status == 200
        up = fake.wait_for(lambda: rpc_uplinks(fake), what="the answer uplinked")[0]
        assert (up.requestId, json.loads(up.responseMsg.response)) == (21, {"done": True})
    finally:
        fake.stop()


# -- a long-poll storm -------------------------------------------------------------------------------


def test_a_thousand_idle_polls_cost_no_thread_and_the_agent_keeps_serving(harness: Harness) -> None:
    fake, app = harness.connected_edge()
    devices = [make_device(app, f"storm-{i}") for i in range(10)]
    threads_before = threading.active_count()

    async def storm() -> tuple[list[int], int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def poll(token: str, path: str) -> int:
                url = f"http://127.0.0.1:{app.http_port}/api/v1/{token}/{path}?timeout=4000"
                async with session.get(url) as resp:
                    await resp.read()
                    return resp.status

            tasks = [asyncio.create_task(poll(d.token, "rpc" if i % 2 else "attributes/updates"))
                     for i, d in enumerate(devices * 100)]
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, polls_open, app, 1000)
            threads = threading.active_count()
            # while they wait: telemetry is accepted and one device's update reaches its polls
            async with session.post(f"http://127.0.0.1:{app.http_port}/api/v1/"
                                    f"{devices[0].token}/telemetry", json={"t": 1}) as resp:
                assert resp.status == 200
            await loop.run_in_executor(None, deliver, fake, shared_downlink(fake, devices[0], {"s": 1}))
            statuses = list(await asyncio.gather(*tasks))
            return statuses, threads

    statuses, threads = asyncio.run(storm())
    # devices[0]'s 100 polls (all on attributes/updates) answered 200; the others timed out
    assert statuses.count(200) == 100 and statuses.count(408) == 900
    assert threads - threads_before < 10  # the test's own executor threads, not one per poll
    assert http(app, "POST", f"/api/v1/{devices[1].token}/telemetry", {"t": 2})[0] == 200
