"""Server-side RPC between the real `edge-sync run` (a subprocess) and a ThingsBoard CE server
emulated from its Java sources (tests.helpers.tb_server.TbServer.send_rpc): the request as
ThingsBoard sends it (requestId counting from 0, persisted, retries 0, additionalInfo "null",
a random downlinkMsgId, an offline edge never queued), the device's long poll and answer, and
the DeviceRpcCallMsg answer the server must be able to match: requestUuidMSB/LSB, requestId,
oneway and expirationTime echoed exactly, an error only by an RpcError name (a request the
edge cannot deliver: INTERNAL). Redeliveries as
ThingsBoard makes them (the same DownlinkMsg again, the same event with a new downlinkMsgId)
reach the device once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.proto import edge_pb2
from tests.helpers.agent import Agent
from tests.helpers.tb_server import RpcAnswer, RpcSent, TbServer
from tests.integration.test_thingsboard_server import Harness, wait_connected

pytestmark = pytest.mark.slow

DEADLINE_S = 30.0


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def connected(harness: Harness) -> tuple[TbServer, Agent, uuid.UUID, str]:
    """The server, the edge connected and synced, and a device the server knows (made on the
    edge, so its creation went up)."""
    server = harness.server(answer_delay=0.0)
    agent = harness.agent(server)
    server.wait_for(lambda: server.sync_completed >= 1, timeout=DEADLINE_S, what="the sync")
    wait_connected(agent)
    device_id, token = agent.create_device("tb-rpc-dev")
    device = uuid.UUID(device_id)
    server.wait_for(lambda: device in server.devices, timeout=DEADLINE_S,
                    what="the device created on the server")
    return server, agent, device, token


def acked(server: TbServer, downlink: edge_pb2.DownlinkMsg, copies: int = 1) -> list[bool]:
    """The edge's answers to that DownlinkMsg (success flags), once it answered every copy."""
    def answers() -> list[bool] | None:
        out = [a.success for a in server.downlink_acks
               if a.downlinkMsgId == downlink.downlinkMsgId]
        return out if len(out) >= copies else None

    return server.wait_for(answers, timeout=DEADLINE_S,
                           what=f"the edge's answers to downlink {downlink.downlinkMsgId}")


def poll(agent: Agent, token: str, timeout_ms: int = 10_000) -> tuple[int, Any]:
    resp = agent.device("GET", f"/api/v1/{token}/rpc?timeout={timeout_ms}")
    return resp.status, (resp.json() if resp.body else None)


def answer_of(server: TbServer, sent: RpcSent) -> RpcAnswer:
    [answer] = server.wait_for(lambda: server.answers_to(sent.request_uuid), timeout=DEADLINE_S,
                               what=f"the answer to RPC {sent.request_id}")
    return answer


def assert_echoes(answer: RpcAnswer, sent: RpcSent) -> None:
    """The fields ThingsBoard matches the answer by, exactly as the request carried them."""
    got, req = answer.msg, sent.msg
    assert (got.deviceIdMSB, got.deviceIdLSB) == (req.deviceIdMSB, req.deviceIdLSB)
    assert (got.requestUuidMSB, got.requestUuidLSB) == (req.requestUuidMSB, req.requestUuidLSB)
    assert got.requestId == req.requestId == sent.request_id
    assert got.oneway == req.oneway
    assert got.expirationTime == req.expirationTime
    assert got.HasField("responseMsg") and not got.HasField("requestMsg")


def test_a_request_as_thingsboard_sends_it_is_polled_answered_and_echoed_exactly(
        harness: Harness) -> None:
    server, agent, device, token = connected(harness)
    first = server.send_rpc(device, "setGpio", {"pin": 7, "value": 1}, timeout_ms=30_000)
    assert first is not None
    req = first.msg
    assert (first.request_id, req.persisted, req.retries, req.additionalInfo) == \
        (0, True, 0, "null")
    assert acked(server, first.downlink) == [True]

    assert poll(agent, token) == (200, {"id": 0, "method": "setGpio",
                                        "params": {"pin": 7, "value": 1}})
    assert agent.device("POST", f"/api/v1/{token}/rpc/0", {"pin": 7, "ok": True}).status == 200
    answer = answer_of(server, first)
    assert_echoes(answer, first)
    assert (json.loads(answer.msg.responseMsg.response), answer.msg.responseMsg.error) == \
        ({"pin": 7, "ok": True}, "")
    assert answer.fate == "settled"

    # the device actor's next request is 1; answered by the edge just the same
    second = server.send_rpc(device, "getTemp", {"unit": "C"}, timeout_ms=30_000,
                             additional_info='{"k":"v"}')
    assert second is not None and second.request_id == 1
    assert poll(agent, token) == (200, {"id": 1, "method": "getTemp", "params": {"unit": "C"}})
    assert agent.device("POST", f"/api/v1/{token}/rpc/1", {"t": 21.5}).status == 200
    answer = answer_of(server, second)
    assert_echoes(answer, second)
    assert json.loads(answer.msg.responseMsg.response) == {"t": 21.5}
    assert answer.fate == "settled"
    with server.cond:
        answered = [r for r in server.uplinks if r.msg.deviceRpcCallMsg]
        assert [r.answer.success for r in answered if r.answer is not None] == [True, True]
    assert server.failures() == []


def test_a_one_way_request_is_delivered_and_its_answer_echoes_oneway(harness: Harness) -> None:
    server, agent, device, token = connected(harness)
    sent = server.send_rpc(device, "blink", {"times": 3}, oneway=True, persisted=False,
                           timeout_ms=30_000)
    assert sent is not None
    assert poll(agent, token) == (200, {"id": 0, "method": "blink", "params": {"times": 3}})
    answer = answer_of(server, sent)
    assert_echoes(answer, sent)
    assert answer.msg.oneway is True
    assert answer.msg.responseMsg.error == ""


def test_an_unpolled_request_is_reported_timeout_at_its_expiration_and_never_delivered(
        harness: Harness) -> None:
    server, agent, device, token = connected(harness)
    sent = server.send_rpc(device, "late", {}, timeout_ms=700)
    assert sent is not None
    assert acked(server, sent.downlink) == [True]
    answer = answer_of(server, sent)
    assert_echoes(answer, sent)
    assert (answer.msg.responseMsg.error, answer.msg.responseMsg.response) == ("TIMEOUT", "")
    assert poll(agent, token, 300) == (408, None)
    assert server.failures() == []  # TIMEOUT is an RpcError name: the uplink is accepted


def test_a_request_the_edge_cannot_deliver_is_reported_by_an_rpc_error_name(
        harness: Harness) -> None:
    """A request without a method is FAILED at once. ThingsBoard reads the answer's error with
    RpcError.valueOf (DeviceEdgeProcessor.processDeviceRpcResponseFromEdge): the edge says
    INTERNAL and keeps its reason, "no method", in its own record."""
    server, agent, device, _ = connected(harness)
    sent = server.send_rpc(device, "", {}, timeout_ms=30_000)
    assert sent is not None
    assert acked(server, sent.downlink) == [True]
    answer = answer_of(server, sent)
    assert_echoes(answer, sent)
    assert (answer.msg.responseMsg.error, answer.fate) == ("INTERNAL", "settled")
    assert server.failures() == []
    resp = agent.admin("GET", f"/api/rpc?device={device}")
    assert resp.status == 200, resp.body
    assert [(r["request_uuid"], r["status"], r["error"]) for r in resp.json()] == [
        (str(sent.request_uuid), "FAILED", "no method")]


def test_thingsboards_redeliveries_reach_the_device_once(harness: Harness) -> None:
    server, agent, device, token = connected(harness)
    # the same DownlinkMsg twice (an acknowledgement lost), then the same event converted anew
    sent = server.send_rpc(device, "open", {"valve": 2}, timeout_ms=30_000, copies=2)
    assert sent is not None
    assert acked(server, sent.downlink, copies=2) == [True, True]
    again = server.redeliver(sent)
    assert acked(server, again) == [True]

    assert poll(agent, token) == (200, {"id": 0, "method": "open", "params": {"valve": 2}})
    assert agent.device("POST", f"/api/v1/{token}/rpc/0", {"open": True}).status == 200
    assert poll(agent, token, 500) == (408, None)
    answer = answer_of(server, sent)
    assert_echoes(answer, sent)
    assert answer.fate == "settled"
    with server.cond:
        assert len([r for r in server.uplinks if r.msg.deviceRpcCallMsg]) == 1


def test_an_rpc_to_a_disconnected_edge_is_not_queued_by_thingsboard(harness: Harness) -> None:
    """The emulator's own rules, which the edge cannot change: ThingsBoard drops a request
    already expired, and one for an edge that is not connected."""
    server, agent, device, _ = connected(harness)
    assert server.send_rpc(device, "m", timeout_ms=-1) is None
    agent.kill9()
    server.wait_for(lambda: server.connects and all(s.ended for s in server._streams),
                    timeout=DEADLINE_S, what="the edge's stream ended")
    assert server.send_rpc(device, "m") is None
    with server.cond:
        assert server.rpc_sent == []
