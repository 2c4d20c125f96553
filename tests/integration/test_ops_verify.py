"""`edge-sync verify [--repair]` on a real store made by a real agent (devices, an asset, a
relation, telemetry; then one event dead-lettered and one deployed): healthy, then damaged on
purpose (an index entry removed, counters wrong, a relation's mirror and a device's name index
entry removed, an event value cut short), each damage named; --repair fixes the repairable
ones, and verify passes after; a cut event is reported as not repairable; --repair is refused
while the agent runs. The audit itself (storage/verify.py) is asserted directly too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.storage import codec, verify
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_keys import RELATIONS, RELATIONS_TO
from edge_sync.storage.records import Status
from tests.helpers.agent import Agent, read_log

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, dict[str, str]]]:
    """A stopped agent's store; its ids by name."""
    agent = Agent(tmp_path_factory.mktemp("verify") / "edge").start()
    try:
        ids = {}
        for name in ("dev-a", "dev-b"):
            ids[name], token = agent.create_device(name)
            for n in range(3):
                assert agent.post_telemetry(token, {"n": n}) == 200
        resp = agent.admin("POST", "/api/assets", {"name": "site", "type": "site"})
        assert resp.status == 201, resp.body
        ids["site"] = resp.json()["id"]
        resp = agent.admin("POST", "/api/relations",
                           {"from": ids["site"], "to": ids["dev-a"], "type": "Contains"})
        assert resp.status == 201, resp.body
        # read-only verify works with the agent running; --repair is refused
        done = cli(agent.data_dir, agent, "verify")
        assert done.returncode == 0, done.stdout + done.stderr
        done = cli(agent.data_dir, agent, "verify", "--repair")
        assert done.returncode == 1
        assert "verify --repair refused: the agent is running" in done.stderr
    finally:
        agent.terminate()
    seqs = [e.seq for e in read_log(agent.data_dir)]
    store = LmdbStore(agent.data_dir)
    try:
        log = EventLog(store)
        store.write(lambda txn: log.dead_letter(txn, seqs[3], "refused for ever", now_ms=5))
        store.write(lambda txn: log.mark_deployed(txn, seqs[:2], now_ms=6))
    finally:
        store.close()
    yield agent, ids


def cli(data_dir: Path, agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
    env.update(EDGE_DATA_DIR=str(data_dir), EDGE_ADMIN_HOST="127.0.0.1",
               EDGE_ADMIN_PORT=str(agent.admin_port))
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def copy(made: tuple[Agent, dict[str, str]], tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(made[0].data_dir, target, ignore=shutil.ignore_patterns("*.lock"))
    return target


def audit(data_dir: Path) -> verify.Audit:
    store = LmdbStore(data_dir, readonly=True)
    try:
        with store.read() as txn:
            return verify.audit(store, txn)
    finally:
        store.close()


def test_a_healthy_store_passes(made, tmp_path):
    data = copy(made, tmp_path)
    found = audit(data)
    assert found.problems == [] and found.notes == []
    total = len(read_log(data))
    assert found.checked["events"] == total >= 11  # 2 x (ADDED, CREDENTIALS, 3 points), ...
    assert (found.checked["pending_normal"] + found.checked["pending_high"],
            found.checked["dead"], found.checked["deployed_by_time"]) == (total - 3, 1, 2)
    assert found.checked["devices"] == found.checked["device_names"] == 2
    assert found.checked["graph_relations"] == found.checked["graph_relations_to"] == 1
    done = cli(data, made[0], "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "healthy: 0 problem(s), 0 repaired, 0 note(s)" in done.stdout


def test_damage_is_named_and_repair_fixes_it(made, tmp_path):
    agent, ids = made
    data = copy(made, tmp_path)
    events = read_log(data)
    pending = next(e for e in events if e.status is Status.PENDING)
    dead = next(e for e in events if e.status is Status.DEAD)
    last = events[-1].seq
    store = LmdbStore(data)
    try:
        def damage(txn):
            dbs = store.dbs
            txn.delete(codec.u64(pending.seq), db=dbs[f"pending_{pending.lane.name.lower()}"])
            txn.put(b"graph/count/DEVICE", codec.u64(7), db=dbs["meta"])
            txn.put(b"next_seq", codec.u64(last), db=dbs["meta"])
            txn.delete(b"dev-b", db=dbs["device_names"])
            txn.put(codec.u64(dead.seq), b"\x02\x00\x00", db=dbs["dead"])
            with txn.cursor(db=dbs[RELATIONS_TO]) as cur:
                assert cur.first()
                cur.delete()
            txn.put(codec.u64(last + 40), b"", db=dbs["pending_high"])
            assert txn.delete(dead.entity_id.bytes + codec.u64(dead.seq), db=dbs["events_by_entity"])
        store.write(damage)
        with store.read() as txn:
            relation_count = txn.stat(store.dbs[RELATIONS])["entries"]
    finally:
        store.close()
    assert relation_count == 1

    found = audit(data)
    assert sorted(str(p) for p in found.problems) == sorted([
        f"events seq {pending.seq}: in no status index (pending, dead or deployed)",
        "meta graph/count/DEVICE: 7, but the graph holds 2 DEVICE entities",
        f"meta next_seq: {last}, but the last event is seq {last} (a seq would be handed out "
        "twice)",
        f"device_names name 'dev-b': missing for device {ids['dev-b']}",
        f"dead seq {dead.seq}: dead-letter record unreadable (dead: seq {dead.seq}: damaged "
        "record (3 bytes, shorter than its header))",
        f"graph_relations_to {ids['site']} -> {ids['dev-a']} b'Contains\\x00COMMON': missing "
        "(the relation is not found from its target)",
        f"pending_high seq {last + 40}: points at no event",
        f"events_by_entity seq {dead.seq}: the event's entry is missing",
    ])
    assert all(p.fix is not None for p in found.problems)

    done = cli(data, agent, "verify")
    assert done.returncode == 8
    for p in found.problems:
        assert f"problem: {p}  [--repair fixes it]" in done.stdout
    assert "DAMAGED: 8 problem(s), 0 repaired" in done.stdout

    done = cli(data, agent, "verify", "--repair")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("repaired: ") == 8
    assert f"repaired: events seq {pending.seq}: in no status index (pending, dead or " \
           f"deployed); put back PENDING in pending_{pending.lane.name.lower()}" in done.stdout
    assert "store repaired" in done.stderr
    assert "healthy: 0 problem(s), 8 repaired" in done.stdout
    assert audit(data).problems == []
    after = {e.seq: e for e in read_log(data)}
    assert after[pending.seq].status is Status.PENDING
    assert after[dead.seq].status is Status.DEAD
    assert cli(data, agent, "verify").returncode == 0


def test_an_event_cut_short_is_named_and_not_repaired(made, tmp_path):
    agent, _ids = made
    data = copy(made, tmp_path)
    victim = read_log(data)[5]
    store = LmdbStore(data)
    try:
        def cut(txn):
            raw = txn.get(codec.u64(victim.seq), db=store.dbs["events"])
            txn.put(codec.u64(victim.seq), bytes(raw)[:-7], db=store.dbs["events"])
        store.write(cut)
    finally:
        store.close()
    [problem] = audit(data).problems
    assert (problem.db, problem.key, problem.fix) == ("events", f"seq {victim.seq}", None)
    assert "checksum" in problem.what or "unreadable" in problem.what
    done = cli(data, agent, "verify", "--repair", "--json")
    assert done.returncode == 8
    out = json.loads(done.stdout)
    assert out["healthy"] is False and out["repaired"] == []
    assert [(p["db"], p["key"]) for p in out["problems"]] == [("events", f"seq {victim.seq}")]
    assert "cannot be rebuilt" in out["problems"][0]["what"]
