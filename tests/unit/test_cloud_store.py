"""CloudStore on a real LMDB in tmp_path: dedup by (edge, edge store, seq), apply order, devices, shared
attributes, the downlink queue, read-only opening, and secrets."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_sync.cloud import credentials
from edge_sync.cloud.records import CloudDevice, downlink_msg_id
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.cloud.uplink_payloads import AppliedEvent, PayloadRejected
from edge_sync.errors import BadRequest, NotFound, StorageCorrupt, StorageError
from edge_sync.storage.entity_store import Conflict
from edge_sync.storage.env import NIL_STORE_ID, LmdbStore


def ev(seq: int | None, entity: uuid.UUID | None = None, action: str = "TIMESERIES_UPDATED",
       body: object = None, entity_type: str = "DEVICE") -> AppliedEvent:
    return AppliedEvent(seq, entity_type, entity or uuid.UUID(int=1), action,
                        body if body is not None else {"ts": 1, "values": {"s": seq}}, 1)


@pytest.fixture
def store(tmp_path: Path):
    s = CloudStore(tmp_path / "cloud")
    yield s
    s.close()


def test_apply_deduplicates_by_edge_and_seq_and_keeps_apply_order(store):
    a, b = uuid.uuid4(), uuid.uuid4()
    assert store.apply_uplink(a, [ev(1), ev(2), ev(2)], 10) == (2, 1)
    assert store.apply_uplink(a, [ev(2), ev(3)], 11) == (1, 1)
    assert store.apply_uplink(b, [ev(1)], 12) == (1, 0)  # another edge: its own seqs
    assert store.apply_uplink(a, [ev(None), ev(None)], 13) == (2, 0)  # no seq: no dedup
    events = store.events(a)
    assert [(e.apply_index, e.seq) for e in events] == [(1, 1), (2, 2), (3, 3), (4, None), (5, None)]
    assert events[2].applied_at == 11 and events[0].body == {"ts": 1, "values": {"s": 1}}
    assert [e.seq for e in store.events(a, after=1, limit=2)] == [2, 3]
    assert store.events(a, after=5) == []
    assert store.applied_count(a) == 5 and store.applied_count(b) == 1


def test_each_edge_store_has_its_own_seqs_and_the_apply_order_spans_them(tmp_path):
    path = tmp_path / "c"
    s = CloudStore(path)
    edge, other = uuid.uuid4(), uuid.uuid4()
    assert s.incarnation(edge, None, 1) == (0, False)
    assert s.incarnation(edge, "", 1) == (0, False)
    assert s.incarnation(edge, str(NIL_STORE_ID), 1) == (0, False)  # an edge store without an id
    assert s.incarnation(edge, "store-a", 2) == (1, True)
    assert s.incarnation(edge, "store-a", 3) == (1, False)
    assert s.incarnation(edge, "store-b", 4) == (2, True)
    assert s.incarnation(other, "store-a", 5) == (1, True)  # numbered per edge
    assert s.apply_uplink(edge, [ev(1), ev(2), ev(3)], 10, incarnation=1) == (3, 0)
    assert s.apply_uplink(edge, [ev(1), ev(2), ev(3)], 11, incarnation=2) == (3, 0)
    assert s.apply_uplink(edge, [ev(3), ev(4)], 12, incarnation=1) == (1, 1)
    assert s.apply_uplink(edge, [ev(1)], 13) == (1, 0)  # incarnation 0: no store id
    s.close()
    s = CloudStore(path)  # durable: the same numbers after a reopen
    try:
        assert s.incarnation(edge, "store-b", 20) == (2, False)
        assert s.incarnation(edge, "store-c" * 100, 21) == (3, True)  # any length
        assert s.apply_uplink(edge, [ev(2), ev(3)], 22, incarnation=2) == (0, 2)
        events = s.events(edge)
        assert [(e.apply_index, e.incarnation, e.store_id, e.seq) for e in events] == [
            (1, 1, "store-a", 1), (2, 1, "store-a", 2), (3, 1, "store-a", 3),
            (4, 2, "store-b", 1), (5, 2, "store-b", 2), (6, 2, "store-b", 3),
            (7, 1, "store-a", 4), (8, 0, None, 1)]
        assert events[3].as_json()["store_id"] == "store-b" and events[7].as_json()["store_id"] is None
        assert [(n, sid, seen) for n, sid, seen in s.edge_stores(edge)] == [
            (1, "store-a", 2), (2, "store-b", 4), (3, "store-c" * 100, 21)]
        assert s.applied_count(edge) == 8
    finally:
        s.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.integers(0, 40), max_size=12), max_size=8))
def test_any_sequence_of_retries_applies_each_seq_once(tmp_path_factory, batches):
    s = CloudStore(tmp_path_factory.mktemp("prop"))
    try:
        edge = uuid.uuid4()
        expected: list[int] = []
        for batch in batches:
            s.apply_uplink(edge, [ev(q) for q in batch], 1)
            for q in batch:
                if q not in expected:
                    expected.append(q)
        assert [e.seq for e in s.events(edge)] == expected
    finally:
        s.close()


def test_a_value_msgpack_cannot_store_is_rejected_with_its_seq(store):
    with pytest.raises(PayloadRejected) as info:
        store.apply_uplink(uuid.uuid4(), [ev(1), ev(7, body={"values": {"x": 2**70}})], 1)
    assert info.value.seq == 7


def test_devices_follow_what_the_edge_sends(store):
    edge, dev = uuid.uuid4(), uuid.uuid4()
    added = {"id": {"entityType": "DEVICE", "id": str(dev)}, "name": "m1", "type": "t", "createdTime": 3}
    store.apply_uplink(edge, [ev(1, dev, "ADDED", added),
                              ev(2, dev, "CREDENTIALS_UPDATED", {"credentialsId": "tok"})], 5)
    d = store.device(dev)
    assert d is not None
    assert (d.name, d.type, d.token, d.origin, d.edge_id) == ("m1", "t", "tok", "edge", edge)
    store.apply_uplink(edge, [ev(3, dev, "UPDATED", {**added, "name": "m2"})], 6)
    assert [x.id for x in store.devices_named("m2")] == [dev] and store.devices_named("m1") == []
    assert store.device(dev).token == "tok"
    store.apply_uplink(edge, [ev(4, dev, "DELETED", {})], 7)
    assert store.device(dev) is None and store.devices_of_edge(edge) == []


def test_downlink_queue_is_ordered_durable_and_per_edge(tmp_path):
    path = tmp_path / "c"
    s = CloudStore(path)
    a, b = uuid.uuid4(), uuid.uuid4()
    assert s.enqueue_downlinks(a, [b"x", b"y"]) == [1, 2]
    assert s.enqueue_downlinks(b, [b"z"]) == [1]
    assert s.reserve_downlink_numbers(a, 2) == [3, 4]
    assert s.enqueue_downlinks(a, [b"w"]) == [5]
    s.close()
    s = CloudStore(path)
    head = s.first_downlink(a)
    assert head is not None and (head.number, head.msg_id, head.payload) == (1, 1, b"x")
    assert s.remove_downlink(a, 1) and not s.remove_downlink(a, 1)
    assert s.first_downlink(a).payload == b"y"
    assert s.queued_downlinks(a) == 2 and s.queued_downlinks(b) == 1
    s.remove_downlink(a, 2)
    s.remove_downlink(a, 5)
    assert s.first_downlink(a) is None and s.first_downlink(b).payload == b"z"
    s.close()


def test_downlink_ids_are_positive_int32():
    assert downlink_msg_id(1) == 1
    assert downlink_msg_id(2**31 - 1) == 2**31 - 1
    assert downlink_msg_id(2**31) == 1


def test_service_devices_names_tokens_and_attributes(store):
    service = CloudService(store)
    e1, _, _ = service.create_edge("e1", routing_key="rk1", secret="s1")
    e2, _, _ = service.create_edge("e2", routing_key="rk2", secret="s2")
    assert e2.edge_id != e1.edge_id
    d1, numbers = service.create_device("rk1", "pump", token="tok")
    assert numbers == [1] and d1.edge_id == e1.edge_id
    with pytest.raises(Conflict):
        service.create_device("rk1", "pump")
    with pytest.raises(Conflict):
        service.create_device("rk2", "other", token="tok")
    d2, _ = service.create_device("rk2", "pump")
    assert len(d2.token or "") == 20
    with pytest.raises(BadRequest, match="name the edge"):
        service.set_attributes("pump", {"a": 1})
    device, number = service.set_attributes("pump", {"a": 1, "b": [1, "x"]}, edge_ref="rk2")
    assert device.id == d2.id and number == 2
    assert service.set_attributes(str(d1.id), {"a": 2})[0].id == d1.id
    assert store.shared_attributes(d2.id) == {"a": 1, "b": [1, "x"]}
    assert store.sync_snapshot(e1.edge_id) == [(d1, {"a": 2})]
    with pytest.raises(NotFound):
        service.set_attributes("nope", {"a": 1})
    with pytest.raises(NotFound):
        service.create_device("rk-unknown", "x")
    for bad in ({}, {"a": None}, {"a": float("nan")}, {"": 1}, {"a": 2**64}):
        with pytest.raises(BadRequest):
            service.set_attributes("pump", bad, edge_ref="rk1")


def test_edges_secrets_are_hashed_and_checked(store):
    service = CloudService(store)
    edge, secret, created = service.create_edge("e1")
    assert created and len(secret) >= 32
    assert service.authenticate(edge.routing_key, secret) == edge
    assert service.authenticate(edge.routing_key, secret + "x") is None
    assert service.authenticate("unknown", secret) is None
    assert service.authenticate("", "") is None
    stored = store.edge(edge.routing_key)
    assert stored is not None and secret.encode() not in stored.secret_hash
    assert secret not in repr(stored)
    again = service.create_edge("e1", routing_key=edge.routing_key, secret=secret)
    assert again == (edge, secret, False)
    with pytest.raises(Conflict):
        service.create_edge("e1", routing_key=edge.routing_key, secret="different")
    with pytest.raises(BadRequest):
        service.create_edge("")
    with pytest.raises(BadRequest):
        service.create_edge("e", routing_key="has space")


def test_credentials_helpers():
    salt, digest = credentials.hash_secret("abc")
    assert credentials.verify_secret("abc", salt, digest, credentials.DEFAULT_KDF)
    assert not credentials.verify_secret("abd", salt, digest, credentials.DEFAULT_KDF)
    assert credentials.hash_secret("abc")[1] != digest  # a fresh salt each time
    uuid.UUID(credentials.new_routing_key())


def test_readonly_open_needs_an_existing_cloud_store(tmp_path):
    with pytest.raises(StorageError, match="no edge-cloud store"):
        CloudStore(tmp_path / "missing", readonly=True)
    edge_store = LmdbStore(tmp_path / "edge")
    edge_store.close()
    with pytest.raises(StorageCorrupt, match="edge-cloud"):
        CloudStore(tmp_path / "edge")
    s = CloudStore(tmp_path / "cloud")
    s.apply_uplink(uuid.UUID(int=5), [ev(1)], 1)
    s.close()  # (one process opens an LMDB environment once; other processes may write meanwhile)
    ro = CloudStore(tmp_path / "cloud", readonly=True)
    try:
        assert [e.seq for e in ro.events(uuid.UUID(int=5))] == [1]
        with pytest.raises(StorageError):
            ro.enqueue_downlinks(uuid.UUID(int=5), [b"x"])
    finally:
        ro.close()


def test_device_record_hides_its_token():
    d = CloudDevice(uuid.uuid4(), uuid.uuid4(), "n", "t", "", "secret-token", 1, "cloud")
    assert "secret-token" not in repr(d) and "token" not in d.as_json()


def test_named_ids_are_made_once_and_kept_across_reopening(tmp_path):
    made = iter([uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)])
    s = CloudStore(tmp_path / "c")
    assert s.named_ids(["a", "b"], lambda: next(made)) == {"a": uuid.UUID(int=1), "b": uuid.UUID(int=2)}
    assert s.named_ids(["b", "x" * 600], lambda: next(made)) == {"b": uuid.UUID(int=2),
                                                                  "x" * 600: uuid.UUID(int=3)}
    s.close()
    s = CloudStore(tmp_path / "c")
    try:
        assert s.named_ids(["a", "x" * 600], lambda: uuid.uuid4()) == {
            "a": uuid.UUID(int=1), "x" * 600: uuid.UUID(int=3)}
    finally:
        s.close()


def test_parked_downlinks_leave_the_queue_and_are_listed_with_their_error(store):
    from edge_sync.cloud import downlinks
    from edge_sync.cloud.records import QueuedDownlink

    edge, other = uuid.uuid4(), uuid.uuid4()
    payload = downlinks.sync_completed()
    assert store.enqueue_downlinks(edge, [payload, payload, payload]) == [1, 2, 3]
    store.enqueue_downlinks(other, [payload])
    first = store.first_downlink(edge)
    assert first is not None and first.durable
    assert store.park_downlink(edge, first, cause="refused", error="no tenant", attempts=3, now_ms=7)
    assert not store.park_downlink(edge, first, cause="refused", error="again", attempts=3, now_ms=8)
    assert store.dead_letter_downlink(edge, 3, "too big", now_ms=9)
    (number,) = store.reserve_downlink_numbers(edge, 1)
    sync_item = QueuedDownlink(number, downlink_msg_id(number), payload, durable=False)
    assert store.park_downlink(edge, sync_item, cause="refused", error="bad", attempts=2, now_ms=10)
    assert (store.queued_downlinks(edge), store.dead_downlinks(edge)) == (1, 3)
    assert store.dead_downlinks(other) == 0
    assert [p.as_json() for p in store.parked_downlinks(edge)] == [
        {"number": 1, "downlink_id": 1, "kinds": "syncCompletedMsg", "cause": "refused",
         "error": "no tenant", "attempts": 3, "parked_at": 7, "in_sync": False},
        {"number": 3, "downlink_id": 3, "kinds": "syncCompletedMsg", "cause": "too_large",
         "error": "too big", "attempts": 0, "parked_at": 9, "in_sync": False},
        {"number": 4, "downlink_id": 4, "kinds": "syncCompletedMsg", "cause": "refused",
         "error": "bad", "attempts": 2, "parked_at": 10, "in_sync": True}]
    assert [p.number for p in store.parked_downlinks(edge, limit=2)] == [1, 3]
    assert store.first_downlink(edge).number == 2
    # a record of the previous release (payload, reason, time) is listed as too large
    from edge_sync.storage import codec

    store.lmdb.write(lambda txn: txn.put(other.bytes + codec.u64(9), codec.pack((payload, "old", 5)),
                                         db=store.lmdb.dbs["dead_downlinks"]))
    (old,) = store.parked_downlinks(other)
    assert (old.cause, old.error, old.attempts, old.parked_at) == ("too_large", "old", 0, 5)


def _device(edge_id: uuid.UUID, name: str, token: str | None, type_: str = "default",
            device_id: uuid.UUID | None = None) -> CloudDevice:
    return CloudDevice(id=device_id or uuid.uuid4(), edge_id=edge_id, name=name, type=type_,
                       label="", token=token, created_time=1_764_921_600_000, origin="cloud")


def test_add_devices_creates_a_batch_in_one_transaction_each_with_its_downlinks(store, monkeypatch):
    from edge_sync.cloud import downlinks
    from edge_sync.proto import edge_pb2

    edge, _, _ = CloudService(store).create_edge("e1", routing_key="rk1", secret="s1")
    writes: list[str] = []
    real_write = store.lmdb.write
    monkeypatch.setattr(store.lmdb, "write",
                        lambda fn, **kw: writes.append(fn.__qualname__) or real_write(fn, **kw))
    batch = [_device(edge.edge_id, "d-1", "tok-1"), _device(edge.edge_id, "d-2", "tok-2"),
             _device(edge.edge_id, "d-3", None, type_="meter")]
    numbers = store.add_devices([(batch[0], [b"a"]), (batch[1], [b"b", b"c"]), (batch[2], None)])
    assert numbers == [[1], [2, 3], [4]]
    assert len(writes) == 1  # one transaction for the batch, the new type's profile included
    assert [store.device(d.id) for d in batch] == batch
    assert [d.id for d in store.devices_of_edge(edge.edge_id)] == sorted(d.id for d in batch)
    queued = store.queued_after(edge.edge_id, 0, 10)
    assert [q.payload for q in queued[:3]] == [b"a", b"b", b"c"]
    # downlinks None: the device's own, with its profile as the graph stores it (made here)
    (meter,) = store.graph.entities(entity_type="DEVICE_PROFILE", name="meter")
    own = edge_pb2.DownlinkMsg.FromString(queued[3].payload)
    assert own.deviceProfileUpdateMsg[0].entity == meter.json
    assert downlinks.describe(queued[3].payload) == "deviceUpdateMsg,deviceProfileUpdateMsg"
    assert store.add_devices([]) == [] and len(writes) == 1


def test_add_devices_is_all_or_nothing_with_the_checks_of_add_device(store):
    edge, _, _ = CloudService(store).create_edge("e1", routing_key="rk1", secret="s1")
    kept = _device(edge.edge_id, "pump", "tok")
    assert store.add_device(kept, [b"x"]) == [1]
    new = _device(edge.edge_id, "n-1", "tok-n")
    refused = [
        ([new, _device(edge.edge_id, "n-2", "tok-n")],  # a token taken earlier in the batch
         "device 'n-2': that access token is already used by another device"),
        ([new, _device(edge.edge_id, "n-1", "tok-m")],  # a name taken earlier in the batch
         "a device named 'n-1' already exists on that edge"),
        ([new, _device(edge.edge_id, "pump", None)],  # a name taken in the store
         "a device named 'pump' already exists on that edge"),
        ([new, _device(edge.edge_id, "n-3", None, device_id=kept.id)],  # an id taken
         f"device id {kept.id} already exists"),
        ([new, _device(edge.edge_id, "n-4", "tok")],  # a token taken in the store
         "device 'n-4': that access token is already used by another device"),
    ]
    for devices, error in refused:
        with pytest.raises(Conflict) as info:
            store.add_devices([(d, [b"y"]) for d in devices])
        assert str(info.value) == error
        assert store.device(new.id) is None  # nothing of the batch stored, nothing queued
        assert store.devices_named("n-1") == [] and store.queued_downlinks(edge.edge_id) == 1
    assert store.devices_of_edge(edge.edge_id) == [kept]


def test_graph_only_tells_entity_graph_changes_from_everything_else():
    from edge_sync.cloud import downlinks
    from edge_sync.cloud.rpc import RpcRecord, RpcStatus

    edge, dev = uuid.uuid4(), uuid.uuid4()
    device = _device(edge, "d", "tok", device_id=dev)
    graph = [
        downlinks.device_synced(device, uuid.uuid4(), uuid.uuid4()),
        downlinks.message_of([downlinks.entity_message("ASSET", "ADDED", dev, "{}")]),
        downlinks.message_of([downlinks.relation_message("RELATION_ADD_OR_UPDATE", "{}")]),
        downlinks.root_rule_chain_metadata(dev, [uuid.uuid4() for _ in range(5)]),
        downlinks.tenant(uuid.uuid4()),
    ]
    rpc = RpcRecord(id=uuid.uuid4(), edge_id=edge, device_id=dev, request_id=1, method="m",
                    params="{}", oneway=False, persistent=False, expiration_time=2**40,
                    created_time=1, status=RpcStatus.QUEUED, updated_time=1, retries=None,
                    additional_info=None)
    others = [
        # deletes are always delivered (an edge's sweep removes only what its graph holds)
        downlinks.device_deleted(dev),
        downlinks.message_of([downlinks.entity_message("DASHBOARD", "DELETED", dev, None)]),
        downlinks.message_of([downlinks.relation_message("RELATION_DELETED", "{}")]),
        downlinks.shared_attributes(device, {"a": 1}, 5),
        downlinks.device_rpc_request(rpc),
        downlinks.sync_completed(),
        downlinks.message_of([downlinks.entity_message("ASSET", "ADDED", dev, "{}")])
        + downlinks.shared_attributes(device, {"a": 1}, 5),  # mixed: not only graph changes
        b"",
        b"\xff\xff",  # does not parse
    ]
    assert [downlinks.graph_only(p) for p in graph] == [True] * len(graph)
    assert [downlinks.graph_only(p) for p in others] == [False] * len(others)


def test_superseded_downlinks_leave_the_queue_and_the_rest_keeps_its_order(store):
    from edge_sync.cloud import downlinks

    edge, other = uuid.uuid4(), uuid.uuid4()
    dev = _device(edge, "d", "tok")
    asset = downlinks.message_of([downlinks.entity_message("ASSET", "ADDED", dev.id, "{}")])
    attrs = downlinks.shared_attributes(dev, {"a": 1}, 5)
    assert store.last_downlink_number(edge) == 0
    store.enqueue_downlinks(edge, [asset, attrs, downlinks.device_deleted(dev.id), asset, attrs])
    store.enqueue_downlinks(other, [asset])
    parked = store.first_downlink(edge)
    assert parked is not None
    store.park_downlink(edge, parked, cause="refused", error="bad", attempts=3, now_ms=1)
    up_to = store.last_downlink_number(edge)
    assert up_to == 5
    assert store.enqueue_downlinks(edge, [asset]) == [6]  # queued after: never removed
    assert store.remove_superseded_downlinks(edge, downlinks.graph_only, up_to=up_to) == [4]
    assert [q.number for q in store.queued_after(edge, 0, 10)] == [2, 3, 5, 6]
    assert [p.number for p in store.parked_downlinks(edge)] == [1]  # parked: kept
    assert store.queued_downlinks(other) == 1
    assert store.remove_superseded_downlinks(edge, downlinks.graph_only, up_to=up_to) == []
    assert store.remove_superseded_downlinks(edge, downlinks.graph_only, up_to=0) == []
    assert store.remove_superseded_downlinks(edge, lambda _p: True, up_to=6) == [2, 3, 5, 6]
