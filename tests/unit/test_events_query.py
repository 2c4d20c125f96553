"""The events query (api/events_query.py) and the event log's entity index on a real LMDB store:
every filter, seq cursors both ways with exact seqs, the scan budget's partial pages, the time
range, names and ISO times in the rows, the index kept in step by purge and eviction, and
built once for a store made before it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_sync.api.events_query import EventQuery, iso_ms, parse_query, run_query
from edge_sync.errors import BadRequest
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog, ensure_entity_index
from edge_sync.storage.records import NIL_UUID, Device, Lane, NewEvent, Status

A = uuid.UUID(int=0xA)
B = uuid.UUID(int=0xB)
T0 = 1_700_000_000_000


def _event(entity: uuid.UUID, action: str = "TIMESERIES_UPDATED", etype: str = "DEVICE",
           lane: Lane = Lane.NORMAL) -> NewEvent:
    return NewEvent(etype, "DEVICE", entity, action, {"v": 1}, 1, lane)


def _append(store: LmdbStore, events: list[NewEvent], created: int) -> None:
    log = EventLog(store)

    def go(txn: Any) -> None:
        log.append(txn, events, first_seq=log.next_seq(txn), created_time=created,
                   tenant_id=NIL_UUID.bytes, edge_id=NIL_UUID.bytes)

    store.write(go)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    """30 events, seqs 1..30, created T0 + seq*1000: odd seqs entity A, even B; every fifth
    (5, 10, ...) an ATTRIBUTES_UPDATED; seqs 21..30 stay PENDING (21..25 high lane), 3 and 4
    are DEAD, the rest DEPLOYED."""
    s = LmdbStore(tmp_path / "s")
    for seq in range(1, 31):
        _append(s, [_event(A if seq % 2 else B,
                           "ATTRIBUTES_UPDATED" if seq % 5 == 0 else "TIMESERIES_UPDATED",
                           lane=Lane.HIGH if 21 <= seq <= 25 else Lane.NORMAL)], T0 + seq * 1000)
    log = EventLog(s)

    def settle(txn: Any) -> None:
        log.dead_letter(txn, 3, "bad payload", now_ms=T0)
        log.dead_letter(txn, 4, "bad payload", now_ms=T0)
        log.mark_deployed(txn, [q for q in range(1, 21) if q not in (3, 4)], now_ms=T0)

    s.write(settle)
    s.write(lambda txn: EntityStore(s).put_device(txn, Device(A, "pump-a", "default", "tok-a", T0)))
    yield s
    s.close()


def seqs(store: LmdbStore, **kw: Any) -> tuple[list[int], int | None, int | None, bool]:
    page = run_query(store, EventQuery(**kw))
    return [r["seq"] for r in page.rows], page.next_after, page.prev_before, page.partial


def test_newest_first_and_paging_both_ways(store: LmdbStore) -> None:
    assert seqs(store, order="desc", limit=7) == ([30, 29, 28, 27, 26, 25, 24], None, 24, False)
    assert seqs(store, order="desc", limit=7, before=24) == (
        [23, 22, 21, 20, 19, 18, 17], 23, 17, False)
    assert seqs(store, order="desc", limit=7, before=3) == ([2, 1], 2, None, False)
    assert seqs(store, order="desc", limit=7, after=23) == (
        [30, 29, 28, 27, 26, 25, 24], None, 24, False)
    assert seqs(store, order="desc", limit=7, after=2) == ([9, 8, 7, 6, 5, 4, 3], 9, 3, False)
    # oldest first, as the API always answered
    assert seqs(store, limit=4) == ([1, 2, 3, 4], 4, None, False)
    assert seqs(store, limit=4, after=28) == ([29, 30], None, 29, False)


def test_filters_use_their_index(store: LmdbStore) -> None:
    assert seqs(store, status=Status.DEAD, order="desc") == ([4, 3], None, None, False)
    assert seqs(store, status=Status.PENDING, order="desc", limit=4) == (
        [30, 29, 28, 27], None, 27, False)
    assert seqs(store, status=Status.PENDING, order="desc", before=27) == (
        [26, 25, 24, 23, 22, 21], 26, None, False)
    assert seqs(store, status=Status.DEPLOYED, order="desc", limit=3) == (
        [20, 19, 18], None, 18, False)
    assert seqs(store, entity=A, order="desc", limit=5) == ([29, 27, 25, 23, 21], None, 21, False)
    assert seqs(store, entity=B, limit=3, after=10) == ([12, 14, 16], 16, 12, False)
    assert seqs(store, entity=A, status=Status.DEAD) == ([3], None, None, False)
    assert seqs(store, action="ATTRIBUTES_UPDATED", order="desc") == (
        [30, 25, 20, 15, 10, 5], None, None, False)
    assert seqs(store, type="ALARM") == ([], None, None, False)


def test_scan_budget_answers_partial_with_a_cursor_to_continue(store: LmdbStore) -> None:
    assert seqs(store, action="ATTRIBUTES_UPDATED", order="desc", scan=4, limit=10) == (
        [30], None, 27, True)
    assert seqs(store, action="ATTRIBUTES_UPDATED", order="desc", scan=4, limit=10,
                before=27) == ([25], 25, 23, True)
    assert seqs(store, action="ATTRIBUTES_UPDATED", scan=7, limit=10) == ([5], 7, None, True)


def test_time_range_is_a_seq_range_and_checked_per_row(store: LmdbStore) -> None:
    assert seqs(store, from_ms=T0 + 10_000, to_ms=T0 + 13_000) == (
        [10, 11, 12, 13], None, None, False)
    assert seqs(store, from_ms=T0 + 10_500, to_ms=T0 + 12_500, order="desc") == (
        [12, 11], None, None, False)
    assert seqs(store, from_ms=T0 + 28_000, limit=2) == ([28, 29], 29, None, False)
    assert seqs(store, to_ms=T0 + 2_000, order="desc") == ([2, 1], None, None, False)
    assert seqs(store, from_ms=T0 + 99_000) == ([], None, None, False)


def test_rows_carry_iso_time_lane_and_entity_name(store: LmdbStore) -> None:
    page = run_query(store, EventQuery(before=4, order="desc", limit=2))
    dead, other = page.rows
    assert (dead["seq"], dead["status"], dead["error"], dead["entity_name"]) == (
        3, "DEAD", "bad payload", "pump-a")
    assert dead["created_iso"] == iso_ms(T0 + 3000) == "2023-11-14T22:13:23.000Z"
    assert dead["created_time"] == T0 + 3000 and dead["lane"] == "NORMAL"
    assert (other["seq"], other["entity_name"], other["entity_id"]) == (2, None, str(B))


def test_parse_query_keeps_the_old_parameters_and_names_bad_ones() -> None:
    q = parse_query({"status": "dead", "entity": str(A), "after_seq": "5", "limit": "7"})
    assert (q.status, q.entity, q.after, q.limit, q.order) == (Status.DEAD, A, 5, 7, "asc")
    q = parse_query({"type": "device", "action": "alarm_ack", "from": "1", "to": "2",
                     "before": "9", "order": "desc", "scan": "50"})
    assert (q.type, q.action, q.from_ms, q.to_ms, q.before, q.scan, q.descending) == (
        "DEVICE", "ALARM_ACK", 1, 2, 9, 50, True)
    for bad, word in (({"status": "gone"}, "status"), ({"entity": "x"}, "entity"),
                      ({"limit": "0"}, "limit"), ({"before": "-1"}, "before"),
                      ({"order": "up"}, "order"), ({"from": "5", "to": "4"}, "from")):
        with pytest.raises(BadRequest, match=word):
            parse_query(bad)


def test_purge_and_eviction_remove_the_index_entries(store: LmdbStore) -> None:
    log = EventLog(store)
    assert store.write(lambda txn: log.purge_deployed(txn, older_than_ms=T0 + 1, limit=100)) == 18
    ev = store.write(lambda txn: log.evict_oldest_normal(txn, count=2))
    assert ev is not None and (ev.first_seq, ev.last_seq) == (26, 27)
    with store.read() as txn:
        index = [(codec.to_uuid(k[:16], "k"), codec.from_u64(k[16:]))
                 for k in txn.cursor(db=store.dbs["events_by_entity"]).iternext(values=False)]
    assert index == [(A, 3), (A, 21), (A, 23), (A, 25), (A, 29),
                     (B, 4), (B, 22), (B, 24), (B, 28), (B, 30)]
    assert seqs(store, entity=B, order="desc") == ([30, 28, 24, 22, 4], None, None, False)


def test_index_built_once_for_a_store_made_before_it(tmp_path: Path) -> None:
    s = LmdbStore(tmp_path / "old")
    _append(s, [_event(A), _event(B), _event(A)], T0)

    def forget(txn: Any) -> None:  # what a store of the release before the index looks like
        txn.drop(s.dbs["events_by_entity"], delete=False)
        txn.delete(b"entity_index", db=s.dbs["meta"])

    s.write(forget)
    with s.read() as txn:
        assert not EventLog(s).entity_index_ready(txn)
        # until built, the entity filter scans the log
        assert [e.seq for e in EventLog(s).iter_events(txn, entity_id=A)] == [1, 3]
    s.close()
    s = LmdbStore(tmp_path / "old")  # opening reads nothing: the agent's queue builds it
    try:
        with s.read() as txn:
            assert not EventLog(s).entity_index_ready(txn)
        assert ensure_entity_index(s) == 3
        with s.read() as txn:
            assert EventLog(s).entity_index_ready(txn)
            assert s.entries(txn, "events_by_entity") == 3
        assert seqs(s, entity=A) == ([1, 3], None, None, False)
        assert ensure_entity_index(s) == 0  # once only
    finally:
        s.close()


def _index(s: LmdbStore) -> list[tuple[uuid.UUID, int]]:
    with s.read() as txn:
        return [(codec.to_uuid(k[:16], "k"), codec.from_u64(k[16:]))
                for k in txn.cursor(db=s.dbs["events_by_entity"]).iternext(values=False)]


def test_a_build_cut_short_resumes_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    """25 events in chunks of 10: a build killed after its second chunk (a start timeout,
    kill -9) resumes at seq 21 at the next open, not at seq 1."""
    import edge_sync.storage.event_log as event_log

    s = LmdbStore(tmp_path / "old")
    _append(s, [_event(A if i % 2 else B) for i in range(25)], T0)
    s.write(lambda txn: (txn.drop(s.dbs["events_by_entity"], delete=False),
                         txn.delete(b"entity_index", db=s.dbs["meta"])))
    monkeypatch.setattr(event_log, "_INDEX_BUILD_CHUNK", 10)
    chunks: list[int] = []
    real_write = s.write

    def dying_write(fn: Any, *, maintenance: bool = False) -> Any:
        if len(chunks) == 2:
            raise KeyboardInterrupt("killed")  # stands in for kill -9 between transactions
        out = real_write(fn, maintenance=maintenance)
        chunks.append(out[0])
        return out

    monkeypatch.setattr(s, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ensure_entity_index(s)
    monkeypatch.setattr(s, "write", real_write)
    assert chunks == [10, 10]
    assert len(_index(s)) == 20
    with s.read() as txn:
        assert not EventLog(s).entity_index_ready(txn)
        assert s.meta_int(txn, b"entity_index_upto") == 20
    assert ensure_entity_index(s) == 5  # only what the cut build had not reached
    with s.read() as txn:
        assert EventLog(s).entity_index_ready(txn)
    assert sorted(seq for _e, seq in _index(s)) == list(range(1, 26))
    s.close()


def test_a_store_an_earlier_release_wrote_to_is_indexed_again(tmp_path: Path) -> None:
    """An earlier release appends and purges without the index: the next open sees the
    number of unindexed events change and rebuilds it from the log."""
    s = LmdbStore(tmp_path / "store")
    _append(s, [_event(A), _event(B)], T0)
    assert ensure_entity_index(s) == 0  # a new store is indexed as it is appended to
    # what an earlier release leaves: an event appended without its entry, another purged
    # with its entry left behind
    _append(s, [_event(B)], T0)
    s.write(lambda txn: (txn.delete(B.bytes + codec.u64(3), db=s.dbs["events_by_entity"]),
                         txn.delete(codec.u64(2), db=s.dbs["events"])))
    assert _index(s) == [(A, 1), (B, 2)]  # as many unindexed events as before: 0
    s.close()
    s = LmdbStore(tmp_path / "store")
    try:
        assert ensure_entity_index(s) == 2
        assert _index(s) == [(A, 1), (B, 3)]
        assert seqs(s, entity=B) == ([3], None, None, False)
        assert ensure_entity_index(s) == 0
    finally:
        s.close()
