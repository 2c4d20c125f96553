"""RuleStore on a real LMDB store in tmp_path: rule state records, local timeseries points (range
reads by key and time, limits, replacement), the bytes a write stores (a row per point, an expiry
index entry per key), the purge by expiry in bounded batches, deleting an entity's rule data, a
read-only open of a store without the rule tables, and a store of the earlier index (an entry per
point) read and purged after the upgrade.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.errors import StorageCorrupt, Unstorable
from edge_sync.storage import codec
from edge_sync.storage.env import DB_NAMES, LATER_DB_NAMES, LmdbStore
from edge_sync.storage.rule_store import (
    LOCAL_EXPIRY,
    LOCAL_EXPIRY_SETS,
    LOCAL_TS,
    MAX_LOCAL_KEY_BYTES,
    STATE,
    TABLES,
    LocalPurge,
    RuleStore,
)
from edge_sync.storage.usage import storage_usage

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


def raw_table(store: LmdbStore, name: str) -> list[tuple[bytes, bytes]]:
    with store.read() as txn, txn.cursor(db=store.dbs[name]) as cur:
        return [(bytes(k), bytes(v)) for k, v in cur.iternext()]


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def row_prefix(entity: uuid.UUID, key: str) -> bytes:
    """The documented row key up to the ts: entity, key length (u16), key (UTF-8)."""
    raw = key.encode()
    return entity.bytes + struct.pack(">H", len(raw)) + raw


def purge(store: LmdbStore, rules: RuleStore, now_ms: int, limit: int) -> int:
    return int(write(store, lambda txn: rules.purge_expired_batch(txn, now_ms, limit).points))


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
    # the first write's entry went with the point it listed
    assert [(k, codec.unpack(v, "entry")) for k, v in raw_table(store, LOCAL_EXPIRY_SETS)] == [
        (u64(5_000) + row_prefix(E1, "t") + u64(1), u64(1))]
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 4_999, 100).points) == 0
    assert series(store, rules, E1, None) == {"t": [(1, "new")]}
    # kept until deleted now: in no entry
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "kept"),)),), None))
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 1 << 62, 100).points) == 0
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
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 0}
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 10, 5).points) == 1
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


# -- what a write stores -------------------------------------------------------------------------


def test_a_write_stores_a_row_per_point_and_an_expiry_entry_per_key(store: LmdbStore,
                                                                     rules: RuleStore) -> None:
    entries = ((30, (("t", 3.5), ("h", "x"))), (10, (("t", 1),)), (20, (("t", None), ("h", [2]))))
    assert write(store, lambda txn: rules.put_local(txn, E1, entries, 7_000)) == 5
    t, h = row_prefix(E1, "t"), row_prefix(E1, "h")
    assert raw_table(store, LOCAL_TS) == [
        (h + u64(20), codec.pack((7_000, [2]))), (h + u64(30), codec.pack((7_000, "x"))),
        (t + u64(10), codec.pack((7_000, 1))), (t + u64(20), codec.pack((7_000, None))),
        (t + u64(30), codec.pack((7_000, 3.5)))]
    # named by expiry, series and first ts written; listing the ts in the order written
    assert [(k, codec.unpack(v, "entry")) for k, v in raw_table(store, LOCAL_EXPIRY_SETS)] == [
        (u64(7_000) + h + u64(30), u64(30) + u64(20)),
        (u64(7_000) + t + u64(30), u64(30) + u64(10) + u64(20))]
    assert raw_table(store, LOCAL_EXPIRY) == []
    # kept until the entity is deleted: rows only
    assert write(store, lambda txn: rules.put_local(txn, E2, ((5, (("t", 0),)),), None)) == 1
    assert counts(store) == {STATE: 0, LOCAL_TS: 6, LOCAL_EXPIRY_SETS: 2, LOCAL_EXPIRY: 0}
    assert write(store, lambda txn: rules.put_local(txn, E2, (), 9)) == 0
    assert write(store, lambda txn: rules.put_local(txn, E2, ((6, ()),), 9)) == 0
    assert counts(store) == {STATE: 0, LOCAL_TS: 6, LOCAL_EXPIRY_SETS: 2, LOCAL_EXPIRY: 0}


def test_writes_of_one_series_expiry_and_first_ts_share_an_entry(store: LmdbStore,
                                                                rules: RuleStore) -> None:
    """Two posts of a device in one commit (one ``now``, so one expiry) starting at the same ts."""
    def both(txn: Any) -> None:
        rules.put_local(txn, E1, ((1, (("t", "a"),)), (2, (("t", "b"),))), 1_000)
        rules.put_local(txn, E1, ((1, (("t", "c"),)), (3, (("t", "d"),))), 1_000)

    write(store, both)
    assert series(store, rules, E1, None) == {"t": [(1, "c"), (2, "b"), (3, "d")]}
    assert [(k, codec.unpack(v, "entry")) for k, v in raw_table(store, LOCAL_EXPIRY_SETS)] == [
        (u64(1_000) + row_prefix(E1, "t") + u64(1), u64(2) + u64(1) + u64(3))]
    assert purge(store, rules, 1_000, 100) == 3
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_an_unstorable_point_leaves_the_whole_post_unwritten(store: LmdbStore,
                                                             rules: RuleStore) -> None:
    refused: list[str] = []

    def post(txn: Any) -> None:
        for entries in (((1, (("t", 1), ("u", 1 << 70))),), ((1, (("t", 1),)), (-2, (("t", 2),))),
                        ((1, (("t", 1),)), (2, (("t", 1), ("\udc80", 2))))):
            try:
                rules.put_local(txn, E1, entries, 50)
            except Unstorable as exc:
                refused.append(str(exc))

    write(store, post)  # committed: what was written before a refusal would be kept
    assert refused == ["value cannot be stored (Integer value out of range)",
                       "timestamp -2 cannot be stored (0 .. 2^64-1)",
                       "text cannot be stored (surrogates not allowed)"]
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_writes_and_purges_are_the_callers_transaction(store: LmdbStore, rules: RuleStore) -> None:
    """A transaction that fails after the write or the purge leaves the store as it was."""
    def then_fail(fn: Callable[[Any], object]) -> None:
        def body(txn: Any) -> None:
            fn(txn)
            raise RuntimeError("power cut")

        with pytest.raises(RuntimeError, match="power cut"):
            store.write(body)

    then_fail(lambda txn: rules.put_local(txn, E1, ((1, (("t", 1),)),), 1_000))
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}
    entries = tuple((ts, (("t", ts),)) for ts in range(4))
    write(store, lambda txn: rules.put_local(txn, E1, entries, 1_000))
    before = (raw_table(store, LOCAL_TS), raw_table(store, LOCAL_EXPIRY_SETS))
    then_fail(lambda txn: rules.purge_expired_batch(txn, 1_000, 2).points)  # would rewrite the entry
    then_fail(lambda txn: rules.purge_expired_batch(txn, 1_000, 10).points)
    then_fail(lambda txn: rules.delete_entity(txn, E1))
    assert (raw_table(store, LOCAL_TS), raw_table(store, LOCAL_EXPIRY_SETS)) == before


# -- purge and delete ---------------------------------------------------------------------------


def test_purge_takes_the_soonest_expiring_first_across_entries(store: LmdbStore,
                                                               rules: RuleStore) -> None:
    def fill(txn: Any) -> None:
        rules.put_local(txn, E2, ((1, (("a", 1),)), (2, (("a", 2),))), 3_000)
        rules.put_local(txn, E1, ((3, (("b", 3),)), (1, (("b", 1),)), (2, (("b", 2),))), 1_000)
        rules.put_local(txn, E1, ((1, (("a", 1),)), (2, (("a", 2),))), 2_000)
        rules.put_local(txn, E2, ((7, (("c", 7),)),), 1_000)

    write(store, fill)
    left: Callable[[], tuple[dict[str, Any], dict[str, Any]]] = lambda: (  # noqa: E731
        series(store, rules, E1, None), series(store, rules, E2, None))
    # at 1000: E1's b (in the order written), then E2's c; a batch stops part-way in an entry
    assert purge(store, rules, 10_000, 2) == 2
    assert left() == ({"a": [(1, 1), (2, 2)], "b": [(2, 2)]},
                      {"a": [(1, 1), (2, 2)], "c": [(7, 7)]})
    assert purge(store, rules, 10_000, 2) == 2
    assert left() == ({"a": [(1, 1), (2, 2)]}, {"a": [(1, 1), (2, 2)]})
    assert purge(store, rules, 1_999, 10) == 0
    assert purge(store, rules, 10_000, 3) == 3  # at 2000 E1's a, then the first of E2's a
    assert left() == ({}, {"a": [(2, 2)]})
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 0}
    assert purge(store, rules, 2_999, 10) == 0
    assert purge(store, rules, 3_000, 0) == 0
    assert purge(store, rules, 3_000, 10) == 1
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_a_point_written_again_is_purged_at_its_new_expiry_only(store: LmdbStore,
                                                                rules: RuleStore) -> None:
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", 1),)), (2, (("t", 2),))), 1_000))
    write(store, lambda txn: rules.put_local(txn, E1, ((2, (("t", "later"),)),), 5_000))
    write(store, lambda txn: rules.put_local(txn, E1, ((3, (("t", 3),)),), 9_000))
    write(store, lambda txn: rules.put_local(txn, E1, ((3, (("t", "sooner"),)),), 2_000))
    # entries left behind by a replaced point delete nothing, and count nothing against the limit
    assert purge(store, rules, 1_000, 1) == 1
    assert series(store, rules, E1, None) == {"t": [(2, "later"), (3, "sooner")]}
    assert purge(store, rules, 2_000, 10) == 1
    assert series(store, rules, E1, None) == {"t": [(2, "later")]}
    assert purge(store, rules, 4_999, 10) == 0
    assert purge(store, rules, 5_000, 10) == 1
    assert purge(store, rules, 9_000, 10) == 0
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def expiry_sets(store: LmdbStore) -> list[tuple[bytes, bytes]]:
    """rule_local_expiry_sets as (name, the ts it lists), in key order."""
    return [(k, codec.unpack(v, "entry")) for k, v in raw_table(store, LOCAL_EXPIRY_SETS)]


def test_a_point_written_again_n_times_is_listed_once(store: LmdbStore,
                                                      rules: RuleStore) -> None:
    """A bucket the chain updates on every message: the index holds one entry for the point,
    not one per write (the space counted against storage.max_size_mb stays that of one)."""
    t = row_prefix(E1, "t")
    for i in range(60):  # 60 commits, each a later expiry
        write(store, lambda txn, i=i: rules.put_local(txn, E1, ((7, (("t", i),)),), 1_000 + i))
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 0}
    assert expiry_sets(store) == [(u64(1_059) + t + u64(7), u64(7))]

    def burst(txn: Any) -> None:  # 40 writes in one commit, one expiry: one entry's name
        for i in range(40):
            rules.put_local(txn, E1, ((7, (("t", -i),)),), 2_000)

    write(store, burst)
    assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 0}
    assert expiry_sets(store) == [(u64(2_000) + t + u64(7), u64(7))]
    assert series(store, rules, E1, None) == {"t": [(7, -39)]}
    assert purge(store, rules, 1_999, 100) == 0
    assert purge(store, rules, 2_000, 100) == 1
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_a_point_written_again_leaves_its_neighbours_listed(store: LmdbStore,
                                                            rules: RuleStore) -> None:
    t, h = row_prefix(E1, "t"), row_prefix(E1, "h")
    write(store, lambda txn: rules.put_local(
        txn, E1, tuple((ts, (("t", ts), ("h", ts))) for ts in (1, 2, 3)), 1_000))
    # ts 2 of t again, with ts 4 new: one post that replaces a point and adds one
    write(store, lambda txn: rules.put_local(txn, E1, ((2, (("t", "b"),)), (4, (("t", 4),))),
                                             3_000))
    assert expiry_sets(store) == [(u64(1_000) + h + u64(1), u64(1) + u64(2) + u64(3)),
                                  (u64(1_000) + t + u64(1), u64(1) + u64(3)),
                                  (u64(3_000) + t + u64(2), u64(2) + u64(4))]
    # the first and last of t again, kept until deleted: the entry at 1000 of t goes
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "a"),)), (3, (("t", "c"),))),
                                             None))
    assert expiry_sets(store) == [(u64(1_000) + h + u64(1), u64(1) + u64(2) + u64(3)),
                                  (u64(3_000) + t + u64(2), u64(2) + u64(4))]
    assert purge(store, rules, 1_000, 100) == 3
    assert series(store, rules, E1, None) == {"t": [(1, "a"), (2, "b"), (3, "c"), (4, 4)]}
    assert purge(store, rules, 3_000, 100) == 2
    assert series(store, rules, E1, None) == {"t": [(1, "a"), (3, "c")]}
    assert counts(store) == {STATE: 0, LOCAL_TS: 2, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_points_written_again_leave_each_entry_of_their_expiry(store: LmdbStore,
                                                              rules: RuleStore) -> None:
    """Two posts of one commit (one expiry) make two entries of one series; one post writing a
    point of each again takes it out of both."""
    t = row_prefix(E1, "t")

    def two_posts(txn: Any) -> None:
        rules.put_local(txn, E1, ((1, (("t", 1),)), (2, (("t", 2),))), 1_000)
        rules.put_local(txn, E1, ((3, (("t", 3),)), (4, (("t", 4),))), 1_000)

    write(store, two_posts)
    write(store, lambda txn: rules.put_local(txn, E1, ((3, (("t", "c"),)), (2, (("t", "b"),))),
                                             2_000))
    assert expiry_sets(store) == [(u64(1_000) + t + u64(1), u64(1)),
                                  (u64(1_000) + t + u64(3), u64(4)),
                                  (u64(2_000) + t + u64(3), u64(3) + u64(2))]
    assert purge(store, rules, 1_000, 100) == 2
    assert series(store, rules, E1, None) == {"t": [(2, "b"), (3, "c")]}


@pytest.mark.parametrize(("second", "purges"), [
    (5_000, [(4_999, 0), (5_000, 1)]),  # later
    (500, [(499, 0), (500, 1)]),  # earlier
    (None, [(1 << 62, 0)]),  # kept until the entity is deleted
])
def test_a_point_written_again_is_purged_at_its_second_expiry(
        store: LmdbStore, rules: RuleStore, second: int | None,
        purges: list[tuple[int, int]]) -> None:
    t = row_prefix(E1, "t")
    write(store, lambda txn: rules.put_local(txn, E1, ((9, (("t", "first"),)),), 1_000))
    write(store, lambda txn: rules.put_local(txn, E1, ((9, (("t", "second"),)),), second))
    assert expiry_sets(store) == ([] if second is None else [(u64(second) + t + u64(9), u64(9))])
    assert raw_table(store, LOCAL_TS) == [(t + u64(9), codec.pack((second, "second")))]
    for now, purged in purges:
        assert purge(store, rules, now, 100) == purged
    assert counts(store) == {STATE: 0, LOCAL_TS: 0 if second else 1, LOCAL_EXPIRY_SETS: 0,
                             LOCAL_EXPIRY: 0}


def test_a_post_with_a_point_twice_keeps_the_later_value_listed_once(store: LmdbStore,
                                                                     rules: RuleStore) -> None:
    t = row_prefix(E1, "t")
    twice = ((5, (("t", "a"),)), (6, (("t", "b"),)), (5, (("t", "c"), ("t", "d"))))
    assert write(store, lambda txn: rules.put_local(txn, E1, twice, 1_000)) == 4
    assert series(store, rules, E1, None) == {"t": [(5, "d"), (6, "b")]}
    assert expiry_sets(store) == [(u64(1_000) + t + u64(5), u64(5) + u64(6))]
    # again, over points kept already: their entry at 1000 goes, the new one lists each once
    again = ((6, (("t", "e"),)), (5, (("t", "f"),)), (6, (("t", "g"),)))
    assert write(store, lambda txn: rules.put_local(txn, E1, again, 2_000)) == 3
    assert series(store, rules, E1, None) == {"t": [(5, "f"), (6, "g")]}
    assert expiry_sets(store) == [(u64(2_000) + t + u64(6), u64(6) + u64(5))]
    assert counts(store) == {STATE: 0, LOCAL_TS: 2, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 0}
    assert purge(store, rules, 2_000, 100) == 2
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_a_damaged_point_written_again_is_replaced(store: LmdbStore, rules: RuleStore) -> None:
    """Its previous expiry cannot be read: the write replaces it all the same."""
    row = row_prefix(E1, "t") + u64(1)
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", 1),)),), 1_000))
    write(store, lambda txn: txn.put(row, b"\x00garbage", db=store.dbs[LOCAL_TS]))
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", 2),)),), 2_000))
    assert series(store, rules, E1, None) == {"t": [(1, 2)]}
    assert purge(store, rules, 1_000, 100) == 0  # the entry at 1000 deletes nothing
    assert purge(store, rules, 2_000, 100) == 1
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_a_damaged_expiry_entry_is_reported_naming_its_table(store: LmdbStore,
                                                             rules: RuleStore) -> None:
    write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", 1),)),), 1_000))
    ((name, value),) = raw_table(store, LOCAL_EXPIRY_SETS)
    damaged = value[:-1] + bytes([value[-1] ^ 0x01])
    write(store, lambda txn: txn.put(name, damaged, db=store.dbs[LOCAL_EXPIRY_SETS]))
    entry = f"{LOCAL_EXPIRY_SETS}: {E1} 't' from 1 expiring at 1000"
    with pytest.raises(StorageCorrupt, match=f"^{entry}: damaged record \\(checksum mismatch\\)$"):
        purge(store, rules, 1_000, 10)
    write(store, lambda txn: txn.put(name, codec.pack(b"1234567"), db=store.dbs[LOCAL_EXPIRY_SETS]))
    with pytest.raises(StorageCorrupt, match=f"^{entry}: record of an unexpected shape$"):
        purge(store, rules, 1_000, 10)
    assert series(store, rules, E1, None) == {"t": [(1, 1)]}



def test_purge_expired_exact_counts_in_bounded_batches(store: LmdbStore,
                                                       rules: RuleStore) -> None:
    # 5 points expiring at 1000, 3 at 2000, 2 never
    write(store, lambda txn: rules.put_local(
        txn, E1, tuple((ts, (("t", ts),)) for ts in range(5)), 1_000))
    write(store, lambda txn: rules.put_local(
        txn, E2, tuple((ts, (("t", ts),)) for ts in range(3)), 2_000))
    write(store, lambda txn: rules.put_local(txn, E2, ((99, (("k", 0), ("j", 1))),), None))
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 999, 100).points) == 0
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 1_000, 2).points) == 2
    assert series(store, rules, E1, None) == {"t": [(2, 2), (3, 3), (4, 4)]}
    assert counts(store)[LOCAL_EXPIRY_SETS] == 2  # E1's entry keeps the three points left
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 1_000, 2).points) == 2
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 1_000, 2).points) == 1
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 1_000, 2).points) == 0
    assert series(store, rules, E1, None) == {}
    assert counts(store) == {STATE: 0, LOCAL_TS: 5, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 0}
    assert write(store, lambda txn: rules.purge_expired_batch(txn, 10_000, 100).points) == 3
    assert series(store, rules, E2, None) == {"j": [(99, 1)], "k": [(99, 0)]}
    assert counts(store) == {STATE: 0, LOCAL_TS: 2, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_delete_entity_takes_its_state_and_points_only(store: LmdbStore,
                                                       rules: RuleStore) -> None:
    def fill(txn: Any) -> None:
        for eid in (E1, E2):
            rules.put_state(txn, eid, {"of": str(eid)})
            rules.put_local(txn, eid, ((1, (("a", 1), ("b", 2))), (2, (("a", 3),))), 5_000)
            rules.put_local(txn, eid, ((3, (("c", 4),)),), None)

    write(store, fill)
    # one expiry entry per entity and key written with an expiry (a, b)
    assert counts(store) == {STATE: 2, LOCAL_TS: 8, LOCAL_EXPIRY_SETS: 4, LOCAL_EXPIRY: 0}
    assert write(store, lambda txn: rules.delete_entity(txn, E1)) == 5
    assert counts(store) == {STATE: 1, LOCAL_TS: 4, LOCAL_EXPIRY_SETS: 2, LOCAL_EXPIRY: 0}
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
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_delete_entity_takes_the_expiry_entries_of_its_points(store: LmdbStore,
                                                              rules: RuleStore) -> None:
    def fill(txn: Any) -> None:
        for eid in (E1, E2):
            rules.put_local(txn, eid, ((1, (("a", 1), ("b", 2))),), 1_000)
            rules.put_local(txn, eid, ((2, (("a", 3),)),), 2_000)

    write(store, fill)
    assert write(store, lambda txn: rules.delete_entity(txn, E1)) == 3
    assert [k for k, _ in raw_table(store, LOCAL_EXPIRY_SETS)] == [
        u64(1_000) + row_prefix(E2, "a") + u64(1), u64(1_000) + row_prefix(E2, "b") + u64(1),
        u64(2_000) + row_prefix(E2, "a") + u64(2)]
    assert purge(store, rules, 1 << 62, 100) == 3
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


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


# -- a store of the earlier expiry index ----------------------------------------------------------

EARLIER_NAMES = tuple(n for n in DB_NAMES if n != LOCAL_EXPIRY_SETS)
"""The databases of the release before the expiry sets."""


def earlier_put_local(txn: Any, dbs: dict[str, Any], entity: uuid.UUID,
                      entries: tuple[tuple[int, tuple[tuple[str, Any], ...]], ...],
                      expires_at_ms: int | None) -> None:
    """What that release's put_local stored, byte for byte: a row per point, and an entry per
    point in rule_local_expiry (expiry + row -> empty)."""
    for ts, pairs in entries:
        for key, value in pairs:
            row = row_prefix(entity, key) + u64(ts)
            txn.put(row, codec.pack((expires_at_ms, value)), db=dbs[LOCAL_TS])
            if expires_at_ms is not None:
                txn.put(u64(expires_at_ms) + row, b"", db=dbs[LOCAL_EXPIRY])


def test_a_store_of_the_earlier_index_is_read_and_purged_after_the_upgrade(
        tmp_path: Path) -> None:
    path = tmp_path / "store"
    old = LmdbStore(path, initial_map_mb=4, max_size_mb=16, db_names=EARLIER_NAMES)

    def fill(txn: Any) -> None:
        earlier_put_local(txn, old.dbs, E1, ((1, (("t", "o1"),)), (2, (("t", "o2"),))), 1_000)
        earlier_put_local(txn, old.dbs, E1, ((3, (("t", "o3"),)),), 3_000)
        earlier_put_local(txn, old.dbs, E2, ((1, (("t", "x"),)),), 3_000)
        earlier_put_local(txn, old.dbs, E2, ((9, (("k", "kept"),)),), None)

    old.write(fill)
    old.close()

    # read-only (``edge-sync status`` with the agent stopped): the points, without the new table
    ro = LmdbStore(path, readonly=True)
    try:
        assert LOCAL_EXPIRY_SETS not in ro.dbs
        readonly = RuleStore(ro)
        assert readonly.present
        with ro.read() as txn:
            assert readonly.local_series(txn, E1, None, 0, 100, 10) == {
                "t": [(1, "o1"), (2, "o2"), (3, "o3")]}
            assert readonly.local_points(txn) == 5
    finally:
        ro.close()

    store = LmdbStore(path, initial_map_mb=4, max_size_mb=16)
    try:
        rules = RuleStore(store)
        assert counts(store) == {STATE: 0, LOCAL_TS: 5, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 4}
        # a new write between the old expiries, E1's ts 2 again among it (its old entry goes)
        write(store, lambda txn: rules.put_local(
            txn, E1, ((2, (("t", "n2"),)), (4, (("t", "n4"),))), 2_000))
        assert counts(store) == {STATE: 0, LOCAL_TS: 6, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 3}
        with store.read() as txn:
            u = storage_usage(store, txn)
            assert u.local_points == 6
            assert u.local_timeseries == sum(
                (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
                for st in (txn.stat(store.dbs[name])
                           for name in (LOCAL_TS, LOCAL_EXPIRY_SETS, LOCAL_EXPIRY)))
        # at 1000: ts 1 only (ts 2 expires at 2000 now); the old entries at 1000 are gone
        assert purge(store, rules, 1_000, 10) == 1
        assert series(store, rules, E1, None) == {"t": [(2, "n2"), (3, "o3"), (4, "n4")]}
        assert counts(store) == {STATE: 0, LOCAL_TS: 5, LOCAL_EXPIRY_SETS: 1, LOCAL_EXPIRY: 2}
        # soonest first across both indexes: 2000 (new: ts 2 and 4), then 3000 (old: E1's ts 3)
        assert purge(store, rules, 1 << 62, 3) == 3
        assert series(store, rules, E1, None) == {}
        assert series(store, rules, E2, None) == {"k": [(9, "kept")], "t": [(1, "x")]}
        assert counts(store) == {STATE: 0, LOCAL_TS: 2, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 1}
        # deleting an entity takes its entries of the old index too
        assert write(store, lambda txn: rules.delete_entity(txn, E2)) == 2
        assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}
        assert purge(store, rules, 1 << 62, 10) == 0
    finally:
        store.close()


def test_old_and_new_entries_of_one_expiry_purge_the_old_first(tmp_path: Path) -> None:
    path = tmp_path / "store"
    old = LmdbStore(path, initial_map_mb=4, max_size_mb=16, db_names=EARLIER_NAMES)
    old.write(lambda txn: earlier_put_local(txn, old.dbs, E2, ((5, (("t", "old"),)),), 1_000))
    old.close()
    store = LmdbStore(path, initial_map_mb=4, max_size_mb=16)
    try:
        rules = RuleStore(store)
        write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "new"),)),), 1_000))
        assert purge(store, rules, 1_000, 1) == 1
        assert (series(store, rules, E1, None), series(store, rules, E2, None)) == (
            {"t": [(1, "new")]}, {})
        assert purge(store, rules, 1_000, 1) == 1
        assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}
    finally:
        store.close()


def test_a_point_of_the_earlier_index_written_again_leaves_that_index(tmp_path: Path) -> None:
    """The earlier release's entry of a point written again goes with the write, as that
    release's own write did, rather than wait for its time."""
    path = tmp_path / "store"
    old = LmdbStore(path, initial_map_mb=4, max_size_mb=16, db_names=EARLIER_NAMES)
    old.write(lambda txn: earlier_put_local(
        txn, old.dbs, E1, ((1, (("t", "o1"),)), (2, (("t", "o2"),)), (3, (("t", "o3"),))), 1_000))
    old.close()
    store = LmdbStore(path, initial_map_mb=4, max_size_mb=16)
    try:
        rules = RuleStore(store)
        t = row_prefix(E1, "t")
        write(store, lambda txn: rules.put_local(txn, E1, ((1, (("t", "n1"),)),), 5_000))
        write(store, lambda txn: rules.put_local(txn, E1, ((2, (("t", "n2"),)),), None))
        assert raw_table(store, LOCAL_EXPIRY) == [(u64(1_000) + t + u64(3), b"")]
        assert expiry_sets(store) == [(u64(5_000) + t + u64(1), u64(1))]
        assert purge(store, rules, 1_000, 100) == 1
        assert series(store, rules, E1, None) == {"t": [(1, "n1"), (2, "n2")]}
        assert purge(store, rules, 5_000, 100) == 1
        assert counts(store) == {STATE: 0, LOCAL_TS: 1, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}
    finally:
        store.close()


def stale_ahead(store: LmdbStore, rules: RuleStore) -> None:
    """E1's ten points written at expiry 1000, then written again by an earlier release run on
    the store (expiry 5000, in its own index only: the entry at 1000 lists ten ts that delete
    nothing), and E2's three points expiring at 2000 behind them."""
    write(store, lambda txn: rules.put_local(
        txn, E1, tuple((ts, (("t", ts),)) for ts in range(10)), 1_000))
    write(store, lambda txn: earlier_put_local(
        txn, store.dbs, E1, tuple((ts, (("t", -ts),)) for ts in range(10)), 5_000))
    write(store, lambda txn: rules.put_local(
        txn, E2, tuple((ts, (("t", ts),)) for ts in range(3)), 2_000))


def test_a_purge_visits_at_most_four_listings_per_point_it_may_delete(
        store: LmdbStore, rules: RuleStore) -> None:
    stale_ahead(store, rules)
    e1, e2 = row_prefix(E1, "t"), row_prefix(E2, "t")
    # limit 2: 8 listings, all of them stale; the entry keeps the two it did not visit
    assert purge(store, rules, 3_000, 2) == 0
    assert expiry_sets(store) == [(u64(1_000) + e1 + u64(0), u64(8) + u64(9)),
                                  (u64(2_000) + e2 + u64(0), u64(0) + u64(1) + u64(2))]
    # the next batch goes on: the last two stale listings, then two of E2's points
    assert purge(store, rules, 3_000, 2) == 2
    assert expiry_sets(store) == [(u64(2_000) + e2 + u64(0), u64(2))]
    assert purge(store, rules, 3_000, 2) == 1
    assert purge(store, rules, 3_000, 2) == 0
    assert series(store, rules, E1, None) == {"t": [(ts, -ts) for ts in range(10)]}
    assert series(store, rules, E2, None) == {}
    assert counts(store) == {STATE: 0, LOCAL_TS: 10, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 10}
    # the earlier release's entries count as visits too: 1 point, then the limit
    assert purge(store, rules, 5_000, 1) == 1
    assert purge(store, rules, 5_000, 100) == 9
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}


def test_a_purge_batch_tells_points_stale_listings_and_whether_it_stopped_short(
        store: LmdbStore, rules: RuleStore) -> None:
    stale_ahead(store, rules)

    def batch(now_ms: int, limit: int) -> LocalPurge:
        return write(store, lambda txn: rules.purge_expired_batch(txn, now_ms, limit))

    assert batch(3_000, 0) == LocalPurge(points=0, stale=0, more=False)
    assert batch(3_000, 2) == LocalPurge(points=0, stale=8, more=True)
    assert batch(3_000, 2) == LocalPurge(points=2, stale=2, more=True)
    assert batch(3_000, 1) == LocalPurge(points=1, stale=0, more=True)  # at its limit
    assert batch(3_000, 1) == LocalPurge(points=0, stale=0, more=False)  # next not due
    # at its limit with no entry left: nothing more
    assert batch(5_000, 10) == LocalPurge(points=10, stale=0, more=False)
    assert counts(store) == {STATE: 0, LOCAL_TS: 0, LOCAL_EXPIRY_SETS: 0, LOCAL_EXPIRY: 0}
