"""storage/codec.py: the versioned, checksummed value envelope shared by the edge and the cloud
stores, and what a damaged value raises (StorageCorrupt naming the record)."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.store import CloudStore
from edge_sync.errors import StorageCorrupt, Unstorable
from edge_sync.storage import codec
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Device, Lane, NewEvent

EVENT = NewEvent(type="TELEMETRY", entity_type="DEVICE", entity_id=uuid.UUID(int=7),
                 action="TIMESERIES_UPDATED", body={"k": [1, 2.5, "x"]}, ts=123, lane=Lane.NORMAL)


def _encoded_event() -> bytes:
    return codec.encode_event(EVENT, event_id=bytes(16), created_time=5, tenant_id=bytes(16),
                              edge_id=bytes(16))


def test_values_round_trip() -> None:
    for value in (1, "text", {"a": [1, None, True]}, (b"\x00raw", 2**64 - 1), -(2**63)):
        expected = list(value) if isinstance(value, tuple) else value
        assert codec.unpack(codec.pack(value), "v") == expected


def test_a_value_starts_with_its_version_byte() -> None:
    assert codec.pack("x")[0] == codec.VALUE_VERSION == 2


def test_event_round_trip_reports_its_encoded_size() -> None:
    raw = _encoded_event()
    ev = codec.decode_event(9, raw)
    assert (ev.seq, ev.entity_id, ev.body, ev.ts, ev.lane, ev.size) == (
        9, EVENT.entity_id, EVENT.body, 123, Lane.NORMAL, len(raw))


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:-1],                                   # truncated
    lambda raw: raw[:-1] + bytes([raw[-1] ^ 0x01]),         # one bit flipped in the body
    lambda raw: raw[:1] + bytes([raw[1] ^ 0x80]) + raw[2:],  # checksum damaged
    lambda raw: b"\x01" + raw[1:],                          # another format version
    lambda raw: raw[:3],                                    # shorter than the header
])
def test_a_damaged_event_raises_storage_corrupt_naming_it(damage) -> None:
    with pytest.raises(StorageCorrupt, match="events: seq 9"):
        codec.decode_event(9, damage(_encoded_event()))


def test_a_record_of_the_wrong_shape_is_corrupt() -> None:
    with pytest.raises(StorageCorrupt, match="unexpected shape"):
        codec.unpack_fields(codec.pack((1, 2)), "thing", 3)
    with pytest.raises(StorageCorrupt, match="unexpected shape"):
        codec.decode_event(1, codec.pack("not a tuple"))


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, "\ud800", object()])
def test_a_value_msgpack_cannot_hold_is_refused_when_packed(value: object) -> None:
    with pytest.raises(Unstorable, match="value cannot be stored"):
        codec.pack(value)
    with pytest.raises(Unstorable, match="text cannot be stored"):
        codec.text_key("k\udfff")


def test_packing_after_a_refused_value_and_from_several_threads_gives_msgpacks_bytes() -> None:
    """pack reuses one msgpack Packer per thread: a value it refused leaves nothing behind in
    the buffer, and threads packing at once never see each other's bytes."""
    with pytest.raises(Unstorable):
        codec.pack([1, 2**70])
    assert codec.pack([1, "a"])[5:] == msgpack.packb([1, "a"], use_bin_type=True)

    def expected(i: int) -> bytes:
        return msgpack.packb((i, "x" * (i % 50), [i] * (i % 7)), use_bin_type=True)

    def pack_many(worker: int) -> list[int]:
        wrong = []
        for i in range(worker, 20_000, 4):
            value = (i, "x" * (i % 50), [i] * (i % 7))
            if codec.pack(value)[5:] != expected(i):
                wrong.append(i)
        return wrong

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(pack_many, range(4)))
    assert results == [[], [], [], []]


LED_VALUES = [0, -1, 2**64 - 1, -(2**63), 21.5, float("nan"), True, None, "", "t\u00e9xt",
              "x" * 70_000, b"\x00raw", [1, [2, {"a": None}]], {"k": (1, 2), 3: "int key"},
              list(range(40))]


@pytest.mark.parametrize("first", [None, 0, 1_700_086_400_000, 2**64 - 1, "lead"])
def test_pack_led_is_pack_of_each_pair_byte_for_byte(first: object) -> None:
    """The local timeseries' points are written with pack_led and read with unpack_fields: the
    bytes must be pack()'s, the checksum included."""
    packed = codec.pack_led(first, LED_VALUES)
    assert packed == [codec.pack((first, value)) for value in LED_VALUES]
    decoded = [codec.unpack_fields(raw, "v", 2) for raw in packed]
    assert [lead for lead, _ in decoded] == [first] * len(LED_VALUES)
    assert repr([value for _, value in decoded]) == repr(
        [codec.unpack(codec.pack(value), "v") for value in LED_VALUES])  # (nan != nan)
    assert codec.pack_led(first, []) == []


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, "\ud800", object()])
def test_pack_led_refuses_what_msgpack_cannot_hold(value: object) -> None:
    with pytest.raises(Unstorable, match="value cannot be stored"):
        codec.pack_led(5, [1, value, 2])
    with pytest.raises(Unstorable, match="value cannot be stored"):
        codec.pack_led(value, [1])


def test_a_thread_does_not_keep_the_buffer_of_a_large_record() -> None:
    """The thread's Packer never shrinks its buffer: after a record over 1 MiB (or a refused
    one) it is replaced, so the memory goes; after a small one it is kept (the cheap path)."""
    small = codec._PACKERS.packer
    codec.pack({"k": "v"})
    assert codec._PACKERS.packer is small
    large = "x" * (2 << 20)
    assert codec.unpack(codec.pack(large), "large") == large
    after_large = codec._PACKERS.packer
    assert after_large is not small
    with pytest.raises(Unstorable):
        codec.pack(["y" * (2 << 20), 2**70])
    assert codec._PACKERS.packer is not after_large
    assert codec.pack([1, "a"])[5:] == msgpack.packb([1, "a"], use_bin_type=True)


def test_u64_of_the_wrong_length_is_corrupt() -> None:
    assert codec.from_u64(codec.u64(42)) == 42
    with pytest.raises(StorageCorrupt, match="meta: next_seq"):
        codec.from_u64(b"\x00" * 7, "meta: next_seq")


@pytest.fixture
def edge_store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=16)
    yield s
    s.close()


def test_edge_store_reports_a_damaged_device_record(edge_store: LmdbStore) -> None:
    ents = EntityStore(edge_store)
    dev = Device(id=uuid.UUID(int=1), name="d", type="t", token="tok", created_time=1)
    edge_store.write(lambda txn: ents.put_device(txn, dev))
    raw = edge_store.write(lambda txn: txn.get(dev.id.bytes, db=edge_store.dbs["devices"]))
    edge_store.write(lambda txn: txn.put(dev.id.bytes, raw[:-2] + b"\xff\xff",
                                         db=edge_store.dbs["devices"]))
    with edge_store.read() as txn, pytest.raises(StorageCorrupt, match=f"devices: {dev.id}"):
        ents.device(txn, dev.id)


def test_cloud_store_uses_the_same_envelope(tmp_path: Path) -> None:
    store = CloudStore(tmp_path / "cloud", max_size_mb=64)
    try:
        dev = CloudDevice(uuid.UUID(int=3), uuid.UUID(int=4), "n", "t", "", "tok", 1, "cloud")
        store.add_device(dev, [])
        with store.lmdb.read() as txn:
            raw = txn.get(dev.id.bytes, db=store.lmdb.dbs["devices"])
        assert raw[0] == codec.VALUE_VERSION
        store.lmdb.write(lambda txn: txn.put(dev.id.bytes, raw[:-1] + bytes([raw[-1] ^ 1]),
                                             db=store.lmdb.dbs["devices"]))
        with pytest.raises(StorageCorrupt, match=f"devices: {dev.id}: damaged record"):
            store.device(dev.id)
    finally:
        store.close()


# -- values of the previous format (plain msgpack arrays, no version byte, no checksum) ----------

def _previous_event() -> bytes:
    """An event exactly as the previous release packed it: the schema number 1, then the fields."""
    packed: bytes = msgpack.packb(
        [1, b"\x01" * 16, 5, b"\x02" * 16, b"\x03" * 16, "TELEMETRY", "DEVICE", EVENT.entity_id.bytes,
         "TIMESERIES_UPDATED", EVENT.body, 123, 1], use_bin_type=True)
    return packed


def test_a_previous_format_value_never_starts_with_the_version_byte() -> None:
    # every record of the previous release was an array; the smallest and largest headers
    for value in ([], [2], [1] * 15, [1] * 16, [2] * 70000):
        raw = msgpack.packb(value, use_bin_type=True)
        assert raw[0] != codec.VALUE_VERSION and codec.is_previous_format(raw)
    assert not codec.is_previous_format(codec.pack([1, 2]))


def test_a_previous_format_event_is_read_when_the_store_may_hold_one() -> None:
    raw = _previous_event()
    ev = codec.decode_event(9, raw, previous=True)
    assert (ev.seq, ev.id, ev.created_time, ev.tenant_id, ev.edge_id, ev.type, ev.entity_type,
            ev.entity_id, ev.action, ev.body, ev.ts, ev.lane, ev.size) == (
        9, uuid.UUID(bytes=b"\x01" * 16), 5, uuid.UUID(bytes=b"\x02" * 16),
        uuid.UUID(bytes=b"\x03" * 16), "TELEMETRY", "DEVICE", EVENT.entity_id,
        "TIMESERIES_UPDATED", EVENT.body, 123, Lane.NORMAL, len(raw))
    # a new-format value still reads the same with previous=True
    assert codec.decode_event(9, _encoded_event(), previous=True).body == EVENT.body
    with pytest.raises(StorageCorrupt, match="events: seq 9: record format version 156"):
        codec.decode_event(9, raw)


def test_previous_format_records_with_and_without_a_schema_number() -> None:
    device = msgpack.packb([1, "d", "t", "tok", 7, "label", 2], use_bin_type=True)
    assert codec.decode_device(uuid.UUID(int=1).bytes, device, previous=True) == Device(
        id=uuid.UUID(int=1), name="d", type="t", token="tok", created_time=7, label="label",
        version=2)
    pair = msgpack.packb([2, 9], use_bin_type=True)  # e.g. an attribute whose value is 2
    assert codec.unpack_fields(pair, "attributes: x", 2, previous=True) == [2, 9]
    with pytest.raises(StorageCorrupt, match="attributes: x: record of the previous format with "
                                             "schema number 2"):
        codec.unpack_fields(pair, "attributes: x", 1, previous=True, schema=True)
    with pytest.raises(StorageCorrupt, match="events: seq 3: undecodable record of the previous"):
        codec.decode_event(3, _previous_event()[:-3], previous=True)
    with pytest.raises(StorageCorrupt, match="events: seq 3: record of an unexpected shape"):
        codec.decode_event(3, msgpack.packb([1, "short"]), previous=True)
