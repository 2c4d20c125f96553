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
    Outcome,
    PushToCloud,
    RuleEngine,
    SaveAttributes,
    SaveTimeseries,
    Visited,
    describe_key,
)
from edge_sync.rules.message import Originator, RuleMsg

DEV = Originator("DEVICE", "d1")
ORIGIN = ("DEVICE", "d1")
Node = tuple[str, str, dict[str, Any]]
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"


def chain(nodes: list[Node], conns: list[tuple[int, int, str]],
          max_steps: int = 1000, ids: list[str | None] | None = None) -> RuleEngine:
    docs = [{"type": t, "name": name, "configuration": c} for t, name, c in nodes]
    for doc, node_id in zip(docs, ids or [], strict=False):
        if node_id is not None:
            doc["id"] = {"entityType": "RULE_NODE", "id": node_id}
    rc, meta = parse({"ruleChain": {"name": "t", "type": "EDGE"},
                      "metadata": {"firstNodeIndex": 0, "nodes": docs,
                                   "connections": [{"fromIndex": a, "toIndex": b, "type": r}
                                                   for a, b, r in conns]}})
    ids_given = iter(f"alarm-{i}" for i in range(1, 100))
    return RuleEngine(rc, meta, clock=lambda: 777, max_steps=max_steps,
                      new_id=lambda: next(ids_given))


def effects(out: list[Outcome]) -> list[Outcome]:
    """The outcomes without the per-node Visited markers."""
    return [o for o in out if not isinstance(o, Visited)]


def telemetry(data: Any, **meta: str) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, meta, ts=1000)


SAVE_TS: Node = (n.SAVE_TIMESERIES, "Save", {"defaultTTL": 0})
PUSH: Node = (n.PUSH_TO_CLOUD, "Push", {"scope": "SERVER_SCOPE"})


def test_selective_sync_pushes_hot_and_saves_all() -> None:
    engine = chain([(n.JS_FILTER, "Hot?", {"jsScript": "return msg.temperature > 50;"}),
                    SAVE_TS, PUSH],
                   [(0, 1, "True"), (0, 1, "False"), (0, 2, "True")])
    assert engine.run(telemetry({"temperature": 60})) == [
        Visited("nodes[0] 'Hot?'"),
        Visited("nodes[1] 'Save'"),
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"temperature": 60}, 0),
        Visited("nodes[2] 'Push'"),
        PushToCloud("nodes[2] 'Push'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                    "NORMAL", {"temperature": 60}, {}, 1000),
    ]
    assert effects(engine.run(telemetry({"temperature": 20}))) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"temperature": 20}, 0)]


def test_type_switch_routes_telemetry_and_attributes() -> None:
    engine = chain([(n.MSG_TYPE_SWITCH, "Switch", {}), SAVE_TS,
                    (n.SAVE_ATTRIBUTES, "Attrs", {"scope": "CLIENT_SCOPE"}),
                    (n.LOG, "Other", {"jsScript": "return 'other ' + msgType;"})],
                   [(0, 1, "Post telemetry"), (0, 2, "Post attributes"), (0, 3, "Other")])
    assert effects(engine.run(telemetry({"t": 1}, ts="5000"))) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 5000, {"t": 1}, 0)]
    assert effects(engine.run(RuleMsg("POST_ATTRIBUTES_REQUEST", DEV, {"fw": "1.2"}))) == [
        SaveAttributes("nodes[2] 'Attrs'", ORIGIN, "CLIENT_SCOPE", {"fw": "1.2"})]
    assert effects(engine.run(RuleMsg("CUSTOM", DEV, {}))) == [
        Log("nodes[3] 'Other'", "other CUSTOM")]


def test_transform_changes_msg_and_metadata() -> None:
    script = ("msg.k = msg.c + 273; metadata.unit = 'K'; "
              "return {msg: msg, metadata: metadata, msgType: msgType};")
    engine = chain([(n.TRANSFORM, "ToK", {"jsScript": script}), SAVE_TS,
                    (n.LOG, "Log", {"jsScript": "return metadata.unit + ':' + msg.k;"})],
                   [(0, 1, "Success"), (0, 2, "Success")])
    assert effects(engine.run(telemetry({"c": 20}, src="x"))) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"c": 20, "k": 293}, 0),
        Log("nodes[2] 'Log'", "K:293"),
    ]


def test_transform_results_go_on_as_thingsboard_reads_them() -> None:
    """A result without msg keeps the data (it was a failure), an empty array goes by Failure
    (the message vanished), metadata values are made text as Jackson makes them (true was
    "True", a null "None"); run and run_many agree."""
    script = ("if (msg.v === 1) { return {msgType: 'POST_ATTRIBUTES_REQUEST'}; }\n"
              "if (msg.v === 2) { return []; }\n"
              "return {msg: msg, metadata: {flag: true, n: 1.5, gone: null}};")
    engine = chain([(n.TRANSFORM, "T", {"jsScript": script}),
                    (n.LOG, "Out", {"jsScript": "return msgType + ' ' + JSON.stringify(msg) + "
                                                "' ' + JSON.stringify(metadata);"}),
                    (n.LOG, "Failed", {"jsScript": "return 'failure ' + msg.v;"})],
                   [(0, 1, "Success"), (0, 2, "Failure")])
    msgs = [telemetry({"v": v}, ts="5") for v in (1, 2, 3)]
    expected = [
        [Log("nodes[1] 'Out'", 'POST_ATTRIBUTES_REQUEST {"v":1} {"ts":"5"}')],
        [Failed("nodes[0] 'T'", "ScriptRuntimeError: a transform script returned an empty "
                "array: no message (ThingsBoard sends the incoming message by Failure)"),
         Log("nodes[2] 'Failed'", "failure 2")],
        [Log("nodes[1] 'Out'", 'POST_TELEMETRY_REQUEST {"v":3} {"flag":"true","n":"1.5"}')],
    ]
    assert [effects(engine.run(m)) for m in msgs] == expected
    assert [effects(out) for out in engine.run_many(msgs)] == expected


def test_throwing_script_goes_by_failure() -> None:
    nodes: list[Node] = [(n.JS_FILTER, "Boom", {"jsScript": "throw new Error('bad');"}),
             (n.LOG, "OnFail", {"jsScript": "return 'failed';"}), SAVE_TS]
    engine = chain(nodes, [(0, 1, "Failure"), (0, 2, "True")])
    out = effects(engine.run(telemetry({})))
    assert len(out) == 2
    assert isinstance(out[0], Failed) and out[0].node == "nodes[0] 'Boom'"
    assert out[0].error.startswith("ScriptRuntimeError: Error: bad")
    assert out[1] == Log("nodes[1] 'OnFail'", "failed")
    # without a Failure connection the message ends there, reported
    alone = chain(nodes, [(0, 2, "True")]).run(telemetry({}))
    assert [type(o) for o in alone] == [Visited, Failed]


def test_check_fields_node() -> None:
    engine = chain([(n.CHECK_MESSAGE, "Has", {"messageNames": ["temperature"],
                                              "metadataNames": ["deviceName"],
                                              "checkAllKeys": True}),
                    SAVE_TS, (n.LOG, "Missing", {"jsScript": "return 'missing';"})],
                   [(0, 1, "True"), (0, 2, "False"), (0, 2, "Failure")])
    assert effects(engine.run(telemetry({"temperature": 1}, deviceName="b"))) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"temperature": 1}, 0)]
    assert effects(engine.run(telemetry({"temperature": 1}))) == [
        Log("nodes[2] 'Missing'", "missing")]
    assert effects(engine.run(telemetry([1, 2]))) == [
        Failed("nodes[0] 'Has'", "the message data is not a JSON object"),
        Log("nodes[2] 'Missing'", "missing")]


ALARM_CHAIN: list[Node] = [
    (n.JS_FILTER, "Hot?", {"jsScript": "return msg.temperature > 90;"}),
    (n.CREATE_ALARM, "Raise", {"alarmType": "Overheat", "severity": "${sev}",
                               "dynamicSeverity": True, "alarmDetailsBuildJs":
                               "return {t: msg.temperature, prev: metadata.prevAlarmDetails};"}),
    (n.CLEAR_ALARM, "Clear", {"alarmType": "Overheat",
                              "alarmDetailsBuildJs": "return {t: msg.temperature};"}),
    PUSH,
    (n.LOG, "Routed", {"jsScript": "return msgType + ' ' + JSON.stringify(metadata);"})]
ALARM_LINKS = [(0, 1, "True"), (0, 2, "False"), (1, 3, "Created"), (1, 4, "Updated"),
               (2, 3, "Cleared"), (2, 4, "False")]


def test_alarm_create_update_clear_and_clear_again_route_as_thingsboard() -> None:
    engine = chain(ALARM_CHAIN, ALARM_LINKS)
    alarms: dict[str, dict[str, Any]] = {}
    created = {"id": {"entityType": "ALARM", "id": "alarm-1"}, "createdTime": 777,
               "type": "Overheat", "originator": {"entityType": "DEVICE", "id": "d1"},
               "severity": "MAJOR", "acknowledged": False, "cleared": False, "startTs": 1000,
               "endTs": 1000, "ackTs": 0, "clearTs": 0, "assignTs": 0,
               "details": {"t": 95},  # an undefined prev is left out, as JSON does
               "propagate": False, "propagateToOwner": False, "propagateToTenant": False,
               "propagateRelationTypes": [], "name": "Overheat", "status": "ACTIVE_UNACK"}
    assert effects(engine.run(telemetry({"temperature": 95}, sev="MAJOR"), alarms)) == [
        CreateAlarm("nodes[1] 'Raise'", ORIGIN, "Overheat", "MAJOR", {"t": 95}, 777,
                    "alarm-1", True, created),
        PushToCloud("nodes[3] 'Push'", ORIGIN, "ALARM", "SERVER_SCOPE", "HIGH", created,
                    {"sev": "MAJOR", "isNewAlarm": "true"}, 1000),
    ]
    assert alarms == {"Overheat": created}

    # the same type again: the active alarm is updated (severity, details with the previous
    # ones given to the script, endTs), not a new one
    updated = {**created, "severity": "CRITICAL", "endTs": 777,
               "details": {"t": 99, "prev": '{"t": 95}'}}
    out = effects(engine.run(telemetry({"temperature": 99}, sev="CRITICAL"), alarms))
    assert out == [
        CreateAlarm("nodes[1] 'Raise'", ORIGIN, "Overheat", "CRITICAL", updated["details"],
                    777, "alarm-1", False, updated),
        Log("nodes[4] 'Routed'",
            'ALARM {"sev":"CRITICAL","isExistingAlarm":"true"}'),
    ]
    assert alarms == {"Overheat": updated}

    cleared = {**updated, "cleared": True, "status": "CLEARED_UNACK", "details": {"t": 40},
               "clearTs": 777}
    assert effects(engine.run(telemetry({"temperature": 40}), alarms)) == [
        ClearAlarm("nodes[2] 'Clear'", ORIGIN, "Overheat", {"t": 40}, 777, "alarm-1", cleared),
        PushToCloud("nodes[3] 'Push'", ORIGIN, "ALARM", "SERVER_SCOPE", "HIGH", cleared,
                    {"isClearedAlarm": "true"}, 1000),
    ]
    assert alarms == {}

    # nothing active: the clear routes the message itself by False, no outcome
    assert effects(engine.run(telemetry({"temperature": 30}), alarms)) == [
        Log("nodes[4] 'Routed'", "POST_TELEMETRY_REQUEST {}")]
    # and the next create is a new alarm with a new id
    out = effects(engine.run(telemetry({"temperature": 91}, sev="MINOR", ts="5000"), alarms))
    assert isinstance(out[0], CreateAlarm)
    assert (out[0].alarm_id, out[0].new, out[0].alarm["startTs"]) == ("alarm-2", True, 5000)
    assert list(alarms) == ["Overheat"]


def test_without_alarms_given_each_run_starts_from_none_active() -> None:
    engine = chain(ALARM_CHAIN, ALARM_LINKS)
    first = effects(engine.run(telemetry({"temperature": 95}, sev="MAJOR")))
    second = effects(engine.run(telemetry({"temperature": 95}, sev="MAJOR")))
    assert [(o.alarm_id, o.new) for o in first + second if isinstance(o, CreateAlarm)] == [
        ("alarm-1", True), ("alarm-2", True)]


def test_a_bad_dynamic_severity_goes_by_failure() -> None:
    engine = chain(ALARM_CHAIN, [*ALARM_LINKS, (1, 4, "Failure")])
    alarms: dict[str, dict[str, Any]] = {}
    assert effects(engine.run(telemetry({"temperature": 95}, sev="HUGE"), alarms)) == [
        Failed("nodes[1] 'Raise'", "alarm severity 'HUGE' is not one of CRITICAL, MAJOR, "
                                   "MINOR, WARNING, INDETERMINATE"),
        Log("nodes[4] 'Routed'", 'POST_TELEMETRY_REQUEST {"sev":"HUGE"}')]
    assert alarms == {}


def tb_alarm(alarm_id: str, alarm_type: str, severity: str, details: Any, *,
             start: int = 1000, end: int = 1000, created: int = 777, cleared: bool = False,
             clear_ts: int = 0, propagate: bool = False, to_owner: bool = False,
             to_tenant: bool = False, relation_types: list[str] | None = None
             ) -> dict[str, Any]:
    """ThingsBoard's Alarm JSON of an alarm of device d1 (JacksonUtil.valueToTree(alarm),
    without what the edge does not know: tenantId, customerId, assignee, originator name)."""
    return {"id": {"entityType": "ALARM", "id": alarm_id}, "createdTime": created,
            "type": alarm_type, "originator": {"entityType": "DEVICE", "id": "d1"},
            "severity": severity, "acknowledged": False, "cleared": cleared, "startTs": start,
            "endTs": end, "ackTs": 0, "clearTs": clear_ts, "assignTs": 0, "details": details,
            "propagate": propagate, "propagateToOwner": to_owner,
            "propagateToTenant": to_tenant, "propagateRelationTypes": relation_types or [],
            "name": alarm_type, "status": "CLEARED_UNACK" if cleared else "ACTIVE_UNACK"}


def create_alarm(name: str, **config: Any) -> Node:
    return (n.CREATE_ALARM, name, {"alarmDetailsBuildJs": "return {t: msg.t};", **config})


def test_create_alarm_sets_the_nodes_propagation_on_the_alarm_it_creates_and_updates() -> None:
    """TbCreateAlarmNode.buildAlarm/updateAlarm: propagate, propagateToOwner,
    propagateToTenant and the relation types (as they are: no pattern substitution) of the
    configuration; an update sets those of the node that updates."""
    propagating = chain([create_alarm("Raise", alarmType="Hot", severity="MAJOR",
                                      propagate=True, propagateToOwner="true",
                                      propagateToTenant=False,
                                      relationTypes=["Contains", "Manages ${x}"]), PUSH],
                        [(0, 1, "Created"), (0, 1, "Updated")])
    alarms: dict[str, dict[str, Any]] = {}
    created = tb_alarm("alarm-1", "Hot", "MAJOR", {"t": 1}, propagate=True, to_owner=True,
                       relation_types=["Contains", "Manages ${x}"])
    assert effects(propagating.run(telemetry({"t": 1}, x="y"), alarms)) == [
        CreateAlarm("nodes[0] 'Raise'", ORIGIN, "Hot", "MAJOR", {"t": 1}, 777, "alarm-1", True,
                    created),
        PushToCloud("nodes[1] 'Push'", ORIGIN, "ALARM", "SERVER_SCOPE", "HIGH", created,
                    {"x": "y", "isNewAlarm": "true"}, 1000)]
    plain = chain([create_alarm("Raise", alarmType="Hot", severity="MINOR")], [])
    assert effects(plain.run(telemetry({"t": 2}), alarms)) == [
        CreateAlarm("nodes[0] 'Raise'", ORIGIN, "Hot", "MINOR", {"t": 2}, 777, "alarm-1",
                    False, {**created, "severity": "MINOR", "endTs": 777, "details": {"t": 2},
                            "propagate": False, "propagateToOwner": False,
                            "propagateRelationTypes": []})]


MSG_ALARM = {"type": "Door open", "severity": "WARNING", "propagate": True,
             "propagateToTenant": True, "propagateRelationTypes": ["Contains"],
             "details": {"door": "north"}, "startTs": 400, "endTs": 0}
"""An alarm as a message carries it (the data of an alarm node's message, or a script's)."""


def test_use_message_alarm_data_keeps_the_messages_details_without_overwrite() -> None:
    """TbCreateAlarmNode with useMessageAlarmData: type, severity, propagation and details of
    the message's alarm (startTs too; endTs 0 is its start); the details script does not run
    when overwriteAlarmDetails is false. No alarmType or severity is configured."""
    engine = chain([create_alarm("From msg", useMessageAlarmData=True,
                                 overwriteAlarmDetails=False,
                                 alarmDetailsBuildJs="throw new Error('the script ran');")], [])
    alarms: dict[str, dict[str, Any]] = {}
    created = tb_alarm("alarm-1", "Door open", "WARNING", {"door": "north"}, start=400,
                       end=400, propagate=True, to_tenant=True, relation_types=["Contains"])
    assert effects(engine.run(telemetry(MSG_ALARM), alarms)) == [
        CreateAlarm("nodes[0] 'From msg'", ORIGIN, "Door open", "WARNING", {"door": "north"},
                    777, "alarm-1", True, created)]
    # an update takes the message's severity, propagation and details
    again = {**MSG_ALARM, "severity": "MAJOR", "propagate": False, "details": {"door": "west"}}
    assert effects(engine.run(telemetry(again), alarms)) == [
        CreateAlarm("nodes[0] 'From msg'", ORIGIN, "Door open", "MAJOR", {"door": "west"},
                    777, "alarm-1", False,
                    {**created, "severity": "MAJOR", "endTs": 777, "propagate": False,
                     "details": {"door": "west"}})]


def test_use_message_alarm_data_runs_the_details_script_to_overwrite_by_default() -> None:
    """overwriteAlarmDetails absent: the configuration class's default, true: the script
    builds the details (given the previous ones on an update)."""
    engine = chain([create_alarm(
        "From msg", useMessageAlarmData=True,
        alarmDetailsBuildJs="return {door: msg.details.door, prev: metadata.prevAlarmDetails};")],
        [])
    alarms: dict[str, dict[str, Any]] = {}
    out = effects(engine.run(telemetry(MSG_ALARM), alarms))
    assert [(o.details, o.alarm["details"]) for o in out if isinstance(o, CreateAlarm)] == [
        ({"door": "north"}, {"door": "north"})]
    out = effects(engine.run(telemetry(MSG_ALARM), alarms))
    assert [o.details for o in out if isinstance(o, CreateAlarm)] == [
        {"door": "north", "prev": '{"door": "north"}'}]


@pytest.mark.parametrize(("data", "error"), [
    ({"severity": "MAJOR"}, "the message's alarm has no type"),
    ({"type": "Hot", "severity": "HUGE"},
     "the message's alarm severity 'HUGE' is not one of CRITICAL, MAJOR, MINOR, WARNING, "
     "INDETERMINATE"),
    ([1], "the message data is not alarm JSON (an object)"),
    ({"type": "Hot", "severity": "MAJOR", "startTs": 5, "endTs": 4},
     "the message's alarm startTs is after its endTs"),
])
def test_use_message_alarm_data_without_a_readable_alarm_goes_by_failure(
        data: Any, error: str) -> None:
    engine = chain([create_alarm("From msg", useMessageAlarmData=True,
                                 overwriteAlarmDetails=False),
                    (n.LOG, "Failed", {"jsScript": "return 'failed';"})], [(0, 1, "Failure")])
    alarms: dict[str, dict[str, Any]] = {}
    assert effects(engine.run(telemetry(data), alarms)) == [
        Failed("nodes[0] 'From msg'", error), Log("nodes[1] 'Failed'", "failed")]
    assert alarms == {}


def test_alarm_type_and_dynamic_severity_patterns_follow_dotted_paths() -> None:
    """TbNodeUtils.processPattern: $[a.b] walks nested objects; a boolean or number is its
    JSON text; ${key} from metadata; a key it does not find stays as written."""
    engine = chain([create_alarm("Raise", alarmType="door open=$[state.open] ${zone} $[nope]",
                                 severity="$[alarm.severity]", dynamicSeverity=True)], [])
    out = effects(engine.run(telemetry({"state": {"open": True}, "alarm": {"severity": "MAJOR"},
                                        "t": 1}, zone="north"), {}))
    assert [(o.type, o.severity) for o in out if isinstance(o, CreateAlarm)] == [
        ("door open=true north $[nope]", "MAJOR")]


def test_the_alarm_message_is_thingsboards_alarm_json_for_the_scripts_after_it() -> None:
    """TbAbstractAlarmNode.toAlarmMsg: the data is the alarm's JSON, typed id and originator,
    its flags and name: a script after the node reads them as in ThingsBoard."""
    script = ("return [msg.id.entityType, msg.id.id, msg.originator.entityType, "
              "msg.originator.id, msg.name, msg.acknowledged, msg.cleared, msg.status, "
              "msg.clearTs, msg.propagate].join(' ');")
    engine = chain([(n.JS_FILTER, "Hot?", {"jsScript": "return msg.t > 90;"}),
                    create_alarm("Raise", alarmType="Hot", severity="MAJOR"),
                    (n.CLEAR_ALARM, "Clear", {"alarmType": "Hot",
                                              "alarmDetailsBuildJs": "return {};"}),
                    (n.LOG, "Read", {"jsScript": script})],
                   [(0, 1, "True"), (0, 2, "False"), (1, 3, "Created"), (2, 3, "Cleared")])
    alarms: dict[str, dict[str, Any]] = {}
    assert effects(engine.run(telemetry({"t": 95}), alarms))[1:] == [
        Log("nodes[3] 'Read'", "ALARM alarm-1 DEVICE d1 Hot false false ACTIVE_UNACK 0 false")]
    assert effects(engine.run(telemetry({"t": 20}), alarms))[1:] == [
        Log("nodes[3] 'Read'", "ALARM alarm-1 DEVICE d1 Hot false true CLEARED_UNACK 777 false")]


def test_push_carries_metadata_and_its_ts() -> None:
    engine = chain([PUSH], [])
    assert effects(engine.run(telemetry({"t": 1}, ts="1234", deviceName="b"))) == [
        PushToCloud("nodes[0] 'Push'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                    "NORMAL", {"t": 1}, {"ts": "1234", "deviceName": "b"}, 1234)]
    assert effects(engine.run(telemetry({"t": 1}, ts="soon"))) == [
        PushToCloud("nodes[0] 'Push'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                    "NORMAL", {"t": 1}, {"ts": "soon"}, 1000)]


AGG: Node = (n.AGGREGATE, "Agg", {"interval": 60})


def test_aggregate_defers_and_resume_goes_on_by_the_relation() -> None:
    engine = chain([(n.MSG_TYPE_SWITCH, "Switch", {}), AGG, SAVE_TS,
                    (n.LOG, "Refused", {"jsScript": "return 'refused ' + msg.t;"}), PUSH],
                   [(0, 1, "Post telemetry"), (1, 2, "Success"), (1, 4, "Success"),
                    (1, 3, "Failure")])
    msg = telemetry({"t": 1})
    assert engine.run(msg) == [Visited("nodes[0] 'Switch'"), Visited("nodes[1] 'Agg'"),
                               Deferred("nodes[1] 'Agg'", 1, msg)]
    summary = telemetry({"t_min": 1}, ts="60000")
    assert engine.resume(1, "Success", summary) == [
        Visited("nodes[2] 'Save'"),
        SaveTimeseries("nodes[2] 'Save'", ORIGIN, 60000, {"t_min": 1}, 0),
        Visited("nodes[4] 'Push'"),
        PushToCloud("nodes[4] 'Push'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                    "NORMAL", {"t_min": 1}, {"ts": "60000"}, 60000)]
    assert engine.resume(1, "Failure", msg) == [Visited("nodes[3] 'Refused'"),
                                                Log("nodes[3] 'Refused'", "refused 1")]
    assert engine.resume(2, "Failure", msg) == []
    with pytest.raises(IndexError):
        engine.resume(5, "Success", msg)


def test_node_keys_are_type_name_and_place_not_ids_or_indexes() -> None:
    """A node's key is its type and name (and its place among the nodes of that type and
    name), so an edit that renumbers nodes or the cloud's new ids keep it."""
    twice = chain([AGG, SAVE_TS, AGG], [(0, 1, "Success")], ids=["n-agg", None, "n-agg-2"])
    keys = ['["AggregateNode", "Agg", 1]', '["TbMsgTimeseriesNode", "Save", 1]',
            '["AggregateNode", "Agg", 2]']
    assert [twice.node_key(i) for i in range(3)] == keys
    assert [twice.node_index(k) for k in (*keys, "n-agg", "#0")] == [0, 1, 2, None, None]
    moved = chain([PUSH, SAVE_TS, AGG], [], ids=["a", "b", "c"])
    assert moved.node_key(2) == keys[0] and moved.node_index(keys[0]) == 2
    assert describe_key(keys[2], AGG[0]) == "'Agg' (AggregateNode) #2"
    assert describe_key("#3", AGG[0]) == "#3 (AggregateNode)"


def test_wrong_message_type_for_save_goes_by_failure() -> None:
    engine = chain([SAVE_TS], [])
    assert effects(engine.run(RuleMsg("POST_ATTRIBUTES_REQUEST", DEV, {}))) == [
        Failed("nodes[0] 'Save'",
               "unsupported message type POST_ATTRIBUTES_REQUEST (saves POST_TELEMETRY_REQUEST only)")]


def test_fixture_chain_defers_at_deduplication() -> None:
    rc, meta = parse_file((FIXTURES / "telemetry_dedup_chain.json").read_bytes(), "f")
    engine = RuleEngine(rc, meta, clock=lambda: 0)
    msg = telemetry({"temperature": 20})
    assert engine.run(msg) == [Visited("nodes[0] 'Message Type Switch'"),
                               Visited("nodes[1] 'Deduplicate 10 s'"),
                               Deferred("nodes[1] 'Deduplicate 10 s'", 1, msg)]


def test_switch_script_fans_out_and_step_limit_stops_the_walk() -> None:
    engine = chain([(n.JS_SWITCH, "Fan", {"jsScript": "return ['a', 'b'];"}),
                    (n.LOG, "A", {"jsScript": "return 'a';"}),
                    (n.LOG, "B", {"jsScript": "return 'b';"})],
                   [(0, 1, "a"), (0, 2, "b")])
    assert effects(engine.run(telemetry({}))) == [Log("nodes[1] 'A'", "a"),
                                                  Log("nodes[2] 'B'", "b")]
    limited = chain([(n.JS_SWITCH, "Fan", {"jsScript": "return ['a', 'b'];"}),
                     (n.LOG, "A", {"jsScript": "return 'a';"}),
                     (n.LOG, "B", {"jsScript": "return 'b';"})],
                    [(0, 1, "a"), (0, 2, "b")], max_steps=2)
    assert limited.run(telemetry({})) == [
        Visited("nodes[0] 'Fan'"),
        Visited("nodes[1] 'A'"),
        Log("nodes[1] 'A'", "a"),
        Failed("nodes[2] 'B'", "step limit 2 reached: the walk stops")]


def test_invalid_chain_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be run"):
        chain([SAVE_TS], [(0, 0, "Success")])


def test_a_chain_with_a_script_the_sandbox_refuses_is_not_run() -> None:
    """Refused when the engine is built (the script compiled once), not failed per message."""
    with pytest.raises(ValueError) as caught:
        chain([(n.JS_FILTER, "Bad", {"jsScript": "return (;"}), SAVE_TS], [(0, 1, "True")])
    assert str(caught.value) == (
        "the chain cannot be run: metadata.nodes[0].configuration.jsScript: nodes[0] 'Bad': "
        "the JS script is refused: ScriptSyntaxError: SyntaxError: unexpected token in "
        "expression: ';' at script:1:9")


@pytest.mark.parametrize(("meta_ts", "ts"), [
    ("1234", 1234), ("+1234", 1234), ("9223372036854775807", 2**63 - 1),
    ("9223372036854775808", 1000), ("²", 1000), ("١٢", 1000), ("9" * 5000, 1000), ("", 1000),
    ("12a", 1000)])
def test_a_metadata_ts_that_is_not_a_long_falls_back_to_the_messages_ts(meta_ts: str,
                                                                         ts: int) -> None:
    """ThingsBoard's TbMsg.getMetaDataTs: Long.parseLong, else the message's ts. ("²" passes
    str.isdigit and "9" * 5000 int()'s digit limit: both once raised out of the walk.)"""
    engine = chain([SAVE_TS], [])
    assert effects(engine.run(telemetry({"t": 1}, ts=meta_ts))) == [
        SaveTimeseries("nodes[0] 'Save'", ORIGIN, ts, {"t": 1}, 0)]
