"""Which rule chain is in force when ``rules.file`` (or the cloud's root chain) is refused,
across restarts: real `edge-sync run` subprocesses on a real LMDB store (tests.helpers.agent),
the chain file edited between runs, and the CLI (`config check`, `rules check`, `status`) as
subprocesses.

- a refused or missing ``rules.file`` at the first start: the agent refuses to start (exit 1, as
  any configuration error), naming the problem;
- after a chain from the file was in force once, a refused, unreadable or missing file leaves
  that chain in force after a restart: the ERROR line says what was refused and which chain
  stays (name, version, digest, since when), status shows the refusal outstanding, health is
  degraded with the reason, readiness stays ready and the chain runs on every message;
- the file edited while the agent runs (read at start only): status says the file on disk is
  not the chain in force, with the digest `edge-sync rules check` prints for it;
- `edge-sync config check` validates ``rules.file`` as the agent loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_sync.api.events_query import iso_ms
from edge_sync.rules.chain import parse_file
from edge_sync.rules.runtime import digest
from edge_sync.rules.validate import validate
from edge_sync.storage.records import Action
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc, link_env, wait_connected
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
GOOD = FIXTURES / "selective_sync.json"
BAD = FIXTURES / "unknown_node_type.json"
BASE_TS = 1_700_000_000_000


def problems_of(path: Path) -> list[str]:
    return [str(p) for p in validate(*parse_file(path.read_bytes(), str(path)))]


def digest_of(path: Path) -> str:
    return digest(*parse_file(path.read_bytes(), str(path)))


def status(agent: Agent) -> dict[str, Any]:
    resp = agent.admin("GET", "/api/status")
    assert resp.status == 200, resp.body
    return dict(resp.json())


def cli(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", *args],
                          env=agent.environment(), capture_output=True, text=True, timeout=60,
                          check=False)


def rule_errors(agent: Agent) -> list[str]:
    return [r["message"] for r in agent.log_records()
            if r.get("component") == "rules" and r["level"] == "ERROR"]


@pytest.mark.parametrize("case", ["refused", "missing"])
def test_a_bad_rules_file_at_the_first_start_refuses_to_start(tmp_path: Path, procs: Any,
                                                              case: str) -> None:
    chain = BAD if case == "refused" else tmp_path / "typo-nonexistent.json"
    problems = problems_of(BAD) if case == "refused" else \
        [f"{chain}: No such file or directory"]
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_RULES_FILE": str(chain)}))
    code, err = agent.run_to_exit()
    message = (f"rules.file {chain} refused: {'; '.join(problems)} (no chain from rules.file was "
               "in force before to keep in force; edge-sync rules check names every problem)")
    assert (code, err.strip().splitlines()[-1]) == (1, f"error: configuration: {message}")
    assert [r["message"] for r in agent.log_records() if r["level"] == "ERROR"] == \
        [f"refusing to start: {message}"]


def test_a_file_refused_after_a_restart_leaves_the_last_chain_from_it_in_force(
        tmp_path: Path, procs: Any) -> None:
    active = tmp_path / "active.json"
    shutil.copy(GOOD, active)
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_RULES_FILE": str(active)})).start()
    first = status(agent)["rules"]
    good_digest = digest_of(GOOD)
    assert (first["chain"], first["source"], first["version"], first["digest"],
            first["last_refusal"], first["health"]) == (
        "Selective sync", f"file:{active}", 1, good_digest, None,
        {"level": "healthy", "reasons": []})
    since = first["since"]
    assert since == iso_ms(first["since_ms"]) and since.endswith("Z")
    assert agent.terminate() == 0

    shutil.copy(BAD, active)  # an edit mistake, then a restart (a power cut, an upgrade)
    agent.start()
    rules = status(agent)["rules"]
    still = (f"rule chain 'Selective sync' from file:{active} stays in force: version 1, "
             f"digest {good_digest}, in force since {since}")
    assert (rules["chain"], rules["source"], rules["version"], rules["digest"],
            rules["since"]) == ("Selective sync", f"file:{active}", 1, good_digest, since)
    refusal = rules["last_refusal"]
    assert (refusal["source"], refusal["problems"], refusal["at"], refusal["outstanding"],
            refusal["still"]) == (f"file:{active}", problems_of(BAD), iso_ms(refusal["at_ms"]),
                                  True, still)
    assert rule_errors(agent) == [
        f"rule chain from file:{active} refused ({still}): {'; '.join(problems_of(BAD))}"]
    on_disk = (f"rules.file {active} on disk (digest {digest_of(BAD)}) is not the chain in "
               f"force (digest {good_digest}): the file is read at start only")
    assert rules["file"] == {"path": str(active), "digest": digest_of(BAD), "matches": False,
                             "note": on_disk}
    reasons = [f"rule chain from file:{active} refused at {refusal['at']} ({still})", on_disk]
    assert rules["health"] == {"level": "degraded", "reasons": reasons}
    full = status(agent)
    assert (full["health"], full["health_detail"]["rules"]) == (
        "degraded", {"level": "degraded", "reasons": reasons})
    ready = agent.admin("GET", "/readyz")
    assert (ready.status, ready.json()["status"]) == (200, "ready")

    # the chain runs: a reading over 50 goes to the cloud's queue, one under stays on the edge
    device_id, token = agent.create_device("thermo")
    assert agent.post_telemetry(token, {"ts": BASE_TS, "values": {"temperature": 10}}) == 200
    assert agent.post_telemetry(token, {"ts": BASE_TS + 1, "values": {"temperature": 99}}) == 200
    sent = [e.body["values"] for e in agent.read_log()
            if e.action == Action.TIMESERIES_UPDATED and str(e.entity_id) == device_id]
    assert sent == [{"temperature": 99}]
    kept = agent.admin("GET", f"/api/devices/{device_id}/timeseries?keys=temperature"
                              f"&startTs={BASE_TS}&endTs={BASE_TS + 1}")
    assert kept.json() == {"temperature": [{"ts": BASE_TS, "value": 10}]}

    text = cli(agent, "status")
    assert text.returncode == 0, text.stderr
    assert f"rule chain:   'Selective sync' from file:{active} (version 1, digest " \
           f"{good_digest}, in force since {since})" in text.stdout.splitlines()
    assert f"  last refusal from file:{active} at {refusal['at']} ({still}): " \
           f"{'; '.join(problems_of(BAD))}" in text.stdout.splitlines()
    assert f"health:       degraded (rule chain: {'; '.join(reasons)})" in text.stdout.splitlines()
    assert agent.terminate() == 0

    active.unlink()  # a typo in the path, or the file gone: the same chain stays
    agent.start()
    rules = status(agent)["rules"]
    assert (rules["chain"], rules["version"], rules["digest"], rules["since"]) == \
        ("Selective sync", 1, good_digest, since)
    assert rule_errors(agent) == [
        f"rule chain from file:{active} refused ({still}): {active}: No such file or directory"]
    assert rules["health"]["level"] == "degraded"
    assert agent.terminate() == 0

    shutil.copy(GOOD, active)  # fixed: back in force as it was, nothing outstanding
    agent.start()
    rules = status(agent)["rules"]
    assert (rules["chain"], rules["version"], rules["digest"], rules["since"],
            rules["last_refusal"], rules["health"]) == (
        "Selective sync", 1, good_digest, since, None, {"level": "healthy", "reasons": []})
    assert rule_errors(agent) == []


def test_a_file_edited_while_running_is_shown_as_not_in_force(tmp_path: Path,
                                                              procs: Any) -> None:
    active = tmp_path / "active.json"
    shutil.copy(GOOD, active)
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_RULES_FILE": str(active)})).start()
    assert status(agent)["rules"]["file"] == {"path": str(active), "digest": digest_of(GOOD),
                                              "matches": True, "note": None}
    doc = json.loads(GOOD.read_text())
    doc["metadata"]["nodes"][0]["configuration"]["jsScript"] = "return msg.temperature > 60;"
    active.write_text(json.dumps(doc))
    check = cli(agent, "rules", "check", str(active), "--json")
    assert check.returncode == 0, check.stdout
    edited = json.loads(check.stdout)["digest"]
    assert edited == digest_of(active) != digest_of(GOOD)

    rules = status(agent)["rules"]
    note = (f"rules.file {active} on disk (digest {edited}) is not the chain in force (digest "
            f"{digest_of(GOOD)}): the file is read at start only")
    assert (rules["digest"], rules["file"]) == (
        digest_of(GOOD), {"path": str(active), "digest": edited, "matches": False,
                          "note": note})
    assert rules["health"] == {"level": "degraded", "reasons": [note]}
    assert agent.admin("GET", "/readyz").status == 200
    text = cli(agent, "status")
    assert f"  file changed: {note}" in text.stdout.splitlines()
    assert agent.terminate() == 0
    agent.start()  # read at start: the edited chain goes in force as version 2
    rules = status(agent)["rules"]
    assert (rules["version"], rules["digest"], rules["file"]["matches"], rules["health"]) == (
        2, edited, True, {"level": "healthy", "reasons": []})


def test_config_check_validates_rules_file(tmp_path: Path) -> None:
    """`edge-sync config check` reads, parses and validates rules.file under the site's
    script limits, as the agent does at start: exit 1 naming each problem."""
    def config_check(chain: Path, *extra: str, **env: str) -> subprocess.CompletedProcess[str]:
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
        run_env.update(EDGE_DATA_DIR=str(tmp_path / "store"), EDGE_RULES_FILE=str(chain), **env)
        return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "config", "check",
                               *extra], env=run_env, capture_output=True, text=True,
                              timeout=60, check=False)

    ok = config_check(GOOD)
    assert ok.returncode == 0, ok.stdout
    assert f"rules.file: '{GOOD}'" in ok.stdout.splitlines()
    missing = tmp_path / "nope.json"
    done = config_check(missing)
    assert (done.returncode, done.stdout) == (
        1, f"error: rules.file: {missing}: No such file or directory\n"
           "1 error(s) in the configuration\n")
    done = config_check(BAD, "--json")
    assert (done.returncode, json.loads(done.stdout)) == (
        1, {"ok": False, "errors": [f"rules.file: {p}" for p in problems_of(BAD)]})

    doc = json.loads(GOOD.read_text())  # fits the default 16 MiB, not a 1 MiB cap
    doc["metadata"]["nodes"][0]["configuration"].update(
        scriptLang="JS", jsScript="var s = '" + "x" * 600_000 + "'; return msg.temperature > 50;")
    big = tmp_path / "big.json"
    big.write_text(json.dumps(doc))
    assert config_check(big).returncode == 0
    done = config_check(big, EDGE_RULES_SCRIPT_MEMORY_MB="1")
    assert done.returncode == 1
    assert done.stdout.startswith(
        "error: rules.file: metadata.nodes[0].configuration.jsScript: nodes[0] 'Hotter than "
        "50?': the JS script is refused: ScriptMemoryExceeded")


# -- the cloud's root chain --------------------------------------------------------------------

RK = "rk-chain-source"
SECRET = "sec-chain-source-7d1e"
ROOT = "Edge Root Rule Chain"
DEADLINE_S = 30.0


def linked(tmp_path: Path, procs: Any, **edge_env: str) -> tuple[CloudProc, Agent]:
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-chain-source", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET, **edge_env))).start()
    wait_connected(agent)
    return cloud, agent


def set_root_metadata(cloud: CloudProc, tmp_path: Path, export: Path) -> None:
    """`edge-cloud entity update` of the root chain with the metadata of ``export``: the edge
    gets a RULE_CHAIN downlink, then a RULE_CHAIN_METADATA one."""
    body = tmp_path / f"metadata-{export.stem}.json"
    body.write_text(json.dumps({"metadata": json.loads(export.read_text())["metadata"]}))
    cloud.cli("entity", "update", ROOT, "--json", str(body))


def rules_when(agent: Agent, what: str, ok: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        rules = status(agent)["rules"]
        return dict(rules) if ok(rules) else None

    return dict(wait_until(found, timeout=DEADLINE_S, what=what,
                           show=lambda: status(agent)["rules"]))


def test_a_restart_after_a_refused_cloud_chain_keeps_the_last_cloud_chain_in_force(
        tmp_path: Path, procs: Any) -> None:
    cloud, agent = linked(tmp_path, procs)
    first = rules_when(agent, "the root chain in force", lambda r: r["chain"] is not None)
    assert (first["chain"], first["source"], first["version"]) == (ROOT, "cloud", 1)
    root_digest, since = first["digest"], first["since"]

    set_root_metadata(cloud, tmp_path, BAD)  # refused while running: the chain before stays
    refused = rules_when(agent, "the bad chain refused", lambda r: r["last_refusal"] is not None)
    still = (f"rule chain {ROOT!r} from cloud stays in force: version 1, digest {root_digest}, "
             f"in force since {since}")
    assert (refused["digest"], refused["last_refusal"]["still"], refused["health"]) == (
        root_digest, still, {"level": "degraded", "reasons": [
            f"rule chain from cloud refused at {refused['last_refusal']['at']} ({still})"]})
    problems = "; ".join(refused["last_refusal"]["problems"])
    assert "TbRestApiCallNode ('POST to MES') is not a supported node type" in problems
    assert rule_errors(agent) == [f"rule chain from cloud refused ({still}): {problems}"]
    assert agent.terminate() == 0

    agent.start()  # the stored root chain is still the refused one: the kept one stays
    after = status(agent)["rules"]
    assert (after["chain"], after["source"], after["version"], after["digest"],
            after["since"], after["last_refusal"]["outstanding"]) == (
        ROOT, "cloud", 1, root_digest, since, True)
    assert rule_errors(agent) == [f"rule chain from cloud refused ({still}): {problems}"]
    assert after["health"]["level"] == "degraded"
    wait_connected(agent)

    # the fix comes as RULE_CHAIN, then its metadata: the RULE_CHAIN alone (the refused
    # metadata still stored) is no new refusal; the metadata puts the new chain in force
    set_root_metadata(cloud, tmp_path, GOOD)
    fixed = rules_when(agent, "the new chain in force", lambda r: r["version"] == 2)
    assert (fixed["chain"], fixed["digest"] != root_digest, fixed["health"]) == (
        ROOT, True, {"level": "healthy", "reasons": []})
    assert [n["node"] for n in fixed["nodes"]] == [
        "nodes[0] 'Hotter than 50?'", "nodes[1] 'Push to cloud'", "nodes[2] 'Keep on the edge'"]
    assert rule_errors(agent) == [f"rule chain from cloud refused ({still}): {problems}"]
    waiting = [r["message"] for r in agent.log_records()
               if r.get("component") == "rules" and "waiting for new metadata" in r["message"]]
    assert waiting == [f"cloud root rule chain {ROOT!r} changed; its metadata, refused before, "
                       f"is unchanged: waiting for new metadata ({still})"]


def test_a_cloud_root_chain_shadowed_by_rules_file_is_logged_once_per_change_and_shown(
        tmp_path: Path, procs: Any) -> None:
    cloud, agent = linked(tmp_path, procs, EDGE_RULES_FILE=str(GOOD))

    def shadows() -> list[dict[str, Any]]:
        return [r for r in agent.log_records()
                if r.get("component") == "rules" and "rules.file wins" in r["message"]]

    rules = rules_when(agent, "the cloud root chain shadowed", lambda r: r["shadowed"])
    shadow = rules["shadowed"]
    assert (rules["chain"], rules["source"], shadow["chain"], shadow["version"],
            shadow["received"]) == ("Selective sync", f"file:{GOOD}", ROOT, None,
                                    iso_ms(shadow["received_ms"]))
    line = (f"cloud root rule chain {ROOT!r} (digest {shadow['digest']}) received; not in "
            "force: rules.file wins")
    assert [r["message"] for r in shadows()] == [line]

    set_root_metadata(cloud, tmp_path, FIXTURES / "aggregation.json")
    changed = rules_when(agent, "the changed root chain shadowed",
                         lambda r: r["shadowed"]["digest"] != shadow["digest"])["shadowed"]
    assert [r["message"] for r in shadows()] == [line, (
        f"cloud root rule chain {ROOT!r} (digest {changed['digest']}) received; not in force: "
        "rules.file wins")]
    text = cli(agent, "status").stdout.splitlines()
    assert (f"  shadowed: cloud root rule chain {ROOT!r} (digest {changed['digest']}, received "
            f"{changed['received']}): not in force, rules.file wins") in text
    assert status(agent)["rules"]["digest"] == digest_of(GOOD)
