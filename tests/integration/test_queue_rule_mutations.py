"""A real QueueActor (alone under actor_child, on its own store in tmp_path) writing the rule
engine's data: PutRuleState and PutLocalTimeseries commit with the events of their Append or not
at all, a point is kept ttl_s (or the local retention) from the commit, whatever its own ts, the
periodic PurgeDeployed deletes expired points, and deleting a device takes its rule data.

The clock is injected; tests wait on futures with deadlines, never sleep.
"""

from __future__ import annotations

import struct
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from edge_sync.actors import queue_actor
from edge_sync.actors.messages import (
    Append,
    CreateDevice,
    DeleteEntity,
    Mutation,
    PurgeDeployed,
    PutLocalTimeseries,
    PutRuleState,
    RequireDevice,
)
from edge_sync.actors.queue_actor import QueueActor, QueuePolicy
from edge_sync.errors import BadRequest, NotFound
from edge_sync.metrics import Metrics
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Device, Lane, NewEvent
from edge_sync.storage.rule_store import RuleStore
from edge_sync.supervisor import actor_child
from tests.helpers.log_capture import log_records
from tests.helpers.set_clock import SetClock

DEADLINE = 10.0
T0 = 1_700_000_000_000
DAY_S = 86_400
RETENTION_S = 3 * DAY_S


class Queue:
    """A QueueActor on its own store with a fake clock (its purge timer never fires)."""

    def __init__(self, path: Path, clock: SetClock | None = None,
                 store_class: type[LmdbStore] = LmdbStore) -> None:
        self.store = store_class(path, initial_map_mb=4, max_size_mb=64)
        self.clock = clock or SetClock(T0)
        self.metrics = Metrics()
        self.exits: list[BaseException | None] = []
        self.exited = threading.Event()  # set once the actor reported its exit
        self.child: Any = actor_child(
            QueueActor, self.store, policy=QueuePolicy(purge_interval_s=3600.0),
            metrics=self.metrics, clock=self.clock, local_retention_s=RETENTION_S,
        )(self._exit)
        self.rules = RuleStore(self.store)

    def _exit(self, reason: BaseException | None) -> None:
        self.exits.append(reason)
        self.exited.set()

    def append(self, entity: uuid.UUID, events: tuple[NewEvent, ...],
               *mutations: Mutation) -> Future[Any]:
        reply: Future[Any] = Future()
        self.child.ref.tell(Append(entity, events, reply=reply, mutations=mutations))
        return reply

    def purge(self) -> None:
        self.child.ref.ask(PurgeDeployed(), timeout=DEADLINE)

    def events(self) -> int:
        with self.store.read() as txn:
            return len(list(EventLog(self.store).iter_events(txn)))

    def state(self, entity: uuid.UUID) -> dict[str, Any] | None:
        with self.store.read() as txn:
            return self.rules.state(txn, entity)

    def series(self, entity: uuid.UUID) -> dict[str, list[tuple[int, Any]]]:
        with self.store.read() as txn:
            return self.rules.local_series(txn, entity, None, 0, 1 << 62, 1000)

    def points(self) -> int:
        with self.store.read() as txn:
            return self.rules.local_points(txn)

    def stop(self) -> None:
        self.child.stop(timeout=DEADLINE)
        self.store.close()


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[Queue]:
    q = Queue(tmp_path / "queue")
    yield q
    q.stop()
    assert q.exits == []  # the actor never failed


def telemetry(entity: uuid.UUID, n: int = 1) -> tuple[NewEvent, ...]:
    return tuple(NewEvent("DEVICE", "DEVICE", entity, Action.TIMESERIES_UPDATED, {"k": k}, 1,
                          Lane.NORMAL) for k in range(n))


def create_device(queue: Queue, n: int) -> uuid.UUID:
    device = Device(id=uuid.UUID(int=n), name=f"dev-{n}", type="default", token=f"tok-{n}",
                    created_time=T0)
    added = NewEvent("DEVICE", "DEVICE", device.id, Action.ADDED,
                     {"id": {"entityType": "DEVICE", "id": str(device.id)}, "name": device.name,
                      "type": device.type}, T0, Lane.HIGH)
    queue.append(device.id, (added,), CreateDevice(device)).result(DEADLINE)
    return device.id


def test_rule_mutations_commit_with_the_events(queue: Queue) -> None:
    dev = create_device(queue, 1)
    seqs = queue.append(dev, telemetry(dev, 2),
                        PutRuleState(dev, {"seq": 1, "windows": {"#2": {"last_seq": 1}}}),
                        PutLocalTimeseries(dev, ((T0 - 5, (("t", 20.5), ("h", 40))),), 0),
                        RequireDevice(dev)).result(DEADLINE)
    assert list(seqs) == [2, 3]
    assert queue.state(dev) == {"seq": 1, "windows": {"#2": {"last_seq": 1}}}
    assert queue.series(dev) == {"h": [(T0 - 5, 40)], "t": [(T0 - 5, 20.5)]}
    # the record is replaced whole, and deleted with None
    queue.append(dev, (), PutRuleState(dev, {"seq": 2})).result(DEADLINE)
    assert queue.state(dev) == {"seq": 2}
    queue.append(dev, (), PutRuleState(dev, None)).result(DEADLINE)
    assert queue.state(dev) is None
    assert queue.events() == 3


def test_unknown_required_device_writes_nothing_of_the_append(queue: Queue) -> None:
    ghost = uuid.UUID(int=99)
    reply = queue.append(ghost, telemetry(ghost, 3), PutRuleState(ghost, {"seq": 1}),
                         PutLocalTimeseries(ghost, ((T0, (("t", 1),)),), 0), RequireDevice(ghost))
    with pytest.raises(NotFound):
        reply.result(DEADLINE)
    assert (queue.state(ghost), queue.points(), queue.events()) == (None, 0, 0)


def test_unstorable_rule_data_fails_its_append_alone(queue: Queue) -> None:
    dev = create_device(queue, 1)
    bad = queue.append(dev, telemetry(dev, 2), PutRuleState(dev, {"seq": 1}),
                       PutLocalTimeseries(dev, ((T0, (("t", 1 << 70),)),), 0))
    good = queue.append(dev, telemetry(dev), PutLocalTimeseries(dev, ((T0, (("t", 1),)),), 0))
    with pytest.raises(BadRequest):
        bad.result(DEADLINE)
    assert list(good.result(DEADLINE)) == [2]
    assert queue.state(dev) is None
    assert queue.series(dev) == {"t": [(T0, 1)]}
    assert queue.events() == 2  # the ADDED event and the good telemetry


def test_points_expire_ttl_or_retention_after_the_commit_and_purge_removes_them(
        queue: Queue) -> None:
    dev = create_device(queue, 1)
    skewed = T0 - 30 * DAY_S * 1000  # a device clock a month behind: kept all the same
    queue.append(dev, (), PutLocalTimeseries(dev, ((skewed, (("r", 1),)),), 0)).result(DEADLINE)
    queue.append(dev, (), PutLocalTimeseries(
        dev, ((T0, (("a", 1),)), (T0 + 1, (("a", 2),))), 60)).result(DEADLINE)
    queue.clock.ms = T0 + 1000
    queue.append(dev, (), PutLocalTimeseries(dev, ((T0, (("b", 1),)),), 60)).result(DEADLINE)

    queue.purge()
    assert queue.points() == 4
    queue.clock.ms = T0 + 60_000 - 1
    queue.purge()
    assert queue.points() == 4
    queue.clock.ms = T0 + 60_000  # "a" expires at T0 + 60 s exactly
    queue.purge()
    assert queue.series(dev) == {"b": [(T0, 1)], "r": [(skewed, 1)]}
    queue.clock.ms = T0 + 61_000
    queue.purge()
    assert queue.series(dev) == {"r": [(skewed, 1)]}
    queue.clock.ms = T0 + RETENTION_S * 1000 - 1
    queue.purge()
    assert queue.points() == 1
    queue.clock.ms = T0 + RETENTION_S * 1000
    queue.purge()
    assert queue.points() == 0
    snapshot = queue.metrics.snapshot()
    assert snapshot['edge_sync_rule_local_points_removed_total{reason="expired"}'] == 4


def test_purge_takes_more_than_one_batch(queue: Queue) -> None:
    dev = create_device(queue, 1)
    n = 10_000 + 17  # the purge batch is 10,000
    queue.append(dev, (), PutLocalTimeseries(
        dev, tuple((T0 + i, (("t", i),)) for i in range(n)), 1)).result(DEADLINE)
    assert queue.points() == n
    queue.clock.ms = T0 + 1000
    queue.purge()
    assert queue.points() == 0
    assert queue.metrics.snapshot()['edge_sync_rule_local_points_removed_total{reason="expired"}'] == n


def test_deleting_a_device_deletes_its_rule_data(queue: Queue) -> None:
    one, two = create_device(queue, 1), create_device(queue, 2)
    for dev in (one, two):
        queue.append(dev, telemetry(dev), PutRuleState(dev, {"of": str(dev)}),
                     PutLocalTimeseries(dev, ((T0, (("t", 1), ("u", 2))),), 0)
                     ).result(DEADLINE)
    seqs = queue.append(one, (), DeleteEntity("DEVICE", one, T0)).result(DEADLINE)
    assert len(seqs) == 1  # its DELETED event
    assert (queue.state(one), queue.series(one)) == (None, {})
    assert queue.state(two) == {"of": str(two)}
    assert queue.series(two) == {"t": [(T0, 1)], "u": [(T0, 2)]}
    assert queue.points() == 2


def test_local_retention_must_be_positive(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "q", initial_map_mb=4, max_size_mb=16)
    try:
        with pytest.raises(ValueError, match="local_retention_s"):
            QueueActor(lambda exc: None, store, policy=QueuePolicy(), metrics=Metrics(),
                       local_retention_s=0)
    finally:
        store.close()


def test_the_purge_passes_stale_index_listings_in_bounded_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listings that delete nothing (a device's points written at T0 + 1 s, then written again,
    kept until deleted, by an earlier release run on the store: it knows only its own index)
    count against a batch's visits (4 per point: 20 here); the purge goes on to the next batch
    and says what it took out."""
    monkeypatch.setattr(queue_actor, "_PURGE_BATCH", 5)
    path = tmp_path / "queue"
    store = LmdbStore(path, initial_map_mb=4, max_size_mb=64)
    rules = RuleStore(store)
    stale, device = uuid.UUID(int=0x51), uuid.UUID(int=0xD5)
    store.write(lambda txn: rules.put_local(
        txn, stale, tuple((ts, (("v", ts),)) for ts in range(50)), T0 + 1_000))
    row = stale.bytes + struct.pack(">H", 1) + b"v"
    store.write(lambda txn: [txn.put(row + codec.u64(ts), codec.pack((None, -ts)),
                                     db=store.dbs["rule_local_ts"]) for ts in range(50)])
    store.write(lambda txn: rules.put_local(
        txn, device, tuple((ts, (("v", ts),)) for ts in range(12)), T0 + 9_000))
    store.close()
    queue = Queue(path, SetClock(T0 + 5_000))
    try:
        with log_records() as records:
            queue.purge()  # only stale listings due: 20, 20, 10
            queue.clock.ms = T0 + 9_000
            queue.purge()  # 12 points: 5, 5, 2
        assert [(r["message"], r["extra"]) for r in records
                if "local timeseries" in r["message"]] == [
            ("removed stale expiry index listings of the local timeseries, no point was due",
             {"component": "queue", "stale_listings": 50}),
            ("purged expired local timeseries points",
             {"component": "queue", "count": 12, "stale_listings": 0})]
        assert queue.metrics.snapshot()[
            'edge_sync_rule_local_points_removed_total{reason="expired"}'] == 12
        assert queue.points() == 50
        with queue.store.read() as txn:
            assert queue.store.entries(txn, "rule_local_expiry_sets") == 0
    finally:
        queue.stop()
    assert queue.exits == []
