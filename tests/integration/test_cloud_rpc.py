"""Server-side RPC on the reference cloud, over its real admin API (aiohttp) and real gRPC on
loopback, with a scripted edge (tests/helpers/link_client.py): ThingsBoard's
POST /api/rpc/{twoway|oneway}/{deviceId}, the DeviceRpcCallMsg downlink, the edge's answer,
timeouts, persistent requests to an offline edge, expiry, statuses, bad bodies."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_sync.cloud import CloudServer
from edge_sync.cloud.server import open_cloud_store
from edge_sync.cloud.session import LinkSettings
from edge_sync.common.wire import uuid_halves, uuid_of
from edge_sync.config import AdminConfig, CloudConfig, CloudStorageConfig, DownlinkConfig, EdgesRpcConfig
from edge_sync.proto import edge_pb2
from tests.helpers.link_client import DEADLINE_S, LinkClient, rpc_answer
from tests.helpers.ports import free_ports
from tests.helpers.wait import wait_until


def cloud_config(data_dir: Path) -> CloudConfig:
    return CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0),
        storage=CloudStorageConfig(data_dir=data_dir),
        downlink=DownlinkConfig(resend_timeout_ms=10_000),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


class Reply:
    def __init__(self, status: int, headers: Any, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def rpc_id(self) -> str:
        return str(self.headers["X-Rpc-Id"])


def http(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         timeout: float = DEADLINE_S) -> Reply:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    server = CloudServer(cloud_config(tmp_path / "cloud")).start()
    yield server
    server.stop()


@pytest.fixture
def device(cloud: CloudServer) -> uuid.UUID:
    cloud.service.create_edge("edge-1", routing_key="rk-1", secret="s3cret-1")
    dev, _ = cloud.service.create_device("rk-1", "pump-1", token="tok-1")
    return dev.id


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


@pytest.fixture
def clients() -> Iterator[list[LinkClient]]:
    made: list[LinkClient] = []
    yield made
    for c in made:
        c.close()


def connect(cloud: CloudServer, clients: list[LinkClient]) -> LinkClient:
    """The scripted edge, connected and synced; the device's creation downlink acknowledged."""
    client = LinkClient(cloud.port)
    clients.append(client)
    assert client.connect("rk-1", "s3cret-1", store_id="store-1").responseCode == edge_pb2.ACCEPTED
    client.sync(full=False)
    created = client.downlink()
    assert created.deviceUpdateMsg
    client.ack(created.downlinkMsgId)
    return client


def rpc_downlink(client: LinkClient) -> tuple[edge_pb2.DownlinkMsg, edge_pb2.DeviceRpcCallMsg]:
    d = client.downlink()
    assert len(d.deviceRpcCallMsg) == 1, d
    return d, d.deviceRpcCallMsg[0]


def status(cloud: CloudServer, rpc_id: str) -> str:
    return str(http(cloud.admin_port, "GET", f"/api/rpc/{rpc_id}").json["status"])


_METRICS = {  # CloudCounters' attribute: (metric name, labels)
    "rpc_requests": ("edge_cloud_rpc_requests_total", {}),
    "rpc_expired": ("edge_cloud_rpc_expired_total", {}),
    "rpc_answers": ("edge_cloud_rpc_answers_total", {"outcome": "settled"}),
    "rpc_answers_late": ("edge_cloud_rpc_answers_total", {"outcome": "late"}),
    "rpc_answers_unknown": ("edge_cloud_rpc_answers_total", {"outcome": "unknown"}),
}


def metric(cloud: CloudServer, name: str) -> int:
    metric_name, labels = _METRICS[name]
    return int(cloud.counters.metrics.value(metric_name, **labels))


# -- two-way, one-way ----------------------------------------------------------------------------


def test_two_way_round_trip_answers_the_rest_call_with_the_device_response(cloud, device, clients, pool):
    client = connect(cloud, clients)
    before = int(time.time() * 1000)
    call: Future[Reply] = pool.submit(http, cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                                      {"method": "setGpio", "params": {"pin": 7, "value": 1},
                                       "timeout": 5000})
    d, req = rpc_downlink(client)
    assert uuid_of(req.deviceIdMSB, req.deviceIdLSB) == device
    assert req.requestMsg.method == "setGpio"
    assert json.loads(req.requestMsg.params) == {"pin": 7, "value": 1}
    assert req.requestId == 1
    assert req.oneway is False
    assert req.persisted is False
    assert before + 5000 <= req.expirationTime <= int(time.time() * 1000) + 5000
    rpc_id = uuid_of(req.requestUuidMSB, req.requestUuidLSB)
    client.ack(d.downlinkMsgId)
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, response='{"pin":7,"value":1}')]).success

    reply = call.result(DEADLINE_S)
    assert (reply.status, reply.json, reply.rpc_id) == (200, {"pin": 7, "value": 1}, str(rpc_id))
    got = http(cloud.admin_port, "GET", f"/api/rpc/{rpc_id}").json
    assert got["status"] == "SUCCESSFUL"
    assert got["response"] == {"pin": 7, "value": 1}
    assert got["id"] == {"entityType": "RPC", "id": str(rpc_id)}
    assert got["deviceId"] == {"entityType": "DEVICE", "id": str(device)}
    assert got["request"]["body"] == {"method": "setGpio", "params": '{"pin":7,"value":1}'}
    assert got["requestId"] == 1
    assert http(cloud.admin_port, "GET", f"/api/rpc/persistent/{rpc_id}").json == got
    assert (metric(cloud, "rpc_requests"), metric(cloud, "rpc_answers")) == (1, 1)
    assert cloud.rpc.waiters.waiting() == 0


def test_an_empty_answer_is_200_without_body_and_a_text_answer_406(cloud, device, clients, pool):
    client = connect(cloud, clients)
    for seq, (text, code, raw) in enumerate([("", 200, b""), ("not json", 406, b"")], start=1):
        call = pool.submit(http, cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                           {"method": "m", "params": {}})
        d, req = rpc_downlink(client)
        client.ack(d.downlinkMsgId)
        assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, seq, response=text)]).success
        reply = call.result(DEADLINE_S)
        assert (reply.status, reply.raw) == (code, raw)
        assert status(cloud, reply.rpc_id) == "SUCCESSFUL"


def test_an_error_answer_is_504_and_failed(cloud, device, clients, pool):
    client = connect(cloud, clients)
    call = pool.submit(http, cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                       {"method": "reboot"})
    d, req = rpc_downlink(client)
    assert req.requestMsg.params == "{}"  # params default to {}
    client.ack(d.downlinkMsgId)
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, error="INTERNAL")]).success
    reply = call.result(DEADLINE_S)
    assert reply.status == 504
    assert (reply.json["rpcStatus"], reply.json["rpcId"]) == ("FAILED", reply.rpc_id)
    got = http(cloud.admin_port, "GET", f"/api/rpc/{reply.rpc_id}").json
    assert (got["status"], got["error"], got["response"]) == ("FAILED", "INTERNAL", {"error": "INTERNAL"})


@pytest.mark.parametrize("error,expected", [("TIMEOUT", "TIMEOUT"), ("EXPIRED", "EXPIRED")])
def test_the_edge_reporting_timeout_or_expiry_sets_that_status(cloud, device, clients, pool,
                                                               error, expected):
    client = connect(cloud, clients)
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                  {"method": "m", "persistent": True, "timeout": 5000}).json["rpcId"]
    d, req = rpc_downlink(client)
    client.ack(d.downlinkMsgId)
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, error=error)]).success
    assert status(cloud, rpc_id) == expected


def test_the_edges_timeout_report_at_the_deadline_expires_a_persistent_request(cloud, device, clients):
    client = connect(cloud, clients)
    expires = int(time.time() * 1000) + 300
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                  {"method": "m", "persistent": True, "expirationTime": expires}).json["rpcId"]
    d, req = rpc_downlink(client)
    client.ack(d.downlinkMsgId)
    wait_until(lambda: time.time() * 1000 > expires + 20, timeout=DEADLINE_S, what="the deadline")
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, error="TIMEOUT")]).success
    got = http(cloud.admin_port, "GET", f"/api/rpc/{rpc_id}").json
    assert (got["status"], got["error"]) == ("EXPIRED", "TIMEOUT")
    assert (metric(cloud, "rpc_answers"), metric(cloud, "rpc_answers_late")) == (1, 0)


def test_one_way_answers_200_once_queued_and_is_delivered_on_the_edge_ack(cloud, device, clients):
    client = connect(cloud, clients)
    reply = http(cloud.admin_port, "POST", f"/api/rpc/oneway/{device}",
                 {"method": "blink", "params": {"times": 3}})
    assert (reply.status, reply.raw) == (200, b"")
    d, req = rpc_downlink(client)
    assert req.oneway is True
    assert str(uuid_of(req.requestUuidMSB, req.requestUuidLSB)) == reply.rpc_id
    wait_until(lambda: status(cloud, reply.rpc_id) == "SENT", timeout=DEADLINE_S, what="SENT")
    client.ack(d.downlinkMsgId)
    wait_until(lambda: status(cloud, reply.rpc_id) == "DELIVERED", timeout=DEADLINE_S,
               what="DELIVERED after the edge's acknowledgement")
    assert cloud.store.queued_downlinks(cloud.service.edge("rk-1").edge_id) == 0


def test_request_ids_count_per_device(cloud, device, clients):
    client = connect(cloud, clients)
    for expected in (1, 2, 3):
        assert http(cloud.admin_port, "POST", f"/api/rpc/oneway/{device}", {"method": "m"}).status == 200
        d, req = rpc_downlink(client)
        assert req.requestId == expected
        client.ack(d.downlinkMsgId)


def test_a_device_named_with_its_edge(cloud, device, clients):
    client = connect(cloud, clients)
    reply = http(cloud.admin_port, "POST", "/api/rpc/oneway/pump-1?edge=rk-1", {"method": "m"})
    assert reply.status == 200
    _, req = rpc_downlink(client)
    assert uuid_of(req.deviceIdMSB, req.deviceIdLSB) == device


# -- timeout, persistence, expiry ------------------------------------------------------------------


def test_no_answer_in_time_is_504_and_timeout_and_a_late_answer_changes_nothing(cloud, device,
                                                                               clients, pool):
    client = connect(cloud, clients)
    started = time.monotonic()
    call = pool.submit(http, cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                       {"method": "slow", "timeout": 300})
    d, req = rpc_downlink(client)
    client.ack(d.downlinkMsgId)
    reply = call.result(DEADLINE_S)
    assert time.monotonic() - started >= 0.3
    assert (reply.status, reply.json["rpcStatus"]) == (504, "TIMEOUT")
    assert status(cloud, reply.rpc_id) == "TIMEOUT"
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, response='"late"')]).success
    assert status(cloud, reply.rpc_id) == "TIMEOUT"
    assert (metric(cloud, "rpc_answers"), metric(cloud, "rpc_answers_late")) == (0, 1)


def test_persistent_request_to_an_offline_edge_is_delivered_when_it_connects(cloud, device, clients):
    reply = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                 {"method": "setMode", "params": "eco", "persistent": True, "timeout": 60_000})
    assert reply.status == 200
    rpc_id = reply.json["rpcId"]
    assert reply.rpc_id == rpc_id
    assert status(cloud, rpc_id) == "QUEUED"

    client = connect(cloud, clients)
    d, req = rpc_downlink(client)
    assert str(uuid_of(req.requestUuidMSB, req.requestUuidLSB)) == rpc_id
    assert (req.persisted, req.requestMsg.params) == (True, '"eco"')
    wait_until(lambda: status(cloud, rpc_id) == "SENT", timeout=DEADLINE_S, what="SENT")
    client.ack(d.downlinkMsgId)
    wait_until(lambda: status(cloud, rpc_id) == "DELIVERED", timeout=DEADLINE_S, what="DELIVERED")
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, response='{"mode":"eco"}')]).success
    got = http(cloud.admin_port, "GET", f"/api/rpc/persistent/{rpc_id}").json
    assert (got["status"], got["response"]) == ("SUCCESSFUL", {"mode": "eco"})


def test_requests_queued_together_travel_in_one_downlink_in_order(cloud, device, clients):
    ids = [http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                {"method": f"m{i}", "persistent": True, "timeout": 60_000}).json["rpcId"]
           for i in range(5)]
    client = connect(cloud, clients)
    d = client.downlink()
    assert [c.requestMsg.method for c in d.deviceRpcCallMsg] == ["m0", "m1", "m2", "m3", "m4"]
    assert [str(uuid_of(c.requestUuidMSB, c.requestUuidLSB)) for c in d.deviceRpcCallMsg] == ids
    assert [c.requestId for c in d.deviceRpcCallMsg] == [1, 2, 3, 4, 5]
    client.ack(d.downlinkMsgId)
    wait_until(lambda: [status(cloud, i) for i in ids] == ["DELIVERED"] * 5, timeout=DEADLINE_S,
               what="all five DELIVERED")
    assert cloud.store.queued_downlinks(cloud.service.edge("rk-1").edge_id) == 0
    answers = [rpc_answer(c, n, response=str(n)) for n, c in enumerate(d.deviceRpcCallMsg, start=1)]
    assert client.uplink(deviceRpcCallMsg=answers).success
    assert [http(cloud.admin_port, "GET", f"/api/rpc/{i}").json["response"] for i in ids] == [1, 2, 3, 4, 5]
    assert client.nothing_within(0.2)


def test_a_refused_batch_is_sent_one_by_one_and_only_the_bad_request_fails(tmp_path, clients):
    cfg = cloud_config(tmp_path / "c")
    with CloudServer(cfg, link=LinkSettings(resend_timeout_s=0.2, max_attempts=2)) as server:
        server.service.create_edge("edge-1", routing_key="rk-1", secret="s3cret-1")
        dev, _ = server.service.create_device("rk-1", "pump-1", token="tok-1")
        ids = [http(server.admin_port, "POST", f"/api/rpc/oneway/{dev.id}",
                    {"method": name, "persistent": True, "timeout": 60_000}).json["rpcId"]
               for name in ("good-1", "bad", "good-2")]
        client = connect(server, clients)
        batch = client.downlink()
        assert len(batch.deviceRpcCallMsg) == 3
        client.ack(batch.downlinkMsgId, success=False, error="Device has no method 'bad'")
        seen = []
        while len(seen) < 5:  # good-1, bad, bad again (parked), good-2
            d = client.downlink()
            (call,) = d.deviceRpcCallMsg
            seen.append(call.requestMsg.method)
            refused = call.requestMsg.method == "bad"
            client.ack(d.downlinkMsgId, success=not refused, error="no such method" if refused else "")
            if seen[-1] == "good-2":
                break
        assert seen == ["good-1", "bad", "bad", "good-2"]
        wait_until(lambda: [status(server, i) for i in ids] == ["DELIVERED", "FAILED", "DELIVERED"],
                   timeout=DEADLINE_S, what="only the bad request failed")
        got = http(server.admin_port, "GET", f"/api/rpc/{ids[1]}").json
        assert got["error"] == "refused by the edge: no such method"


def test_a_request_that_expires_in_the_queue_is_never_sent(cloud, device, clients):
    expires = int(time.time() * 1000) + 300
    reply = http(cloud.admin_port, "POST", f"/api/rpc/oneway/{device}",
                 {"method": "m", "persistent": True, "expirationTime": expires})
    rpc_id = reply.json["rpcId"]
    later = http(cloud.admin_port, "POST", f"/api/rpc/oneway/{device}",
                 {"method": "after", "persistent": True, "timeout": 60_000}).json["rpcId"]
    wait_until(lambda: time.time() * 1000 > expires + 50, timeout=DEADLINE_S, what="expiry")

    client = connect(cloud, clients)
    _, req = rpc_downlink(client)  # the next request, not the expired one
    assert (req.requestMsg.method, str(uuid_of(req.requestUuidMSB, req.requestUuidLSB))) == ("after", later)
    assert status(cloud, rpc_id) == "EXPIRED"
    assert metric(cloud, "rpc_expired") == 1


def test_an_expiration_time_already_past_is_expired_at_once(cloud, device, clients):
    past = int(time.time() * 1000) - 1000
    persistent = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                      {"method": "m", "persistent": True, "expirationTime": past})
    assert status(cloud, persistent.json["rpcId"]) == "EXPIRED"
    lightweight = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                       {"method": "m", "expirationTime": past})
    assert (lightweight.status, lightweight.json["rpcStatus"]) == (504, "EXPIRED")
    client = connect(cloud, clients)
    assert client.nothing_within(0.3)
    assert cloud.store.queued_downlinks(cloud.service.edge("rk-1").edge_id) == 0


def test_a_persistent_request_unanswered_past_its_expiration_is_expired(cloud, device, clients):
    client = connect(cloud, clients)
    expires = int(time.time() * 1000) + 300
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                  {"method": "m", "persistent": True, "expirationTime": expires}).json["rpcId"]
    d, _ = rpc_downlink(client)
    client.ack(d.downlinkMsgId)
    wait_until(lambda: status(cloud, rpc_id) == "EXPIRED", timeout=DEADLINE_S,
               what="EXPIRED after the expirationTime")


def test_deleting_a_queued_request_takes_it_out_of_the_queue(cloud, device, clients):
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/oneway/{device}",
                  {"method": "m", "persistent": True, "timeout": 60_000}).json["rpcId"]
    deleted = http(cloud.admin_port, "DELETE", f"/api/rpc/persistent/{rpc_id}")
    assert (deleted.status, deleted.json["status"]) == (200, "DELETED")
    assert status(cloud, rpc_id) == "DELETED"
    client = connect(cloud, clients)  # (acknowledges the device's own downlink)
    assert client.nothing_within(0.3)
    assert cloud.store.queued_downlinks(cloud.service.edge("rk-1").edge_id) == 0


def test_deleting_a_delivered_request_ignores_its_answer_and_a_final_one_stays(cloud, device,
                                                                               clients):
    client = connect(cloud, clients)
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                  {"method": "m", "persistent": True}).json["rpcId"]
    d, req = rpc_downlink(client)
    client.ack(d.downlinkMsgId)
    wait_until(lambda: status(cloud, rpc_id) == "DELIVERED", timeout=DEADLINE_S, what="DELIVERED")
    assert http(cloud.admin_port, "DELETE", f"/api/rpc/persistent/{rpc_id}").json["status"] == "DELETED"
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, response='"x"')]).success
    assert status(cloud, rpc_id) == "DELETED"
    assert metric(cloud, "rpc_answers_late") == 1

    past = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                {"method": "m", "persistent": True, "expirationTime": 1}).json["rpcId"]
    assert http(cloud.admin_port, "DELETE", f"/api/rpc/persistent/{past}").json["status"] == "EXPIRED"
    assert http(cloud.admin_port, "DELETE", f"/api/rpc/persistent/{uuid.uuid4()}").status == 404


def test_requests_and_statuses_survive_a_restart(tmp_path, device, cloud):
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/oneway/{device}",
                  {"method": "m", "persistent": True, "timeout": 60_000}).json["rpcId"]
    cloud.stop()
    with CloudServer(cloud_config(tmp_path / "cloud")) as again:
        got = http(again.admin_port, "GET", f"/api/rpc/{rpc_id}").json
        assert (got["status"], got["request"]["body"]["method"]) == ("QUEUED", "m")
    store = open_cloud_store(cloud_config(tmp_path / "cloud"), readonly=True)
    try:
        record = store.rpc_record(uuid.UUID(rpc_id))
        assert record is not None and str(record.status) == "QUEUED"
    finally:
        store.close()


# -- answers ---------------------------------------------------------------------------------------


def test_an_answer_for_an_unknown_request_is_counted_and_applied_as_nothing(cloud, device, clients):
    client = connect(cloud, clients)
    msb, lsb = uuid_halves(device)
    r_msb, r_lsb = uuid_halves(uuid.uuid4())
    ghost = edge_pb2.DeviceRpcCallMsg(deviceIdMSB=msb, deviceIdLSB=lsb, requestUuidMSB=r_msb,
                                      requestUuidLSB=r_lsb, requestId=9,
                                      requestMsg=edge_pb2.RpcRequestMsg())
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(ghost, 1, response='"x"')]).success
    assert (metric(cloud, "rpc_answers_unknown"), metric(cloud, "rpc_answers")) == (1, 0)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{cloud.admin_port}/metrics").read().decode()
    assert [(s.labels, s.value) for f in text_string_to_metric_families(metrics) for s in f.samples
            if s.name == "edge_cloud_rpc_answers_total"] == [
        ({"outcome": "settled"}, 0), ({"outcome": "unknown"}, 1), ({"outcome": "late"}, 0)]


def test_an_answer_is_applied_once_however_often_it_is_resent(cloud, device, clients, pool):
    client = connect(cloud, clients)
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                  {"method": "m", "persistent": True}).json["rpcId"]
    d, req = rpc_downlink(client)
    client.ack(d.downlinkMsgId)
    answer = rpc_answer(req, 1, response='"first"')
    for _ in range(3):  # resent with its seq: deduplicated
        assert client.uplink(deviceRpcCallMsg=[answer]).success
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 2, response='"second"')]).success
    got = http(cloud.admin_port, "GET", f"/api/rpc/{rpc_id}").json
    assert (got["status"], got["response"]) == ("SUCCESSFUL", "first")
    assert (metric(cloud, "rpc_answers"), metric(cloud, "rpc_answers_late")) == (1, 1)


def test_another_edge_cannot_answer_a_request(cloud, device, clients):
    cloud.service.create_edge("edge-2", routing_key="rk-2", secret="s3cret-2")
    client = connect(cloud, clients)
    rpc_id = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}",
                  {"method": "m", "persistent": True}).json["rpcId"]
    _, req = rpc_downlink(client)
    other = LinkClient(cloud.port)
    clients.append(other)
    assert other.connect("rk-2", "s3cret-2").responseCode == edge_pb2.ACCEPTED
    other.sync(full=False)
    assert other.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, response='"x"')]).success
    assert metric(cloud, "rpc_answers_unknown") == 1
    wait_until(lambda: status(cloud, rpc_id) == "SENT", timeout=DEADLINE_S, what="SENT")


def test_waiting_calls_hold_no_thread_each(cloud, device, clients):
    connect(cloud, clients)
    calls = 60

    async def run() -> tuple[int, list[int]]:
        async with aiohttp.ClientSession() as session:
            async def one() -> int:
                async with session.post(
                        f"http://127.0.0.1:{cloud.admin_port}/api/rpc/twoway/{device}",
                        json={"method": "m", "timeout": 1500}) as resp:
                    return resp.status

            tasks = [asyncio.create_task(one()) for _ in range(calls)]
            await asyncio.to_thread(wait_until, lambda: cloud.rpc.waiters.waiting() == calls,
                                    timeout=DEADLINE_S, what="every call waiting")
            during = threading.active_count()
            return during, list(await asyncio.gather(*tasks))

    baseline = threading.active_count()
    during, codes = asyncio.run(run())
    assert codes == [504] * calls
    assert during - baseline < calls // 2  # the worker pool and the test's own, not one per call


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("body,words", [
    ({"params": {}}, "method: required"),
    ({"method": ""}, "method: expected text"),
    ({"method": 7}, "method: expected text"),
    ({"method": "m", "timeout": 5}, "timeout: 5 ms is out of range 100..600000"),
    ({"method": "m", "timeout": 600_001}, "timeout: 600001 ms is out of range 100..600000"),
    ({"method": "m", "timeout": "10"}, "timeout: expected a whole number"),
    ({"method": "m", "timeout": True}, "timeout: expected a whole number"),
    ({"method": "m", "persistent": "yes"}, "persistent: expected true or false"),
    ({"method": "m", "expirationTime": -1}, "expirationTime: -1 is not a time"),
    ({"method": "m", "colour": "red"}, "unknown fields: colour"),
    (["m"], "expected a JSON object"),
])
def test_bad_bodies_are_refused_with_400(cloud, device, body, words):
    reply = http(cloud.admin_port, "POST", f"/api/rpc/twoway/{device}", body)
    assert reply.status == 400
    assert words in reply.json["message"]
    assert metric(cloud, "rpc_requests") == 0


def test_malformed_json_and_unknown_devices_and_ids(cloud, device):
    port = cloud.admin_port
    assert http(port, "POST", f"/api/rpc/oneway/{device}", raw=b"{nope").status == 400
    unknown = http(port, "POST", f"/api/rpc/oneway/{uuid.uuid4()}", {"method": "m"})
    assert (unknown.status, unknown.json["error"]) == (404, "not found")
    assert http(port, "POST", "/api/rpc/oneway/pump-1?edge=rk-9", {"method": "m"}).status == 404
    assert http(port, "POST", "/api/rpc/oneway/no-such-device", {"method": "m"}).status == 404
    assert http(port, "GET", f"/api/rpc/{uuid.uuid4()}").status == 404
    assert http(port, "GET", "/api/rpc/not-a-uuid").status == 400
    assert cloud.store.queued_downlinks(cloud.service.edge("rk-1").edge_id) == 1  # the device's


# -- edge-cloud rpc --------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "edge_sync.cli.cloud"]


def cli(cloud: CloudServer, data_dir: Path, *args: str, admin_port: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_", "EDGES_"))}
    env.update(CLOUD_DATA_DIR=str(data_dir), CLOUD_ADMIN_HOST="127.0.0.1",
               CLOUD_ADMIN_PORT=str(admin_port or cloud.admin_port))
    return subprocess.run([*CLI, "rpc", *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_two_way_prints_the_answer(cloud, device, clients, pool, tmp_path):
    client = connect(cloud, clients)
    run = pool.submit(cli, cloud, tmp_path / "cloud", "--device", "pump-1", "--edge", "rk-1",
                      "--method", "getTemp", "--params", '{"unit": "C"}', "--timeout", "5")
    d, req = rpc_downlink(client)
    assert (req.requestMsg.method, json.loads(req.requestMsg.params)) == ("getTemp", {"unit": "C"})
    client.ack(d.downlinkMsgId)
    assert client.uplink(deviceRpcCallMsg=[rpc_answer(req, 1, response='{"t":21.5}')]).success
    proc = run.result(30)
    assert (proc.returncode, json.loads(proc.stdout)) == (0, {"t": 21.5}), proc.stderr


def test_cli_persistent_and_one_way_print_the_id_and_status(cloud, device, tmp_path):
    proc = cli(cloud, tmp_path / "cloud", "--device", str(device), "--method", "m", "--persistent",
               "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"rpcId": out["rpcId"], "status": "QUEUED"}
    proc = cli(cloud, tmp_path / "cloud", "--device", str(device), "--method", "m", "--oneway")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "QUEUED"


def test_cli_no_answer_exits_1_with_the_status(cloud, device, clients, tmp_path):
    connect(cloud, clients)
    proc = cli(cloud, tmp_path / "cloud", "--device", "pump-1", "--method", "m", "--timeout", "0.3")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["status"] == "TIMEOUT"
    assert "got no answer: TIMEOUT" in proc.stderr


def test_cli_refusals(cloud, device, tmp_path):
    unknown = cli(cloud, tmp_path / "cloud", "--device", "nope", "--method", "m")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert "refused (404)" in unknown.stderr
    bad = cli(cloud, tmp_path / "cloud", "--device", "pump-1", "--method", "m", "--timeout", "0.01")
    assert bad.returncode == 1 and "timeout: 10 ms is out of range" in bad.stderr
    stopped = cli(cloud, tmp_path / "cloud", "--device", "pump-1", "--method", "m",
                  admin_port=free_ports()[0])
    assert stopped.returncode == 1 and "the running server" in stopped.stderr


def test_the_rpc_routes_pass_the_admin_guard(tmp_path):
    cfg = cloud_config(tmp_path / "guarded")
    cfg = dataclasses.replace(cfg, admin=dataclasses.replace(cfg.admin, token="t0ken"))
    with CloudServer(cfg) as server:
        path = f"http://127.0.0.1:{server.admin_port}/api/rpc/twoway/{uuid.uuid4()}"
        body = json.dumps({"method": "m"}).encode()
        for headers, expected in [
            ({"Content-Type": "application/json"}, 401),
            ({"Content-Type": "text/plain", "Authorization": "Bearer t0ken"}, 415),
            ({"Content-Type": "application/json", "Authorization": "Bearer t0ken",
              "Origin": "http://evil.example"}, 403),
            ({"Content-Type": "application/json", "Authorization": "Bearer t0ken"}, 404),
        ]:
            req = urllib.request.Request(path, data=body, method="POST", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=DEADLINE_S)
            assert err.value.code == expected, headers
        assert server.counters.metrics.value("edge_cloud_rpc_requests_total") == 0
