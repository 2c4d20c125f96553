"""A rule chain edited while windows are open, real processes on loopback (`edge-cloud serve`,
`edge-sync run`) and the edge's real LMDB store.

A deduplication node (ALL, then a script summing the pack) and the edge's AggregateNode each
hold a device's readings in a window. The windows are the nodes', known by their type and name:

- a file chain edited by inserting a node before them (their indexes change), the agent
  restarted: both windows go on; the summaries count every acknowledged reading exactly once;
- the cloud's root chain sent again unchanged (ThingsBoard gives every node a new id): both
  windows go on; sent without the aggregation node, its window is warned about at once;
- a node removed: a WARNING when the chain goes in force names the node, the device and the
  acknowledged readings its window holds; at the deadline the drop is logged with the right
  wording and the readings lost are counted in the status;
- windows an earlier edge version saved under ``#<index>`` load through the chain in force.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_sync.rules.nodes import (
    AGGREGATE,
    DEDUPLICATION,
    LOG,
    MSG_TYPE_SWITCH,
    PUSH_TO_CLOUD,
    TRANSFORM,
)
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_store import RuleStore
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc, edge_status, link_env, wait_connected
from tests.helpers.rule_state import as_version_1
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-rules-winkeys"
SECRET = "sec-rules-winkeys-71c2"
DEADLINE_S = 30.0
CHAIN = "Windows"

SUMMARY_JS = ("var n = 0, s = 0;\nfor (var i = 0; i < msg.length; i++) { n += 1; "
              "s += msg[i].msg.v; }\nreturn {msg: {d_count: n, d_sum: s}, metadata: metadata, "
              "msgType: msgType};")


def windows_meta(interval_s: int, *, inserted: bool = False, with_agg: bool = True
                 ) -> dict[str, Any]:
    """Type switch -> deduplication ALL -> summary script -> push, and type switch ->
    AggregateNode -> push. ``inserted``: a log node first (every other index one more);
    ``with_agg``: False leaves the aggregation node out."""
    nodes: list[dict[str, Any]] = [
        {"type": MSG_TYPE_SWITCH, "name": "switch", "configuration": {"version": 0}},
        {"type": DEDUPLICATION, "name": "dedup all", "configuration": {
            "interval": interval_s, "strategy": "ALL", "outMsgType": "POST_TELEMETRY_REQUEST",
            "maxPendingMsgs": 1000}},
        {"type": TRANSFORM, "name": "summary", "configuration": {"scriptLang": "JS",
                                                                 "jsScript": SUMMARY_JS}},
        {"type": PUSH_TO_CLOUD, "name": "push", "configuration": {"scope": "SERVER_SCOPE"}},
    ]
    connections = [(0, 1, "Post telemetry"), (1, 2, "Success"), (2, 3, "Success")]
    if with_agg:
        nodes.append({"type": AGGREGATE, "name": "agg", "configuration": {"interval": interval_s}})
        connections += [(0, 4, "Post telemetry"), (4, 3, "Success")]
    shift = 0
    if inserted:
        nodes.insert(0, {"type": LOG, "name": "inserted", "configuration": {
            "scriptLang": "JS", "jsScript": "return 'x';"}})
        shift = 1
    return {"firstNodeIndex": shift, "nodes": nodes,
            "connections": [{"fromIndex": a + shift, "toIndex": b + shift, "type": r}
                            for a, b, r in connections]}


def write_chain(path: Path, meta: dict[str, Any], name: str = CHAIN) -> Path:
    path.write_text(json.dumps({"ruleChain": {"name": name, "type": "EDGE"}, "metadata": meta}),
                    encoding="utf-8")
    return path


def start_linked(tmp_path: Path, procs: Any, **edge_env: str) -> tuple[CloudProc, Agent]:
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-winkeys", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET, **edge_env))).start()
    wait_connected(agent)
    return cloud, agent


def summaries(cloud: CloudProc, device_id: str) -> list[dict[str, Any]]:
    return [e["body"]["values"] for e in cloud.events(RK)
            if e["entity_id"] == device_id and e["action"] == "TIMESERIES_UPDATED"]


def wait_summaries(cloud: CloudProc, device_id: str, count: int,
                   timeout: float = DEADLINE_S) -> list[dict[str, Any]]:
    return wait_until(lambda: (got := summaries(cloud, device_id)) and len(got) >= count and got,
                      timeout=timeout, what=f"{count} summaries at the cloud",
                      show=lambda: summaries(cloud, device_id))


def agg_summary(values: range) -> dict[str, Any]:
    return {"v_min": values[0], "v_max": values[-1], "v_avg": sum(values) / len(values),
            "v_sum": sum(values), "v_count": len(values)}


def dedup_summary(values: range) -> dict[str, Any]:
    return {"d_count": len(values), "d_sum": sum(values)}


def records(agent: Agent, component: str, level: str, start: str) -> list[dict[str, Any]]:
    return [r for r in agent.log_records() if r.get("component") == component
            and r["level"] == level and str(r["message"]).startswith(start)]


def loaded_line(agent: Agent) -> dict[str, Any]:
    [line] = wait_until(lambda: records(agent, "shard", "INFO", "rule state of"),
                        timeout=DEADLINE_S, what="the rule state loaded line")
    return line


def window_counts(agent: Agent) -> dict[str, tuple[int, int]]:
    """Per window node of the chain in force: (open windows, held messages)."""
    rules = edge_status(agent)["rules"]
    assert agent.admin("GET", "/api/rules").json()["nodes"] == rules["nodes"]
    return {n["node"]: (n["open_windows"], n["held_messages"]) for n in rules["nodes"]
            if "open_windows" in n}


INTERVAL_S = 12
COUNT = 40


def dropped_metric(agent: Agent) -> float:
    """``edge_sync_rule_window_messages_dropped_total`` of the agent's GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.admin_port}/metrics",
                                timeout=DEADLINE_S) as resp:
        text = resp.read().decode()
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "edge_sync_rule_window_messages_dropped_total")


def post_and_restart(tmp_path: Path, procs: Any, edited: dict[str, Any]
                     ) -> tuple[CloudProc, Agent, str, int]:
    """The windows chain in force from a file; a device posts COUNT readings v = 0, 1, ...
    (acknowledged); the agent is stopped, the file replaced by ``edited``, the agent started
    again. (cloud, agent, device id, when the readings were acknowledged)."""
    chain = write_chain(tmp_path / "windows.json", windows_meta(INTERVAL_S))
    cloud, agent = start_linked(tmp_path, procs, EDGE_RULES_FILE=str(chain))
    device_id, token = agent.create_device("meter-winkeys")
    assert agent.post_telemetry(token, [{"v": v} for v in range(COUNT)]) == 200
    acked_ms = int(time.time() * 1000)
    assert window_counts(agent) == {"nodes[1] 'dedup all'": (1, COUNT),
                                    "nodes[4] 'agg'": (1, COUNT)}
    assert agent.terminate() == 0
    write_chain(chain, edited)
    agent.start()
    return cloud, agent, device_id, acked_ms


def test_a_node_inserted_before_the_windows_keeps_them_across_a_restart(tmp_path, procs):
    cloud, agent, device_id, acked_ms = post_and_restart(
        tmp_path, procs, windows_meta(INTERVAL_S, inserted=True))
    line = loaded_line(agent)
    took_ms = int(time.time() * 1000) - acked_ms
    assert took_ms < INTERVAL_S * 1000, f"the restart took {took_ms} ms, over the window"
    assert line["message"] == ("rule state of 1 entities loaded: 2 open rule windows (80 held "
                               "messages), 0 overdue (their deadline passed while the agent was "
                               "down): closed now")
    assert (line["windows"], line["held_messages"], line["overdue"]) == (2, 2 * COUNT, 0)
    # the windows are the same nodes', now at other indexes
    assert window_counts(agent) == {"nodes[2] 'dedup all'": (1, COUNT),
                                    "nodes[5] 'agg'": (1, COUNT)}
    got = wait_summaries(cloud, device_id, 2, timeout=INTERVAL_S + DEADLINE_S)
    assert sorted(got, key=len) == [dedup_summary(range(COUNT)), agg_summary(range(COUNT))]
    assert records(agent, "rules", "WARNING", "") == []
    assert window_counts(agent) == {"nodes[2] 'dedup all'": (0, 0), "nodes[5] 'agg'": (0, 0)}


def test_a_node_removed_is_warned_about_at_load_and_its_messages_counted_when_dropped(
        tmp_path, procs):
    cloud, agent, device_id, _ = post_and_restart(
        tmp_path, procs, windows_meta(INTERVAL_S, with_agg=False))
    line = loaded_line(agent)
    assert (line["windows"], line["held_messages"], line["overdue"]) == (2, 2 * COUNT, 0)
    [warned] = records(agent, "rules", "WARNING", "1 open rule windows of")
    assert warned["message"].startswith(
        f"1 open rule windows of 1 entities hold {COUNT} acknowledged messages: their nodes "
        f"('agg' (AggregateNode)) are not in the chain in force '{CHAIN}'; they will be dropped "
        f"from ")
    assert (warned["nodes"], warned["entities"], warned["windows"], warned["messages"]) == (
        ["'agg' (AggregateNode)"], 1, 1, COUNT)
    rules = edge_status(agent)["rules"]
    assert rules["orphaned_windows"] == [{"node": "'agg' (AggregateNode) (not in the chain)",
                                          "entities": 1, "open_windows": 1,
                                          "held_messages": COUNT}]
    assert rules["dropped_messages"] == {}
    assert dropped_metric(agent) == 0

    [dropped] = wait_until(
        lambda: records(agent, "rules", "WARNING", "1 rule windows dropped"),
        timeout=INTERVAL_S + DEADLINE_S, what="the drop at the deadline")
    assert dropped["message"] == (
        f"1 rule windows dropped at their deadline with the {COUNT} acknowledged messages they "
        f"held: node 'agg' (AggregateNode) is not in the chain in force '{CHAIN}'")
    assert (dropped["entity"], dropped["messages"]) == (device_id, COUNT)
    assert wait_summaries(cloud, device_id, 1) == [dedup_summary(range(COUNT))]
    rules = edge_status(agent)["rules"]
    assert (rules["orphaned_windows"], rules["dropped_messages"]) == (
        [], {"'agg' (AggregateNode)": COUNT})
    assert dropped_metric(agent) == COUNT
    assert warned["drop_at_ms"] <= int(time.time() * 1000)


def test_the_cloud_sending_the_same_chain_with_new_node_ids_keeps_the_windows(tmp_path, procs):
    cloud, agent = start_linked(tmp_path, procs)
    root = wait_until(lambda: (r := edge_status(agent)["rules"])["chain"] is not None and r,
                      timeout=DEADLINE_S, what="the cloud's root chain in force")
    export = tmp_path / "root.json"
    write_chain(export, windows_meta(20), name=root["chain"])

    def update_root() -> None:
        cloud.cli("entity", "update", root["id"], "--json", str(export))

    update_root()
    first = wait_until(lambda: (r := edge_status(agent)["rules"])["version"] > root["version"]
                       and len(r["nodes"]) == 5 and r, timeout=DEADLINE_S,
                       what="the windows chain in force from the cloud")
    device_id, token = agent.create_device("meter-winkeys-cloud")
    assert agent.post_telemetry(token, [{"v": v} for v in range(30)]) == 200
    update_root()  # identical: the cloud gives every node a new id
    second = wait_until(lambda: (r := edge_status(agent)["rules"])["version"] > first["version"]
                        and r, timeout=DEADLINE_S, what="the chain sent again in force")
    assert second["digest"] != first["digest"]  # the ids changed
    assert window_counts(agent) == {"nodes[1] 'dedup all'": (1, 30), "nodes[4] 'agg'": (1, 30)}
    got = wait_summaries(cloud, device_id, 2, timeout=20 + DEADLINE_S)
    assert sorted(got, key=len) == [dedup_summary(range(30)), agg_summary(range(30))]
    assert records(agent, "rules", "WARNING", "") == []

    # the aggregation node removed in the cloud while its window is open: warned about as the
    # chain goes in force, well before the drop
    assert agent.post_telemetry(token, [{"v": v} for v in range(10)]) == 200
    write_chain(export, windows_meta(20, with_agg=False), name=root["chain"])
    update_root()
    [warned] = wait_until(lambda: records(agent, "rules", "WARNING", "1 open rule windows"),
                          timeout=DEADLINE_S, what="the warning as the chain goes in force")
    assert int(time.time() * 1000) < warned["drop_at_ms"]
    assert (warned["nodes"], warned["messages"], warned["entities"]) == (
        ["'agg' (AggregateNode)"], 10, 1)
    assert window_counts(agent) == {"nodes[1] 'dedup all'": (1, 10)}
    wait_until(lambda: records(agent, "rules", "WARNING", "1 rule windows dropped"),
               timeout=20 + DEADLINE_S, what="the drop at the deadline")
    assert edge_status(agent)["rules"]["dropped_messages"] == {"'agg' (AggregateNode)": 10}
    assert wait_summaries(cloud, device_id, 3)[2] == dedup_summary(range(10))


def test_windows_saved_by_an_earlier_version_under_index_keys_load(tmp_path, procs):
    """The store holds the entity's rule state as an earlier edge version wrote it (version 1,
    each node's windows under ``#<index>``): loaded through the chain in force, the summaries
    count every reading once."""
    meta = windows_meta(INTERVAL_S)
    chain = write_chain(tmp_path / "windows.json", meta)
    cloud, agent = start_linked(tmp_path, procs, EDGE_RULES_FILE=str(chain))
    device_id, token = agent.create_device("meter-winkeys-old")
    assert agent.post_telemetry(token, [{"v": v} for v in range(12)]) == 200
    assert agent.terminate() == 0

    old_keys = {'["TbMsgDeduplicationNode", "dedup all", 1]': "#1",
                '["AggregateNode", "agg", 1]': "#4"}
    store = LmdbStore(agent.data_dir)
    try:
        rules = RuleStore(store)

        def to_version_1(txn: Any) -> None:
            record = rules.state(txn, uuid.UUID(device_id))
            assert record is not None and record["v"] == 2
            old = as_version_1(record, old_keys)
            assert msgpack.unpackb(msgpack.packb(old)) == old
            rules.put_state(txn, uuid.UUID(device_id), old)

        store.write(to_version_1)
    finally:
        store.close()

    agent.start()
    line = loaded_line(agent)
    assert (line["windows"], line["held_messages"]) == (2, 24)
    got = wait_summaries(cloud, device_id, 2, timeout=INTERVAL_S + DEADLINE_S)
    assert sorted(got, key=len) == [dedup_summary(range(12)), agg_summary(range(12))]
    assert records(agent, "rules", "WARNING", "") == []
