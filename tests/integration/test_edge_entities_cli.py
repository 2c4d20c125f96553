"""The entity graph's `edge-sync` commands against a real `edge-sync run`: each change prints
the events it made and the log holds exactly those; refusals exit 7 (not found), 6 (conflict)
or 1 and write nothing; `entities`, `entity` and `status` read the graph with the agent running
and after it has stopped; `sync` without a cloud link says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from edge_sync.common.entity_graph import Ref
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore, held_entity_key
from edge_sync.storage.records import Lane
from tests.helpers.agent import Agent, read_log

UNKNOWN = "00000000-0000-4000-8000-00000000dead"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("entities-cli") / "edge").start()
    yield a
    a.terminate()
    a.close()


def cli(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_DATA_DIR": str(agent.data_dir), "EDGE_ADMIN_HOST": "127.0.0.1",
           "EDGE_ADMIN_PORT": str(agent.admin_port)}
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def ok(agent: Agent, *args: str) -> str:
    done = cli(agent, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def ok_json(agent: Agent, *args: str) -> Any:
    return json.loads(ok(agent, *args, "--json"))


def last_seq(agent: Agent) -> int:
    log = read_log(agent.data_dir)
    return log[-1].seq if log else 0


def new_events(agent: Agent, after: int) -> list[tuple[int, str, str, str, Lane]]:
    return [(e.seq, e.type, str(e.entity_id), e.action, e.lane)
            for e in read_log(agent.data_dir) if e.seq > after]


def test_asset_commands(agent: Agent) -> None:
    before = last_seq(agent)
    out = ok_json(agent, "asset", "create", "--name", "cli-line", "--type", "line",
                  "--info", '{"floor": 2}')
    asset = out["id"]
    assert out == {"id": asset, "seqs": [before + 1]}
    assert ok(agent, "asset", "update", asset, "--label", "west") == \
        f"id: {asset}  events: {before + 2}\n"
    done = cli(agent, "asset", "create", "--name", "cli-line")
    assert (done.returncode, done.stdout) == (6, "")
    assert "cli-line" in done.stderr and "409" in done.stderr
    done = cli(agent, "asset", "update", UNKNOWN, "--label", "x")
    assert done.returncode == 7 and UNKNOWN in done.stderr
    done = cli(agent, "asset", "create", "--name", "x", "--info", "{oops")
    assert done.returncode == 2 and "not JSON" in done.stderr
    entity = ok_json(agent, "entity", asset)
    assert entity["entity"] == {"id": {"entityType": "ASSET", "id": asset},
                                "createdTime": entity["entity"]["createdTime"],
                                "name": "cli-line", "type": "line", "label": "west",
                                "additionalInfo": {"floor": 2}}
    assert ok(agent, "asset", "delete", asset) == f"id: {asset}  events: {before + 3}\n"
    assert cli(agent, "entity", asset).returncode == 7
    assert new_events(agent, before) == [
        (before + 1, "ASSET", asset, "ADDED", Lane.HIGH),
        (before + 2, "ASSET", asset, "UPDATED", Lane.HIGH),
        (before + 3, "ASSET", asset, "DELETED", Lane.NORMAL)]


def test_relation_device_and_key_commands(agent: Agent) -> None:
    site = ok_json(agent, "asset", "create", "--name", "cli-site")["id"]
    device, token = agent.create_device("cli-pump")
    assert agent.post_telemetry(token, {"rpm": 1, "temp": 20}) == 200
    assert agent.device("POST", f"/api/v1/{token}/attributes", {"fw": "1"}).status == 200
    before = last_seq(agent)
    ok(agent, "relation", "add", "--from", site, "--to", device, "--type", "Contains")
    ok(agent, "relation", "add", "--from", device, "--to", site, "--type", "Feeds")
    ok(agent, "relation", "delete", "--from", site, "--to", device, "--type", "Contains")
    done = cli(agent, "relation", "delete", "--from", site, "--to", device, "--type", "Contains")
    assert done.returncode == 7 and "no relation" in done.stderr
    done = cli(agent, "relation", "add", "--from", site, "--to", UNKNOWN, "--type", "Contains")
    assert done.returncode == 7 and UNKNOWN in done.stderr
    assert cli(agent, "relation", "delete", "--all", site, "--type", "X").returncode == 2
    assert ok_json(agent, "relation", "delete", "--all", site) == {"seqs": [before + 4]}
    ok(agent, "attributes", "delete", device, "--scope", "client", "fw")
    ok(agent, "timeseries", "delete", device, "rpm")
    entity = ok_json(agent, "entity", device)
    assert entity["attributes"]["CLIENT_SCOPE"] == {}
    assert list(entity["latest"]) == ["temp"]
    assert entity["relations"] == {"from": [], "to": []}
    assert ok(agent, "device", "delete", device) == f"id: {device}  events: {before + 7}\n"
    assert agent.post_telemetry(token, {"rpm": 2}) == 401
    assert cli(agent, "device", "delete", device).returncode == 7
    assert cli(agent, "timeseries", "delete", UNKNOWN, "a").returncode == 7
    assert new_events(agent, before) == [
        (before + 1, "RELATION", site, "RELATION_ADD_OR_UPDATE", Lane.NORMAL),
        (before + 2, "RELATION", device, "RELATION_ADD_OR_UPDATE", Lane.NORMAL),
        (before + 3, "RELATION", site, "RELATION_DELETED", Lane.NORMAL),
        (before + 4, "RELATION", device, "RELATION_DELETED", Lane.NORMAL),
        (before + 5, "DEVICE", device, "ATTRIBUTES_DELETED", Lane.NORMAL),
        (before + 6, "DEVICE", device, "TIMESERIES_DELETED", Lane.NORMAL),
        (before + 7, "DEVICE", device, "DELETED", Lane.NORMAL)]


def test_alarm_commands(agent: Agent) -> None:
    device, _ = agent.create_device("cli-boiler")
    resp = agent.admin("POST", "/api/alarms", {"device": device, "type": "Overheat"})
    alarm = resp.json()["alarm_id"]
    before = last_seq(agent)
    ok(agent, "alarm", "ack", alarm)
    ok(agent, "alarm", "clear", alarm, "--device", device, "--type", "Overheat")
    assert new_events(agent, before) == [(before + 1, "ALARM", alarm, "ALARM_ACK", Lane.HIGH),
                                         (before + 2, "ALARM", alarm, "ALARM_CLEAR", Lane.HIGH)]
    done = cli(agent, "alarm", "ack", UNKNOWN)
    assert done.returncode == 7 and UNKNOWN in done.stderr


def test_sync_without_a_cloud_link(agent: Agent) -> None:
    done = cli(agent, "sync", "--full")
    assert done.returncode == 5 and "no cloud link" in done.stderr


def test_reads_with_the_agent_running_then_stopped(tmp_path_factory: pytest.TempPathFactory
                                                   ) -> None:
    a = Agent(tmp_path_factory.mktemp("entities-read") / "edge").start()
    try:
        site = ok_json(a, "asset", "create", "--name", "read-site", "--type", "site")["id"]
        device, _ = a.create_device("read-pump")
        ok(a, "relation", "add", "--from", site, "--to", device, "--type", "Contains")
        running = ok(a, "entities")
        api_log = a.admin("GET", "/api/apply-log").json()
        assert a.terminate() == 0
    finally:
        a.close()
    stopped = ok(a, "entities")
    assert stopped == running
    assert stopped.splitlines() == [
        f"{'DEVICE':<20} {device}  read-pump  (edge)",
        f"{'ASSET':<20} {site}  read-site  (edge)"]
    listed = [json.loads(line) for line in ok(a, "entities", "--type", "asset", "--json")
              .splitlines()]
    assert [(e["id"], e["name"], e["origin"]) for e in listed] == [(site, "read-site", "edge")]
    assert ok(a, "entities", "--name", "read-pump").splitlines() == [
        f"{'DEVICE':<20} {device}  read-pump  (edge)"]
    text = ok(a, "entity", site)
    assert text.splitlines()[0] == f"ASSET {site}  read-site"
    assert f"relation: -Contains-> DEVICE {device}" in text.splitlines()
    assert f"relation: <-Contains- ASSET {site}" in ok(a, "entity", device).splitlines()
    status = ok_json(a, "status")
    assert status["agent"] == "not running"
    assert status["graph"] == {"entities": {"DEVICE": 1, "ASSET": 1}, "relations": 1,
                               "held": {"count": 0, "first": []}}
    assert "held:         0" in ok(a, "status").splitlines()
    assert cli(a, "entity", UNKNOWN).returncode == 7
    assert str(uuid.UUID(UNKNOWN)) in cli(a, "entity", UNKNOWN).stderr
    log = [json.loads(line) for line in ok(a, "apply-log", "--json").splitlines()]
    relation = f"{site}->{device} Contains/COMMON"
    assert [(e["index"], e["action"], e["entity_type"], e["id"], e["origin"]) for e in log] == [
        (1, "ADDED", "ASSET", site, "edge"), (2, "ADDED", "DEVICE", device, "edge"),
        (3, "ADDED", "RELATION", relation, "edge")]
    assert log == api_log
    assert [json.loads(line)["index"] for line in
            ok(a, "apply-log", "--json", "--after", "1", "--limit", "1").splitlines()] == [2]
    assert ok(a, "apply-log").splitlines()[2].split()[2:] == [
        "ADDED", "RELATION", f"{site}->{device}", "Contains/COMMON", "(edge)"]


def test_status_shows_what_is_held_and_the_last_full_sync(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    a = Agent(tmp_path_factory.mktemp("entities-held") / "edge")
    profile = uuid.UUID("00000000-0000-4000-8000-0000000000f1")
    waiting = [uuid.UUID(int=0x1000 + i) for i in range(25)]
    store = LmdbStore(a.data_dir)
    try:
        graph = GraphStore(store)

        def prepare(txn: Any) -> None:
            graph.start_full_sync(txn, now_ms=1_000, reason="first connect")
            for i, device in enumerate(waiting):
                graph.hold(txn, held_entity_key("DEVICE", device), entity_type="DEVICE",
                           entity_id=device, what=f"DEVICE {device} (held-{i:02})",
                           field="deviceUpdateMsg", payload=b"",
                           waiting_for=[Ref("DEVICE_PROFILE", str(profile))], now_ms=2_000 + i)
            graph.complete_full_sync(txn, now_ms=5_000, version="test")

        store.write(prepare)
    finally:
        store.close()
    status = ok_json(a, "status")  # the agent never ran: read from the store
    held = status["graph"]["held"]
    assert held["count"] == 25 and len(held["first"]) == 20
    assert held["first"][0] == {"entity_type": "DEVICE", "id": str(waiting[0]),
                                "what": f"DEVICE {waiting[0]} (held-00)",
                                "waiting_for": [f"DEVICE_PROFILE {profile}"], "since_ms": 2_000}
    assert {k: status["sync"][k] for k in ("last_full_ms", "last_full_version",
                                           "full_in_progress", "full_reason")} == {
        "last_full_ms": 5_000, "last_full_version": "test", "full_in_progress": False,
        "full_reason": "first connect"}
    text = ok(a, "status").splitlines()
    assert "held:         25" in text
    assert f"  DEVICE {waiting[0]} (held-00) waits for DEVICE_PROFILE {profile}" in text
    assert "  ... and 5 more" in text
    assert "last full sync: 5000" in text
    one = ok_json(a, "entity", str(waiting[3]))
    assert (one["entity_type"], one["entity"], one["held"]) == (
        "DEVICE", None, {"waiting_for": [f"DEVICE_PROFILE {profile}"], "since_ms": 2_003})
    a.start()
    try:
        assert ok_json(a, "status")["graph"]["held"]["count"] == 25  # from the running agent
    finally:
        a.terminate()
        a.close()
