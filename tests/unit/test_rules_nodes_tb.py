"""Rule nodes matched against ThingsBoard's own (rule-engine-components): the message type
switch's relation table, a switch script's relations, the save attributes node's scope, the save
timeseries node's TTL, timestamp and processing settings, the check fields node, the push to
cloud node's message types, and the alarm nodes' configuration. Each test names the Java source
it follows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from edge_sync.rules import alarms as a
from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import (
    NO_PUSH_SCOPE,
    ClearAlarm,
    CreateAlarm,
    Failed,
    Outcome,
    PushToCloud,
    RuleEngine,
    SaveAttributes,
    SaveTimeseries,
    Visited,
    saved_originators,
)
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.validate import validate

DEV = Originator("DEVICE", "d1")
ORIGIN = ("DEVICE", "d1")
Node = tuple[str, str, dict[str, Any]]


def chain(nodes: list[Node], conns: list[tuple[int, int, str]], *,
          clock: Callable[[], int] = lambda: 777,
          versions: list[int] | None = None) -> RuleEngine:
    docs: list[dict[str, Any]] = [{"type": t, "name": name, "configuration": c}
                                  for t, name, c in nodes]
    for doc, version in zip(docs, versions or [], strict=False):
        doc["configurationVersion"] = version
    rc, meta = parse({"ruleChain": {"name": "t", "type": "EDGE"},
                      "metadata": {"firstNodeIndex": 0, "nodes": docs,
                                   "connections": [{"fromIndex": a, "toIndex": b, "type": r}
                                                   for a, b, r in conns]}})
    return RuleEngine(rc, meta, clock=clock)


def problems(node: Node, version: int = 1) -> list[str]:
    t, name, config = node
    rc, meta = parse({"ruleChain": {"name": "t", "type": "EDGE"},
                      "metadata": {"firstNodeIndex": 0, "connections": [], "nodes": [
                          {"type": t, "name": name, "configuration": config,
                           "configurationVersion": version}]}})
    return [str(p) for p in validate(rc, meta)]


def effects(out: list[Outcome]) -> list[Outcome]:
    return [o for o in out if not isinstance(o, Visited)]


def telemetry(data: Any, **meta: str) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, meta, ts=1000)


# -- TbMsgTypeSwitchNode ---------------------------------------------------------------------

# TbMsgType (common/data .../msg/TbMsgType.java): each type and its rule node connection; the
# types without one go by "Other"
TB_MSG_TYPES: list[tuple[str, str]] = [
    ("POST_ATTRIBUTES_REQUEST", "Post attributes"),
    ("POST_TELEMETRY_REQUEST", "Post telemetry"),
    ("TO_SERVER_RPC_REQUEST", "RPC Request from Device"),
    ("ACTIVITY_EVENT", "Activity Event"),
    ("INACTIVITY_EVENT", "Inactivity Event"),
    ("CONNECT_EVENT", "Connect Event"),
    ("DISCONNECT_EVENT", "Disconnect Event"),
    ("ENTITY_CREATED", "Entity Created"),
    ("ENTITY_UPDATED", "Entity Updated"),
    ("ENTITY_DELETED", "Entity Deleted"),
    ("ENTITY_ASSIGNED", "Entity Assigned"),
    ("ENTITY_UNASSIGNED", "Entity Unassigned"),
    ("ATTRIBUTES_UPDATED", "Attributes Updated"),
    ("ATTRIBUTES_DELETED", "Attributes Deleted"),
    ("ALARM", "Alarm"),
    ("ALARM_CREATED", "Alarm Created"),
    ("ALARM_UPDATED", "Alarm Updated"),
    ("ALARM_SEVERITY_UPDATED", "Alarm Severity Updated"),
    ("ALARM_ACK", "Alarm Acknowledged"),
    ("ALARM_CLEAR", "Alarm Cleared"),
    ("ALARM_DELETE", "Other"),
    ("ALARM_ASSIGNED", "Alarm Assigned"),
    ("ALARM_UNASSIGNED", "Alarm Unassigned"),
    ("COMMENT_CREATED", "Comment Created"),
    ("COMMENT_UPDATED", "Comment Updated"),
    ("RPC_CALL_FROM_SERVER_TO_DEVICE", "RPC Request to Device"),
    ("ENTITY_ASSIGNED_FROM_TENANT", "Entity Assigned From Tenant"),
    ("ENTITY_ASSIGNED_TO_TENANT", "Entity Assigned To Tenant"),
    ("ENTITY_ASSIGNED_TO_EDGE", "Other"),
    ("ENTITY_UNASSIGNED_FROM_EDGE", "Other"),
    ("TIMESERIES_UPDATED", "Timeseries Updated"),
    ("TIMESERIES_DELETED", "Timeseries Deleted"),
    ("RPC_QUEUED", "RPC Queued"),
    ("RPC_SENT", "RPC Sent"),
    ("RPC_DELIVERED", "RPC Delivered"),
    ("RPC_SUCCESSFUL", "RPC Successful"),
    ("RPC_TIMEOUT", "RPC Timeout"),
    ("RPC_EXPIRED", "RPC Expired"),
    ("RPC_FAILED", "RPC Failed"),
    ("RPC_DELETED", "RPC Deleted"),
    ("RELATION_ADD_OR_UPDATE", "Relation Added or Updated"),
    ("RELATION_DELETED", "Relation Deleted"),
    ("RELATIONS_DELETED", "All Relations Deleted"),
    ("PROVISION_SUCCESS", "Other"),
    ("PROVISION_FAILURE", "Other"),
    ("SEND_EMAIL", "Other"),
    ("REST_API_REQUEST", "REST API request"),
    ("DEDUPLICATION_TIMEOUT_SELF_MSG", "Other"),
    ("NA", "Other"),
    ("MY_CUSTOM_TYPE", "Other"),
]


def test_the_type_switch_routes_every_thingsboard_message_type_by_its_connection() -> None:
    """TbMsgTypeSwitchNode.onMsg: tellNext(msg, msg.getInternalType().getRuleNodeConnection()).
    Each relation leads to a node named after it (a type switch with nothing after it), so the
    node a message reaches names the relation it went by."""
    relations = list(dict.fromkeys(relation for _, relation in TB_MSG_TYPES))
    engine = chain([(n.MSG_TYPE_SWITCH, "Switch", {})]
                   + [(n.MSG_TYPE_SWITCH, relation, {}) for relation in relations],
                   [(0, i, relation) for i, relation in enumerate(relations, 1)])
    routed = {msg_type: engine.run(RuleMsg(msg_type, DEV, {}))
              for msg_type, _ in TB_MSG_TYPES}
    assert routed == {
        msg_type: [Visited("nodes[0] 'Switch'"),
                   Visited(f"nodes[{relations.index(relation) + 1}] {relation!r}")]
        for msg_type, relation in TB_MSG_TYPES}


def test_the_type_switch_sends_an_alarm_nodes_message_by_alarm() -> None:
    """What the create/clear alarm nodes send on is of type ALARM: the switch's "Alarm"."""
    engine = chain([(n.MSG_TYPE_SWITCH, "Switch", {}), (n.MSG_TYPE_SWITCH, "Alarms", {}),
                    (n.MSG_TYPE_SWITCH, "Others", {})],
                   [(0, 1, "Alarm"), (0, 2, "Other")])
    assert engine.run(RuleMsg("ALARM", DEV, {"id": "a"}, ts=1)) == [
        Visited("nodes[0] 'Switch'"), Visited("nodes[1] 'Alarms'")]
    assert engine.run_many([RuleMsg("ALARM", DEV, {}, ts=1), RuleMsg("X", DEV, {}, ts=2)]) == [
        [Visited("nodes[0] 'Switch'"), Visited("nodes[1] 'Alarms'")],
        [Visited("nodes[0] 'Switch'"), Visited("nodes[2] 'Others'")]]


# -- TbJsSwitchNode --------------------------------------------------------------------------

@pytest.mark.parametrize("lang", ["JS", "TBEL"])
def test_a_switch_script_naming_a_relation_twice_routes_once(lang: str) -> None:
    """RuleNodeJsScriptEngine / RuleNodeTbelScriptEngine.executeSwitchTransform collect the
    names into a Set: ['a', 'b', 'a'] routes by a once and by b once (in first-named order)."""
    script = "return ['a', 'b', 'a'];"
    config = {"scriptLang": lang, "jsScript": script, "tbelScript": script}
    nodes: list[Node] = [(n.JS_SWITCH, "Fan", config),
                         (n.PUSH_TO_CLOUD, "Push A", {"scope": "SERVER_SCOPE"}),
                         (n.PUSH_TO_CLOUD, "Push B", {"scope": "SERVER_SCOPE"})]
    engine = chain(nodes, [(0, 1, "a"), (0, 2, "b")])
    msg = telemetry({"t": 1}, ts="5")
    pushed = [PushToCloud("nodes[1] 'Push A'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                          "NORMAL", {"t": 1}, {"ts": "5"}, 5),
              PushToCloud("nodes[2] 'Push B'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                          "NORMAL", {"t": 1}, {"ts": "5"}, 5)]
    assert effects(engine.run(msg)) == pushed
    batch = engine.run_many([msg, msg])
    assert [effects(out) for out in batch] == [pushed, pushed]


# -- TbMsgPushToCloudNode --------------------------------------------------------------------

PUSH = "nodes[0] 'Push'"


@pytest.mark.parametrize("config", [{}, {"scope": None}, {"scope": ""}])
def test_a_push_node_without_a_scope_pushes_all_but_unscoped_attributes(
        config: dict[str, Any]) -> None:
    """AbstractTbMsgPushNode reads its configuration's scope only in getScope, for an
    attribute message (POST_ATTRIBUTES_REQUEST, ATTRIBUTES_UPDATED, ATTRIBUTES_DELETED)
    without scope metadata: the chain runs, telemetry and scoped attributes are pushed. An
    unscoped attribute message of a node without a scope (absent or null) fails the node by
    Failure (ThingsBoard Edge would send its event up without a scope, which the cloud
    refuses); of a node whose scope is "", an attribute post or update goes up as
    SERVER_SCOPE (EdgeMsgConstructorUtils.getScopeOfDefault), a deletion fails."""
    assert problems((n.PUSH_TO_CLOUD, "Push", config)) == []
    engine = chain([(n.PUSH_TO_CLOUD, "Push", config), (n.MSG_TYPE_SWITCH, "Success", {}),
                    (n.MSG_TYPE_SWITCH, "Failure", {})],
                   [(0, 1, "Success"), (0, 2, "Failure")])
    success, failure = Visited("nodes[1] 'Success'"), Visited("nodes[2] 'Failure'")
    tele = telemetry({"t": 1}, ts="40")
    connect = RuleMsg("CONNECT_EVENT", DEV, {"a": 1}, {}, ts=40)
    scoped = attributes({"fw": "1"}, scope="SHARED_SCOPE")
    updated = RuleMsg("ATTRIBUTES_UPDATED", DEV, {"fw": "1"}, {"scope": ""}, ts=40)
    msgs = [tele, connect, scoped, attributes({"fw": "1"}), updated,
            RuleMsg("ATTRIBUTES_DELETED", DEV, {"attributes": ["fw"]}, {}, ts=40)]
    unscoped = [Visited(PUSH), Failed(PUSH, NO_PUSH_SCOPE), failure]
    as_server = [
        [Visited(PUSH), PushToCloud(PUSH, ORIGIN, "POST_ATTRIBUTES_REQUEST", "SERVER_SCOPE",
                                    "NORMAL", {"fw": "1"}, {}, 1000), success],
        [Visited(PUSH), PushToCloud(PUSH, ORIGIN, "ATTRIBUTES_UPDATED", "SERVER_SCOPE",
                                    "NORMAL", {"fw": "1"}, {"scope": ""}, 40), success]]
    expected = [
        [Visited(PUSH), PushToCloud(PUSH, ORIGIN, "POST_TELEMETRY_REQUEST", "", "NORMAL",
                                    {"t": 1}, {"ts": "40"}, 40), success],
        [Visited(PUSH), PushToCloud(PUSH, ORIGIN, "CONNECT_EVENT", "", "NORMAL", {"a": 1}, {},
                                    40), success],
        [Visited(PUSH), PushToCloud(PUSH, ORIGIN, "POST_ATTRIBUTES_REQUEST", "SHARED_SCOPE",
                                    "NORMAL", {"fw": "1"}, {"scope": "SHARED_SCOPE"}, 1000),
         success],
        *(as_server if config.get("scope") == "" else [unscoped, unscoped]),
        unscoped]
    assert [engine.run(m) for m in msgs] == expected
    assert engine.run_many(msgs) == expected
    assert NO_PUSH_SCOPE == (
        "the message has no scope metadata and the node no scope: its attributes cannot be "
        "pushed (ThingsBoard's cloud refuses them: No enum constant "
        "org.thingsboard.server.common.data.AttributeScope.)")


def test_blank_scope_metadata_pushes_attribute_posts_as_server_scope() -> None:
    """Scope metadata that is blank but not empty is the scope AbstractTbMsgPushNode.getScope
    puts in the event; ThingsBoard Edge's uplink sends an attribute post or update with a
    blank scope as SERVER_SCOPE (EdgeMsgConstructorUtils.getScopeOfDefault: isNotBlank), a
    deletion with the scope as it is (refused by the cloud, and by the edge when it makes
    the event)."""
    engine = chain([(n.PUSH_TO_CLOUD, "Push", {"scope": "CLIENT_SCOPE"})], [])
    post = attributes({"fw": "1"}, scope=" \u3000")
    deleted = RuleMsg("ATTRIBUTES_DELETED", DEV, {"attributes": ["fw"]}, {"scope": " "}, ts=40)
    nbsp = attributes({"fw": "1"}, scope="\u00a0")  # not Java whitespace: a scope name
    assert [effects(engine.run(m)) for m in (post, deleted, nbsp)] == [
        [PushToCloud(PUSH, ORIGIN, "POST_ATTRIBUTES_REQUEST", "SERVER_SCOPE", "NORMAL",
                     {"fw": "1"}, {"scope": " \u3000"}, 1000)],
        [PushToCloud(PUSH, ORIGIN, "ATTRIBUTES_DELETED", " ", "NORMAL",
                     {"attributes": ["fw"]}, {"scope": " "}, 40)],
        [PushToCloud(PUSH, ORIGIN, "POST_ATTRIBUTES_REQUEST", "\u00a0", "NORMAL",
                     {"fw": "1"}, {"scope": "\u00a0"}, 1000)]]


# -- TbMsgAttributesNode ---------------------------------------------------------------------

def attributes(data: Any, **meta: str) -> RuleMsg:
    return RuleMsg("POST_ATTRIBUTES_REQUEST", DEV, data, meta, ts=1000)


def test_save_attributes_takes_the_messages_scope_else_the_nodes() -> None:
    """TbMsgAttributesNode.getScope: metadata "scope" when not empty, else the configuration's;
    AttributeScope.valueOf of a name it does not know fails the node (Failure)."""
    engine = chain([(n.SAVE_ATTRIBUTES, "Attrs", {"scope": "CLIENT_SCOPE"}),
                    (n.MSG_TYPE_SWITCH, "Failed", {})], [(0, 1, "Failure")])
    assert effects(engine.run(attributes({"fw": "1"}, scope="SHARED_SCOPE"))) == [
        SaveAttributes("nodes[0] 'Attrs'", ORIGIN, "SHARED_SCOPE", {"fw": "1"})]
    assert effects(engine.run(attributes({"fw": "1"}, scope=""))) == [
        SaveAttributes("nodes[0] 'Attrs'", ORIGIN, "CLIENT_SCOPE", {"fw": "1"})]
    assert effects(engine.run(attributes({"fw": "1"}))) == [
        SaveAttributes("nodes[0] 'Attrs'", ORIGIN, "CLIENT_SCOPE", {"fw": "1"})]
    assert engine.run(attributes({"fw": "1"}, scope="shared_scope")) == [
        Visited("nodes[0] 'Attrs'"),
        Failed("nodes[0] 'Attrs'", "attribute scope 'shared_scope' (the message's scope "
                                   "metadata) is not one of CLIENT_SCOPE, SERVER_SCOPE, "
                                   "SHARED_SCOPE"),
        Visited("nodes[1] 'Failed'")]


ATTRS = "nodes[0] 'Attrs'"
ATTRS_SUCCESS = Visited("nodes[1] 'Success'")
ALWAYS = {"type": "ON_EVERY_MESSAGE"}
DEDUP_60 = {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 60}


def saving_attributes(settings: dict[str, Any] | None, *, version: int = 3,
                      scope: str = "CLIENT_SCOPE") -> RuleEngine:
    """A save attributes node (configurationVersion ``version``, its processingSettings
    ``settings`` when given) whose Success and Failure go on to a node named after them."""
    config: dict[str, Any] = {"scope": scope, "updateAttributesOnlyOnValueChange": True}
    if settings is not None:
        config["processingSettings"] = settings
    return chain([(n.SAVE_ATTRIBUTES, "Attrs", config), (n.MSG_TYPE_SWITCH, "Success", {}),
                  (n.MSG_TYPE_SWITCH, "Failure", {})],
                 [(0, 1, "Success"), (0, 2, "Failure")], versions=[version])


def attrs_at(ts: int, originator: str = "d1", **meta: str) -> RuleMsg:
    return RuleMsg("POST_ATTRIBUTES_REQUEST", Originator("DEVICE", originator), {"v": ts},
                   {"ts": str(ts), **meta}, ts=5)


def attrs_saved(ts: int, originator: str = "d1") -> SaveAttributes:
    return SaveAttributes(ATTRS, ("DEVICE", originator), "CLIENT_SCOPE", {"v": ts})


@pytest.mark.parametrize(("settings", "saves"), [
    (ALWAYS, True),
    ({"type": "WEBSOCKETS_ONLY"}, False),
    ({"type": "ADVANCED", "attributes": {"type": "SKIP"}, "webSockets": ALWAYS,
      "calculatedFields": ALWAYS}, False),
    ({"type": "ADVANCED", "attributes": ALWAYS, "webSockets": {"type": "SKIP"},
      "calculatedFields": {"type": "SKIP"}}, True),
])
def test_save_attributes_follows_its_processing_settings(settings: dict[str, Any] | None,
                                                         saves: bool) -> None:
    """TbMsgAttributesNode.determineSaveStrategy: the attributes are saved when the settings'
    attributes action says so (AttributesSaveRequest.Strategy.saveAttributes); either way the
    message goes on by Success (the short-circuit's tellSuccess, or the save's callback)."""
    engine = saving_attributes(settings)
    expected = [Visited(ATTRS), *([attrs_saved(1000)] if saves else []), ATTRS_SUCCESS]
    assert engine.run(attrs_at(1000)) == expected
    assert engine.run_many([attrs_at(1000), attrs_at(1000)]) == [expected, expected]


def test_save_attributes_deduplicates_per_originator_by_the_metadata_ts() -> None:
    """DEDUPLICATE (and ADVANCED's attributes DEDUPLICATE): DeduplicateProcessingStrategy
    .shouldProcess(msg.getMetaDataTs(), originator): an originator's first message in each
    interval is saved, the others go on by Success unsaved; the decisions are the same in a
    batch; an empty object has no attributes and goes on undecided (onMsg returns before
    determineSaveStrategy)."""
    msgs = [attrs_at(1000), attrs_at(2000), attrs_at(61_000), attrs_at(59_999),
            attrs_at(2000, "d2"), attrs_at(119_999), attrs_at(120_000)]
    runs = [[attrs_saved(1000)], [], [attrs_saved(61_000)], [], [attrs_saved(2000, "d2")], [],
            [attrs_saved(120_000)]]
    advanced = {"type": "ADVANCED", "attributes": DEDUP_60, "webSockets": ALWAYS,
                "calculatedFields": {"type": "SKIP"}}
    for settings in (DEDUP_60, advanced):
        engine = saving_attributes(settings)
        assert [effects(engine.run(m)) for m in msgs] == runs
        assert [effects(out) for out in saving_attributes(settings).run_many(msgs)] == runs
    engine = saving_attributes(DEDUP_60)
    empty = RuleMsg("POST_ATTRIBUTES_REQUEST", DEV, {}, {"ts": "1000"}, ts=5)
    assert engine.run(empty) == [Visited(ATTRS), ATTRS_SUCCESS]
    assert effects(engine.run(attrs_at(1000))) == [attrs_saved(1000)]


BAD_SCOPE = {"scope": "shared_scope"}
SCOPE_FAILED = [Visited(ATTRS),
                Failed(ATTRS, "attribute scope 'shared_scope' (the message's scope metadata) is "
                              "not one of CLIENT_SCOPE, SERVER_SCOPE, SHARED_SCOPE"),
                Visited("nodes[2] 'Failure'")]
SKIPPED = {"type": "SKIP"}


@pytest.mark.parametrize("settings", [
    {"type": "WEBSOCKETS_ONLY"},
    {"type": "ADVANCED", "attributes": SKIPPED, "webSockets": ALWAYS,
     "calculatedFields": SKIPPED},
    {"type": "ADVANCED", "attributes": SKIPPED, "webSockets": SKIPPED,
     "calculatedFields": ALWAYS},
])
def test_attributes_not_saved_still_have_their_scope_looked_at(
        settings: dict[str, Any]) -> None:
    """TbMsgAttributesNode.onMsg short-circuits only when the attributes, WebSocket and
    calculated field actions all say no (AttributesSaveRequest.Strategy.WS_ONLY is
    (false, true, false)); otherwise getScope runs, and a scope metadata
    AttributeScope.valueOf refuses fails the node, though nothing is saved."""
    engine = saving_attributes(settings)
    assert engine.run(attrs_at(1000, **BAD_SCOPE)) == SCOPE_FAILED
    assert engine.run(attrs_at(1000)) == [Visited(ATTRS), ATTRS_SUCCESS]
    assert engine.run_many([attrs_at(1000, **BAD_SCOPE), attrs_at(1000)]) == [
        SCOPE_FAILED, [Visited(ATTRS), ATTRS_SUCCESS]]


def test_attributes_no_action_takes_go_on_without_their_scope_looked_at() -> None:
    """The short-circuit of TbMsgAttributesNode.onMsg comes before getScope: when every
    action says no (ADVANCED all SKIP, or deduplicated away) a bad scope metadata is not
    read. Each DEDUPLICATE action decides with its own memory (determineSaveStrategy calls
    shouldProcess on each of the three): a message the attributes action skips in its
    interval still has its scope read when the WebSocket action's interval is new."""
    never = {"type": "ADVANCED", "attributes": SKIPPED, "webSockets": SKIPPED,
             "calculatedFields": SKIPPED}
    assert saving_attributes(never).run(attrs_at(1000, **BAD_SCOPE)) == [
        Visited(ATTRS), ATTRS_SUCCESS]
    engine = saving_attributes(DEDUP_60)
    assert engine.run(attrs_at(1000, **BAD_SCOPE)) == SCOPE_FAILED
    assert engine.run(attrs_at(2000, **BAD_SCOPE)) == [Visited(ATTRS), ATTRS_SUCCESS]
    apart = {"type": "ADVANCED",
             "attributes": {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 120},
             "webSockets": DEDUP_60, "calculatedFields": SKIPPED}
    msgs = [attrs_at(1000), attrs_at(61_000, **BAD_SCOPE), attrs_at(62_000, **BAD_SCOPE),
            attrs_at(121_000)]
    runs = [[Visited(ATTRS), attrs_saved(1000), ATTRS_SUCCESS], SCOPE_FAILED,
            [Visited(ATTRS), ATTRS_SUCCESS],
            [Visited(ATTRS), attrs_saved(121_000), ATTRS_SUCCESS]]
    engine = saving_attributes(apart)
    assert [engine.run(m) for m in msgs] == runs
    assert saving_attributes(apart).run_many(msgs) == runs


@pytest.mark.parametrize(("data", "error"), [
    ([1, 2], "Not a JSON Object: [1,2]"),
    ("fw", 'Not a JSON Object: "fw"'),
    (None, "Not a JSON Object: null"),
    ({"fw": "1", "hw": None}, "Can't parse value: null"),
])
def test_attribute_data_thingsboard_cannot_convert_fails_before_the_decision(
        data: Any, error: str) -> None:
    """TbMsgAttributesNode.onMsg converts the data first (JsonConverter.convertToAttributes:
    Gson's getAsJsonObject, parseValues' "Can't parse value: " for a JSON null): such a
    message fails the node by Failure whatever the settings, and a DEDUPLICATE node has not
    decided anything for it, so the originator's next message of the interval is saved."""
    bad = RuleMsg("POST_ATTRIBUTES_REQUEST", Originator("DEVICE", "d1"), data, {"ts": "1000"},
                  ts=5)
    failed = [Visited(ATTRS), Failed(ATTRS, error), Visited("nodes[2] 'Failure'")]
    for settings in (ALWAYS, DEDUP_60):
        engine = saving_attributes(settings)
        assert engine.run(bad) == failed
        assert engine.run(attrs_at(1000)) == [Visited(ATTRS), attrs_saved(1000), ATTRS_SUCCESS]
        assert saving_attributes(settings).run_many([bad, attrs_at(1000)]) == [
            failed, [Visited(ATTRS), attrs_saved(1000), ATTRS_SUCCESS]]


@pytest.mark.parametrize(("scope", "error"), [
    (None, "the message has no scope metadata and the node no scope: its attributes cannot "
           "be saved (ThingsBoard: Name is null)"),
    ("", "the message has no scope metadata and the node's scope is empty: its attributes "
         "cannot be saved (ThingsBoard: No enum constant "
         "org.thingsboard.server.common.data.AttributeScope.)"),
])
def test_a_save_attributes_node_without_a_scope_saves_scoped_messages(
        scope: str | None, error: str) -> None:
    """TbMsgAttributesNodeConfiguration.scope is read only by getScope, for a message without
    scope metadata, and init checks nothing: the chain runs, a message naming its scope is
    saved in it, one without fails the node by Failure (AttributeScope.valueOf of null or
    "")."""
    config: dict[str, Any] = {"processingSettings": ALWAYS}
    if scope is not None:
        config["scope"] = scope
    assert problems((n.SAVE_ATTRIBUTES, "Attrs", config), version=3) == []
    assert problems((n.SAVE_ATTRIBUTES, "Attrs", {**config, "scope": None}), version=3) == []
    engine = chain([(n.SAVE_ATTRIBUTES, "Attrs", config), (n.MSG_TYPE_SWITCH, "Success", {}),
                    (n.MSG_TYPE_SWITCH, "Failure", {})],
                   [(0, 1, "Success"), (0, 2, "Failure")], versions=[3])
    assert engine.run(attrs_at(1000, scope="SHARED_SCOPE")) == [
        Visited(ATTRS), SaveAttributes(ATTRS, ORIGIN, "SHARED_SCOPE", {"v": 1000}),
        ATTRS_SUCCESS]
    assert engine.run(attrs_at(1000)) == [Visited(ATTRS), Failed(ATTRS, error),
                                          Visited("nodes[2] 'Failure'")]


@pytest.mark.parametrize("version", [0, 1, 2])
def test_an_attributes_configuration_before_version_3_saves_on_every_message(
        version: int) -> None:
    """TbMsgAttributesNode.upgrade from versions 0 to 2 sets processingSettings to
    ON_EVERY_MESSAGE, whatever the configuration held."""
    engine = saving_attributes({"type": "WEBSOCKETS_ONLY"}, version=version)
    assert [effects(engine.run(m)) for m in (attrs_at(1000), attrs_at(1000))] == [
        [attrs_saved(1000)], [attrs_saved(1000)]]
    assert not engine.deduplicates


def test_a_forgotten_originator_is_saved_again_by_a_deduplicating_attributes_node() -> None:
    """RuleEngine.forget (the outcome of a message let through was not stored): a save
    attributes node's DEDUPLICATE forgets that originator as a save timeseries node's does;
    saved_originators names the originators of attribute saves too."""
    engine = saving_attributes(DEDUP_60)
    assert engine.deduplicates
    out = engine.run(attrs_at(1000))
    assert effects(out) == [attrs_saved(1000)]
    assert saved_originators(out) == frozenset({"d1"})
    assert effects(engine.run(attrs_at(1000, "d2"))) == [attrs_saved(1000, "d2")]
    assert effects(engine.run(attrs_at(1000))) == []
    engine.forget({"d1"})
    assert effects(engine.run(attrs_at(1000))) == [attrs_saved(1000)]
    assert effects(engine.run(attrs_at(1000))) == []
    assert effects(engine.run(attrs_at(1000, "d2"))) == []  # another originator's decisions
    assert not saving_attributes(ALWAYS).deduplicates
    assert not saving_attributes({"type": "ADVANCED", "attributes": ALWAYS,  # nothing to decide
                                  "webSockets": DEDUP_60, "calculatedFields": DEDUP_60}
                                 ).deduplicates


@pytest.mark.parametrize(("config", "found"), [
    ({"scope": "SERVER_SCOPE", "processingSettings": None}, [
        "processingSettings: null: required from configurationVersion 3 on (e.g. {\"type\": "
        "\"ON_EVERY_MESSAGE\"})"]),
    ({"scope": "SERVER_SCOPE"}, [
        "processingSettings: missing: required from configurationVersion 3 on (e.g. "
        "{\"type\": \"ON_EVERY_MESSAGE\"})"]),
    ({"scope": "SERVER_SCOPE", "processingSettings": {
        "type": "ADVANCED", "attributes": {"type": "SKIP", "deduplicationIntervalSecs": 60},
        "webSockets": {"type": "ON_EVERY_MESSAGE", "deduplicationIntervalSecs": "abc"},
        "calculatedFields": DEDUP_60}}, [
        "processingSettings.attributes.deduplicationIntervalSecs: not a field of a SKIP "
        "strategy (only DEDUPLICATE has an interval): remove it",
        "processingSettings.webSockets.deduplicationIntervalSecs: not a field of a "
        "ON_EVERY_MESSAGE strategy (only DEDUPLICATE has an interval): remove it"]),
    ({"scope": "SERVER_SCOPE", "processingSettings": {"type": "BOGUS"}}, [
        "processingSettings: expected an object whose type is one of ON_EVERY_MESSAGE, "
        "WEBSOCKETS_ONLY, DEDUPLICATE, ADVANCED, got {'type': 'BOGUS'}"]),
    ({"scope": "SERVER_SCOPE", "processingSettings": {"type": "DEDUPLICATE"}}, [
        "processingSettings.deduplicationIntervalSecs: missing: expected whole seconds from "
        "1 to 86400 (a day)"]),
    ({"scope": "SERVER_SCOPE", "processingSettings": {
        "type": "ADVANCED", "attributes": {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 0},
        "timeseries": ALWAYS, "webSockets": ALWAYS}}, [
        "processingSettings.attributes.deduplicationIntervalSecs: got 0: expected whole "
        "seconds from 1 to 86400 (a day)",
        "processingSettings.calculatedFields: missing: expected an object whose type is one "
        "of ON_EVERY_MESSAGE, DEDUPLICATE, SKIP"]),
    ({"scope": "shared", "processingSettings": {"type": "WEBSOCKETS_ONLY"}}, [
        "scope: got 'shared': expected one of CLIENT_SCOPE, SERVER_SCOPE, SHARED_SCOPE"]),
])
def test_save_attributes_settings_thingsboard_cannot_read_refuse_the_chain(
        config: dict[str, Any], found: list[str]) -> None:
    """What Jackson would refuse to read into TbMsgAttributesNodeConfiguration's
    AttributesProcessingSettings (an unknown type, an ADVANCED without one of its three
    actions, a DEDUPLICATE interval DeduplicateProcessingStrategy refuses, an interval on a
    SKIP or ON_EVERY_MESSAGE strategy: FAIL_ON_UNKNOWN_PROPERTIES), or what
    RuleChainDataValidator.validateRuleNode refuses (no processingSettings: @NotNull) refuses
    the chain, the field named."""
    assert problems((n.SAVE_ATTRIBUTES, "Attrs", config), version=3) == [
        f"metadata.nodes[0].configuration.{p}" for p in found]


@pytest.mark.parametrize("version", [0, 1, 2])
def test_settings_before_version_3_are_not_read(version: int) -> None:
    """TbMsgAttributesNode.upgrade from versions 0 to 2 replaces processingSettings with
    ON_EVERY_MESSAGE before the node reads them: settings ThingsBoard could not read, or
    none, do not refuse the chain."""
    for settings in ({"type": "BOGUS"}, {"type": "DEDUPLICATE"}, None):
        assert problems((n.SAVE_ATTRIBUTES, "Attrs",
                         {"scope": "SERVER_SCOPE", "processingSettings": settings}),
                        version=version) == []


JUNK_INTERVAL: list[Any] = [60, "abc", True, 1e30, [1]]


def _first_action(node_type: str, config: dict[str, Any], version: int) -> n.Strategy:
    if node_type == n.SAVE_ATTRIBUTES:
        return n.attributes_settings(config, version).attributes
    return n.timeseries_settings(config, version).timeseries


@pytest.mark.parametrize("junk", JUNK_INTERVAL)
@pytest.mark.parametrize(("node_type", "version", "actions"), [
    (n.SAVE_ATTRIBUTES, 3, ("attributes", "webSockets", "calculatedFields")),
    (n.SAVE_TIMESERIES, 1, ("timeseries", "latest", "webSockets", "calculatedFields")),
])
def test_a_chain_that_validates_builds(node_type: str, version: int,
                                       actions: tuple[str, ...], junk: Any) -> None:
    """A save node whose ADVANCED settings give an interval to a SKIP or ON_EVERY_MESSAGE
    strategy is refused (Jackson's UnrecognizedPropertyException: those strategies have no
    properties); its interval is read only for a DEDUPLICATE one, so whatever chain validates
    builds. The same settings without the interval validate and build."""
    strategies = [{"type": "SKIP", "deduplicationIntervalSecs": junk},
                  {"type": "ON_EVERY_MESSAGE", "deduplicationIntervalSecs": junk}]
    for strategy in strategies:
        advanced: dict[str, Any] = {"type": "ADVANCED", **{a: ALWAYS for a in actions}}
        advanced[actions[0]] = strategy
        config = {"scope": "SERVER_SCOPE", "processingSettings": advanced}
        assert problems((node_type, "Save", config), version=version) == [
            f"metadata.nodes[0].configuration.processingSettings.{actions[0]}"
            f".deduplicationIntervalSecs: not a field of a {strategy['type']} strategy (only "
            "DEDUPLICATE has an interval): remove it"]
        assert _first_action(node_type, config, version) == (
            n.NEVER if strategy["type"] == "SKIP" else n.EVERY)  # the interval is not read
        advanced[actions[0]] = {"type": strategy["type"]}
        advanced[actions[1]] = DEDUP_60
        assert problems((node_type, "Save", config), version=version) == []
        chain([(node_type, "Save", config)], [], versions=[version])  # builds


# -- TbCheckMessageNode ----------------------------------------------------------------------

CHECK_SINKS: list[Node] = [(n.MSG_TYPE_SWITCH, "True", {}), (n.MSG_TYPE_SWITCH, "False", {}),
                           (n.MSG_TYPE_SWITCH, "Failure", {})]


def check(config: dict[str, Any], msg: RuleMsg) -> str:
    """The relation a check fields node sends ``msg`` by (its Failed reason appended)."""
    engine = chain([(n.CHECK_MESSAGE, "Check", config), *CHECK_SINKS],
                   [(0, 1, "True"), (0, 2, "False"), (0, 3, "Failure")])
    out = engine.run(msg)
    relation = out[-1]
    assert isinstance(relation, Visited)
    failed = [o.error for o in out if isinstance(o, Failed)]
    return relation.node.split("'")[1] + "".join(f": {f}" for f in failed)


@pytest.mark.parametrize(("config", "data", "meta", "relation"), [
    # checkAllKeys is TbCheckMessageNodeConfiguration's primitive boolean: absent is false, so
    # one key present is enough
    ({"messageNames": ["a", "b"]}, {"a": 1}, {}, "True"),
    ({"messageNames": ["a", "b"], "checkAllKeys": None}, {"a": 1}, {}, "True"),
    ({"messageNames": ["a", "b"], "checkAllKeys": True}, {"a": 1}, {}, "False"),
    ({"messageNames": ["a", "b"], "checkAllKeys": False}, {"a": 1}, {}, "True"),
    # older configurations hold it as text, which Jackson reads as the boolean it names
    ({"messageNames": ["a", "b"], "checkAllKeys": "true"}, {"a": 1}, {}, "False"),
    ({"messageNames": ["a", "b"], "checkAllKeys": "TRUE"}, {"a": 1}, {}, "False"),
    ({"messageNames": ["a", "b"], "checkAllKeys": "false"}, {"a": 1}, {}, "True"),
    ({"messageNames": ["a", "b"], "checkAllKeys": ""}, {"a": 1}, {}, "True"),
    ({"messageNames": ["a", "b"], "checkAllKeys": 1}, {"a": 1}, {}, "False"),
    # the data is parsed only when messageNames names keys: a metadata-only check passes
    # whatever the data is
    ({"metadataNames": ["deviceName"], "checkAllKeys": True}, [1, 2], {"deviceName": "b"},
     "True"),
    ({"metadataNames": ["deviceName"], "messageNames": []}, "text", {"deviceName": "b"},
     "True"),
    ({"metadataNames": ["deviceName"]}, None, {}, "False"),
    # ... and when it does, data that is not an object fails, even if the metadata matches
    ({"messageNames": ["a"], "metadataNames": ["deviceName"]}, [1], {"deviceName": "b"},
     "Failure: the message data is not a JSON object"),
    ({"messageNames": ["a"], "checkAllKeys": True}, None, {},
     "Failure: the message data is not a JSON object"),
    # at least one: a metadata key is enough
    ({"messageNames": ["a"], "metadataNames": ["deviceName"]}, {"b": 1}, {"deviceName": "x"},
     "True"),
    ({"messageNames": ["a"], "metadataNames": ["deviceName"]}, {"b": 1}, {}, "False"),
    # nothing named: all of none is true, at least one of none is false
    ({"checkAllKeys": True}, [1], {}, "True"),
    ({}, [1], {}, "False"),
])
def test_check_fields_as_thingsboard(config: dict[str, Any], data: Any, meta: dict[str, str],
                                     relation: str) -> None:
    """TbCheckMessageNode.onMsg: allKeysData && allKeysMetadata, else atLeastOneData ||
    atLeastOneMetadata; each *Data parses the data (Gson, to a Map) only when messageNames is
    not empty, and a parse that fails goes by Failure."""
    assert check(config, RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, meta, ts=1)) == relation


@pytest.mark.parametrize(("value", "found"), [
    ("yes", ["metadata.nodes[0].configuration.checkAllKeys: expected true or false, got "
             "'yes'"]),
    (1.5, ["metadata.nodes[0].configuration.checkAllKeys: expected true or false, got 1.5"]),
    ([True], ["metadata.nodes[0].configuration.checkAllKeys: expected true or false, got "
              "[True]"]),
    (" True ", []), ("null", []), (0, []), (None, []), (False, [])])
def test_a_check_all_keys_jackson_cannot_read_refuses_the_chain(value: Any,
                                                                found: list[str]) -> None:
    assert problems((n.CHECK_MESSAGE, "Check", {"messageNames": ["a"],
                                                "checkAllKeys": value})) == found


# -- TbMsgTimeseriesNode ---------------------------------------------------------------------

SAVE = "nodes[0] 'Save'"
AFTER: Node = (n.MSG_TYPE_SWITCH, "After", {})


def saving(config: dict[str, Any], *, version: int = 1,
           clock: Callable[[], int] = lambda: 777) -> RuleEngine:
    """A save timeseries node (configurationVersion ``version``) whose Success and Failure go
    on to a node named after the relation."""
    return chain([(n.SAVE_TIMESERIES, "Save", config), (n.MSG_TYPE_SWITCH, "Success", {}),
                  (n.MSG_TYPE_SWITCH, "Failure", {})],
                 [(0, 1, "Success"), (0, 2, "Failure")], clock=clock, versions=[version])


def saved(ts: int, data: Any, ttl: int = 0, *, series: bool = True,
          latest: bool = True) -> SaveTimeseries:
    return SaveTimeseries(SAVE, ORIGIN, ts, data, ttl, series, latest)


SUCCESS_AFTER = Visited("nodes[1] 'Success'")
FAILURE_AFTER = Visited("nodes[2] 'Failure'")
EVERY = {"type": "ON_EVERY_MESSAGE"}


@pytest.mark.parametrize(("meta", "ttl"), [
    ({"TTL": "60"}, 60), ({"TTL": "0"}, 0), ({"TTL": "+5"}, 5), ({"TTL": ""}, 30), ({}, 30),
    ({"TTL": "3162240000"}, 3_162_240_000)])
def test_save_timeseries_takes_the_messages_ttl_else_the_nodes(meta: dict[str, str],
                                                                ttl: int) -> None:
    """TbMsgTimeseriesNode.onMsg: metadata "TTL" when not empty (Long.parseLong), else
    defaultTTL; 0 is the default retention (ThingsBoard's tenant profile's, the edge's
    rules.local_retention_hours)."""
    engine = saving({"defaultTTL": 30, "processingSettings": EVERY})
    assert engine.run(telemetry({"t": 1}, **meta)) == [
        Visited(SAVE), saved(1000, {"t": 1}, ttl), SUCCESS_AFTER]


@pytest.mark.parametrize("text", ["soon", "-1", "1.5", "3162240001", "9" * 30])
def test_a_ttl_the_edge_cannot_read_fails_the_node(text: str) -> None:
    engine = saving({"defaultTTL": 30, "processingSettings": EVERY})
    assert engine.run(telemetry({"t": 1}, TTL=text)) == [
        Visited(SAVE),
        Failed(SAVE, f"metadata TTL {text[:40]!r}: expected whole seconds from 0 to "
                     "3162240000 (0: the edge's retention)"),
        FAILURE_AFTER]


@pytest.mark.parametrize("flag", [True, "true"])
def test_use_server_ts_saves_at_the_edges_time(flag: Any) -> None:
    """TbMsgTimeseriesNode.computeTs: the server's clock, not metadata.ts, with useServerTs."""
    engine = saving({"useServerTs": flag, "processingSettings": EVERY})
    assert effects(engine.run(telemetry({"t": 1}, ts="5000"))) == [saved(777, {"t": 1})]
    assert effects(saving({"useServerTs": False, "processingSettings": EVERY}).run(
        telemetry({"t": 1}, ts="5000"))) == [saved(5000, {"t": 1})]


def test_websockets_only_saves_nothing_and_goes_on_by_success() -> None:
    """WEBSOCKETS_ONLY: TimeseriesSaveRequest.Strategy.WS_ONLY, no database save; the edge has
    no WebSocket subscriptions, so nothing is done and the message goes on by Success."""
    engine = saving({"processingSettings": {"type": "WEBSOCKETS_ONLY"}})
    assert engine.run(telemetry({"t": 1})) == [Visited(SAVE), SUCCESS_AFTER]
    assert engine.run_many([telemetry({"t": 1}), telemetry({"t": 2})]) == [
        [Visited(SAVE), SUCCESS_AFTER], [Visited(SAVE), SUCCESS_AFTER]]


@pytest.mark.parametrize(("config", "series", "latest"), [
    # TbMsgTimeseriesNode.upgrade from version 0: skipLatestPersistence "true" (asText) is
    # ADVANCED with latest SKIP, anything else ON_EVERY_MESSAGE
    ({"defaultTTL": 0, "skipLatestPersistence": "true"}, True, False),
    ({"defaultTTL": 0, "skipLatestPersistence": True}, True, False),
    ({"defaultTTL": 0, "skipLatestPersistence": "True"}, True, True),
    ({"defaultTTL": 0, "skipLatestPersistence": False}, True, True),
    ({"defaultTTL": 0}, True, True),
    # the upgrade replaces a version 0 configuration's processingSettings
    ({"processingSettings": {"type": "WEBSOCKETS_ONLY"}}, True, True),
])
def test_a_version_0_configuration_is_read_as_thingsboard_upgrades_it(
        config: dict[str, Any], series: bool, latest: bool) -> None:
    engine = saving(config, version=0)
    assert effects(engine.run(telemetry({"t": 1}))) == [
        saved(1000, {"t": 1}, series=series, latest=latest)]


def test_a_later_configuration_reads_processing_settings_not_skip_latest_persistence() -> None:
    engine = saving({"skipLatestPersistence": "true", "processingSettings": EVERY})
    assert effects(engine.run(telemetry({"t": 1}))) == [saved(1000, {"t": 1})]
    assert problems((n.SAVE_TIMESERIES, "Save", {"skipLatestPersistence": "true"})) == [
        "metadata.nodes[0].configuration.processingSettings: missing: required from "
        "configurationVersion 1 on (e.g. {\"type\": \"ON_EVERY_MESSAGE\"})"]


def at(ts: int, originator: str = "d1") -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", Originator("DEVICE", originator), {"v": ts},
                   {"ts": str(ts)}, ts=ts)


def test_deduplicate_saves_the_first_message_of_each_interval_per_originator() -> None:
    """DEDUPLICATE: DeduplicateProcessingStrategy.shouldProcess (ts / interval, a set of
    originators per interval): the first message of an originator in an interval is saved
    (timeseries and latest), the others go on by Success unsaved."""
    engine = saving({"processingSettings": {"type": "DEDUPLICATE",
                                            "deduplicationIntervalSecs": 60}})
    runs = [effects(engine.run(msg)) for msg in (
        at(1000), at(2000), at(61_000), at(59_999), at(2000, "d2"), at(119_999), at(120_000))]
    assert runs == [
        [saved(1000, {"v": 1000})], [], [saved(61_000, {"v": 61_000})], [],
        [SaveTimeseries(SAVE, ("DEVICE", "d2"), 2000, {"v": 2000}, 0)], [],
        [saved(120_000, {"v": 120_000})]]
    assert engine.run(at(3000)) == [Visited(SAVE), SUCCESS_AFTER]


def test_deduplicate_in_a_batch_decides_as_one_by_one() -> None:
    config = {"processingSettings": {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 10}}
    msgs = [at(ts) for ts in (5000, 1000, 12_000, 9999, 15_000, 25_000, 20_000)]
    one_by_one = saving(config)
    assert saving(config).run_many(msgs) == [one_by_one.run(msg) for msg in msgs]
    assert [effects(out) for out in saving(config).run_many(msgs)] == [
        [saved(5000, {"v": 5000})], [], [saved(12_000, {"v": 12_000})], [], [],
        [saved(25_000, {"v": 25_000})], []]


def test_deduplicate_forgets_an_interval_unused_for_ten_intervals_and_the_oldest_beyond_its_cap(
        ) -> None:
    """DeduplicateProcessingStrategy's cache: an interval expires 10 intervals after its last
    use (at least 10 minutes); it keeps at most min(2 days / interval, 100) intervals."""
    now = [0]
    engine = saving({"processingSettings": {"type": "DEDUPLICATE",
                                            "deduplicationIntervalSecs": 1}},
                    clock=lambda: now[0])
    assert effects(engine.run(at(500))) == [saved(500, {"v": 500})]
    now[0] = 599_999
    assert effects(engine.run(at(600))) == []  # used again: kept 10 more minutes
    now[0] = 599_999 + 599_999
    assert effects(engine.run(at(700))) == []
    now[0] += 600_000
    assert effects(engine.run(at(800))) == [saved(800, {"v": 800})]  # forgotten
    day = 86_400_000
    daily = saving({"processingSettings": {"type": "DEDUPLICATE",
                                           "deduplicationIntervalSecs": 86_400}})
    # at most 2 intervals are kept: a third drops the least recently used
    assert [len(effects(daily.run(at(ts))))
            for ts in (1, 2, day, day + 1, 2 * day, 1, 2 * day + 1, day)] == [
        1, 0, 1, 0, 1, 1, 0, 1]


def test_advanced_settings_decide_timeseries_and_latest_apart() -> None:
    """ADVANCED: each action its own ProcessingStrategy; the edge has two of ThingsBoard's four
    actions (timeseries, latest), WebSockets and calculated fields are not run on the edge."""
    skip = {"type": "SKIP"}
    dedup = {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 60}
    engine = saving({"processingSettings": {"type": "ADVANCED", "timeseries": EVERY,
                                            "latest": dedup, "webSockets": skip,
                                            "calculatedFields": dedup}})
    assert [effects(engine.run(at(ts))) for ts in (1000, 2000, 61_000)] == [
        [saved(1000, {"v": 1000})], [saved(2000, {"v": 2000}, latest=False)],
        [saved(61_000, {"v": 61_000})]]
    nothing = saving({"processingSettings": {"type": "ADVANCED", "timeseries": skip,
                                             "latest": skip, "webSockets": EVERY,
                                             "calculatedFields": EVERY}})
    assert nothing.run(at(1000)) == [Visited(SAVE), SUCCESS_AFTER]


def test_a_forgotten_originator_is_saved_again_in_its_intervals_and_only_it() -> None:
    """RuleEngine.forget: the outcome of a message a deduplicating save let through was not
    stored (its Append failed, the device sends it again): every DEDUPLICATE strategy of the
    engine (both of an ADVANCED node, every node) forgets that originator, in every interval it
    keeps; other originators' decisions stand. A chain that does not deduplicate says so."""
    dedup = {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 60}
    engine = chain([(n.SAVE_TIMESERIES, "Save", {"processingSettings": dedup}),
                    (n.SAVE_TIMESERIES, "Apart", {"processingSettings": {
                        "type": "ADVANCED", "timeseries": dedup,
                        "latest": {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 10},
                        "webSockets": EVERY, "calculatedFields": EVERY}})],
                   [(0, 1, "Success")], versions=[1, 1])
    apart = "nodes[1] 'Apart'"
    both = [saved(1000, {"v": 1000}),
            SaveTimeseries(apart, ORIGIN, 1000, {"v": 1000}, 0, True, True)]
    assert engine.deduplicates
    assert effects(engine.run(at(1000))) == both
    assert [len(effects(engine.run(m))) for m in (at(61_000), at(1000, "d2"))] == [2, 2]
    assert effects(engine.run(at(1000))) == []  # the retry, were it not forgotten
    engine.forget({"d1"})
    assert effects(engine.run(at(1000))) == both
    assert effects(engine.run(at(1000))) == []  # decided again
    assert effects(engine.run(at(61_000))) == [  # every interval was forgotten
        saved(61_000, {"v": 61_000}),
        SaveTimeseries(apart, ORIGIN, 61_000, {"v": 61_000}, 0, True, True)]
    assert effects(engine.run(at(1000, "d2"))) == []  # another originator's decisions stand
    assert not saving({"processingSettings": {"type": "ON_EVERY_MESSAGE"}}).deduplicates
    assert not saving({"processingSettings": {"type": "ADVANCED", "timeseries": EVERY,
                                              "latest": {"type": "SKIP"}, "webSockets": EVERY,
                                              "calculatedFields": dedup}}).deduplicates


@pytest.mark.parametrize(("config", "found"), [
    ({"defaultTTL": None, "processingSettings": EVERY}, []),
    ({"defaultTTL": None, "useServerTs": "yes", "processingSettings": EVERY}, [
        "useServerTs: expected true or false, got 'yes'"]),
    ({"defaultTTL": 0}, [
        "processingSettings: missing: required from configurationVersion 1 on (e.g. "
        "{\"type\": \"ON_EVERY_MESSAGE\"})"]),
    ({"defaultTTL": 0, "processingSettings": None}, [
        "processingSettings: null: required from configurationVersion 1 on (e.g. "
        "{\"type\": \"ON_EVERY_MESSAGE\"})"]),
    ({"processingSettings": {"type": "ON_EVERY_MESSAGE"}, "useServerTs": "false"}, []),
    ({"processingSettings": {"type": "EVERY"}}, [
        "processingSettings: expected an object whose type is one of ON_EVERY_MESSAGE, "
        "WEBSOCKETS_ONLY, DEDUPLICATE, ADVANCED, got {'type': 'EVERY'}"]),
    ({"processingSettings": "ON_EVERY_MESSAGE"}, [
        "processingSettings: expected an object whose type is one of ON_EVERY_MESSAGE, "
        "WEBSOCKETS_ONLY, DEDUPLICATE, ADVANCED, got 'ON_EVERY_MESSAGE'"]),
    ({"processingSettings": {"type": "DEDUPLICATE"}}, [
        "processingSettings.deduplicationIntervalSecs: missing: expected whole seconds from "
        "1 to 86400 (a day)"]),
    ({"processingSettings": {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 86_401}}, [
        "processingSettings.deduplicationIntervalSecs: got 86401: expected whole seconds "
        "from 1 to 86400 (a day)"]),
    ({"processingSettings": {"type": "ADVANCED", "timeseries": {"type": "SKIP"},
                             "latest": {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 0},
                             "webSockets": {"type": "WEBSOCKETS_ONLY"}}}, [
        "processingSettings.latest.deduplicationIntervalSecs: got 0: expected whole seconds "
        "from 1 to 86400 (a day)",
        "processingSettings.webSockets: got {'type': 'WEBSOCKETS_ONLY'}: expected an object "
        "whose type is one of ON_EVERY_MESSAGE, DEDUPLICATE, SKIP",
        "processingSettings.calculatedFields: missing: expected an object whose type is one "
        "of ON_EVERY_MESSAGE, DEDUPLICATE, SKIP"]),
])
def test_save_timeseries_settings_thingsboard_cannot_read_refuse_the_chain(
        config: dict[str, Any], found: list[str]) -> None:
    """What Jackson would refuse to read into TbMsgTimeseriesNodeConfiguration (the node could
    not start), or RuleChainDataValidator.validateRuleNode refuses (no processingSettings in
    a version 1 configuration: @NotNull), refuses the chain, the field named. defaultTTL null
    is Jackson's 0. A version 0 configuration needs no processingSettings (upgrade sets
    them)."""
    assert problems((n.SAVE_TIMESERIES, "Save", config)) == [
        f"metadata.nodes[0].configuration.{p}" for p in found]
    if "processingSettings" not in config:
        assert problems((n.SAVE_TIMESERIES, "Save", config), version=0) == []


# -- number fields: Jackson's int and long ----------------------------------------------------

@pytest.mark.parametrize(("value", "as_int", "as_long"), [
    # what jackson-databind 2.18.2 and 2.20.1 (JacksonUtil.OBJECT_MAPPER's defaults,
    # treeToValue) read into a Java int and long field
    (180, 180, 180), ("180", 180, 180), (" 180 ", 180, 180), ("+5", 5, 5), ("-5", -5, -5),
    ("0180", 180, 180), ("\u0663", 3, 3), (180.0, 180, 180), (180.5, 180, 180),
    (-180.5, -180, -180), (0.9999, 0, 0), (1e2, 100, 100), (None, 0, 0), ("", 0, 0),
    ("  ", 0, 0), ("null", 0, 0),
    ("180.0", None, None), ("180.5", None, None), ("1e2", None, None), ("0x10", None, None),
    ("1_000", None, None), ("abc", None, None), ("true", None, None), ("NaN", None, None),
    (True, None, None), (False, None, None), ([5], None, None), ({}, None, None),
    (2**31 - 1, 2**31 - 1, 2**31 - 1), (2**31, None, 2**31), (-(2**31) - 1, None, -(2**31) - 1),
    ("2147483648", None, 2**31), (2147483648.0, None, 2**31), (2147483647.5, None, 2147483647),
    (2**63 - 1, None, 2**63 - 1), (2**63, None, None), ("9223372036854775808", None, None),
    (1e19, None, None), (float("inf"), None, None), (float("nan"), None, None),
])
def test_a_number_field_is_read_as_jackson_reads_a_java_int_or_long(
        value: Any, as_int: int | None, as_long: int | None) -> None:
    """StdDeserializer._parseIntPrimitive / _parseLongPrimitive with Jackson's default
    coercion (TbNodeUtils.convert -> JacksonUtil.treeToValue): the text of a number, a float
    truncated toward zero, "" and null as 0; None where Jackson refuses (the node cannot
    start)."""
    assert (n.java_int(value), n.java_int(value, long=True)) == (as_int, as_long)


def test_the_nodes_run_their_number_fields_as_jackson_reads_them() -> None:
    """TbMsgTimeseriesNodeConfiguration's long defaultTTL and the DEDUPLICATE settings' int
    deduplicationIntervalSecs given as text or a float (as chains built by API or script
    hold them) are run as the numbers ThingsBoard reads."""
    assert effects(saving({"defaultTTL": "180", "processingSettings": EVERY}).run(telemetry({"t": 1}))) == [
        saved(1000, {"t": 1}, 180)]
    assert effects(saving({"defaultTTL": 180.5, "processingSettings": EVERY}).run(telemetry({"t": 1}))) == [
        saved(1000, {"t": 1}, 180)]
    engine = saving({"processingSettings": {"type": "DEDUPLICATE",
                                            "deduplicationIntervalSecs": "60"}})
    assert [len(effects(engine.run(at(ts)))) for ts in (1000, 59_999, 60_000)] == [1, 0, 1]
    engine = saving({"processingSettings": {
        "type": "ADVANCED", "timeseries": EVERY,
        "latest": {"type": "DEDUPLICATE", "deduplicationIntervalSecs": 60.9},
        "webSockets": EVERY, "calculatedFields": EVERY}})
    assert [effects(engine.run(at(ts))) for ts in (1000, 59_999)] == [
        [saved(1000, {"v": 1000})], [saved(59_999, {"v": 59_999}, latest=False)]]


# -- TbCreateAlarmNode / TbClearAlarmNode ----------------------------------------------------

DETAILS = "return {t: msg.t};"


@pytest.mark.parametrize(("config", "read"), [
    # TbCreateAlarmNodeConfiguration's defaults for what is absent: its booleans false,
    # overwriteAlarmDetails true (a field initializer), relationTypes null (none)
    ({"alarmType": "Hot", "severity": "MAJOR"},
     a.CreateAlarmConfig(False, True, "Hot", "MAJOR", False, a.Propagation())),
    ({"alarmType": "Hot ${zone}", "severity": "${sev}", "dynamicSeverity": "TRUE",
      "propagate": 1, "propagateToOwner": "false", "propagateToTenant": True,
      "relationTypes": ["Contains", "Manages ${x}"], "overwriteAlarmDetails": False},
     a.CreateAlarmConfig(False, True, "Hot ${zone}", "${sev}", True,
                         a.Propagation(True, False, True, ("Contains", "Manages ${x}")))),
    ({"alarmType": "Hot", "severity": "MINOR", "relationTypes": None},
     a.CreateAlarmConfig(False, True, "Hot", "MINOR", False, a.Propagation())),
    # the message's alarm: type, severity and propagation are its; the script builds the
    # details unless overwriteAlarmDetails is false
    ({"useMessageAlarmData": True},
     a.CreateAlarmConfig(True, True, "", "", False, a.Propagation())),
    ({"useMessageAlarmData": "true", "overwriteAlarmDetails": " False ", "propagate": True,
      "alarmType": "ignored", "severity": "CRITICAL"},
     a.CreateAlarmConfig(True, False, "", "", False, a.Propagation())),
])
def test_the_create_alarm_configuration_is_read_as_thingsboard_reads_it(
        config: dict[str, Any], read: a.CreateAlarmConfig) -> None:
    """TbCreateAlarmNode.init/loadAlarmNodeConfig (TbNodeUtils.convert to
    TbCreateAlarmNodeConfiguration): what the node runs, read once from a valid configuration."""
    config = {"alarmDetailsBuildJs": DETAILS, **config}
    assert problems((n.CREATE_ALARM, "Raise", config)) == []
    assert a.CreateAlarmConfig.of(config) == read
    assert a.ClearAlarmConfig.of({"alarmType": "Hot ${zone}"}) == a.ClearAlarmConfig("Hot ${zone}")


def test_the_alarm_nodes_run_the_configuration_read_when_the_chain_was_loaded() -> None:
    """TbAbstractAlarmNode.init reads the configuration once: a message reads what was read
    then, not the configuration object (here changed after the engine was built)."""
    create = {"alarmType": "Hot", "severity": "MAJOR", "alarmDetailsBuildJs": DETAILS}
    clear = {"alarmType": "Hot", "alarmDetailsBuildJs": DETAILS}
    engine = chain([(n.JS_FILTER, "Hot?", {"jsScript": "return msg.t > 90;"}),
                    (n.CREATE_ALARM, "Raise", create), (n.CLEAR_ALARM, "Clear", clear)],
                   [(0, 1, "True"), (0, 2, "False")])
    create.update(alarmType="Cold", severity="BOGUS", propagate=True, useMessageAlarmData=True)
    clear.update(alarmType="Cold")
    alarms: dict[str, dict[str, Any]] = {}
    [raised] = effects(engine.run(telemetry({"t": 95}), alarms))
    assert isinstance(raised, CreateAlarm)
    assert (raised.type, raised.severity, raised.details, raised.alarm["propagate"]) == (
        "Hot", "MAJOR", {"t": 95}, False)
    [cleared] = effects(engine.run(telemetry({"t": 20}), alarms))
    assert isinstance(cleared, ClearAlarm)
    assert (cleared.type, cleared.alarm_id, cleared.details) == (
        "Hot", raised.alarm_id, {"t": 20})
    assert alarms == {}


FIXED_SEVERITY = ("with dynamicSeverity but no ${key} or $[path] pattern: every message would "
                  "fail; expected one of CRITICAL, MAJOR, MINOR, WARNING, INDETERMINATE, or a "
                  "pattern")


@pytest.mark.parametrize(("severity", "found"), [
    ("HIGH", [f"severity: got 'HIGH', {FIXED_SEVERITY}"]),
    ("critical", [f"severity: got 'critical', {FIXED_SEVERITY}"]),  # EnumUtils.getEnum: case
    (" MAJOR", [f"severity: got ' MAJOR', {FIXED_SEVERITY}"]),
    ("$sev", [f"severity: got '$sev', {FIXED_SEVERITY}"]),
    ("${sev", [f"severity: got '${{sev', {FIXED_SEVERITY}"]),
    ("$[level", [f"severity: got '$[level', {FIXED_SEVERITY}"]),
    # a severity, or a pattern some message fills in with one: valid
    ("MAJOR", []), ("${sev}", []), ("$[alarm.level]", []), ("${*}", []), ("$[*]", []),
    ("MA${x}JOR", []),
])
def test_a_dynamic_severity_no_message_can_make_a_severity_refuses_the_chain(
        severity: str, found: list[str]) -> None:
    """TbCreateAlarmNode.processAlarmSeverity substitutes the pattern per message and fails
    the message when EnumUtils.getEnum(AlarmSeverity.class, ...) finds no severity: a text
    without a ${key} or $[path] pattern is the same for every message, so ThingsBoard would
    fail every one of them. The edge refuses the chain instead, naming the node's field."""
    node = (n.CREATE_ALARM, "Raise", {"alarmType": "Hot", "alarmDetailsBuildJs": DETAILS,
                                      "severity": severity, "dynamicSeverity": True})
    assert problems(node) == [f"metadata.nodes[0].configuration.{p}" for p in found]
    if not found:
        chain([node], [])
        return
    with pytest.raises(ValueError) as refused:
        chain([node], [])
    assert str(refused.value) == f"the chain cannot be run: metadata.nodes[0].configuration.{found[0]}"


def test_a_dynamic_severity_pattern_that_gives_no_severity_fails_the_message() -> None:
    """A pattern is filled in per message (TbCreateAlarmNode.processAlarmSeverity): a message
    that makes it a severity raises the alarm, one that does not goes by Failure."""
    engine = chain([(n.CREATE_ALARM, "Raise", {"alarmType": "Hot", "alarmDetailsBuildJs": DETAILS,
                                               "severity": "MA${x}JOR", "dynamicSeverity": True}),
                    (n.MSG_TYPE_SWITCH, "Failure", {})], [(0, 1, "Failure")])
    [raised] = effects(engine.run(telemetry({"t": 1}, x=""), {}))
    assert isinstance(raised, CreateAlarm) and raised.severity == "MAJOR"
    assert engine.run(telemetry({"t": 1}, x="-"), {}) == [
        Visited("nodes[0] 'Raise'"),
        Failed("nodes[0] 'Raise'", "alarm severity 'MA-JOR' is not one of CRITICAL, MAJOR, "
                                   "MINOR, WARNING, INDETERMINATE"),
        Visited("nodes[1] 'Failure'")]


NAMES = "CRITICAL, MAJOR, MINOR, WARNING, INDETERMINATE"
TYPE_TEXT = 'expected text (the type of the alarm, e.g. "High Temperature"), got'


@pytest.mark.parametrize(("node_type", "config", "found"), [
    # TbCreateAlarmNode.init: a fixed severity EnumUtils.getEnum cannot read stops the node
    (n.CREATE_ALARM, {"alarmType": "Hot", "severity": "HIGH"},
     [f"severity: got 'HIGH': expected one of {NAMES} (or dynamicSeverity with a ${{key}} "
      "pattern)"]),
    (n.CREATE_ALARM, {"alarmType": "Hot", "severity": 3},
     [f"severity: got 3: expected one of {NAMES}"]),
    (n.CREATE_ALARM, {"alarmType": "Hot", "severity": ["MAJOR"], "dynamicSeverity": True},
     [f"severity: got ['MAJOR']: expected one of {NAMES}"]),
    (n.CREATE_ALARM, {"alarmType": "Hot"}, [f"severity: missing: expected one of {NAMES}"]),
    # an alarm type that is not text (Jackson reads no object or list into String alarmType),
    # or none: no type to raise or clear
    (n.CREATE_ALARM, {"alarmType": ["Hot"], "severity": "MAJOR"},
     [f"alarmType: {TYPE_TEXT} ['Hot']"]),
    (n.CLEAR_ALARM, {"alarmType": 5}, [f"alarmType: {TYPE_TEXT} 5"]),
    (n.CLEAR_ALARM, {"alarmType": {"name": "Hot"}}, [f"alarmType: {TYPE_TEXT} {{'name': 'Hot'}}"]),
    (n.CLEAR_ALARM, {"alarmType": " "},
     ['alarmType: missing (the type of the alarm, e.g. "High Temperature")']),
])
def test_an_alarm_type_or_severity_the_node_cannot_run_refuses_the_chain(
        node_type: str, config: dict[str, Any], found: list[str]) -> None:
    """Found when the chain is validated, naming the node's field, never per message: the
    engine is not built."""
    node = (node_type, "Alarm", {"alarmDetailsBuildJs": DETAILS, **config})
    assert problems(node) == [f"metadata.nodes[0].configuration.{p}" for p in found]
    with pytest.raises(ValueError) as refused:
        chain([node], [])
    assert str(refused.value) == "the chain cannot be run: " + "; ".join(
        f"metadata.nodes[0].configuration.{p}" for p in found)
