"""The store's usage split into parts (storage/usage.py) on a real LMDB store: the parts add up
to live_bytes exactly, each table's pages land in its part, the event tables are shared out by
the count of events of each status, and each part moves as events are appended, delivered,
purged and dead-lettered, and as local points and latest values are written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Lane, NewEvent
from edge_sync.storage.rule_store import RuleStore
from edge_sync.storage.usage import PARTS, StorageUsage, storage_usage

DEVICE = uuid.UUID(int=0xD1)
PAD = "p" * 400
NOW = 1_767_225_600_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "store", initial_map_mb=16, max_size_mb=64)
    yield s
    s.close()


def usage(store: LmdbStore) -> StorageUsage:
    with store.read() as txn:
        return storage_usage(store, txn)


def table_bytes(store: LmdbStore, *names: str) -> int:
    with store.read() as txn:
        total = 0
        for name in names:
            st = txn.stat(store.dbs[name])
            total += (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
        return total


def live(store: LmdbStore) -> int:
    with store.read() as txn:
        return store.live_bytes(txn)


def append(store: LmdbStore, n: int, lane: Lane = Lane.NORMAL) -> None:
    log = EventLog(store)

    def write(txn: lmdb.Transaction) -> None:
        events = [NewEvent("DEVICE", "DEVICE", DEVICE, Action.TIMESERIES_UPDATED,
                           {"ts": i, "values": {"v": i, "pad": PAD}}, i, lane)
                  for i in range(n)]
        log.append(txn, events, first_seq=log.next_seq(txn), created_time=NOW,
                   tenant_id=bytes(16), edge_id=bytes(16))
    store.write(write)


def check_sum(u: StorageUsage, store: LmdbStore) -> None:
    assert u.used == sum(u.parts().values()) == live(store)
    assert list(u.parts()) == list(PARTS)


def test_an_empty_store_is_all_other(store: LmdbStore) -> None:
    u = usage(store)
    check_sum(u, store)
    assert (u.pending, u.delivered, u.local_timeseries, u.latest, u.local_points) == (0, 0, 0, 0, 0)
    assert u.other == u.used == u.unreclaimable > 0


def test_pending_events_then_delivered_then_purged(store: LmdbStore) -> None:
    before = usage(store)
    append(store, 1000)
    u = usage(store)
    check_sum(u, store)
    shared = table_bytes(store, "events", "events_by_entity")
    assert shared > 1000 * 400  # the pads are in the events table
    # every event pending: the event tables and the pending index are all pending
    assert u.pending == shared + table_bytes(store, "pending_high", "pending_normal")
    assert (u.delivered, u.local_timeseries, u.latest, u.other) == (0, 0, 0, before.other)
    assert u.reclaimable == 0 and u.unreclaimable == u.used

    # 600 delivered: the event tables are shared out 400 / 600 by count
    store.write(lambda txn: EventLog(store).mark_deployed(txn, range(1, 601), now_ms=NOW))
    u = usage(store)
    check_sum(u, store)
    assert table_bytes(store, "events", "events_by_entity") == shared  # untouched by the ack
    assert u.pending == shared * 400 // 1000 + table_bytes(store, "pending_normal")
    assert u.delivered == shared * 600 // 1000 + table_bytes(store, "deployed_by_time")
    assert u.reclaimable == u.delivered
    assert u.unreclaimable == u.used - u.delivered
    assert u.other == before.other + shared - shared * 400 // 1000 - shared * 600 // 1000

    # every one delivered: nothing pending, the event tables all delivered
    store.write(lambda txn: EventLog(store).mark_deployed(txn, range(601, 1001), now_ms=NOW))
    u = usage(store)
    check_sum(u, store)
    assert u.pending == table_bytes(store, "pending_normal")  # the emptied index's root, if any
    assert u.delivered == shared + table_bytes(store, "deployed_by_time")
    assert u.unreclaimable == u.used - u.delivered < before.used + 2 * 4096

    # purged: the delivered part is gone, with the pages it held
    store.write(lambda txn: EventLog(store).purge_deployed(txn, older_than_ms=NOW + 1,
                                                           limit=10_000), maintenance=True)
    u = usage(store)
    check_sum(u, store)
    assert table_bytes(store, "events", "events_by_entity", "deployed_by_time") == 0
    assert (u.pending, u.delivered, u.local_timeseries, u.latest) == (0, 0, 0, 0)
    assert u.used == u.other == before.used


def test_a_dead_letter_counts_as_other(store: LmdbStore) -> None:
    before = usage(store)
    append(store, 100, Lane.HIGH)
    store.write(lambda txn: EventLog(store).dead_letter(txn, 1, "rejected", now_ms=NOW))
    u = usage(store)
    check_sum(u, store)
    shared = table_bytes(store, "events", "events_by_entity")
    assert u.pending == shared * 99 // 100 + table_bytes(store, "pending_high")
    assert u.delivered == 0
    assert u.other == before.other + table_bytes(store, "dead") + shared - shared * 99 // 100


def test_local_points_and_latest_values_have_their_parts(store: LmdbStore) -> None:
    append(store, 200)
    store.write(lambda txn: EventLog(store).mark_deployed(txn, range(1, 101), now_ms=NOW))
    events_only = usage(store)
    rules = RuleStore(store)
    entries = [(NOW + i, (("t", i), ("pad", PAD))) for i in range(250)]
    store.write(lambda txn: rules.put_local(txn, DEVICE, entries, expires_at_ms=NOW + 60_000))
    u = usage(store)
    check_sum(u, store)
    assert u.local_points == 500  # two keys, 250 ts
    assert u.local_timeseries == table_bytes(
        store, "rule_local_ts", "rule_local_expiry_sets", "rule_local_expiry")
    assert u.local_timeseries > 250 * 400
    # the events' parts did not move, nor did the rest
    assert (u.pending, u.delivered, u.latest, u.other) == (
        events_only.pending, events_only.delivered, 0, events_only.other)
    # local points are not reclaimable: the health and the alerts count them
    assert u.unreclaimable == u.used - events_only.delivered

    store.write(lambda txn: EntityStore(store).put_latest(
        txn, DEVICE, {"t": (NOW, 1), "pad": (NOW, PAD)}))
    with_latest = usage(store)
    check_sum(with_latest, store)
    assert with_latest.latest == table_bytes(store, "latest_ts") == 4096
    assert with_latest.local_timeseries == u.local_timeseries

    # expired points purged: their part is freed, the count follows
    store.write(lambda txn: rules.purge_expired_batch(txn, NOW + 60_000, 10_000).points, maintenance=True)
    purged = usage(store)
    check_sum(purged, store)
    assert (purged.local_points, purged.local_timeseries) == (0, 0)
    assert purged.used == with_latest.used - u.local_timeseries
