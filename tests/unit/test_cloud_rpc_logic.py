"""Server-side RPC on the cloud as pure logic (cloud/rpc.py: the body, the statuses and their
transitions, the REST answer), its downlink (cloud/downlinks.py) and its records in the cloud
store, including a store of the edge-cloud/3 format made before the `rpcs` database existed."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import lmdb
import pytest

from edge_sync.cloud import downlink_batch, downlinks, rpc
from edge_sync.cloud.records import QueuedDownlink
from edge_sync.cloud.rpc import Answer, AnswerKind, RestAnswer, RpcRecord, RpcStatus
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.cloud.uplink_payloads import AppliedEvent, uplink_events
from edge_sync.common.wire import uuid_halves, uuid_of
from edge_sync.errors import BadRequest
from edge_sync.proto import edge_pb2
from edge_sync.storage import codec
from edge_sync.storage.records import Action

NOW = 1_700_000_000_000
EDGE, DEVICE, RPC_ID = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)


def record(status: RpcStatus = RpcStatus.QUEUED, *, oneway: bool = False,
           persistent: bool = False, expires: int = NOW + 10_000) -> RpcRecord:
    return RpcRecord(id=RPC_ID, edge_id=EDGE, device_id=DEVICE, request_id=1, method="m",
                     params={"a": 1}, oneway=oneway, persistent=persistent,
                     expiration_time=expires, created_time=NOW, status=status, updated_time=NOW)


def answer(response: str | None = '"ok"', error: str | None = None) -> Answer:
    return Answer(RPC_ID, DEVICE, response, error)


# -- the body ----------------------------------------------------------------------------------------


def test_a_body_with_defaults_as_thingsboard():
    call = rpc.parse_call({"method": "setGpio"}, oneway=False, now_ms=NOW)
    assert call == rpc.RpcCall(method="setGpio", params={}, oneway=False, persistent=False,
                               expiration_time=NOW + 10_000, timeout_ms=10_000)


def test_expiration_time_overrides_the_timeout():
    call = rpc.parse_call({"method": "m", "timeout": 500, "expirationTime": NOW + 9,
                           "persistent": True, "retries": 2, "additionalInfo": {"k": 1}},
                          oneway=True, now_ms=NOW)
    assert (call.expiration_time, call.timeout_ms, call.oneway, call.persistent, call.retries,
            call.additional_info) == (NOW + 9, 500, True, True, 2, {"k": 1})


@pytest.mark.parametrize("body,words", [
    (None, "expected a JSON object"),
    ({"method": "m", "timeout": 99}, "timeout: 99 ms is out of range 100..600000"),
    ({"method": "m", "timeout": 1.5}, "timeout: expected a whole number"),
    ({"method": "m", "timeout": float("nan")}, "timeout: expected a whole number"),
    ({"method": "m", "expirationTime": 2**64}, "expirationTime: 18446744073709551616 does not fit"),
    ({"method": "m", "expirationTime": NOW + 600_001}, "more than 600000 ms away"),
    ({"method": "m", "params": "x" * (64 * 1024)}, "params: 65538 bytes of JSON"),
    ({"method": "m", "params": float("inf")}, "params: not valid JSON"),
    ({"method": "m", "retries": -1}, "retries: -1 is out of range"),
    ({"method": "m", "additionalInfo": [float("nan")]}, "additionalInfo: not valid JSON"),
])
def test_bad_bodies(body, words):
    with pytest.raises(BadRequest) as err:
        rpc.parse_call(body, oneway=False, now_ms=NOW)
    assert words in str(err.value)


def test_a_persistent_request_may_expire_far_away():
    call = rpc.parse_call({"method": "m", "persistent": True, "expirationTime": NOW + 86_400_000},
                          oneway=False, now_ms=NOW)
    assert call.expiration_time == NOW + 86_400_000


def test_request_ids_are_positive_int32_and_wrap():
    assert [rpc.next_request_id(n) for n in (0, 1, 2**31 - 2, 2**31 - 1)] == [1, 2, 2**31 - 1, 1]


# -- transitions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status,oneway,persistent,expected", [
    (RpcStatus.QUEUED, False, False, RpcStatus.EXPIRED),
    (RpcStatus.QUEUED, True, True, RpcStatus.EXPIRED),
    (RpcStatus.SENT, False, False, RpcStatus.TIMEOUT),
    (RpcStatus.DELIVERED, False, False, RpcStatus.TIMEOUT),
    (RpcStatus.DELIVERED, False, True, RpcStatus.EXPIRED),
    (RpcStatus.SENT, True, False, RpcStatus.EXPIRED),
    (RpcStatus.DELIVERED, True, False, None),  # a one-way request ends delivered
    (RpcStatus.SUCCESSFUL, False, False, None),
    (RpcStatus.FAILED, False, True, None),
])
def test_what_expiry_does(status, oneway, persistent, expected):
    r = record(status, oneway=oneway, persistent=persistent, expires=NOW)
    assert rpc.expired(r, NOW) is None  # not before the time is beyond expirationTime
    assert rpc.expired(r, NOW + 1) == expected


def test_sent_then_acknowledged_then_answered():
    sent = rpc.on_sent(record(), NOW + 1)
    assert sent is not None and (sent.status, sent.updated_time) == (RpcStatus.SENT, NOW + 1)
    assert rpc.on_sent(sent, NOW + 2) is None  # a resend changes nothing
    delivered = rpc.on_acknowledged(sent, NOW + 3)
    assert delivered is not None and delivered.status is RpcStatus.DELIVERED
    outcome = rpc.apply_answer(delivered, answer('{"x":1}'), EDGE, NOW + 4)
    assert (outcome.kind, outcome.changed) == (AnswerKind.SETTLED, True)
    assert outcome.record is not None
    assert (outcome.record.status, outcome.record.response) == (RpcStatus.SUCCESSFUL, '{"x":1}')
    assert outcome.record.response_json() == {"x": 1}
    assert rpc.on_acknowledged(outcome.record, NOW + 5) is None


@pytest.mark.parametrize("error,status", [("TIMEOUT", RpcStatus.TIMEOUT),
                                          ("EXPIRED", RpcStatus.EXPIRED),
                                          ("NO_ACTIVE_CONNECTION", RpcStatus.FAILED),
                                          ("device said no", RpcStatus.FAILED)])
def test_error_answers(error, status):
    outcome = rpc.apply_answer(record(RpcStatus.DELIVERED), answer(None, error), EDGE, NOW)
    assert outcome.record is not None
    assert (outcome.record.status, outcome.record.error) == (status, error)
    assert outcome.record.response_json() == {"error": error}


def test_answers_that_change_nothing():
    other_edge = rpc.apply_answer(record(RpcStatus.SENT), answer(), uuid.UUID(int=9), NOW)
    assert (other_edge.kind, other_edge.record) == (AnswerKind.UNKNOWN, None)
    other_device = rpc.apply_answer(record(RpcStatus.SENT), Answer(RPC_ID, EDGE, "1", None), EDGE, NOW)
    assert other_device.kind is AnswerKind.UNKNOWN
    assert rpc.apply_answer(None, answer(), EDGE, NOW).kind is AnswerKind.UNKNOWN
    done = rpc.apply_answer(record(RpcStatus.SUCCESSFUL), answer(), EDGE, NOW)
    assert (done.kind, done.changed) == (AnswerKind.ALREADY_FINAL, False)
    report = rpc.apply_answer(record(RpcStatus.TIMEOUT), answer(None, "TIMEOUT"), EDGE, NOW)
    assert (report.kind, report.changed) == (AnswerKind.CONFIRMED, False)
    report = rpc.apply_answer(record(RpcStatus.SUCCESSFUL), answer(None, "TIMEOUT"), EDGE, NOW)
    assert report.kind is AnswerKind.ALREADY_FINAL
    late = rpc.apply_answer(record(RpcStatus.DELIVERED, expires=NOW - 1), answer(), EDGE, NOW)
    assert (late.kind, late.changed) == (AnswerKind.LATE, True)
    assert late.record is not None and late.record.status is RpcStatus.TIMEOUT
    assert late.record.response is None
    one_way = rpc.apply_answer(record(RpcStatus.DELIVERED, oneway=True, expires=NOW - 1),
                               answer("{}"), EDGE, NOW)
    assert (one_way.kind, one_way.changed) == (AnswerKind.LATE, False)


@pytest.mark.parametrize("persistent,status", [(True, RpcStatus.EXPIRED), (False, RpcStatus.TIMEOUT)])
def test_the_edge_reporting_the_expiry_at_the_deadline_settles_it(persistent, status):
    outcome = rpc.apply_answer(record(RpcStatus.DELIVERED, persistent=persistent, expires=NOW - 1),
                               answer(None, "TIMEOUT"), EDGE, NOW)
    assert (outcome.kind, outcome.changed) == (AnswerKind.SETTLED, True)
    assert outcome.record is not None
    assert (outcome.record.status, outcome.record.error) == (status, "TIMEOUT")


def test_a_one_way_request_answered_by_the_edge_is_successful():
    outcome = rpc.apply_answer(record(RpcStatus.DELIVERED, oneway=True), answer("{}"), EDGE, NOW)
    assert outcome.record is not None and outcome.record.status is RpcStatus.SUCCESSFUL


def test_deleting():
    deleted = rpc.on_deleted(record(RpcStatus.DELIVERED), NOW + 1)
    assert deleted is not None and (deleted.status, deleted.updated_time) == (RpcStatus.DELETED, NOW + 1)
    assert rpc.on_deleted(record(RpcStatus.SUCCESSFUL), NOW) is None


def test_parking_fails_the_request():
    parked = rpc.on_parked(record(RpcStatus.SENT), "Device not found", NOW)
    assert parked is not None
    assert (parked.status, parked.error) == (RpcStatus.FAILED, "refused by the edge: Device not found")
    assert rpc.on_parked(parked, "again", NOW) is None


# -- the REST answer -----------------------------------------------------------------------------


def test_rest_answers():
    assert rpc.submitted_answer(record(persistent=True)) == RestAnswer(200, {"rpcId": str(RPC_ID)})
    assert rpc.submitted_answer(record(oneway=True)) == RestAnswer(200)
    assert rpc.submitted_answer(record()) is None  # a two-way request waits
    assert rpc.submitted_answer(record(RpcStatus.EXPIRED)) == RestAnswer(504)
    ok = record(RpcStatus.SUCCESSFUL)
    assert rpc.final_answer(ok.with_status(ok.status, NOW, response='[1,2]')) == RestAnswer(200, [1, 2])
    assert rpc.final_answer(ok.with_status(ok.status, NOW, response='')) == RestAnswer(200)
    assert rpc.final_answer(ok.with_status(ok.status, NOW, response='plain')) == RestAnswer(406)
    for status in (RpcStatus.FAILED, RpcStatus.TIMEOUT, RpcStatus.EXPIRED):
        assert rpc.final_answer(record(status)) == RestAnswer(504)


# -- the downlink ------------------------------------------------------------------------------------


def test_the_downlink_is_thingsboards_device_rpc_call_msg():
    r = RpcRecord(id=RPC_ID, edge_id=EDGE, device_id=DEVICE, request_id=7, method="setGpio",
                  params={"pin": 7}, oneway=True, persistent=True, expiration_time=NOW,
                  created_time=NOW, status=RpcStatus.QUEUED, updated_time=NOW, retries=2,
                  additional_info={"note": "x"})
    payload = downlinks.device_rpc_request(r)
    msg = edge_pb2.DownlinkMsg.FromString(payload)
    (call,) = msg.deviceRpcCallMsg
    assert uuid_of(call.deviceIdMSB, call.deviceIdLSB) == DEVICE
    assert uuid_of(call.requestUuidMSB, call.requestUuidLSB) == RPC_ID
    assert (call.requestId, call.expirationTime, call.oneway, call.persisted, call.retries) == (
        7, NOW, True, True, 2)
    assert (call.requestMsg.method, call.requestMsg.params) == ("setGpio", '{"pin":7}')
    assert json.loads(call.additionalInfo) == {"note": "x"}
    assert not call.HasField("responseMsg")
    assert downlinks.rpc_request_of(payload) == (RPC_ID, NOW)
    assert downlinks.rpc_request_of(downlinks.sync_completed()) is None


# -- the store -----------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    s = CloudStore(tmp_path / "cloud")
    yield s
    s.close()


def _device(store: CloudStore) -> tuple[uuid.UUID, uuid.UUID]:
    service = CloudService(store)
    edge, _, _ = service.create_edge("e", routing_key="rk", secret="s")
    dev, _ = service.create_device("rk", "d1")
    return edge.edge_id, dev.id


def _answer_event(request_uuid: uuid.UUID, device: uuid.UUID, seq: int | None) -> AppliedEvent:
    return AppliedEvent(seq, "DEVICE", device, Action.RPC_CALL, {"response": "ok"}, 0,
                        Answer(request_uuid, device, '"ok"', None))


def test_a_request_is_stored_with_its_downlink_and_answered_once(store):
    edge, device = _device(store)
    new = RpcRecord(id=RPC_ID, edge_id=edge, device_id=device, request_id=0, method="m",
                    params=None, oneway=False, persistent=True, expiration_time=NOW + 5000,
                    created_time=NOW, status=RpcStatus.QUEUED, updated_time=NOW)
    stored = store.add_rpc(new, downlinks.device_rpc_request)
    assert (stored.request_id, stored.downlink) == (1, 2)  # the device's own downlink is 1
    assert store.rpc_record(RPC_ID) == stored
    queued = store.first_downlink(edge)
    assert queued is not None and queued.number == 1
    assert store.add_rpc(RpcRecord(**{**_fields(new), "id": uuid.UUID(int=4)}), None).request_id == 2

    applied, dups, outcomes = store.apply_uplink_answers(edge, [_answer_event(RPC_ID, device, 1)],
                                                         NOW + 10, incarnation=1)
    assert (applied, dups, [o.kind for o in outcomes]) == (1, 0, [AnswerKind.SETTLED])
    again = store.apply_uplink_answers(edge, [_answer_event(RPC_ID, device, 1)], NOW + 11,
                                       incarnation=1)
    assert again == (0, 1, [])  # a duplicate event answers nothing
    got = store.rpc_record(RPC_ID)
    assert got is not None and (got.status, got.response, got.updated_time) == (
        RpcStatus.SUCCESSFUL, '"ok"', NOW + 10)


def _fields(r: RpcRecord) -> dict[str, object]:
    return {name: getattr(r, name) for name in r.__slots__}  # type: ignore[attr-defined]


def test_a_store_without_the_rpcs_database_opens_read_only_and_gains_it_when_writable(tmp_path):
    path = tmp_path / "cloud"
    s = CloudStore(path)
    _device(s)
    s.close()
    env = lmdb.open(str(path), max_dbs=20)  # as an earlier release left it: no rpcs database
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"rpcs", txn=txn), delete=True)
    env.close()

    old = CloudStore(path, readonly=True)
    try:
        assert old.rpc_record(RPC_ID) is None
        assert [e.routing_key for e in old.edges()] == ["rk"]
    finally:
        old.close()
    writable = CloudStore(path)
    try:
        assert writable.rpc_record(RPC_ID) is None
        edge = writable.edges()[0].edge_id
        device = writable.devices_of_edge(edge)[0].id
        r = RpcRecord(id=RPC_ID, edge_id=edge, device_id=device, request_id=0, method="m",
                      params={}, oneway=True, persistent=False, expiration_time=NOW,
                      created_time=NOW, status=RpcStatus.QUEUED, updated_time=NOW)
        assert writable.add_rpc(r, None).request_id == 1
    finally:
        writable.close()


# -- requests travelling together ------------------------------------------------------------------


def _queued(number: int, *, expires: int = NOW + 10_000, params: object = None) -> QueuedDownlink:
    r = RpcRecord(id=uuid.UUID(int=100 + number), edge_id=EDGE, device_id=DEVICE,
                  request_id=number, method="m", params=params or {}, oneway=False,
                  persistent=True, expiration_time=expires, created_time=NOW,
                  status=RpcStatus.QUEUED, updated_time=NOW)
    return QueuedDownlink(number, number, downlinks.device_rpc_request(r))


def test_a_batch_takes_the_rpc_requests_that_follow_the_head():
    head, following = _queued(1), [_queued(2), _queued(3)]
    got = downlink_batch.batch_of(head, following, now_ms=NOW, max_bytes=1 << 20)
    assert [q.number for q in got] == [1, 2, 3]
    msg = edge_pb2.DownlinkMsg.FromString(downlink_batch.combined(got).payload)
    assert [c.requestId for c in msg.deviceRpcCallMsg] == [1, 2, 3]
    assert downlink_batch.combined(got).number == 1
    assert downlink_batch.combined([head]) is head
    # sent under the last part's id: formed again with more behind it, it is another id
    assert downlink_batch.combined(got).msg_id == 3
    assert downlink_batch.combined([*got, _queued(4)]).msg_id == 4


def test_a_batch_stops_at_what_cannot_go_with_it():
    head = _queued(1)
    other = QueuedDownlink(2, 2, downlinks.sync_completed())
    assert [q.number for q in downlink_batch.batch_of(head, [other, _queued(3)], now_ms=NOW,
                                                  max_bytes=1 << 20)] == [1]
    expired = _queued(2, expires=NOW - 1)
    assert [q.number for q in downlink_batch.batch_of(head, [expired, _queued(3)], now_ms=NOW,
                                                  max_bytes=1 << 20)] == [1]
    assert [q.number for q in downlink_batch.batch_of(head, [_queued(n) for n in range(2, 10)],
                                                  now_ms=NOW, max_bytes=1 << 20,
                                                  max_count=3)] == [1, 2, 3]
    big = _queued(2, params="x" * 2000)
    assert [q.number for q in downlink_batch.batch_of(head, [big], now_ms=NOW,
                                                  max_bytes=len(head.payload) + 1000)] == [1]
    assert downlink_batch.batch_of(other, [head], now_ms=NOW, max_bytes=1 << 20) == [other]


@pytest.mark.parametrize("text, kept", [
    ('{"ok": true}', {"ok": True}),
    ("42", 42),
    ("OK", "OK"),
    ("[1, 2", "[1, 2"),
    ('{"v": 99999999999999999999}', '{"v": 99999999999999999999}'),  # beyond 64 bits
    ('"\\ud800"', '"\\ud800"'),  # a lone surrogate, escaped
    ("NaN", "NaN"),
    ('{"v": 1e999}', '{"v": 1e999}'),
    ("", None),
])
def test_a_device_answer_is_kept_as_json_only_when_the_store_can_hold_it(text, kept):
    """The edge sends any answer a device gave (ThingsBoard's transports take any text): the
    cloud keeps its JSON value when the store can hold it, its text otherwise, and the uplink
    is applied rather than refused (a refused answer would be dead-lettered at the edge)."""
    device = uuid.uuid4()
    up = edge_pb2.UplinkMsg(uplinkMsgId=1)
    call = up.deviceRpcCallMsg.add(deviceIdMSB=uuid_halves(device)[0],
                                  deviceIdLSB=uuid_halves(device)[1], requestId=7,
                                  edgeSeqId=3)
    call.responseMsg.response = text
    (event,) = uplink_events(up)
    assert event.body == {"requestId": 7, "response": kept, "error": ""}
    assert codec.unpack(codec.pack(event.body), "rpc answer") == event.body
