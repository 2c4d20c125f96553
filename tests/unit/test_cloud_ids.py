"""The reference cloud's ids are time-based (version 1) like ThingsBoard's: the generator alone,
then every id the cloud creates (tenant, edges, devices), and stores made before keep theirs."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.common import ids
from tests.helpers.set_clock import SetClock

LOW = 0x8000_0000_0000_0000 | (0x1234 << 48) | (1 << 40) | 0xABCDEF


def test_the_null_uuid_is_thingsboards_and_time_based_at_unix_zero() -> None:
    assert str(ids.NULL_UUID) == "13814000-1dd2-11b2-8080-808080808080"
    assert ids.is_time_based(ids.NULL_UUID)
    assert ids.unix_ms(ids.NULL_UUID) == 0


def test_an_id_carries_its_ms_version_1_and_the_rfc_4122_variant() -> None:
    gen = ids.TimeBasedIds(LOW)
    made = gen.new(1_700_000_000_123)
    assert made.version == 1 and made.variant == uuid.RFC_4122
    assert made.time == ids.GREGORIAN_OFFSET + 1_700_000_000_123 * 10_000
    assert ids.unix_ms(made) == 1_700_000_000_123
    assert made.int & (2**64 - 1) == LOW
    assert made.clock_seq == 0x1234 and made.node == (1 << 40) | 0xABCDEF
    assert str(made) == "04c284b0-833b-11ee-9234-010000abcdef"


def test_ids_made_in_sequence_are_distinct_and_time_ordered_under_a_frozen_or_stepped_back_clock() -> None:
    gen = ids.TimeBasedIds(LOW)
    made = [gen.new(5_000) for _ in range(3)] + [gen.new(4_000), gen.new(6_000)]
    assert [m.time - ids.GREGORIAN_OFFSET for m in made] == [
        50_000_000, 50_000_001, 50_000_002, 50_000_003, 60_000_000]
    assert [ids.unix_ms(m) for m in made] == [5_000, 5_000, 5_000, 5_000, 6_000]


def test_the_system_clock_is_the_default_and_ids_increase_across_threads() -> None:
    gen = ids.TimeBasedIds()
    made: list[uuid.UUID] = []
    lock = threading.Lock()

    def work() -> None:
        batch = [gen.new() for _ in range(500)]
        with lock:
            made.extend(batch)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({m.time for m in made}) == 2000
    assert all(m.version == 1 for m in made)
    assert len({m.int & (2**64 - 1) for m in made}) == 1  # one clock sequence and node


def test_each_generator_has_a_random_multicast_node() -> None:
    lows = {ids.random_clock_seq_and_node() for _ in range(50)}
    assert len(lows) == 50
    for low in lows:
        assert low >> 62 == 0b10  # RFC 4122 variant
        assert low & (1 << 40)  # multicast bit: not a MAC address


def test_unix_ms_refuses_ids_that_are_not_time_based() -> None:
    with pytest.raises(ValueError, match="not a time-based"):
        ids.unix_ms(uuid.UUID("8c7f6a9e-5b4d-4c3b-9a29-1f0e0d0c0b0a"))
    assert not ids.is_time_based(uuid.UUID("8c7f6a9e-5b4d-4c3b-9a29-1f0e0d0c0b0a"))
    with pytest.raises(ValueError, match="60 bits"):
        ids.from_ticks(1 << 60, LOW)


def test_every_id_the_cloud_creates_is_time_based_and_made_at_its_creation_time(tmp_path: Path) -> None:
    store = CloudStore(tmp_path / "cloud")
    try:
        service = CloudService(store, clock=SetClock(1_700_000_000_000),
                               id_source=ids.TimeBasedIds())
        tenant = store.tenant_id()
        assert tenant.version == 1
        first, _, _ = service.create_edge("plant-1", routing_key="rk-1", secret="s1")
        second, _, _ = service.create_edge("plant-2", routing_key="rk-2", secret="s2")
        devices = [service.create_device("rk-1", f"d{i}", token=f"tok-{i}")[0] for i in range(3)]
        made = [first.edge_id, second.edge_id] + [d.id for d in devices]
        assert [m.version for m in made] == [1] * 5
        assert len(set(made)) == 5
        assert [m.time for m in made] == sorted(m.time for m in made)
        assert [ids.unix_ms(m) for m in made] == [1_700_000_000_000] * 5  # the frozen clock's ms
        assert first.tenant_id == second.tenant_id == tenant
        assert (first.created_time, devices[0].created_time) == (1_700_000_000_000, 1_700_000_000_000)
        assert store.edge("rk-1") == first and store.device(devices[2].id) == devices[2]
    finally:
        store.close()


def test_a_store_keeps_the_tenant_id_it_was_made_with(tmp_path: Path) -> None:
    """A store made before ids were time-based keeps its random tenant id; ids it already
    holds are never rewritten."""
    path = tmp_path / "cloud"
    store = CloudStore(path)
    old_tenant = uuid.UUID("8c7f6a9e-5b4d-4c3b-9a29-1f0e0d0c0b0a")
    store.lmdb.write(lambda txn: txn.put(b"tenant", old_tenant.bytes, db=store.lmdb.dbs["meta"]))
    store.close()
    store = CloudStore(path)
    try:
        assert store.tenant_id() == old_tenant
        edge, _, _ = CloudService(store).create_edge("e", routing_key="rk", secret="s")
        assert edge.tenant_id == old_tenant and edge.edge_id.version == 1
    finally:
        store.close()
