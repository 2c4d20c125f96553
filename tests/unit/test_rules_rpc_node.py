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
from edge_sync.actors.rule_outcomes import RuleCounters, plan
from edge_sync.devices.rpc import RpcOrigin, RpcRequest, RpcStatus
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
    uuids = iter(f"00000000-0000-4000-8000-{i:012d}" for i in range(1, 100))
    ids = iter(range(501, 600))
    return RuleEngine(rc, meta, clock=lambda: NOW, new_id=lambda: next(uuids),
                      new_rpc_id=lambda: next(ids))


def msg(data: Any, *, originator: Originator = DEV, **meta: str) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", originator, data, meta, ts=1000)


def effects(out: list[Outcome]) -> list[Outcome]:
    return [o for o in out if not isinstance(o, Visited)]


def sent(request_uuid: int, request_id: int, method: str, params: str, *,
         oneway: bool = False, expiration: int = NOW + 60_000) -> SendRpc:
    return SendRpc(RPC_NODE, ("DEVICE", str(DEVICE)), f"00000000-0000-4000-8000-{request_uuid:012d}",
                   request_id, method, params, oneway, expiration)


def test_a_message_with_method_and_params_becomes_a_request_and_goes_no_further() -> None:
    out = engine().run(msg({"method": "setFan", "params": {"speed": 3}}))
    assert out == [Visited("nodes[0] 'Switch'"), Visited(RPC_NODE),
                   sent(1, 501, "setFan", '{"speed":3}')]


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
    assert out == [sent(1, 501, "m", text)]


@pytest.mark.parametrize(("method", "text"), [("reboot", "reboot"), (12, "12"),
                                              (False, "false")])
def test_a_primitive_method_is_its_text(method: Any, text: str) -> None:
    assert effects(engine().run(msg({"method": method, "params": {}}))) == [
        sent(1, 501, text, "{}")]


@pytest.mark.parametrize(("data", "meta", "error"), [
    ({"params": {}}, {}, "Method is not present in the message!"),
    ({"method": "m"}, {}, "Params are not present in the message!"),
    ({"method": None, "params": {}}, {}, "method null is not a text"),
    ({"method": {"x": 1}, "params": {}}, {}, 'method {"x":1} is not a text'),
    ([1, 2], {}, "the message's data is not a JSON object: [1,2]"),
    ({"method": "m", "params": {}, "requestId": "x1"}, {},
     'requestId "x1" is not a whole number within int'),
    ({"method": "m", "params": {}, "requestId": 2**31}, {},
     "requestId 2147483648 is not a whole number within int"),
    ({"method": "m", "params": {}, "requestId": 1.5}, {},
     "requestId 1.5 is not a whole number within int"),
    ({"method": "m", "params": {}}, {"expirationTime": "soon"},
     "metadata expirationTime 'soon' is not a whole number (Long.parseLong)"),
])
def test_what_thingsboard_fails_goes_by_failure(data: Any, meta: dict[str, str],
                                                 error: str) -> None:
    """TbSendRPCRequestNode.onMsg: no method, no params (its own texts), and what its JSON
    reads throw on (getAsString of null or an object, getAsInt, Long.parseLong) fail the
    message; nothing is sent."""
    message = RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, meta, ts=1000)
    assert effects(engine().run(message)) == [Failed(RPC_NODE, error)]


def test_an_originator_that_is_not_a_device_fails() -> None:
    asset = Originator("ASSET", str(uuid.uuid4()))
    assert effects(engine().run(msg({"method": "m", "params": {}}, originator=asset))) == [
        Failed(RPC_NODE, "Message originator is not a device entity!")]


def test_request_id_oneway_and_expiration_come_from_the_message() -> None:
    """requestId from the data (a number or its text, getAsInt), oneway from the metadata
    (Boolean.parseBoolean: any case of "true"), expirationTime from the metadata; the
    metadata's requestUUID is not taken (a new one every time)."""
    out = effects(engine().run(msg(
        {"method": "m", "params": {}, "requestId": "42"}, oneway="TRUE",
        expirationTime=str(NOW + 5), requestUUID=str(uuid.uuid4()))))
    assert out == [sent(1, 42, "m", "{}", oneway=True, expiration=NOW + 5)]
    out = effects(engine().run(msg({"method": "m", "params": {}, "requestId": -7},
                                   oneway="yes")))
    assert out == [sent(1, -7, "m", "{}")]


@pytest.mark.parametrize(("config", "expiration"), [
    ({"timeoutInSeconds": 60}, NOW + 60_000),
    ({"timeoutInSeconds": "5"}, NOW + 5_000),
    ({}, NOW),  # the int's default, 0: expired at once, as on ThingsBoard
    ({"timeoutInSeconds": None}, NOW),
])
def test_without_expiration_time_the_node_timeout_counts_from_now(
        config: dict[str, Any], expiration: int) -> None:
    out = effects(engine(config).run(msg({"method": "m", "params": 1})))
    assert out == [sent(1, 501, "m", "1", expiration=expiration)]


def test_a_batch_gives_each_message_what_run_gives_it() -> None:
    batch = [msg({"method": "a", "params": 1}), msg({"params": 2}),
             msg({"method": "c", "params": 3, "requestId": 9})]
    visits: dict[str, int] = {}
    got = engine().run_many(batch, visits=visits)
    one_by_one = engine()
    assert got == [effects(one_by_one.run(m)) for m in batch]
    assert got == [[sent(1, 501, "a", "1")],
                   [Failed(RPC_NODE, "Method is not present in the message!")],
                   [sent(2, 9, "c", "3")]]
    assert visits == {"nodes[0] 'Switch'": 3, RPC_NODE: 3}


def test_plan_stores_a_rule_request_queued_and_hands_it_over_after_the_commit() -> None:
    counters = RuleCounters(RulesRuntime())
    out = plan(DEVICE, [Visited(RPC_NODE), sent(1, 501, "setFan", '{"speed":3}')], counters,
               NOW + 3)
    request = RpcRequest(DEVICE, uuid.UUID("00000000-0000-4000-8000-000000000001"), 501,
                         "setFan", '{"speed":3}', False, NOW + 60_000, NOW + 3,
                         origin=RpcOrigin.RULE)
    assert out.mutations == [PutRpc(request)]
    assert out.rpc_requests == [request]
    assert (out.events, out.pushed, out.kept_local) == ([], 0, 0)
    assert request.status is RpcStatus.QUEUED and not request.reported


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
    rule = RpcRequest(DEVICE, uuid.UUID(int=2), 2, "n", "1", True, NOW + 10, NOW + 1,
                      origin=RpcOrigin.RULE)
    store.write(lambda txn: [rpc.put(txn, r) for r in (cloud, rule)])  # type: ignore[func-returns-value]
    with store.read() as txn:
        assert rpc.open_requests(txn) == [cloud, rule]
    # a cloud request's record is the 9 fields an earlier release writes and reads
    assert _raw(store, cloud) == [1, "m", "{}", False, NOW + 10, "QUEUED", 0, None, ""]
    assert _raw(store, rule) == [2, "n", "1", True, NOW + 10, "QUEUED", 0, None, "", "rule"]
    assert (rule.as_json()["origin"], cloud.as_json()["origin"]) == ("rule", "cloud")
    done = RpcRequest(DEVICE, rule.request_uuid, 2, "n", "1", True, NOW + 10, NOW + 1,
                      RpcStatus.SUCCESSFUL, NOW + 2, {}, origin=RpcOrigin.RULE)
    store.write(lambda txn: rpc.put(txn, done))
    store.close()
    readonly = LmdbStore(tmp_path / "s", readonly=True)
    with readonly.read() as txn:
        assert list(RpcStore(readonly).scan(txn)) == [cloud, done]
    readonly.close()


def test_an_unknown_origin_is_a_corrupt_record(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s", initial_map_mb=8, max_size_mb=64)
    rpc = RpcStore(store)
    rule = RpcRequest(DEVICE, uuid.UUID(int=2), 2, "n", "1", True, NOW + 10, NOW,
                      origin=RpcOrigin.RULE)
    store.write(lambda txn: rpc.put(txn, rule))
    key = b"rpc/" + DEVICE.bytes + codec.u64(NOW) + rule.request_uuid.bytes
    store.write(lambda txn: txn.put(key, codec.pack(
        (2, "n", "1", True, NOW + 10, "QUEUED", 0, None, "", "someone")), db=store.dbs["meta"]))
    with store.read() as txn, pytest.raises(StorageCorrupt, match="origin \\['someone'\\]"):
        rpc.open_requests(txn)
    store.close()
