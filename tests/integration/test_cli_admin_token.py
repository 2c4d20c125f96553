"""The CLIs against a running agent or cloud whose admin API requires a token, run without it or
with the wrong one: the process runs and refused the token, so each command says so, names
the setting to set (never the token) and exits 1 (README's exit codes). `edge-sync status`
does not report the agent as "not running", and `edge-cloud` never writes the store behind the
running server (an edge, a device or attributes made there would bypass it). Real `edge-sync
run` and `edge-cloud serve` processes, the CLIs as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers.agent import Agent, read_log
from tests.helpers.cloud_proc import CloudProc
from tests.helpers.process import ServiceProcess
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

TOKEN = "cli-admin-token-5d1e0c7a9b"
WRONG = "not-the-token-42aa"
EDGE_CLI = [sys.executable, "-m", "edge_sync.cli.edge"]
CLOUD_CLI = [sys.executable, "-m", "edge_sync.cli.cloud"]


def serving(proc: ServiceProcess, port: int) -> None:
    """Spawn and wait until /healthz answers (the helpers' own waits poll /api/status, which
    the token guards)."""
    import urllib.request

    proc.spawn()

    def healthy() -> bool:
        if not proc.running:
            raise AssertionError(f"{proc.label} exited:\n{proc.stderr_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    wait_until(healthy, timeout=30, what=f"{proc.label}: /healthz answering 200")


def run(cli: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def without_token(proc: ServiceProcess, prefix: str) -> dict[str, str]:
    env = proc.environment()
    env.pop(f"{prefix}_ADMIN_TOKEN")
    return env


def assert_refused(done: subprocess.CompletedProcess[str], who: str, port: int, env_var: str,
                   *, configured: bool, prefix: str = "") -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    why = ("the admin token configured for this command is not the one it runs with"
           if configured else "no admin token is configured for this command")
    assert done.stderr == (
        f"error: {prefix}{who} at 127.0.0.1:{port} is running but refused the admin token (401): "
        f"{why}; set {env_var} (or admin.token in the file given with --config) to the "
        f"admin.token {who} runs with\n")
    assert done.stdout == ""
    assert TOKEN not in done.stderr and WRONG not in done.stderr


def test_edge_sync_commands_say_the_agent_refused_the_token(tmp_path: Any, procs: Any) -> None:
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_ADMIN_TOKEN": TOKEN}))
    serving(agent, agent.admin_port)
    port = agent.admin_port
    for env, configured in ((without_token(agent, "EDGE"), False),
                            (agent.environment({"EDGE_ADMIN_TOKEN": WRONG}), True)):
        for args in (["status"], ["status", "--json"],
                     ["status", "--watch", "--count", "1", "--interval", "0.1"]):
            assert_refused(run(EDGE_CLI, env, *args), "the agent", port, "EDGE_ADMIN_TOKEN",
                           configured=configured)
        assert_refused(run(EDGE_CLI, env, "replay", "--dead", "--all"), "the agent", port,
                       "EDGE_ADMIN_TOKEN", configured=configured,
                       prefix="dead letters not replayed: ")
        assert_refused(run(EDGE_CLI, env, "device", "create", "--name", "pump"), "the agent",
                       port, "EDGE_ADMIN_TOKEN", configured=configured,
                       prefix="device not created: ")
        assert_refused(run(EDGE_CLI, env, "sync"), "the agent", port, "EDGE_ADMIN_TOKEN",
                       configured=configured, prefix="sync not requested: ")
    assert [e for e in read_log(agent.data_dir) if e.type == "DEVICE"] == []

    # With the agent's token: its status, as before.
    done = run(EDGE_CLI, agent.environment(), "status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["agent"] == "running"


def test_edge_cloud_commands_say_the_cloud_refused_the_token_and_write_nothing(
        tmp_path: Any, procs: Any) -> None:
    cloud = procs(CloudProc(tmp_path / "cloud", env={"CLOUD_ADMIN_TOKEN": TOKEN}))
    serving(cloud, cloud.admin_port)
    port = cloud.admin_port
    cloud.create_edge("e1", "rk-1", "secret-rk-1")  # with the token: through the server
    device = cloud.create_device("rk-1", "d1", token="d1-token")
    before = cloud_state(cloud)
    assert [e["routing_key"] for e in before["edges"]] == ["rk-1"]

    for env, configured in ((without_token(cloud, "CLOUD"), False),
                            (cloud.environment({"CLOUD_ADMIN_TOKEN": WRONG}), True)):
        for args in (
            ["status"], ["status", "--json"], ["edge", "list"],
            ["edge", "create", "--name", "sneaky", "--routing-key", "rk-sneaky"],
            ["device", "create", "--edge", "rk-1", "--name", "d2"],
            ["attr", "set", "--device", "d1", "target=42"],
            ["edge", "sync", "--edge", "rk-1"],
            ["rpc", "--device", device["id"], "--method", "ping", "--oneway"],
            ["entity", "create", "--type", "ASSET", "--name", "a1"],
            ["assign", "--edge", "rk-1", device["id"]],
        ):
            assert_refused(run(CLOUD_CLI, env, *args), "the cloud", port, "CLOUD_ADMIN_TOKEN",
                           configured=configured)
    assert cloud_state(cloud) == before  # nothing written to the store behind the server

    done = run(CLOUD_CLI, cloud.environment(), "status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["server"] == "running"


def test_edge_cloud_refuses_to_write_behind_something_else_on_its_admin_port(
        tmp_path: Any, procs: Any) -> None:
    """What answers on the cloud's admin port is not a cloud (here: an edge agent's admin API):
    an error, not a write to the store."""
    agent = procs(Agent(tmp_path / "edge")).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_", "EDGES_"))}
    env.update(CLOUD_DATA_DIR=str(tmp_path / "cloud"), CLOUD_ADMIN_HOST="127.0.0.1",
               CLOUD_ADMIN_PORT=str(agent.admin_port))
    done = run(CLOUD_CLI, env, "edge", "create", "--name", "e1")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: 127.0.0.1:{agent.admin_port} answers GET /api/status "
                                  "with 200, not as a running edge-cloud (")
    assert not (tmp_path / "cloud").exists()


def cloud_state(cloud: CloudProc) -> dict[str, Any]:
    """Edges (with what is queued for them), devices of rk-1 and entities, read with the token."""
    def get(path: str) -> Any:
        return cloud_admin(cloud, path)

    return {"edges": get("/api/edges"), "devices": get("/api/devices?edge=rk-1"),
            "entities": get("/api/entities")}


def cloud_admin(cloud: CloudProc, path: str) -> Any:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{cloud.admin_port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
