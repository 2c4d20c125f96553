"""The RPC call request node (ThingsBoard's TbSendRPCRequestNode) on the edge: what the engine
makes of a message (rules/engine.py ``SendRpc``, ThingsBoard's checks and texts), what the
message's Append then carries (actors/rule_outcomes.py ``plan``: a PutRpc of a rule-made
request), and how such a request is kept (storage/rpc_store.py: its origin, a cloud request's
record unchanged)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_sync.actors.messages import PutRpc
from edge_sync.actors.rule_outcomes import RuleCounters, RuleRpcRequests, plan, rpc_end_msg
from edge_sync.devices.rpc import RpcRequest, RpcStatus, RuleSource, TextAnswer
from edge_sync.errors import StorageCorrupt
from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import Failed, Outcome, RuleEngine, SendRpc, Visited
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rpc_store import RpcStore

DEVICE = uuid.UUID("6f1c1a52-3b7e-4c55-9a0e-1d2b3c4d5e6f")
DEV = Originator("DEVICE", str(DEVICE))
NOW = 1_700_000_000_000
RPC_NODE = "nodes[1] 'Fan'"


def engine(config: dict[str, Any] | None = None) -> RuleEngine:
    """A type switch -> (Post telemetry) the RPC call request node."""
    rc, meta = parse({"ruleChain": {"name": "rpc", "type": "EDGE"},
                      "metadata": {"firstNodeIndex": 0, "nodes": [
                          {"type": n.MSG_TYPE_SWITCH, "name": "Switch", "configuration": {}},
                          {"type": n.RPC_REQUEST, "name": "Fan",
                           "configuration": {"timeoutInSeconds": 60} if config is None
                           else config}],
                          "connections": [{"fromIndex": 0, "toIndex": 1,
                                           "type": "Post telemetry"}]}})
    return RuleEngine(rc, meta, clock=lambda: NOW)


def msg(data: Any, *, originator: Originator = DEV, **meta: str) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", originator, data, meta, ts=1000)


def effects(out: list[Outcome]) -> list[Outcome]:
    return [o for o in out if not isinstance(o, Visited)]


FAN_KEY = engine().node_key(1)


def sent(method: str, params: str, *, oneway: bool = False,
         expiration: int = NOW + 60_000, **meta: str) -> SendRpc:
    return SendRpc(RPC_NODE, ("DEVICE", str(DEVICE)), method, params, oneway, expiration,
                   FAN_KEY, "POST_TELEMETRY_REQUEST", meta)


def test_a_message_with_method_and_params_becomes_a_request_and_goes_no_further() -> None:
    out = engine().run(msg({"method": "setFan", "params": {"speed": 3}}))
    assert out == [Visited("nodes[0] 'Switch'"), Visited(RPC_NODE),
                   sent("setFan", '{"speed":3}')]


@pytest.mark.parametrize(("params", "text"), [
    ({"a": [1, 2.5, None, "é"]}, '{"a":[1,2.5,null,"é"]}'),  # Gson's toJson: compact
    ([1, 2], "[1,2]"),
    ("on", "on"),  # a primitive: getAsString
    (7, "7"),
    (2.5, "2.5"),
    (True, "true"),
    (None, "null"),  # JsonNull is no primitive: toJson
])
def test_params_are_kept_as_thingsboard_parses_them(params: Any, text: str) -> None:
    """TbSendRPCRequestNode.parseJsonData: a primitive's getAsString, anything else its JSON."""
    out = effects(engine().run(msg({"method": "m", "params": params})))
    assert out == [sent("m", text)]


@pytest.mark.parametrize(("method", "text"), [("reboot", "reboot"), (12, "12"),
                                              (False, "false")])
def test_a_primitive_method_is_its_text(method: Any, text: str) -> None:
    assert effects(engine().run(msg({"method": method, "params": {}}))) == [
        sent(text, "{}")]


@pytest.mark.parametrize(("data", "meta", "error"), [
    ({"params": {}}, {}, "Method is not present in the message!"),
    ({"method": "m"}, {}, "Params are not present in the message!"),
    ({"method": None, "params": {}}, {}, "method null is not a text"),
    ({"method": {"x": 1}, "params": {}}, {}, 'method {"x":1} is not a text'),
    ([1, 2], {}, "the message's data is not a JSON object: [1,2]"),
    ({"method": "", "params": {}}, {},
     "the method is empty: the edge sends no request without one"),
    ({"method": "m", "params": {}}, {"expirationTime": "soon"},
     "metadata expirationTime 'soon' is not a whole number (Long.parseLong)"),
    # beyond 64 bits; thousands of digits, which int() refuses (it must not raise out)
    ({"method": "m", "params": {}}, {"expirationTime": "9" * 19},
     f"metadata expirationTime {'9' * 19!r} is not a whole number (Long.parseLong)"),
    ({"method": "m", "params": {}}, {"expirationTime": "7" * 5000},
     f"metadata expirationTime {'7' * 40!r} is not a whole number (Long.parseLong)"),
])
def test_what_thingsboard_fails_goes_by_failure(data: Any, meta: dict[str, str],
                                                 error: str) -> None:
    """TbSendRPCRequestNode.onMsg: no method, no params (its own texts), and what its JSON
    reads throw on (getAsString of null or an object, Long.parseLong) fail the message;
    nothing is sent. An empty method too, on the edge (ThingsBoard would send it)."""
    message = RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, meta, ts=1000)
    assert effects(engine().run(message)) == [Failed(RPC_NODE, error)]


def test_an_originator_that_is_not_a_device_fails_once_its_data_is_read() -> None:
    """onMsg parses the data as an object before it looks at the originator."""
    asset = Originator("ASSET", str(uuid.uuid4()))
    assert effects(engine().run(msg({"method": "m", "params": {}}, originator=asset))) == [
        Failed(RPC_NODE, "Message originator is not a device entity!")]
    assert effects(engine().run(msg([1], originator=asset))) == [
        Failed(RPC_NODE, "the message's data is not a JSON object: [1]")]


def test_oneway_and_expiration_come_from_the_metadata_and_request_ids_are_not_read() -> None:
    """oneway from the metadata (Boolean.parseBoolean: any case of "true"), expirationTime from
    the metadata; the data's requestId and the metadata's requestUUID are not the device's
    (ThingsBoard's device actor numbers what it sends: RuleRpcRequests does here)."""
    request_uuid = str(uuid.uuid4())
    out = effects(engine().run(msg(
        {"method": "m", "params": {}, "requestId": "42"}, oneway="TRUE",
        expirationTime=str(NOW + 5), requestUUID=request_uuid)))
    assert out == [SendRpc(RPC_NODE, ("DEVICE", str(DEVICE)), "m", "{}", True, NOW + 5,
                           FAN_KEY, "POST_TELEMETRY_REQUEST",
                           {"oneway": "TRUE", "expirationTime": str(NOW + 5),
                            "requestUUID": request_uuid})]
    out = effects(engine().run(msg({"method": "m", "params": {}, "requestId": -7},
                                   oneway="yes")))
    assert out == [SendRpc(RPC_NODE, ("DEVICE", str(DEVICE)), "m", "{}", False,
                           NOW + 60_000, FAN_KEY, "POST_TELEMETRY_REQUEST", {"oneway": "yes"})]


@pytest.mark.parametrize(("config", "expiration"), [
    ({"timeoutInSeconds": 60}, NOW + 60_000),
    ({"timeoutInSeconds": "5"}, NOW + 5_000),
    ({}, NOW),  # the int's default, 0: expired at once, as on ThingsBoard
    ({"timeoutInSeconds": None}, NOW),
])
def test_without_expiration_time_the_node_timeout_counts_from_now(
        config: dict[str, Any], expiration: int) -> None:
    out = effects(engine(config).run(msg({"method": "m", "params": 1})))
    assert out == [sent("m", "1", expiration=expiration)]


def test_a_batch_gives_each_message_what_run_gives_it() -> None:
    batch = [msg({"method": "a", "params": 1}), msg({"params": 2}),
             msg({"method": "c", "params": 3, "requestId": 9})]
    visits: dict[str, int] = {}
    got = engine().run_many(batch, visits=visits)
    one_by_one = engine()
    assert got == [effects(one_by_one.run(m)) for m in batch]
    assert got == [[sent("a", "1")],
                   [Failed(RPC_NODE, "Method is not present in the message!")],
                   [sent("c", "3")]]
    assert visits == {"nodes[0] 'Switch'": 3, RPC_NODE: 3}


def numbered(*ids: int) -> RuleRpcRequests:
    """Draws ``ids`` in turn; uuids 1, 2, ..."""
    draws, uuids = iter(ids), iter(range(1, 100))
    return RuleRpcRequests(draw=lambda: next(draws), new_uuid=lambda: uuid.UUID(int=next(uuids)))


def test_plan_stores_a_rule_request_queued_and_hands_it_over_after_the_commit() -> None:
    counters = RuleCounters(RulesRuntime())
    make = numbered(501).maker(DEVICE, NOW + 3, ())
    out = plan(DEVICE, [Visited(RPC_NODE), sent("setFan", '{"speed":3}')], counters,
               NOW + 3, rpc=make)
    request = RpcRequest(DEVICE, uuid.UUID(int=1), 501, "setFan", '{"speed":3}', False,
                         NOW + 60_000, NOW + 3, updated_at=NOW + 3,
                         source=RuleSource(FAN_KEY, "POST_TELEMETRY_REQUEST", ()))
    assert out.mutations == [PutRpc(request)]
    assert out.rpc_requests == [request]
    assert (out.events, out.pushed, out.kept_local) == ([], 0, 0)
    assert request.status is RpcStatus.QUEUED and not request.reported


def test_ids_avoid_the_devices_open_requests_and_those_made_lately() -> None:
    """An answer is taken by the open request of its id (RpcBook.answer): a rule-made request
    never takes the id of an open one, the cloud's included, nor of one made lately whose
    Append has not reached the device's book yet (ThingsBoard's device actor numbers what it
    sends, DeviceActorMessageProcessor rpcSeq)."""
    cloud = RpcRequest(DEVICE, uuid.uuid4(), 3, "getState", "{}", False, NOW + 9, NOW)
    requests = numbered(3, 7, 3, 7, 8, 7, 3, 9)
    make = requests.maker(DEVICE, NOW, (cloud,))
    assert [make(sent("a", "1")).request_id, make(sent("b", "2")).request_id] == [7, 8]
    later = requests.maker(DEVICE, NOW, (cloud,))  # the next Append
    assert later(sent("c", "3")).request_id == 9


def test_queued_times_follow_the_order_the_requests_are_made() -> None:
    cloud = RpcRequest(DEVICE, uuid.uuid4(), 3, "getState", "{}", False, NOW + 9, NOW + 5)
    requests = numbered(1, 2, 4)
    make = requests.maker(DEVICE, NOW, (cloud,))
    assert [make(sent("a", "1")).queued_at, make(sent("b", "2")).queued_at] == [NOW + 6,
                                                                                NOW + 7]
    assert requests.maker(DEVICE, NOW + 100, ())(sent("c", "3")).queued_at == NOW + 100


def test_the_requests_of_one_append_come_back_in_their_order_after_a_restart(
        tmp_path: Path) -> None:
    """The store orders a device's requests by (queued time, uuid): two made in the same
    millisecond, the second with the lower uuid, are loaded at start in the order made."""
    uuids = iter((uuid.UUID(int=0xFF << 120), uuid.UUID(int=1)))
    make = RuleRpcRequests(draw=iter((11, 12)).__next__, new_uuid=uuids.__next__).maker(
        DEVICE, NOW, ())
    planned = plan(DEVICE, [sent("setFan", "1"), sent("setFan", "0")],
                   RuleCounters(RulesRuntime()), NOW, rpc=make)
    store = LmdbStore(tmp_path / "s", initial_map_mb=8, max_size_mb=64)
    rpc = RpcStore(store)
    store.write(lambda txn: [rpc.put(txn, r) for r in planned.rpc_requests])  # type: ignore[func-returns-value]
    with store.read() as txn:
        assert [(r.request_id, r.params) for r in rpc.open_requests(txn)] == [
            (11, "1"), (12, "0")]
    store.close()


def _raw(store: LmdbStore, r: RpcRequest) -> Any:
    key = b"rpc/" + r.device_id.bytes + codec.u64(r.queued_at) + r.request_uuid.bytes
    with store.read() as txn:
        raw = txn.get(key, db=store.dbs["meta"])
        assert raw is not None
        return codec.unpack(bytes(raw), "rpc")


def test_a_rule_request_keeps_its_origin_and_a_cloud_one_its_earlier_record(
        tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s", initial_map_mb=8, max_size_mb=64)
    rpc = RpcStore(store)
    cloud = RpcRequest(DEVICE, uuid.UUID(int=1), 1, "m", "{}", False, NOW + 10, NOW)
    source = RuleSource('["TbSendRPCRequestNode", "Fan", 1]', "POST_TELEMETRY_REQUEST",
                        (("deviceName", "fan-1"), ("ts", "5")))
    rule = RpcRequest(DEVICE, uuid.UUID(int=2), 2, "n", "1", True, NOW + 10, NOW + 1,
                      source=source)
    store.write(lambda txn: [rpc.put(txn, r) for r in (cloud, rule)])  # type: ignore[func-returns-value]
    with store.read() as txn:
        assert rpc.open_requests(txn) == [cloud, rule]
    # a cloud request's record is the 9 fields an earlier release writes and reads
    assert _raw(store, cloud) == [1, "m", "{}", False, NOW + 10, "QUEUED", 0, None, ""]
    assert _raw(store, rule) == [2, "n", "1", True, NOW + 10, "QUEUED", 0, None, "", "rule",
                                 '["TbSendRPCRequestNode", "Fan", 1]', "POST_TELEMETRY_REQUEST",
                                 [["deviceName", "fan-1"], ["ts", "5"]]]
    assert (rule.as_json()["origin"], cloud.as_json()["origin"]) == ("rule", "cloud")
    done = RpcRequest(DEVICE, rule.request_uuid, 2, "n", "1", True, NOW + 10, NOW + 1,
                      RpcStatus.SUCCESSFUL, NOW + 2, {}, source=source)
    store.write(lambda txn: rpc.put(txn, done))
    store.close()
    readonly = LmdbStore(tmp_path / "s", readonly=True)
    with readonly.read() as txn:
        assert list(RpcStore(readonly).scan(txn)) == [cloud, done]
    readonly.close()


@pytest.mark.parametrize("origin", ["someone", "cloud"])  # a source is the rule chain's
def test_an_unknown_origin_is_a_corrupt_record(tmp_path: Path, origin: str) -> None:
    store = LmdbStore(tmp_path / "s", initial_map_mb=8, max_size_mb=64)
    rpc = RpcStore(store)
    rule = RpcRequest(DEVICE, uuid.UUID(int=2), 2, "n", "1", True, NOW + 10, NOW,
                      source=SOURCE)
    store.write(lambda txn: rpc.put(txn, rule))
    key = b"rpc/" + DEVICE.bytes + codec.u64(NOW) + rule.request_uuid.bytes
    store.write(lambda txn: txn.put(key, codec.pack(
        (2, "n", "1", True, NOW + 10, "QUEUED", 0, None, "", origin, "k", "T", [])),
        db=store.dbs["meta"]))
    with store.read() as txn, pytest.raises(StorageCorrupt,
                                            match=f"origin and source \\['{origin}', 'k'"):
        rpc.open_requests(txn)
    store.close()


SOURCE = RuleSource(FAN_KEY, "POST_TELEMETRY_REQUEST", (("deviceName", "fan-1"), ("ts", "5")))


@pytest.mark.parametrize(("status", "oneway", "response", "relation", "data"), [
    (RpcStatus.SUCCESSFUL, False, {"fan": "on"}, "Success", {"fan": "on"}),
    (RpcStatus.SUCCESSFUL, False, None, "Success", None),  # the device answered null
    (RpcStatus.SUCCESSFUL, True, None, "Success", {}),  # one-way (TbMsg.EMPTY_JSON_OBJECT)
    (RpcStatus.SUCCESSFUL, False, TextAnswer("OK"), "Success", "OK"),  # not JSON: its text
    (RpcStatus.SUCCESSFUL, False, "OK", "Success", "OK"),  # ... as the store gives it back
    # DeviceActorMessageProcessor.processServerSideRpcTimeout: sent ? TIMEOUT :
    # NO_ACTIVE_CONNECTION
    (RpcStatus.TIMEOUT, False, None, "Failure", {"error": "TIMEOUT"}),
    (RpcStatus.EXPIRED, False, None, "Failure", {"error": "NO_ACTIVE_CONNECTION"}),
    (RpcStatus.FAILED, False, None, "Failure", {"error": "INTERNAL"}),
])
def test_a_finished_request_goes_on_as_thingsboard_s_callback_sends_it(
        status: RpcStatus, oneway: bool, response: Any, relation: str, data: Any) -> None:
    """TbSendRPCRequestNode's callback: the answer (or ``{}``) by Success, ``{"error": NAME}``
    by Failure, as a message of the type and metadata of the one that made the request."""
    request = RpcRequest(DEVICE, uuid.UUID(int=1), 7, "setFan", "3", oneway, NOW, NOW - 9,
                         status, NOW, response, source=SOURCE)
    end = rpc_end_msg(request, NOW + 1)
    assert end is not None
    assert (end[0], end[1].type, end[1].originator, end[1].data, dict(end[1].metadata),
            end[1].ts) == (relation, "POST_TELEMETRY_REQUEST", DEV, data,
                           {"deviceName": "fan-1", "ts": "5"}, NOW + 1)


def test_an_open_or_cloud_request_does_not_go_on() -> None:
    open_one = RpcRequest(DEVICE, uuid.UUID(int=1), 7, "m", "3", False, NOW, NOW,
                          source=SOURCE)
    cloud = RpcRequest(DEVICE, uuid.UUID(int=2), 7, "m", "3", False, NOW, NOW,
                       RpcStatus.SUCCESSFUL, NOW, {})
    assert (rpc_end_msg(open_one, NOW), rpc_end_msg(cloud, NOW)) == (None, None)


def test_a_request_expired_when_made_goes_on_with_timeout() -> None:
    """timeoutInSeconds 0, or an expirationTime already past: ThingsBoard's device actor
    ignores such a request and its rule engine's timeout answers TIMEOUT
    (DefaultTbRuleEngineRpcService.scheduleTimeout), not NO_ACTIVE_CONNECTION."""
    at_once = RpcRequest(DEVICE, uuid.UUID(int=1), 7, "m", "3", False, NOW, NOW,
                         RpcStatus.EXPIRED, NOW, None, source=SOURCE)
    end = rpc_end_msg(at_once, NOW + 1)
    assert end is not None and (end[0], end[1].data) == ("Failure", {"error": "TIMEOUT"})
