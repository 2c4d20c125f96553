"""Opening the LMDB store for real: map growth up to the cap then QueueFull (with nothing lost),
clear errors for truncated, garbage, foreign or unreachable stores, and read-only opens next to
a writer in the same process.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import lmdb
import pytest

from edge_sync.errors import QueueFull, StorageCorrupt, StorageError
from edge_sync.storage.env import LmdbStore, MiB
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import NIL_UUID, Lane, NewEvent

ENTITY = uuid.UUID(int=42)


def _events(first: int, n: int, *, pad: int = 1500) -> list[NewEvent]:
    return [NewEvent("DEVICE", "DEVICE", ENTITY, "TIMESERIES_UPDATED",
                     {"i": i, "pad": "p" * pad}, i, Lane.NORMAL) for i in range(first, first + n)]


def _append(store: LmdbStore, events: list[NewEvent]) -> range:
    log = EventLog(store)

    def fn(txn: Any) -> range:
        first = log.next_seq(txn)
        end = log.append(txn, events, first_seq=first, created_time=1,
                         tenant_id=NIL_UUID.bytes, edge_id=NIL_UUID.bytes)
        return range(first, end)

    return store.write(fn)


def _bodies(store: LmdbStore) -> list[int]:
    with store.read() as txn:
        return [e.body["i"] for e in EventLog(store).iter_events(txn)]


def test_map_grows_to_the_cap_then_queue_full_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = LmdbStore(path, initial_map_mb=1, max_size_mb=4)
    assert store.map_size() == 1 * MiB
    sizes = [store.map_size()]
    written = 0
    with pytest.raises(QueueFull, match=r"size cap of 4 MiB"):
        for _ in range(10_000):  # bounded: 4 MiB holds far fewer 1.5 KB events than this
            got = _append(store, _events(written, 10))
            assert got == range(written + 1, written + 11)
            written += 10
            sizes.append(store.map_size())
    # the map doubles, and may pass the 4 MiB cap only by the reserve kept for maintenance
    assert sorted(set(sizes))[:3] == [1 * MiB, 2 * MiB, 4 * MiB]
    assert max(sizes) <= store.hard_max == 8 * MiB
    assert sizes == sorted(sizes)  # it only grows
    assert written > 1000  # it really grew: 1 MiB alone holds about 600 of these
    # The refused transaction left nothing; everything before it is intact.
    with store.read() as txn:
        c = EventLog(store).counts(txn)
    assert (c.total, c.pending_normal, c.next_seq) == (written, written, written + 1)
    assert _bodies(store) == list(range(written))
    # Still full: a further append is refused the same way, reads keep working.
    with pytest.raises(QueueFull):
        _append(store, _events(written, 10))
    assert _bodies(store) == list(range(written))
    store.close()

    reopened = LmdbStore(path, initial_map_mb=1, max_size_mb=4)
    try:
        assert reopened.map_size() >= (path / "data.mdb").stat().st_size
        assert _bodies(reopened) == list(range(written))
        with reopened.read() as txn:
            assert EventLog(reopened).counts(txn) == c
        with pytest.raises(QueueFull):
            _append(reopened, _events(written, 10))
    finally:
        reopened.close()

    # A larger cap on the next start lets the same store take more.
    bigger = LmdbStore(path, initial_map_mb=1, max_size_mb=8)
    try:
        assert _append(bigger, _events(written, 10)) == range(written + 1, written + 11)
        assert _bodies(bigger) == list(range(written + 10))
    finally:
        bigger.close()


def test_truncated_data_file_is_reported_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"\x01" * 100)
    with pytest.raises(StorageCorrupt, match=r"truncated \(100 bytes\)") as info:
        LmdbStore(path)
    assert str(path / "data.mdb") in str(info.value)
    with pytest.raises(StorageCorrupt, match="truncated"):
        LmdbStore(path, readonly=True)
    assert (path / "data.mdb").read_bytes() == b"\x01" * 100  # left alone for the operator


def test_garbage_data_file_is_storage_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "store"
    path.mkdir()
    garbage = os.urandom(64 * 1024)
    (path / "data.mdb").write_bytes(garbage)
    with pytest.raises(StorageCorrupt, match="not a valid LMDB file"):
        LmdbStore(path)
    with pytest.raises(StorageCorrupt, match="not a valid LMDB file"):
        LmdbStore(path, readonly=True)
    assert (path / "data.mdb").read_bytes() == garbage


def test_foreign_lmdb_file_is_storage_corrupt_when_read_only(tmp_path: Path) -> None:
    path = tmp_path / "store"
    env = lmdb.open(str(path), map_size=MiB)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    with pytest.raises(StorageCorrupt, match="no edge-sync databases"):
        LmdbStore(path, readonly=True)


def test_store_of_another_format_is_storage_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = LmdbStore(path, initial_map_mb=1)
    store.write(lambda txn: txn.put(b"format", b"edge-sync/99", db=store.dbs["meta"]))
    store.close()
    with pytest.raises(StorageCorrupt, match="edge-sync/99"):
        LmdbStore(path, initial_map_mb=1)
    with pytest.raises(StorageCorrupt, match="edge-sync/99"):
        LmdbStore(path, readonly=True)


def test_path_under_a_regular_file_is_storage_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" / "sub"
    with pytest.raises(StorageError) as info:
        LmdbStore(path)
    assert type(info.value) is StorageError
    assert str(path) in str(info.value)
    assert "cannot be created" in str(info.value)


def test_read_only_open_of_a_missing_store_is_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "nothing"
    with pytest.raises(StorageError, match="no edge-sync store") as info:
        LmdbStore(path, readonly=True)
    assert type(info.value) is StorageError
    assert str(path) in str(info.value)
    assert not path.exists()  # a read-only open creates nothing
    path.mkdir()
    with pytest.raises(StorageError, match="no edge-sync store"):
        LmdbStore(path, readonly=True)
    assert list(path.iterdir()) == []


def test_second_open_in_the_same_process_is_a_clear_storage_error(tmp_path: Path) -> None:
    """py-lmdb (3.x) refuses a second environment on the same files in one process, because
    LMDB's fcntl locks are per process. Read-only views of a running agent therefore use the
    agent's own LmdbStore or another process (next test); the refusal must be a StorageError and
    must leave the writer working."""
    path = tmp_path / "store"
    writer = LmdbStore(path, initial_map_mb=1, max_size_mb=16)
    try:
        assert _append(writer, _events(0, 3, pad=10)) == range(1, 4)
        with pytest.raises(StorageError, match="already open in this process"):
            LmdbStore(path, readonly=True)
        assert _append(writer, _events(3, 2, pad=10)) == range(4, 6)
        assert _bodies(writer) == [0, 1, 2, 3, 4]
    finally:
        writer.close()


_READER = r"""
import json, sys
from pathlib import Path
from edge_sync.errors import StorageError
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog

store = LmdbStore(Path(sys.argv[1]), readonly=True)
log = EventLog(store)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    if line.strip() == "write":
        try:
            store.write(lambda txn: None)
            out = {"write": "allowed"}
        except StorageError as exc:
            out = {"write": str(exc)}
    else:
        with store.read() as txn:
            out = {"bodies": [e.body["i"] for e in log.iter_events(txn)],
                   "total": log.counts(txn).total}
    print(json.dumps(out), flush=True)
store.close()
"""


class _ReaderProcess:
    """A read-only LmdbStore in another process, answering one JSON line per request line."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _READER, str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert self._line() == {"ready": True}

    def _line(self, deadline: float = 20.0) -> Any:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline)
        if not ready:
            raise AssertionError(f"reader process silent for {deadline}s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"reader process exited: {err}")
        return json.loads(line)

    def ask(self, request: str = "read") -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self, *, kill: bool = False) -> int:
        """End the process (EOF on stdin, or kill) and return its exit code."""
        if kill:
            self.proc.kill()
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=20)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()


def test_read_only_open_next_to_a_writer_sees_committed_data(tmp_path: Path) -> None:
    path = tmp_path / "store"
    writer = LmdbStore(path, initial_map_mb=1, max_size_mb=16)
    reader: _ReaderProcess | None = None
    try:
        assert _append(writer, _events(0, 5, pad=10)) == range(1, 6)
        reader = _ReaderProcess(path)
        assert reader.ask() == {"bodies": [0, 1, 2, 3, 4], "total": 5}
        assert reader.ask("write") == {"write": "store opened read-only"}
        # Data committed after the reader opened is visible to its next read transaction.
        _append(writer, _events(5, 3, pad=10))
        assert reader.ask() == {"bodies": list(range(8)), "total": 8}
        # Even after the writer grew the map beyond what the reader mapped.
        n = 8
        while writer.map_size() < 4 * MiB:
            _append(writer, _events(n, 50))
            n += 50
        assert reader.ask() == {"bodies": list(range(n)), "total": n}
        assert reader.close() == 0
        reader = None
        # The reader going away does not disturb the writer.
        assert _append(writer, _events(n, 1, pad=10)) == range(n + 1, n + 2)
        assert _bodies(writer) == list(range(n + 1))
    finally:
        if reader is not None:
            reader.close(kill=True)
        writer.close()
