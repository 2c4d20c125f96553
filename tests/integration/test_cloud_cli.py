"""`edge-cloud` as a user runs it (subprocesses): edge create / list, device create, attr set and
events with the server stopped (direct LMDB) and running (admin API), serve's exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_sync.cloud import CloudServer
from edge_sync.config import AdminConfig, CloudConfig, CloudStorageConfig, EdgesRpcConfig
from edge_sync.proto import edge_pb2
from tests.helpers.link_client import DEADLINE_S, LinkClient, telemetry
from tests.helpers.ports import free_ports
from tests.helpers.wait import wait_until
from tests.helpers.wake_only import wake_only

CLI = [sys.executable, "-m", "edge_sync.cli.cloud"]


def env_for(data_dir: Path, admin_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLOUD_", "EDGES_"))}
    env.update(CLOUD_DATA_DIR=str(data_dir), CLOUD_ADMIN_PORT=str(admin_port),
               CLOUD_ADMIN_HOST="127.0.0.1", EDGES_RPC_HOST="127.0.0.1",
               EDGES_RPC_PORT=str(free_ports()[0]))
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def ok(env: dict[str, str], *args: str) -> str:
    proc = run(env, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_with_the_server_stopped_then_running_then_stopped(tmp_path):
    data = tmp_path / "cloud"
    env = env_for(data, free_ports()[0])  # nothing listens on the admin port: direct LMDB
    made = json.loads(ok(env, "edge", "create", "--name", "e1", "--json"))
    assert made["routing_key"] and made["secret"] and made["created"] is True
    out = ok(env, "edge", "create", "--name", "e2", "--routing-key", "rk-2", "--secret", "sec-2")
    assert "rk-2" in out and "sec-2" in out
    assert "already registered" in ok(env, "edge", "create", "--name", "e2", "--routing-key", "rk-2",
                                      "--secret", "sec-2")
    refused = run(env, "edge", "create", "--name", "e2", "--routing-key", "rk-2", "--secret", "x")
    assert refused.returncode == 6 and "already exists" in refused.stderr
    assert sorted(e["name"] for e in json_lines(ok(env, "edge", "list", "--json"))) == ["e1", "e2"]
    dev = json.loads(ok(env, "device", "create", "--edge", "rk-2", "--name", "d1", "--token", "t-1",
                        "--json"))
    assert dev["token"] == "t-1" and dev["downlinks"] == [1]
    ok(env, "attr", "set", "--device", "d1", "target=42", 'mode="auto"', "note=plain text")
    assert run(env, "attr", "set", "--device", "nope", "a=1").returncode == 1

    cfg = CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0), storage=CloudStorageConfig(data_dir=data),
        admin=AdminConfig(host="127.0.0.1", port=0))
    # the stream never looks at its queue on its own: a downlink comes only if a call woke it
    server = CloudServer(cfg, link=wake_only(cfg)).start()
    client = LinkClient(server.port)
    try:
        assert client.connect("rk-2", "sec-2").responseCode == edge_pb2.ACCEPTED
        client.sync(False)
        queued = []
        for _ in range(2):  # what the CLI queued while the server was stopped
            d = client.downlink()
            queued.append(d)
            client.ack(d.downlinkMsgId)
        assert queued[0].deviceUpdateMsg and queued[0].deviceCredentialsUpdateMsg
        attrs = {kv.key: kv for kv in queued[1].entityData[0].attributesUpdatedMsg.kv}
        assert attrs["target"].long_v == 42 and attrs["mode"].string_v == "auto"
        assert attrs["note"].string_v == "plain text"
        dev_id = uuid.uuid4()
        for s in (1, 2, 3):
            assert client.uplink(entityData=[telemetry(dev_id, s)]).success

        live = env_for(data, server.admin_port)
        events = json_lines(ok(live, "events", "--edge", "rk-2", "--json"))  # read-only, server up
        assert [e["seq"] for e in events] == [1, 2, 3]
        assert set(events[0]) == {"apply_index", "seq", "entity_type", "entity_id", "action", "body",
                                  "ts", "applied_at", "store_id"}
        assert {e["store_id"] for e in events} == {None}  # connected without edgeStoreId
        made_live = json.loads(ok(live, "device", "create", "--edge", "rk-2", "--name", "d2", "--json"))
        d = client.downlink(timeout=DEADLINE_S)  # the admin call woke the stream: no poll here
        assert json.loads(d.deviceUpdateMsg[0].entity)["id"]["id"] == made_live["id"]
        client.ack(d.downlinkMsgId)
        status = json.loads(ok(live, "status", "--json"))
        assert status["server"] == "running"
        assert {e["routing_key"]: e["connected"] for e in status["edges"]}["rk-2"] is True
    finally:
        client.close()
        server.stop()

    text = ok(env, "events", "--edge", "rk-2")
    assert len(text.splitlines()) == 3 and "TIMESERIES_UPDATED" in text and "store=-" in text
    assert [e["seq"] for e in json_lines(ok(env, "events", "--edge", "rk-2", "--after", "1",
                                            "--limit", "1", "--json"))] == [2]
    assert run(env, "events", "--edge", "unknown").returncode == 1
    assert "d2" in ok(env, "device", "list", "--edge", "rk-2")


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    admin = free_ports()[0]
    env = env_for(tmp_path / "cloud", admin, CLOUD_LOG_FORMAT="json")
    proc = subprocess.Popen([*CLI, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def serving() -> bool:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/status", timeout=1) as r:
                    assert json.loads(r.read())["server"] == "running"
                    return True
            except OSError:
                return False

        wait_until(serving, timeout=20, what="edge-cloud serve to answer on its admin port")
        secret_out = json.loads(ok(env, "edge", "create", "--name", "e", "--secret", "top-secret-1",
                                   "--json"))
        assert secret_out["created"] is True
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = json_lines(err)
    assert any(line["message"] == "cloud stopped" for line in lines)
    assert "top-secret-1" not in err


@pytest.mark.parametrize("extra,setup,code", [
    ({"EDGES_RPC_PORT": "abc"}, None, 1),
    ({}, "file", 4),
])
def test_serve_exit_codes(tmp_path, extra, setup, code):
    data = tmp_path / "cloud"
    if setup == "file":
        data.write_text("not a folder")
    proc = subprocess.run([*CLI, "serve"], env=env_for(data, free_ports()[0], **extra),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert "error:" in proc.stderr


def test_read_commands_on_a_missing_store_exit_4(tmp_path):
    env = env_for(tmp_path / "nothing", free_ports()[0])
    proc = run(env, "events", "--edge", "x")
    assert proc.returncode == 4 and "no edge-cloud store" in proc.stderr
