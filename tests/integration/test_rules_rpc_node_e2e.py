"""The rule engine's RPC Call Request node (ThingsBoard's
org.thingsboard.rule.engine.rpc.TbSendRPCRequestNode) end to end, real processes on loopback:
`edge-cloud serve` (tests.helpers.cloud_proc.CloudProc) and `edge-sync run`
(tests.helpers.agent.Agent) started with ``EDGE_RULES_FILE`` naming a chain in ThingsBoard's
export format. Devices post over the edge's device HTTP API (or MQTT) and take the request the
chain made as they take a cloud's: the HTTP long poll ``GET /api/v1/$TOKEN/rpc`` (or the
``v1/devices/me/rpc/request/+`` subscription), answered at ``POST /api/v1/$TOKEN/rpc/{id}``.

- ThingsBoard's default edge root chain (application/src/main/data/json/edge/rule_chains/
  edge_root_rule_chain.json, copied as tests/fixtures/rules/thingsboard_edge_root_rule_chain
  .json), which holds an RPC Call Request node, runs as rules.file: telemetry saved on the edge
  and pushed once, client attributes pushed, exact per-node counts (the RPC node gets nothing:
  the chain runs on telemetry and attributes only); so does 4.2.1's
  (thingsboard_4_2_edge_root_rule_chain.json), whose device profile node passes every message
  on, with one WARNING that the profiles' alarm rules are not evaluated on the edge;
- a chain that asks a device to run its fan above 80 degrees (tests/fixtures/rules/
  rpc_on_threshold.json): the device's poll gets exactly that one request, its answer makes the
  request SUCCESSFUL on the edge (listed with ``"origin": "rule"``), and the cloud gets the
  telemetry and never an RPC_CALL event (the request is the edge's own);
- the device's answer goes on from the RPC node by Success (here to the cloud, as telemetry of
  the reading's ts);
- a message without ``method`` or ``params`` fails the node (ThingsBoard's texts), the device
  still gets its 200 and no request is stored;
- the metadata's oneway and expirationTime are the request's, the data's requestId is not (the
  device numbers its requests, as ThingsBoard's device actor does); a one-way
  request delivered ends SUCCESSFUL, a two-way one unanswered TIMEOUT, one never polled EXPIRED
  (never delivered late), and the cloud hears of none of it;
- a kill -9 after the device's 200 and before its poll: after the restart the poll still gets
  the request, once (it was stored in the same commit as the message);
- an MQTT device gets the request on its subscription and answers it on the response topic.

ThingsBoard's TbSendRPCRequestNode.onMsg is the reference: ``oneway`` and ``expirationTime``
from the metadata, else now + timeoutInSeconds; the id the device sees is its own numbering
(DeviceActorMessageProcessor, rpcSeq), not the data's ``requestId``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge_sync.rules.nodes import (
    DEVICE_PROFILE,
    JS_FILTER,
    MSG_TYPE_SWITCH,
    PUSH_TO_CLOUD,
    RPC_REQUEST,
    SAVE_TIMESERIES,
    TRANSFORM,
)
from edge_sync.storage.records import Action
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import edge_status, wait_connected
from tests.helpers.metric_values import metric_total
from tests.helpers.mqtt_device import TELEMETRY, MqttDevice
from tests.helpers.wait import wait_until
from tests.integration.test_rules_e2e import (
    BASE_TS,
    DEADLINE_S,
    FIXTURES,
    device_actions,
    local_series,
    node_counts,
    rule_records,
    rules_of,
    settle,
    start_linked,
    telemetry_at_cloud,
)

pytestmark = pytest.mark.slow

SAVE_ATTRIBUTES = "org.thingsboard.rule.engine.telemetry.TbMsgAttributesNode"
LOG = "org.thingsboard.rule.engine.action.TbLogNode"
ROOT_CHAIN = FIXTURES / "thingsboard_edge_root_rule_chain.json"
ROOT_CHAIN_4_2 = FIXTURES / "thingsboard_4_2_edge_root_rule_chain.json"
FAN_CHAIN = FIXTURES / "rpc_on_threshold.json"
FAN_REQUEST = {"method": "setFan", "params": {"speed": 3}}
TIMEOUT_MS = 60_000  # the fan chain's timeoutInSeconds
POLL_MS = 20_000  # a device's long poll, longer than any wait below
INT_MAX = 2**31 - 1
RPC_SUBSCRIPTION = "v1/devices/me/rpc/request/+"
RPC_REQUEST_TOPIC = "v1/devices/me/rpc/request/"
RPC_RESPONSE_TOPIC = "v1/devices/me/rpc/response/"


# -- helpers -----------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def edge_rpcs(agent: Agent, device_id: str) -> list[dict[str, Any]]:
    """The device's RPC requests as the admin API lists them (``GET /api/rpc``), in arrival
    order."""
    resp = agent.admin("GET", f"/api/rpc?device={device_id}")
    assert resp.status == 200, resp.body
    return list(resp.json())


def rpc_calls(agent: Agent, events: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The RPC_CALL events: those of the edge's log, those the cloud applied."""
    return ([e for e in agent.read_log() if e.action == Action.RPC_CALL],
            [e for e in events if e["action"] == "RPC_CALL"])


def fan_counts(*, hot: int, cold: int, rpc_failed: int = 0) -> list[tuple[str, str, int, int]]:
    """The fan chain's per-node counts after ``hot`` readings over 80 and ``cold`` others."""
    readings = hot + cold
    return [
        ("nodes[0] 'Message Type Switch'", MSG_TYPE_SWITCH, readings, 0),
        ("nodes[1] 'Save Timeseries'", SAVE_TIMESERIES, readings, 0),
        ("nodes[2] 'Push to cloud'", PUSH_TO_CLOUD, readings, 0),
        ("nodes[3] 'Hotter than 80?'", JS_FILTER, readings, 0),
        ("nodes[4] 'Fan command'", TRANSFORM, hot, 0),
        ("nodes[5] 'RPC Call Request'", RPC_REQUEST, hot, rpc_failed),
    ]


def fan_chain_with(tmp_path: Path, script: str) -> Path:
    """The fan chain with another script in its transform (JS)."""
    doc = json.loads(FAN_CHAIN.read_text(encoding="utf-8"))
    transform = doc["metadata"]["nodes"][4]
    assert transform["name"] == "Fan command"
    transform["configuration"]["jsScript"] = script
    path = tmp_path / "fan_chain.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def reading(n: int, temperature: int) -> dict[str, Any]:
    return {"ts": BASE_TS + n, "values": {"temperature": temperature}}


def poll(agent: Agent, token: str, timeout_ms: int) -> tuple[int, bytes]:
    """One long poll of the device's RPC requests: (status, body)."""
    resp = agent.device("GET", f"/api/v1/{token}/rpc?timeout={timeout_ms}")
    return resp.status, resp.body


def answer(agent: Agent, token: str, request_id: int, body: Any) -> tuple[int, bytes]:
    resp = agent.device("POST", f"/api/v1/{token}/rpc/{request_id}", body)
    return resp.status, resp.body


def check_rule_request(record: dict[str, Any], device_id: str, request_id: int, *,
                       stored_between: tuple[int, int]) -> None:
    """A request the fan chain stored: the fan command, two-way, expiring timeoutInSeconds
    after the node ran (TbSendRPCRequestNode: now + timeoutInSeconds when the metadata has no
    expirationTime), origin "rule"."""
    first, last = stored_between
    assert (record["device_id"], record["request_id"], record["method"],
            json.loads(record["params"]), record["oneway"], record["origin"]) == \
        (device_id, request_id, "setFan", {"speed": 3}, False, "rule")
    assert first <= record["queued_at"] <= last, (record, stored_between)
    assert first + TIMEOUT_MS <= record["expiration_time"] <= last + TIMEOUT_MS, \
        (record, stored_between)


# -- ThingsBoard's default edge root chain -------------------------------------------------------


def test_thingsboard_default_edge_root_chain_runs_as_the_rules_file(tmp_path, procs):
    """The root chain every ThingsBoard Edge of ThingsBoard 4.3 and later starts with holds an
    RPC Call Request node (on the switch's "RPC Request to Device" connection): the edge takes
    it as it is. Telemetry is saved on the edge and pushed to the cloud once, client attributes
    are saved and pushed; the RPC node, the log nodes and the SERVER_SCOPE push get nothing
    from a device's posts."""
    agent = _runs_as_the_rules_file(tmp_path, procs, ROOT_CHAIN)
    assert node_counts(agent) == [
        ("nodes[0] 'Save Timeseries'", SAVE_TIMESERIES, 3, 0),
        ("nodes[1] 'Save Client Attributes'", SAVE_ATTRIBUTES, 1, 0),
        ("nodes[2] 'Message Type Switch'", MSG_TYPE_SWITCH, 4, 0),
        ("nodes[3] 'Log RPC from Device'", LOG, 0, 0),
        ("nodes[4] 'Log Other'", LOG, 0, 0),
        ("nodes[5] 'RPC Call Request'", RPC_REQUEST, 0, 0),
        ("nodes[6] 'Push to cloud'", PUSH_TO_CLOUD, 4, 0),
        ("nodes[7] 'Push to cloud'", PUSH_TO_CLOUD, 0, 0),
    ]
    assert [r for r in agent.log_records() if "TbDeviceProfileNode" in r["message"]] == []


def test_thingsboard_4_2_edge_root_chain_runs_its_device_profile_node_as_a_pass_through(
        tmp_path, procs):
    """The edge root chain of ThingsBoard 3.3 to 4.2 (a tenant made then keeps it) starts with
    a device profile node (TbDeviceProfileNode, "Device Profile Node"; the copy is 4.2.1's): it
    passes every message on by Success, as ThingsBoard's does, and the chain does what 4.3's
    does. The profiles' alarm rules are not evaluated on the edge (ThingsBoard's would send an
    ALARM message besides when one changed an alarm): one WARNING says so when the chain goes
    in force."""
    agent = _runs_as_the_rules_file(tmp_path, procs, ROOT_CHAIN_4_2)
    assert node_counts(agent) == [
        ("nodes[0] 'Device Profile Node'", DEVICE_PROFILE, 4, 0),
        ("nodes[1] 'Save Timeseries'", SAVE_TIMESERIES, 3, 0),
        ("nodes[2] 'Save Client Attributes'", SAVE_ATTRIBUTES, 1, 0),
        ("nodes[3] 'Message Type Switch'", MSG_TYPE_SWITCH, 4, 0),
        ("nodes[4] 'Log RPC from Device'", LOG, 0, 0),
        ("nodes[5] 'Log Other'", LOG, 0, 0),
        ("nodes[6] 'RPC Call Request'", RPC_REQUEST, 0, 0),
        ("nodes[7] 'Push to cloud'", PUSH_TO_CLOUD, 4, 0),
        ("nodes[8] 'Push to cloud'", PUSH_TO_CLOUD, 0, 0),
    ]
    warnings = [(r["level"], r["message"]) for r in agent.log_records()
                if "TbDeviceProfileNode" in r["message"]]
    assert warnings == [(
        "WARNING", "rule chain 'Edge Root Rule Chain': nodes[0] 'Device Profile Node' "
        "(TbDeviceProfileNode) passes every message on by Success and sends no alarm: the "
        "alarm rules of the device profiles are not evaluated on the edge (a cloud whose rule "
        "chain has a device profile node evaluates them on what the edge pushes)")]


def _runs_as_the_rules_file(tmp_path: Path, procs: Any, chain: Path) -> Agent:
    """ThingsBoard's edge root chain ``chain`` as the rules file of an edge linked to the cloud:
    three readings and a client attribute posted, each saved on the edge and pushed to the cloud
    once, in order; no RPC request made. The agent, for its node counts and log."""
    cloud, agent = start_linked(tmp_path, procs, chain)
    rules = rules_of(agent)
    assert (rules["chain"], rules["source"], rules["version"], rules["last_refusal"]) == \
        ("Edge Root Rule Chain", f"file:{chain}", 1, None)
    device_id, token = agent.create_device("thermo-tb-root")

    body = [reading(t, 20 + t) for t in range(3)]
    assert agent.post_telemetry(token, body) == 200
    resp = agent.device("POST", f"/api/v1/{token}/attributes", {"fw": "1.2.0"})
    assert resp.status == 200, resp.body

    events = settle(cloud, agent)  # exactly once, in order, as the edge's log has them
    assert device_actions(events, device_id) == \
        ["ADDED", "CREDENTIALS_UPDATED"] + ["TIMESERIES_UPDATED"] * 3 + ["ATTRIBUTES_UPDATED"]
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS + t, {"temperature": 20 + t}) for t in range(3)]
    attributes = [e["body"] for e in events
                  if e["entity_id"] == device_id and e["action"] == "ATTRIBUTES_UPDATED"]
    assert [(a["scope"], a["kv"]) for a in attributes] == [("CLIENT_SCOPE", {"fw": "1.2.0"})]
    assert rpc_calls(agent, events) == ([], [])

    assert local_series(agent, device_id) == \
        {"temperature": [{"ts": BASE_TS + t, "value": 20 + t} for t in range(3)]}
    client = agent.device("GET", f"/api/v1/{token}/attributes?clientKeys=fw")
    assert (client.status, client.json()) == (200, {"client": {"fw": "1.2.0"}})
    assert edge_rpcs(agent, device_id) == []
    return agent


# -- a request made by the chain, answered by the device ----------------------------------------


def test_a_hot_reading_sends_the_device_one_request_the_cloud_never_hears_of(tmp_path, procs):
    """The device long-polls first; 70 degrees makes no request, 90 makes the fan command,
    which wakes the waiting poll. Its answer makes the request SUCCESSFUL on the edge, listed
    with origin "rule". The cloud gets both readings and no RPC_CALL: it never sent this
    request, so it is told nothing of it."""
    cloud, agent = start_linked(tmp_path, procs, FAN_CHAIN)
    assert rules_of(agent)["chain"] == "Fan on threshold"
    device_id, token = agent.create_device("fan-http")
    base = f"http://127.0.0.1:{agent.http_port}/api/v1/{token}"

    def long_polls() -> float:
        return metric_total(edge_status(agent)["metrics"], "edge_sync_http_long_polls")

    async def scenario(s: aiohttp.ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {}
        waiting = asyncio.create_task(s.get(f"{base}/rpc?timeout={POLL_MS}"))
        await asyncio.to_thread(wait_until, lambda: long_polls() == 1, timeout=DEADLINE_S,
                                what="the device's poll waiting", show=long_polls)
        cold = await s.post(f"{base}/telemetry", json=reading(0, 70))
        out["cold"] = cold.status
        out["after cold"] = (waiting.done(), await asyncio.to_thread(edge_rpcs, agent, device_id))
        out["first"] = now_ms()
        hot = await s.post(f"{base}/telemetry", json=reading(1, 90))
        out["hot"] = hot.status
        out["last"] = now_ms()
        got = await waiting
        out["got"] = (got.status, await got.json())
        reply = await s.post(f"{base}/rpc/{out['got'][1]['id']}", json={"ok": True})
        out["answered"] = reply.status
        again = await s.get(f"{base}/rpc?timeout=500")
        out["again"] = (again.status, await again.read())
        return out

    async def main() -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
            return await scenario(s)

    out = asyncio.run(main())
    assert (out["cold"], out["after cold"]) == (200, (False, []))
    assert out["hot"] == 200
    status, request = out["got"]
    assert (status, request) == (200, {"id": request["id"], **FAN_REQUEST})
    assert isinstance(request["id"], int) and 1 <= request["id"] <= INT_MAX, request
    assert out["answered"] == 200
    assert out["again"] == (408, b"")  # one request, delivered once

    [record] = edge_rpcs(agent, device_id)
    check_rule_request(record, device_id, request["id"],
                       stored_between=(out["first"], out["last"]))
    assert (record["status"], record["response"], record["error"]) == \
        ("SUCCESSFUL", {"ok": True}, "")

    events = settle(cloud, agent)
    assert device_actions(events, device_id) == \
        ["ADDED", "CREDENTIALS_UPDATED", "TIMESERIES_UPDATED", "TIMESERIES_UPDATED"]
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS, {"temperature": 70}), (BASE_TS + 1, {"temperature": 90})]
    assert rpc_calls(agent, events) == ([], [])
    assert local_series(agent, device_id) == {"temperature": [
        {"ts": BASE_TS, "value": 70}, {"ts": BASE_TS + 1, "value": 90}]}
    assert node_counts(agent) == fan_counts(hot=1, cold=1)


@pytest.mark.parametrize(("script", "error"), [
    ("return {msg: {method: 'setFan'}, metadata: metadata, msgType: msgType};",
     "Params are not present in the message!"),
    ("return {msg: {params: {speed: 3}}, metadata: metadata, msgType: msgType};",
     "Method is not present in the message!"),
], ids=["no-params", "no-method"])
def test_a_command_without_method_or_params_fails_the_node_not_the_device(tmp_path, procs,
                                                                         script, error):
    """TbSendRPCRequestNode.onMsg: a message without ``method`` or without ``params`` goes by
    Failure with ThingsBoard's text. The chain has no Failure connection there: the message's
    branch ends, the device gets its 200, the failure is counted and logged, no request is
    stored or delivered; the readings still reach the cloud by the other branch."""
    cloud, agent = start_linked(tmp_path, procs, fan_chain_with(tmp_path, script))
    device_id, token = agent.create_device("fan-broken")
    assert [agent.post_telemetry(token, reading(n, t)) for n, t in enumerate((70, 90))] == \
        [200, 200]

    assert node_counts(agent) == fan_counts(hot=1, cold=1, rpc_failed=1)
    assert edge_rpcs(agent, device_id) == []
    assert poll(agent, token, 500) == (408, b"")
    node = "nodes[5] 'RPC Call Request'"
    warnings = wait_until(lambda: rule_records(agent, "WARNING", f"rule node {node} failed"),
                          timeout=DEADLINE_S, what="the RPC node's failure logged")
    assert len(warnings) == 1, [w["message"] for w in warnings]
    assert warnings[0]["node"] == node
    assert error in warnings[0]["message"], warnings[0]["message"]

    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS, {"temperature": 70}), (BASE_TS + 1, {"temperature": 90})]
    assert rpc_calls(agent, events) == ([], [])


def test_the_devices_answer_goes_on_by_success_to_the_cloud(tmp_path, procs):
    """TbSendRPCRequestNode's callback: once the device answered, its answer goes on from the
    node by Success, as a message of the type and metadata of the reading that made the
    request. Here Success leads to the push node: the cloud gets the answer as telemetry at
    the reading's ts, after the reading itself; still no RPC_CALL."""
    doc = json.loads(FAN_CHAIN.read_text(encoding="utf-8"))
    assert doc["metadata"]["nodes"][2]["name"] == "Push to cloud"
    doc["metadata"]["connections"].append({"fromIndex": 5, "toIndex": 2, "type": "Success"})
    chain = tmp_path / "answer_pushed.json"
    chain.write_text(json.dumps(doc), encoding="utf-8")
    cloud, agent = start_linked(tmp_path, procs, chain)
    device_id, token = agent.create_device("fan-answer")
    assert agent.post_telemetry(token, reading(0, 90)) == 200
    status, body = poll(agent, token, POLL_MS)
    request = json.loads(body)
    assert (status, {k: v for k, v in request.items() if k != "id"}) == (200, FAN_REQUEST)
    assert answer(agent, token, request["id"], {"fan": "on", "speed": 3})[0] == 200

    # the answer goes on once its SUCCESSFUL is committed, after the device's 200: wait for
    # its event in the edge's log before settling (the reading's, then the answer's)
    wait_until(lambda: [e.action for e in agent.read_log()].count(Action.TIMESERIES_UPDATED)
               == 2, timeout=DEADLINE_S, what="the answer's event queued")
    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS, {"temperature": 90}), (BASE_TS, {"fan": "on", "speed": 3})]
    assert rpc_calls(agent, events) == ([], [])
    counts = fan_counts(hot=1, cold=0)
    counts[2] = ("nodes[2] 'Push to cloud'", PUSH_TO_CLOUD, 2, 0)  # the reading, the answer
    assert node_counts(agent) == counts


# -- the message's requestId, oneway and expirationTime; how a request ends ----------------------

COMMAND_SCRIPT = (
    "var m = {method: msg.method, params: msg.params, requestId: msg.id};"
    "if (msg.oneway) { metadata.oneway = 'TRUE'; }"
    "if (msg.expiresAt) { metadata.expirationTime = String(msg.expiresAt); }"
    "return {msg: m, metadata: metadata, msgType: msgType};")


def test_oneway_and_expiry_come_from_the_message_and_no_end_is_reported(tmp_path, procs):
    """TbSendRPCRequestNode.onMsg reads the metadata's ``oneway`` (Boolean.parseBoolean: any
    case) and ``expirationTime``; primitive params are kept as their text (Gson's
    getAsString). The data's ``requestId`` is not the id the device sees: the device numbers
    its requests (ThingsBoard's DeviceActorMessageProcessor, rpcSeq). The requests end as the
    cloud's do: a one-way request delivered is SUCCESSFUL, a two-way one delivered and never
    answered is TIMEOUT at its expiry, one never delivered is EXPIRED and never delivered late;
    the cloud is told of none of these ends (a cloud request's TIMEOUT is reported to it; these
    are the edge's own)."""
    cloud, agent = start_linked(tmp_path, procs, fan_chain_with(tmp_path, COMMAND_SCRIPT))
    device_id, token = agent.create_device("fan-commands")

    def record(method: str) -> dict[str, Any]:
        [found] = [r for r in edge_rpcs(agent, device_id) if r["method"] == method]
        return found

    def wait_status(method: str, status: str) -> None:
        wait_until(lambda: record(method)["status"] == status, timeout=DEADLINE_S,
                   what=f"request {method} {status}", show=lambda: record(method))

    def polled(expected: dict[str, Any]) -> int:
        status, body = poll(agent, token, POLL_MS)
        got = json.loads(body)
        assert (status, {k: v for k, v in got.items() if k != "id"}) == (200, expected)
        assert 1 <= got["id"] <= 2**31 - 1
        return int(got["id"])

    # one-way, text params: delivered, so SUCCESSFUL without an answer
    assert agent.post_telemetry(token, {"ts": BASE_TS, "values": {
        "temperature": 90, "method": "setMode", "params": "eco", "id": 42,
        "oneway": True}}) == 200
    first = polled({"method": "setMode", "params": "eco"})
    wait_status("setMode", "SUCCESSFUL")

    # two-way, a number as params, an expiry of its own: delivered, unanswered, TIMEOUT
    expires_b = now_ms() + 4000  # time enough to post and poll on a loaded machine
    assert agent.post_telemetry(token, {"ts": BASE_TS + 1, "values": {
        "temperature": 91, "method": "setSpeed", "params": 5, "id": 43,
        "expiresAt": expires_b}}) == 200
    second = polled({"method": "setSpeed", "params": 5})
    wait_status("setSpeed", "TIMEOUT")
    assert now_ms() >= expires_b

    # never polled before its expiry: EXPIRED, and not delivered after
    expires_c = now_ms() + 1000
    assert agent.post_telemetry(token, {"ts": BASE_TS + 2, "values": {
        "temperature": 92, "method": "late", "params": "x", "id": 44,
        "expiresAt": expires_c}}) == 200
    wait_status("late", "EXPIRED")
    assert now_ms() >= expires_c
    assert poll(agent, token, 500) == (408, b"")

    listed = edge_rpcs(agent, device_id)
    assert [(r["method"], r["params"], r["oneway"], r["status"], r["origin"])
            for r in listed] == [
        ("setMode", "eco", True, "SUCCESSFUL", "rule"),
        ("setSpeed", "5", False, "TIMEOUT", "rule"),
        ("late", "x", False, "EXPIRED", "rule"),
    ]
    assert [r["request_id"] for r in listed[:2]] == [first, second]
    assert (first, second) != (42, 43)  # not the data's requestId (a draw: 1 in 2^62 to fail)
    assert len({r["request_id"] for r in listed}) == 3
    assert [record(m)["expiration_time"] for m in ("setSpeed", "late")] == [expires_b, expires_c]
    assert node_counts(agent) == fan_counts(hot=3, cold=0)
    events = settle(cloud, agent)
    assert len(telemetry_at_cloud(events, device_id)) == 3
    assert rpc_calls(agent, events) == ([], [])


# -- durability ---------------------------------------------------------------------------------


def test_a_request_acknowledged_to_the_device_survives_a_kill_9_before_its_poll(tmp_path, procs):
    """The device's 200 means the request is stored with its message (one commit): the edge
    killed (SIGKILL) right after the hot reading's 200, before the device polls, still has it
    after the restart; the poll gets it once, the answer makes it SUCCESSFUL. The chain does
    not run the message again (no second request, every count 0 after the restart)."""
    cloud, agent = start_linked(tmp_path, procs, FAN_CHAIN)
    device_id, token = agent.create_device("fan-killed")
    assert agent.post_telemetry(token, reading(0, 70)) == 200
    first = now_ms()
    assert agent.post_telemetry(token, reading(1, 90)) == 200
    last = now_ms()
    assert agent.kill9() == -signal.SIGKILL

    agent.start()
    wait_connected(agent)
    [record] = edge_rpcs(agent, device_id)
    assert (record["status"], record["response"]) == ("QUEUED", None)
    request_id = record["request_id"]
    check_rule_request(record, device_id, request_id, stored_between=(first, last))

    status, body = poll(agent, token, POLL_MS)
    assert (status, json.loads(body)) == (200, {"id": request_id, **FAN_REQUEST})
    assert answer(agent, token, request_id, {"ok": True})[0] == 200
    assert poll(agent, token, 500) == (408, b"")  # once
    [record] = edge_rpcs(agent, device_id)
    assert (record["request_id"], record["status"], record["response"], record["origin"]) == \
        (request_id, "SUCCESSFUL", {"ok": True}, "rule")

    assert node_counts(agent) == fan_counts(hot=0, cold=0)
    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS, {"temperature": 70}), (BASE_TS + 1, {"temperature": 90})]
    assert rpc_calls(agent, events) == ([], [])


# -- MQTT ---------------------------------------------------------------------------------------


def test_an_mqtt_device_gets_the_request_on_its_subscription_and_answers_it(tmp_path, procs):
    """The same chain for a device on MQTT: its hot reading, published at QoS 1, makes the fan
    command, published to it on ``v1/devices/me/rpc/request/{id}`` as ThingsBoard publishes a
    server-side RPC (``{"method", "params"}``); its answer on ``v1/devices/me/rpc/response/{id}``
    makes the request SUCCESSFUL; the cloud is told nothing of it."""
    cloud, agent = start_linked(tmp_path, procs, FAN_CHAIN, EDGE_MQTT_ENABLED="true")
    device_id, token = agent.create_device("fan-mqtt")
    with MqttDevice(agent.mqtt_port, token) as client:
        assert client.connect() == 0
        assert client.subscribe(RPC_SUBSCRIPTION, qos=1) == [1]
        first = now_ms()
        for n, t in enumerate((70, 90)):
            mid = client.publish(TELEMETRY, reading(n, t)).mid
            wait_until(lambda m=mid: m in client.acked_ids(), timeout=DEADLINE_S,
                       what=f"the PUBACK of reading {n}")
        last = now_ms()
        [record] = wait_until(lambda: edge_rpcs(agent, device_id), timeout=DEADLINE_S,
                              what="the request stored")
        request_id = record["request_id"]
        check_rule_request(record, device_id, request_id, stored_between=(first, last))
        assert client.wait_message(f"{RPC_REQUEST_TOPIC}{request_id}", timeout=DEADLINE_S) == \
            FAN_REQUEST
        mid = client.publish(f"{RPC_RESPONSE_TOPIC}{request_id}", {"ok": True}).mid
        wait_until(lambda: mid in client.acked_ids(), timeout=DEADLINE_S,
                   what="the PUBACK of the answer")
        wait_until(lambda: edge_rpcs(agent, device_id)[0]["status"] == "SUCCESSFUL",
                   timeout=DEADLINE_S, what="the request SUCCESSFUL",
                   show=lambda: edge_rpcs(agent, device_id))
        assert [(t, b) for t, b in list(client.messages) if t.startswith(RPC_REQUEST_TOPIC)] == \
            [(f"{RPC_REQUEST_TOPIC}{request_id}", FAN_REQUEST)]  # published once
    [record] = edge_rpcs(agent, device_id)
    assert (record["status"], record["response"], record["origin"]) == \
        ("SUCCESSFUL", {"ok": True}, "rule")
    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS, {"temperature": 70}), (BASE_TS + 1, {"temperature": 90})]
    assert rpc_calls(agent, events) == ([], [])
    assert node_counts(agent) == fan_counts(hot=1, cold=1)

