"""The rule engine's executor: runs one message through a validated rule chain and returns what
the chain decided, as an ordered list of frozen outcomes (visited, save timeseries, save
attributes, push to cloud, create/clear alarm, log, failed, deferred). Pure: no I/O, no threads,
no clock but the injected one, no ids but the injected ``new_id``; acting on the outcomes is the
caller's.

Owns: walking from ``firstNodeIndex`` (``run``) or from a node's connections of one relation
(``resume``: a closed window's output goes on by ``Success``, a message a window refused by
``Failure``) along connections by relation type, depth first in connection order; each
supported node's semantics (as ThingsBoard's rule-engine-components define them, re-stated
here); routing a script error to the node's ``Failure`` connections (the error is reported as
``Failed`` either way); a run-time step limit besides validation's refusal of cycles; stable
node keys (``node_key``: the node's id, else ``#<index>``) for the state kept per node.

``Visited(node)`` comes first among the outcomes of every node the walk enters (the caller
counts them per node, with ``Failed``). ``TbMsgDeduplicationNode`` and the edge's
``edge_sync.rules.AggregateNode`` are not run here: the message stops there as ``Deferred``
(with the node's index), for the caller's windows (``session.py``).

Alarm state is the caller's, lent to ``run``/``resume`` as ``alarms`` (alarm type -> the
originator's ACTIVE alarm, a JSON object) and changed in place, as ThingsBoard's
``TbCreateAlarmNode``/``TbClearAlarmNode`` do against the alarm service: a create with no
active alarm of its type makes a new one (``Created``, metadata ``isNewAlarm``), with one
updates it (severity, details built with ``metadata.prevAlarmDetails``, endTs: ``Updated``,
``isExistingAlarm``); a clear of an active one clears it and removes it (``Cleared``,
``isClearedAlarm``), with none the message goes on unchanged by ``False``. The outgoing message
of a created/updated/cleared alarm is of type ``ALARM`` with the alarm's JSON as data.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_sync.rules import nodes as n
from edge_sync.rules.chain import RuleChain, RuleChainMetaData, RuleNode
from edge_sync.rules.message import (
    ALARM,
    ATTRIBUTES_DELETED,
    ATTRIBUTES_UPDATED,
    POST_ATTRIBUTES_REQUEST,
    POST_TELEMETRY_REQUEST,
    RuleMsg,
)
from edge_sync.rules.sandbox import ScriptEngine, ScriptError, ScriptLimits
from edge_sync.rules.validate import validate

SUCCESS, FAILURE, TRUE, FALSE = "Success", "Failure", "True", "False"
DEFAULT_MAX_STEPS = 1000

# message type -> the type switch's relation; anything else goes by "Other"
TYPE_SWITCH_RELATIONS: Mapping[str, str] = {
    POST_ATTRIBUTES_REQUEST: "Post attributes",
    POST_TELEMETRY_REQUEST: "Post telemetry",
    "TO_SERVER_RPC_REQUEST": "RPC Request from Device",
    "RPC_CALL_FROM_SERVER_TO_DEVICE": "RPC Request to Device",
    "ACTIVITY_EVENT": "Activity Event",
    "INACTIVITY_EVENT": "Inactivity Event",
    "CONNECT_EVENT": "Connect Event",
    "DISCONNECT_EVENT": "Disconnect Event",
    "ENTITY_CREATED": "Entity Created",
    "ENTITY_UPDATED": "Entity Updated",
    "ENTITY_DELETED": "Entity Deleted",
    ATTRIBUTES_UPDATED: "Attributes Updated",
    ATTRIBUTES_DELETED: "Attributes Deleted",
    "TIMESERIES_UPDATED": "Timeseries Updated",
    "TIMESERIES_DELETED": "Timeseries Deleted",
    "ALARM_ACK": "Alarm Acknowledged",
    "ALARM_CLEAR": "Alarm Cleared",
}
OTHER = "Other"

# what the push-to-cloud node accepts; alarms and RPC-like messages take the high lane
PUSHABLE_TYPES = (POST_TELEMETRY_REQUEST, POST_ATTRIBUTES_REQUEST, ATTRIBUTES_UPDATED,
                  ATTRIBUTES_DELETED, ALARM, "TIMESERIES_UPDATED")
HIGH, NORMAL = "HIGH", "NORMAL"
ACTIVE_UNACK, CLEARED_UNACK = "ACTIVE_UNACK", "CLEARED_UNACK"


def lane_of(msg_type: str) -> str:
    """HIGH for alarms and RPC-like messages, NORMAL for telemetry and attributes."""
    return HIGH if msg_type == ALARM or "RPC" in msg_type else NORMAL


@dataclass(frozen=True, slots=True)
class SaveTimeseries:
    node: str
    originator: tuple[str, str]
    ts: int
    data: Any
    ttl: int


@dataclass(frozen=True, slots=True)
class SaveAttributes:
    node: str
    originator: tuple[str, str]
    scope: str
    data: Any


@dataclass(frozen=True, slots=True)
class PushToCloud:
    """``ts``: the metadata's ``ts`` when it is digits, else the message's ts."""

    node: str
    originator: tuple[str, str]
    msg_type: str
    scope: str
    lane: str
    data: Any
    metadata: Mapping[str, str]
    ts: int


@dataclass(frozen=True, slots=True)
class CreateAlarm:
    """A new alarm (``new``) or an update of the originator's active one of that type;
    ``alarm`` is its whole JSON after the change, ``ts`` the engine clock's time."""

    node: str
    originator: tuple[str, str]
    type: str
    severity: str
    details: Any
    ts: int
    alarm_id: str
    new: bool
    alarm: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ClearAlarm:
    """The originator's active alarm of that type cleared; ``alarm``: its JSON, CLEARED_UNACK."""

    node: str
    originator: tuple[str, str]
    type: str
    details: Any
    ts: int
    alarm_id: str
    alarm: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Log:
    node: str
    text: str


@dataclass(frozen=True, slots=True)
class Failed:
    node: str
    error: str


@dataclass(frozen=True, slots=True)
class Deferred:
    """The message reached a window node (deduplication, aggregation): it stops here, for the
    caller to add to the node's window; the walk goes on from ``node_index`` by ``resume``."""

    node: str
    node_index: int
    msg: RuleMsg


@dataclass(frozen=True, slots=True)
class Visited:
    """The walk entered ``node`` (first among that node's outcomes): the node's "in" count."""

    node: str


Outcome = (Visited | SaveTimeseries | SaveAttributes | PushToCloud | CreateAlarm | ClearAlarm
           | Log | Failed | Deferred)
Alarms = dict[str, dict[str, Any]]
"""alarm type -> the originator's ACTIVE alarm (its JSON object)."""


class NodeFailure(Exception):
    """A node could not process the message: the message goes by ``Failure``."""


_PATTERN = re.compile(r"\$\{([^}]+)\}|\$\[([^\]]+)\]")


def _substitute(text: str, msg: RuleMsg) -> str:
    """``${key}`` from metadata, ``$[key]`` from the message data (objects only)."""
    def one(found: re.Match[str]) -> str:
        if found.group(1) is not None:
            return msg.metadata.get(found.group(1), found.group(0))
        data = msg.data if isinstance(msg.data, dict) else {}
        value = data.get(found.group(2))
        return found.group(0) if value is None else str(value)
    return _PATTERN.sub(one, text)


def _meta_ts(msg: RuleMsg) -> int:
    """ThingsBoard's ``getMetaDataTs``: the metadata's ``ts`` when it is digits, else msg.ts."""
    ts = msg.metadata.get("ts")
    return int(ts) if ts and ts.isdigit() else msg.ts


def _new_uuid() -> str:
    return str(uuid.uuid4())


WINDOW_TYPES = (n.DEDUPLICATION, n.AGGREGATE)
"""Nodes the walk stops at with ``Deferred``: their windows are the caller's."""


class RuleEngine:
    """One chain, compiled once (its scripts); ``run`` gives one message's outcomes."""

    def __init__(self, chain: RuleChain, meta: RuleChainMetaData, *, clock: Callable[[], int],
                 limits: ScriptLimits | None = None, max_steps: int = DEFAULT_MAX_STEPS,
                 new_id: Callable[[], str] = _new_uuid) -> None:
        problems = validate(chain, meta)
        if problems:
            raise ValueError("the chain cannot be run: " + "; ".join(map(str, problems)))
        self.chain = chain
        self.meta = meta
        self.clock = clock
        self.max_steps = max_steps
        self.new_id = new_id
        self._next: dict[tuple[int, str], list[int]] = {}
        for conn in meta.connections:
            self._next.setdefault((conn.from_index, conn.type), []).append(conn.to_index)
        self._keys = [self._key_of(node) for node in meta.nodes]
        self._index_of = {key: i for i, key in enumerate(self._keys)}
        self._scripts: dict[int, ScriptEngine | str] = {}
        for node in meta.nodes:
            field = {n.CREATE_ALARM: "alarmDetailsBuild", n.CLEAR_ALARM: "alarmDetailsBuild"}.get(
                node.type)
            if node.type in (n.JS_FILTER, n.JS_SWITCH, n.TRANSFORM, n.LOG) or field:
                self._scripts[node.index] = self._compile(node, field, limits)

    @staticmethod
    def _key_of(node: RuleNode) -> str:
        return node.id if node.id else f"#{node.index}"

    def node_key(self, index: int) -> str:
        """A node's stable key: its id when it has one (a synced chain), else ``#<index>``."""
        return self._keys[index]

    def node_index(self, key: str) -> int | None:
        """The index of the node of that key in this chain; None when it is not in it."""
        return self._index_of.get(key)

    @staticmethod
    def _compile(node: RuleNode, alarm_field: str | None,
                 limits: ScriptLimits | None) -> ScriptEngine | str:
        """The node's compiled script, or the compile error's text (reported per message)."""
        config = dict(node.configuration)
        if alarm_field:
            lang = str(config.get("scriptLang") or "JS").upper()
            config = {"scriptLang": lang,
                      "jsScript": config.get(alarm_field + "Js"),
                      "tbelScript": config.get(alarm_field + "Tbel")}
        try:
            return ScriptEngine.from_config(config, limits)
        except (ScriptError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def run(self, msg: RuleMsg, alarms: Alarms | None = None) -> list[Outcome]:
        """The outcomes of one message from the first node, in the order the chain produced
        them. ``alarms`` (the originator's active alarms by type) is changed in place."""
        first = self.meta.first_node_index
        if first is None:
            return []
        return self._walk([(first, msg)], {} if alarms is None else alarms)

    def resume(self, node_index: int, relation: str, msg: RuleMsg,
               alarms: Alarms | None = None) -> list[Outcome]:
        """Go on from ``node_index``'s connections of ``relation`` with ``msg`` (a window's
        output by ``Success``, a message its window refused by ``Failure``)."""
        if not 0 <= node_index < len(self.meta.nodes):
            raise IndexError(f"node index {node_index}: the chain has {len(self.meta.nodes)}")
        targets = self._next.get((node_index, relation), [])
        return self._walk([(t, msg) for t in reversed(targets)],
                          {} if alarms is None else alarms)

    def _walk(self, pending: list[tuple[int, RuleMsg]], alarms: Alarms) -> list[Outcome]:
        out: list[Outcome] = []
        steps = 0
        while pending:
            index, current = pending.pop()
            node = self.meta.nodes[index]
            steps += 1
            if steps > self.max_steps:
                out.append(Failed(node.describe(),
                                  f"step limit {self.max_steps} reached: the walk stops"))
                return out
            out.append(Visited(node.describe()))
            routed: list[tuple[str, RuleMsg]]
            try:
                routed = self._process(node, current, out, alarms)
            except (NodeFailure, ScriptError) as exc:
                error = (f"{type(exc).__name__}: {exc}" if isinstance(exc, ScriptError)
                         else str(exc))
                out.append(Failed(node.describe(), error))
                routed = [(FAILURE, current)]
            following = [(target, m) for relation, m in routed
                         for target in self._next.get((index, relation), [])]
            pending.extend(reversed(following))  # depth first, in connection order
        return out

    def _script(self, node: RuleNode) -> ScriptEngine:
        script = self._scripts[node.index]
        if isinstance(script, str):
            raise NodeFailure(script)
        return script

    def _process(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                 ) -> list[tuple[str, RuleMsg]]:
        """Run one node: record its outcomes, return (relation, message) to follow."""
        where = node.describe()
        config = node.configuration
        origin = (msg.originator.entity_type, msg.originator.id)
        kind = node.type
        if kind == n.MSG_TYPE_SWITCH:
            return [(TYPE_SWITCH_RELATIONS.get(msg.type, OTHER), msg)]
        if kind == n.JS_FILTER:
            verdict = self._script(node).filter(msg.data, msg.metadata_dict(), msg.type)
            return [(TRUE if verdict else FALSE, msg)]
        if kind == n.JS_SWITCH:
            names = self._script(node).switch(msg.data, msg.metadata_dict(), msg.type)
            return [(name, msg) for name in names]
        if kind == n.CHECK_MESSAGE:
            return [(TRUE if _check_fields(config, msg) else FALSE, msg)]
        if kind == n.TRANSFORM:
            results = self._script(node).transform(msg.data, msg.metadata_dict(), msg.type)
            return [(SUCCESS, msg.with_changes(type=r.msg_type, data=r.msg, metadata=r.metadata))
                    for r in results]
        if kind == n.LOG:
            text = self._script(node).call(msg.data, msg.metadata_dict(), msg.type)
            out.append(Log(where, text if isinstance(text, str) else json.dumps(text)))
            return [(SUCCESS, msg)]
        if kind == n.SAVE_TIMESERIES:
            if msg.type != POST_TELEMETRY_REQUEST:
                raise NodeFailure(f"unsupported message type {msg.type} (saves "
                                  f"{POST_TELEMETRY_REQUEST} only)")
            out.append(SaveTimeseries(where, origin, _meta_ts(msg), msg.data,
                                      int(config.get("defaultTTL") or 0)))
            return [(SUCCESS, msg)]
        if kind == n.SAVE_ATTRIBUTES:
            if msg.type != POST_ATTRIBUTES_REQUEST:
                raise NodeFailure(f"unsupported message type {msg.type} (saves "
                                  f"{POST_ATTRIBUTES_REQUEST} only)")
            out.append(SaveAttributes(where, origin, str(config["scope"]), msg.data))
            return [(SUCCESS, msg)]
        if kind == n.PUSH_TO_CLOUD:
            if msg.type not in PUSHABLE_TYPES:
                raise NodeFailure(f"unsupported message type {msg.type} (pushes "
                                  f"{', '.join(PUSHABLE_TYPES)})")
            # ThingsBoard's AbstractTbMsgPushNode.getScope: the message's, else the node's
            scope = msg.metadata.get("scope") or str(config["scope"])
            out.append(PushToCloud(where, origin, msg.type, scope, lane_of(msg.type), msg.data,
                                   dict(msg.metadata), _meta_ts(msg)))
            return [(SUCCESS, msg)]
        if kind == n.CREATE_ALARM:
            return self._create_alarm(node, msg, out, alarms)
        if kind == n.CLEAR_ALARM:
            return self._clear_alarm(node, msg, out, alarms)
        if kind in WINDOW_TYPES:
            out.append(Deferred(where, node.index, msg))
            return []
        raise NodeFailure(f"{kind} is not supported")  # validation refuses these

    def _details(self, node: RuleNode, msg: RuleMsg, previous: dict[str, Any] | None) -> Any:
        """The details script's value; an existing alarm's details are given to it as
        ``metadata.prevAlarmDetails`` (JSON text), as ThingsBoard does."""
        metadata = msg.metadata_dict()
        if previous is not None and previous.get("details") is not None:
            metadata["prevAlarmDetails"] = json.dumps(previous["details"])
        return self._script(node).call(msg.data, metadata, msg.type)

    def _create_alarm(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                      ) -> list[tuple[str, RuleMsg]]:
        config = node.configuration
        origin = (msg.originator.entity_type, msg.originator.id)
        alarm_type = _substitute(str(config.get("alarmType", "")), msg)
        if config.get("useMessageAlarmData") is True:
            data = msg.data if isinstance(msg.data, dict) else {}
            alarm_type = str(data.get("type") or alarm_type)
            severity = str(data.get("severity") or "")
        else:
            severity = str(config.get("severity", ""))
            if config.get("dynamicSeverity") is True:
                severity = _substitute(severity, msg)
        if severity not in n.ALARM_SEVERITIES:
            raise NodeFailure(f"alarm severity {severity!r} is not one of "
                              + ", ".join(n.ALARM_SEVERITIES))
        existing = alarms.get(alarm_type)
        details = self._details(node, msg, existing)
        now = self.clock()
        if existing is None:
            start = _meta_ts(msg)
            alarm: dict[str, Any] = {
                "id": self.new_id(), "type": alarm_type, "originator": msg.originator.id,
                "severity": severity, "status": ACTIVE_UNACK, "startTs": start, "endTs": start,
                "details": details}
            flag, relation = "isNewAlarm", "Created"
        else:
            alarm = {**existing, "severity": severity, "details": details, "endTs": now}
            flag, relation = "isExistingAlarm", "Updated"
        alarms[alarm_type] = alarm
        out.append(CreateAlarm(node.describe(), origin, alarm_type, severity, details, now,
                               str(alarm["id"]), existing is None, dict(alarm)))
        return [(relation, msg.with_changes(type=ALARM, data=dict(alarm), metadata={
            **msg.metadata, flag: "true"}))]

    def _clear_alarm(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                     ) -> list[tuple[str, RuleMsg]]:
        alarm_type = _substitute(str(node.configuration.get("alarmType", "")), msg)
        existing = alarms.get(alarm_type)
        if existing is None:
            return [(FALSE, msg)]
        details = self._details(node, msg, existing)
        now = self.clock()
        alarm = {**existing, "status": CLEARED_UNACK, "details": details, "clearTs": now}
        del alarms[alarm_type]
        origin = (msg.originator.entity_type, msg.originator.id)
        out.append(ClearAlarm(node.describe(), origin, alarm_type, details, now,
                              str(alarm["id"]), dict(alarm)))
        return [("Cleared", msg.with_changes(type=ALARM, data=dict(alarm), metadata={
            **msg.metadata, "isClearedAlarm": "true"}))]


def _check_fields(config: Mapping[str, Any], msg: RuleMsg) -> bool:
    """TbCheckMessageNode: all (checkAllKeys, the default) or at least one of the named keys
    present in the data and metadata. Data that is not an object is a failure."""
    if not isinstance(msg.data, dict):
        raise NodeFailure("the message data is not a JSON object")
    data_keys = list(config.get("messageNames") or [])
    meta_keys = list(config.get("metadataNames") or [])
    if config.get("checkAllKeys", True) is not False:
        return (all(k in msg.data for k in data_keys)
                and all(k in msg.metadata for k in meta_keys))
    return any(k in msg.data for k in data_keys) or any(k in msg.metadata for k in meta_keys)
