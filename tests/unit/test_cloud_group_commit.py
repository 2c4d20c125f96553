"""Group commit of the cloud's admin writes (edge_sync/cloud/group_commit.py): writes submitted
while another is being committed share one transaction; every write is committed before its
future is resolved, each future resolved once; a failing write fails alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import lmdb
import pytest

from edge_sync.cloud.group_commit import GroupCommit
from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.errors import BadRequest, StorageError
from tests.helpers.link_client import DEADLINE_S


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CloudStore]:
    s = CloudStore(tmp_path / "cloud")
    yield s
    s.close()


def _put(store: CloudStore, key: bytes, value: bytes) -> Any:
    def fn(txn: lmdb.Transaction) -> bytes:
        txn.put(key, value, db=store.lmdb.dbs["meta"])
        return key
    return fn


def _get(store: CloudStore, key: bytes) -> bytes | None:
    with store.lmdb.read() as txn:
        raw = txn.get(key, db=store.lmdb.dbs["meta"])
    return None if raw is None else bytes(raw)


def _held(commits: GroupCommit) -> tuple[threading.Event, threading.Event, Future[Any]]:
    """A write that holds the writer thread until released: what is submitted meanwhile
    queues up and goes in the next transaction, together."""
    started, release = threading.Event(), threading.Event()

    def hold(txn: lmdb.Transaction) -> None:
        started.set()
        assert release.wait(DEADLINE_S)

    future = commits.submit(hold)
    assert started.wait(DEADLINE_S)
    return started, release, future


def test_writes_submitted_meanwhile_share_one_transaction_and_are_all_committed(store):
    commits = store.commits
    _, release, first = _held(commits)
    futures: list[Future[Any]] = []
    threads = [threading.Thread(target=lambda i=i: futures.append(
        commits.submit(_put(store, b"k%03d" % i, b"v%03d" % i)))) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    groups_before = commits.groups
    release.set()
    assert first.result(DEADLINE_S) is None
    assert sorted(f.result(DEADLINE_S) for f in futures) == [b"k%03d" % i for i in range(200)]
    assert commits.groups == groups_before + 2  # the held write alone, then the 200 together
    assert [_get(store, b"k%03d" % i) for i in range(200)] == [b"v%03d" % i for i in range(200)]


def test_a_write_that_raises_fails_alone_and_its_writes_are_undone(store):
    commits = store.commits
    _, release, first = _held(commits)

    def bad(txn: lmdb.Transaction) -> None:
        txn.put(b"bad", b"written", db=store.lmdb.dbs["meta"])
        raise BadRequest("device no longer exists")

    before = commits.submit(_put(store, b"a", b"1"))
    failing = commits.submit(bad)
    after = commits.submit(_put(store, b"b", b"2"))
    groups = commits.groups
    release.set()
    first.result(DEADLINE_S)
    assert (before.result(DEADLINE_S), after.result(DEADLINE_S)) == (b"a", b"b")
    with pytest.raises(BadRequest, match="device no longer exists"):
        failing.result(DEADLINE_S)
    assert commits.groups == groups + 2  # one transaction for the three: no retry alone
    assert (_get(store, b"a"), _get(store, b"bad"), _get(store, b"b")) == (b"1", None, b"2")


def test_a_group_whose_transaction_fails_is_written_one_by_one(store):
    commits = store.commits
    _, release, first = _held(commits)

    def lmdb_error(txn: lmdb.Transaction) -> None:
        txn.put(b"", b"x", db=store.lmdb.dbs["meta"])  # LMDB refuses an empty key

    before = commits.submit(_put(store, b"a", b"1"))
    failing = commits.submit(lmdb_error)
    after = commits.submit(_put(store, b"b", b"2"))
    release.set()
    first.result(DEADLINE_S)
    assert (before.result(DEADLINE_S), after.result(DEADLINE_S)) == (b"a", b"b")
    with pytest.raises(StorageError, match="MDB_BAD_VALSIZE"):
        failing.result(DEADLINE_S)
    assert (_get(store, b"a"), _get(store, b"b")) == (b"1", b"2")


def test_concurrent_attribute_sets_each_get_their_own_downlink(store):
    service = CloudService(store)
    edge, _, _ = service.create_edge("edge-1", routing_key="rk-1", secret="s3cret-1")
    devices: list[CloudDevice] = [service.create_device("rk-1", f"d{i}", token=f"t{i}")[0]
                                  for i in range(50)]
    queued = store.queued_downlinks(edge.edge_id)
    _, release, first = _held(store.commits)
    prepared = [service.prepare_attributes(str(d.id), {"setpoint": i})
                for i, d in enumerate(devices)]
    futures = [store.submit_shared_attributes(p.device, p.values, p.ts, p.downlink)
               for p in prepared]
    release.set()
    first.result(DEADLINE_S)
    numbers = [f.result(DEADLINE_S) for f in futures]
    assert numbers == list(range(queued + 1, queued + 51))  # one each, in submission order
    assert store.queued_downlinks(edge.edge_id) == queued + 50
    assert [store.shared_attributes(d.id) for d in devices] == [{"setpoint": i} for i in range(50)]


def test_close_commits_what_is_queued(tmp_path: Path):
    s = CloudStore(tmp_path / "cloud")
    _, release, first = _held(s.commits)
    queued = s.commits.submit(_put(s, b"late", b"1"))
    release.set()
    s.close()
    assert (first.done(), queued.result(0)) == (True, b"late")
    again = CloudStore(tmp_path / "cloud")
    try:
        assert _get(again, b"late") == b"1"
    finally:
        again.close()


