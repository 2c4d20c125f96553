"""The rule engine's executor: runs one message through a validated rule chain and returns what
the chain decided, as an ordered list of outcome values (visited, save timeseries, save
attributes, push to cloud, create/clear alarm, send an RPC request to the device, log, failed,
deferred). Pure: no I/O, no threads, no clock but the injected one, no ids but the injected
``new_id``; acting on the outcomes is the
caller's. Its one memory of earlier messages is what ThingsBoard too keeps in memory per node: a
save timeseries or save attributes node's DEDUPLICATE strategy (the intervals it has saved in,
per originator), gone when the engine is rebuilt (another chain, a restart), as a ThingsBoard
node's on restart.

Owns: walking from ``firstNodeIndex`` (``run``) or from a node's connections of one relation
(``resume``: a closed window's output goes on by ``Success``, a message a window refused by
``Failure``) along connections by relation type, depth first in connection order; each
supported node's semantics (as ThingsBoard's rule-engine-components define them, re-stated
here); routing a script error to the node's ``Failure`` connections (the error is reported as
``Failed`` either way); a run-time step limit besides validation's refusal of cycles; stable
node keys (``node_key``: the node's identity, ``window_key``) for the state kept per node; running
a batch of messages node by node (``run_many``: each node, and each script, once for the whole
batch) with exactly the outcomes ``run`` gives them one after the other.

``Visited(node)`` comes first among the outcomes of every node the walk enters (the caller
counts them per node, with ``Failed``). ``TbMsgDeduplicationNode`` and the edge's
``edge_sync.rules.AggregateNode`` are not run here: the message stops there as ``Deferred``
(with the node's index), for the caller's windows (``session.py``).

Alarm state is the caller's, lent to ``run``/``resume`` as ``alarms`` (alarm type -> the
originator's ACTIVE alarm, ThingsBoard's Alarm JSON: ``alarms.py``) and changed in place, as
ThingsBoard's ``TbCreateAlarmNode``/``TbClearAlarmNode`` do against the alarm service: a create
with no active alarm of its type makes a new one (``Created``, metadata ``isNewAlarm``), with
one updates it (severity, propagation, details built with ``metadata.prevAlarmDetails``, endTs:
``Updated``, ``isExistingAlarm``); a clear of an active one clears it and removes it
(``Cleared``, ``isClearedAlarm``), with none the message goes on unchanged by ``False``. The
outgoing message of a created/updated/cleared alarm is of type ``ALARM`` with the alarm's JSON
as data (``TbAbstractAlarmNode.toAlarmMsg``). Alarm types and dynamic severities are patterns
(``patterns.py``).

The configurations of the check fields, save timeseries, save attributes and alarm nodes are
read once, when the engine is built, into frozen objects (``_FieldCheck``, ``_SaveSeries``, a
save attributes node's ``_strategy``, ``alarms.CreateAlarmConfig``, ``alarms.ClearAlarmConfig``),
as ThingsBoard's nodes read theirs in ``init``; a message reads only those.
"""

from __future__ import annotations

import heapq
import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from edge_sync.rules import alarms as a
from edge_sync.rules import nodes as n
from edge_sync.rules.chain import RuleChain, RuleChainMetaData, RuleNode
from edge_sync.rules.message import (
    ALARM,
    ATTRIBUTES_DELETED,
    ATTRIBUTES_UPDATED,
    POST_ATTRIBUTES_REQUEST,
    POST_TELEMETRY_REQUEST,
    TO_SERVER_RPC_REQUEST,
    RuleMsg,
)
from edge_sync.rules.patterns import java_json, process_pattern
from edge_sync.rules.sandbox import (
    ScriptBlock,
    ScriptEngine,
    ScriptError,
    ScriptLimits,
    TransformResult,
)
from edge_sync.rules.validate import check
from edge_sync.validators import INT64_MAX, INT64_MIN

SUCCESS, FAILURE, TRUE, FALSE = "Success", "Failure", "True", "False"
DEFAULT_MAX_STEPS = 1000

# message type -> the type switch's relation (ThingsBoard's TbMsgTypeSwitchNode.onMsg:
# TbMsgType.getRuleNodeConnection(), common/data .../msg/TbMsgType.java): every TbMsgType with a
# connection name. Types without one (ALARM_DELETE, ENTITY_ASSIGNED_TO_EDGE,
# ENTITY_UNASSIGNED_FROM_EDGE, PROVISION_SUCCESS, PROVISION_FAILURE, SEND_EMAIL, the
# self-message types) and custom types go by "Other".
TYPE_SWITCH_RELATIONS: Mapping[str, str] = {
    POST_ATTRIBUTES_REQUEST: "Post attributes",
    POST_TELEMETRY_REQUEST: "Post telemetry",
    "TO_SERVER_RPC_REQUEST": "RPC Request from Device",
    "ACTIVITY_EVENT": "Activity Event",
    "INACTIVITY_EVENT": "Inactivity Event",
    "CONNECT_EVENT": "Connect Event",
    "DISCONNECT_EVENT": "Disconnect Event",
    "ENTITY_CREATED": "Entity Created",
    "ENTITY_UPDATED": "Entity Updated",
    "ENTITY_DELETED": "Entity Deleted",
    "ENTITY_ASSIGNED": "Entity Assigned",
    "ENTITY_UNASSIGNED": "Entity Unassigned",
    ATTRIBUTES_UPDATED: "Attributes Updated",
    ATTRIBUTES_DELETED: "Attributes Deleted",
    ALARM: "Alarm",
    "ALARM_CREATED": "Alarm Created",
    "ALARM_UPDATED": "Alarm Updated",
    "ALARM_SEVERITY_UPDATED": "Alarm Severity Updated",
    "ALARM_ACK": "Alarm Acknowledged",
    "ALARM_CLEAR": "Alarm Cleared",
    "ALARM_ASSIGNED": "Alarm Assigned",
    "ALARM_UNASSIGNED": "Alarm Unassigned",
    "COMMENT_CREATED": "Comment Created",
    "COMMENT_UPDATED": "Comment Updated",
    "RPC_CALL_FROM_SERVER_TO_DEVICE": "RPC Request to Device",
    "ENTITY_ASSIGNED_FROM_TENANT": "Entity Assigned From Tenant",
    "ENTITY_ASSIGNED_TO_TENANT": "Entity Assigned To Tenant",
    "TIMESERIES_UPDATED": "Timeseries Updated",
    "TIMESERIES_DELETED": "Timeseries Deleted",
    "RPC_QUEUED": "RPC Queued",
    "RPC_SENT": "RPC Sent",
    "RPC_DELIVERED": "RPC Delivered",
    "RPC_SUCCESSFUL": "RPC Successful",
    "RPC_TIMEOUT": "RPC Timeout",
    "RPC_EXPIRED": "RPC Expired",
    "RPC_FAILED": "RPC Failed",
    "RPC_DELETED": "RPC Deleted",
    "RELATION_ADD_OR_UPDATE": "Relation Added or Updated",
    "RELATION_DELETED": "Relation Deleted",
    "RELATIONS_DELETED": "All Relations Deleted",
    "REST_API_REQUEST": "REST API request",
}
OTHER = "Other"

# what the push-to-cloud node accepts: ThingsBoard's AbstractTbMsgPushNode.isSupportedMsgType
# (its order); what each becomes in the cloud is actors/rule_outcomes.py's
PUSHABLE_TYPES = (POST_TELEMETRY_REQUEST, POST_ATTRIBUTES_REQUEST, ATTRIBUTES_UPDATED,
                  ATTRIBUTES_DELETED, "TIMESERIES_UPDATED", ALARM, "ALARM_CREATED",
                  "ALARM_UPDATED", "ALARM_SEVERITY_UPDATED", "ALARM_ACK", "ALARM_CLEAR",
                  "CONNECT_EVENT", "DISCONNECT_EVENT", "ACTIVITY_EVENT", "INACTIVITY_EVENT",
                  TO_SERVER_RPC_REQUEST)
HIGH, NORMAL = "HIGH", "NORMAL"


def lane_of(msg_type: str) -> str:
    """HIGH for alarms and RPC-like messages, NORMAL for telemetry, attributes and the rest."""
    return HIGH if msg_type == ALARM or msg_type.startswith("ALARM_") or "RPC" in msg_type \
        else NORMAL


_SCOPED_PUSHES = frozenset({POST_ATTRIBUTES_REQUEST, ATTRIBUTES_UPDATED, ATTRIBUTES_DELETED})
"""The types whose cloud event has an attribute scope (AbstractTbMsgPushNode.buildEvent calls
getScope for them; an activity event only with scope metadata, which is then its scope)."""
_PUSH_LANES: Mapping[str, str] = {t: lane_of(t) for t in PUSHABLE_TYPES
                                  if t not in _SCOPED_PUSHES}
"""A pushable message type without an attribute scope -> its lane (one look-up a push: is
it such a type, and where to)."""
_SCOPED_PUSH_LANES: Mapping[str, str] = {t: lane_of(t) for t in _SCOPED_PUSHES}
NO_SAVE_SCOPE = ("the message has no scope metadata and the node's scope is empty: its "
                 "attributes cannot be saved (ThingsBoard: No enum constant "
                 "org.thingsboard.server.common.data.AttributeScope.)")
NO_SAVE_SCOPE_NULL = ("the message has no scope metadata and the node no scope: its attributes "
                      "cannot be saved (ThingsBoard: Name is null)")
NO_PUSH_SCOPE = ("the message has no scope metadata and the node no scope: its attributes "
                 "cannot be pushed (ThingsBoard's cloud refuses them: No enum constant "
                 "org.thingsboard.server.common.data.AttributeScope.)")


@dataclass(slots=True)  # not frozen: a frozen one costs about 1 µs more a message
class SaveTimeseries:
    """``ts``: the metadata's (or the clock's, ``useServerTs``); ``ttl``: seconds, 0 for the
    edge's retention; ``series``/``latest``: whether the local timeseries / the latest values
    take the points (the node's processing settings)."""

    node: str
    originator: tuple[str, str]
    ts: int
    data: Any
    ttl: int
    series: bool = True
    latest: bool = True


@dataclass(slots=True)  # not frozen: a frozen one costs about 1 µs more a message
class SaveAttributes:
    node: str
    originator: tuple[str, str]
    scope: str
    data: Any


@dataclass(slots=True)  # not frozen: a frozen one costs about 1 µs more a message
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
    ``alarm`` is its whole JSON after the change (``alarms.py``), ``ts`` the engine clock's
    time."""

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
    """The originator's active alarm of that type cleared; ``alarm``: its JSON (``alarms.py``),
    cleared."""

    node: str
    originator: tuple[str, str]
    type: str
    details: Any
    ts: int
    alarm_id: str
    alarm: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SendRpc:
    """An RPC request to the originator device (an RPC call request node): stored with the
    message's outcome, delivered as a cloud request is, its answer kept on the edge. Its id
    and uuid are the device's to give (``rule_outcomes.RuleRpcRequests``), as ThingsBoard's
    device actor numbers the requests it sends. ``params``: the text the device's JSON parses
    back (``RpcRequest.params``)."""

    node: str
    originator: tuple[str, str]
    method: str
    params: str
    oneway: bool
    expiration_time: int
    node_key: str = ""  # the node's stable key (``node_key``): where the request's end goes on
    msg_type: str = ""  # the type and metadata of the message that made it: those of the
    metadata: Mapping[str, str] = field(default_factory=dict)  # message its end goes on as


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
           | SendRpc | Log | Failed | Deferred)
Alarms = dict[str, dict[str, Any]]
"""alarm type -> the originator's ACTIVE alarm (its JSON object)."""


class NodeFailure(Exception):
    """A node could not process the message: the message goes by ``Failure``."""


_JAVA_WHITESPACE = frozenset("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \u1680\u2000\u2001\u2002\u2003"
                             "\u2004\u2005\u2006\u2008\u2009\u200a\u2028\u2029\u205f"
                             "\u3000")
"""Java's Character.isWhitespace (no-break spaces excluded)."""


def _java_blank(text: str) -> bool:
    """Apache commons-lang StringUtils.isBlank for a non-null text."""
    return all(c in _JAVA_WHITESPACE for c in text)


def _substitute(text: str, msg: RuleMsg) -> str:
    """``${key}`` from metadata, ``$[a.b]`` from the message data: ThingsBoard's
    ``TbNodeUtils.processPattern`` (``patterns.py``)."""
    return process_pattern(text, msg.data, msg.metadata)


_LONG = re.compile(r"[+-]?[0-9]{1,19}")


def _java_long(text: str) -> int | None:
    """Java's ``Long.parseLong``: ASCII digits, an optional sign, within 64 bits; None where it
    throws. (``str.isdigit`` alone takes "²", and ``int()`` refuses thousands of digits:
    either would raise out of the walk.)"""
    if _LONG.fullmatch(text):
        value = int(text)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    return None


def _meta_ts(msg: RuleMsg) -> int:
    """ThingsBoard's ``TbMsg.getMetaDataTs``: the metadata's ``ts`` when ``Long.parseLong``
    reads it, else msg.ts."""
    ts = _java_long(msg.metadata.get("ts") or "")
    return msg.ts if ts is None else ts


def _ttl(text: str) -> int:
    """A message's metadata ``TTL``: ThingsBoard's Long.parseLong (a text it cannot read fails
    the node), within the edge's bounds (whole seconds from 0 to MAX_TTL_S; 0: the edge's
    retention, as ThingsBoard's 0 is the tenant profile's default)."""
    value = _java_long(text)
    if value is not None and 0 <= value <= n.MAX_TTL_S:
        return value
    raise NodeFailure(f"metadata TTL {text[:40]!r}: expected whole seconds from 0 to "
                      f"{n.MAX_TTL_S} (0: the edge's retention)")


class _Deduplicate:
    """ThingsBoard's DeduplicateProcessingStrategy: a message is processed when it is the first
    of its originator in its interval (``ts / interval``, Java's division). The intervals seen
    are kept in memory as ThingsBoard's cache keeps them: each until it has not been used for
    ten intervals (at least 10 minutes, at most 2 days), at most min(2 days / interval, 100) of
    them, the least recently used dropped first (ThingsBoard's Caffeine cache picks by
    frequency too: which interval goes first may differ when more are in use)."""

    __slots__ = ("_seen", "expire_ms", "interval_ms", "max_intervals")

    def __init__(self, interval_s: int) -> None:
        self.interval_ms = interval_s * 1000
        self.expire_ms = min(max(self.interval_ms * 10, 600_000), 172_800_000)
        self.max_intervals = min(172_800 // interval_s, 100)
        self._seen: OrderedDict[int, tuple[set[str], int]] = OrderedDict()

    def should_process(self, ts: int, originator: str, now: int) -> bool:
        seen = self._seen
        while seen:
            oldest, (_, used) = next(iter(seen.items()))
            if now - used < self.expire_ms:
                break
            del seen[oldest]
        number = abs(ts) // self.interval_ms * (1 if ts >= 0 else -1)
        entry = seen.pop(number, None)
        originators = set() if entry is None else entry[0]
        seen[number] = (originators, now)
        if len(seen) > self.max_intervals:
            seen.popitem(last=False)
        if originator in originators:
            return False
        originators.add(originator)
        return True

    def forget(self, originator: str) -> None:
        """What was decided for ``originator`` in every interval kept: its next message of any
        of them is processed again."""
        for originators, _ in self._seen.values():
            originators.discard(originator)


def _strategy(given: n.Strategy) -> _Deduplicate | bool:
    """One action's ProcessingStrategy as a save node runs it: True on every message, False
    never (SKIP), or the deduplication memory that decides per message."""
    if given.type == n.DEDUPLICATE:
        return _Deduplicate(given.interval_s)
    return given.type == n.ON_EVERY_MESSAGE


@dataclass(frozen=True, slots=True)
class _SaveSeries:
    """A save timeseries node's settings read once (``nodes.timeseries_settings``), with the
    deduplication memory of its DEDUPLICATE strategies."""

    default_ttl: int
    use_server_ts: bool
    every: bool
    """Both actions on every message: nothing to decide (ON_EVERY_MESSAGE)."""
    series: _Deduplicate | bool
    latest: _Deduplicate | bool

    @staticmethod
    def of(node: RuleNode) -> _SaveSeries:
        settings = n.timeseries_settings(node.configuration, node.configuration_version)
        series = _strategy(settings.timeseries)
        latest = series if settings.shared else _strategy(settings.latest)
        return _SaveSeries(settings.default_ttl, settings.use_server_ts,
                           series is True and latest is True, series, latest)

    @property
    def remembers(self) -> bool:
        return isinstance(self.series, _Deduplicate) or isinstance(self.latest, _Deduplicate)

    def decide(self, ts: int, originator: str, now: int) -> tuple[bool, bool]:
        """(save the timeseries, save the latest values) for this message (a shared strategy
        decides once for both, as ThingsBoard's basic DEDUPLICATE does)."""
        series = (self.series.should_process(ts, originator, now)
                  if isinstance(self.series, _Deduplicate) else self.series)
        if self.latest is self.series:
            return series, series
        latest = (self.latest.should_process(ts, originator, now)
                  if isinstance(self.latest, _Deduplicate) else self.latest)
        return series, latest


@dataclass(frozen=True, slots=True)
class _SaveAttrs:
    """A save attributes node's settings read once (``nodes.attributes_settings``): ``save``
    (the attributes action), ``others`` (the WebSocket and calculated field actions, which
    only decide whether the message's scope is looked at) and ``scope`` (the configuration's:
    None when absent or null)."""

    save: _Deduplicate | bool
    others: tuple[_Deduplicate | bool, ...]
    scope: str | None
    every: bool
    """The attributes saved on every message: nothing to decide."""

    @staticmethod
    def of(node: RuleNode) -> _SaveAttrs:
        settings = n.attributes_settings(node.configuration, node.configuration_version)
        save = _strategy(settings.attributes)
        # with the attributes saved on every message the scope is always read: the other
        # actions decide nothing the edge acts on (nor their intervals anything)
        others = () if settings.shared or save is True else (
            _strategy(settings.web_sockets), _strategy(settings.calculated_fields))
        scope = node.configuration.get("scope")
        return _SaveAttrs(save, others, None if scope is None else str(scope), save is True)

    @property
    def remembers(self) -> tuple[_Deduplicate, ...]:
        return tuple(d for d in (self.save, *self.others) if isinstance(d, _Deduplicate))

    def decide(self, ts: int, originator: str, now: int) -> tuple[bool, bool]:
        """(save the attributes, go past the short-circuit) for this message. Every action's
        strategy decides, as TbMsgAttributesNode.determineSaveStrategy calls shouldProcess on
        each of ADVANCED's three (a DEDUPLICATE one takes the originator's interval even when
        another action already says process)."""
        save = self.save
        saving = save.should_process(ts, originator, now) if isinstance(save, _Deduplicate) \
            else save
        going = saving
        for other in self.others:
            if other.should_process(ts, originator, now) if isinstance(other, _Deduplicate) \
                    else other:
                going = True
        return saving, going


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _rpc_text(value: Any) -> str:
    """A JSON primitive's ``getAsString`` (text as it is, a number or boolean as JSON writes
    it), else the value's JSON (TbSendRPCRequestNode.parseJsonData)."""
    if isinstance(value, str):
        return value
    return java_json(value)


def _meta_long(msg: RuleMsg, key: str) -> int | None:
    """A metadata value read with ``Long.parseLong`` when not empty; None when empty."""
    text = msg.metadata.get(key)
    if not text:
        return None
    value = _java_long(text)
    if value is not None:
        return value
    raise NodeFailure(f"metadata {key} {text[:40]!r} is not a whole number (Long.parseLong)")


def window_key(node_type: str, name: str, occurrence: int) -> str:
    """A node's identity, the key its per-entity state (windows) is kept under: its type, its
    name and, among the chain's nodes of that type and name, its place (1, 2, ... in node
    order). Not its index (an edit that inserts a node renumbers the rest) nor its id (the
    cloud gives every node a new id when a chain is saved again). JSON text, so no type and
    name pair can make another's key."""
    return json.dumps([node_type.rsplit(".", 1)[-1], name, occurrence], ensure_ascii=False)


def window_keys(nodes: Sequence[RuleNode]) -> list[str]:
    """``window_key`` of each of a chain's nodes, in node order."""
    seen: dict[tuple[str, str], int] = {}
    keys = []
    for node in nodes:
        occurrence = seen[(node.type, node.name)] = seen.get((node.type, node.name), 0) + 1
        keys.append(window_key(node.type, node.name, occurrence))
    return keys


def window_node_name(node_type: str, name: str, index: int | None = None,
                     occurrence: int = 1) -> str:
    """How every log line names a window node (deduplication, aggregation): its index in the
    chain when it is bound to the chain in force, its name and its type:
    ``nodes[2] 'dedup all 20s' (TbMsgDeduplicationNode)``; a node not in the chain in force
    without the index, ``'dedup all 20s' (TbMsgDeduplicationNode)`` (`` #2`` at the end when
    it was the second of that type and name). So one grep of ``'dedup all 20s'
    (TbMsgDeduplicationNode)`` finds the node's windows whether bound or orphaned."""
    short = node_type.rsplit(".", 1)[-1]
    place = f" #{occurrence}" if occurrence != 1 and index is None else ""
    at = "" if index is None else f"nodes[{index}] "
    return f"{at}{name!r} ({short}){place}"


def describe_key(key: str, node_type: str) -> str:
    """How a log line names a node by its key when the chain in force has no such node
    (``window_node_name`` without the index); a key of an earlier edge version (``#<index>``
    or the node's id) as it is, with the type."""
    try:
        kind, name, occurrence = json.loads(key)
    except (ValueError, TypeError):
        return f"{key} ({node_type.rsplit('.', 1)[-1]})"
    return window_node_name(str(kind), str(name), None, int(occurrence))


WINDOW_TYPES = (n.DEDUPLICATION, n.AGGREGATE)
"""Nodes the walk stops at with ``Deferred``: their windows are the caller's."""


class RuleEngine:
    """One chain, compiled once (its scripts); ``run`` gives one message's outcomes."""

    def __init__(self, chain: RuleChain, meta: RuleChainMetaData, *, clock: Callable[[], int],
                 limits: ScriptLimits | None = None, max_steps: int = DEFAULT_MAX_STEPS,
                 new_id: Callable[[], str] = _new_uuid) -> None:
        problems, scripts = check(chain, meta, limits)
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
        # per node: relation -> targets in connection order; how the node is named; its Visited
        self._targets: list[dict[str, list[int]]] = [{} for _ in meta.nodes]
        for (index, relation), targets in self._next.items():
            self._targets[index][relation] = targets
        self._where = [node.describe() for node in meta.nodes]
        self._visited = [Visited(where) for where in self._where]
        self._order = _topological(len(meta.nodes), self._next)
        self._handlers = [self._handler(node.type) for node in meta.nodes]
        self.has_alarm_nodes = any(node.type in (n.CREATE_ALARM, n.CLEAR_ALARM)
                                   for node in meta.nodes)
        """Alarm nodes share state across messages (and read the clock, make ids) in message
        order: ``run_many`` then runs the messages one by one."""
        self.sends_rpc = any(node.type == n.RPC_REQUEST for node in meta.nodes)
        """RPC call request nodes make requests (``SendRpc``) the caller numbers."""
        self.has_window_nodes = any(node.type in WINDOW_TYPES for node in meta.nodes)
        """Messages stop at window nodes (``Deferred``), for the caller's windows."""
        self._field_checks = {node.index: _FieldCheck.of(node.configuration)
                              for node in meta.nodes if node.type == n.CHECK_MESSAGE}
        self._saves = {node.index: _SaveSeries.of(node)
                       for node in meta.nodes if node.type == n.SAVE_TIMESERIES}
        self._attribute_saves = {node.index: _SaveAttrs.of(node)
                                 for node in meta.nodes if node.type == n.SAVE_ATTRIBUTES}
        self._create_alarms = {node.index: a.CreateAlarmConfig.of(node.configuration)
                               for node in meta.nodes if node.type == n.CREATE_ALARM}
        self._clear_alarms = {node.index: a.ClearAlarmConfig.of(node.configuration)
                              for node in meta.nodes if node.type == n.CLEAR_ALARM}
        self._push_scopes = {node.index: str(node.configuration.get("scope") or "")
                             for node in meta.nodes if node.type == n.PUSH_TO_CLOUD}
        """A push node's ``scope``; "" when it has none (absent, null or "")."""
        self._null_push_scopes = frozenset(
            node.index for node in meta.nodes
            if node.type == n.PUSH_TO_CLOUD and node.configuration.get("scope") is None)
        """The push nodes whose ``scope`` is absent or null (not "")."""
        self._in_message_order = frozenset(
            [i for i, save in self._saves.items() if save.remembers]
            + [i for i, save in self._attribute_saves.items() if save.remembers])
        """Nodes whose decisions depend on the messages before (a deduplicating save):
        ``run_many`` runs them in ``run``'s order."""
        self._deduplicates = tuple({id(d): d for d in (
            *(d for save in self._saves.values() for d in (save.series, save.latest)),
            *(d for save in self._attribute_saves.values() for d in save.remembers))
            if isinstance(d, _Deduplicate)}.values())
        self.deduplicates = bool(self._deduplicates)
        """A save node deduplicates: what it decided is kept in memory, and forgotten
        (``forget``) when the outcome of a message it let through was not stored."""
        self._keys = window_keys(meta.nodes)
        self._index_of = {key: i for i, key in enumerate(self._keys)}
        self._scripts = scripts
        """Each script node's script, compiled by validation (a script the sandbox refuses
        refuses the chain): once per engine, never per message."""

    def node_key(self, index: int) -> str:
        """A node's stable key (``window_key``): the same for the same node of an edited chain
        (renumbered, or sent again by the cloud with new node ids)."""
        return self._keys[index]

    def script_blocks(self) -> list[tuple[RuleNode, ScriptBlock]]:
        """The nodes whose script is blocked now (``ScriptEngine.block``), in node order: read
        when the status or the metrics ask (any thread), never per message."""
        out = []
        for index in sorted(self._scripts):
            block = self._scripts[index].block()
            if block is not None:
                out.append((self.meta.nodes[index], block))
        return out

    def node_index(self, key: str) -> int | None:
        """The index of the node of that key in this chain; None when it is not in it."""
        return self._index_of.get(key)

    def forget(self, originators: Iterable[str]) -> None:
        """The deduplicating saves forget what they decided for these originators, in every
        interval they keep: the outcome of a message they let through was not stored (its
        Append failed, so the device was not acknowledged and sends it again), and the retry
        is to be saved, not taken for a second message of its interval. ThingsBoard's
        DeduplicateProcessingStrategy.shouldProcess never forgets, but ThingsBoard acknowledges
        a device before its rule engine runs; here the acknowledgement waits for the commit.
        Forgetting more than that message's interval may let a later message of an earlier
        interval be saved a second time there, which is harmless; a retry saved nowhere is
        not."""
        them = tuple(originators)
        for dedup in self._deduplicates:
            for originator in them:
                dedup.forget(originator)

    def run(self, msg: RuleMsg, alarms: Alarms | None = None) -> list[Outcome]:
        """The outcomes of one message from the first node, in the order the chain produced
        them. ``alarms`` (the originator's active alarms by type) is changed in place."""
        first = self.meta.first_node_index
        if first is None:
            return []
        return self._walk([(first, msg)], {} if alarms is None else alarms)

    def run_many(self, msgs: Sequence[RuleMsg], alarms: Alarms | None = None,
                 visits: dict[str, int] | None = None) -> list[list[Outcome]]:
        """Each message's outcomes, exactly as ``run(msg, alarms)`` for each in turn gives them,
        computed node by node for all the messages at once (one script call per script node
        for the whole batch, ``ScriptEngine.call_many``). ``visits`` given: the ``Visited``
        outcomes are left out and counted there instead (node -> messages it received), which
        is all a caller that counts them needs, and cheaper.

        The walk: tokens (message index, path key, message) go through the nodes in a
        topological order of the (acyclic) chain, so a node gets all its tokens before it runs;
        a token's children get its path key plus their position among them, an only child its
        parent's key, so sorting a message's visits by path key (stable: ties are an ancestor
        and its descendants, visited in that order) gives the depth-first pre-order ``run``
        produces. A chain with alarm nodes (state shared across messages, in order) runs
        ``run`` per message; so does a message whose walk takes more than ``max_steps`` visits
        (its run stops at the limit), after the others. A script node calls its script on its
        tokens ordered by message, then path: each script sees the calls in ``run``'s order,
        except a step-limited message's, which come after the batch's."""
        first = self.meta.first_node_index
        if first is None:
            return [[] for _ in msgs]
        if self.has_alarm_nodes or len(msgs) < 2:
            results = [self.run(msg, alarms) for msg in msgs]
            return results if visits is None else [count_visits(r, visits) for r in results]
        return self._walk_many(first, msgs, alarms, visits)

    def follows(self, node_index: int, relation: str) -> bool:
        """Whether a connection of ``relation`` leaves node ``node_index`` (``resume`` has
        anywhere to go)."""
        return bool(self._next.get((node_index, relation)))

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
                out.append(Failed(self._where[index],
                                  f"step limit {self.max_steps} reached: the walk stops"))
                return out
            out.append(self._visited[index])
            routed: list[tuple[str, RuleMsg]]
            try:
                routed = self._process(node, current, out, alarms)
            except (NodeFailure, ScriptError) as exc:
                out.append(Failed(self._where[index], _error_text(exc)))
                routed = [(FAILURE, current)]
            targets = self._targets[index]
            following = [(target, m) for relation, m in routed
                         for target in targets.get(relation, ())]
            pending.extend(reversed(following))  # depth first, in connection order
        return out

    def _walk_many(self, first: int, msgs: Sequence[RuleMsg], alarms: Alarms | None,
                   visits: dict[str, int] | None) -> list[list[Outcome]]:
        """``run_many`` without alarm nodes (see there)."""
        queued: list[list[_Token]] = [[] for _ in self.meta.nodes]
        queued[first] = [(i, (), msg) for i, msg in enumerate(msgs)]
        # per message: its visits with outcomes, (path key, outcomes); in pre-order unless it
        # forked
        seen: list[list[tuple[tuple[int, ...], list[Outcome]]]] = [[] for _ in msgs]
        forked: set[int] = set()  # messages with a visit that had more than one child
        over: set[int] = set()  # messages over the step limit: run alone afterwards
        done: list[tuple[int, list[_Token]]] = []  # each node run: its index and its tokens
        # steps per message, counted once a message may exceed the limit: without a fork a
        # message visits each node at most once
        steps: list[int] | None = (None if len(self.meta.nodes) <= self.max_steps
                                   else [0] * len(msgs))
        for index in self._order:
            tokens = queued[index]
            if not tokens:
                continue
            queued[index] = []
            if steps is not None:
                tokens = self._within_steps(tokens, steps, over)
                if not tokens:
                    continue
            done.append((index, tokens))
            targets = self._targets[index]
            forks = len(forked)
            results = self._visit_many(index, tokens)
            if visits is None:
                visited = self._visited[index]
                for (i, key, _), (outs, _) in zip(tokens, results, strict=True):
                    seen[i].append((key, [visited, *outs]))
            else:
                where = self._where[index]
                visits[where] = visits.get(where, 0) + len(tokens)
                for (i, key, _), (outs, _) in zip(tokens, results, strict=True):
                    if outs:
                        seen[i].append((key, outs))
            for (i, key, _), (_, routed) in zip(tokens, results, strict=True):
                if len(routed) == 1:  # the common case: one relation, at most one target
                    relation, m = routed[0]
                    following = targets.get(relation)
                    if following is None:
                        continue
                    if len(following) == 1:
                        queued[following[0]].append((i, key, m))
                        continue
                children = [(target, m) for relation, m in routed
                            for target in targets.get(relation, ())]
                if len(children) == 1:
                    queued[children[0][0]].append((i, key, children[0][1]))
                elif children:
                    forked.add(i)
                    for position, (target, m) in enumerate(children):
                        queued[target].append((i, (*key, position), m))
            if steps is None and len(forked) > forks:
                steps = [0] * len(msgs)  # every visit so far, this node's too
                for _, ran in done:
                    for token in ran:
                        steps[token[0]] += 1
        results_by_msg: list[list[Outcome]] = []
        for i, visits_of in enumerate(seen):
            if i in over:
                results_by_msg.append([])
                continue
            if i in forked:
                visits_of.sort(key=_KEY)  # path keys: the depth-first pre-order
            results_by_msg.append([outcome for _, outs in visits_of for outcome in outs])
        if over and visits is not None:  # their visits in the batch do not count: run alone
            for index, ran in done:
                where = self._where[index]
                visits[where] -= sum(1 for token in ran if token[0] in over)
                if not visits[where]:
                    del visits[where]
        for i in sorted(over):
            results_by_msg[i] = self.run(msgs[i], alarms)
            if visits is not None:
                results_by_msg[i] = count_visits(results_by_msg[i], visits)
        return results_by_msg

    def _within_steps(self, tokens: list[_Token], steps: list[int], over: set[int]
                      ) -> list[_Token]:
        """The tokens whose message stays within ``max_steps`` visits (counted in ``steps``);
        a message past it goes to ``over``, its tokens dropped."""
        live = []
        for token in tokens:
            i = token[0]
            if i in over:
                continue
            steps[i] += 1
            if steps[i] > self.max_steps:
                over.add(i)
                continue
            live.append(token)
        return live

    def _visit_many(self, index: int, tokens: list[_Token]
                    ) -> list[tuple[list[Outcome], list[tuple[str, RuleMsg]]]]:
        """Run node ``index`` on each token: (its outcomes, without ``Visited``; what to
        follow). A script node sorts ``tokens`` by message, then path (its script sees the
        calls in ``run``'s order); the results are in the order of ``tokens`` after that."""
        node = self.meta.nodes[index]
        out: list[tuple[list[Outcome], list[tuple[str, RuleMsg]]]] = []
        script = self._scripts.get(index)
        if script is not None:
            tokens.sort(key=_ORDER)
            args = [(msg.data, msg.metadata_dict(), msg.type) for _, _, msg in tokens]
            values: Sequence[Any]
            if node.type == n.JS_FILTER:
                values = script.filter_many(args)
                where = self._where[index]
                return [([Failed(where, _error_text(value))], [(FAILURE, msg)])
                        if isinstance(value, ScriptError)
                        else (_NO_OUTCOMES, [(TRUE if value else FALSE, msg)])
                        for (_, _, msg), value in zip(tokens, values, strict=True)]
            if node.type == n.TRANSFORM:
                return self._transformed(index, tokens, args, script.transform_many(args))
            values = (script.switch_many(args) if node.type == n.JS_SWITCH
                      else script.call_many(args))
            for (_, _, msg), value in zip(tokens, values, strict=True):
                outs: list[Outcome] = []
                if isinstance(value, ScriptError):
                    outs.append(Failed(self._where[index], _error_text(value)))
                    out.append((outs, [(FAILURE, msg)]))
                else:
                    out.append((outs, self._route_script(node, msg, value, outs)))
            return out
        if node.type == n.MSG_TYPE_SWITCH:
            relation_of = TYPE_SWITCH_RELATIONS.get
            return [(_NO_OUTCOMES, [(relation_of(msg.type, OTHER), msg)])
                    for _, _, msg in tokens]
        if index in self._in_message_order:
            tokens.sort(key=_ORDER)
        handler = self._handlers[index]
        no_alarms: Alarms = {}  # no alarm nodes in a batch walk
        scratch: list[Outcome] = []
        for _, _, msg in tokens:
            try:
                routed = handler(node, msg, scratch, no_alarms)
            except (NodeFailure, ScriptError) as exc:
                scratch.append(Failed(self._where[index], _error_text(exc)))
                routed = [(FAILURE, msg)]
            if scratch:
                out.append((scratch, routed))
                scratch = []
            else:
                out.append((_NO_OUTCOMES, routed))
        return out

    def _transformed(self, index: int, tokens: list[_Token],
                     args: list[tuple[Any, dict[str, str], str]],
                     values: Sequence[list[TransformResult] | ScriptError]
                     ) -> list[tuple[list[Outcome], list[tuple[str, RuleMsg]]]]:
        """A transform node's batch (``_visit_many``): each token's messages out by Success, or
        its failure (``_transformed_msg``)."""
        where = self._where[index]
        out: list[tuple[list[Outcome], list[tuple[str, RuleMsg]]]] = []
        for (_, _, msg), (_, given, _), value in zip(tokens, args, values, strict=True):
            if isinstance(value, ScriptError):
                out.append(([Failed(where, _error_text(value))], [(FAILURE, msg)]))
                continue
            out.append((_NO_OUTCOMES, [(SUCCESS, _transformed_msg(msg, r, given))
                                       for r in value]))
        return out

    def _script(self, node: RuleNode) -> ScriptEngine:
        return self._scripts[node.index]

    def _process(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                 ) -> list[tuple[str, RuleMsg]]:
        """Run one node: record its outcomes, return (relation, message) to follow."""
        return self._handlers[node.index](node, msg, out, alarms)

    def _handler(self, kind: str) -> _Handler:
        """The method that runs a node of that type (``_process``)."""
        return {
            n.MSG_TYPE_SWITCH: self._type_switch,
            n.JS_FILTER: self._run_script,
            n.JS_SWITCH: self._run_script,
            n.TRANSFORM: self._run_script,
            n.LOG: self._run_script,
            n.CHECK_MESSAGE: self._check_message,
            n.SAVE_TIMESERIES: self._save_timeseries,
            n.SAVE_ATTRIBUTES: self._save_attributes,
            n.PUSH_TO_CLOUD: self._push_to_cloud,
            n.CREATE_ALARM: self._create_alarm,
            n.CLEAR_ALARM: self._clear_alarm,
            n.DEDUPLICATION: self._defer,
            n.AGGREGATE: self._defer,
            n.RPC_REQUEST: self._send_rpc,
            n.DEVICE_PROFILE: self._pass_on,
        }.get(kind, self._unsupported)

    @staticmethod
    def _type_switch(node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                     ) -> list[tuple[str, RuleMsg]]:
        return [(TYPE_SWITCH_RELATIONS.get(msg.type, OTHER), msg)]

    @staticmethod
    def _pass_on(node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                 ) -> list[tuple[str, RuleMsg]]:
        """The device profile node: the message on by Success, as ThingsBoard's
        TbDeviceProfileNode.onMsg sends every message it reads (DeviceState.process ends with
        tellSuccess). The profiles' alarm rules are not evaluated on the edge, so none of the
        ALARM messages ThingsBoard's sends besides when a rule changes an alarm (by "Alarm
        Created" and the like: AlarmState.pushMsg) is made (``validate.notes``)."""
        return [(SUCCESS, msg)]

    def _run_script(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                    ) -> list[tuple[str, RuleMsg]]:
        script, kind = self._script(node), node.type
        args = (msg.data, msg.metadata_dict(), msg.type)
        if kind == n.TRANSFORM:
            return [(SUCCESS, _transformed_msg(msg, r, args[1])) for r in script.transform(*args)]
        value = (script.filter(*args) if kind == n.JS_FILTER
                 else script.switch(*args) if kind == n.JS_SWITCH
                 else script.call(*args))
        return self._route_script(node, msg, value, out)

    def _check_message(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                       ) -> list[tuple[str, RuleMsg]]:
        return [(TRUE if self._field_checks[node.index](msg) else FALSE, msg)]

    def _save_timeseries(self, node: RuleNode, msg: RuleMsg, out: list[Outcome],
                         alarms: Alarms) -> list[tuple[str, RuleMsg]]:
        if msg.type != POST_TELEMETRY_REQUEST:
            raise NodeFailure(f"unsupported message type {msg.type} (saves "
                              f"{POST_TELEMETRY_REQUEST} only)")
        # ThingsBoard's TbMsgTimeseriesNode.onMsg: the ts (computeTs), the save strategy of the
        # processing settings (determineSaveStrategy), nothing to do: on by Success; else the
        # TTL, the metadata's "TTL" when not empty (Long.parseLong), else the node's
        save = self._saves[node.index]
        ts = self.clock() if save.use_server_ts else _meta_ts(msg)
        if save.every:
            series = latest = True
        else:
            series, latest = save.decide(ts, msg.originator.id, self.clock())
            if not (series or latest):
                return [(SUCCESS, msg)]
        ttl_text = msg.metadata.get("TTL")
        out.append(SaveTimeseries(self._where[node.index],
                                  (msg.originator.entity_type, msg.originator.id),
                                  ts, msg.data,
                                  _ttl(ttl_text) if ttl_text else save.default_ttl,
                                  series, latest))
        return [(SUCCESS, msg)]

    def _save_attributes(self, node: RuleNode, msg: RuleMsg, out: list[Outcome],
                         alarms: Alarms) -> list[tuple[str, RuleMsg]]:
        """ThingsBoard's TbMsgAttributesNode.onMsg: the data converted first
        (JsonConverter.convertToAttributes: data that is not an object, or a null value, fails
        the node before anything is decided); an object without attributes goes on by Success
        undecided; the processing settings decide (determineSaveStrategy, the metadata's ts)
        each action: when none says process, the message goes on by Success, its scope not
        looked at; else the scope is read (getScope: a name AttributeScope.valueOf does not
        know fails the node), and the attributes are saved when their action says so (the
        WebSocket and calculated field actions have nothing to act on at the edge).
        ``updateAttributesOnlyOnValueChange`` is not read: an unchanged value written again is
        the same value in the edge's store."""
        if msg.type != POST_ATTRIBUTES_REQUEST:
            raise NodeFailure(f"unsupported message type {msg.type} (saves "
                              f"{POST_ATTRIBUTES_REQUEST} only)")
        data = msg.data
        if not isinstance(data, dict):  # Gson's JsonElement.getAsJsonObject
            raise NodeFailure(f"Not a JSON Object: {java_json(data)[:60]}")
        if not data:
            return [(SUCCESS, msg)]
        if None in data.values():  # JsonConverter.parseValues: JsonNull is no value
            raise NodeFailure("Can't parse value: null")
        save = self._attribute_saves[node.index]
        saving = True
        if not save.every:
            saving, going = save.decide(_meta_ts(msg), msg.originator.id, self.clock())
            if not going:
                return [(SUCCESS, msg)]
        # ThingsBoard's TbMsgAttributesNode.getScope: the metadata's "scope" when it is not
        # empty, else the node's (AttributeScope.valueOf: null or a name it does not know
        # fails the node)
        scope = msg.metadata.get("scope") or save.scope
        if scope not in n.ATTRIBUTE_SCOPES:
            if not scope:
                raise NodeFailure(NO_SAVE_SCOPE_NULL if scope is None else NO_SAVE_SCOPE)
            raise NodeFailure(f"attribute scope {scope[:40]!r} (the message's scope metadata) "
                              f"is not one of {', '.join(n.ATTRIBUTE_SCOPES)}")
        if saving:
            out.append(SaveAttributes(self._where[node.index],
                                      (msg.originator.entity_type, msg.originator.id),
                                      scope, data))
        return [(SUCCESS, msg)]

    def _push_to_cloud(self, node: RuleNode, msg: RuleMsg, out: list[Outcome],
                       alarms: Alarms) -> list[tuple[str, RuleMsg]]:
        # ThingsBoard's AbstractTbMsgPushNode.getScope: the message's, else the node's
        scope = msg.metadata.get("scope") or self._push_scopes[node.index]
        lane = _PUSH_LANES.get(msg.type)
        if lane is None:
            lane = _SCOPED_PUSH_LANES.get(msg.type)
            if lane is None:
                raise NodeFailure(f"unsupported message type {msg.type} (pushes "
                                  f"{', '.join(PUSHABLE_TYPES)})")
            scope = self._attribute_push_scope(node, msg, scope)
        out.append(PushToCloud(self._where[node.index],
                               (msg.originator.entity_type, msg.originator.id), msg.type,
                               scope, lane, msg.data, msg.metadata, _meta_ts(msg)))
        return [(SUCCESS, msg)]

    def _attribute_push_scope(self, node: RuleNode, msg: RuleMsg, scope: str) -> str:
        """The scope an attribute message goes up with from ThingsBoard Edge. A blank one
        (the node's "" or blank scope metadata) is SERVER_SCOPE for an attribute post or
        update (EdgeMsgConstructorUtils.constructEntityDataMsg: getScopeOfDefault); a
        deletion goes up with it as it is (setScope), and an empty one the cloud refuses
        (BaseTelemetryProcessor: AttributeScope.valueOf("")), so it fails here. A node
        without a scope (absent or null) puts a JSON null in the event body, which
        getAsJsonPrimitive cannot read: its attributes go up without a scope, which the
        cloud refuses, so an attribute message without scope metadata fails here."""
        if scope and not _java_blank(scope):
            return scope
        if not msg.metadata.get("scope"):  # the node's scope
            if node.index in self._null_push_scopes or msg.type == ATTRIBUTES_DELETED:
                raise NodeFailure(NO_PUSH_SCOPE)
        elif msg.type == ATTRIBUTES_DELETED:
            return scope  # blank scope metadata: the cloud refuses it (rule_outcomes)
        return "SERVER_SCOPE"

    def _send_rpc(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                  ) -> list[tuple[str, RuleMsg]]:
        """ThingsBoard's TbSendRPCRequestNode.onMsg: the data an object (parsed first), the
        originator a device, ``method`` and ``params`` present (else Failure, with its texts);
        ``oneway`` and ``expirationTime`` from the metadata (else now plus the node's timeout).
        The message goes no further now: ThingsBoard acknowledges it, and sends the device's
        answer on by Success (its error by Failure) once the request ends, as a message of this
        one's type and metadata: the caller does that (``resume``) from what ``SendRpc`` keeps.

        Not read: the data's ``requestId`` (ThingsBoard labels the answer it hands back to the
        node with it; the device gets its device actor's own number, as here) and the
        metadata's ``requestUUID`` (a REST call waiting on a ThingsBoard server, which the edge
        has none of). An empty method fails here: the edge delivers no request without one."""
        data = msg.data
        if not isinstance(data, dict):
            raise NodeFailure(f"the message's data is not a JSON object: {java_json(data)[:60]}")
        if msg.originator.entity_type != "DEVICE":
            raise NodeFailure("Message originator is not a device entity!")
        if "method" not in data:
            raise NodeFailure("Method is not present in the message!")
        if "params" not in data:
            raise NodeFailure("Params are not present in the message!")
        method = data["method"]
        if method is None or isinstance(method, dict | list):  # getAsString throws
            raise NodeFailure(f"method {java_json(method)[:40]} is not a text")
        if method == "":
            raise NodeFailure("the method is empty: the edge sends no request without one")
        expiration = _meta_long(msg, "expirationTime")
        if expiration is None:
            expiration = self.clock() + 1000 * n.rpc_timeout_s(node.configuration)
        out.append(SendRpc(self._where[node.index],
                           (msg.originator.entity_type, msg.originator.id), _rpc_text(method),
                           _rpc_text(data["params"]),
                           msg.metadata.get("oneway", "").lower() == "true", expiration,
                           self._keys[node.index], msg.type, msg.metadata))
        return []

    def _defer(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
               ) -> list[tuple[str, RuleMsg]]:
        out.append(Deferred(self._where[node.index], node.index, msg))
        return []

    @staticmethod
    def _unsupported(node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                     ) -> list[tuple[str, RuleMsg]]:
        raise NodeFailure(f"{node.type} is not supported")  # validation refuses these

    def _route_script(self, node: RuleNode, msg: RuleMsg, value: Any, out: list[Outcome]
                      ) -> list[tuple[str, RuleMsg]]:
        """What a filter, switch or log node does with its script's value (already
        shape-checked): its outcomes, and the (relation, message) to follow."""
        kind = node.type
        if kind == n.JS_FILTER:
            return [(TRUE if value else FALSE, msg)]
        if kind == n.JS_SWITCH:
            # RuleNodeJsScriptEngine/RuleNodeTbelScriptEngine.executeSwitchTransform collect
            # the names into a Set: a name given twice routes once (first-named order kept)
            return [(name, msg) for name in dict.fromkeys(value)]
        out.append(Log(self._where[node.index],
                       value if isinstance(value, str) else json.dumps(value)))
        return [(SUCCESS, msg)]

    def _details(self, node: RuleNode, msg: RuleMsg, previous: Mapping[str, Any] | None) -> Any:
        """The details script's value; an existing alarm's details are given to it as
        ``metadata.prevAlarmDetails`` (JSON text), as ThingsBoard does
        (``TbAbstractAlarmNode.buildAlarmDetails``)."""
        metadata = msg.metadata_dict()
        if previous is not None and previous.get("details") is not None:
            metadata["prevAlarmDetails"] = json.dumps(previous["details"])
        return self._script(node).call(msg.data, metadata, msg.type)

    def _create_alarm(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                      ) -> list[tuple[str, RuleMsg]]:
        """``TbCreateAlarmNode.processAlarm``: the type, severity and propagation of the
        configuration, or with ``useMessageAlarmData`` of the message's alarm JSON, whose
        details are kept unless ``overwriteAlarmDetails`` (absent: true, the configuration
        class's default) has the details script build them. The configuration is the one read
        when the engine was built (``alarms.CreateAlarmConfig``): a fixed severity was
        validated then, a dynamic one is checked once substituted."""
        config = self._create_alarms[node.index]
        origin = (msg.originator.entity_type, msg.originator.id)
        given: a.MessageAlarm | None = None
        if config.use_message_alarm_data:
            try:
                given = a.message_alarm(msg.data)  # its severity is one of ThingsBoard's
            except a.AlarmDataError as exc:
                raise NodeFailure(str(exc)) from None
            alarm_type, severity, propagation = given.type, given.severity, given.propagation
        else:
            alarm_type = _substitute(config.alarm_type, msg)
            severity = config.severity
            if config.dynamic_severity:
                severity = _substitute(severity, msg)
                if severity not in n.ALARM_SEVERITIES:
                    raise NodeFailure(f"alarm severity {severity!r} is not one of "
                                      + ", ".join(n.ALARM_SEVERITIES))
            propagation = config.propagation
        kept = alarms.get(alarm_type)
        existing = None if kept is None else a.as_alarm(kept, msg.originator)
        if given is None or config.build_details:  # build_details is True without given
            details = self._details(node, msg, existing)
        else:
            details = given.details
        now = self.clock()
        if existing is None:
            if given is None:
                start = end = _meta_ts(msg)
            else:  # BaseAlarmService.validateAlarmRequest: 0 is now, and the start
                start = given.start_ts or now
                end = given.end_ts or start
                if given.end_ts > 0 and start > end:
                    raise NodeFailure("the message's alarm startTs is after its endTs")
            alarm = a.new_alarm(self.new_id(), now, alarm_type, msg.originator, severity, start,
                                end, details, propagation)
            flag, relation = "isNewAlarm", "Created"
        else:
            alarm = a.updated(existing, severity, propagation, details, now)
            flag, relation = "isExistingAlarm", "Updated"
        alarms[alarm_type] = alarm
        out.append(CreateAlarm(self._where[node.index], origin, alarm_type, severity, details, now,
                               a.alarm_id(alarm), existing is None, dict(alarm)))
        return [(relation, msg.with_changes(type=ALARM, data=dict(alarm), metadata={
            **msg.metadata, flag: "true"}))]

    def _clear_alarm(self, node: RuleNode, msg: RuleMsg, out: list[Outcome], alarms: Alarms
                     ) -> list[tuple[str, RuleMsg]]:
        """``TbClearAlarmNode``: the originator's active alarm of the type cleared, with
        details built by the script."""
        alarm_type = _substitute(self._clear_alarms[node.index].alarm_type, msg)
        kept = alarms.get(alarm_type)
        if kept is None:
            return [(FALSE, msg)]
        existing = a.as_alarm(kept, msg.originator)
        details = self._details(node, msg, existing)
        now = self.clock()
        alarm = a.cleared(existing, details, now)
        del alarms[alarm_type]
        origin = (msg.originator.entity_type, msg.originator.id)
        out.append(ClearAlarm(self._where[node.index], origin, alarm_type, details, now,
                              a.alarm_id(alarm), dict(alarm)))
        return [("Cleared", msg.with_changes(type=ALARM, data=dict(alarm), metadata={
            **msg.metadata, "isClearedAlarm": "true"}))]


_Handler = Callable[[RuleNode, RuleMsg, list[Outcome], Alarms], list[tuple[str, RuleMsg]]]
"""How a node runs (``RuleEngine._process``): its outcomes into the list, what to follow."""
_Token = tuple[int, tuple[int, ...], RuleMsg]
"""``run_many``'s unit of work: (message index, path key, the message at this node)."""
_KEY = itemgetter(0)
_ORDER = itemgetter(0, 1)
_NO_OUTCOMES: list[Outcome] = []
"""A visit with no outcome (shared: never appended to)."""


def _transformed_msg(msg: RuleMsg, result: TransformResult, given: dict[str, str]) -> RuleMsg:
    """One message out of a transform node. The sandbox has made its metadata text, or given
    back ``given`` itself (the dict the script was given) when the script left it out or
    returned it unchanged: then the message's own metadata is kept as it is."""
    return RuleMsg.of_text(result.msg_type, msg.originator, result.msg,
                           msg.metadata if result.metadata is given else result.metadata, msg.ts)


def saved_originators(outcomes: Iterable[Outcome]) -> frozenset[str]:
    """The originators ``outcomes`` save timeseries or attributes of: those whose
    deduplication decisions are to be forgotten (``RuleEngine.forget``) when the outcomes were
    not stored."""
    return frozenset(o.originator[1] for o in outcomes
                     if type(o) is SaveTimeseries or type(o) is SaveAttributes)


def count_visits(outcomes: list[Outcome], visits: dict[str, int]) -> list[Outcome]:
    """``outcomes`` without its ``Visited`` markers, counted into ``visits`` (node -> count)."""
    kept = []
    for outcome in outcomes:
        if type(outcome) is Visited:
            visits[outcome.node] = visits.get(outcome.node, 0) + 1
        else:
            kept.append(outcome)
    return kept


def _error_text(exc: NodeFailure | ScriptError) -> str:
    """How ``Failed`` reports a node's failure: a script error with its type."""
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, ScriptError) else str(exc)


def _topological(count: int, edges: Mapping[tuple[int, str], list[int]]) -> list[int]:
    """The node indexes in an order where every connection goes forward (lowest index first
    among the ready ones); the chain is acyclic (validated)."""
    after: list[set[int]] = [set() for _ in range(count)]
    for (source, _), targets in edges.items():
        after[source].update(targets)
    incoming = [0] * count
    for following in after:
        for target in following:
            incoming[target] += 1
    ready = [i for i in range(count) if incoming[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for target in after[index]:
            incoming[target] -= 1
            if not incoming[target]:
                heapq.heappush(ready, target)
    if len(order) != count:
        raise ValueError("the chain has a cycle")  # validation refuses these
    return order


@dataclass(frozen=True, slots=True)
class _FieldCheck:
    """TbCheckMessageNode, its configuration read once: all (``checkAllKeys``) or at least one
    of the named keys present in the data and metadata. ``checkAllKeys`` is the configuration
    class's primitive boolean: absent means false (``nodes.flag``). The data is read only when
    ``messageNames`` names keys (ThingsBoard's allKeysData/atLeastOneData parse it then
    only): then data that is not an object fails the node, whatever the metadata holds."""

    data_keys: frozenset[str]
    meta_keys: frozenset[str]
    check_all: bool

    @staticmethod
    def of(config: Mapping[str, Any]) -> _FieldCheck:
        return _FieldCheck(frozenset(config.get("messageNames") or ()),
                           frozenset(config.get("metadataNames") or ()),
                           n.flag(config.get("checkAllKeys")) is True)

    def __call__(self, msg: RuleMsg) -> bool:
        data_keys = self.data_keys
        if data_keys:
            data = msg.data
            if not isinstance(data, dict):
                raise NodeFailure("the message data is not a JSON object")
            if self.check_all:
                return data.keys() >= data_keys and msg.metadata.keys() >= self.meta_keys
            return (not data_keys.isdisjoint(data.keys())
                    or not self.meta_keys.isdisjoint(msg.metadata.keys()))
        if self.check_all:
            return msg.metadata.keys() >= self.meta_keys
        return not self.meta_keys.isdisjoint(msg.metadata.keys())
