"""Rule chain validation: every problem at once, with exact messages, for the hand-written
ThingsBoard exports in tests/fixtures/rules and for each supported node's configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_sync.rules import nodes
from edge_sync.rules.chain import NodeConnection, RuleChain, RuleChainMetaData, RuleNode, parse
from edge_sync.rules.sandbox import ScriptLimits
from edge_sync.rules.validate import find_cycles, summary, validate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"


def problems(name: str) -> list[str]:
    chain, meta = parse(json.loads((FIXTURES / name).read_text()))
    return [str(p) for p in validate(chain, meta)]


def test_the_valid_chain_has_no_problem_and_a_summary() -> None:
    assert problems("telemetry_dedup_chain.json") == []
    chain, meta = parse(json.loads((FIXTURES / "telemetry_dedup_chain.json").read_text()))
    assert summary(chain, meta) == (
        "'Boiler telemetry' (EDGE): 11 nodes, 11 connections; node types: TbCheckMessageNode, "
        "TbClearAlarmNode, TbCreateAlarmNode, TbJsFilterNode, TbLogNode, TbMsgAttributesNode, "
        "TbMsgDeduplicationNode, TbMsgPushToCloudNode, TbMsgTimeseriesNode, TbMsgTypeSwitchNode, "
        "TbTransformMsgNode")


def test_a_deduplication_node_feeds_the_transform() -> None:
    _, meta = parse(json.loads((FIXTURES / "telemetry_dedup_chain.json").read_text()))
    dedup = meta.nodes[1]
    assert dedup.type == nodes.DEDUPLICATION
    after = [meta.nodes[c.to_index].type for c in meta.connections if c.from_index == 1]
    assert after == [nodes.TRANSFORM]


def test_unknown_node_types_refuse_the_chain_naming_each() -> None:
    assert problems("unknown_node_type.json") == [
        "metadata.nodes[0].type: org.thingsboard.rule.engine.metadata.TbGetAttributesNode "
        "('Originator attributes') is not a supported node type: the chain is refused "
        "(docs/rules.md)",
        "metadata.nodes[2].type: org.thingsboard.rule.engine.rest.TbRestApiCallNode "
        "('POST to MES') is not a supported node type: the chain is refused (docs/rules.md)",
    ]


def test_cycles_are_named_by_node_names() -> None:
    assert problems("cycle_chain.json") == [
        "metadata.connections: cycle: nodes[1] 'Normalise' -> nodes[2] 'Retry?' -> "
        "nodes[1] 'Normalise'",
        "metadata.connections: cycle: nodes[3] 'Log' -> nodes[3] 'Log'",
    ]


def test_dangling_connections_and_first_node_out_of_range() -> None:
    assert problems("dangling_connection.json") == [
        "metadata.firstNodeIndex: 3 names no node (there are 3)",
        "metadata.connections[1].toIndex: dangling: 7 names no node (there are 3)",
        "metadata.connections[2].fromIndex: dangling: 5 names no node (there are 3)",
        "metadata.ruleChainConnections[0].fromIndex: dangling: 9 names no node (there are 3)",
    ]


def test_script_nodes_need_the_script_of_their_language() -> None:
    assert problems("script_missing.json") == [
        "metadata.nodes[1].configuration.tbelScript: missing (the script, scriptLang TBEL)",
        "metadata.nodes[2].configuration.jsScript: missing (the script, no scriptLang: JS)",
        "metadata.nodes[3].configuration.jsScript: missing (the script, scriptLang JS)",
    ]


SCRIPT_REFUSED = [
    "metadata.nodes[1].configuration.tbelScript: nodes[1] 'Sum': the TBEL script is refused: "
    "ScriptSyntaxError: TBEL: import is not in the supported subset (line 2: "
    "'import'); see docs/rules-scripts.md",
    "metadata.nodes[2].configuration.jsScript: nodes[2] 'Hot?': the JS script is refused: "
    "ScriptSyntaxError: SyntaxError: unexpected token in expression: ';' at script:1:25",
    "metadata.nodes[3].configuration.alarmDetailsBuildTbel: nodes[3] 'Raise': the TBEL script "
    "is refused: ScriptSyntaxError: TBEL: the method stream() is not in the supported "
    "subset (line 1: '.stream('); see docs/rules-scripts.md",
]


def test_scripts_the_sandbox_refuses_refuse_the_chain_naming_node_and_reason() -> None:
    """Each script is compiled by the sandbox at validation: a script it refuses once passed,
    then failed every message at run time. The TBEL log node's metadata.remove compiles."""
    assert problems("script_refused.json") == SCRIPT_REFUSED


def test_a_script_over_the_memory_cap_at_compile_is_refused_under_the_limits_given() -> None:
    big = "var s = '" + "x" * 1_500_000 + "';\nreturn s.length > 0;"
    meta = RuleChainMetaData(nodes=(RuleNode(0, nodes.JS_FILTER, "Big", {"jsScript": big}),),
                             connections=(), first_node_index=0)
    assert validate(RuleChain("A"), meta) == []
    refused = [str(p) for p in validate(RuleChain("A"), meta,
                                        ScriptLimits(memory_limit_bytes=1024 * 1024))]
    assert refused == ["metadata.nodes[0].configuration.jsScript: nodes[0] 'Big': the JS "
                       "script is refused: ScriptMemoryExceeded: compiling the script: "
                       "InternalError: out of memory undefined"]


def test_nodes_without_a_first_node_are_a_problem() -> None:
    meta = RuleChainMetaData(nodes=(RuleNode(0, nodes.MSG_TYPE_SWITCH, "Switch", {}),),
                             connections=(), first_node_index=None)
    assert [str(p) for p in validate(RuleChain("A"), meta)] == [
        "metadata.firstNodeIndex: missing: no node receives the chain's messages"]
    assert validate(RuleChain("empty"), RuleChainMetaData((), (), None)) == []


def test_one_cycle_per_group_from_its_lowest_node() -> None:
    chain = tuple(RuleNode(i, nodes.MSG_TYPE_SWITCH, f"n{i}", {}) for i in range(6))
    links = [(0, 1), (1, 2), (2, 3), (3, 1), (2, 1), (4, 5), (5, 4), (0, 9)]
    meta = RuleChainMetaData(chain, tuple(NodeConnection(a, b, "Success") for a, b in links), 0)
    assert find_cycles(meta) == [(1, 2), (4, 5)]


CONFIG_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    (nodes.DEDUPLICATION, {"interval": 60, "strategy": "FIRST"}, []),
    (nodes.DEDUPLICATION, {}, [
        ("interval", "missing"),
        ("strategy", "missing: expected one of FIRST, LAST, ALL")]),
    (nodes.DEDUPLICATION, {"interval": 0, "strategy": "ALL", "maxRetries": -1}, [
        ("interval", "expected whole seconds from 1 to 31622400 (366 days), got 0"),
        ("outMsgType", "missing (strategy ALL sends one message of this type)"),
        ("maxRetries", "expected a whole number >= 0, got -1")]),
    (nodes.DEDUPLICATION, {"interval": 5, "strategy": "ALL", "outMsgType": "POST_TELEMETRY_REQUEST"},
     []),
    # BaseTbMsgPushNodeConfiguration.scope: a String read only for attribute messages
    # without scope metadata: absent, null or "" are run (such a message then fails)
    (nodes.PUSH_TO_CLOUD, {}, []),
    (nodes.PUSH_TO_CLOUD, {"scope": None}, []),
    (nodes.PUSH_TO_CLOUD, {"scope": ""}, []),
    (nodes.PUSH_TO_CLOUD, {"scope": "SERVER"}, [
        ("scope", "got 'SERVER': expected one of CLIENT_SCOPE, SERVER_SCOPE, SHARED_SCOPE")]),
    (nodes.SAVE_ATTRIBUTES, {"scope": "SERVER"}, [
        ("scope", "got 'SERVER': expected one of CLIENT_SCOPE, SERVER_SCOPE, SHARED_SCOPE")]),
    (nodes.SAVE_TIMESERIES, {}, []),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": -5}, [
        ("defaultTTL", "expected whole seconds from 0 to 3162240000 (100 years; 0: no TTL), "
                       "got -5")]),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": 3_162_240_000}, []),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": 3_162_240_001}, [
        ("defaultTTL", "expected whole seconds from 0 to 3162240000 (100 years; 0: no TTL), "
                       "got 3162240001")]),
    (nodes.CREATE_ALARM, {"alarmDetailsBuildJs": "return {};"}, [
        ("alarmType", 'missing (the type of the alarm, e.g. "High Temperature")'),
        ("severity", "missing: expected one of CRITICAL, MAJOR, MINOR, WARNING, INDETERMINATE")]),
    (nodes.CREATE_ALARM, {"alarmType": "Hot", "scriptLang": "TBEL", "severity": "HIGH"}, [
        ("alarmDetailsBuildTbel", "missing (the script, scriptLang TBEL)"),
        ("severity", "got 'HIGH': expected one of CRITICAL, MAJOR, MINOR, WARNING, "
                     "INDETERMINATE (or dynamicSeverity with a ${key} pattern)")]),
    (nodes.CREATE_ALARM, {"alarmType": "Hot", "alarmDetailsBuildJs": "return {};",
                          "severity": "${severity}", "dynamicSeverity": True}, []),
    (nodes.CREATE_ALARM, {"alarmType": "Hot", "alarmDetailsBuildJs": "return {};",
                          "useMessageAlarmData": True}, []),
    # the message's alarm data: no type or severity needed (ThingsBoard's UI asks for none),
    # the details script only when it overwrites the message's details (absent: it does)
    (nodes.CREATE_ALARM, {"alarmType": "", "useMessageAlarmData": True,
                          "overwriteAlarmDetails": False}, []),
    (nodes.CREATE_ALARM, {"useMessageAlarmData": "true", "scriptLang": "TBEL"}, [
        ("alarmDetailsBuildTbel", "missing (the script, scriptLang TBEL)")]),
    (nodes.CREATE_ALARM, {"useMessageAlarmData": True, "overwriteAlarmDetails": True}, [
        ("alarmDetailsBuildJs", "missing (the script, no scriptLang: JS)")]),
    (nodes.CLEAR_ALARM, {"alarmType": "", "alarmDetailsBuildJs": "return {};",
                         "useMessageAlarmData": True}, [
        ("alarmType", 'missing (the type of the alarm, e.g. "High Temperature")')]),
    (nodes.CREATE_ALARM, {"alarmType": "Hot", "alarmDetailsBuildJs": "return {};",
                          "severity": "MAJOR", "relationTypes": ["Contains"]}, []),
    (nodes.CREATE_ALARM, {"alarmType": "Hot", "alarmDetailsBuildJs": "return {};",
                          "severity": "MAJOR", "relationTypes": None}, []),
    (nodes.CREATE_ALARM, {"alarmType": "Hot", "alarmDetailsBuildJs": "return {};",
                          "severity": "MAJOR", "relationTypes": "Contains"}, [
        ("relationTypes", "expected a list of relation types, got 'Contains'")]),
    # its booleans as ThingsBoard's Jackson reads them: a value it refuses refuses the chain
    (nodes.CREATE_ALARM, {"alarmType": "Hot", "alarmDetailsBuildJs": "return {};",
                          "severity": "MAJOR", "propagate": "maybe", "dynamicSeverity": [1],
                          "propagateToTenant": "TRUE", "propagateToOwner": 0}, [
        ("dynamicSeverity", "expected true or false, got [1]"),
        ("propagate", "expected true or false, got 'maybe'")]),
    (nodes.CREATE_ALARM, {"useMessageAlarmData": "yes", "overwriteAlarmDetails": False}, [
        # read as false: the configuration's own type, severity and script are then needed
        ("alarmType", 'missing (the type of the alarm, e.g. "High Temperature")'),
        ("alarmDetailsBuildJs", "missing (the script, no scriptLang: JS)"),
        ("severity", "missing: expected one of CRITICAL, MAJOR, MINOR, WARNING, INDETERMINATE"),
        ("useMessageAlarmData", "expected true or false, got 'yes'")]),
    (nodes.CLEAR_ALARM, {"alarmType": "Hot", "scriptLang": "MVEL"}, [
        ("scriptLang", "expected JS or TBEL, got 'MVEL'")]),
    (nodes.CHECK_MESSAGE, {"messageNames": ["temperature", 3]}, [
        ("messageNames", "expected a list of key names")]),
    (nodes.LOG, {"scriptLang": "TBEL", "tbelScript": "return '';"}, []),
    (nodes.MSG_TYPE_SWITCH, {}, []),
    (nodes.AGGREGATE, {"interval": 60}, []),
    (nodes.AGGREGATE, {"interval": 60, "maxPendingMsgs": 100_000, "outMsgType": "AGG"}, []),
    (nodes.AGGREGATE, {}, [("interval", "missing")]),
    (nodes.AGGREGATE, {"interval": 31_622_400}, []),
    (nodes.AGGREGATE, {"interval": 31_622_401}, [
        ("interval", "expected whole seconds from 1 to 31622400 (366 days), got 31622401")]),
    (nodes.DEDUPLICATION, {"interval": 10**30, "strategy": "LAST"}, [
        ("interval", f"expected whole seconds from 1 to 31622400 (366 days), got {10**30}")]),
    (nodes.AGGREGATE, {"interval": "1.5", "maxPendingMsgs": 100_001, "outMsgType": " "}, [
        ("interval", "expected whole seconds from 1 to 31622400 (366 days), got '1.5'"),
        ("maxPendingMsgs", "expected a whole number from 1 to 100000, got 100001"),
        ("outMsgType", "expected a message type, got ' '")]),
    (nodes.AGGREGATE, {"interval": 5, "maxPendingMsgs": 0}, [
        ("maxPendingMsgs", "expected a whole number from 1 to 100000, got 0")]),
    # TbSendRpcRequestNodeConfiguration: int timeoutInSeconds (absent or null: 0; Jackson
    # takes the text of a number too)
    (nodes.RPC_REQUEST, {"timeoutInSeconds": 60}, []),
    (nodes.RPC_REQUEST, {}, []),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": None}, []),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": "30"}, []),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": 0}, []),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": -1}, [
        ("timeoutInSeconds", "expected whole seconds from 0 to 31622400 (366 days), got -1")]),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": 31_622_401}, [
        ("timeoutInSeconds",
         "expected whole seconds from 0 to 31622400 (366 days), got 31622401")]),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": "soon"}, [
        ("timeoutInSeconds", "expected whole seconds from 0 to 31622400 (366 days), got 'soon'")]),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": True}, [
        ("timeoutInSeconds", "expected whole seconds from 0 to 31622400 (366 days), got True")]),
    # every number field as ThingsBoard's Jackson reads its int or long (nodes.java_int): the
    # text of a number, a JSON float (truncated), "" and null as 0; not the text of a float,
    # nor a number beyond the Java type
    (nodes.SAVE_TIMESERIES, {"defaultTTL": "180"}, []),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": 180.0}, []),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": 180.5}, []),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": ""}, []),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": "180.5"}, [
        ("defaultTTL", "expected whole seconds from 0 to 3162240000 (100 years; 0: no TTL), "
                       "got '180.5'")]),
    (nodes.SAVE_TIMESERIES, {"defaultTTL": 3_162_240_000.9}, []),
    (nodes.SAVE_TIMESERIES, {"processingSettings": {"type": "DEDUPLICATE",
                                                    "deduplicationIntervalSecs": "60"}}, []),
    (nodes.SAVE_TIMESERIES, {"processingSettings": {"type": "DEDUPLICATE",
                                                    "deduplicationIntervalSecs": 0.5}}, [
        ("processingSettings.deduplicationIntervalSecs",
         "got 0.5: expected whole seconds from 1 to 86400 (a day)")]),
    (nodes.SAVE_ATTRIBUTES, {"scope": "SERVER_SCOPE", "processingSettings": {
        "type": "ADVANCED", "attributes": {"type": "DEDUPLICATE",
                                           "deduplicationIntervalSecs": " 60 "},
        "webSockets": {"type": "SKIP"}, "calculatedFields": {"type": "SKIP"}}}, []),
    (nodes.DEDUPLICATION, {"interval": "60", "strategy": "FIRST", "maxPendingMsgs": "100",
                           "maxRetries": 2.0}, []),
    (nodes.DEDUPLICATION, {"interval": "", "strategy": "FIRST", "maxPendingMsgs": "lots",
                           "maxRetries": 2**31}, [
        ("interval", "expected whole seconds from 1 to 31622400 (366 days), got ''"),
        ("maxPendingMsgs", "expected a whole number >= 1, got 'lots'"),
        ("maxRetries", f"expected a whole number >= 0, got {2**31}")]),
    (nodes.AGGREGATE, {"interval": "+60", "maxPendingMsgs": 100_000.0}, []),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": 60.0}, []),
    (nodes.RPC_REQUEST, {"timeoutInSeconds": "60.0"}, [
        ("timeoutInSeconds",
         "expected whole seconds from 0 to 31622400 (366 days), got '60.0'")]),
]


@pytest.mark.parametrize(("node_type", "config", "expected"), CONFIG_CASES)
def test_configuration_checks(node_type: str, config: dict[str, Any],
                              expected: list[tuple[str, str]]) -> None:
    assert nodes.check_configuration(node_type, config) == expected


def test_the_supported_subset() -> None:
    assert sorted(s.short for s in nodes.SUPPORTED.values()) == [
        "AggregateNode", "TbCheckMessageNode", "TbClearAlarmNode", "TbCreateAlarmNode",
        "TbDeviceProfileNode", "TbJsFilterNode",
        "TbJsSwitchNode", "TbLogNode", "TbMsgAttributesNode", "TbMsgDeduplicationNode",
        "TbMsgPushToCloudNode", "TbMsgTimeseriesNode", "TbMsgTypeSwitchNode",
        "TbSendRPCRequestNode", "TbTransformMsgNode"]
    assert [t for t in nodes.SUPPORTED if not t.startswith("org.thingsboard.rule.engine.")] == [
        "edge_sync.rules.AggregateNode"]  # the edge's own
