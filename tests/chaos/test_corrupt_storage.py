"""Chaos: a corrupt or truncated storage file. Start-up and the read-only commands refuse it with
exit code 4 and a message that says what is wrong and what to do (no traceback), leave the file
as it was, and never start silently with an empty queue in place of the damaged one.

tests/integration/test_bad_input.py covers `edge-sync run` on a garbage, a header-truncated and a
mid-way truncated data.mdb. This file covers the rest: the edge's `status` / `events` commands on
those files, a data.mdb replaced by an empty (0 byte) file, a garbage lock.mdb (LMDB rebuilds its
lock file when no process uses it: the store starts and keeps everything), and the reference
cloud (`edge-cloud serve` and its operator commands) on a damaged store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_sync.cloud.store import CloudStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Lane, NewEvent
from tests.helpers.agent import Agent, NoAnswer, _once, read_log
from tests.helpers.cloud_proc import CloudProc
from tests.helpers.ports import free_ports
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

CLI_TIMEOUT_S = 60.0
SERVE_DEADLINE_S = 30.0
WHAT_TO_DO = "restore it from a backup or move it away"


# -- damaged stores -------------------------------------------------------------------------------


def edge_store(path: Path, events: int = 0) -> Path:
    """A real edge-sync store at path with `events` telemetry events (pending); its data.mdb."""
    store = LmdbStore(path)
    try:
        if events:
            log = EventLog(store)
            entity = uuid.uuid4()
            batch = [NewEvent("DEVICE", "DEVICE", entity, Action.TIMESERIES_UPDATED,
                              {"ts": i + 1, "values": {"v": i, "pad": "x" * 200}}, i + 1, Lane.NORMAL)
                     for i in range(events)]
            store.write(lambda txn: log.append(txn, batch, first_seq=log.next_seq(txn),
                                               created_time=1, tenant_id=bytes(16),
                                               edge_id=bytes(16)))
    finally:
        store.close()
    return path / "data.mdb"


def cloud_store(path: Path, devices: int = 0) -> Path:
    """A real edge-cloud store at path: edge rk-0 with `devices` devices; its data.mdb."""
    from edge_sync.cloud.service import CloudService

    store = CloudStore(path)
    try:
        service = CloudService(store)
        service.create_edge("edge-0", routing_key="rk-0", secret="secret-0-x")
        for i in range(devices):
            service.create_device("rk-0", f"device-{i}", label="l" * 200)
    finally:
        store.close()
    return path / "data.mdb"


def garbage(real: bytes) -> bytes:
    del real
    return os.urandom(64 * 1024)


def header_only(real: bytes) -> bytes:
    return real[:100]


def cut_mid_way(real: bytes) -> bytes:
    assert len(real) > 32 * 1024, len(real)
    return real[:16 * 1024]


Damage = Callable[[bytes], bytes]
DAMAGES: dict[str, tuple[Damage, str]] = {
    # name: (damage, what the message must say about the file)
    "garbage": (garbage, "is not a valid LMDB file"),
    "header-only": (header_only, "is truncated (100 bytes)"),
    "cut-mid-way": (cut_mid_way, "is truncated (16384 bytes, its pages need"),
}


def damaged_edge_store(tmp_path: Path, damage: Damage) -> tuple[Path, bytes]:
    """A data folder whose data.mdb is a real store (2000 events) damaged; (folder, bytes)."""
    real = edge_store(tmp_path / "real", events=2000).read_bytes()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    content = damage(real)
    (data_dir / "data.mdb").write_bytes(content)
    return data_dir, content


# -- running the commands ---------------------------------------------------------------------------


def edge_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`edge-sync ARGS` against data_dir, with the admin port pointing where nothing listens (so
    `status` reads the store directly, as with the agent stopped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_", "EDGES_"))}
    env.update({"EDGE_DATA_DIR": str(data_dir), "EDGE_ADMIN_HOST": "127.0.0.1",
                "EDGE_ADMIN_PORT": str(free_ports(1)[0])})
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", *args], env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False)


def assert_refused_clearly(code: int, err: str, data_file: Path, what: str) -> None:
    """Exit 4; the last stderr line names the file, what is wrong and what to do; no traceback."""
    assert code == 4, f"exit {code}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    assert f"{data_file} {what}" in last, last
    assert WHAT_TO_DO in last, last


# -- the edge's read-only commands ----------------------------------------------------------------


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["events"],
                                     ["events", "--json", "--status", "pending"]],
                         ids=["status", "status-json", "events", "events-json"])
@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_edge_read_commands_on_a_damaged_store_exit_4(tmp_path: Path, command: list[str],
                                                      damage: str) -> None:
    fn, what = DAMAGES[damage]
    data_dir, content = damaged_edge_store(tmp_path, fn)
    out = edge_cli(data_dir, *command)
    assert_refused_clearly(out.returncode, out.stderr, data_dir / "data.mdb", what)
    assert out.stdout == "", "nothing may be printed as if the store were readable"
    assert (data_dir / "data.mdb").read_bytes() == content, "the damaged file was changed"


# -- a data.mdb replaced by an empty file ---------------------------------------------------------


def empty_data_file(tmp_path: Path) -> Path:
    """A store that held events, whose data.mdb was then replaced by an empty file (the lock
    file and the writer lock of the old store are still there)."""
    data_dir = tmp_path / "data"
    edge_store(data_dir, events=50)
    (data_dir / "writer.lock").write_text("12345")
    (data_dir / "data.mdb").write_bytes(b"")
    return data_dir


def _says_empty(line: str, data_file: Path) -> bool:
    return str(data_file) in line and ("empty" in line or "(0 bytes)" in line)


def test_run_refuses_an_empty_data_file(tmp_path: Path) -> None:
    data_dir = empty_data_file(tmp_path)
    with Agent(tmp_path / "w", data_dir=data_dir) as agent:
        agent.spawn()
        code = agent.wait_ready_or_exit()
        err = agent.stderr_text()
        assert code == 4, "edge-sync run started on an empty data.mdb (a new, empty queue)"
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert _says_empty(last, data_dir / "data.mdb"), last
        assert WHAT_TO_DO in last, last
    assert (data_dir / "data.mdb").stat().st_size == 0, "the empty file was written to"


@pytest.mark.parametrize("command", [["status"], ["events"]], ids=["status", "events"])
def test_read_commands_on_an_empty_data_file_say_what_is_wrong(tmp_path: Path,
                                                               command: list[str]) -> None:
    data_dir = empty_data_file(tmp_path)
    out = edge_cli(data_dir, *command)
    assert out.returncode == 4, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert _says_empty(last, data_dir / "data.mdb"), last
    assert WHAT_TO_DO in last, last


def test_read_commands_on_an_empty_data_file_exit_4_without_output(tmp_path: Path) -> None:
    """Whatever the message, the exit code and silence on stdout already hold."""
    data_dir = empty_data_file(tmp_path)
    for command in (["status"], ["status", "--json"], ["events"], ["events", "--json"]):
        out = edge_cli(data_dir, *command)
        assert (out.returncode, out.stdout) == (4, ""), (command, out.stderr)
        assert "Traceback" not in out.stderr
        assert out.stderr.startswith("error: ") and str(data_dir) in out.stderr
    assert (data_dir / "data.mdb").stat().st_size == 0


# -- a garbage lock file ----------------------------------------------------------------------------


@pytest.mark.parametrize("lock", ["garbage", "empty"])
def test_damaged_lock_file_is_rebuilt_and_the_store_kept(tmp_path: Path, lock: str) -> None:
    """lock.mdb holds only LMDB's reader table; with no process using the store LMDB rebuilds
    it. So a garbage or empty lock file is no reason to refuse: every command works and the
    event log is exactly what it was."""
    agent = Agent(tmp_path / "w")
    with agent:
        agent.start()
        _device_id, token = agent.create_device("sensor")
        for v in range(20):
            assert agent.post_telemetry(token, {"v": v}) == 200
        assert agent.terminate() == 0
    before = read_log(agent.data_dir)
    assert len(before) == 22
    lock_file = agent.data_dir / "lock.mdb"
    lock_file.write_bytes(os.urandom(16 * 1024) if lock == "garbage" else b"")

    out = edge_cli(agent.data_dir, "events", "--json", "--limit", "1000")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 22
    lock_file.write_bytes(os.urandom(16 * 1024) if lock == "garbage" else b"")
    out = edge_cli(agent.data_dir, "status")
    assert out.returncode == 0, out.stderr
    assert "pending:      22 (high 2, normal 20)" in out.stdout

    lock_file.write_bytes(os.urandom(16 * 1024) if lock == "garbage" else b"")
    with agent:
        agent.start()
        assert agent.post_telemetry(token, {"v": 20}) == 200
        assert agent.terminate() == 0
    assert "Traceback" not in agent.stderr_text()
    after = read_log(agent.data_dir)
    assert after[:22] == before
    assert [e.body["values"]["v"] for e in after[2:]] == list(range(21))


# -- the reference cloud ----------------------------------------------------------------------------


def damaged_cloud(tmp_path: Path, damage: Damage) -> tuple[CloudProc, bytes]:
    cloud = CloudProc(tmp_path / "cloud")
    real = cloud_store(cloud.data_dir, devices=60).read_bytes()
    content = damage(real)
    (cloud.data_dir / "data.mdb").write_bytes(content)
    return cloud, content


def _cloud_serve_to_exit(cloud: CloudProc) -> tuple[int | None, str]:
    """Spawn `edge-cloud serve`; (exit code, stderr) when it exits, or (None, stderr) when its
    admin API answers instead (it was then killed)."""
    proc = cloud.spawn()

    def outcome() -> tuple[int | None] | None:
        code = proc.poll()
        if code is not None:
            return (code,)
        try:
            if _once(cloud.admin_port, "GET", "/api/status", timeout=2.0).status == 200:
                return (None,)
        except NoAnswer:
            pass
        return None

    try:
        (code,) = wait_until(outcome, timeout=SERVE_DEADLINE_S,
                             what="edge-cloud serve to exit or serve")
    finally:
        if proc.poll() is None:  # it served (or neither happened): stop it
            cloud.kill9()
    return code, cloud.stderr_text()


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_cloud_serve_on_a_damaged_store_exits_4(tmp_path: Path, damage: str) -> None:
    fn, what = DAMAGES[damage]
    cloud, content = damaged_cloud(tmp_path, fn)
    with cloud:
        code, err = _cloud_serve_to_exit(cloud)
    assert code is not None, f"edge-cloud serve started on a damaged store:\n{err[-2000:]}"
    data_file = cloud.data_dir / "data.mdb"
    assert_refused_clearly(code, err, data_file, what)
    assert "storage unusable: " in err.strip().splitlines()[-1]
    errors = [r for r in cloud.log_records() if r["level"] == "ERROR"]
    assert len(errors) == 1 and f"{data_file} {what}" in errors[0]["message"], errors
    assert data_file.read_bytes() == content, "the damaged file was changed"
    # The operator commands say the same (they open the store directly, the server being down).
    for args in (["events", "--edge", "rk-0"], ["status"], ["edge", "list"]):
        out = cloud.cli(*args, check=False)
        assert_refused_clearly(out.returncode, out.stderr, data_file, what)
        assert out.stdout == ""
    assert data_file.read_bytes() == content


def test_cloud_serve_refuses_an_empty_data_file(tmp_path: Path) -> None:
    cloud = CloudProc(tmp_path / "cloud")
    cloud_store(cloud.data_dir, devices=3)
    (cloud.data_dir / "data.mdb").write_bytes(b"")
    with cloud:
        code, err = _cloud_serve_to_exit(cloud)
    assert code == 4, "edge-cloud serve started on an empty data.mdb (a new, empty store)"
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert _says_empty(last, cloud.data_dir / "data.mdb"), last
    assert WHAT_TO_DO in last, last
