"""One entity's rule state, as pure logic: its active alarms (the alarm nodes' state) and the open
windows of its deduplication and aggregation nodes, run against a ``RuleEngine`` and kept as one
JSON-able record (msgpack-able) the caller persists. No threads, no I/O, no clock reads: the
caller gives the edge time (``now_ms``, from its injected Clock).

Owns: adding each ``Deferred`` message to its node's window (built lazily from the node's
configuration, found by the node's stable key ``RuleEngine.node_key``: its type, name and
place among the nodes of that type and name), a window's refusal
(``maxPendingMsgs``) reported as ``Failed`` and sent on by the node's ``Failure`` connections
as ThingsBoard does, closing due windows and sending their output on by ``Success``; the seq a
window's idempotency needs (a per-entity counter kept in the record); the record itself
(``Step.record``, None when nothing is left to keep) and whether it changed; a batch of
messages as one Step (``on_messages``), the chain run once for the batch.

A chain swap keeps the windows of the nodes still in the chain: same key (type and name), so
a node renumbered by an edit, or given a new id by the cloud, keeps its windows. They go on
under the new configuration whatever changed in it (interval, strategy, outMsgType,
maxPendingMsgs), keeping their deadlines: a deduplication window holds the messages themselves
and an aggregation window a count, sum, min and max per key, both meaningful under any
configuration of the node; the new one applies from their wake-up. A window whose node left
the chain (an orphan) is reported when the chain is bound (``bind``: ``Orphaned``, for the
caller to warn while the operator can still put the node back), kept until its deadline and
then dropped whole, reported in ``Step.dropped`` per node with the messages it held: its
output has nowhere to go. A chain that brings the node back before the deadline takes the
window again.

The record: ``{"v": 2, "seq": <last seq given>, "originator": [type, id], "alarms": {type:
alarm JSON}, "windows": [{"node": <key>, "type": <node type>, "windows": <window.py record>}]}``
(windows sorted by node key and type; a node's entry goes when none of its windows is open).
A record of version 1 (an earlier edge version) keyed a node's windows by ``#<index>`` (a file
chain) or the node's id (a cloud chain): it loads as it is and, at its first ``bind``, each
such key is read in the chain bound then (the chain in force when it is loaded, the one it was
written under unless that changed while the agent was down): the node at that index or of that
id, when of the same type, gives its key; else the windows are orphans. It is written back as
version 2 the next time the entity's state is saved.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_sync.rules import nodes as n
from edge_sync.rules.engine import (
    FAILURE,
    SUCCESS,
    Alarms,
    Deferred,
    Failed,
    Outcome,
    RuleEngine,
    count_visits,
    describe_key,
    window_node_name,
)
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.window import (
    Added,
    AggregateWindows,
    ClockJump,
    Closed,
    DedupWindows,
    Msg,
)

RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1: windows keyed by ``#<index>`` or node id (mapped at the first ``bind``)."""
Windows = DedupWindows | AggregateWindows


@dataclass(frozen=True)
class Orphaned:
    """Open windows of a node not in the chain just bound: dropped at their deadline unless
    a chain with the node goes in force before."""

    node: str
    """how the node is named (``engine.describe_key``: its name and type, or an old key)"""
    windows: int
    messages: int
    """the messages they hold (acknowledged to their devices)"""
    deadline: int
    """when the first of them is dropped (ms, edge time)"""


@dataclass(frozen=True)
class Dropped:
    """Windows of a node not in the chain in force, dropped at their deadline."""

    node: str
    """as in ``Orphaned``"""
    windows: int
    messages: int


@dataclass(frozen=True)
class WindowClosed:
    """A window of a node in the chain woke at its deadline (or later) and sent its output on:
    for the caller's DEBUG line."""

    node: str
    """as log lines name a window node (``engine.window_node_name``)"""
    originator: str
    messages: int
    """the messages its outputs stand for"""
    outputs: int
    deadline: int
    """the time it was due (ms, edge time)"""
    late_ms: int
    """how long after its deadline it woke"""
    kept: int
    """messages it keeps for a later deduplication pack (0: it closed)"""


@dataclass(frozen=True)
class Step:
    """What one call decided."""

    outcomes: tuple[Outcome, ...]
    """in order: closed windows' outputs due before the message first, then the message's"""
    record: dict[str, Any] | None
    """the entity's whole rule state to persist (JSON-able); None: delete the record"""
    changed: bool
    """whether ``record`` differs from the last one (persist only then)"""
    jumps: tuple[ClockJump, ...]
    """clock jumps the windows saw (for the caller to log); ``key[0]`` names the node as log
    lines do (``nodes[0] 'dedup all 20s' (TbMsgDeduplicationNode)``), not by its key"""
    dropped: tuple[Dropped, ...]
    """windows whose node left the chain, closed now: their output went nowhere (per node,
    for the log and the count of messages lost)"""
    visits: dict[str, int] = field(default_factory=dict)
    """messages each node received, when ``outcomes`` leaves out the ``Visited`` markers
    (``on_messages``); empty otherwise"""
    closed: tuple[WindowClosed, ...] = ()
    """windows of nodes in the chain that woke and sent their output on, in the order they
    did (for the caller's DEBUG line; the output is in ``outcomes``)"""


@dataclass
class _Node:
    """One node's windows for this entity: the node's key and type, how log lines name it
    (``window_node_name``: with its index in the chain bound, else ``describe_key``) and how
    the status counts it (its ``describe()`` in the chain bound, as the per-node counts and
    metrics do; else the label)."""

    key: str
    type: str
    windows: Windows
    label: str
    counted: str = ""

    def __post_init__(self) -> None:
        self.counted = self.counted or self.label

    def to_record(self) -> dict[str, Any]:
        return {"node": self.key, "type": self.type, "windows": self.windows.to_record()}


def _build(node_type: str, config: Any, record: dict[str, Any] | None) -> Windows:
    """A window node's windows from its configuration (validated by the engine), restored from
    ``record`` when given."""
    empty: dict[str, Any] = {"windows": [], "closed_seq": []}
    if node_type == n.AGGREGATE:
        return AggregateWindows.from_record(
            record or empty, n.read_int(config["interval"]),
            n.read_int(config.get("maxPendingMsgs")) or n.AGGREGATE_DEFAULT_PENDING,
            str(config.get("outMsgType") or n.AGGREGATE_DEFAULT_OUT_TYPE))
    out_type = config.get("outMsgType")
    queue = config.get("queueName")
    return DedupWindows.from_record(
        record or empty, str(config["strategy"]), n.read_int(config["interval"]),
        n.read_int(config.get("maxPendingMsgs")) or n.DEDUPLICATION_DEFAULT_PENDING,
        str(out_type) if out_type else None, str(queue) if queue else None)


def _mapped(engine: RuleEngine, raw: dict[str, Any]) -> dict[str, Any]:
    """A version 1 record's node entry with its key mapped through ``engine``'s chain: the
    node at index ``#<index>``, else the node of that id, when it is of the entry's type, gives
    its ``node_key``, set in the window records too; else the entry as it is (an orphan: no
    node key of this version looks like an old one)."""
    key, kind = str(raw["node"]), str(raw["type"])
    index: int | None = None
    if key.startswith("#") and key[1:].isdigit():
        index = int(key[1:])
    else:
        index = next((node.index for node in engine.meta.nodes if node.id == key), None)
    if index is None or index >= len(engine.meta.nodes) or engine.meta.nodes[index].type != kind:
        return raw
    new = engine.node_key(index)
    windows = raw["windows"]
    return {**raw, "node": new, "windows": {
        **windows,
        "windows": [{**w, "node": new} for w in windows["windows"]],
        "closed_seq": [[new, originator, seq] for _, originator, seq in windows["closed_seq"]]}}


def _woken(label: str, closed: Sequence[Closed]) -> list[WindowClosed]:
    """One ``WindowClosed`` per window woken among ``closed`` (one node's: a deduplication
    window's packs together), in their order."""
    by_window: dict[tuple[str, str], list[Closed]] = {}
    for c in closed:
        by_window.setdefault(c.key, []).append(c)
    return [WindowClosed(label, key[1], sum(c.count for c in cs), len(cs), cs[0].due,
                         cs[0].closed - cs[0].due, cs[0].kept)
            for key, cs in by_window.items()]


def _named(jump: ClockJump, label: str) -> ClockJump:
    """A window's clock jump with the node named as log lines name it, not by its key."""
    return ClockJump((label, jump.key[1]), jump.direction, jump.by_ms)


_ORPHAN_CONFIG: dict[str, dict[str, Any]] = {
    n.AGGREGATE: {"interval": 1},
    n.DEDUPLICATION: {"interval": 1, "strategy": "FIRST"},
}
"""Enough configuration to keep an orphan's windows until their deadline (then dropped)."""


class EntityRules:
    """One entity's alarms and windows (the module docstring gives the rules)."""

    def __init__(self, record: dict[str, Any] | None = None) -> None:
        self._seq = 0
        self._originator: Originator | None = None
        self._alarms: Alarms = {}
        self._raw: list[dict[str, Any]] = []  # {"node", "type", "windows"}: not bound yet
        self._legacy = False  # _raw is of a version 1 record: keys mapped at the first bind
        self._nodes: dict[str, _Node] = {}  # node key -> windows of a node in the chain
        self._orphans: list[_Node] = []  # windows of nodes no longer in it (or of another type)
        self._engine: RuleEngine | None = None
        self._last = record
        if record is not None:
            if record.get("v") not in READABLE_VERSIONS:
                raise ValueError(f"rule state record version {record.get('v')!r}: expected "
                                 f"one of {', '.join(map(str, READABLE_VERSIONS))}")
            self._legacy = record["v"] == 1
            self._seq = int(record["seq"])
            if record.get("originator") is not None:
                kind, ident = record["originator"]
                self._originator = Originator(str(kind), str(ident))
            self._alarms = {str(k): dict(v) for k, v in record["alarms"].items()}
            self._raw = [dict(r) for r in record["windows"]]

    @property
    def alarms(self) -> Alarms:
        """Active alarms by type (read-only use)."""
        return self._alarms

    @property
    def open_windows(self) -> int:
        return (sum(len(x.windows.open_keys()) for x in self._bound())
                + sum(len(r["windows"]["windows"]) for r in self._raw))

    @property
    def held_messages(self) -> int:
        """The messages the open windows hold (taken and not yet sent)."""
        return (sum(x.windows.held() for x in self._bound())
                + sum(int(w["count"]) for r in self._raw for w in r["windows"]["windows"]))

    def due_windows(self, now_ms: int) -> tuple[int, int]:
        """(open windows due at ``now_ms``, the messages they hold)."""
        due = [w["count"] for r in self._raw for w in r["windows"]["windows"]
               if now_ms >= w["deadline"]]
        windows, messages = len(due), sum(due)
        for x in self._bound():
            more, held = x.windows.due_count(now_ms)
            windows, messages = windows + more, messages + held
        return windows, messages

    def window_counts(self) -> dict[str, tuple[int, int]]:
        """Per node with open windows, (open windows, messages they hold), by how the status
        names it (bound: its ``describe()`` in the chain, as its counts; an orphan:
        ``describe_key`` and `` (not in the chain)``; not bound yet: ``describe_key``)."""
        out: dict[str, tuple[int, int]] = {}
        for x in self._nodes.values():
            out[x.counted] = (len(x.windows.open_keys()), x.windows.held())
        for x in self._orphans:
            label = f"{x.label} (not in the chain)"
            windows, held = out.get(label, (0, 0))
            out[label] = (windows + len(x.windows.open_keys()), held + x.windows.held())
        for r in self._raw:
            label = describe_key(str(r["node"]), str(r["type"]))
            windows, held = out.get(label, (0, 0))
            out[label] = (windows + len(r["windows"]["windows"]),
                          held + sum(w["count"] for w in r["windows"]["windows"]))
        return out

    def next_deadline(self) -> int | None:
        """The earliest deadline of this entity's open windows (ms); None when none is open."""
        deadlines = [d for d in (x.windows.next_deadline() for x in self._bound())
                     if d is not None]
        deadlines += [w["deadline"] for r in self._raw for w in r["windows"]["windows"]]
        return min(deadlines, default=None)

    def on_message(self, engine: RuleEngine, msg: RuleMsg, now_ms: int) -> Step:
        """Windows already due at ``now_ms`` close first; then ``msg`` runs through the chain,
        each ``Deferred`` going to its node's window (a refused one goes on by Failure)."""
        return self._walked(engine, msg, now_ms, lambda: engine.run(msg, self._alarms))

    def on_messages(self, engine: RuleEngine, msgs: Sequence[RuleMsg], now_ms: int) -> Step:
        """``on_message`` for each of ``msgs`` in turn, as one Step: the outcomes of every call
        in order, the ``Visited`` markers left out and counted in ``visits``, the last call's
        record, ``changed`` when any call's record differed from the one before, the jumps of
        every call, ``dropped`` of every call. The chain runs once for all the messages
        (``RuleEngine.run_many``), then each message's windows work is done in turn as
        ``on_message`` does it (due windows closed first, its deferred messages added); a chain
        with alarm nodes (alarms shared in message order) calls ``on_message`` for each. No
        messages: nothing done, an empty Step with the last record, unchanged."""
        if not msgs:
            return Step((), self._last, False, (), ())
        visits: dict[str, int] = {}
        if engine.has_alarm_nodes:
            steps = [self.on_message(engine, msg, now_ms) for msg in msgs]
            outcomes = count_visits([o for step in steps for o in step.outcomes], visits)
            return Step(tuple(outcomes), steps[-1].record, any(step.changed for step in steps),
                        tuple(j for step in steps for j in step.jumps),
                        tuple(d for step in steps for d in step.dropped), visits,
                        tuple(c for step in steps for c in step.closed))
        self._bind(engine)
        runs = engine.run_many(msgs, self._alarms, visits)
        out: list[Outcome] = []
        jumps: list[ClockJump] = []
        closes: list[WindowClosed] = []
        dropped: list[Dropped] = []
        changed = False
        last = self._last
        resumed = False  # a window closed or refused: its walk's outcomes carry Visited markers
        for msg, outcomes in zip(msgs, runs, strict=True):
            self._originator = msg.originator
            if not engine.has_window_nodes and not self._orphans:
                out.extend(outcomes)  # no window to close or feed: the outcomes as they are
            else:
                resumed = True
                dropped += self._close_due(engine, now_ms, out, jumps, closes)
                for outcome in outcomes:
                    out.append(outcome)
                    if isinstance(outcome, Deferred):
                        self._defer(engine, outcome, now_ms, out, jumps)
            if changed:
                self._forget_seq()  # as on_message's record does
            else:
                record = self._record()
                changed = record != last
                last = record
        return self._step(count_visits(out, visits) if resumed else out, jumps, dropped, changed,
                          visits, closes)

    def on_resumed(self, engine: RuleEngine, node_index: int, relation: str, msg: RuleMsg,
                   now_ms: int) -> Step:
        """``on_message`` for a message that goes on from ``node_index``'s connections of
        ``relation`` (a finished RPC request's answer, by its node) instead of from the first
        node."""
        return self._walked(engine, msg, now_ms,
                            lambda: engine.resume(node_index, relation, msg, self._alarms))

    def _walked(self, engine: RuleEngine, msg: RuleMsg, now_ms: int,
                walk: Callable[[], list[Outcome]]) -> Step:
        """Windows due at ``now_ms`` close, then ``walk`` (``msg``'s run, once they have),
        each ``Deferred`` going to its node's window."""
        self._bind(engine)
        self._originator = msg.originator
        out: list[Outcome] = []
        jumps: list[ClockJump] = []
        closes: list[WindowClosed] = []
        dropped = self._close_due(engine, now_ms, out, jumps, closes)
        for outcome in walk():
            out.append(outcome)
            if isinstance(outcome, Deferred):
                self._defer(engine, outcome, now_ms, out, jumps)
        return self._step(out, jumps, dropped, closes=closes)

    def on_due(self, engine: RuleEngine, now_ms: int) -> Step:
        """Close the windows due at ``now_ms``; each output goes on by its node's Success."""
        self._bind(engine)
        out: list[Outcome] = []
        jumps: list[ClockJump] = []
        closes: list[WindowClosed] = []
        dropped = self._close_due(engine, now_ms, out, jumps, closes)
        return self._step(out, jumps, dropped, closes=closes)

    def bind(self, engine: RuleEngine) -> tuple[Orphaned, ...]:
        """Attach the windows to ``engine``'s nodes (again after a chain swap; nothing to do for
        the engine bound already): each node's windows go to the node of the same key, those
        of a node not in the chain are orphans, reported here (per node: windows, messages,
        the first deadline). A version 1 record's keys are mapped through this chain first."""
        if engine is self._engine:
            return ()
        self._raw.extend(x.to_record() for x in self._bound())
        if self._legacy:
            self._raw = [_mapped(engine, raw) for raw in self._raw]
            self._legacy = False
        self._nodes, self._orphans = {}, []
        for raw in self._raw:
            key, kind = str(raw["node"]), str(raw["type"])
            index = engine.node_index(key)
            rule_node = None if index is None else engine.meta.nodes[index]
            if rule_node is not None and rule_node.type == kind and key not in self._nodes:
                self._nodes[key] = _Node(key, kind, _build(kind, rule_node.configuration,
                                                           raw["windows"]),
                                         window_node_name(kind, rule_node.name, rule_node.index),
                                         rule_node.describe())
            else:
                self._orphans.append(_Node(key, kind, _build(kind, _ORPHAN_CONFIG[kind],
                                                             raw["windows"]),
                                           describe_key(key, kind)))
        self._raw = []
        self._engine = engine
        orphaned: dict[str, list[int]] = {}
        for x in self._orphans:
            deadline = x.windows.next_deadline()
            if deadline is None:
                continue
            seen = orphaned.setdefault(x.label, [0, 0, deadline])
            seen[0] += len(x.windows.open_keys())
            seen[1] += x.windows.held()
            seen[2] = min(seen[2], deadline)
        return tuple(Orphaned(label, *counts) for label, counts in orphaned.items())

    def _bind(self, engine: RuleEngine) -> None:
        self.bind(engine)

    def _bound(self) -> list[_Node]:
        return [*self._nodes.values(), *self._orphans]

    def _defer(self, engine: RuleEngine, deferred: Deferred, now_ms: int, out: list[Outcome],
               jumps: list[ClockJump]) -> None:
        key = engine.node_key(deferred.node_index)
        node = self._nodes.get(key)
        if node is None:
            rule_node = engine.meta.nodes[deferred.node_index]
            node = _Node(key, rule_node.type, _build(rule_node.type, rule_node.configuration,
                                                     None),
                         window_node_name(rule_node.type, rule_node.name, rule_node.index),
                         rule_node.describe())
            self._nodes[key] = node
        msg = deferred.msg
        self._seq += 1
        ts = msg.metadata.get("ts")
        added = node.windows.add(key, msg.originator.id, Msg(
            self._seq, int(ts) if ts and ts.isdigit() else msg.ts, msg.type,
            json.dumps(msg.data), dict(msg.metadata)), now_ms)
        if added.jump is not None:
            jumps.append(added.jump)
        if added.added is Added.OVERFLOW:
            out.append(Failed(deferred.node, "max limit of pending messages reached "
                                             f"(maxPendingMsgs {node.windows.max_pending})"))
            out.extend(engine.resume(deferred.node_index, FAILURE, msg, self._alarms))

    def _close_due(self, engine: RuleEngine, now_ms: int, out: list[Outcome],
                   jumps: list[ClockJump], closes: list[WindowClosed]) -> list[Dropped]:
        if not self._nodes and not self._orphans:
            return []  # no window open (the per-message case of a chain without windows)
        closed: list[tuple[str, Closed]] = []
        dropped: dict[str, list[int]] = {}
        for orphan in self._orphans:
            result = orphan.windows.due(now_ms, whole=True)  # dropped whole, pending packs too
            jumps.extend(_named(j, orphan.label) for j in result.jumps)
            if result.closed:
                counts = dropped.setdefault(orphan.label, [0, 0])
                counts[0] += len(result.closed)
                counts[1] += sum(c.count for c in result.closed)
        for key, node in sorted(self._nodes.items()):
            result = node.windows.due(now_ms)
            jumps.extend(_named(j, node.label) for j in result.jumps)
            if result.closed:
                closed.extend((key, c) for c in result.closed)
                closes.extend(_woken(node.label, result.closed))
        for key, c in sorted(closed, key=lambda kc: (kc[1].opened, kc[0])):
            index = engine.node_index(key)
            assert index is not None  # bound to this engine's nodes
            output = c.output
            origin = self._originator or Originator("DEVICE", output.originator)
            msg = RuleMsg(output.type, origin, json.loads(output.data), output.metadata,
                          output.ts)
            out.extend(engine.resume(index, SUCCESS, msg, self._alarms))
        # nothing open: the seq counter alone guards what comes next
        self._nodes = {k: x for k, x in self._nodes.items() if x.windows.open_keys()}
        self._orphans = [x for x in self._orphans if x.windows.open_keys()]
        return [Dropped(label, windows, messages)
                for label, (windows, messages) in dropped.items()]

    def _forget_seq(self) -> bool:
        """Nothing left to keep: the seq counter restarts (what ``_record`` does then);
        whether it was so."""
        if self._nodes or self._orphans or self._raw or self._alarms:
            return False
        self._seq = 0
        return True

    def _record(self) -> dict[str, Any] | None:
        if self._forget_seq():
            return None
        windows = sorted([*(x.to_record() for x in self._bound()), *self._raw],
                         key=lambda r: (r["node"], r["type"]))
        return {
            "v": RECORD_VERSION,
            "seq": self._seq,
            "originator": (None if self._originator is None else
                           [self._originator.entity_type, self._originator.id]),
            "alarms": {k: dict(v) for k, v in sorted(self._alarms.items())},
            "windows": windows,
        }

    def _step(self, out: list[Outcome], jumps: list[ClockJump], dropped: list[Dropped],
              changed: bool = False, visits: dict[str, int] | None = None,
              closes: list[WindowClosed] | None = None) -> Step:
        """The Step of a call; ``changed`` given: an earlier record of the call already
        differed."""
        record = self._record()
        changed = changed or record != self._last
        self._last = record
        return Step(tuple(out), record, changed, tuple(jumps), tuple(dropped),
                    {} if visits is None else visits, tuple(closes) if closes else ())
