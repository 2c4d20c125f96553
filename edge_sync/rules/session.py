"""One entity's rule state, as pure logic: its active alarms (the alarm nodes' state) and the open
windows of its deduplication and aggregation nodes, run against a ``RuleEngine`` and kept as one
JSON-able record (msgpack-able) the caller persists. No threads, no I/O, no clock reads: the
caller gives the edge time (``now_ms``, from its injected Clock).

Owns: adding each ``Deferred`` message to its node's window (built lazily from the node's
configuration, found by the node's stable key ``RuleEngine.node_key``), a window's refusal
(``maxPendingMsgs``) reported as ``Failed`` and sent on by the node's ``Failure`` connections
as ThingsBoard does, closing due windows and sending their output on by ``Success``; the seq a
window's idempotency needs (a per-entity counter kept in the record); the record itself
(``Step.record``, None when nothing is left to keep) and whether it changed; a batch of
messages as one Step (``on_messages``), the chain run once for the batch.

A chain swap keeps the windows of the nodes still in the chain (same key, same type; they go on
under the new configuration, keeping their deadlines). A window whose node left the chain (or
changed type) is kept until its deadline and then dropped, counted in ``Step.dropped``: its
output has nowhere to go.

The record: ``{"v": 1, "seq": <last seq given>, "originator": [type, id], "alarms": {type:
alarm JSON}, "windows": [{"node": <key>, "type": <node type>, "windows": <window.py record>}]}``
(windows sorted by node key and type; a node's entry goes when none of its windows is open).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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

RECORD_VERSION = 1
Windows = DedupWindows | AggregateWindows


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
    """clock jumps the windows saw (for the caller to log)"""
    dropped: int
    """closed windows whose node left the chain: their output went nowhere (for the log)"""
    visits: dict[str, int] = field(default_factory=dict)
    """messages each node received, when ``outcomes`` leaves out the ``Visited`` markers
    (``on_messages``); empty otherwise"""


@dataclass
class _Node:
    """One node's windows for this entity: the node's key and type."""

    key: str
    type: str
    windows: Windows

    def to_record(self) -> dict[str, Any]:
        return {"node": self.key, "type": self.type, "windows": self.windows.to_record()}


def _build(node_type: str, config: Any, record: dict[str, Any] | None) -> Windows:
    """A window node's windows from its configuration (validated by the engine), restored from
    ``record`` when given."""
    empty: dict[str, Any] = {"windows": [], "closed_seq": []}
    if node_type == n.AGGREGATE:
        return AggregateWindows.from_record(
            record or empty, int(config["interval"]),
            int(config.get("maxPendingMsgs") or n.AGGREGATE_DEFAULT_PENDING),
            str(config.get("outMsgType") or n.AGGREGATE_DEFAULT_OUT_TYPE))
    out_type = config.get("outMsgType")
    queue = config.get("queueName")
    return DedupWindows.from_record(
        record or empty, str(config["strategy"]), int(config["interval"]),
        int(config.get("maxPendingMsgs") or n.DEDUPLICATION_DEFAULT_PENDING),
        str(out_type) if out_type else None, str(queue) if queue else None)


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
        self._nodes: dict[str, _Node] = {}  # node key -> windows of a node in the chain
        self._orphans: list[_Node] = []  # windows of nodes no longer in it (or of another type)
        self._engine: RuleEngine | None = None
        self._last = record
        if record is not None:
            if record.get("v") != RECORD_VERSION:
                raise ValueError(f"rule state record version {record.get('v')!r}: expected "
                                 f"{RECORD_VERSION}")
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

    def next_deadline(self) -> int | None:
        """The earliest deadline of this entity's open windows (ms); None when none is open."""
        deadlines = [d for d in (x.windows.next_deadline() for x in self._bound())
                     if d is not None]
        deadlines += [w["deadline"] for r in self._raw for w in r["windows"]["windows"]]
        return min(deadlines, default=None)

    def on_message(self, engine: RuleEngine, msg: RuleMsg, now_ms: int) -> Step:
        """Windows already due at ``now_ms`` close first; then ``msg`` runs through the chain,
        each ``Deferred`` going to its node's window (a refused one goes on by Failure)."""
        self._bind(engine)
        self._originator = msg.originator
        out: list[Outcome] = []
        jumps: list[ClockJump] = []
        dropped = self._close_due(engine, now_ms, out, jumps)
        for outcome in engine.run(msg, self._alarms):
            out.append(outcome)
            if isinstance(outcome, Deferred):
                self._defer(engine, outcome, now_ms, out, jumps)
        return self._step(out, jumps, dropped)

    def on_messages(self, engine: RuleEngine, msgs: Sequence[RuleMsg], now_ms: int) -> Step:
        """``on_message`` for each of ``msgs`` in turn, as one Step: the outcomes of every call
        in order, the ``Visited`` markers left out and counted in ``visits``, the last call's
        record, ``changed`` when any call's record differed from the one before, the jumps of
        every call, ``dropped`` summed. The chain runs once for all the messages
        (``RuleEngine.run_many``), then each message's windows work is done in turn as
        ``on_message`` does it (due windows closed first, its deferred messages added); a chain
        with alarm nodes (alarms shared in message order) calls ``on_message`` for each. No
        messages: nothing done, an empty Step with the last record, unchanged."""
        if not msgs:
            return Step((), self._last, False, (), 0)
        visits: dict[str, int] = {}
        if engine.has_alarm_nodes:
            steps = [self.on_message(engine, msg, now_ms) for msg in msgs]
            outcomes = count_visits([o for step in steps for o in step.outcomes], visits)
            return Step(tuple(outcomes), steps[-1].record, any(step.changed for step in steps),
                        tuple(j for step in steps for j in step.jumps),
                        sum(step.dropped for step in steps), visits)
        self._bind(engine)
        runs = engine.run_many(msgs, self._alarms, visits)
        out: list[Outcome] = []
        jumps: list[ClockJump] = []
        dropped = 0
        changed = False
        last = self._last
        resumed = False  # a window closed or refused: its walk's outcomes carry Visited markers
        for msg, outcomes in zip(msgs, runs, strict=True):
            self._originator = msg.originator
            if not engine.has_window_nodes and not self._orphans:
                out.extend(outcomes)  # no window to close or feed: the outcomes as they are
            else:
                resumed = True
                dropped += self._close_due(engine, now_ms, out, jumps)
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
                          visits)

    def on_due(self, engine: RuleEngine, now_ms: int) -> Step:
        """Close the windows due at ``now_ms``; each output goes on by its node's Success."""
        self._bind(engine)
        out: list[Outcome] = []
        jumps: list[ClockJump] = []
        dropped = self._close_due(engine, now_ms, out, jumps)
        return self._step(out, jumps, dropped)

    def _bind(self, engine: RuleEngine) -> None:
        """Attach the windows to ``engine``'s nodes (again after a chain swap)."""
        if engine is self._engine:
            return
        self._raw.extend(x.to_record() for x in self._bound())
        self._nodes, self._orphans = {}, []
        for raw in self._raw:
            key, kind = str(raw["node"]), str(raw["type"])
            index = engine.node_index(key)
            rule_node = None if index is None else engine.meta.nodes[index]
            if rule_node is not None and rule_node.type == kind and key not in self._nodes:
                self._nodes[key] = _Node(key, kind, _build(kind, rule_node.configuration,
                                                           raw["windows"]))
            else:
                self._orphans.append(_Node(key, kind, _build(kind, _ORPHAN_CONFIG[kind],
                                                             raw["windows"])))
        self._raw = []
        self._engine = engine

    def _bound(self) -> list[_Node]:
        return [*self._nodes.values(), *self._orphans]

    def _defer(self, engine: RuleEngine, deferred: Deferred, now_ms: int, out: list[Outcome],
               jumps: list[ClockJump]) -> None:
        key = engine.node_key(deferred.node_index)
        node = self._nodes.get(key)
        if node is None:
            rule_node = engine.meta.nodes[deferred.node_index]
            node = _Node(key, rule_node.type, _build(rule_node.type, rule_node.configuration,
                                                     None))
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
                   jumps: list[ClockJump]) -> int:
        if not self._nodes and not self._orphans:
            return 0  # no window open (the per-message case of a chain without windows)
        closed: list[tuple[str, Closed]] = []
        dropped = 0
        for orphan in self._orphans:
            result = orphan.windows.due(now_ms, whole=True)  # dropped whole, pending packs too
            jumps.extend(result.jumps)
            dropped += len(result.closed)
        for key, node in sorted(self._nodes.items()):
            result = node.windows.due(now_ms)
            jumps.extend(result.jumps)
            closed.extend((key, c) for c in result.closed)
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
        return dropped

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

    def _step(self, out: list[Outcome], jumps: list[ClockJump], dropped: int,
              changed: bool = False, visits: dict[str, int] | None = None) -> Step:
        """The Step of a call; ``changed`` given: an earlier record of the call already
        differed."""
        record = self._record()
        changed = changed or record != self._last
        self._last = record
        return Step(tuple(out), record, changed, tuple(jumps), dropped,
                    {} if visits is None else visits)
