"""The rule engine's executor: runs one message through a validated rule chain and returns what
the chain decided, as an ordered list of frozen outcomes (save timeseries, save attributes, push
to cloud, create/clear alarm, log, failed, deferred). Pure: no I/O, no threads, no clock but the
injected one; acting on the outcomes is the caller's.

Owns: walking from ``firstNodeIndex`` along connections by relation type, depth first in
connection order; each supported node's semantics (as ThingsBoard's rule-engine-components
define them, re-stated here); routing a script error to the node's ``Failure`` connections (the
error is reported as ``Failed`` either way); a run-time step limit besides validation's refusal
of cycles. ``TbMsgDeduplicationNode`` is not run here: the message stops there as ``Deferred``.

Alarm state is not kept: a create gives ``CreateAlarm`` and goes on by ``Created``, a clear
gives ``ClearAlarm`` and goes on by ``Cleared``; the outgoing message is of type ``ALARM``.
"""

from __future__ import annotations

import json
import re
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
    node: str
    originator: tuple[str, str]
    msg_type: str
    scope: str
    lane: str
    data: Any


@dataclass(frozen=True, slots=True)
class CreateAlarm:
    node: str
    originator: tuple[str, str]
    type: str
    severity: str
    details: Any
    ts: int


@dataclass(frozen=True, slots=True)
class ClearAlarm:
    node: str
    originator: tuple[str, str]
    type: str
    details: Any
    ts: int


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
    """The message reached a node this engine does not run (deduplication): it stops here."""

    node: str
    msg: RuleMsg


Outcome = (SaveTimeseries | SaveAttributes | PushToCloud | CreateAlarm | ClearAlarm | Log
           | Failed | Deferred)


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


class RuleEngine:
    """One chain, compiled once (its scripts); ``run`` gives one message's outcomes."""

    def __init__(self, chain: RuleChain, meta: RuleChainMetaData, *, clock: Callable[[], int],
                 limits: ScriptLimits | None = None, max_steps: int = DEFAULT_MAX_STEPS) -> None:
        problems = validate(chain, meta)
        if problems:
            raise ValueError("the chain cannot be run: " + "; ".join(map(str, problems)))
        self.meta = meta
        self.clock = clock
        self.max_steps = max_steps
        self._next: dict[tuple[int, str], list[int]] = {}
        for conn in meta.connections:
            self._next.setdefault((conn.from_index, conn.type), []).append(conn.to_index)
        self._scripts: dict[int, ScriptEngine | str] = {}
        for node in meta.nodes:
            field = {n.CREATE_ALARM: "alarmDetailsBuild", n.CLEAR_ALARM: "alarmDetailsBuild"}.get(
                node.type)
            if node.type in (n.JS_FILTER, n.JS_SWITCH, n.TRANSFORM, n.LOG) or field:
                self._scripts[node.index] = self._compile(node, field, limits)

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

    def run(self, msg: RuleMsg) -> list[Outcome]:
        """The outcomes of one message, in the order the chain produced them."""
        out: list[Outcome] = []
        first = self.meta.first_node_index
        if first is None:
            return out
        pending: list[tuple[int, RuleMsg]] = [(first, msg)]
        steps = 0
        while pending:
            index, current = pending.pop()
            node = self.meta.nodes[index]
            steps += 1
            if steps > self.max_steps:
                out.append(Failed(node.describe(),
                                  f"step limit {self.max_steps} reached: the walk stops"))
                return out
            routed: list[tuple[str, RuleMsg]]
            try:
                routed = self._process(node, current, out)
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

    def _process(self, node: RuleNode, msg: RuleMsg, out: list[Outcome]
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
            ts = msg.metadata.get("ts")
            out.append(SaveTimeseries(where, origin, int(ts) if ts and ts.isdigit() else msg.ts,
                                      msg.data, int(config.get("defaultTTL") or 0)))
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
            scope = str(config["scope"])
            if msg.type in (ATTRIBUTES_UPDATED, ATTRIBUTES_DELETED):
                scope = msg.metadata.get("scope", scope)
            out.append(PushToCloud(where, origin, msg.type, scope, lane_of(msg.type), msg.data))
            return [(SUCCESS, msg)]
        if kind in (n.CREATE_ALARM, n.CLEAR_ALARM):
            return self._alarm(node, msg, out)
        if kind == n.DEDUPLICATION:
            out.append(Deferred(where, msg))
            return []
        raise NodeFailure(f"{kind} is not supported")  # validation refuses these

    def _alarm(self, node: RuleNode, msg: RuleMsg, out: list[Outcome]
               ) -> list[tuple[str, RuleMsg]]:
        config = node.configuration
        origin = (msg.originator.entity_type, msg.originator.id)
        details = self._script(node).call(msg.data, msg.metadata_dict(), msg.type)
        alarm_type = _substitute(str(config.get("alarmType", "")), msg)
        now = self.clock()
        if node.type == n.CLEAR_ALARM:
            out.append(ClearAlarm(node.describe(), origin, alarm_type, details, now))
            body = {"type": alarm_type, "status": "CLEARED", "details": details}
            return [("Cleared", msg.with_changes(type=ALARM, data=body, metadata={
                **msg.metadata, "isClearedAlarm": "true"}))]
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
        out.append(CreateAlarm(node.describe(), origin, alarm_type, severity, details, now))
        body = {"type": alarm_type, "severity": severity, "status": "ACTIVE_UNACK",
                "details": details}
        return [("Created", msg.with_changes(type=ALARM, data=body, metadata={
            **msg.metadata, "isNewAlarm": "true"}))]


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
