"""EntityStore on a real LMDB store in tmp_path: devices and their token / name indexes,
uniqueness checks that write nothing, attributes by scope, latest telemetry by ts, the synced
tenant and device profiles (indexed by name) and a device's profile id, downlink ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_sync.storage.entity_store import (
    DEVICE_DELETED,
    TOKEN_CHANGED,
    Conflict,
    EntityStore,
    Revocation,
    Revoked,
    TokenCache,
)
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Device, DeviceProfile, Scope, Tenant

D1 = Device(id=uuid.UUID(int=1), name="pump-1", type="pump", token="tok-1", created_time=10,
            label="Pump one")
D2 = Device(id=uuid.UUID(int=2), name="pump-2", type="pump", token="tok-2", created_time=20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "store", initial_map_mb=4, max_size_mb=16)
    yield s
    s.close()


@pytest.fixture
def ents(store: LmdbStore) -> EntityStore:
    return EntityStore(store)


def write(store: LmdbStore, fn: Any) -> Any:
    return store.write(fn)


def read(store: LmdbStore, fn: Any) -> Any:
    with store.read() as txn:
        return fn(txn)


def index_sizes(store: LmdbStore) -> tuple[int, int, int]:
    with store.read() as txn:
        return (store.entries(txn, "devices"), store.entries(txn, "device_tokens"),
                store.entries(txn, "device_names"))


# -- devices --------------------------------------------------------------------------------------


def test_put_and_get_device_by_id_token_and_name(store: LmdbStore, ents: EntityStore) -> None:
    write(store, lambda txn: ents.put_device(txn, D1))
    write(store, lambda txn: ents.put_device(txn, D2))
    assert read(store, lambda txn: ents.device(txn, D1.id)) == D1
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-1")) == D1
    assert read(store, lambda txn: ents.device_by_name(txn, "pump-1")) == D1
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-2")) == D2
    assert read(store, lambda txn: ents.device_by_name(txn, "pump-2")) == D2
    assert read(store, lambda txn: ents.device(txn, uuid.UUID(int=3))) is None
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-3")) is None
    assert read(store, lambda txn: ents.device_by_name(txn, "pump-3")) is None
    assert read(store, lambda txn: ents.device_by_token(txn, "x" * 600)) is None
    assert sorted(read(store, ents.devices), key=lambda d: d.name) == [D1, D2]
    assert read(store, ents.device_count) == 2
    assert index_sizes(store) == (2, 2, 2)


@pytest.mark.parametrize("lookup", ["token", "name"])
def test_empty_token_or_name_lookup_finds_nothing(
    store: LmdbStore, ents: EntityStore, lookup: str
) -> None:
    write(store, lambda txn: ents.put_device(txn, D1))
    find = ents.device_by_token if lookup == "token" else ents.device_by_name
    assert read(store, lambda txn: find(txn, "")) is None


def test_device_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store"
    s = LmdbStore(path, initial_map_mb=4)
    s.write(lambda txn: EntityStore(s).put_device(txn, D1))
    s.close()
    s = LmdbStore(path, initial_map_mb=4)
    try:
        with s.read() as txn:
            assert EntityStore(s).device_by_token(txn, "tok-1") == D1
    finally:
        s.close()


@pytest.mark.parametrize(
    ("clash", "message"),
    [
        (replace(D2, id=D1.id), "already exists"),
        (replace(D2, name=D1.name), "named 'pump-1'"),
        (replace(D2, token=D1.token), "access token"),
    ],
    ids=["id", "name", "token"],
)
def test_check_new_device_raises_conflict_and_writes_nothing(
    store: LmdbStore, ents: EntityStore, clash: Device, message: str
) -> None:
    write(store, lambda txn: ents.put_device(txn, D1))
    with pytest.raises(Conflict, match=message):
        write(store, lambda txn: ents.check_new_device(txn, clash))
    assert index_sizes(store) == (1, 1, 1)
    assert read(store, lambda txn: ents.device(txn, D1.id)) == D1
    assert read(store, lambda txn: ents.device(txn, D2.id)) is None
    assert read(store, lambda txn: ents.device_by_name(txn, D2.name)) is None
    assert read(store, lambda txn: ents.device_by_token(txn, D2.token)) is None
    # The check alone, in a transaction that is then committed, wrote nothing either.
    write(store, lambda txn: ents.check_new_device(txn, D2))
    assert index_sizes(store) == (1, 1, 1)


def test_put_device_with_changed_token_and_name_updates_indexes(
    store: LmdbStore, ents: EntityStore
) -> None:
    write(store, lambda txn: ents.put_device(txn, D1))
    write(store, lambda txn: ents.put_device(txn, D2))
    moved = replace(D1, token="tok-1b", name="pump-1b", version=2)
    write(store, lambda txn: ents.put_device(txn, moved))
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-1")) is None
    assert read(store, lambda txn: ents.device_by_name(txn, "pump-1")) is None
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-1b")) == moved
    assert read(store, lambda txn: ents.device_by_name(txn, "pump-1b")) == moved
    assert read(store, lambda txn: ents.device(txn, D1.id)) == moved
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-2")) == D2
    assert index_sizes(store) == (2, 2, 2)
    # The freed name and token can be taken by a new device.
    d3 = Device(id=uuid.UUID(int=3), name="pump-1", type="pump", token="tok-1", created_time=30)
    write(store, lambda txn: ents.check_new_device(txn, d3))
    write(store, lambda txn: ents.put_device(txn, d3))
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-1")) == d3
    assert index_sizes(store) == (3, 3, 3)


def test_put_device_only_token_changed_keeps_name(store: LmdbStore, ents: EntityStore) -> None:
    write(store, lambda txn: ents.put_device(txn, D1))
    new = replace(D1, token="rotated")
    write(store, lambda txn: ents.put_device(txn, new))
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-1")) is None
    assert read(store, lambda txn: ents.device_by_token(txn, "rotated")) == new
    assert read(store, lambda txn: ents.device_by_name(txn, "pump-1")) == new
    assert index_sizes(store) == (1, 1, 1)


def test_delete_device_removes_indexes(store: LmdbStore, ents: EntityStore) -> None:
    write(store, lambda txn: ents.put_device(txn, D1))
    write(store, lambda txn: ents.put_device(txn, D2))
    assert write(store, lambda txn: ents.delete_device(txn, D1.id)) is True
    assert write(store, lambda txn: ents.delete_device(txn, D1.id)) is False
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-1")) is None
    assert read(store, lambda txn: ents.device_by_name(txn, "pump-1")) is None
    assert read(store, lambda txn: ents.device_by_token(txn, "tok-2")) == D2
    assert index_sizes(store) == (1, 1, 1)


# -- attributes -----------------------------------------------------------------------------------


def test_attributes_scopes_are_isolated(store: LmdbStore, ents: EntityStore) -> None:
    e = D1.id
    write(store, lambda txn: ents.put_attributes(txn, e, Scope.CLIENT, {"fw": "1.0", "n": 3}, ts=5))
    write(store, lambda txn: ents.put_attributes(txn, e, Scope.SHARED, {"fw": "2.0", "mode": "eco"},
                                                 ts=6))
    write(store, lambda txn: ents.put_attributes(txn, D2.id, Scope.CLIENT, {"other": True}, ts=7))
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.CLIENT)) == {"fw": "1.0", "n": 3}
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.SHARED)) == {"fw": "2.0",
                                                                            "mode": "eco"}
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.SERVER)) == {}
    assert read(store, lambda txn: ents.attributes(txn, D2.id, Scope.CLIENT)) == {"other": True}
    assert read(store, lambda txn: ents.attributes(txn, D2.id, Scope.SHARED)) == {}
    assert read(store, lambda txn: ents.attributes(txn, uuid.UUID(int=9), Scope.CLIENT)) == {}


def test_attributes_subset_of_keys_and_overwrite(store: LmdbStore, ents: EntityStore) -> None:
    e = D1.id
    values = {"a": 1, "ab": [1, 2], "b": {"x": 1.5}, "c": "s"}
    write(store, lambda txn: ents.put_attributes(txn, e, Scope.CLIENT, values, ts=1))
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.CLIENT, ["a", "b", "zz"])) == {
        "a": 1, "b": {"x": 1.5}}
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.CLIENT, [])) == {}
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.SHARED, ["a"])) == {}
    write(store, lambda txn: ents.put_attributes(txn, e, Scope.CLIENT, {"a": 2}, ts=2))
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.CLIENT)) == {
        "a": 2, "ab": [1, 2], "b": {"x": 1.5}, "c": "s"}


def test_delete_attributes(store: LmdbStore, ents: EntityStore) -> None:
    e = D1.id
    write(store, lambda txn: ents.put_attributes(txn, e, Scope.CLIENT, {"a": 1, "b": 2, "c": 3}, ts=1))
    write(store, lambda txn: ents.put_attributes(txn, e, Scope.SHARED, {"a": 10}, ts=1))
    assert write(store, lambda txn: ents.delete_attributes(txn, e, Scope.CLIENT, ["a", "c", "x"])) == 2
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.CLIENT)) == {"b": 2}
    assert read(store, lambda txn: ents.attributes(txn, e, Scope.SHARED)) == {"a": 10}
    assert write(store, lambda txn: ents.delete_attributes(txn, e, Scope.CLIENT, ["a"])) == 0


# -- latest telemetry -----------------------------------------------------------------------------


def test_put_latest_keeps_highest_ts_per_key(store: LmdbStore, ents: EntityStore) -> None:
    e = D1.id
    write(store, lambda txn: ents.put_latest(txn, e, {"t": (100, 20.5), "h": (100, 40)}))
    write(store, lambda txn: ents.put_latest(txn, e, {"t": (90, 99.0), "h": (110, 41)}))
    assert read(store, lambda txn: ents.latest(txn, e)) == {"t": (100, 20.5), "h": (110, 41)}
    write(store, lambda txn: ents.put_latest(txn, e, {"t": (101, 21.0), "p": (5, "on")}))
    assert read(store, lambda txn: ents.latest(txn, e)) == {
        "t": (101, 21.0), "h": (110, 41), "p": (5, "on")}
    write(store, lambda txn: ents.put_latest(txn, e, {"t": (0, -1.0)}))
    assert read(store, lambda txn: ents.latest(txn, e))["t"] == (101, 21.0)
    # Another entity's latest values are separate.
    write(store, lambda txn: ents.put_latest(txn, D2.id, {"t": (1, 1)}))
    assert read(store, lambda txn: ents.latest(txn, D2.id)) == {"t": (1, 1)}
    assert read(store, lambda txn: ents.latest(txn, e))["t"] == (101, 21.0)
    assert read(store, lambda txn: ents.latest(txn, uuid.UUID(int=77))) == {}


# -- the synced tenant and device profiles --------------------------------------------------------

P1 = DeviceProfile(uuid.UUID(int=0xA1), "default", '{"name":"default","default":true}')
P2 = DeviceProfile(uuid.UUID(int=0xA2), "thermostat", '{"name":"thermostat"}')


def test_tenant_put_replace_delete(store: LmdbStore, ents: EntityStore) -> None:
    assert read(store, ents.tenant) is None
    t = Tenant(uuid.UUID(int=0x7E), "Acme", '{"title":"Acme"}')
    write(store, lambda txn: ents.put_tenant(txn, t))
    assert read(store, ents.tenant) == t
    t2 = replace(t, title="Acme Corp", entity='{"title":"Acme Corp"}')
    write(store, lambda txn: ents.put_tenant(txn, t2))
    assert read(store, ents.tenant) == t2
    assert write(store, ents.delete_tenant) is True
    assert write(store, ents.delete_tenant) is False
    assert read(store, ents.tenant) is None


def test_device_profiles_by_id_and_name(store: LmdbStore, ents: EntityStore) -> None:
    assert read(store, ents.device_profile_ids) == {}
    assert write(store, lambda txn: ents.put_device_profile(txn, P1)) is None
    assert write(store, lambda txn: ents.put_device_profile(txn, P2)) is None
    assert read(store, lambda txn: ents.device_profile(txn, P2.id)) == P2
    assert read(store, lambda txn: ents.device_profile_by_name(txn, "default")) == P1
    assert read(store, lambda txn: ents.device_profile_by_name(txn, "nope")) is None
    assert read(store, ents.device_profiles) == [P1, P2]
    assert read(store, ents.device_profile_ids) == {"default": P1.id, "thermostat": P2.id}
    # a rename moves the name index
    write(store, lambda txn: ents.put_device_profile(txn, replace(P2, name="thermo-2")))
    assert read(store, ents.device_profile_ids) == {"default": P1.id, "thermo-2": P2.id}
    assert read(store, lambda txn: ents.device_profile_by_name(txn, "thermostat")) is None
    assert write(store, lambda txn: ents.delete_device_profile(txn, P2.id)) is True
    assert write(store, lambda txn: ents.delete_device_profile(txn, P2.id)) is False
    assert read(store, ents.device_profile_ids) == {"default": P1.id}
    assert read(store, ents.device_profiles) == [P1]


def test_a_name_taken_by_another_profile_moves_to_the_newest(
        store: LmdbStore, ents: EntityStore) -> None:
    """Names are unique in a ThingsBoard tenant; until the other's rename is synced, the name
    finds the profile written last, and deleting the older one leaves the name in place."""
    write(store, lambda txn: ents.put_device_profile(txn, P2))
    newer = DeviceProfile(uuid.UUID(int=0xA3), "thermostat", "{}")
    assert write(store, lambda txn: ents.put_device_profile(txn, newer)) == P2.id
    assert read(store, ents.device_profile_ids) == {"thermostat": newer.id}
    assert write(store, lambda txn: ents.delete_device_profile(txn, P2.id)) is True
    assert read(store, ents.device_profile_ids) == {"thermostat": newer.id}


def test_profiles_tenant_and_a_device_profile_id_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store"
    s = LmdbStore(path, initial_map_mb=4)
    ents = EntityStore(s)
    tenant = Tenant(uuid.UUID(int=0x7E), "Acme", "{}")
    dev = replace(D1, profile_id=P1.id)

    def fill(txn: Any) -> None:
        ents.put_tenant(txn, tenant)
        ents.put_device_profile(txn, P1)
        ents.put_device(txn, dev)
        ents.put_device(txn, D2)

    s.write(fill)
    s.close()
    s = LmdbStore(path, initial_map_mb=4, readonly=True)
    try:
        ents = EntityStore(s)
        with s.read() as txn:
            assert (ents.tenant(txn), ents.device_profile_ids(txn)) == (tenant, {"default": P1.id})
            assert ents.device(txn, D1.id) == dev
            assert ents.device_by_token(txn, "tok-1") == dev
            assert ents.devices(txn) == [dev, D2]
            assert ents.device(txn, D2.id) == D2  # no profile id: None
    finally:
        s.close()


def test_a_device_profile_id_follows_the_device(store: LmdbStore, ents: EntityStore) -> None:
    with_profile = replace(D1, profile_id=P2.id)
    write(store, lambda txn: ents.put_device(txn, with_profile))
    assert read(store, lambda txn: ents.device(txn, D1.id)) == with_profile
    write(store, lambda txn: ents.put_device(txn, D1))  # written without one: dropped
    assert read(store, lambda txn: ents.device(txn, D1.id)) == D1
    write(store, lambda txn: ents.put_device(txn, with_profile))
    assert write(store, lambda txn: ents.delete_device(txn, D1.id)) is True
    write(store, lambda txn: ents.put_device(txn, D1))  # the same id again: no stale profile
    assert read(store, lambda txn: ents.device(txn, D1.id)) == D1
    # the profile ids live beside the devices, not in them: the device indexes are unchanged
    assert index_sizes(store) == (1, 1, 1)


# -- downlinks ------------------------------------------------------------------------------------


def test_downlink_ids_recorded(tmp_path: Path) -> None:
    path = tmp_path / "store"
    s = LmdbStore(path, initial_map_mb=4)
    ents = EntityStore(s)
    assert read(s, lambda txn: ents.downlink_applied(txn, b"dl-1")) is False
    s.write(lambda txn: ents.record_downlink(txn, b"dl-1", now_ms=123))
    assert read(s, lambda txn: ents.downlink_applied(txn, b"dl-1")) is True
    assert read(s, lambda txn: ents.downlink_applied(txn, b"dl-2")) is False
    assert read(s, lambda txn: ents.downlink_applied(txn, b"dl-")) is False
    s.close()
    s = LmdbStore(path, initial_map_mb=4)
    try:
        ents = EntityStore(s)
        assert read(s, lambda txn: ents.downlink_applied(txn, b"dl-1")) is True
        with s.read() as txn:
            assert s.entries(txn, "downlinks") == 1
    finally:
        s.close()


def test_aborted_transaction_writes_nothing(store: LmdbStore, ents: EntityStore) -> None:
    """A failure after put_device in the same transaction leaves no trace (all or nothing)."""

    def fn(txn: Any) -> None:
        ents.put_device(txn, D1)
        ents.record_downlink(txn, b"dl-9", now_ms=1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.write(fn)
    assert index_sizes(store) == (0, 0, 0)
    assert read(store, lambda txn: ents.downlink_applied(txn, b"dl-9")) is False


def test_the_token_cache_tells_its_watchers_what_a_commit_revoked() -> None:
    """invalidate() forgets every token first, then tells each watcher the revocations of the
    commit by device (a later one for the same device wins); an invalidation without any tells
    nothing; a watcher that fails does not keep the others from hearing; unwatch stops it."""
    cache = TokenCache()
    cache.put("tok-1", D1, generation=cache.generation)
    heard: list[tuple[str, Revoked, Device | None]] = []

    def broken(_revoked: Revoked) -> None:
        raise RuntimeError("a watcher's bug")

    cache.watch(broken)
    unwatch = cache.watch(lambda r: heard.append(("first", r, cache.get("tok-1"))))
    cache.watch(lambda r: heard.append(("second", r, None)))
    cache.invalidate()
    assert heard == []
    changed = Revocation(D1.id, TOKEN_CHANGED, "its access token was changed by the cloud")
    deleted = Revocation(D1.id, DEVICE_DELETED, "it was deleted by the cloud")
    other = Revocation(D2.id, DEVICE_DELETED, "it was deleted on the edge")
    assert (changed.deleted, deleted.deleted) == (False, True)
    cache.put("tok-1", D1, generation=cache.generation)
    cache.invalidate([changed, other, deleted])
    told = {D1.id: deleted, D2.id: other}
    assert heard == [("first", told, None), ("second", told, None)]  # the cache forgot first
    unwatch()
    cache.invalidate([changed])
    assert heard[2:] == [("second", {D1.id: changed}, None)]
