"""`edge-cloud entity / assign / unassign / relation` as an operator runs them (subprocesses):
with the server stopped they write the store directly and the edge gets what they queued when it
connects; with it running they go through its admin API and the connected edge gets each change
at once. Exit codes and one-line errors as the other commands: 1 refused, 2 usage, 6 conflict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_sync.cloud import CloudServer
from edge_sync.config import AdminConfig, CloudConfig, CloudStorageConfig, EdgesRpcConfig
from edge_sync.proto import edge_pb2
from tests.helpers.link_client import DEADLINE_S, LinkClient
from tests.helpers.ports import free_ports
from tests.helpers.wake_only import wake_only

CLI = [sys.executable, "-m", "edge_sync.cli.cloud"]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"


def env_for(data_dir: Path, admin_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_", "EDGES_"))}
    env.update(CLOUD_DATA_DIR=str(data_dir), CLOUD_ADMIN_PORT=str(admin_port),
               CLOUD_ADMIN_HOST="127.0.0.1", EDGES_RPC_HOST="127.0.0.1",
               EDGES_RPC_PORT=str(free_ports()[0]))
    return env


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60,
                          input=stdin)


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    proc = run(env, *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def out_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(ok(env, *args, "--output", "json"))


def lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def refused(env: dict[str, str], code: int, *args: str) -> str:
    """Run a command that must fail with ``code`` and one line on stderr; that line."""
    proc = run(env, *args)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def rows(env: dict[str, str], *args: str) -> list[tuple[str, str, list[str]]]:
    return [(r["entity_type"], r["name"], r["edges"])
            for r in lines(ok(env, "entity", "list", "--json", *args))]


def received(edge: LinkClient) -> edge_pb2.DownlinkMsg:
    d = edge.downlink(timeout=DEADLINE_S)
    edge.ack(d.downlinkMsgId)
    return d


def kinds(d: edge_pb2.DownlinkMsg) -> list[str]:
    return sorted(f.name for f, v in d.ListFields() if f.name.endswith("Msg")
                  and not isinstance(v, int | str))


@pytest.mark.slow
def test_every_command_with_the_server_stopped_then_what_it_queued_reaches_the_edge(tmp_path):
    data = tmp_path / "cloud"
    env = env_for(data, free_ports()[0])  # nothing answers on the admin port: the store directly
    ok(env, "edge", "create", "--name", "e1", "--routing-key", "rk-1", "--secret", "s-1")

    made = out_json(env, "entity", "create", "--type", "asset", "--name", "Pump house")
    assert (made["entity_type"], made["name"], made["edges"]) == ("ASSET", "Pump house", [])
    text = ok(env, "entity", "create", "--type", "CUSTOMER", "--json", "-",
              stdin=json.dumps({"title": "ACME", "city": "Delft"}))
    assert text.startswith("created CUSTOMER 'ACME'\nid:    ")
    assert refused(env, 6, "entity", "create", "--type", "asset", "--name", "Pump house") == \
        f"error: a asset named 'Pump house' already exists ({made['id']})"

    out = ok(env, "entity", "import", fixture("boiler_alarms_rule_chain.json"), "--assign", "rk-1")
    chain_id = out.split()[0]
    assert out.splitlines()[-1] == ("imported 1 entities from boiler_alarms_rule_chain.json, "
                                    "assigned to edge rk-1")
    out = ok(env, "entity", "import", fixture("thermostat_device_profile.json"))
    assert "note: thermostat_device_profile.json: defaultRuleChainId 7a3c1e50-4b5a-11f0-9234-" \
           "010000abcdef cleared: the cloud has no such RULE_CHAIN" in out.splitlines()
    dash = out_json(env, "entity", "import", fixture("boiler_room_dashboard.json"))
    [dash_row] = dash["entities"]
    assert refused(env, 1, "entity", "import", fixture("bad_rule_chain_no_metadata.json")) == \
        ("error: bad_rule_chain_no_metadata.json: metadata: missing (the rule chain's nodes and "
         "connections)")
    assert refused(env, 1, "entity", "import", str(tmp_path / "none.json")).startswith(
        "error: " + str(tmp_path / "none.json") + ": cannot read: ")

    assert rows(env, "--type", "ASSET") == [("ASSET", "Pump house", [])]
    assert rows(env, "--name", "Boiler alarms") == [("RULE_CHAIN", "Boiler alarms", ["rk-1"])]
    assert ("DEVICE_PROFILE", "thermostat", ["rk-1"]) in rows(env, "--edge", "rk-1")
    shown = json.loads(ok(env, "entity", "show", "Boiler alarms", "--json"))
    assert shown["id"] == chain_id and len(shown["metadata"]["nodes"]) == 4
    text = ok(env, "entity", "show", dash_row["id"])
    assert text.startswith("DASHBOARD 'Boiler room'\nid:    " + dash_row["id"] + "\nedges: none\n")

    out = ok(env, "assign", "--edge", "rk-1", "Pump house", dash_row["id"])
    assert out.splitlines() == [
        f"ASSET 'Pump house' ({made['id']}) assigned to edge rk-1",
        f"DASHBOARD 'Boiler room' ({dash_row['id']}) assigned to edge rk-1"]
    proc = run(env, "assign", "--edge", "rk-1", "nobody", "Pump house")
    assert proc.returncode == 1 and proc.stderr == "error: nobody: no entity 'nobody'\n"
    assert proc.stdout == f"ASSET 'Pump house' ({made['id']}) already on edge rk-1\n"

    rel = out_json(env, "relation", "add", "--from", "Pump house", "--to", "Boiler room",
                   "--type", "Contains")
    assert rel == {"from": {"entityType": "ASSET", "id": made["id"]},
                   "to": {"entityType": "DASHBOARD", "id": dash_row["id"]}, "type": "Contains",
                   "typeGroup": "COMMON", "additionalInfo": None}
    assert lines(ok(env, "relation", "list", "Pump house", "--json")) == [rel]
    assert ok(env, "relation", "list", dash_row["id"]) == (
        f"ASSET {made['id']} -Contains (COMMON)-> DASHBOARD {dash_row['id']}\n")

    body = json.loads(ok(env, "entity", "show", "Pump house", "--json"))["entity"]
    (tmp_path / "asset.json").write_text(json.dumps({**body, "label": "renovated"}))
    updated = out_json(env, "entity", "update", "Pump house", "--json", str(tmp_path / "asset.json"))
    assert updated["entity"] == {**body, "label": "renovated"}

    text = ok(env, "unassign", "--edge", "rk-1", dash_row["id"])
    assert text == f"DASHBOARD 'Boiler room' ({dash_row['id']}) unassigned from edge rk-1\n"
    assert ok(env, "relation", "delete", "--from", "Pump house", "--to", "Boiler room",
              "--type", "Contains") == (f"relation deleted: ASSET {made['id']} -Contains "
                                         f"(COMMON)-> DASHBOARD {dash_row['id']}\n")
    assert refused(env, 1, "relation", "delete", "--from", "Pump house", "--to", "Boiler room",
                   "--type", "Contains").startswith("error: no relation ASSET ")
    gone = out_json(env, "entity", "delete", "ACME")
    assert gone["deleted"][0]["entity_type"] == "CUSTOMER"
    assert refused(env, 1, "entity", "show", "ACME") == "error: no entity 'ACME'"
    assert refused(env, 6, "entity", "delete", "Tenant") == "error: the tenant cannot be deleted"
    assert run(env, "entity", "create", "--name", "x").returncode == 2  # usage: --type missing

    # the server starts; the edge connects and gets, in order, what the commands queued for it
    server = CloudServer(CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0), storage=CloudStorageConfig(data_dir=data),
        admin=AdminConfig(host="127.0.0.1", port=0))).start()
    edge = LinkClient(server.port)
    try:
        assert edge.connect("rk-1", "s-1").responseCode == edge_pb2.ACCEPTED
        edge.sync(False)
        got = [kinds(received(edge)) for _ in range(8)]
        assert got == [
            ["ruleChainUpdateMsg"], ["ruleChainMetadataUpdateMsg"], ["deviceProfileUpdateMsg"],
            ["assetProfileUpdateMsg", "assetUpdateMsg"], ["dashboardUpdateMsg"],
            ["relationUpdateMsg"], ["assetUpdateMsg"], ["dashboardUpdateMsg"]]
        assert edge.nothing_within(0.5)  # the relation's deletion: the edge no longer held both
    finally:
        edge.close()
        server.stop()


@pytest.mark.slow
def test_with_the_server_running_each_change_reaches_the_connected_edge_at_once(tmp_path):
    data = tmp_path / "cloud"
    cfg = CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0), storage=CloudStorageConfig(data_dir=data),
        admin=AdminConfig(host="127.0.0.1", port=0))
    # the stream never looks at its queue on its own: a downlink comes only if the command woke it
    server = CloudServer(cfg, link=wake_only(cfg)).start()
    server.service.create_edge("e1", routing_key="rk-1", secret="s-1")
    env = env_for(data, server.admin_port)
    edge = LinkClient(server.port)
    try:
        assert edge.connect("rk-1", "s-1").responseCode == edge_pb2.ACCEPTED
        edge.sync(False)
        imported = out_json(env, "entity", "import", fixture("boiler_alarms_rule_chain.json"),
                            "--assign", "rk-1")
        chain_id = imported["entities"][0]["id"]
        first, second = received(edge), received(edge)
        assert (kinds(first), kinds(second)) == (["ruleChainUpdateMsg"],
                                                 ["ruleChainMetadataUpdateMsg"])
        assert json.loads(first.ruleChainUpdateMsg[0].entity)["name"] == "Boiler alarms"

        asset = out_json(env, "entity", "create", "--type", "ASSET", "--name", "tank")
        assert edge.nothing_within(0.3)
        ok(env, "assign", "--edge", "rk-1", asset["id"])
        assert kinds(received(edge)) == ["assetProfileUpdateMsg", "assetUpdateMsg"]
        device, _ = server.service.create_device("rk-1", "level-1", token="tok-1")
        received(edge)
        ok(env, "relation", "add", "--from", "tank", "--to", str(device.id), "--type", "Contains")
        d = received(edge)
        assert json.loads(d.relationUpdateMsg[0].entity)["to"] == {"entityType": "DEVICE",
                                                                   "id": str(device.id)}

        # a new version of the chain: chain and metadata replaced from a rule chain export
        export = json.loads((FIXTURES / "boiler_alarms_rule_chain.json").read_text())
        export["metadata"]["nodes"][0]["configuration"]["tbelScript"] = "return msg.t > 95;"
        (tmp_path / "v2.json").write_text(json.dumps(export))
        out = ok(env, "entity", "update", chain_id, "--json", str(tmp_path / "v2.json"))
        assert out.startswith(f"updated RULE_CHAIN 'Boiler alarms'\nid:    {chain_id}\n")
        d = received(edge)
        assert kinds(d) == ["ruleChainUpdateMsg"]
        assert d.ruleChainUpdateMsg[0].msgType == edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
        d = received(edge)
        meta = json.loads(d.ruleChainMetadataUpdateMsg[0].entity)
        assert meta["nodes"][0]["configuration"]["tbelScript"] == "return msg.t > 95;"

        assert refused(env, 6, "entity", "create", "--type", "ASSET", "--name", "tank") == \
            f"error: refused (409): a asset named 'tank' already exists ({asset['id']})"
        assert refused(env, 1, "entity", "update", str(uuid.uuid4()), "--json",
                       str(tmp_path / "v2.json")).startswith("error: refused (404): no entity")
        assert refused(env, 1, "assign", "--edge", "rk-9", "tank") == \
            "error: tank: refused (404): no edge with routing key 'rk-9'"
        assert edge.nothing_within(0.3)

        ok(env, "unassign", "--edge", "rk-1", "tank")
        d = received(edge)
        assert d.assetUpdateMsg[0].msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE
        out = ok(env, "entity", "delete", chain_id)
        assert out == f"deleted RULE_CHAIN 'Boiler alarms' ({chain_id})\n  and " \
                      f"RULE_CHAIN_METADATA {chain_id}\n"
        d = received(edge)
        assert d.ruleChainUpdateMsg[0].msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE
        assert rows(env, "--edge", "rk-1", "--type", "RULE_CHAIN") == [
            ("RULE_CHAIN", "Edge Root Rule Chain", ["rk-1"])]
    finally:
        edge.close()
        server.stop()
