"""End to end with a rule chain in force, real processes on loopback: `edge-cloud serve`
(tests.helpers.cloud_proc.CloudProc) and `edge-sync run` (tests.helpers.agent.Agent) started
with ``EDGE_RULES_FILE`` naming a chain file of tests/fixtures/rules/ (ThingsBoard's export
format). Devices post over the edge's device HTTP API; what the chain decided is read back
where it lands: the cloud's applied events (its admin API), the edge's event log (read-only
LMDB, with each event's lane), the points kept on the edge only (the admin API's
``GET /api/devices/{id}/timeseries``), the per-node counts of ``GET /api/status`` /
``GET /api/rules``, and the agent's JSON log lines.

- selective sync: a filter sends readings over 50 to the cloud and keeps the others on the edge;
- aggregation: the edge's own AggregateNode gives one min/max/avg/sum/count summary per window;
- deduplication of a backlog: one message per interval of the points' own ts;
- alarms: create on a threshold, clear under it; only the alarm events reach the cloud (HIGH);
- a chain exported from ThingsBoard runs unchanged (type switch, JS filter, TBEL and JS
  transforms, save timeseries, push to cloud, log, deduplication ALL);
- a chain file the edge refuses (unknown node type, cycle, dangling connection) at the first
  start refuses the start (exit 1, every problem named);
- hostile scripts (an endless loop, an unbounded allocation) fail each message within the
  script limits; the device still gets its 200, the Failure connection is followed, the
  failure is counted per message and logged once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_sync.rules.chain import parse_file
from edge_sync.rules.nodes import (
    AGGREGATE,
    CLEAR_ALARM,
    CREATE_ALARM,
    DEDUPLICATION,
    JS_FILTER,
    LOG,
    MSG_TYPE_SWITCH,
    PUSH_TO_CLOUD,
    SAVE_TIMESERIES,
    TRANSFORM,
)
from edge_sync.rules.validate import validate
from edge_sync.storage.records import Action, Lane
from tests.helpers.agent import Agent, read_log
from tests.helpers.cloud_proc import (
    CloudProc,
    check_delivered,
    edge_status,
    link_env,
    wait_connected,
    wait_drained,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-rules-e2e"
SECRET = "sec-rules-e2e-3f9a1c"
DEADLINE_S = 30.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
BASE_TS = 1_700_000_000_000
REQUEST_TIMEOUT_S = 10.0  # the agent's http.request_timeout_s (default)


# -- helpers -----------------------------------------------------------------------------------


def start_linked(tmp_path: Path, procs: Any, chain: Path,
                 **edge_env: str) -> tuple[CloudProc, Agent]:
    """A cloud with the edge registered, and the edge linked to it with ``chain`` as its
    rules.file; connected."""
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-rules", RK, SECRET)
    env = link_env(cloud, RK, SECRET, EDGE_RULES_FILE=str(chain), **edge_env)
    agent = procs(Agent(tmp_path / "edge", env=env)).start()
    wait_connected(agent)
    return cloud, agent


def rules_of(agent: Agent) -> dict[str, Any]:
    """The ``rules`` part of the edge's status; GET /api/rules says the same."""
    rules = edge_status(agent)["rules"]
    resp = agent.admin("GET", "/api/rules")
    assert resp.status == 200, resp.body
    assert _without_counts(resp.json()) == _without_counts(rules)
    return dict(rules)


def _without_counts(rules: dict[str, Any]) -> dict[str, Any]:
    """The snapshot minus the per-node counts (two reads may fall on either side of a
    message)."""
    return {**rules, "nodes": [(n["node"], n["type"]) for n in rules["nodes"]]}


def node_counts(agent: Agent) -> list[tuple[str, str, int, int]]:
    """Every node of the chain in force: (node, type, in, failed), in node order."""
    return [(n["node"], n["type"], n["in"], n["failed"]) for n in rules_of(agent)["nodes"]]


def settle(cloud: CloudProc, agent: Agent) -> list[dict[str, Any]]:
    """Wait until the edge has sent everything and the cloud applied it all; the cloud's
    events, checked against the edge's log (exactly once, per-entity order)."""
    total = int(wait_drained(agent, timeout=DEADLINE_S)["queue"]["total"])
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    events = cloud.events(RK)
    assert len(events) == total
    check_delivered(events, read_log(agent.data_dir))
    return events


def telemetry_at_cloud(events: list[dict[str, Any]], device_id: str) -> list[tuple[int, Any]]:
    """The device's TIMESERIES_UPDATED events as the cloud applied them: (ts, values)."""
    return [(e["body"]["ts"], e["body"]["values"]) for e in events
            if e["entity_id"] == device_id and e["action"] == "TIMESERIES_UPDATED"]


def device_actions(events: list[dict[str, Any]], device_id: str) -> list[str]:
    return [e["action"] for e in events if e["entity_id"] == device_id]


def local_series(agent: Agent, device_id: str, query: str = "") -> dict[str, Any]:
    resp = agent.admin("GET", f"/api/devices/{device_id}/timeseries{query}")
    assert resp.status == 200, resp.body
    return dict(resp.json())


def rule_records(agent: Agent, level: str, message_start: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines of the rules component at ``level`` whose message starts
    with ``message_start`` (this run)."""
    return [r for r in agent.log_records()
            if r.get("component") == "rules" and r["level"] == level
            and str(r["message"]).startswith(message_start)]


def wait_telemetry(cloud: CloudProc, device_id: str, count: int) -> list[tuple[int, Any]]:
    """Wait until the cloud applied ``count`` telemetry events of the device; those."""
    def got() -> list[tuple[int, Any]] | None:
        found = telemetry_at_cloud(cloud.events(RK), device_id)
        assert len(found) <= count, f"more telemetry than expected at the cloud: {found}"
        return found if len(found) == count else None

    return wait_until(got, timeout=DEADLINE_S, what=f"{count} telemetry events at the cloud",
                      show=lambda: telemetry_at_cloud(cloud.events(RK), device_id))


def summary(values: list[int | float], key: str) -> dict[str, int | float]:
    """What the AggregateNode gives for ``key`` over ``values`` (added in order)."""
    total: int | float = 0
    for v in values:
        total += v
    return {f"{key}_min": min(values), f"{key}_max": max(values),
            f"{key}_avg": total / len(values), f"{key}_sum": total,
            f"{key}_count": len(values)}


# -- selective sync ----------------------------------------------------------------------------


def test_selective_sync_hot_to_cloud_rest_kept_on_edge(tmp_path, procs):
    chain = FIXTURES / "selective_sync.json"
    cloud, agent = start_linked(tmp_path, procs, chain)
    rules = rules_of(agent)
    assert (rules["chain"], rules["source"], rules["version"], rules["last_refusal"]) == \
        ("Selective sync", f"file:{chain}", 1, None)
    device_id, token = agent.create_device("thermo-selective")

    body = [{"ts": BASE_TS + t, "values": {"temperature": t}} for t in range(100)]
    assert agent.post_telemetry(token, body) == 200

    events = settle(cloud, agent)
    assert device_actions(events, device_id) == \
        ["ADDED", "CREDENTIALS_UPDATED"] + ["TIMESERIES_UPDATED"] * 49
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS + t, {"temperature": t}) for t in range(51, 100)]

    edge_log = [e for e in read_log(agent.data_dir) if e.action == Action.TIMESERIES_UPDATED]
    assert [(e.body["values"]["temperature"], e.lane) for e in edge_log] == \
        [(t, Lane.NORMAL) for t in range(51, 100)]

    kept = local_series(agent, device_id,
                        f"?keys=temperature&startTs={BASE_TS}&endTs={BASE_TS + 99}&limit=1000")
    assert kept == {"temperature": [{"ts": BASE_TS + t, "value": t} for t in range(51)]}
    assert local_series(agent, device_id) == kept  # nothing else was kept

    assert node_counts(agent) == [
        ("nodes[0] 'Hotter than 50?'", JS_FILTER, 100, 0),
        ("nodes[1] 'Push to cloud'", PUSH_TO_CLOUD, 49, 0),
        ("nodes[2] 'Keep on the edge'", SAVE_TIMESERIES, 51, 0),
    ]


# -- aggregation -------------------------------------------------------------------------------


def test_aggregation_one_summary_per_window(tmp_path, procs):
    chain = FIXTURES / "aggregation.json"
    cloud, agent = start_linked(tmp_path, procs, chain)
    device_id, token = agent.create_device("meter-aggregated")

    expected = []
    for window in range(2):
        numbers = list(range(window * 1000, (window + 1) * 1000))
        quarters = [n / 4 for n in numbers]
        body = [{"t": n, "h": n / 4, "label": f"reading {n}"} for n in numbers]
        posted_at = int(time.time() * 1000)
        assert agent.post_telemetry(token, body) == 200
        expected.append({**summary(numbers, "t"), **summary(quarters, "h")})

        got = wait_telemetry(cloud, device_id, window + 1)
        assert [values for _, values in got] == expected
        closed_ts = got[-1][0]
        assert closed_ts >= posted_at + 2000, (closed_ts, posted_at)  # the window's 2 s

    events = settle(cloud, agent)
    assert device_actions(events, device_id) == \
        ["ADDED", "CREDENTIALS_UPDATED", "TIMESERIES_UPDATED", "TIMESERIES_UPDATED"]
    assert [values for _, values in telemetry_at_cloud(events, device_id)] == expected
    edge_log = [e for e in read_log(agent.data_dir) if e.action == Action.TIMESERIES_UPDATED]
    assert [(e.body["values"], e.lane) for e in edge_log] == \
        [(values, Lane.NORMAL) for values in expected]
    assert node_counts(agent) == [
        ("nodes[0] 'Aggregate'", AGGREGATE, 2000, 0),
        ("nodes[1] 'Push summary to cloud'", PUSH_TO_CLOUD, 2, 0),
    ]
    assert local_series(agent, device_id) == {}  # nothing is saved on the edge by this chain


# -- alarms ------------------------------------------------------------------------------------


def test_alarm_created_updated_cleared_only_alarms_reach_cloud(tmp_path, procs):
    chain = FIXTURES / "alarm_threshold.json"
    cloud, agent = start_linked(tmp_path, procs, chain)
    device_id, token = agent.create_device("boiler-alarmed")

    readings = [70, 85, 90, 60, 50, 95]  # clear(none), create, update, clear, clear(none), create
    body = [{"ts": BASE_TS + i, "values": {"temperature": t}} for i, t in enumerate(readings)]
    assert agent.post_telemetry(token, body) == 200

    events = settle(cloud, agent)
    assert device_actions(events, device_id) == ["ADDED", "CREDENTIALS_UPDATED"]
    alarms = [e for e in events if e["entity_type"] == "ALARM"]
    assert [e["action"] for e in alarms] == ["ADDED", "UPDATED", "ALARM_CLEAR", "ADDED"]
    first, second = alarms[0]["entity_id"], alarms[3]["entity_id"]
    assert [e["entity_id"] for e in alarms] == [first, first, first, second]
    assert first != second  # cleared: the next crossing is a new alarm
    assert [(e["body"]["type"], e["body"]["severity"], e["body"]["originator"],
             e["body"]["startTs"], e["body"]["cleared"], e["body"]["details"])
            for e in alarms] == [
        ("High Temperature", "CRITICAL", {"entityType": "DEVICE", "id": device_id},
         BASE_TS + 1, False, {"temperature": 85}),
        ("High Temperature", "CRITICAL", {"entityType": "DEVICE", "id": device_id},
         BASE_TS + 1, False, {"temperature": 90}),
        ("High Temperature", "CRITICAL", {"entityType": "DEVICE", "id": device_id},
         BASE_TS + 1, True, {"temperature": 60}),
        ("High Temperature", "CRITICAL", {"entityType": "DEVICE", "id": device_id},
         BASE_TS + 5, False, {"temperature": 95}),
    ]
    assert [e["body"]["id"] for e in alarms] == \
        [{"entityType": "ALARM", "id": a} for a in (first, first, first, second)]

    edge_log = read_log(agent.data_dir)
    assert [(e.type, str(e.action), str(e.entity_id), e.lane) for e in edge_log
            if e.type == "ALARM"] == [
        ("ALARM", "ADDED", first, Lane.HIGH),
        ("ALARM", "UPDATED", first, Lane.HIGH),
        ("ALARM", "ALARM_CLEAR", first, Lane.HIGH),
        ("ALARM", "ADDED", second, Lane.HIGH),
    ]
    assert [e.seq for e in edge_log if e.action == Action.TIMESERIES_UPDATED] == []
    assert node_counts(agent) == [
        ("nodes[0] 'Hotter than 80?'", JS_FILTER, 6, 0),
        ("nodes[1] 'Create High Temperature'", CREATE_ALARM, 3, 0),
        ("nodes[2] 'Clear High Temperature'", CLEAR_ALARM, 3, 0),
        ("nodes[3] 'Push alarm to cloud'", PUSH_TO_CLOUD, 4, 0),
    ]


def test_alarm_patterns_propagation_and_message_alarm_data_reach_the_cloud(tmp_path, procs):
    """An alarm typed by a dotted data path with a dynamic severity, propagated to related
    entities and the owner: the cloud gets the propagation the node set. The alarm node's
    message is ThingsBoard's Alarm JSON: a transform reads its typed id and makes a message
    alarm of it, which a create alarm node with useMessageAlarmData raises as it is (type,
    severity, propagation, start and details of the message)."""
    chain = _chain(tmp_path, "alarm data", [
        {"type": CREATE_ALARM, "name": "door", "configuration": {
            "scriptLang": "JS", "alarmDetailsBuildJs": "return {open: msg.door.open};",
            "alarmType": "$[door.name] open", "severity": "$[door.level]",
            "dynamicSeverity": True, "propagate": True, "propagateToOwner": True,
            "propagateToTenant": False, "relationTypes": ["Contains"]}},
        {"type": PUSH_TO_CLOUD, "name": "push", "configuration": {"scope": "SERVER_SCOPE"}},
        {"type": TRANSFORM, "name": "echo", "configuration": {"scriptLang": "JS", "jsScript":
         "return {msg: {type: 'echo of ' + msg.name, severity: 'MINOR', "
         "propagateToTenant: true, startTs: msg.startTs, details: {of: msg.id.id, "
         "cleared: msg.cleared}}, metadata: metadata, msgType: msgType};"}},
        {"type": CREATE_ALARM, "name": "echo alarm", "configuration": {
            "useMessageAlarmData": True, "overwriteAlarmDetails": False}}],
        [{"fromIndex": 0, "toIndex": 1, "type": "Created"},
         {"fromIndex": 0, "toIndex": 1, "type": "Updated"},
         {"fromIndex": 0, "toIndex": 2, "type": "Created"},
         {"fromIndex": 2, "toIndex": 3, "type": "Success"},
         {"fromIndex": 3, "toIndex": 1, "type": "Created"}])
    cloud, agent = start_linked(tmp_path, procs, chain)
    device_id, token = agent.create_device("door-sensor")
    body = [{"ts": BASE_TS, "values": {"door": {"name": "north", "level": "MAJOR",
                                                "open": True}}},
            {"ts": BASE_TS + 1, "values": {"door": {"name": "north", "level": "CRITICAL",
                                                    "open": False}}}]
    assert agent.post_telemetry(token, body) == 200

    events = settle(cloud, agent)
    alarms = [e for e in events if e["entity_type"] == "ALARM"]
    assert [e["action"] for e in alarms] == ["ADDED", "ADDED", "UPDATED"]
    door, echo = alarms[0]["entity_id"], alarms[1]["entity_id"]
    assert (alarms[2]["entity_id"], door != echo) == (door, True)
    keys = ("type", "severity", "startTs", "cleared", "details", "propagate",
            "propagateToOwner", "propagateToTenant", "propagateRelationTypes")
    assert [tuple(e["body"][k] for k in keys) for e in alarms] == [
        ("north open", "MAJOR", BASE_TS, False, {"open": True}, True, True, False,
         ["Contains"]),
        ("echo of north open", "MINOR", BASE_TS, False, {"of": door, "cleared": False},
         False, False, True, []),
        ("north open", "CRITICAL", BASE_TS, False, {"open": False}, True, True, False,
         ["Contains"]),
    ]
    assert [e["body"]["originator"] for e in alarms] == \
        [{"entityType": "DEVICE", "id": device_id}] * 3
    assert node_counts(agent) == [
        ("nodes[0] 'door'", CREATE_ALARM, 2, 0),
        ("nodes[1] 'push'", PUSH_TO_CLOUD, 3, 0),
        ("nodes[2] 'echo'", TRANSFORM, 1, 0),
        ("nodes[3] 'echo alarm'", CREATE_ALARM, 1, 0),
    ]


# -- a ThingsBoard export, unchanged -----------------------------------------------------------


def test_thingsboard_export_runs_unchanged(tmp_path, procs):
    chain = FIXTURES / "thingsboard_export.json"
    cloud, agent = start_linked(tmp_path, procs, chain)
    assert rules_of(agent)["chain"] == "Thermometer (exported)"
    device_id, token = agent.create_device("thermometer-tb")

    temps = {0: 20, 1: 25.5, 3: 30}
    body = [{"ts": BASE_TS + i, "values": {"temperature": t}} for i, t in temps.items()]
    body.insert(2, {"ts": BASE_TS + 2, "values": {"humidity": 40}})
    posted_at = int(time.time() * 1000)
    assert agent.post_telemetry(token, body) == 200
    resp = agent.device("POST", f"/api/v1/{token}/attributes", {"firmware": "1.2.0"})
    assert resp.status == 200, resp.body

    got = wait_telemetry(cloud, device_id, 4)  # three converted readings, then the summary
    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == got
    assert device_actions(events, device_id) == \
        ["ADDED", "CREDENTIALS_UPDATED"] + ["TIMESERIES_UPDATED"] * 4  # no attributes
    converted = [(BASE_TS + i, {"temperature": t, "temperatureF": t * 9 / 5 + 32})
                 for i, t in temps.items()]
    assert got[:3] == converted
    summary_ts, summary_values = got[3]
    assert summary_values == {"temperature_min": 20, "temperature_max": 30,
                              "temperature_avg": (20 + 25.5 + 30) / 3, "temperature_n": 3}
    assert summary_ts >= posted_at + 1000, (summary_ts, posted_at)  # the 1 s window

    assert local_series(agent, device_id) == {
        "temperature": [{"ts": ts, "value": v["temperature"]} for ts, v in converted],
        "temperatureF": [{"ts": ts, "value": v["temperatureF"]} for ts, v in converted],
    }
    logged = wait_until(
        lambda: [r["message"] for r in agent.log_records()
                 if r.get("component") == "rules" and r["level"] == "INFO"
                 and str(r["message"]).startswith(("no temperature", "attributes"))],
        timeout=DEADLINE_S, what="the log nodes' lines")
    assert sorted(logged) == ['attributes: {"firmware":"1.2.0"}', 'no temperature: {"humidity":40}']

    assert node_counts(agent) == [
        ("nodes[0] 'Message Type Switch'", MSG_TYPE_SWITCH, 5, 0),
        ("nodes[1] 'Has temperature?'", JS_FILTER, 4, 0),
        ("nodes[2] 'Add Fahrenheit'", TRANSFORM, 3, 0),
        ("nodes[3] 'Save Timeseries'", SAVE_TIMESERIES, 3, 0),
        ("nodes[4] 'Push to cloud'", PUSH_TO_CLOUD, 4, 0),
        ("nodes[5] 'Log without temperature'", LOG, 1, 0),
        ("nodes[6] 'Collect 1 s'", DEDUPLICATION, 4, 0),
        ("nodes[7] 'Min max avg'", TRANSFORM, 1, 0),
        ("nodes[8] 'Log attributes'", LOG, 1, 0),
    ]


# -- deduplication of a backlog ----------------------------------------------------------------


def test_a_backlog_through_deduplication_gives_one_message_per_interval_of_its_ts(tmp_path,
                                                                                 procs):
    """A device back after an outage posts 50 old points, 200 ms apart, in one request;
    deduplication FIRST over 2 s sends one per 2 s of their ts, in ts order, as ThingsBoard's
    TbMsgDeduplicationNode does (one message per pack [minTs, minTs + interval)): five, not
    one."""
    doc = json.loads((FIXTURES / "aggregation.json").read_text(encoding="utf-8"))
    doc["ruleChain"]["name"] = "First per 2 s"
    doc["metadata"]["nodes"][0].update(
        type=DEDUPLICATION, name="First per 2 s",
        configuration={"interval": 2, "strategy": "FIRST", "maxPendingMsgs": 100})
    chain = tmp_path / "deduplication.json"
    chain.write_text(json.dumps(doc), encoding="utf-8")
    cloud, agent = start_linked(tmp_path, procs, chain)
    device_id, token = agent.create_device("meter-backlog")

    body = [{"ts": BASE_TS + i * 200, "values": {"i": i}} for i in range(50)]
    assert agent.post_telemetry(token, body) == 200
    expected = [(BASE_TS + k * 2_000, {"i": k * 10}) for k in range(5)]
    assert wait_telemetry(cloud, device_id, 5) == expected
    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == expected
    assert node_counts(agent) == [
        ("nodes[0] 'First per 2 s'", DEDUPLICATION, 50, 0),
        ("nodes[1] 'Push summary to cloud'", PUSH_TO_CLOUD, 5, 0),
    ]


# -- chains the edge refuses -------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "named"), [
    ("unknown_node_type.json", "org.thingsboard.rule.engine.rest.TbRestApiCallNode ('POST to "
                               "MES') is not a supported node type"),
    ("cycle_chain.json", "cycle: nodes[1] 'Normalise' -> nodes[2] 'Retry?' -> nodes[1] "
                         "'Normalise'"),
    ("dangling_connection.json", "metadata.connections[1].toIndex: dangling: 7 names no node"),
], ids=["unknown-node-type", "cycle", "dangling-connection"])
def test_a_refused_chain_file_refuses_the_start(tmp_path, procs, fixture, named):
    """A rules.file the edge refuses at its first start (no chain from the file was in force
    before to fall back on) stops the start as any configuration error does: exit 1, every
    problem named. It once started with no chain: every message went to the cloud raw, no
    alarm, health green. (After a chain from the file was in force once, a refused file leaves
    that chain in force: test_rules_chain_source.py.)"""
    chain = FIXTURES / fixture
    problems = [str(p) for p in validate(*parse_file(chain.read_bytes(), str(chain)))]
    assert any(named in p for p in problems), problems  # the fixture is what the test says

    agent = procs(Agent(tmp_path / "edge", env={"EDGE_RULES_FILE": str(chain)}))
    code, err = agent.run_to_exit()
    assert code == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"error: configuration: rules.file {chain} refused: {'; '.join(problems)} (no chain "
        "from rules.file was in force before to keep in force; edge-sync rules check names every "
        "problem)")


# -- hostile scripts ---------------------------------------------------------------------------


@pytest.mark.parametrize(("fixture", "node", "error"), [
    ("hostile_loop.json", "nodes[0] 'Spin forever'", "ScriptTimeout"),
    ("hostile_alloc.json", "nodes[0] 'Hoard memory'", "ScriptMemoryExceeded"),
], ids=["endless-loop", "unbounded-allocation"])
def test_hostile_script_fails_each_message_and_logs_once(tmp_path, procs, fixture, node, error):
    chain = FIXTURES / fixture
    cloud, agent = start_linked(tmp_path, procs, chain)
    device_id, token = agent.create_device("victim")

    posted: list[tuple[int, dict[str, Any]]] = []
    with agent.client(timeout=REQUEST_TIMEOUT_S + 5) as http:
        def post(body: Any) -> None:
            began = time.monotonic()
            status = http.post_telemetry(token, body)
            took = time.monotonic() - began
            assert (status, took < REQUEST_TIMEOUT_S) == (200, True), (status, took, body)

        for n in range(5):  # one message a request
            point = (BASE_TS + n, {"temperature": n})
            post({"ts": point[0], "values": point[1]})
            posted.append(point)
        batch = [(BASE_TS + n, {"temperature": n}) for n in range(5, 25)]  # twenty in one
        post([{"ts": ts, "values": values} for ts, values in batch])
        posted.extend(batch)

    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == posted  # by the Failure connection
    assert device_actions(events, device_id) == \
        ["ADDED", "CREDENTIALS_UPDATED"] + ["TIMESERIES_UPDATED"] * len(posted)
    assert node_counts(agent) == [
        (node, JS_FILTER, 25, 25),
        ("nodes[1] 'Push failures to cloud'", PUSH_TO_CLOUD, 25, 0),
    ]
    warnings = wait_until(lambda: rule_records(agent, "WARNING", f"rule node {node} failed"),
                          timeout=DEADLINE_S, what="the failure's warning")
    assert len(warnings) == 1, [w["message"] for w in warnings]  # not once per message
    assert warnings[0]["node"] == node
    assert error in warnings[0]["message"], warnings[0]["message"]
    # blocked after 3 of them, for 60 s: the status and /metrics say so, with the last error
    rules = rules_of(agent)
    assert [(b["node"], b["errors"], b["last_error"].split(":")[0], len(b["shards"]))
            for b in rules["blocked_scripts"]] == [(node, 3, error, 1)]
    metrics = agent.admin("GET", "/metrics").body.decode()
    assert (f'edge_sync_rule_script_blocked{{chain="{rules["chain"]}",digest="{rules["digest"]}",'
            f'node="{node}"}} 1.0') in metrics.splitlines()
    # and the rules' health is degraded while it is, with the block as its reason
    block = rules["blocked_scripts"][0]
    reason = (f"the script of rule node {node} of chain '{rules['chain']}' is blocked until "
              f"{block['until']} after 3 timeouts or memory blow-ups (last: "
              f"{block['last_error']}): its messages go by Failure")
    assert rules["health"] == {"level": "degraded", "reasons": [reason]}
    assert edge_status(agent)["health_detail"]["rules"] == {"level": "degraded",
                                                            "reasons": [reason]}


# -- output the store cannot hold ---------------------------------------------------------------


def _chain(tmp_path: Path, name: str, nodes: list[dict[str, Any]],
           connections: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"ruleChain": {"name": name, "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "nodes": nodes, "connections": connections}}))
    return path


def test_a_script_made_key_too_long_to_keep_fails_the_save_node_not_the_device(tmp_path, procs):
    """A transform makes a 500-byte key: the save node fails (counted, logged), the device
    gets its 200. It once reached the store: the write failed, the queue restarted and the
    device was answered 500."""
    chain = _chain(tmp_path, "long key", [
        {"type": TRANSFORM, "name": "lengthen", "configuration": {"scriptLang": "JS", "jsScript":
         "var o = {ok: msg.t}; o['k'.repeat(500)] = msg.t; "
         "return {msg: o, metadata: metadata, msgType: msgType};"}},
        {"type": SAVE_TIMESERIES, "name": "keep", "configuration": {"defaultTTL": 0}}],
        [{"fromIndex": 0, "toIndex": 1, "type": "Success"}])
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_RULES_FILE": str(chain)})).start()
    device_id, token = agent.create_device("long-keys")
    assert [agent.post_telemetry(token, {"ts": BASE_TS + n, "values": {"t": n}})
            for n in range(3)] == [200, 200, 200]
    assert node_counts(agent) == [("nodes[0] 'lengthen'", TRANSFORM, 3, 0),
                                  ("nodes[1] 'keep'", SAVE_TIMESERIES, 3, 3)]
    assert local_series(agent, device_id, "?keys=ok&startTs=0&endTs=9999999999999") == {}
    warnings = wait_until(lambda: rule_records(agent, "WARNING", "rule node nodes[1] 'keep'"),
                          timeout=DEADLINE_S, what="the save node's failure logged")
    assert [w["message"] for w in warnings] == [
        "rule node nodes[1] 'keep' failed: the message data cannot be stored: telemetry: keys "
        "must be 1 to 255 bytes of UTF-8; the message goes by Failure"]
    assert [r["message"] for r in agent.log_records() if r["level"] == "ERROR"] == []


def test_an_outcome_the_store_cannot_hold_is_answered_500_not_400(tmp_path, procs):
    """An alarm whose details script returns text with a lone surrogate: the alarm's state
    cannot be stored. That is the chain's fault: the device gets 500 (it once got 400, telling
    it its valid data was bad), and one ERROR line names the device."""
    chain = _chain(tmp_path, "bad details", [
        {"type": CREATE_ALARM, "name": "alarm", "configuration": {
            "alarmType": "Hot", "severity": "MAJOR", "scriptLang": "JS",
            "alarmDetailsBuildJs": "return {note: String.fromCharCode(0xD800)};"}}], [])
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_RULES_FILE": str(chain)})).start()
    device_id, token = agent.create_device("alarmed")
    resp = agent.device("POST", f"/api/v1/{token}/telemetry", {"t": 1})
    assert resp.status == 500, resp.body
    assert resp.json()["message"].startswith("the rule chain's outcome cannot be stored: ")
    errors = wait_until(lambda: rule_records(agent, "ERROR", "the rule chain's outcome"),
                        timeout=DEADLINE_S, what="the chain's failure logged")
    assert [(e["entity"], e["message"].endswith("the device is answered 500")) for e in errors] \
        == [(device_id, True)]
    assert agent.post_telemetry(token, {"t": 2}) == 500  # each message alike, the agent serves


# -- the cloud's root chain --------------------------------------------------------------------


def test_without_a_file_the_clouds_root_chain_is_in_force(tmp_path, procs):
    """No rules.file: the root chain the reference cloud syncs (ThingsBoard Edge's shape: type
    switch, save timeseries / attributes, push to cloud) goes in force once its metadata is on
    the edge; telemetry is saved on the edge and pushed, as before, attributes pushed in the
    push node's scope."""
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-rules", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)
    rules = wait_until(lambda: (r := rules_of(agent))["chain"] is not None and r,
                       timeout=DEADLINE_S, what="the cloud's root chain in force")
    assert (rules["chain"], rules["source"], rules["last_refusal"]) == \
        ("Edge Root Rule Chain", "cloud", None)
    assert rules["id"] is not None
    device_id, token = agent.create_device("thermo-root")

    body = [{"ts": BASE_TS + t, "values": {"temperature": t}} for t in range(5)]
    assert agent.post_telemetry(token, body) == 200
    assert agent.device("POST", f"/api/v1/{token}/attributes", {"fw": "1.2.0"}).status == 200

    events = settle(cloud, agent)
    assert telemetry_at_cloud(events, device_id) == \
        [(BASE_TS + t, {"temperature": t}) for t in range(5)]
    attributes = [e["body"] for e in events
                  if e["entity_id"] == device_id and e["action"] == "ATTRIBUTES_UPDATED"]
    assert [(a["scope"], a["kv"]) for a in attributes] == [("CLIENT_SCOPE", {"fw": "1.2.0"})]
    assert local_series(agent, device_id) == \
        {"temperature": [{"ts": BASE_TS + t, "value": t} for t in range(5)]}
    counts = {(node, kind.rsplit(".", 1)[-1]): (n_in, failed)
              for node, kind, n_in, failed in node_counts(agent)}
    assert counts == {
        ("nodes[0] 'Message Type Switch'", "TbMsgTypeSwitchNode"): (6, 0),
        ("nodes[1] 'Save Timeseries'", "TbMsgTimeseriesNode"): (5, 0),
        ("nodes[2] 'Save Attributes'", "TbMsgAttributesNode"): (1, 0),
        ("nodes[3] 'Push to Cloud'", "TbMsgPushToCloudNode"): (6, 0),
        ("nodes[4] 'Push to Cloud'", "TbMsgPushToCloudNode"): (0, 0),
    }
