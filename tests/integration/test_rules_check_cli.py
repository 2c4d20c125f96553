"""`edge-sync rules check FILE` as a subprocess, with no agent and no store: exit 0 and the
one-line summary for a valid chain, exit 1 and every problem one a line otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edge_sync.rules.chain import parse_file
from edge_sync.rules.runtime import digest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"


def digest_line(path: Path) -> str:
    """The line after the summary: the chain's digest, as the agent computes it for the chain
    in force (status, GET /api/rules)."""
    return f"digest {digest(*parse_file(path.read_bytes(), str(path)))}\n"


def check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_DATA_DIR": str(tmp_path / "no-store")}
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "rules", "check", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_valid_chain_exits_0_with_a_summary(tmp_path: Path) -> None:
    done = check(tmp_path, str(FIXTURES / "telemetry_dedup_chain.json"))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "'Boiler telemetry' (EDGE): 11 nodes, 11 connections; node types: TbCheckMessageNode, "
        "TbClearAlarmNode, TbCreateAlarmNode, TbJsFilterNode, TbLogNode, TbMsgAttributesNode, "
        "TbMsgDeduplicationNode, TbMsgPushToCloudNode, TbMsgTimeseriesNode, TbMsgTypeSwitchNode, "
        "TbTransformMsgNode\n" + digest_line(FIXTURES / "telemetry_dedup_chain.json"))
    assert not (tmp_path / "no-store").exists()


def test_config_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    """As every command (README), `rules check` takes --config; a file check needs no store."""
    site = tmp_path / "site.yml"
    site.write_text("storage:\n  data_dir: /nonexistent/edge\n")
    for args in (["--config", str(site), str(FIXTURES / "telemetry_dedup_chain.json")],
                 [str(FIXTURES / "telemetry_dedup_chain.json"), "--config", str(site)]):
        done = check(tmp_path, *args)
        assert (done.returncode, done.stderr) == (0, ""), args
        assert done.stdout.startswith("'Boiler telemetry' (EDGE): 11 nodes, 11 connections; ")


def test_scripts_are_compiled_under_the_configured_memory_cap(tmp_path: Path) -> None:
    """With --config, the check compiles the scripts under that site's rules.script_memory_mb,
    as the agent would load the chain: a script that fits the default 16 MiB but not a 1 MiB
    cap passes without it and is refused with it. A configuration that cannot be read is an
    error of its own."""
    doc = json.loads((FIXTURES / "selective_sync.json").read_text())
    filter_node = doc["metadata"]["nodes"][0]
    filter_node["configuration"].update(
        scriptLang="JS", jsScript="var s = '" + "x" * 600_000 + "'; return msg.temperature > 50;")
    big = tmp_path / "big_script.json"
    big.write_text(json.dumps(doc))
    assert check(tmp_path, str(big)).returncode == 0
    site = tmp_path / "site.yml"
    site.write_text("rules:\n  script_memory_mb: 1\n")
    done = check(tmp_path, "--config", str(site), str(big))
    assert done.returncode == 1
    assert done.stdout.startswith(
        "metadata.nodes[0].configuration.jsScript: nodes[0] 'Hotter than 50?': the JS script is "
        "refused: ScriptMemoryExceeded: compiling the script")
    site.write_text("rules:\n  script_memory_mb: 0\n")
    done = check(tmp_path, "--config", str(site), str(big))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("error: configuration: ") and "script_memory_mb" in done.stderr


def test_a_valid_chain_as_json(tmp_path: Path) -> None:
    done = check(tmp_path, str(FIXTURES / "telemetry_dedup_chain.json"), "--json")
    assert done.returncode == 0
    out = json.loads(done.stdout)
    assert (out["ok"], out["name"], out["type"], out["nodes"], out["connections"]) == (
        True, "Boiler telemetry", "EDGE", 11, 11)
    assert f"digest {out['digest']}\n" == digest_line(FIXTURES / "telemetry_dedup_chain.json")
    assert len(out["node_types"]) == 11
    assert out["notes"] == []


def test_every_problem_one_a_line_exit_1(tmp_path: Path) -> None:
    done = check(tmp_path, str(FIXTURES / "dangling_connection.json"))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "metadata.firstNodeIndex: 3 names no node (there are 3)",
        "metadata.connections[1].toIndex: dangling: 7 names no node (there are 3)",
        "metadata.connections[2].fromIndex: dangling: 5 names no node (there are 3)",
        "metadata.ruleChainConnections[0].fromIndex: dangling: 9 names no node (there are 3)",
    ]
    done = check(tmp_path, str(FIXTURES / "cycle_chain.json"), "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"ok": False, "problems": [
        "metadata.connections: cycle: nodes[1] 'Normalise' -> nodes[2] 'Retry?' -> "
        "nodes[1] 'Normalise'",
        "metadata.connections: cycle: nodes[3] 'Log' -> nodes[3] 'Log'"]}


def test_unreadable_or_malformed_files_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    done = check(tmp_path, str(missing))
    assert (done.returncode, done.stdout) == (1, f"{missing}: No such file or directory\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"ruleChain": {"name": "A"}}')
    done = check(tmp_path, str(bad))
    assert (done.returncode, done.stdout) == (
        1, f"{bad}: metadata: missing (the rule chain's nodes and connections)\n")


def test_an_interval_or_ttl_beyond_what_the_edge_can_keep_is_refused(tmp_path: Path) -> None:
    """A window of 10**30 s or a TTL of 10**30 s once passed the check, went in force and then
    made every telemetry post of every device unstorable."""
    aggregate = json.loads((FIXTURES / "aggregation.json").read_text())
    aggregate["metadata"]["nodes"][0]["configuration"]["interval"] = 10**30
    save = {"ruleChain": {"name": "keep forever", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": "org.thingsboard.rule.engine.telemetry.TbMsgTimeseriesNode",
             "name": "save", "configuration": {"defaultTTL": 10**30}}]}}
    outputs = []
    for name, chain in (("aggregate.json", aggregate), ("save.json", save)):
        path = tmp_path / name
        path.write_text(json.dumps(chain))
        done = check(tmp_path, str(path))
        outputs.append((done.returncode, done.stdout))
    assert outputs == [
        (1, "metadata.nodes[0].configuration.interval: expected whole seconds from 1 to "
            f"31622400 (366 days), got {10**30}\n"),
        (1, "metadata.nodes[0].configuration.defaultTTL: expected whole seconds from 0 to "
            f"3162240000 (100 years; 0: no TTL), got {10**30}\n")]


def test_thingsboard_s_default_edge_root_chain_passes_with_its_rpc_node(tmp_path: Path) -> None:
    """ThingsBoard 4.x's default edge root chain
    (application/src/main/data/json/edge/rule_chains/edge_root_rule_chain.json, copied as is)
    passes, its TbSendRPCRequestNode ("RPC Call Request") included; so does the chain with a
    connection out of that node (the device's answer goes on by Success)."""
    real = FIXTURES / "thingsboard_edge_root_rule_chain.json"
    done = check(tmp_path, str(real))
    assert (done.returncode, done.stdout) == (
        0, "'Edge Root Rule Chain' (EDGE): 8 nodes, 9 connections; node types: TbLogNode x2, "
           "TbMsgAttributesNode, TbMsgPushToCloudNode x2, TbMsgTimeseriesNode, "
           "TbMsgTypeSwitchNode, TbSendRPCRequestNode\n" + digest_line(real))

    doc = json.loads(real.read_text())
    meta = doc["metadata"]
    assert meta["nodes"][5]["type"].endswith("TbSendRPCRequestNode")
    meta["connections"].append({"fromIndex": 5, "toIndex": 4, "type": "Success"})
    answered_on = tmp_path / "edge_root_rpc_answer_logged.json"
    answered_on.write_text(json.dumps(doc))
    done = check(tmp_path, str(answered_on))
    assert (done.returncode, done.stdout.splitlines()[0]) == (
        0, "'Edge Root Rule Chain' (EDGE): 8 nodes, 10 connections; node types: TbLogNode x2, "
           "TbMsgAttributesNode, TbMsgPushToCloudNode x2, TbMsgTimeseriesNode, "
           "TbMsgTypeSwitchNode, TbSendRPCRequestNode")


def test_thingsboard_4_2_s_edge_root_chain_passes_with_a_note_on_its_device_profile_node(
        tmp_path: Path) -> None:
    """ThingsBoard 3.3 to 4.2's default edge root chain (4.2.1's
    application/src/main/data/json/edge/rule_chains/edge_root_rule_chain.json, copied as is)
    starts with a device profile node: it passes, with a note that the node passes messages on
    and the profiles' alarm rules are not evaluated on the edge."""
    real = FIXTURES / "thingsboard_4_2_edge_root_rule_chain.json"
    note = ("note: nodes[0] 'Device Profile Node' (TbDeviceProfileNode) passes every message on "
            "by Success and sends no alarm: the alarm rules of the device profiles are not "
            "evaluated on the edge (a cloud whose rule chain has a device profile node "
            "evaluates them on what the edge pushes)\n")
    done = check(tmp_path, str(real))
    assert (done.returncode, done.stdout) == (
        0, "'Edge Root Rule Chain' (EDGE): 9 nodes, 10 connections; node types: "
           "TbDeviceProfileNode, TbLogNode x2, TbMsgAttributesNode, TbMsgPushToCloudNode x2, "
           "TbMsgTimeseriesNode, TbMsgTypeSwitchNode, TbSendRPCRequestNode\n"
           + digest_line(real) + note)
    out = json.loads(check(tmp_path, str(real), "--json").stdout)
    assert (out["ok"], out["nodes"], out["notes"]) == (True, 9, [note[len("note: "):-1]])


def test_a_script_holding_a_nul_character_is_one_problem_not_a_traceback(
        tmp_path: Path) -> None:
    chain = {"ruleChain": {"name": "nul", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": "org.thingsboard.rule.engine.action.TbLogNode", "name": "Log",
             "configuration": {"scriptLang": "TBEL", "tbelScript": "return 'a\u0000b';"}}]}}
    path = tmp_path / "nul.json"
    path.write_text(json.dumps(chain))
    done = check(tmp_path, str(path))
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "metadata.nodes[0].configuration.tbelScript: nodes[0] 'Log': the TBEL script is "
           "refused: ScriptSyntaxError: the script holds a NUL character (U+0000; line 1), "
           "which the engine cannot compile: write it as an escape (\\u0000)\n", "")


def test_a_script_the_sandbox_refuses_exits_1_naming_node_and_reason(tmp_path: Path) -> None:
    """Every script is compiled by the sandbox that runs it: one it refuses (TBEL outside the
    subset, a JS syntax error) once passed the check and then failed every message."""
    done = check(tmp_path, str(FIXTURES / "script_refused.json"))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "metadata.nodes[1].configuration.tbelScript: nodes[1] 'Sum': the TBEL script is "
        "refused: ScriptSyntaxError: TBEL: import is not in the supported subset "
        "(line 2: 'import'); see docs/rules-scripts.md",
        "metadata.nodes[2].configuration.jsScript: nodes[2] 'Hot?': the JS script is refused: "
        "ScriptSyntaxError: SyntaxError: unexpected token in expression: ';' at script:1:25",
        "metadata.nodes[3].configuration.alarmDetailsBuildTbel: nodes[3] 'Raise': the TBEL "
        "script is refused: ScriptSyntaxError: TBEL: the method stream() is not in the "
        "supported subset (line 1: '.stream('); see docs/rules-scripts.md",
    ]
    defaults = check(tmp_path, str(FIXTURES / "thingsboard_defaults.json"))
    assert (defaults.returncode, defaults.stdout) == (0, (
        "'ThingsBoard defaults' (EDGE): 9 nodes, 13 connections; node types: "
        "TbClearAlarmNode, TbCreateAlarmNode, TbJsFilterNode, TbJsSwitchNode, TbLogNode, "
        "TbMsgPushToCloudNode, TbMsgTimeseriesNode, TbMsgTypeSwitchNode, TbTransformMsgNode\n"
        + digest_line(FIXTURES / "thingsboard_defaults.json")))


def test_a_dynamic_severity_no_message_can_make_a_severity_is_refused(tmp_path: Path) -> None:
    """A create alarm node with dynamicSeverity and a severity without a ${key} or $[path]
    pattern that is no severity once passed the check and then failed every message it got
    (ThingsBoard's TbCreateAlarmNode.processAlarmSeverity fails each one). The check refuses
    it, naming the node's field; the same node with a pattern passes."""
    doc = json.loads((FIXTURES / "alarm_threshold.json").read_text())
    raise_node = doc["metadata"]["nodes"][1]
    assert raise_node["type"].endswith("TbCreateAlarmNode")
    path = tmp_path / "dynamic_severity.json"
    outputs = []
    for severity in ("HIGH", "${level}"):
        raise_node["configuration"].update(dynamicSeverity=True, severity=severity)
        path.write_text(json.dumps(doc))
        done = check(tmp_path, str(path))
        outputs.append((done.returncode, done.stdout))
    patterned = digest_line(path)
    assert outputs == [
        (1, "metadata.nodes[1].configuration.severity: got 'HIGH', with dynamicSeverity but no "
            "${key} or $[path] pattern: every message would fail; expected one of CRITICAL, "
            "MAJOR, MINOR, WARNING, INDETERMINATE, or a pattern\n"),
        (0, "'High temperature alarm' (EDGE): 4 nodes, 5 connections; node types: "
            "TbClearAlarmNode, TbCreateAlarmNode, TbJsFilterNode, TbMsgPushToCloudNode\n"
            + patterned)]


def test_an_alarm_type_or_severity_the_alarm_nodes_cannot_run_is_reported(
        tmp_path: Path) -> None:
    """A fixed severity that is none of ThingsBoard's, an alarm type that is not text: each
    reported with its node's field, every one at once."""
    doc = json.loads((FIXTURES / "alarm_threshold.json").read_text())
    raise_node, clear_node = doc["metadata"]["nodes"][1:3]
    raise_node["configuration"].update(alarmType=5, severity="HIGH")
    clear_node["configuration"].update(alarmType=["High Temperature"])
    path = tmp_path / "bad_alarms.json"
    path.write_text(json.dumps(doc))
    done = check(tmp_path, str(path))
    assert (done.returncode, done.stdout.splitlines()) == (1, [
        'metadata.nodes[1].configuration.alarmType: expected text (the type of the alarm, e.g. '
        '"High Temperature"), got 5',
        "metadata.nodes[1].configuration.severity: got 'HIGH': expected one of CRITICAL, MAJOR, "
        "MINOR, WARNING, INDETERMINATE (or dynamicSeverity with a ${key} pattern)",
        'metadata.nodes[2].configuration.alarmType: expected text (the type of the alarm, e.g. '
        "\"High Temperature\"), got ['High Temperature']"])
