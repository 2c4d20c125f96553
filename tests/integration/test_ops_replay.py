"""`edge-sync replay --dead` end to end, with real processes: a cloud whose message size limit
makes the edge dead-letter two large events, then (the cloud's limit raised) one replayed
through the running agent's admin API and the other on the store with the agent stopped. Each
replayed event reaches the cloud exactly once, the replays in seq order, and the queue ends
with no dead letter."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Lane, NewEvent, Status
from tests.helpers.agent import Agent, read_log
from tests.helpers.cloud_proc import (
    edge_status,
    small_message_link,
    wait_connected,
    wait_drained,
)
from tests.helpers.ports import free_ports
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-ops-replay"
SECRET = "sec-ops-replay-81c2"
BIG = "x" * 20_000


def cli(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
    env.update(EDGE_DATA_DIR=str(agent.data_dir), EDGE_ADMIN_HOST="127.0.0.1",
               EDGE_ADMIN_PORT=str(agent.admin_port))
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_replay_dead_letters_reach_the_cloud_once_in_order(tmp_path, procs):
    cloud, agent = small_message_link(procs, tmp_path, "edge-replay", RK, SECRET)
    device_id, token = agent.create_device("replayed")
    with agent.client() as http:
        for n in range(6):
            body = {"n": n, "blob": BIG} if n in (1, 3) else {"n": n}
            assert http.post_telemetry(token, body) == 200
    st = wait_drained(agent)
    assert st["queue"]["dead"] == 2
    dead = [e for e in read_log(agent.data_dir) if e.status is Status.DEAD]
    first, second = (e.seq for e in dead)
    assert [e.body["values"]["n"] for e in dead] == [1, 3]

    # Usage: --dead and exactly one selector.
    for args in (("replay", "--all"), ("replay", "--dead"),
                 ("replay", "--dead", "--all", "--entity", device_id)):
        done = cli(agent, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "usage: edge-sync replay --dead" in done.stderr
    assert edge_status(agent)["queue"]["dead"] == 2
    for body in ({}, {"seqs": []}, {"seqs": [0]}, {"seqs": ["1"]}, {"seqs": 3},
                 {"entity": "nope"}, {"all": False}, {"all": True, "seqs": [1]}, [1],
                 {"everything": True}):
        resp = agent.admin("POST", "/api/dead-letters/replay", body)
        assert resp.status == 400, (body, resp.body)
    assert edge_status(agent)["queue"]["dead"] == 2

    # The cloud now takes large messages; the agent reconnects to it.
    cloud.restart({"EDGES_RPC_MAX_INBOUND_MESSAGE_SIZE": str(4 * 1024 * 1024)})
    wait_connected(agent)

    # Replayed through the running agent: sent at once, without a reconnect.
    done = cli(agent, "replay", "--dead", "--seq", str(first), "999999", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["via"] == "agent"
    assert [(r["seq"], r["entity"], r["lane"]) for r in out["replayed"]] == \
        [(first, device_id, "normal")]
    assert "maxInboundMessageSize" in out["replayed"][0]["reason"]
    assert out["skipped"] == [{"seq": 999999, "reason": "unknown seq"}]
    cloud.wait_applied(RK, 2 + 4 + 1, timeout=30)
    st = wait_drained(agent)
    assert st["queue"]["dead"] == 1
    assert st["metrics"]["edge_sync_dead_letters_replayed_total"] == 1
    logged = wait_until(lambda: [r for r in agent.log_records()
                                 if r["message"] == "dead letter replayed"],
                        timeout=10, what="the replay logged")
    assert [(r["seq"], r["entity"], r["lane"]) for r in logged] == [(first, device_id, "normal")]
    assert "maxInboundMessageSize" in logged[0]["error"]

    # The same seq again: no longer dead.
    again = json.loads(cli(agent, "replay", "--dead", "--seq", str(first), "--json").stdout)
    assert again["replayed"] == [] and again["skipped"] == [{"seq": first, "reason": "not dead"}]

    # Replayed on the store with the agent stopped; the agent started afterwards sends it.
    agent.terminate()
    done = cli(agent, "replay", "--dead", "--entity", device_id)
    assert done.returncode == 0, done.stderr
    assert f"replayed {second:>10}  normal {device_id}" in done.stdout
    assert "1 dead letter(s) replayed, 0 skipped (the agent sends them when it next runs)" \
        in done.stdout
    assert "dead letter replayed" in done.stderr
    agent.start()
    cloud.wait_applied(RK, 2 + 6, timeout=30)
    st = wait_drained(agent)
    assert st["queue"]["dead"] == 0 and st["queue"]["deployed"] == 8

    applied = cloud.events(RK)
    keys = Counter((e["store_id"], e["seq"]) for e in applied)
    assert max(keys.values()) == 1  # exactly once
    # ... and never sent twice: the cloud dropped no duplicate (a ThingsBoard server would not)
    with urllib.request.urlopen(f"http://127.0.0.1:{cloud.admin_port}/metrics", timeout=10) as r:
        families = text_string_to_metric_families(r.read().decode())
    assert [s.value for f in families for s in f.samples
            if s.name == "edge_cloud_uplink_events_total" and s.labels["outcome"] == "duplicate"
            ] == [0.0]
    assert sorted(e["seq"] for e in applied) == [e.seq for e in read_log(agent.data_dir)]
    mine = [e for e in applied if e["entity_id"] == device_id
            and e["action"] == "TIMESERIES_UPDATED"]
    assert [e["body"]["values"]["n"] for e in mine] == [0, 2, 4, 5, 1, 3]
    assert [e["seq"] for e in mine][-2:] == [first, second]
    assert mine[-1]["body"]["values"]["blob"] == BIG


def test_replay_on_the_store_logs_as_the_agent_would(tmp_path: Path) -> None:
    """With the agent stopped, each replay is one "dead letter replayed" line with its fields,
    in the format and at the level the configuration gives (EDGE_LOG_FORMAT, EDGE_LOG_LEVEL),
    as docs/operations.md says; not loguru's default format without the fields."""
    data = tmp_path / "edge"
    a, b = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
    store = LmdbStore(data)  # a stopped agent's store with four dead letters
    log = EventLog(store)
    events = [NewEvent("DEVICE", "DEVICE", entity, Action.TIMESERIES_UPDATED, {"n": n}, 1, lane)
              for n, (entity, lane) in enumerate([(a, Lane.NORMAL), (b, Lane.HIGH),
                                                   (a, Lane.NORMAL), (b, Lane.NORMAL)])]
    store.write(lambda txn: log.append(txn, events, first_seq=1, created_time=1,
                                       tenant_id=bytes(16), edge_id=bytes(16)))
    store.write(lambda txn: [log.dead_letter(txn, seq, f"refused {seq}", now_ms=2)
                             for seq in (1, 2, 3, 4)])
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
    env.update(EDGE_DATA_DIR=str(data), EDGE_ADMIN_HOST="127.0.0.1",
               EDGE_ADMIN_PORT=str(free_ports()[0]))  # nothing answers: the store path

    def replay(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "replay", "--dead",
                               *args, "--json"], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["via"] == "store"
        return done

    done = replay("--seq", "1", "2", EDGE_LOG_FORMAT="json")
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r.pop("ts"))
               for r in lines)
    assert lines == [
        {"level": "INFO", "component": "edge-sync", "message": "dead letter replayed",
         "seq": 1, "entity": str(a), "lane": "normal", "error": "refused 1"},
        {"level": "INFO", "component": "edge-sync", "message": "dead letter replayed",
         "seq": 2, "entity": str(b), "lane": "high", "error": "refused 2"},
    ]

    done = replay("--entity", str(a))  # the default format: text
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \| INFO     \| edge-sync \| dead letter "
        rf"replayed \| seq=3 entity={a} lane=normal error=\"refused 3\"\n", done.stderr), done.stderr

    done = replay("--all", EDGE_LOG_LEVEL="WARNING")  # below the configured level: not logged
    assert [r["seq"] for r in json.loads(done.stdout)["replayed"]] == [4]
    assert done.stderr == ""
