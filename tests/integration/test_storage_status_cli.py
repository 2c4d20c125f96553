"""`edge-sync status` (a real subprocess, the agent stopped: it reads the store) shows what the
store's live data is made of: pending events, delivered events kept (reclaimable), local
timeseries with their point count, latest values and the rest, and what is not reclaimable
with its health level; ``--json`` gives the exact bytes (storage/usage.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import lmdb

from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore, MiB
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Lane, NewEvent
from edge_sync.storage.rule_store import RuleStore
from edge_sync.storage.usage import storage_usage
from tests.helpers.ports import free_ports

DEVICE = uuid.UUID(int=0xD2)
NOW = 1_767_225_600_000
PAD = "q" * 300


def make_store(path: Path) -> None:
    store = LmdbStore(path, initial_map_mb=8, max_size_mb=4)
    try:
        log = EventLog(store)

        def write(txn: lmdb.Transaction) -> None:
            events = [NewEvent("DEVICE", "DEVICE", DEVICE, Action.TIMESERIES_UPDATED,
                               {"ts": i, "values": {"v": i, "pad": PAD}}, i, Lane.NORMAL)
                      for i in range(2000)]
            log.append(txn, events, first_seq=1, created_time=NOW, tenant_id=bytes(16),
                       edge_id=bytes(16))
            log.mark_deployed(txn, range(1, 1501), now_ms=NOW)
            RuleStore(store).put_local(txn, DEVICE, [(NOW + i, (("t", i),)) for i in range(300)],
                                       expires_at_ms=NOW + 1000)
            EntityStore(store).put_latest(txn, DEVICE, {"t": (NOW, 1)})
        store.write(write)
    finally:
        store.close()


def status(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLOUD_"))}
    env.update(EDGE_DATA_DIR=str(data_dir), EDGE_ADMIN_HOST="127.0.0.1",
               EDGE_ADMIN_PORT=str(free_ports(1)[0]), EDGE_STORAGE_MAX_MB="4",
               EDGE_STORAGE_MAP_SIZE_INITIAL_MB="1")
    return subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "status", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_status_shows_the_parts_of_the_store(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    make_store(data)
    store = LmdbStore(data, readonly=True, max_size_mb=4)
    try:
        with store.read() as txn:
            u = storage_usage(store, txn)
    finally:
        store.close()
    assert u.local_points == 300 and u.pending > 0 and u.delivered > u.pending

    done = status(data, "--json")
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)
    storage, health = st["storage"], st["health_detail"]["storage"]
    assert storage["parts_bytes"] == u.parts()
    assert storage["used_bytes"] == u.used == sum(u.parts().values())
    assert (storage["local_points"], storage["reclaimable_mb"], storage["unreclaimable_mb"]) == (
        300, round(u.delivered / MiB, 2), round(u.unreclaimable / MiB, 2))
    assert health["value_pct"] == round(100 * u.used / (4 * MiB) - 100 * u.delivered / (4 * MiB), 1)
    assert health["used_pct"] == round(100 * u.used / (4 * MiB), 1)

    done = status(data)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("storage:"))

    def mib(n: int) -> str:
        return f"{n / MiB:.2f}"
    assert lines[at:at + 2] == [
        f"storage:      {round(u.used / MiB, 2)} MiB used of 4.0 MiB; "
        f"{round(u.unreclaimable / MiB, 2)} MiB not reclaimable ({health['value_pct']}% of the "
        f"cap, {health['level']})",
        f"  pending {mib(u.pending)}, delivered kept {mib(u.delivered)} (reclaimable), local "
        f"timeseries {mib(u.local_timeseries)} (300 points), latest {mib(u.latest)}, other "
        f"{mib(u.other)} MiB"]
