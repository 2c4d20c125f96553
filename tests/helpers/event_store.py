"""Build an edge store holding many events fast, straight through EventLog in large
transactions (no agent running): the Cloud Events page's tests and ``scripts/bench
events-page`` open it with a real ``edge-sync run``.

The layout (every figure exact, so tests can assert seqs):
- seqs 1..n; event seq belongs to device ``(seq - 1) % devices`` (named ``press-01``..);
  every tenth seq (10, 20, ...) is ATTRIBUTES_UPDATED, the rest TIMESERIES_UPDATED;
- created time ``T0 + ((seq - 1) // 1000) * 1000`` ms: one commit of 1,000 events a second;
- the last ``pending`` seqs stay PENDING, ``dead`` seqs are DEAD with error DEAD_ERROR, the
  rest DEPLOYED.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import NIL_UUID, Device, Lane, NewEvent

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DEAD_ERROR = "rejected by the cloud: telemetry value out of range"
PER_COMMIT = 1000
CHUNK = 100_000  # events per write transaction


def device_id(index: int) -> uuid.UUID:
    return uuid.UUID(int=0xD000_0000 + index)


def device_name(index: int) -> str:
    return f"press-{index + 1:02d}"


def device_of(seq: int, devices: int) -> int:
    return (seq - 1) % devices


def action_of(seq: int) -> str:
    return "ATTRIBUTES_UPDATED" if seq % 10 == 0 else "TIMESERIES_UPDATED"


def created_of(seq: int) -> int:
    return T0 + ((seq - 1) // PER_COMMIT) * 1000


def build(data_dir: Path, n: int, *, devices: int = 10, pending: int = 10,
          dead: Sequence[int] = (7, 8), max_size_mb: int = 10240) -> float:
    """Write the store at data_dir (made anew); returns the seconds it took."""
    started = time.monotonic()
    shutil.rmtree(data_dir, ignore_errors=True)
    store = LmdbStore(data_dir, initial_map_mb=256, max_size_mb=max_size_mb)
    try:
        log = EventLog(store)
        entities = EntityStore(store)

        def provision(txn: Any) -> None:
            for i in range(devices):
                entities.put_device(txn, Device(device_id(i), device_name(i), "default",
                                                f"token-{i + 1:02d}", T0))

        store.write(provision)
        ids = [device_id(i) for i in range(devices)]
        first_pending = n - pending + 1
        dead_set = set(dead)
        for start in range(1, n + 1, CHUNK):
            stop = min(n + 1, start + CHUNK)

            def chunk(txn: Any, start: int = start, stop: int = stop) -> None:
                for group in range(start, stop, PER_COMMIT):
                    end = min(stop, group + PER_COMMIT)
                    events = [NewEvent("DEVICE", "DEVICE", ids[device_of(seq, devices)],
                                       action_of(seq), {"ts": created_of(seq), "values": {"v": seq}},
                                       created_of(seq), Lane.NORMAL)
                              for seq in range(group, end)]
                    log.append(txn, events, first_seq=group, created_time=created_of(group),
                               tenant_id=NIL_UUID.bytes, edge_id=NIL_UUID.bytes)
                for seq in dead_set:
                    if start <= seq < stop:
                        log.dead_letter(txn, seq, DEAD_ERROR, now_ms=created_of(seq))
                log.mark_deployed(txn, [s for s in range(start, min(stop, first_pending))
                                        if s not in dead_set], now_ms=created_of(stop - 1))

            store.write(chunk)
    finally:
        store.close()
    return time.monotonic() - started
