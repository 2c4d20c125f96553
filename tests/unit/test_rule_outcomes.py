"""actors/rule_outcomes.py: a chain's outcomes turned into the events and mutations of the
message's Append, counted per node, failures logged at most once a minute per node."""

from __future__ import annotations

import io
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from edge_sync.actors.messages import PutAttributes, PutLatestTelemetry, PutLocalTimeseries
from edge_sync.actors.rule_outcomes import (
    RuleCounters,
    attributes_msg,
    plan,
    telemetry_msgs,
)
from edge_sync.metrics import Metrics
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import (
    ClearAlarm,
    CreateAlarm,
    Failed,
    Log,
    PushToCloud,
    SaveAttributes,
    SaveTimeseries,
    Visited,
)
from edge_sync.rules.message import Originator
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.storage.records import Action, Lane, NewEvent, Scope

DEV = uuid.UUID("00000000-0000-0000-0000-00000000d001")
ALARM_ID = "00000000-0000-0000-0000-0000000a1a01"
ORIGIN = ("DEVICE", str(DEV))
NOW = 1_700_000_000_000


@pytest.fixture
def counters() -> RuleCounters:
    runtime = RulesRuntime()
    chain, meta = parse({"ruleChain": {"name": "c", "type": "CORE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "push",
             "configuration": {"scope": "SERVER_SCOPE"}}]}})
    runtime.install(chain, meta, "file:c.json", NOW)
    return RuleCounters(runtime, Metrics())


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    yield lines
    logger.remove(sink)


def push(msg_type: str, data: Any, *, lane: str = "NORMAL", ts: int = 5,
         metadata: dict[str, str] | None = None) -> PushToCloud:
    return PushToCloud("nodes[0] 'push'", ORIGIN, msg_type, "SERVER_SCOPE", lane, data,
                       metadata or {}, ts)


def test_messages_carry_thingsboards_transport_metadata() -> None:
    t, u = telemetry_msgs(DEV, [(7, (("a", 1),)), (9, (("b", 2),))], "boiler-1", "thermo")
    assert (t.type, t.data, dict(t.metadata), t.ts) == (
        "POST_TELEMETRY_REQUEST", {"a": 1},
        {"ts": "7", "deviceName": "boiler-1", "deviceType": "thermo"}, 7)
    assert (u.data, dict(u.metadata), u.ts) == (
        {"b": 2}, {"ts": "9", "deviceName": "boiler-1", "deviceType": "thermo"}, 9)
    assert list(t.metadata) == ["ts", "deviceName", "deviceType"]  # the transport's order
    assert t.originator == u.originator == Originator("DEVICE", str(DEV))
    a = attributes_msg(DEV, 8, {"fw": "1.2"}, None, None)
    assert (a.type, a.data, dict(a.metadata)) == ("POST_ATTRIBUTES_REQUEST", {"fw": "1.2"},
                                                   {"ts": "8"})


def test_save_timeseries_keeps_latest_and_local_points_only(counters: RuleCounters) -> None:
    out = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1, "h": 2}, 60),
                     SaveTimeseries("n", ORIGIN, 9, [{"ts": 11, "values": {"t": 3}}], 0)],
               counters, NOW)
    assert out.events == []
    # one latest-values mutation for the call; the local points in runs of one TTL
    assert out.mutations == [
        PutLatestTelemetry(DEV, (("t", 11, 3), ("h", 10, 2))),
        PutLocalTimeseries(DEV, ((10, (("t", 1), ("h", 2))),), 60),
        PutLocalTimeseries(DEV, ((11, (("t", 3),)),), 0),
    ]
    assert (out.kept_local, out.pushed) == (2, 0)


def test_saves_of_one_call_merge_as_if_applied_one_after_the_other(counters: RuleCounters
                                                                    ) -> None:
    """Consecutive saves of one TTL are one local mutation with every point in order (a later
    point of the same key and ts replaces the earlier); the latest value of a key is its
    highest ts, the later save on a tie, an older ts never."""
    out = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1}, 0),
                     SaveTimeseries("n", ORIGIN, 10, {"t": 2, "h": 5}, 0),
                     SaveTimeseries("n", ORIGIN, 8, {"t": 9, "h": 6}, 0),
                     SaveTimeseries("n", ORIGIN, 12, {"h": 7}, 30),
                     SaveTimeseries("n", ORIGIN, 13, {"h": 8}, 0)],
               counters, NOW, {"n": 5})
    assert out.mutations == [
        PutLatestTelemetry(DEV, (("t", 10, 2), ("h", 13, 8))),
        PutLocalTimeseries(DEV, ((10, (("t", 1),)), (10, (("t", 2), ("h", 5))),
                                 (8, (("t", 9), ("h", 6)))), 0),
        PutLocalTimeseries(DEV, ((12, (("h", 7),)),), 30),
        PutLocalTimeseries(DEV, ((13, (("h", 8),)),), 0),
    ]
    assert out.kept_local == 5
    assert counters.runtime.counts()["n"]["in"] == 5  # the visits counted by the caller


def test_save_attributes_in_the_nodes_scope(counters: RuleCounters) -> None:
    out = plan(DEV, [SaveAttributes("n", ORIGIN, "SHARED_SCOPE", {"mode": 2})], counters, NOW)
    assert out.mutations == [PutAttributes(DEV, Scope.SHARED, (("mode", 2),), NOW)]


def test_push_makes_the_cloud_event_in_the_nodes_lane(counters: RuleCounters) -> None:
    out = plan(DEV, [push("POST_TELEMETRY_REQUEST", {"t": 1}, ts=42),
                     push("POST_ATTRIBUTES_REQUEST", {"fw": "2"}, ts=43),
                     push("POST_TELEMETRY_REQUEST", {"t": 2}, lane="HIGH", ts=44)],
               counters, NOW)
    assert out.events == [
        NewEvent("DEVICE", "DEVICE", DEV, Action.TIMESERIES_UPDATED,
                 {"ts": 42, "values": {"t": 1}}, 42, Lane.NORMAL),
        NewEvent("DEVICE", "DEVICE", DEV, Action.ATTRIBUTES_UPDATED,
                 {"scope": "SERVER_SCOPE", "kv": {"fw": "2"}}, 43, Lane.NORMAL),
        NewEvent("DEVICE", "DEVICE", DEV, Action.TIMESERIES_UPDATED,
                 {"ts": 44, "values": {"t": 2}}, 44, Lane.HIGH),
    ]
    assert (out.pushed, out.mutations) == (3, [])


@pytest.mark.parametrize(("flag", "action"), [
    ("isNewAlarm", Action.ADDED), ("isClearedAlarm", Action.ALARM_CLEAR),
    ("isExistingAlarm", Action.UPDATED), (None, Action.UPDATED)])
def test_an_alarm_message_is_pushed_as_thingsboards_push_node_reads_it(
        counters: RuleCounters, flag: str | None, action: Action) -> None:
    body = {"id": ALARM_ID, "type": "High Temperature", "severity": "CRITICAL",
            "status": "ACTIVE_UNACK"}
    out = plan(DEV, [push("ALARM", body, lane="HIGH",
                          metadata={flag: "true"} if flag else None)], counters, NOW)
    assert out.events == [NewEvent("ALARM", "ALARM", uuid.UUID(ALARM_ID), action,
                                   {**body, "originator": str(DEV)}, 5, Lane.HIGH)]


def test_an_alarm_nodes_message_is_pushed_with_its_id_status_and_propagation(
        counters: RuleCounters) -> None:
    """The alarm nodes' data is ThingsBoard's Alarm JSON (typed id and originator, flags):
    the event is the alarm's (its id read from id.id, as AbstractTbMsgPushNode does), and its
    body keeps the alarm as the edge sends it up, the propagation included."""
    data = {"id": {"entityType": "ALARM", "id": ALARM_ID}, "createdTime": 7,
            "type": "Hot", "originator": {"entityType": "DEVICE", "id": str(DEV)},
            "severity": "MAJOR", "acknowledged": False, "cleared": True, "startTs": 3,
            "endTs": 4, "ackTs": 0, "clearTs": 6, "assignTs": 0, "details": {"t": 1},
            "propagate": True, "propagateToOwner": False, "propagateToTenant": True,
            "propagateRelationTypes": ["Contains"], "name": "Hot", "status": "CLEARED_UNACK"}
    out = plan(DEV, [push("ALARM", data, lane="HIGH", metadata={"isClearedAlarm": "true"})],
               counters, NOW)
    assert out.events == [NewEvent("ALARM", "ALARM", uuid.UUID(ALARM_ID), Action.ALARM_CLEAR, {
        "id": ALARM_ID, "originator": str(DEV), "type": "Hot", "severity": "MAJOR",
        "status": "CLEARED_UNACK", "startTs": 3, "endTs": 4, "ackTs": 0, "clearTs": 6,
        "details": {"t": 1}, "propagate": True, "propagateToOwner": False,
        "propagateToTenant": True, "propagateRelationTypes": ["Contains"]}, 5, Lane.HIGH)]


def test_alarm_state_changes_alone_send_nothing(counters: RuleCounters) -> None:
    alarm = {"id": ALARM_ID, "type": "Hot"}
    out = plan(DEV, [CreateAlarm("n", ORIGIN, "Hot", "MAJOR", {}, 1, ALARM_ID, True, alarm),
                     ClearAlarm("n", ORIGIN, "Hot", {}, 2, ALARM_ID, alarm)], counters, NOW)
    assert (out.events, out.mutations) == ([], [])


def test_visits_and_failures_are_counted_per_node(counters: RuleCounters) -> None:
    plan(DEV, [Visited("a"), Visited("b"), Failed("b", "boom"), Visited("a")], counters, NOW)
    assert counters.runtime.counts() == {"a": {"in": 2, "failed": 0},
                                         "b": {"in": 1, "failed": 1}}
    assert counters._in is not None and counters._failed is not None
    by_node = [{s.labels["node"]: s.value for f in c.collect() for s in f.samples}
               for c in (counters._in, counters._failed)]
    # the chain's own node at 0 from its install; nodes the runtime counts, as it counts them
    assert by_node == [{"nodes[0] 'push'": 0, "a": 2, "b": 1},
                       {"nodes[0] 'push'": 0, "a": 0, "b": 1}]


def test_a_failing_node_is_logged_once_a_minute_with_what_was_not_logged(
        counters: RuleCounters, warnings: list[str]) -> None:
    for i in range(5):
        plan(DEV, [Failed("nodes[1] 'hot?'", "ScriptTimeout: over 100 ms")], counters, NOW + i)
    plan(DEV, [Failed("nodes[1] 'hot?'", "ScriptTimeout: over 100 ms")], counters,
         NOW + 61_000)
    assert warnings == [
        "rule node nodes[1] 'hot?' failed: ScriptTimeout: over 100 ms; the message goes by "
        "Failure",
        "rule node nodes[1] 'hot?' failed: ScriptTimeout: over 100 ms; the message goes by "
        "Failure (4 more failures of this node since the last line)",
    ]


def test_data_that_is_not_telemetry_fails_the_node_and_pushes_nothing(
        counters: RuleCounters, warnings: list[str]) -> None:
    out = plan(DEV, [push("POST_TELEMETRY_REQUEST", "text"),
                     SaveTimeseries("s", ORIGIN, 1, 42, 0),
                     push("ALARM", {"type": "no id"})], counters, NOW)
    assert (out.events, out.mutations, out.pushed) == ([], [], 0)
    assert counters.runtime.counts()["nodes[0] 'push'"]["failed"] == 2
    assert counters.runtime.counts()["s"]["failed"] == 1
    assert len(warnings) == 2  # one line per node


def test_log_outcomes_are_logged_at_info(counters: RuleCounters) -> None:
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])),
                      level="INFO", filter=lambda r: r["extra"].get("component") == "rules")
    try:
        plan(DEV, [Log("nodes[2] 'log'", "temperature 21")], counters, NOW)
    finally:
        logger.remove(sink)
    assert lines == [("INFO", "temperature 21")]


@pytest.mark.parametrize(("outcome", "problem"), [
    (SaveTimeseries("s", ORIGIN, 1, {"k" * 256: 1}, 0),
     "telemetry: keys must be 1 to 255 bytes of UTF-8"),
    (SaveTimeseries("s", ORIGIN, 1, {"t": 2**64}, 0),
     "telemetry: value of 't' does not fit in a 64-bit integer"),
    (SaveTimeseries("s", ORIGIN, 2**63, {"t": 1}, 0),
     "telemetry: 'ts' must be a non-negative integer (ms since the epoch)"),
    (SaveTimeseries("s", ORIGIN, 1, [{"t": 1}, {"ts": -1, "values": {"t": 2}}], 0),
     "telemetry: 'ts' must be a non-negative integer (ms since the epoch)"),
    (SaveTimeseries("s", ORIGIN, 1, {"t": None}, 0), "telemetry: value of 't' is null"),
    (SaveAttributes("s", ORIGIN, "SERVER_SCOPE", {"\ud800": 1}),
     "attributes: a key: text with a lone surrogate (surrogates not allowed)"),
    (PushToCloud("s", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE", "NORMAL",
                 {"t": float("inf")}, {}, 5), "telemetry: value of 't' is not a finite number"),
    (PushToCloud("s", ORIGIN, "POST_ATTRIBUTES_REQUEST", "SERVER_SCOPE", "NORMAL",
                 {"fw": "\udfff"}, {}, 5),
     "attributes: value of 'fw': text with a lone surrogate (surrogates not allowed)"),
    (PushToCloud("s", ORIGIN, "ALARM", "SERVER_SCOPE", "HIGH",
                 {"id": ALARM_ID, "details": {"n": -2**64}}, {}, 5),
     "alarm: a number inside the JSON value does not fit in 64 bits"),
], ids=["long-key", "big-int", "ts-beyond-int64", "negative-ts-in-list", "null", "surrogate-key",
        "infinity", "surrogate-value", "alarm-big-int"])
def test_data_the_store_cannot_hold_fails_the_node_and_keeps_nothing(
        counters: RuleCounters, warnings: list[str], outcome: Any, problem: str) -> None:
    """What a script made and the store (or the cloud) cannot take is the node's failure, as
    a device's post of the same data is refused: never an Append that fails as a whole."""
    out = plan(DEV, [outcome, SaveTimeseries("ok", ORIGIN, 3, {"t": 1}, 0)], counters, NOW)
    assert out.events == []
    assert out.mutations == [PutLatestTelemetry(DEV, (("t", 3, 1),)),
                             PutLocalTimeseries(DEV, ((3, (("t", 1),)),), 0)]
    assert (out.pushed, out.kept_local) == (0, 1)
    assert counters.runtime.counts()["s"]["failed"] == 1
    assert warnings == [f"rule node s failed: the message data cannot be stored: {problem}; "
                        "the message goes by Failure"]


def test_a_message_saved_and_pushed_is_judged_by_each_node(counters: RuleCounters,
                                                          warnings: list[str]) -> None:
    """A save and a push given the same message data check it once between them, but the
    verdict is each node's: unstorable data fails both, and data of the same values in another
    object, or at another ts, is judged on its own."""
    bad = {"k" * 256: 1}
    good = {"t": 1}
    out = plan(DEV, [
        SaveTimeseries("s", ORIGIN, 7, bad, 0),
        PushToCloud("p", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE", "NORMAL", bad, {}, 7),
        SaveTimeseries("s", ORIGIN, 8, good, 0),
        PushToCloud("p", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE", "NORMAL", good, {},
                    8),
        PushToCloud("p", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE", "NORMAL", good, {},
                    2**63),
    ], counters, NOW)
    assert [(e.ts, e.body) for e in out.events] == [(8, {"ts": 8, "values": {"t": 1}})]
    assert out.mutations == [PutLatestTelemetry(DEV, (("t", 8, 1),)),
                             PutLocalTimeseries(DEV, ((8, (("t", 1),)),), 0)]
    assert {node: c["failed"] for node, c in counters.runtime.counts().items()} == {"s": 1, "p": 2}
    assert len(warnings) == 2  # one line per node (then at most one a minute)


def test_a_script_failure_is_one_text_log_line_with_the_script_location_and_the_chain(
        counters: RuleCounters) -> None:
    """The JS stack (``at __script (script:1:49)`` on lines of its own) is joined onto the
    failure's line: one event, one line, in the text format too."""
    from edge_sync.config import LogConfig, LogFormat
    from edge_sync.logsetup import configure_logging
    from edge_sync.rules.sandbox import ScriptEngine, ScriptRuntimeError

    engine = ScriptEngine("if (msg.t < 0) { throw new Error('negative ' + msg.t); }\nreturn msg;")
    with pytest.raises(ScriptRuntimeError) as caught:
        engine.call({"t": -1}, {}, "POST_TELEMETRY_REQUEST")
    error = f"ScriptRuntimeError: {caught.value}"
    assert "\n" in error  # the sandbox's error keeps its stack, lines and all
    buf = io.StringIO()
    configure_logging(LogConfig(format=LogFormat.TEXT), component="edge", stream=buf)
    try:
        plan(DEV, [Failed("nodes[1] 'to Fahrenheit'", error)], counters, NOW)
    finally:
        logger.remove()
        logger.add(sys.stderr)
    text = buf.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert text.split(" | ", 3)[3] == (
        "rule node nodes[1] 'to Fahrenheit' failed: ScriptRuntimeError: Error: negative -1 | "
        "at __script (script:1:48); the message goes by Failure | "
        "node=\"nodes[1] 'to Fahrenheit'\" chain=c entity=00000000-0000-0000-0000-00000000d001 "
        "suppressed=0\n")
