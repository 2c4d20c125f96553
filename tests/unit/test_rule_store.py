"""RuleStore on a real LMDB store in tmp_path: rule state records, local timeseries points (range
reads by key and time, limits, replacement), the purge by expiry in bounded batches, deleting an
entity's rule data, and a read-only open of a store without the rule tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.errors import Unstorable
from edge_sync.storage.env import DB_NAMES, LATER_DB_NAMES, LmdbStore
from edge_sync.storage.rule_store import (
    LOCAL_EXPIRY,
    LOCAL_TS,
    MAX_LOCAL_KEY_BYTES,
    STATE,
    TABLES,
    RuleStore,
)

E1 = uuid.UUID(int=1)
E2 = uuid.UUID(int=2)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "store", initial_map_mb=4, max_size_mb=16)
    yield s
    s.close()


@pytest.fixture
def rules(store: LmdbStore) -> RuleStore:
    return RuleStore(store)


def write(store: LmdbStore, fn: Any) -> Any:
    return store.write(fn)


def series(store: LmdbStore, rules: RuleStore, entity: uuid.UUID, keys: list[str] | None,
           start: int = 0, end: int = 1 << 62, limit: int = 1000
           ) -> dict[str, list[tuple[int, Any]]]:
    with store.read() as txn:
        return rules.local_series(txn, entity, keys, start, end, limit)


def counts(store: LmdbStore) -> dict[str, int]:
    with store.read() as txn:
        return {name: store.entries(txn, name) for name in TABLES}


# -- rule state ---------------------------------------------------------------------------------


def test_tables_are_later_databases_of_the_edge_store() -> None:
    assert set(TABLES) <= set(DB_NAMES)
    assert set(TABLES) <= LATER_DB_NAMES


def test_state_round_trip_replace_and_delete(store: LmdbStore, rules: RuleStore) -> None:
    record = {"seq": 7, "windows": {"#3": {"last_seq": 6, "values": [1.5, 2]}},
              "alarms": {"High": {"id": "a", "severity": "MAJOR"}}, "bin": None}
    write(store, lambda txn: rules.put_state(txn, E1, record))
    with store.read() as txn:
        assert rules.state(txn, E1) == record
        assert rules.state(txn, E2) is None
    write(store, lambda txn: rules.put_state(txn, E1, {"seq": 8}))
    with store.read() as txn:
        assert rules.state(txn, E1) == {"seq": 8}
        assert rules.state_count(txn) == 1
    write(store, lambda txn: rules.put_state(txn, E1, None))
    write(store, lambda txn: rules.put_state(txn, E2, None))  # nothing there: no error
    with store.read() as txn:
        assert rules.state(txn, E1) is None
        assert rules.state_count(txn) == 0


def test_entities_with_state_in_id_order(store: LmdbStore, rules: RuleStore) -> None:
    ids = [uuid.UUID(int=n) for n in (5, 1, 300, 2)]
    for i, eid in enumerate(ids):
        write(store, lambda txn, eid=eid, i=i: rules.put_state(txn, eid, {"n": i}))
    write(store, lambda txn: rules.put_state(txn, ids[0], None))
    with store.read() as txn:
        assert rules.entities_with_state(txn) == [uuid.UUID(int=1), uuid.UUID(int=2),
                                                  uuid.UUID(int=300)]


def test_state_msgpack_cannot_hold_is_unstorable(store: LmdbStore, rules: RuleStore) -> None:
    with pytest.raises(Unstorable):
        write(store, lambda txn: rules.put_state(txn, E1, {"big": 1 << 70}))
    with store.read() as txn:
        assert rules.state(txn, E1) is None


# -- local timeseries ---------------------------------------------------------------------------


def test_points_round_trip_per_key_ascending(store: LmdbStore, rules: RuleStore) -> None:
    entries = ((300, (("t", 3.5), ("h", "x"))), (100, (("t", 1),)), (200, (("t", {"a": [1]}),)))
    assert write(store, lambda txn: rules.put_local(txn, E1, entries, 10_000)) == 4
    assert series(store, rules, E1, None) == {
        "h": [(300, "x")], "t": [(100, 1), (200, {"a": [1]}), (300, 3.5)]}
    assert series(store, rules, E1, ["t"]) == {"t": [(100, 1), (200, {"a": [1]}), (300, 3.5)]}
    assert series(store, rules, E1, ["h", "missing"]) == {"h": [(300, "x")]}
    assert series(store, rules, E2, None) == {}
    with store.read() as txn:
        assert rules.local_points(txn) == 4


def test_time_range_is_start_inclusive_end_exclusive(store: LmdbStore, rules: RuleStore) -> None:
    entries = tuple((ts, (("t", ts // 10),)) for ts in (10, 20, 30, 40))
    write(store, lambda txn: rules.put_local(txn, E1, entries, None))
    assert series(store, rules, E1, ["t"], 20, 40) == {"t": [(20, 2), (30, 3)]}
    assert series(store, rules, E1, None, 20, 40) == {"t": [(20, 2), (30, 3)]}
    assert series(store, rules, E1, ["t"], 41, 100) == {}
    assert series(store, rules, E1, ["t"], 40, 40) == {}
    assert series(store, rules, E1, ["t"], -5, 11) == {"t": [(10, 1)]}


def test_limit_applies_per_key_earliest_first(store: LmdbStore, rules: RuleStore) -> None:
    entries = tuple((ts, (("a", ts), ("b", -ts))) for ts in range(1, 6))
    write(store, lambda txn: rules.put_local(txn, E1, entries, None))
    assert series(store, rules, E1, None, 2, 100, limit=2) == {
        "a": [(2, 2), (3, 3)], "b": [(2, -2), (3, -3)]}
    assert series(store, rules, E1, ["b"], limit=1) == {"b": [(1, -1)]}
    assert series(store, rules, E1, None, limit=0) == {}


def test_keys_that_prefix_each_other_stay_apart(store: LmdbStore, rules: RuleStore) -> None:
    """A key's rows never include those of a longer key starting with it, whatever its bytes."""
    entries = ((5, (("t", 1), ("t\x00", 2), ("tt", 3), ("t\xff", 4))),)
    write(store, lambda txn: rules.put_local(txn, E1, entries, None))
    assert series(store, rules, E1, ["t"]) == {"t": [(5, 1)]}
    assert series(store, rules, E1, ["t\x00"]) == {"t\x00": [(5, 2)]}
    assert series(store, rules, E1, None) == {
        "t": [(5, 1)], "tt": [(5, 3)], "t\x00": [(5, 2)], "t\xff": [(5, 4)]}


def test_entities_stay_apart(store: LmdbStore, rules: RuleStore) -> None:
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "e1"),)),), None))
    write(store, lambda txn: rules.put_local(txn, E2, ((1, (("t", "e2"),)),), None))
    assert series(store, rules, E1, None) == {"t": [(1, "e1")]}
    assert series(store, rules, E2, ["t"]) == {"t": [(1, "e2")]}


def test_point_written_again_replaces_value_and_expiry(store: LmdbStore,
                                                       rules: RuleStore) -> None:
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "old"),)),), 1_000))
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "new"),)),), 5_000))
    assert series(store, rules, E1, None) == {"t": [(1, "new")]}
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY: 1}
    assert write(store, lambda txn: rules.purge_expired(txn, 4_999, 100)) == 0
    assert series(store, rules, E1, None) == {"t": [(1, "new")]}
    # kept until deleted now: no expiry index entry at all
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "kept"),)),), None))
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY: 0}
    assert write(store, lambda txn: rules.purge_expired(txn, 1 << 62, 100)) == 0
    assert series(store, rules, E1, None) == {"t": [(1, "kept")]}


def test_unstorable_points(store: LmdbStore, rules: RuleStore) -> None:
    for entries in (((1, (("k" * (MAX_LOCAL_KEY_BYTES + 1), 1),)),),
                    ((-1, (("t", 1),)),),
                    ((1, (("t", 1 << 70),)),),
                    ((1, (("\udc80", 1),)),)):
        with pytest.raises(Unstorable):
            write(store, lambda txn, e=entries: rules.put_local(txn, E1, e, 10))
    longest = "k" * MAX_LOCAL_KEY_BYTES
    write(store, lambda txn: rules.put_local(txn, E1, ((1, ((longest, 1),)),), 10))
    assert series(store, rules, E1, [longest, "k" * 600]) == {longest: [(1, 1)]}
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY: 1}


# -- purge and delete ---------------------------------------------------------------------------


def test_purge_expired_exact_counts_in_bounded_batches(store: LmdbStore,
                                                       rules: RuleStore) -> None:
    # 5 points expiring at 1000, 3 at 2000, 2 never
    write(store, lambda txn: rules.put_local(
        txn, E1, tuple((ts, (("t", ts),)) for ts in range(5)), 1_000))
    write(store, lambda txn: rules.put_local(
        txn, E2, tuple((ts, (("t", ts),)) for ts in range(3)), 2_000))
    write(store, lambda txn: rules.put_local(txn, E2, ((99, (("k", 0), ("j", 1))),), None))
    assert write(store, lambda txn: rules.purge_expired(txn, 999, 100)) == 0
    assert write(store, lambda txn: rules.purge_expired(txn, 1_000, 2)) == 2
    assert write(store, lambda txn: rules.purge_expired(txn, 1_000, 2)) == 2
    assert write(store, lambda txn: rules.purge_expired(txn, 1_000, 2)) == 1
    assert write(store, lambda txn: rules.purge_expired(txn, 1_000, 2)) == 0
    assert series(store, rules, E1, None) == {}
    assert counts(store) == {STATE: 0, LOCAL_TS: 5, LOCAL_EXPIRY: 3}
    assert write(store, lambda txn: rules.purge_expired(txn, 10_000, 100)) == 3
    assert series(store, rules, E2, None) == {"j": [(99, 1)], "k": [(99, 0)]}
    assert counts(store) == {STATE: 0, LOCAL_TS: 2, LOCAL_EXPIRY: 0}


def test_delete_entity_takes_its_state_and_points_only(store: LmdbStore,
                                                       rules: RuleStore) -> None:
    def fill(txn: Any) -> None:
        for eid in (E1, E2):
            rules.put_state(txn, eid, {"of": str(eid)})
            rules.put_local(txn, eid, ((1, (("a", 1), ("b", 2))), (2, (("a", 3),))), 5_000)
            rules.put_local(txn, eid, ((3, (("c", 4),)),), None)

    write(store, fill)
    assert counts(store) == {STATE: 2, LOCAL_TS: 8, LOCAL_EXPIRY: 6}
    assert write(store, lambda txn: rules.delete_entity(txn, E1)) == 5
    assert counts(store) == {STATE: 1, LOCAL_TS: 4, LOCAL_EXPIRY: 3}
    assert series(store, rules, E1, None) == {}
    assert series(store, rules, E2, None) == {"a": [(1, 1), (2, 3)], "b": [(1, 2)],
                                              "c": [(3, 4)]}
    with store.read() as txn:
        assert rules.entities_with_state(txn) == [E2]
    assert write(store, lambda txn: rules.delete_entity(txn, E1)) == 0


def test_delete_last_entity_and_entity_without_data(store: LmdbStore, rules: RuleStore) -> None:
    last = uuid.UUID(int=(1 << 128) - 1)
    write(store, lambda txn: rules.put_local(txn, last, ((1, (("a", 1),)),), 9))
    assert write(store, lambda txn: rules.delete_entity(txn, E2)) == 0
    assert write(store, lambda txn: rules.delete_entity(txn, last)) == 1
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY: 0}


def test_read_only_store_without_rule_tables_reads_nothing(tmp_path: Path) -> None:
    old_names = tuple(n for n in DB_NAMES if n not in LATER_DB_NAMES)
    old = LmdbStore(tmp_path / "old", initial_map_mb=4, max_size_mb=16, db_names=old_names)
    old.close()
    ro = LmdbStore(tmp_path / "old", readonly=True)
    try:
        rules = RuleStore(ro)
        assert not rules.present
        with ro.read() as txn:
            assert rules.state(txn, E1) is None
            assert rules.entities_with_state(txn) == []
            assert rules.local_series(txn, E1, None, 0, 100, 10) == {}
            assert rules.local_points(txn) == 0
            assert rules.state_count(txn) == 0
    finally:
        ro.close()
