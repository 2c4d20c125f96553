"""ThingsBoard's device profile node (org.thingsboard.rule.engine.profile.TbDeviceProfileNode)
on the edge: a pass-through. ThingsBoard's sends every message it reads on by Success
(TbDeviceProfileNode.onMsg; DeviceState.process ends with tellSuccess), and when an alarm rule
of the device's profile changes an alarm it sends a new ALARM message besides, by "Alarm
Created" and the like (AlarmState.pushMsg). The edge evaluates no profile alarm rule: every
message goes on by Success, unchanged, with no outcome of its own and no ALARM message. Its configuration
(TbDeviceProfileNodeConfiguration: two booleans) is read as Jackson reads it, and a chain with
the node carries a note (``validate.notes``: ``rules check`` prints it, the agent logs it)."""

from __future__ import annotations

from typing import Any

import pytest

from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import PushToCloud, RuleEngine, Visited
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.validate import notes, validate

NOTE = ("nodes[0] 'Device Profile Node' (TbDeviceProfileNode) passes every message on by "
        "Success and sends no alarm: the alarm rules of the device profiles are not evaluated "
        "on the edge (a cloud whose rule chain has a device profile node evaluates them on what "
        "the edge pushes)")


def chain_doc(config: Any) -> dict[str, Any]:
    """Device profile node -> (Success) push to cloud; any other relation goes nowhere."""
    return {"ruleChain": {"name": "t", "type": "EDGE"},
            "metadata": {"firstNodeIndex": 0, "nodes": [
                {"type": n.DEVICE_PROFILE, "name": "Device Profile Node",
                 "configuration": config},
                {"type": n.PUSH_TO_CLOUD, "name": "Push", "configuration": {
                    "scope": "SERVER_SCOPE"}}],
                "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Success"}]}}


def engine() -> RuleEngine:
    rc, meta = parse(chain_doc({"persistAlarmRulesState": False,
                                "fetchAlarmRulesStateOnStart": False}))
    return RuleEngine(rc, meta, clock=lambda: 777)


@pytest.mark.parametrize("msg_type", ["POST_TELEMETRY_REQUEST", "POST_ATTRIBUTES_REQUEST",
                                      "ENTITY_UPDATED", "ENTITY_DELETED", "CONNECT_EVENT"])
@pytest.mark.parametrize("originator", [Originator("DEVICE", "d1"), Originator("ASSET", "a1")])
def test_every_message_goes_on_by_success(msg_type: str, originator: Originator) -> None:
    doc = chain_doc({})
    doc["metadata"]["nodes"][1] = {"type": n.MSG_TYPE_SWITCH, "name": "Switch",
                                   "configuration": {"version": 0}}
    rc, meta = parse(doc)
    msg = RuleMsg(msg_type, originator, {"temperature": 21}, {"ts": "1000"}, ts=1000)
    out = RuleEngine(rc, meta, clock=lambda: 777).run(msg)
    assert [(type(o), o.node) for o in out] == [
        (Visited, "nodes[0] 'Device Profile Node'"), (Visited, "nodes[1] 'Switch'")]


def test_the_message_goes_on_unchanged() -> None:
    msg = RuleMsg("POST_TELEMETRY_REQUEST", Originator("DEVICE", "d1"), {"temperature": 21},
                  {"ts": "1000", "deviceName": "boiler"}, ts=1000)
    out = engine().run(msg)
    assert [type(o) for o in out] == [Visited, Visited, PushToCloud]
    push = out[2]
    assert isinstance(push, PushToCloud)
    assert (push.msg_type, push.data, push.metadata) == (
        "POST_TELEMETRY_REQUEST", {"temperature": 21}, {"ts": "1000", "deviceName": "boiler"})


def test_a_batch_goes_on_as_one_message_after_another() -> None:
    msgs = [RuleMsg("POST_TELEMETRY_REQUEST", Originator("DEVICE", "d1"), {"t": i},
                    {"ts": str(1000 + i)}, ts=1000 + i) for i in range(5)]
    one_by_one = [engine().run(m) for m in msgs]
    assert engine().run_many(msgs) == one_by_one
    assert [[o.data for o in r if isinstance(o, PushToCloud)] for r in one_by_one] == [
        [{"t": i}] for i in range(5)]


@pytest.mark.parametrize("config", [
    {}, {"persistAlarmRulesState": True, "fetchAlarmRulesStateOnStart": True},
    {"persistAlarmRulesState": "false", "fetchAlarmRulesStateOnStart": None}])
def test_a_configuration_jackson_reads_passes_with_its_note(config: dict[str, Any]) -> None:
    rc, meta = parse(chain_doc(config))
    assert validate(rc, meta) == []
    assert notes(meta) == [NOTE]


def test_a_flag_jackson_cannot_read_refuses_the_chain() -> None:
    rc, meta = parse(chain_doc({"persistAlarmRulesState": "maybe"}))
    assert [str(p) for p in validate(rc, meta)] == [
        "metadata.nodes[0].configuration.persistAlarmRulesState: expected true or false, "
        "got 'maybe'"]


def test_a_chain_without_the_node_has_no_note() -> None:
    doc = chain_doc({})
    doc["metadata"]["nodes"][0] = {"type": n.MSG_TYPE_SWITCH, "name": "Switch",
                                   "configuration": {"version": 0}}
    _, meta = parse(doc)
    assert notes(meta) == []
