"""GET /metrics of a real `edge-sync run` in each rule chain state, read with
prometheus-client's parser: no chain; a file's chain in force, its nodes' series at 0 from the
start, then counting messages and failures; the cloud's root chain refused at the first sync
(no chain in force); the cloud's root chain in force, then a chain from the cloud refused while
it stays in force. Each time the exact rule chain series and values (docs/metrics.md). The
reference cloud keeps one downlink in flight and the edge reads the root chain again before it
answers each, so a chain update (RULE_CHAIN, then its METADATA) is validated twice, in order."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_sync.rules.chain import parse_file
from edge_sync.rules.nodes import JS_FILTER, PUSH_TO_CLOUD
from edge_sync.rules.runtime import digest
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc, edge_status, link_env, wait_connected
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-rule-metrics"
SECRET = "sec-rule-metrics-8d1e"
DEADLINE_S = 30.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
BASE_TS = 1_700_000_000_000


def rule_series(agent: Agent) -> dict[str, float]:
    """Every rule chain and rule node sample of GET /metrics as 'name{k="v",...}' (labels
    sorted): value; the families' types checked."""
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.admin_port}/metrics",
                                timeout=DEADLINE_S) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(("edge_sync_rule_chain", "edge_sync_rule_node")):
            continue
        assert family.type == ("counter" if family.name.endswith(("_refusals", "_messages",
                                                                   "_failures")) else "gauge")
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def refusals(file: int = 0, cloud: int = 0, outstanding: str | None = None
             ) -> dict[str, float]:
    """The refusal counters, and the outstanding refusal's source (1) or none."""
    return {'edge_sync_rule_chain_refusals_total{source="cloud"}': cloud,
            'edge_sync_rule_chain_refusals_total{source="file"}': file,
            'edge_sync_rule_chain_refusal_outstanding{source="cloud"}': outstanding == "cloud",
            'edge_sync_rule_chain_refusal_outstanding{source="file"}': outstanding == "file"}


def in_force(chain: str, source: str, dig: str, version: int) -> dict[str, float]:
    return {f'edge_sync_rule_chain_info{{chain="{chain}",digest="{dig}",source="{source}"}}': 1,
            "edge_sync_rule_chain_version": version, "edge_sync_rule_chain_in_force": 1}


def nodes(chain: str, dig: str, counts: dict[str, tuple[int, int]]) -> dict[str, float]:
    """{node: (messages, failures)} as the two series of each node."""
    out: dict[str, float] = {}
    for node, (messages, failures) in counts.items():
        labels = f'chain="{chain}",digest="{dig}",node="{node}"'
        out[f"edge_sync_rule_node_messages_total{{{labels}}}"] = messages
        out[f"edge_sync_rule_node_failures_total{{{labels}}}"] = failures
    return out


def chain_file(tmp_path: Path) -> Path:
    """A JS filter that throws on a negative temperature (Failure: pushed) and passes the
    others (True: pushed)."""
    path = tmp_path / "negative-fails.json"
    path.write_text(json.dumps({"ruleChain": {"name": "Boiler ops", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "nodes": [
            {"type": JS_FILTER, "name": "plausible?", "configuration": {
                "scriptLang": "JS", "jsScript":
                "if (msg.temperature < 0) { throw new Error('negative'); } return true;"}},
            {"type": PUSH_TO_CLOUD, "name": "push", "configuration": {"scope": "SERVER_SCOPE"}}],
        "connections": [{"fromIndex": 0, "toIndex": 1, "type": "True"},
                        {"fromIndex": 0, "toIndex": 1, "type": "Failure"}]}}))
    return path


def test_no_chain_then_a_file_chain_in_force_counting_messages_and_failures(tmp_path, procs):
    bare = procs(Agent(tmp_path / "bare")).start()
    assert rule_series(bare) == {"edge_sync_rule_chain_in_force": 0, **refusals()}
    assert bare.terminate() == 0

    path = chain_file(tmp_path)
    dig = digest(*parse_file(path.read_bytes(), str(path)))
    agent = procs(Agent(tmp_path / "ruled", env={"EDGE_RULES_FILE": str(path)})).start()
    filt, push = "nodes[0] 'plausible?'", "nodes[1] 'push'"
    # every node's series from the start, at 0: a first failure is an increase
    assert rule_series(agent) == {**in_force("Boiler ops", "file", dig, 1), **refusals(),
                                  **nodes("Boiler ops", dig, {filt: (0, 0), push: (0, 0)})}
    _, token = agent.create_device("boiler-1")
    for t in (20, -1, 21, -5, 22):
        assert agent.post_telemetry(token, {"ts": BASE_TS + t, "values": {"temperature": t}}) \
            == 200
    assert rule_series(agent) == {**in_force("Boiler ops", "file", dig, 1), **refusals(),
                                  **nodes("Boiler ops", dig, {filt: (5, 2), push: (5, 0)})}
    assert agent.terminate() == 0



def _root_chain(cloud: CloudProc) -> dict[str, Any]:
    lines = cloud.cli("entity", "list", "--json", "--type", "RULE_CHAIN").stdout.splitlines()
    roots = [json.loads(line) for line in lines if line.strip()]
    assert [r["name"] for r in roots] == ["Edge Root Rule Chain"], roots
    return roots[0]


def _set_root_chain(cloud: CloudProc, tmp_path: Path, fixture: str) -> None:
    """The cloud's root chain gets the fixture's metadata (the chain entity kept as it is)."""
    root = _root_chain(cloud)
    doc = json.loads((FIXTURES / fixture).read_text())
    doc["ruleChain"] = json.loads(cloud.cli("entity", "show", root["id"], "--json").stdout)[
        "entity"]
    (tmp_path / "root.json").write_text(json.dumps(doc))
    cloud.cli("entity", "update", root["id"], "--json", str(tmp_path / "root.json"))


def test_the_clouds_root_chain_refused_at_the_first_sync_leaves_no_chain(tmp_path, procs):
    """A root chain with a node outside the subset is refused: the edge runs with no chain,
    and says so."""
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-rule-metrics", RK, SECRET)
    _set_root_chain(cloud, tmp_path, "unknown_node_type.json")
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0 and
               edge_status(agent)["rules"]["last_refusal"] is not None,
               timeout=DEADLINE_S, what="the edge refused the cloud's root chain")
    assert rule_series(agent) == {"edge_sync_rule_chain_in_force": 0,
                                  **refusals(cloud=1, outstanding="cloud")}


def test_thingsboard_s_edge_root_chain_as_it_ships_goes_in_force_from_the_cloud(tmp_path,
                                                                                procs):
    """ThingsBoard's edge root chain as it ships (its RPC call request node included) is the
    chain in force once synced, its 8 nodes counted."""
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-rule-metrics", RK, SECRET)
    _set_root_chain(cloud, tmp_path, "thingsboard_edge_root_rule_chain.json")
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)
    rules = wait_until(lambda: (r := edge_status(agent)["rules"])["chain"] is not None and r,
                       timeout=DEADLINE_S, what="ThingsBoard's edge root chain in force")
    assert rules["last_refusal"] is None
    dig, name = rules["digest"], "Edge Root Rule Chain"
    _, token = agent.create_device("thermo-tb")
    assert agent.post_telemetry(token, {"ts": BASE_TS, "values": {"temperature": 20}}) == 200
    counted = {n["node"]: (0, 0) for n in rules["nodes"]}
    assert sorted(counted) == [
        "nodes[0] 'Save Timeseries'", "nodes[1] 'Save Client Attributes'",
        "nodes[2] 'Message Type Switch'", "nodes[3] 'Log RPC from Device'",
        "nodes[4] 'Log Other'", "nodes[5] 'RPC Call Request'", "nodes[6] 'Push to cloud'",
        "nodes[7] 'Push to cloud'"]
    counted.update({"nodes[2] 'Message Type Switch'": (1, 0),
                    "nodes[0] 'Save Timeseries'": (1, 0), "nodes[6] 'Push to cloud'": (1, 0)})
    assert rule_series(agent) == {**in_force(name, "cloud", dig, 1), **refusals(),
                                  **nodes(name, dig, counted)}


def test_the_clouds_chain_in_force_then_a_chain_from_the_cloud_refused(tmp_path, procs):
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-rule-metrics", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)
    rules = wait_until(lambda: (r := edge_status(agent)["rules"])["chain"] is not None and r,
                       timeout=DEADLINE_S, what="the cloud's root chain in force")
    dig, name = rules["digest"], "Edge Root Rule Chain"
    root_nodes = {n["node"]: (0, 0) for n in rules["nodes"]}
    assert len(root_nodes) == 5
    before = {**in_force(name, "cloud", dig, 1), **refusals(),
              **nodes(name, dig, root_nodes)}
    assert rule_series(agent) == before

    # the root chain again (same chain: no swap) with metadata the edge refuses
    root = _root_chain(cloud)
    bad = json.loads((FIXTURES / "unknown_node_type.json").read_text())
    bad["ruleChain"] = json.loads(cloud.cli("entity", "show", root["id"], "--json").stdout)[
        "entity"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    cloud.cli("entity", "update", root["id"], "--json", str(tmp_path / "bad.json"))
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0 and
               edge_status(agent)["rules"]["last_refusal"] is not None,
               timeout=DEADLINE_S, what="the edge refused the cloud's new chain")
    assert rule_series(agent) == {**before, **refusals(cloud=1, outstanding="cloud")}

    # the chain in force still runs and counts in its own series
    _, token = agent.create_device("thermo-1")
    assert agent.post_telemetry(token, {"ts": BASE_TS, "values": {"temperature": 20}}) == 200
    counted = {**root_nodes, "nodes[0] 'Message Type Switch'": (1, 0),
               "nodes[1] 'Save Timeseries'": (1, 0), "nodes[3] 'Push to Cloud'": (1, 0)}
    assert rule_series(agent) == {**before, **refusals(cloud=1, outstanding="cloud"),
                                  **nodes(name, dig, counted)}


def test_a_file_refused_at_a_restart_counts_while_the_last_chain_from_it_stays(tmp_path, procs):
    """An edit mistake, then a restart: the last chain in force from the file stays (kept in
    the store), the refusal is counted, the node series are the kept chain's, at 0."""
    good = FIXTURES / "selective_sync.json"
    active = tmp_path / "active.json"
    shutil.copy(good, active)
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_RULES_FILE": str(active)})).start()
    dig = digest(*parse_file(good.read_bytes(), str(good)))
    series = rule_series(agent)
    name = "Selective sync"
    counts = {k: v for k, v in series.items() if k.startswith("edge_sync_rule_node")}
    assert len(counts) == 2 * 3 and set(counts.values()) == {0}
    assert series == {**in_force(name, "file", dig, 1), **refusals(), **counts}
    assert agent.terminate() == 0

    shutil.copy(FIXTURES / "unknown_node_type.json", active)
    agent.start()
    assert edge_status(agent)["rules"]["last_refusal"]["source"] == f"file:{active}"
    assert rule_series(agent) == {**in_force(name, "file", dig, 1),
                                  **refusals(file=1, outstanding="file"), **counts}
