"""ThingsBoard's default scripts of every script node in the subset, run end to end through the
rule engine and its sandbox, in TBEL (what ThingsBoard sets on a new node) and in JS.

tests/fixtures/rules/thingsboard_defaults.json holds each node's configuration as its
``defaultConfiguration()`` makes it (thingsboard/thingsboard, rule-engine-components):
TbJsFilterNodeConfiguration, TbJsSwitchNodeConfiguration, TbTransformMsgNodeConfiguration,
TbLogNodeConfiguration, and TbCreateAlarmNodeConfiguration / TbClearAlarmNodeConfiguration,
whose details script is TbAbstractAlarmNodeConfiguration.ALARM_DETAILS_BUILD_TBEL_TEMPLATE
(``metadata.remove('prevAlarmDetails');``) or ALARM_DETAILS_BUILD_JS_TEMPLATE. Every node's
configuration carries both scripts: the JS run switches ``scriptLang`` only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_sync.rules.chain import parse
from edge_sync.rules.engine import (
    ClearAlarm,
    CreateAlarm,
    Log,
    Outcome,
    PushToCloud,
    RuleEngine,
    SaveTimeseries,
    Visited,
)
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.sandbox import ScriptEngine
from edge_sync.rules.validate import validate

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rules" / "thingsboard_defaults.json"
DEV = Originator("DEVICE", "d1")
ORIGIN = ("DEVICE", "d1")
META = {"deviceName": "boiler-1", "ts": "1000"}


def defaults(lang: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_text())
    for node in doc["metadata"]["nodes"]:
        if "scriptLang" in node["configuration"]:
            node["configuration"]["scriptLang"] = lang
    return doc


def engine(lang: str) -> RuleEngine:
    chain, meta = parse(defaults(lang))
    ids = iter(f"alarm-{i}" for i in range(1, 10))
    return RuleEngine(chain, meta, clock=lambda: 777, new_id=lambda: next(ids))


def effects(out: list[Outcome]) -> list[Outcome]:
    return [o for o in out if not isinstance(o, Visited)]


def telemetry(data: Any) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, META, ts=1000)


def alarm_steps(out: list[Outcome]) -> list[tuple[Any, ...]]:
    """What the alarm nodes did and what the push node got from them (the alarm JSON's shape
    aside): kind, node, alarm type, new or not / status, details."""
    steps: list[tuple[Any, ...]] = []
    for o in out:
        if isinstance(o, CreateAlarm):
            steps.append(("create", o.node, o.type, o.severity, o.new, o.details))
        elif isinstance(o, ClearAlarm):
            steps.append(("clear", o.node, o.type, o.alarm["status"], o.details))
        elif isinstance(o, PushToCloud) and o.msg_type == "ALARM":
            steps.append(("push", o.node, o.data["type"], dict(o.metadata)))
    return steps


@pytest.mark.parametrize("lang", ["TBEL", "JS"])
def test_the_default_chain_is_valid(lang: str) -> None:
    assert validate(*parse(defaults(lang))) == []


@pytest.mark.parametrize("lang", ["TBEL", "JS"])
def test_default_alarm_details_scripts_create_update_and_clear(lang: str) -> None:
    """The default filter (temperature > 20) raises the default alarm, updates it, clears it;
    the details script gets the previous details as metadata.prevAlarmDetails and gives them
    back (the TBEL one removes the key with metadata.remove, which failed every message)."""
    rules = engine(lang)
    alarms: dict[str, dict[str, Any]] = {}
    created = rules.run(telemetry({"temperature": 25}), alarms)
    assert alarm_steps(created) == [
        ("create", "nodes[4] 'Create alarm'", "General Alarm", "CRITICAL", True, {}),
        ("push", "nodes[8] 'Push to cloud'", "General Alarm", {**META, "isNewAlarm": "true"}),
    ]
    # the active alarm's details, as a previous update of it could have left them
    alarms["General Alarm"]["details"] = {"count": 3, "note": "kept"}
    updated = rules.run(telemetry({"temperature": 30}), alarms)
    assert alarm_steps(updated) == [
        ("create", "nodes[4] 'Create alarm'", "General Alarm", "CRITICAL", False,
         {"count": 3, "note": "kept"}),
        ("push", "nodes[8] 'Push to cloud'", "General Alarm",
         {**META, "isExistingAlarm": "true"}),
    ]
    cleared = rules.run(telemetry({"temperature": 10}), alarms)
    assert alarm_steps(cleared) == [
        ("clear", "nodes[5] 'Clear alarm'", "General Alarm", "CLEARED_UNACK",
         {"count": 3, "note": "kept"}),
        ("push", "nodes[8] 'Push to cloud'", "General Alarm",
         {**META, "isClearedAlarm": "true"}),
    ]
    assert alarms == {}
    assert [o for o in created + updated + cleared if type(o).__name__ == "Failed"] == []


@pytest.mark.parametrize("lang", ["TBEL", "JS"])
def test_default_switch_transform_and_log(lang: str) -> None:
    """Telemetry: the default switch says "two", the default transform gives the message back
    as it came, saved (the filter says False: nothing to clear). Attributes: the switch says
    "one" and "nine", each to the default log. Another type goes by Other to the default log."""
    rules = engine(lang)
    assert effects(rules.run(telemetry({"temperature": 5}))) == [
        SaveTimeseries("nodes[6] 'Save timeseries'", ORIGIN, 1000, {"temperature": 5}, 0)]
    attributes = RuleMsg("POST_ATTRIBUTES_REQUEST", DEV, {"fw": "1.2"}, META, ts=1000)
    text = ('\nIncoming message:\n{"fw":"1.2"}\nIncoming metadata:\n'
            '{"deviceName":"boiler-1","ts":"1000"}')
    assert effects(rules.run(attributes)) == [Log("nodes[7] 'Log'", text)] * 2
    other = RuleMsg("CUSTOM", DEV, {"a": [1, 2]}, META, ts=1000)
    assert effects(rules.run(other)) == [Log("nodes[7] 'Log'", (
        '\nIncoming message:\n{"a":[1,2]}\nIncoming metadata:\n'
        '{"deviceName":"boiler-1","ts":"1000"}'))]


def test_the_default_tbel_alarm_template_removes_the_key_and_returns_the_details() -> None:
    """ALARM_DETAILS_BUILD_TBEL_TEMPLATE itself, with a line added to show the metadata after."""
    template = json.loads(FIXTURE.read_text())["metadata"]["nodes"][4]["configuration"][
        "alarmDetailsBuildTbel"]
    assert "metadata.remove('prevAlarmDetails');" in template
    shown = ScriptEngine(template.replace("return details;",
                                          "return [details, metadata];"), "TBEL")
    assert shown.call({}, {"a": "1", "prevAlarmDetails": '{"n": 2}'}, "T") == [
        {"n": 2}, {"a": "1"}]
    assert shown.call({}, {"a": "1"}, "T") == [{}, {"a": "1"}]
