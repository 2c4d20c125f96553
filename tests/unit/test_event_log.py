"""EventLog on a real LMDB store in tmp_path: seq assignment, batch reads (lanes, limits,
in-flight cursors), deployed / dead / replay transitions, purging, eviction, counts without
scans, and a hypothesis state machine that checks the log against a plain Python model.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog, Eviction
from edge_sync.storage.records import NIL_UUID, Counts, Lane, NewEvent, Status, StoredEvent

H = Lane.HIGH
N = Lane.NORMAL
ENTITY_A = uuid.UUID(int=0xA)
ENTITY_B = uuid.UUID(int=0xB)


def event(
    i: int, lane: Lane = N, *, entity: uuid.UUID = ENTITY_A, pad: str = ""
) -> NewEvent:
    """An event whose body identifies it by i; the lane is given, not derived from the action,
    so events of both lanes encode to the same size."""
    return NewEvent("DEVICE", "DEVICE", entity, "TIMESERIES_UPDATED", {"i": i, "pad": pad},
                    1000 + i, lane)


def append(store: LmdbStore, log: EventLog, events: Sequence[NewEvent], *, now: int = 5) -> range:
    """Append events in one transaction at the log's next seq; returns the seqs they got."""

    def fn(txn: Any) -> range:
        first = log.next_seq(txn)
        end = log.append(
            txn, events, first_seq=first, created_time=now,
            tenant_id=NIL_UUID.bytes, edge_id=NIL_UUID.bytes,
        )
        return range(first, end)

    return store.write(fn)


def counts(store: LmdbStore, log: EventLog) -> Counts:
    with store.read() as txn:
        return log.counts(txn)


def batch(store: LmdbStore, log: EventLog, *, max_events: int = 1000, max_bytes: int = 10**9,
          after: dict[Lane, int] | None = None) -> list[int]:
    with store.read() as txn:
        return [e.seq for e in log.read_batch(txn, max_events=max_events, max_bytes=max_bytes,
                                              after=after)]


def get(store: LmdbStore, log: EventLog, seq: int) -> StoredEvent | None:
    with store.read() as txn:
        return log.get(txn, seq)


def events(store: LmdbStore, log: EventLog, **filters: Any) -> list[StoredEvent]:
    with store.read() as txn:
        return list(log.iter_events(txn, **filters))


def mark(store: LmdbStore, log: EventLog, seqs: Sequence[int], *, now: int = 100) -> int:
    return store.write(lambda txn: log.mark_deployed(txn, seqs, now_ms=now))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "store", initial_map_mb=8, max_size_mb=64)
    yield s
    s.close()


@pytest.fixture
def log(store: LmdbStore) -> EventLog:
    return EventLog(store)


# -- appending ------------------------------------------------------------------------------------


def test_append_assigns_consecutive_seqs_across_transactions(store: LmdbStore, log: EventLog) -> None:
    assert append(store, log, [event(0), event(1, H), event(2)]) == range(1, 4)
    assert append(store, log, [event(3), event(4)]) == range(4, 6)
    stored = events(store, log)
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
    assert [e.body["i"] for e in stored] == [0, 1, 2, 3, 4]
    assert [e.lane for e in stored] == [N, H, N, N, N]
    assert all(e.status is Status.PENDING and e.error is None for e in stored)
    assert all(e.created_time == 5 and e.entity_id == ENTITY_A for e in stored)
    assert [e.ts for e in stored] == [1000, 1001, 1002, 1003, 1004]
    assert len({e.id for e in stored}) == 5
    assert counts(store, log) == Counts(pending_high=1, pending_normal=4, deployed=0, dead=0,
                                        total=5, next_seq=6, evicted=0)


def test_empty_log_counts_and_next_seq(store: LmdbStore, log: EventLog) -> None:
    assert counts(store, log) == Counts(0, 0, 0, 0, 0, 1, 0)
    assert batch(store, log) == []
    assert get(store, log, 1) is None
    with store.read() as txn:
        assert log.oldest_pending(txn) is None
        assert log.last_ack_ms(txn) is None


# -- read_batch -----------------------------------------------------------------------------------


@pytest.fixture
def mixed(store: LmdbStore, log: EventLog) -> list[int]:
    """Seqs 1..7 with lanes N H N H N N H (equal-sized bodies)."""
    lanes = [N, H, N, H, N, N, H]
    return list(append(store, log, [event(i, lane) for i, lane in enumerate(lanes)]))


def test_read_batch_high_lane_first_then_normal_each_in_seq_order(
    store: LmdbStore, log: EventLog, mixed: list[int]
) -> None:
    assert batch(store, log) == [2, 4, 7, 1, 3, 5, 6]


def test_read_batch_honours_max_events(store: LmdbStore, log: EventLog, mixed: list[int]) -> None:
    assert batch(store, log, max_events=1) == [2]
    assert batch(store, log, max_events=3) == [2, 4, 7]
    assert batch(store, log, max_events=5) == [2, 4, 7, 1, 3]
    assert batch(store, log, max_events=7) == [2, 4, 7, 1, 3, 5, 6]


def test_read_batch_honours_max_bytes_but_returns_at_least_one(
    store: LmdbStore, log: EventLog, mixed: list[int]
) -> None:
    sizes = {e.seq: e.size for e in events(store, log)}
    assert len(set(sizes.values())) == 1  # equal bodies: equal encoded sizes
    size = sizes[1]
    assert size > 0
    assert batch(store, log, max_bytes=1) == [2]
    assert batch(store, log, max_bytes=size) == [2]
    assert batch(store, log, max_bytes=2 * size - 1) == [2]
    assert batch(store, log, max_bytes=2 * size) == [2, 4]
    assert batch(store, log, max_bytes=4 * size) == [2, 4, 7, 1]
    with store.read() as txn:
        got = log.read_batch(txn, max_events=100, max_bytes=4 * size)
    assert sum(e.size for e in got) == 4 * size


def test_read_batch_one_oversized_event_is_still_returned(store: LmdbStore, log: EventLog) -> None:
    append(store, log, [event(0, pad="x" * 5000), event(1)])
    assert batch(store, log, max_bytes=100) == [1]
    mark(store, log, [1])
    assert batch(store, log, max_bytes=100) == [2]


def test_read_batch_after_per_lane(store: LmdbStore, log: EventLog, mixed: list[int]) -> None:
    assert batch(store, log, after={H: 4}) == [7, 1, 3, 5, 6]
    assert batch(store, log, after={N: 3}) == [2, 4, 7, 5, 6]
    assert batch(store, log, after={H: 7, N: 5}) == [6]
    assert batch(store, log, after={H: 7, N: 6}) == []
    assert batch(store, log, after={H: 100, N: 0}) == [1, 3, 5, 6]
    assert batch(store, log, after={H: 2, N: 1}, max_events=3) == [4, 7, 3]


def test_read_batch_skips_deployed_and_dead(store: LmdbStore, log: EventLog, mixed: list[int]) -> None:
    assert mark(store, log, [2, 3]) == 2
    assert store.write(lambda txn: log.dead_letter(txn, 5, "too big", now_ms=1)) is True
    assert batch(store, log) == [4, 7, 1, 6]
    got = {e.seq: e.status for e in events(store, log)}
    assert got == {1: Status.PENDING, 2: Status.DEPLOYED, 3: Status.DEPLOYED, 4: Status.PENDING,
                   5: Status.DEAD, 6: Status.PENDING, 7: Status.PENDING}


# -- state changes --------------------------------------------------------------------------------


def test_mark_deployed_changes_counts_exactly_and_is_idempotent(
    store: LmdbStore, log: EventLog, mixed: list[int]
) -> None:
    assert mark(store, log, [1, 2, 3], now=500) == 3
    assert counts(store, log) == Counts(pending_high=2, pending_normal=2, deployed=3, dead=0,
                                        total=7, next_seq=8, evicted=0)
    assert mark(store, log, [1, 2, 3], now=600) == 0
    assert mark(store, log, [3, 99, 0], now=600) == 0  # unknown seqs change nothing
    assert counts(store, log).deployed == 3
    assert mark(store, log, [3, 4, 4], now=700) == 1  # a seq repeated in one call counts once
    assert counts(store, log) == Counts(pending_high=1, pending_normal=2, deployed=4, dead=0,
                                        total=7, next_seq=8, evicted=0)
    with store.read() as txn:
        assert log.last_ack_ms(txn) == 700
        oldest = log.oldest_pending(txn)
    assert oldest is not None and oldest.seq == 5


def test_dead_letter_records_error_and_replay_moves_it_back(
    store: LmdbStore, log: EventLog, mixed: list[int]
) -> None:
    assert store.write(lambda txn: log.dead_letter(txn, 4, "rejected: bad key", now_ms=9)) is True
    dead = get(store, log, 4)
    assert dead is not None
    assert (dead.status, dead.error, dead.lane) == (Status.DEAD, "rejected: bad key", H)
    listed = events(store, log, status=Status.DEAD)
    assert [(e.seq, e.error) for e in listed] == [(4, "rejected: bad key")]
    assert listed[0].as_json()["error"] == "rejected: bad key"
    assert listed[0].as_json()["status"] == "DEAD"
    assert counts(store, log) == Counts(pending_high=2, pending_normal=4, deployed=0, dead=1,
                                        total=7, next_seq=8, evicted=0)
    # Not pending any more: dead-lettering again or acknowledging it changes nothing.
    assert store.write(lambda txn: log.dead_letter(txn, 4, "again", now_ms=10)) is False
    assert mark(store, log, [4]) == 0
    assert get(store, log, 4).error == "rejected: bad key"  # type: ignore[union-attr]

    assert store.write(lambda txn: log.replay_dead(txn, 4)) is True
    replayed = get(store, log, 4)
    assert replayed is not None
    assert (replayed.status, replayed.error, replayed.lane) == (Status.PENDING, None, H)
    assert batch(store, log) == [2, 4, 7, 1, 3, 5, 6]
    assert counts(store, log).dead == 0
    assert counts(store, log).pending_high == 3
    assert store.write(lambda txn: log.replay_dead(txn, 4)) is False
    assert store.write(lambda txn: log.replay_dead(txn, 1)) is False  # pending, not dead
    assert store.write(lambda txn: log.replay_dead(txn, 99)) is False


def test_dead_letter_of_deployed_or_unknown_seq_is_refused(
    store: LmdbStore, log: EventLog, mixed: list[int]
) -> None:
    mark(store, log, [1])
    assert store.write(lambda txn: log.dead_letter(txn, 1, "late", now_ms=1)) is False
    assert store.write(lambda txn: log.dead_letter(txn, 42, "unknown", now_ms=1)) is False
    assert counts(store, log).dead == 0
    assert get(store, log, 1).status is Status.DEPLOYED  # type: ignore[union-attr]


def test_purge_deployed_removes_only_deployed_older_than_cutoff(
    store: LmdbStore, log: EventLog
) -> None:
    append(store, log, [event(i) for i in range(6)])  # seqs 1..6
    mark(store, log, [1, 2], now=1000)
    mark(store, log, [3], now=2000)
    store.write(lambda txn: log.dead_letter(txn, 4, "dead", now_ms=1))
    # 5, 6 stay pending; 4 is dead.
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=1000, limit=100)) == 0
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=2000, limit=100)) == 2
    assert [e.seq for e in events(store, log)] == [3, 4, 5, 6]
    assert get(store, log, 1) is None and get(store, log, 2) is None
    assert counts(store, log) == Counts(pending_high=0, pending_normal=2, deployed=1, dead=1,
                                        total=4, next_seq=7, evicted=0)
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=2**62, limit=100)) == 1
    assert [(e.seq, e.status) for e in events(store, log)] == [
        (4, Status.DEAD), (5, Status.PENDING), (6, Status.PENDING)]
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=2**62, limit=100)) == 0


def test_purge_deployed_honours_limit_oldest_deployment_first(store: LmdbStore, log: EventLog) -> None:
    append(store, log, [event(i) for i in range(5)])  # seqs 1..5
    # Deployment time order differs from seq order: 5, 3, 1, 4, 2.
    for seq, when in ((5, 10), (3, 20), (1, 30), (4, 40), (2, 50)):
        mark(store, log, [seq], now=when)
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=1000, limit=2)) == 2
    assert [e.seq for e in events(store, log)] == [1, 2, 4]
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=1000, limit=0)) == 0
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=1000, limit=1)) == 1
    assert [e.seq for e in events(store, log)] == [2, 4]
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=1000, limit=10)) == 2
    assert events(store, log) == []
    assert counts(store, log) == Counts(0, 0, 0, 0, 0, 6, 0)


def test_evict_oldest_normal_touches_only_pending_normal(store: LmdbStore, log: EventLog) -> None:
    lanes = [H, N, N, H, N, N, H]  # seqs 1..7
    append(store, log, [event(i, lane) for i, lane in enumerate(lanes)])
    mark(store, log, [2])  # deployed normal: not pending, must survive eviction
    store.write(lambda txn: log.dead_letter(txn, 6, "dead", now_ms=1))  # dead normal: survives

    ev = store.write(lambda txn: log.evict_oldest_normal(txn, count=2))
    assert ev == Eviction(count=2, first_seq=3, last_seq=5)
    assert [e.seq for e in events(store, log)] == [1, 2, 4, 6, 7]
    assert counts(store, log) == Counts(pending_high=3, pending_normal=0, deployed=1, dead=1,
                                        total=5, next_seq=8, evicted=2)
    assert store.write(lambda txn: log.evict_oldest_normal(txn, count=10)) is None
    assert counts(store, log).evicted == 2

    append(store, log, [event(10), event(11, H), event(12)])  # seqs 8, 9, 10
    ev = store.write(lambda txn: log.evict_oldest_normal(txn, count=10))
    assert ev == Eviction(count=2, first_seq=8, last_seq=10)
    assert counts(store, log) == Counts(pending_high=4, pending_normal=0, deployed=1, dead=1,
                                        total=6, next_seq=11, evicted=4)
    assert batch(store, log) == [1, 4, 7, 9]
    assert [e.seq for e in events(store, log, status=Status.DEAD)] == [6]


def test_evict_count_limits_and_leaves_the_newest(store: LmdbStore, log: EventLog) -> None:
    append(store, log, [event(i) for i in range(10)])
    ev = store.write(lambda txn: log.evict_oldest_normal(txn, count=4))
    assert ev == Eviction(4, 1, 4)
    assert batch(store, log) == [5, 6, 7, 8, 9, 10]
    assert counts(store, log).evicted == 4


# -- next_seq and reopening ------------------------------------------------------------------------


def test_next_seq_survives_purging_every_event_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = LmdbStore(path, initial_map_mb=8)
    log = EventLog(store)
    assert append(store, log, [event(i) for i in range(5)]) == range(1, 6)
    assert mark(store, log, [1, 2, 3, 4, 5], now=10) == 5
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=11, limit=100)) == 5
    assert counts(store, log) == Counts(0, 0, 0, 0, 0, 6, 0)
    store.close()

    store = LmdbStore(path, initial_map_mb=8)
    log = EventLog(store)
    assert counts(store, log) == Counts(0, 0, 0, 0, 0, 6, 0)
    assert append(store, log, [event(9)]) == range(6, 7)
    # Evicting the newest event does not give its seq out again either.
    assert store.write(lambda txn: log.evict_oldest_normal(txn, count=1)) == Eviction(1, 6, 6)
    store.close()

    store = LmdbStore(path, initial_map_mb=8)
    log = EventLog(store)
    assert counts(store, log) == Counts(0, 0, 0, 0, 0, 7, 1)
    assert append(store, log, [event(10)]) == range(7, 8)
    assert [e.seq for e in events(store, log)] == [7]
    store.close()


def test_counts_after_reopen_equal_counts_before(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = LmdbStore(path, initial_map_mb=8)
    log = EventLog(store)
    append(store, log, [event(i, H if i % 3 == 0 else N) for i in range(30)])
    mark(store, log, list(range(1, 11)), now=50)
    for seq in (12, 13):
        store.write(lambda txn, seq=seq: log.dead_letter(txn, seq, "x", now_ms=1))
    store.write(lambda txn: log.evict_oldest_normal(txn, count=3))
    store.write(lambda txn: log.purge_deployed(txn, older_than_ms=51, limit=4))
    before = counts(store, log)
    assert before == Counts(pending_high=5, pending_normal=10, deployed=6, dead=2, total=23,
                            next_seq=31, evicted=3)
    listed_before = [(e.seq, e.status, e.error, e.body) for e in events(store, log)]
    store.close()

    store = LmdbStore(path, initial_map_mb=8)
    log = EventLog(store)
    assert counts(store, log) == before
    assert [(e.seq, e.status, e.error, e.body) for e in events(store, log)] == listed_before
    store.close()


def test_reopen_and_counts_do_not_scan_a_large_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big"
    store = LmdbStore(path, initial_map_mb=64, max_size_mb=256)
    log = EventLog(store)
    n = 50_000
    append(store, log, [event(i, H if i % 10 == 0 else N) for i in range(n)])
    mark(store, log, list(range(1, 1001)), now=7)
    before = counts(store, log)
    assert before == Counts(pending_high=4900, pending_normal=44100, deployed=1000, dead=0,
                            total=n, next_seq=n + 1, evicted=0)
    store.close()

    def no_scan(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("opening / counting must not read the events")

    monkeypatch.setattr(EventLog, "iter_events", no_scan)
    monkeypatch.setattr(EventLog, "read_batch", no_scan)
    monkeypatch.setattr(codec, "decode_event", no_scan)
    store = LmdbStore(path, initial_map_mb=64, max_size_mb=256)
    try:
        log = EventLog(store)
        assert counts(store, log) == before
        with store.read() as txn:
            assert log.next_seq(txn) == n + 1
    finally:
        store.close()


def test_iter_events_filters_by_status_entity_and_after_seq(store: LmdbStore, log: EventLog) -> None:
    entities = [ENTITY_A, ENTITY_B, ENTITY_A, ENTITY_B, ENTITY_A, ENTITY_B]
    append(store, log, [event(i, entity=e) for i, e in enumerate(entities)])  # seqs 1..6
    mark(store, log, [1, 2])
    store.write(lambda txn: log.dead_letter(txn, 3, "dead", now_ms=1))

    def seqs(**filters: Any) -> list[int]:
        return [e.seq for e in events(store, log, **filters)]

    assert seqs() == [1, 2, 3, 4, 5, 6]
    assert seqs(entity_id=ENTITY_A) == [1, 3, 5]
    assert seqs(entity_id=ENTITY_B) == [2, 4, 6]
    assert seqs(entity_id=uuid.UUID(int=0xC)) == []
    assert seqs(status=Status.DEPLOYED) == [1, 2]
    assert seqs(status=Status.DEAD) == [3]
    assert seqs(status=Status.PENDING) == [4, 5, 6]
    assert seqs(after_seq=3) == [4, 5, 6]
    assert seqs(after_seq=6) == []
    assert seqs(status=Status.PENDING, entity_id=ENTITY_A) == [5]
    assert seqs(status=Status.DEPLOYED, entity_id=ENTITY_A, after_seq=1) == []
    assert seqs(entity_id=ENTITY_B, after_seq=2) == [4, 6]


# -- model-based state machine ---------------------------------------------------------------------


@dataclass
class _ModelEvent:
    lane: Lane
    status: Status
    deployed_at: int | None = None
    error: str | None = None


class EventLogMachine(RuleBasedStateMachine):
    """Random appends, acks, dead letters, replays, purges, evictions and reopenings against a
    dict model of {seq: (lane, status, deployed time, error)}."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="eventlog-sm-"))
        self.store = LmdbStore(self.dir, initial_map_mb=4, max_size_mb=64)
        self.log = EventLog(self.store)
        self.model: dict[int, _ModelEvent] = {}
        self.next_seq = 1
        self.evicted = 0
        self.now = 1000

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _tick(self) -> int:
        self.now += 1
        return self.now

    @rule(lanes=st.lists(st.sampled_from([H, N]), min_size=1, max_size=5))
    def appended(self, lanes: list[Lane]) -> None:
        got = append(self.store, self.log, [event(self.next_seq + k, lane) for k, lane in
                                            enumerate(lanes)])
        assert got == range(self.next_seq, self.next_seq + len(lanes))
        for seq, lane in zip(got, lanes, strict=True):
            self.model[seq] = _ModelEvent(lane, Status.PENDING)
        self.next_seq += len(lanes)

    @rule(data=st.data())
    def mark_deployed(self, data: st.DataObject) -> None:
        pool = [*sorted(self.model), 0, self.next_seq + 3]
        seqs = data.draw(st.lists(st.sampled_from(pool), max_size=6))
        now = self._tick()
        changed = mark(self.store, self.log, seqs, now=now)
        expected = 0
        for seq in dict.fromkeys(seqs):
            m = self.model.get(seq)
            if m is not None and m.status is Status.PENDING:
                m.status, m.deployed_at = Status.DEPLOYED, now
                expected += 1
        assert changed == expected

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), error=st.text(max_size=20))
    def dead_letter(self, data: st.DataObject, error: str) -> None:
        seq = data.draw(st.sampled_from(sorted(self.model)))
        ok = self.store.write(lambda txn: self.log.dead_letter(txn, seq, error, now_ms=self.now))
        m = self.model[seq]
        assert ok == (m.status is Status.PENDING)
        if ok:
            m.status, m.error = Status.DEAD, error

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.model)))
        ok = self.store.write(lambda txn: self.log.replay_dead(txn, seq))
        m = self.model[seq]
        assert ok == (m.status is Status.DEAD)
        if ok:
            m.status, m.error = Status.PENDING, None

    @rule(back=st.integers(min_value=0, max_value=10), limit=st.integers(min_value=0, max_value=4))
    def purge(self, back: int, limit: int) -> None:
        cutoff = self.now - back
        purged = self.store.write(
            lambda txn: self.log.purge_deployed(txn, older_than_ms=cutoff, limit=limit))
        eligible = sorted(
            (m.deployed_at, seq) for seq, m in self.model.items()
            if m.status is Status.DEPLOYED and m.deployed_at is not None and m.deployed_at < cutoff
        )[:limit]
        assert purged == len(eligible)
        for _when, seq in eligible:
            del self.model[seq]

    @rule(count=st.integers(min_value=1, max_value=4))
    def evict(self, count: int) -> None:
        ev = self.store.write(lambda txn: self.log.evict_oldest_normal(txn, count=count))
        victims = [seq for seq, m in sorted(self.model.items())
                   if m.lane is N and m.status is Status.PENDING][:count]
        if not victims:
            assert ev is None
            return
        assert ev == Eviction(len(victims), victims[0], victims[-1])
        for seq in victims:
            del self.model[seq]
        self.evicted += len(victims)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = LmdbStore(self.dir, initial_map_mb=4, max_size_mb=64)
        self.log = EventLog(self.store)

    @invariant()
    def counts_match(self) -> None:
        ms = self.model.values()
        expected = Counts(
            pending_high=sum(1 for m in ms if m.status is Status.PENDING and m.lane is H),
            pending_normal=sum(1 for m in ms if m.status is Status.PENDING and m.lane is N),
            deployed=sum(1 for m in ms if m.status is Status.DEPLOYED),
            dead=sum(1 for m in ms if m.status is Status.DEAD),
            total=len(self.model),
            next_seq=self.next_seq,
            evicted=self.evicted,
        )
        assert counts(self.store, self.log) == expected

    @invariant()
    def statuses_match(self) -> None:
        listed = events(self.store, self.log)
        assert [(e.seq, e.lane, e.status, e.error) for e in listed] == [
            (seq, m.lane, m.status, m.error) for seq, m in sorted(self.model.items())
        ]
        assert all(e.body["i"] == e.seq for e in listed)
        pending = sorted(s for s, m in self.model.items() if m.status is Status.PENDING)
        high_first = [s for s in pending if self.model[s].lane is H] + [
            s for s in pending if self.model[s].lane is N]
        assert batch(self.store, self.log) == high_first


TestEventLogMachine = EventLogMachine.TestCase
TestEventLogMachine.settings = settings(
    max_examples=50,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
