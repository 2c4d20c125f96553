"""Tests for edge_sync/rules/engine.py: one message through a chain, exact outcome lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse, parse_file
from edge_sync.rules.engine import (
    ClearAlarm,
    CreateAlarm,
    Deferred,
    Failed,
    Log,
    PushToCloud,
    RuleEngine,
    SaveAttributes,
    SaveTimeseries,
)
from edge_sync.rules.message import Originator, RuleMsg

DEV = Originator("DEVICE", "d1")
ORIGIN = ("DEVICE", "d1")
Node = tuple[str, str, dict[str, Any]]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"


def chain(nodes: list[Node], conns: list[tuple[int, int, str]],
          max_steps: int = 1000) -> RuleEngine:
    doc = {"ruleChain": {"name": "t", "type": "EDGE"},
           "metadata": {"firstNodeIndex": 0,
                        "nodes": [{"type": t, "name": name, "configuration": c}
                                  for t, name, c in nodes],
                        "connections": [{"fromIndex": a, "toIndex": b, "type": r}
                                        for a, b, r in conns]}}
    rc, meta = parse(doc)
    return RuleEngine(rc, meta, clock=lambda: 777, max_steps=max_steps)


def telemetry(data: Any, **meta: str) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, meta, ts=1000)


SAVE_TS: Node = (n.SAVE_TIMESERIES, "Save", {"defaultTTL": 0})
PUSH: Node = (n.PUSH_TO_CLOUD, "Push", {"scope": "SERVER_SCOPE"})


def test_selective_sync_pushes_hot_and_saves_all() -> None:
    engine = chain([(n.JS_FILTER, "Hot?", {"jsScript": "return msg.temperature > 50;"}),
                    SAVE_TS, PUSH],
                   [(0, 1, "True"), (0, 1, "False"), (0, 2, "True")])
    assert engine.run(telemetry({"temperature": 60})) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"temperature": 60}, 0),
        PushToCloud("nodes[2] 'Push'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                    "NORMAL", {"temperature": 60}),
    ]
    assert engine.run(telemetry({"temperature": 20})) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"temperature": 20}, 0)]


def test_type_switch_routes_telemetry_and_attributes() -> None:
    engine = chain([(n.MSG_TYPE_SWITCH, "Switch", {}), SAVE_TS,
                    (n.SAVE_ATTRIBUTES, "Attrs", {"scope": "CLIENT_SCOPE"}),
                    (n.LOG, "Other", {"jsScript": "return 'other ' + msgType;"})],
                   [(0, 1, "Post telemetry"), (0, 2, "Post attributes"), (0, 3, "Other")])
    assert engine.run(telemetry({"t": 1}, ts="5000")) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 5000, {"t": 1}, 0)]
    assert engine.run(RuleMsg("POST_ATTRIBUTES_REQUEST", DEV, {"fw": "1.2"})) == [
        SaveAttributes("nodes[2] 'Attrs'", ORIGIN, "CLIENT_SCOPE", {"fw": "1.2"})]
    assert engine.run(RuleMsg("CUSTOM", DEV, {})) == [
        Log("nodes[3] 'Other'", "other CUSTOM")]


def test_transform_changes_msg_and_metadata() -> None:
    script = ("msg.k = msg.c + 273; metadata.unit = 'K'; "
              "return {msg: msg, metadata: metadata, msgType: msgType};")
    engine = chain([(n.TRANSFORM, "ToK", {"jsScript": script}), SAVE_TS,
                    (n.LOG, "Log", {"jsScript": "return metadata.unit + ':' + msg.k;"})],
                   [(0, 1, "Success"), (0, 2, "Success")])
    assert engine.run(telemetry({"c": 20}, src="x")) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"c": 20, "k": 293}, 0),
        Log("nodes[2] 'Log'", "K:293"),
    ]


def test_throwing_script_goes_by_failure() -> None:
    nodes: list[Node] = [(n.JS_FILTER, "Boom", {"jsScript": "throw new Error('bad');"}),
             (n.LOG, "OnFail", {"jsScript": "return 'failed';"}), SAVE_TS]
    engine = chain(nodes, [(0, 1, "Failure"), (0, 2, "True")])
    out = engine.run(telemetry({}))
    assert len(out) == 2
    assert isinstance(out[0], Failed) and out[0].node == "nodes[0] 'Boom'"
    assert out[0].error.startswith("ScriptRuntimeError: Error: bad")
    assert out[1] == Log("nodes[1] 'OnFail'", "failed")
    # without a Failure connection the message ends there, reported
    alone = chain(nodes, [(0, 2, "True")]).run(telemetry({}))
    assert [type(o) for o in alone] == [Failed]


def test_check_fields_node() -> None:
    engine = chain([(n.CHECK_MESSAGE, "Has", {"messageNames": ["temperature"],
                                              "metadataNames": ["deviceName"],
                                              "checkAllKeys": True}),
                    SAVE_TS, (n.LOG, "Missing", {"jsScript": "return 'missing';"})],
                   [(0, 1, "True"), (0, 2, "False"), (0, 2, "Failure")])
    assert engine.run(telemetry({"temperature": 1}, deviceName="b")) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"temperature": 1}, 0)]
    assert engine.run(telemetry({"temperature": 1})) == [Log("nodes[2] 'Missing'", "missing")]
    assert engine.run(telemetry([1, 2])) == [
        Failed("nodes[0] 'Has'", "the message data is not a JSON object"),
        Log("nodes[2] 'Missing'", "missing")]


def test_alarm_create_over_threshold_clear_under_it() -> None:
    details = {"alarmDetailsBuildJs": "return {t: msg.temperature};"}
    engine = chain([(n.JS_FILTER, "Hot?", {"jsScript": "return msg.temperature > 90;"}),
                    (n.CREATE_ALARM, "Raise", {"alarmType": "Overheat", "severity": "CRITICAL",
                                               **details}),
                    (n.CLEAR_ALARM, "Clear", {"alarmType": "Overheat", **details}),
                    PUSH],
                   [(0, 1, "True"), (0, 2, "False"), (1, 3, "Created")])
    assert engine.run(telemetry({"temperature": 95})) == [
        CreateAlarm("nodes[1] 'Raise'", ORIGIN, "Overheat", "CRITICAL", {"t": 95}, 777),
        PushToCloud("nodes[3] 'Push'", ORIGIN, "ALARM", "SERVER_SCOPE", "HIGH",
                    {"type": "Overheat", "severity": "CRITICAL", "status": "ACTIVE_UNACK",
                     "details": {"t": 95}}),
    ]
    assert engine.run(telemetry({"temperature": 40})) == [
        ClearAlarm("nodes[2] 'Clear'", ORIGIN, "Overheat", {"t": 40}, 777)]


def test_wrong_message_type_for_save_goes_by_failure() -> None:
    engine = chain([SAVE_TS], [])
    assert engine.run(RuleMsg("POST_ATTRIBUTES_REQUEST", DEV, {})) == [
        Failed("nodes[0] 'Save'",
               "unsupported message type POST_ATTRIBUTES_REQUEST (saves POST_TELEMETRY_REQUEST only)")]


def test_fixture_chain_defers_at_deduplication() -> None:
    rc, meta = parse_file((FIXTURES / "telemetry_dedup_chain.json").read_bytes(), "f")
    engine = RuleEngine(rc, meta, clock=lambda: 0)
    msg = telemetry({"temperature": 20})
    assert engine.run(msg) == [Deferred("nodes[1] 'Deduplicate 10 s'", msg)]


def test_switch_script_fans_out_and_step_limit_stops_the_walk() -> None:
    engine = chain([(n.JS_SWITCH, "Fan", {"jsScript": "return ['a', 'b'];"}),
                    (n.LOG, "A", {"jsScript": "return 'a';"}),
                    (n.LOG, "B", {"jsScript": "return 'b';"})],
                   [(0, 1, "a"), (0, 2, "b")])
    assert engine.run(telemetry({})) == [Log("nodes[1] 'A'", "a"), Log("nodes[2] 'B'", "b")]
    limited = chain([(n.JS_SWITCH, "Fan", {"jsScript": "return ['a', 'b'];"}),
                     (n.LOG, "A", {"jsScript": "return 'a';"}),
                     (n.LOG, "B", {"jsScript": "return 'b';"})],
                    [(0, 1, "a"), (0, 2, "b")], max_steps=2)
    assert limited.run(telemetry({})) == [
        Log("nodes[1] 'A'", "a"),
        Failed("nodes[2] 'B'", "step limit 2 reached: the walk stops")]


def test_invalid_chain_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be run"):
        chain([SAVE_TS], [(0, 0, "Success")])
