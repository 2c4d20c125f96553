"""Per-originator time windows for rule nodes, as pure logic (no threads, no clock reads): the
deduplication node's windows (ThingsBoard's ``TbMsgDeduplicationNode``: FIRST, LAST, ALL) and
the edge's own aggregation (``edge_sync.rules.AggregateNode``: min / max / avg / sum / count per
numeric key). This module owns the windows' state, their closing, their JSON-able records
(crash safety), the idempotency by seq and the handling of edge clock jumps. One entity's
windows are driven by ``session.py`` (which builds them from the nodes' configurations); the
agent reaches them through it.

Rules:

- A window is keyed by ``(node key, originator)``. It opens when its first message is added, at
  the edge's time ``now`` (ms, read by the caller from its injected Clock), and wakes when
  ``now >= deadline``, ``deadline = opened + interval``. ``due(now)`` wakes every due window
  once: an aggregation window closes with one output and is removed; a deduplication window
  sends what is due (below) and is removed when it keeps nothing. The next message for a
  removed key opens a new window.
- Deduplication splits by message ts, as ThingsBoard's
  ``TbMsgDeduplicationNode.processDeduplication`` / ``findValidPack`` do: at a wake-up, while
  the pending messages' smallest ts ``minTs`` gives a pack ``[minTs, minTs + interval)`` whose
  end is at or before ``now`` (the edge's clock), that pack's messages leave and make one
  output; packs go out in ts order. The rest stay pending and the window wakes again when the
  earliest of them is due (``minTs + interval``), or ``interval`` after a message added
  meanwhile if sooner (ThingsBoard looks again every interval while messages are pending). The
  first wake-up, ``interval`` after the first arrival, gives a backlog that long to arrive.
- Deduplication output per pack: FIRST is the message with the smallest ``ts``, LAST the one
  with the largest (ties: the earliest arrival, as its strict comparisons do); ALL is one
  message of type ``outMsgType``, metadata ``{"ts": <wake-up time>}``, data a JSON array of
  ``{"msg": <data>, "metadata": <metadata>}`` in arrival order.
- An output's stamp (ALL and aggregation: metadata ``ts`` and the message's ts) is the time
  the window was due to wake (its deadline), not the time it did: the same on time (the
  caller's timer wakes it then), and, when it wakes late (the agent was down at its deadline
  and closes it at start, or the clock jumped forward), still the time its data belongs to.
  ThingsBoard's ALL stamps the time its node processes the pack, which is its wake-up
  (``TbMsgDeduplicationNode.getMetadata``); it keeps no window across a restart.
- ``maxPendingMsgs`` bounds a window's pending messages (kept and not yet sent, as
  ThingsBoard's ``size() < maxPendingMsgs``): a message over it is not kept, the add returns
  ``OVERFLOW`` (ThingsBoard sends it to Failure: the caller does) and the wake-up's first output
  reports how many overflowed since the last one.
- Idempotency: each message carries a ``seq``, increasing per key (the session's own
  per-entity counter). A seq not above the last one the key's open window took (kept or
  overflowed), or not above the last of the key's closed windows, is a ``DUPLICATE`` and changes
  nothing: a state restored from its record plus a replay of the same seqs gives the same
  output. A window keeps only its ``last_seq``, so its record stays small whatever its size.
- Clock jumps (reported in ``DueResult.jumps``/``AddResult.jump`` for the caller to log):
  * backward (``now`` below the latest time a window saw): the window keeps the time it had left
    to its wake-up, on the new clock: ``deadline = now + (deadline - last_seen)``. It is never
    woken early nor reopened. A deduplication pack still goes out only once its end is at or
    before ``now``: messages whose ts came from the old clock may wait until the new one passes
    their pack's end (bounded by ``maxPendingMsgs``).
  * forward past at least one more whole interval (``now >= deadline + interval``): the window
    wakes once (aggregation: one output; deduplication: one output per pack now due); the
    skipped intervals produce nothing.
- ``due(now, whole=True)`` closes each due window with one output for all it holds, pending
  packs included: for a window whose node left the chain, dropped by the caller.
- The record's shape does not depend on the split: a deduplication window saved by an edge
  version that sent one output per window loads unchanged and splits at its wake-up.
- Aggregation keeps a running summary, not the messages (its record stays the same size
  whatever the window holds), so its window is the arrival window: everything added before the
  close is in the one output, whatever the messages' ts.
- Aggregation output: one telemetry-shaped message of type ``outMsgType`` (default
  ``POST_TELEMETRY_REQUEST``), flat so ThingsBoard stores it as timeseries: data
  ``{"<key>_min", "<key>_max", "<key>_avg", "<key>_sum", "<key>_count"}`` for every numeric key
  (keys sorted), metadata ``{"ts": <due close time>, "msgCount": <messages kept>}``.
- Aggregation numbers: a numeric value is a JSON int or float (not a bool) of a top-level key of
  the message's data object; other values are ignored. ``sum`` adds in arrival order with Python
  arithmetic (ints stay exact ints, a float makes it an IEEE double: no other rounding),
  ``avg = sum / count`` (true division, a float), ``min``/``max`` are the values as given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar

from edge_sync.rules.nodes import AGGREGATE, AGGREGATE_DEFAULT_OUT_TYPE, AGGREGATE_DEFAULT_PENDING

AGGREGATE_NODE_TYPE = AGGREGATE
STRATEGIES = ("FIRST", "LAST", "ALL")
MAX_DEADLINE = 2**63 - 1
"""A deadline from a message's ts is kept within a signed 64-bit integer (the record is
msgpack)."""

Key = tuple[str, str]
"""(the node's key, ``RuleEngine.node_key``; originator id)."""


@dataclass(frozen=True)
class Msg:
    seq: int
    """the idempotency key, increasing per window key"""
    ts: int
    type: str
    data: str
    """JSON text, as TbMsg data"""
    metadata: dict[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "type": self.type, "data": self.data,
                "metadata": dict(self.metadata)}

    @staticmethod
    def from_record(r: dict[str, Any]) -> Msg:
        return Msg(r["seq"], r["ts"], r["type"], r["data"], dict(r["metadata"]))


@dataclass(frozen=True)
class OutMsg:
    """A window's output (one per deduplication pack); ``ts``: the picked message's ts
    (FIRST/LAST), else the time the window was due to wake (its deadline)."""

    originator: str
    type: str
    data: str
    metadata: dict[str, str]
    queue_name: str | None = None
    ts: int = 0


class Added(Enum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    OVERFLOW = "overflow"


@dataclass(frozen=True)
class ClockJump:
    key: Key
    direction: str
    """"backward" or "forward"."""
    by_ms: int


@dataclass(frozen=True)
class AddResult:
    added: Added
    jump: ClockJump | None = None


@dataclass(frozen=True)
class Closed:
    """One output of a wake-up (a deduplication wake-up may send several packs)."""

    key: Key
    output: OutMsg
    count: int
    overflow: int
    opened: int
    closed: int
    """the wake-up's time (``now``)"""
    due: int = 0
    """the deadline the window woke for (``closed - due``: how late it woke)"""
    kept: int = 0
    """messages the window keeps after the wake-up (a later deduplication pack); 0: closed"""


@dataclass(frozen=True)
class DueResult:
    closed: list[Closed]
    jumps: list[ClockJump]


S = TypeVar("S")
Released = tuple[list[tuple[OutMsg, int]], int, int | None]
"""A wake-up's outputs (each with how many messages it stands for), how many messages the
window keeps, and when it is due again (None: it closes)."""


@dataclass
class _Window(Generic[S]):
    opened: int
    deadline: int
    last_seen: int
    state: S
    count: int = 0
    overflow: int = 0
    last_seq: int = -1


class _Windows(Generic[S]):
    """The shared core: opening, idempotency, bounds, clock jumps, closing, records."""

    def __init__(self, interval_s: int, max_pending: int) -> None:
        if interval_s < 1 or max_pending < 1:
            raise ValueError("interval_s and max_pending must be >= 1")
        self.interval_ms = interval_s * 1000
        self.max_pending = max_pending
        self._open: dict[Key, _Window[S]] = {}
        self._closed_seq: dict[Key, int] = {}

    def _new_state(self) -> S:
        raise NotImplementedError

    def _add_to(self, state: S, msg: Msg) -> None:
        raise NotImplementedError

    def _output(self, key: Key, state: S, count: int, due: int) -> OutMsg:
        """The output of ``count`` messages; ``due``: when the window was due to wake."""
        raise NotImplementedError

    def _state_record(self, state: S) -> Any:
        raise NotImplementedError

    def _state_from(self, record: Any) -> S:
        raise NotImplementedError

    def open_keys(self) -> list[Key]:
        return sorted(self._open)

    def next_deadline(self) -> int | None:
        """The earliest deadline of the open windows (ms, edge time); None when none is open."""
        return min((w.deadline for w in self._open.values()), default=None)

    def held(self) -> int:
        """How many messages the open windows hold (taken and not yet sent)."""
        return sum(w.count for w in self._open.values())

    def due_count(self, now: int) -> tuple[int, int]:
        """(windows due at ``now``, the messages they hold)."""
        due = [w.count for w in self._open.values() if now >= w.deadline]
        return len(due), sum(due)

    def _observe(self, key: Key, w: _Window[S], now: int) -> ClockJump | None:
        if now < w.last_seen:
            by = w.last_seen - now
            w.deadline = now + (w.deadline - w.last_seen)
            w.last_seen = now
            return ClockJump(key, "backward", by)
        w.last_seen = now
        return None

    def add(self, node: str, originator: str, msg: Msg, now: int) -> AddResult:
        key = (node, originator)
        if msg.seq <= self._closed_seq.get(key, -1):
            return AddResult(Added.DUPLICATE)
        w = self._open.get(key)
        jump = None
        if w is None:
            w = _Window(now, now + self.interval_ms, now, self._new_state())
            self._open[key] = w
        else:
            jump = self._observe(key, w, now)
        if msg.seq <= w.last_seq:
            return AddResult(Added.DUPLICATE, jump)
        w.last_seq = msg.seq
        if w.count >= self.max_pending:
            w.overflow += 1
            return AddResult(Added.OVERFLOW, jump)
        w.count += 1
        # a window waiting for a later pack looks at a new message interval after its arrival
        # at the latest (a no-op otherwise: the deadline is within an interval of now)
        w.deadline = min(w.deadline, now + self.interval_ms)
        self._add_to(w.state, msg)
        return AddResult(Added.ADDED, jump)

    def due(self, now: int, *, whole: bool = False) -> DueResult:
        """Wake the windows due at ``now``; ``whole``: each closes with one output for all it
        holds, pending packs included (a window whose node left the chain, to be dropped)."""
        closed: list[Closed] = []
        jumps: list[ClockJump] = []
        release = self._release_whole if whole else self._release
        for key in sorted(self._open):
            w = self._open[key]
            jump = self._observe(key, w, now)
            if jump is not None:
                jumps.append(jump)
            if now < w.deadline:
                continue
            if now >= w.deadline + self.interval_ms:
                jumps.append(ClockJump(key, "forward", now - w.deadline))
            due_at = w.deadline
            released, left, deadline = release(key, w, now)
            overflow = w.overflow
            for output, count in released:
                closed.append(Closed(key, output, count, overflow, w.opened, now, due_at, left))
                overflow = 0  # reported once, with the wake-up's first output
            if deadline is None:
                del self._open[key]
                self._closed_seq[key] = max(self._closed_seq.get(key, -1), w.last_seq)
            else:
                w.count = left
                w.deadline = min(deadline, MAX_DEADLINE)
                if released:
                    w.overflow = 0
        return DueResult(closed, jumps)

    def _release(self, key: Key, w: _Window[S], now: int) -> Released:
        """What window ``w`` sends at its wake-up ``now``: the outputs, each with the number of
        messages it stands for; how many messages it keeps; when it is due again (None: it
        keeps nothing and closes). Here: ``_release_whole``."""
        return self._release_whole(key, w, now)

    def _release_whole(self, key: Key, w: _Window[S], now: int) -> Released:
        """One output for everything the window holds; it closes."""
        return [(self._output(key, w.state, w.count, w.deadline), w.count)], 0, None

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-able state: open windows (with their last seq) and each key's closed
        seq."""
        return {
            "windows": [
                {"node": k[0], "originator": k[1], "opened": w.opened, "deadline": w.deadline,
                 "last_seen": w.last_seen, "count": w.count, "overflow": w.overflow,
                 "last_seq": w.last_seq, "state": self._state_record(w.state)}
                for k, w in sorted(self._open.items())],
            "closed_seq": [[k[0], k[1], s] for k, s in sorted(self._closed_seq.items())],
        }

    def _restore(self, record: dict[str, Any]) -> None:
        for r in record["windows"]:
            self._open[(r["node"], r["originator"])] = _Window(
                r["opened"], r["deadline"], r["last_seen"], self._state_from(r["state"]),
                r["count"], r["overflow"], r["last_seq"])
        for node, originator, seq in record["closed_seq"]:
            self._closed_seq[(node, originator)] = seq


class DedupWindows(_Windows[list[Msg]]):
    """TbMsgDeduplicationNode's windows (the module docstring gives the rules)."""

    def __init__(self, strategy: str, interval_s: int, max_pending: int = 100,
                 out_msg_type: str | None = None, queue_name: str | None = None) -> None:
        super().__init__(interval_s, max_pending)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if strategy == "ALL" and not out_msg_type:
            raise ValueError("strategy ALL needs out_msg_type")
        self.strategy = strategy
        self.out_msg_type = out_msg_type
        self.queue_name = queue_name

    @classmethod
    def from_record(cls, record: dict[str, Any], strategy: str, interval_s: int,
                    max_pending: int = 100, out_msg_type: str | None = None,
                    queue_name: str | None = None) -> DedupWindows:
        out = cls(strategy, interval_s, max_pending, out_msg_type, queue_name)
        out._restore(record)
        return out

    def _new_state(self) -> list[Msg]:
        return []

    def _add_to(self, state: list[Msg], msg: Msg) -> None:
        state.append(msg)

    def _release(self, key: Key, w: _Window[list[Msg]], now: int) -> Released:
        """ThingsBoard's TbMsgDeduplicationNode.processDeduplication: while findValidPack finds
        a pack ``[minTs, minTs + interval)`` of the pending messages' ts whose end is at or
        before ``now``, the pack's messages leave the pending ones and make one output; the
        rest stay, due when the earliest of them is."""
        pending = w.state
        by_ts = sorted(range(len(pending)), key=lambda i: pending[i].ts)  # stable: arrival
        released: list[tuple[OutMsg, int]] = []
        first = 0
        while first < len(by_ts):
            start = pending[by_ts[first]].ts
            end = start + self.interval_ms
            if end > now:
                break
            last = first
            while last < len(by_ts) and pending[by_ts[last]].ts < end:
                last += 1
            pack = [pending[i] for i in sorted(by_ts[first:last])]  # arrival order
            released.append((self._output(key, pack, len(pack), w.deadline), len(pack)))
            first = last
        if first == len(by_ts):
            return released, 0, None
        kept = sorted(by_ts[first:])
        w.state = [pending[i] for i in kept]
        return released, len(kept), pending[by_ts[first]].ts + self.interval_ms

    def _output(self, key: Key, state: list[Msg], count: int, due: int) -> OutMsg:
        """One pack's output, as processDeduplication builds it: ALL, a message of type
        ``outMsgType`` with the pack in arrival order and metadata ts ``due`` (ThingsBoard's
        getMetadata: the time it processes the pack, its wake-up); FIRST / LAST, the
        message of the smallest / largest ts (strict comparisons in arrival order: the earliest
        arrival on ties), as it came."""
        if self.strategy == "ALL":
            packed = [{"msg": json.loads(m.data), "metadata": m.metadata} for m in state]
            assert self.out_msg_type is not None
            return OutMsg(key[1], self.out_msg_type, json.dumps(packed), {"ts": str(due)},
                          self.queue_name, due)
        pick = state[0]
        for m in state[1:]:
            if (m.ts < pick.ts) if self.strategy == "FIRST" else (m.ts > pick.ts):
                pick = m
        return OutMsg(key[1], pick.type, pick.data, dict(pick.metadata), self.queue_name,
                      pick.ts)

    def _state_record(self, state: list[Msg]) -> Any:
        return [m.to_record() for m in state]

    def _state_from(self, record: Any) -> list[Msg]:
        return [Msg.from_record(r) for r in record]


Stats = dict[str, dict[str, Any]]
"""numeric key -> {"count", "sum", "min", "max"}."""


class AggregateWindows(_Windows[Stats]):
    """The edge's aggregation node (``AGGREGATE_NODE_TYPE``): at close, one message of type
    ``out_msg_type`` whose data is ``{"<key>_min", "<key>_max", "<key>_avg", "<key>_sum",
    "<key>_count"}`` (keys sorted) and metadata ``{"ts": <due close time>, "msgCount":
    <kept>}``."""

    def __init__(self, interval_s: int, max_pending: int = AGGREGATE_DEFAULT_PENDING,
                 out_msg_type: str = AGGREGATE_DEFAULT_OUT_TYPE,
                 queue_name: str | None = None) -> None:
        super().__init__(interval_s, max_pending)
        self.out_msg_type = out_msg_type
        self.queue_name = queue_name

    @classmethod
    def from_record(cls, record: dict[str, Any], interval_s: int,
                    max_pending: int = AGGREGATE_DEFAULT_PENDING,
                    out_msg_type: str = AGGREGATE_DEFAULT_OUT_TYPE,
                    queue_name: str | None = None) -> AggregateWindows:
        out = cls(interval_s, max_pending, out_msg_type, queue_name)
        out._restore(record)
        return out

    def _new_state(self) -> Stats:
        return {}

    def _add_to(self, state: Stats, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        for k, v in data.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            s = state.get(k)
            if s is None:
                state[k] = {"count": 1, "sum": v, "min": v, "max": v}
            else:
                s["count"] += 1
                s["sum"] += v
                s["min"] = min(s["min"], v)
                s["max"] = max(s["max"], v)

    def _output(self, key: Key, state: Stats, count: int, due: int) -> OutMsg:
        summary: dict[str, Any] = {}
        for k, s in sorted(state.items()):
            summary[f"{k}_min"] = s["min"]
            summary[f"{k}_max"] = s["max"]
            summary[f"{k}_avg"] = s["sum"] / s["count"]
            summary[f"{k}_sum"] = s["sum"]
            summary[f"{k}_count"] = s["count"]
        return OutMsg(key[1], self.out_msg_type, json.dumps(summary),
                      {"ts": str(due), "msgCount": str(count)}, self.queue_name, due)

    def _state_record(self, state: Stats) -> Any:
        return {k: dict(s) for k, s in state.items()}

    def _state_from(self, record: Any) -> Stats:
        return {k: dict(s) for k, s in record.items()}
