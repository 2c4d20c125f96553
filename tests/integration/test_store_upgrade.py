"""Stores written by the previous release (stamps edge-sync/1 and edge-cloud/2, values as plain
msgpack arrays without version byte or checksum) open with this release: every record reads back
as it was, a read-write open upgrades the stamp without scanning or rewriting anything, a
read-only open only reads, and new values are checksummed beside the old ones.

The previous stores are written here byte by byte, with lmdb and msgpack only, in the layouts the
previous release used; nothing of the project's code writes them.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest
from loguru import logger

from edge_sync.cloud.records import AppliedRecord, CloudDevice, EdgeRecord
from edge_sync.cloud.store import CloudStore
from edge_sync.cloud.uplink_payloads import AppliedEvent
from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Counts, Device, Lane, NewEvent, Scope, Status

UPGRADE_LINE = ("store format {} upgraded to {}: old records are read as they are, new ones "
                "are checksummed")

TENANT = uuid.UUID(int=0x7E)
EDGE = uuid.UUID(int=0xED)
STORE_ID = uuid.UUID(int=0x5D)
DEVICE = uuid.UUID(int=0xD1)
OTHER_DEVICE = uuid.UUID(int=0xD2)


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _mp(value: Any) -> bytes:
    """A value as the previous release stored it: msgpack, nothing around it."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _write_lmdb(path: Path, db_names: tuple[str, ...], records: dict[str, dict[bytes, bytes]]) -> None:
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=16 << 20, max_dbs=len(db_names) + 2)
    try:
        dbs = {name: env.open_db(name.encode()) for name in db_names}
        with env.begin(write=True) as txn:
            for name, entries in records.items():
                for key, value in entries.items():
                    txn.put(key, value, db=dbs[name])
    finally:
        env.close()
    (path / "store.created").write_text("store created\n")


def _meta(path: Path, key: bytes, db_names: tuple[str, ...]) -> bytes | None:
    env = lmdb.open(str(path), readonly=True, max_dbs=len(db_names) + 2, lock=False)
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            raw = txn.get(key, db=meta)
            return None if raw is None else bytes(raw)
    finally:
        env.close()


@pytest.fixture
def info_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO",
                      filter=lambda r: "upgraded" in r["message"])
    yield lines
    logger.remove(sink)


# -- the edge store ------------------------------------------------------------------------------

EDGE_DB_NAMES = ("meta", "events", "pending_high", "pending_normal", "dead", "deployed_by_time",
                 "devices", "device_tokens", "device_names", "attributes", "latest_ts", "downlinks")

# (seq, event id, type, entity type, entity id, action, body, ts, lane (0 high, 1 normal), status)
OLD_EVENTS = [
    (1, uuid.UUID(int=0xE1), "DEVICE", "DEVICE", DEVICE, "TIMESERIES_UPDATED",
     {"temp": 21.5}, 1001, 1, "deployed"),
    (2, uuid.UUID(int=0xE2), "DEVICE", "DEVICE", DEVICE, "ADDED",
     {"name": "pump", "type": "default"}, 1002, 0, "pending"),
    (3, uuid.UUID(int=0xE3), "DEVICE", "DEVICE", DEVICE, "TIMESERIES_UPDATED",
     {"temp": [1, 2.5, "x", None, True], "raw": b"\x00\x02"}, 1003, 1, "pending"),
    (4, uuid.UUID(int=0xE4), "ALARM", "ALARM", OTHER_DEVICE, "ALARM_ACK",
     {"severity": "MAJOR"}, 1004, 0, "dead"),
    (5, uuid.UUID(int=0xE5), "DEVICE", "DEVICE", OTHER_DEVICE, "ATTRIBUTES_UPDATED",
     {"k": 2}, 1005, 1, "pending"),
]
CREATED = 999


def _write_previous_edge_store(path: Path) -> None:
    """An edge store as the previous release left it: events as [1 (schema), id, created,
    tenant, edge, type, entity type, entity id, action, body, ts, lane]; devices as [1, name,
    type, token, created, label, version]; dead as [error, time], attributes as [value, ts] and
    latest_ts as [ts, value] (those three without a schema number); numbers as u64."""
    rec: dict[str, dict[bytes, bytes]] = {name: {} for name in EDGE_DB_NAMES}
    rec["meta"] = {b"format": b"edge-sync/1", b"store_id": STORE_ID.bytes, b"tenant_id": TENANT.bytes,
                   b"edge_id": EDGE.bytes, b"next_seq": _u64(6), b"last_ack_ms": _u64(5000)}
    for seq, eid, etype, ent_type, ent_id, action, body, ts, lane, status in OLD_EVENTS:
        rec["events"][_u64(seq)] = _mp([1, eid.bytes, CREATED, TENANT.bytes, EDGE.bytes, etype,
                                        ent_type, ent_id.bytes, action, body, ts, lane])
        if status == "pending":
            rec["pending_high" if lane == 0 else "pending_normal"][_u64(seq)] = b""
        elif status == "dead":
            rec["dead"][_u64(seq)] = _mp(["rejected by the cloud", 4000])
        else:
            rec["deployed_by_time"][_u64(5000) + _u64(seq)] = b""
    rec["devices"][DEVICE.bytes] = _mp([1, "pump", "default", "tok-pump", 500, "Pump 1", 3])
    rec["device_tokens"][b"tok-pump"] = DEVICE.bytes
    rec["device_names"][b"pump"] = DEVICE.bytes
    rec["attributes"][DEVICE.bytes + b"C" + b"fw"] = _mp(["1.2.3", 700])
    rec["attributes"][DEVICE.bytes + b"C" + b"n"] = _mp([2, 701])  # a value that is the integer 2
    rec["latest_ts"][DEVICE.bytes + b"temp"] = _mp([1003, 21.5])
    rec["downlinks"][b"dl-key-1"] = _u64(800)
    _write_lmdb(path, EDGE_DB_NAMES, rec)


def _open_edge(path: Path, *, readonly: bool = False) -> LmdbStore:
    return LmdbStore(path, initial_map_mb=16, max_size_mb=64, readonly=readonly)


def _expected(seq: int) -> tuple[Any, ...]:
    s, eid, etype, ent_type, ent_id, action, body, ts, lane, _ = OLD_EVENTS[seq - 1]
    return (s, eid, CREATED, TENANT, EDGE, etype, ent_type, ent_id, action, body, ts, Lane(lane))


def _fields(ev: Any) -> tuple[Any, ...]:
    return (ev.seq, ev.id, ev.created_time, ev.tenant_id, ev.edge_id, ev.type, ev.entity_type,
            ev.entity_id, ev.action, ev.body, ev.ts, ev.lane)


@pytest.fixture
def old_edge(tmp_path: Path) -> Path:
    path = tmp_path / "edge"
    _write_previous_edge_store(path)
    return path


def test_a_previous_edge_store_opens_is_upgraded_and_reads_back(old_edge: Path,
                                                                 info_lines: list[str]) -> None:
    store = _open_edge(old_edge)
    try:
        assert info_lines == [UPGRADE_LINE.format("edge-sync/1", "edge-sync/2")]
        assert store.previous_values is True
        assert store.store_id == STORE_ID
        log, ents = EventLog(store), EntityStore(store)
        with store.read() as txn:
            assert log.counts(txn) == Counts(pending_high=1, pending_normal=2, deployed=1, dead=1,
                                             total=5, next_seq=6, evicted=0)
            assert log.identity(txn) == (TENANT, EDGE)
            batch = log.read_batch(txn, max_events=10, max_bytes=1 << 20)
            assert [_fields(ev) for ev in batch] == [_expected(2), _expected(3), _expected(5)]
            assert all(ev.status is Status.PENDING for ev in batch)
            dead = log.get(txn, 4)
            assert dead is not None and _fields(dead) == _expected(4)
            assert (dead.status, dead.error) == (Status.DEAD, "rejected by the cloud")
            deployed = log.get(txn, 1)
            assert deployed is not None and _fields(deployed) == _expected(1)
            assert deployed.status is Status.DEPLOYED
            assert [ev.seq for ev in log.iter_events(txn)] == [1, 2, 3, 4, 5]
            pump = Device(id=DEVICE, name="pump", type="default", token="tok-pump",
                          created_time=500, label="Pump 1", version=3)
            assert ents.device_by_token(txn, "tok-pump") == pump
            assert ents.device_by_name(txn, "pump") == pump
            assert ents.device(txn, DEVICE) == pump
            assert ents.devices(txn) == [pump]
            assert ents.attributes(txn, DEVICE, Scope.CLIENT) == {"fw": "1.2.3", "n": 2}
            assert ents.attributes(txn, DEVICE, Scope.CLIENT, ["n"]) == {"n": 2}
            assert ents.latest(txn, DEVICE) == {"temp": (1003, 21.5)}
            assert ents.downlink_applied(txn, b"dl-key-1")
    finally:
        store.close()
    assert _meta(old_edge, b"format", EDGE_DB_NAMES) == b"edge-sync/2"
    assert _meta(old_edge, b"upgraded_from", EDGE_DB_NAMES) == b"edge-sync/1"


def test_after_the_upgrade_new_values_are_checksummed_and_both_kinds_read_back(
        old_edge: Path, info_lines: list[str]) -> None:
    store = _open_edge(old_edge)
    store.close()
    store = _open_edge(old_edge)  # the second open finds the new stamp: no second upgrade
    try:
        assert len(info_lines) == 1
        assert store.previous_values is True
        log, ents = EventLog(store), EntityStore(store)
        new = NewEvent("DEVICE", "DEVICE", DEVICE, "TIMESERIES_UPDATED", {"temp": 22}, 1006)

        def append(txn: Any) -> int:
            return log.append(txn, [new], first_seq=log.next_seq(txn), created_time=2000,
                              tenant_id=TENANT.bytes, edge_id=EDGE.bytes)

        assert store.write(append) == 7
        store.write(lambda txn: log.mark_deployed(txn, [2], now_ms=6000))
        assert store.write(lambda txn: log.replay_dead(txn, 4))
        store.write(lambda txn: ents.put_latest(txn, DEVICE, {"temp": (1002, 0.0), "hum": (9, 40)}))
        store.write(lambda txn: ents.put_attributes(txn, DEVICE, Scope.CLIENT, {"fw": "2.0"}, ts=900))
        with store.read() as txn:
            raw = bytes(txn.get(_u64(6), db=store.dbs["events"]) or b"")
            assert raw[0] == codec.VALUE_VERSION
            assert [(ev.seq, ev.body) for ev in log.read_batch(txn, max_events=10, max_bytes=1 << 20)] \
                == [(4, {"severity": "MAJOR"}), (3, OLD_EVENTS[2][6]), (5, {"k": 2}), (6, {"temp": 22})]
            assert log.counts(txn) == Counts(pending_high=1, pending_normal=3, deployed=2, dead=0,
                                             total=6, next_seq=7, evicted=0)
            # an older reading does not replace a newer one, whichever format the newer is in
            assert ents.latest(txn, DEVICE) == {"hum": (9, 40), "temp": (1003, 21.5)}
            assert ents.attributes(txn, DEVICE, Scope.CLIENT) == {"fw": "2.0", "n": 2}
    finally:
        store.close()


def test_a_read_only_open_reads_a_previous_store_and_leaves_its_stamp(
        old_edge: Path, info_lines: list[str]) -> None:
    store = _open_edge(old_edge, readonly=True)
    try:
        log = EventLog(store)
        with store.read() as txn:
            assert [_fields(ev) for ev in log.read_batch(txn, max_events=10, max_bytes=1 << 20)] \
                == [_expected(2), _expected(3), _expected(5)]
            assert log.counts(txn).total == 5
    finally:
        store.close()
    assert info_lines == []
    assert _meta(old_edge, b"format", EDGE_DB_NAMES) == b"edge-sync/1"
    assert _meta(old_edge, b"upgraded_from", EDGE_DB_NAMES) is None


def test_opening_a_previous_store_reads_no_value(old_edge: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("opening must not read the records")

    monkeypatch.setattr(codec, "unpack", no_decoding)
    monkeypatch.setattr(codec, "decode_event", no_decoding)
    store = _open_edge(old_edge)
    try:
        with store.read() as txn:
            assert EventLog(store).counts(txn).total == 5
    finally:
        store.close()


def test_damaged_values_in_an_upgraded_store_are_storage_corrupt(old_edge: Path) -> None:
    store = _open_edge(old_edge)
    try:
        log = EventLog(store)
        new = NewEvent("DEVICE", "DEVICE", DEVICE, "TIMESERIES_UPDATED", {"temp": 22}, 1006)
        store.write(lambda txn: log.append(txn, [new], first_seq=6, created_time=2000,
                                           tenant_id=TENANT.bytes, edge_id=EDGE.bytes))
        events = store.dbs["events"]

        def damage(seq: int, fn: Any) -> None:
            def put(txn: Any) -> None:
                txn.put(_u64(seq), fn(bytes(txn.get(_u64(seq), db=events))), db=events)
            store.write(put)

        damage(6, lambda raw: raw[:-1] + bytes([raw[-1] ^ 0x01]))  # a new value, one bit flipped
        damage(3, lambda raw: raw[:-2])                             # an old value, truncated
        damage(5, lambda raw: raw[:1] + _mp([2])[1:] + raw[2:])     # an old value, schema 2
        with store.read() as txn:
            with pytest.raises(StorageCorrupt, match="events: seq 6: damaged record"):
                log.get(txn, 6)
            with pytest.raises(StorageCorrupt, match="events: seq 3: undecodable record of the "
                                                     "previous format"):
                log.get(txn, 3)
            with pytest.raises(StorageCorrupt, match="events: seq 5: record of the previous format "
                                                     "with schema number 2"):
                log.get(txn, 5)
            assert log.get(txn, 2) is not None
    finally:
        store.close()


def test_a_store_created_at_the_new_format_refuses_values_without_the_envelope(
        tmp_path: Path) -> None:
    store = _open_edge(tmp_path / "new")
    try:
        assert store.previous_values is False
        log = EventLog(store)
        old = _mp([1, bytes(16), 1, bytes(16), bytes(16), "DEVICE", "DEVICE", bytes(16), "ADDED",
                   {}, 1, 1])
        store.write(lambda txn: txn.put(_u64(1), old, db=store.dbs["events"]))
        with store.read() as txn, pytest.raises(StorageCorrupt,
                                                match="events: seq 1: record format version 156"):
            log.get(txn, 1)
    finally:
        store.close()


@pytest.mark.parametrize("stamp", [b"edge-sync/0", b"edge-cloud/2", b"edge-sync/3"])
def test_other_stamps_are_still_refused(old_edge: Path, stamp: bytes) -> None:
    env = lmdb.open(str(old_edge), max_dbs=len(EDGE_DB_NAMES) + 2)
    with env.begin(write=True) as txn:
        txn.put(b"format", stamp, db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StorageCorrupt, match=f"store format {stamp!r}, this edge-sync reads "
                                             r"b'edge-sync/2'"):
        _open_edge(old_edge)
    assert _meta(old_edge, b"format", EDGE_DB_NAMES) == stamp


# -- the cloud store -----------------------------------------------------------------------------

CLOUD_DB_NAMES = ("meta", "edges", "edge_ids", "store_ids", "incarnations", "applied", "apply_log",
                  "devices", "device_names", "edge_devices", "tokens", "attributes", "downlinks",
                  "dead_downlinks")
CLOUD_TENANT = uuid.UUID(int=0xC7)
EDGE_STORE = str(uuid.UUID(int=0x5E))
SALT, DIGEST = b"s" * 16, b"h" * 32
# (apply index, seq, entity type, entity id, action, body, ts, applied at)
OLD_APPLIED = [
    (1, 1, "DEVICE", DEVICE, "ADDED", {"name": "pump"}, 100, 150),
    (2, 2, "DEVICE", DEVICE, "TIMESERIES_UPDATED", {"temp": [21.5]}, 101, 151),
    (3, 3, "ALARM", OTHER_DEVICE, "ALARM_ACK", {"x": b"\x02"}, 102, 152),
]


def _write_previous_cloud_store(path: Path) -> None:
    """A cloud store as the previous release left it: every record an array led by the schema
    number 1 (edges, incarnations, apply_log, devices, attributes, downlinks); dead_downlinks
    as [the whole downlink record, reason, time]; indexes and counters as ids and u64."""
    e = EDGE.bytes
    rec: dict[str, dict[bytes, bytes]] = {name: {} for name in CLOUD_DB_NAMES}
    rec["meta"] = {b"format": b"edge-cloud/2", b"store_id": STORE_ID.bytes,
                   b"tenant": CLOUD_TENANT.bytes, b"inc:" + e: _u64(1), b"apply:" + e: _u64(3),
                   b"dl:" + e: _u64(3)}
    rec["edges"][b"rk-1"] = _mp([1, e, "edge one", "gateway", 50, SALT, DIGEST,
                                 ["scrypt", 16384, 8, 1]])
    rec["edge_ids"][e] = b"rk-1"
    rec["store_ids"][e + hashlib.sha256(EDGE_STORE.encode()).digest()] = _u64(1)
    rec["incarnations"][e + _u64(1)] = _mp([1, EDGE_STORE, 60])
    for index, seq, etype, eid, action, body, ts, applied_at in OLD_APPLIED:
        rec["applied"][e + _u64(1) + _u64(seq)] = _u64(index)
        rec["apply_log"][e + _u64(index)] = _mp([1, seq, etype, eid.bytes, action, body, ts,
                                                 applied_at, 1])
    rec["devices"][DEVICE.bytes] = _mp([1, e, "pump", "default", "Pump 1", "tok-pump", 70, "edge"])
    rec["device_names"][b"pump\0" + e] = DEVICE.bytes
    rec["edge_devices"][e + DEVICE.bytes] = b""
    rec["tokens"][b"tok-pump"] = DEVICE.bytes
    rec["attributes"][DEVICE.bytes + b"mode"] = _mp([1, "eco", 80])
    for number, payload in ((2, b"\x0a\x02dl-two"), (3, b"\x0a\x04dl-three")):
        rec["downlinks"][e + _u64(number)] = _mp([1, payload])
    rec["dead_downlinks"][e + _u64(1)] = _mp([_mp([1, b"\x0a\x03dl-one"]), "undeliverable", 90])
    _write_lmdb(path, CLOUD_DB_NAMES, rec)


@pytest.fixture
def old_cloud(tmp_path: Path) -> Path:
    path = tmp_path / "cloud"
    _write_previous_cloud_store(path)
    return path


def _applied(index: int, store_id: str | None = EDGE_STORE) -> AppliedRecord:
    i, seq, etype, eid, action, body, ts, applied_at = OLD_APPLIED[index - 1]
    return AppliedRecord(i, seq, etype, eid, action, body, ts, applied_at, 1, store_id)


def test_a_previous_cloud_store_opens_is_upgraded_and_reads_back(old_cloud: Path,
                                                                 info_lines: list[str]) -> None:
    store = CloudStore(old_cloud, max_size_mb=64)
    try:
        assert info_lines == [UPGRADE_LINE.format("edge-cloud/2", "edge-cloud/3")]
        assert store.tenant_id() == CLOUD_TENANT
        edge = EdgeRecord(edge_id=EDGE, tenant_id=CLOUD_TENANT, routing_key="rk-1", name="edge one",
                          type="gateway", created_time=50, salt=SALT, secret_hash=DIGEST,
                          kdf=("scrypt", 16384, 8, 1))
        assert store.edge("rk-1") == edge
        assert store.edge_by_id(EDGE) == edge
        assert store.edges() == [edge]
        assert store.edge_stores(EDGE) == [(1, EDGE_STORE, 60)]
        assert store.incarnation(EDGE, EDGE_STORE, 1000) == (1, False)
        assert store.events(EDGE) == [_applied(1), _applied(2), _applied(3)]
        assert store.applied_count(EDGE) == 3
        pump = CloudDevice(DEVICE, EDGE, "pump", "default", "Pump 1", "tok-pump", 70, "edge")
        assert store.device(DEVICE) == pump
        assert store.devices_named("pump") == [pump]
        assert store.devices_named("pump", EDGE) == [pump]
        assert store.devices_of_edge(EDGE) == [pump]
        assert store.shared_attributes(DEVICE) == {"mode": "eco"}
        assert store.sync_snapshot(EDGE) == [(pump, {"mode": "eco"})]
        assert (store.queued_downlinks(EDGE), store.dead_downlinks(EDGE)) == (2, 1)
        first = store.first_downlink(EDGE)
        assert first is not None and (first.number, first.payload) == (2, b"\x0a\x02dl-two")
    finally:
        store.close()
    assert _meta(old_cloud, b"format", CLOUD_DB_NAMES) == b"edge-cloud/3"
    assert _meta(old_cloud, b"upgraded_from", CLOUD_DB_NAMES) == b"edge-cloud/2"


def test_an_upgraded_cloud_store_takes_new_records_beside_the_old(old_cloud: Path) -> None:
    store = CloudStore(old_cloud, max_size_mb=64)
    try:
        events = [AppliedEvent(2, "DEVICE", DEVICE, "TIMESERIES_UPDATED", {"temp": [21.5]}, 101),
                  AppliedEvent(4, "DEVICE", DEVICE, "TIMESERIES_UPDATED", {"temp": [23]}, 103)]
        assert store.apply_uplink(EDGE, events, 2000, incarnation=1) == (1, 1)
        assert store.events(EDGE, after=2) == [
            _applied(3),
            AppliedRecord(4, 4, "DEVICE", DEVICE, "TIMESERIES_UPDATED", {"temp": [23]}, 103, 2000,
                          1, EDGE_STORE)]
        assert store.dead_letter_downlink(EDGE, 2, "too large", now_ms=3000)
        first = store.first_downlink(EDGE)
        assert first is not None and (first.number, first.payload) == (3, b"\x0a\x04dl-three")
        assert store.remove_downlink(EDGE, 3)
        assert store.enqueue_downlinks(EDGE, [b"\x0a\x03new"]) == [4]
        first = store.first_downlink(EDGE)
        assert first is not None and (first.number, first.payload) == (4, b"\x0a\x03new")
        assert (store.queued_downlinks(EDGE), store.dead_downlinks(EDGE)) == (1, 2)
        pump = store.device(DEVICE)
        assert pump is not None
        assert store.set_shared_attributes(pump, {"level": 2}, 90, b"\x0a\x05attrs") == 5
        assert store.queued_downlinks(EDGE) == 2
        assert store.shared_attributes(DEVICE) == {"level": 2, "mode": "eco"}
    finally:
        store.close()


def test_a_read_only_cloud_open_reads_a_previous_store_and_leaves_its_stamp(
        old_cloud: Path, info_lines: list[str]) -> None:
    store = CloudStore(old_cloud, max_size_mb=64, readonly=True)
    try:
        assert store.events(EDGE) == [_applied(1), _applied(2), _applied(3)]
        assert store.device(DEVICE) is not None
    finally:
        store.close()
    assert info_lines == []
    assert _meta(old_cloud, b"format", CLOUD_DB_NAMES) == b"edge-cloud/2"


def test_a_damaged_new_value_in_an_upgraded_cloud_store_is_storage_corrupt(old_cloud: Path) -> None:
    store = CloudStore(old_cloud, max_size_mb=64)
    try:
        dev = CloudDevice(OTHER_DEVICE, EDGE, "valve", "default", "", "tok-valve", 75, "cloud")
        store.add_device(dev, [])
        db = store.lmdb.dbs["devices"]

        def flip(txn: Any) -> None:
            raw = bytes(txn.get(OTHER_DEVICE.bytes, db=db))
            assert raw[0] == codec.VALUE_VERSION
            txn.put(OTHER_DEVICE.bytes, raw[:-1] + bytes([raw[-1] ^ 1]), db=db)

        store.lmdb.write(flip)
        with pytest.raises(StorageCorrupt, match=f"devices: {OTHER_DEVICE}: damaged record"):
            store.device(OTHER_DEVICE)
        assert store.device(DEVICE) is not None
    finally:
        store.close()
