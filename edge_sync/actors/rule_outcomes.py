"""What a device's message becomes when a rule chain is in force: the RuleMsg handed to the
chain, and the chain's outcomes turned into what the message's Append commits.

Owns the mapping, one outcome at a time, in the chain's order:

- ``SaveTimeseries``: the device's latest values and its local timeseries (with the node's TTL,
  or the configured retention), each when the node's processing settings say so: on the edge
  only.
- ``SaveAttributes``: the device's attributes of the node's scope, on the edge only.
- ``PushToCloud``: the cloud event of the message, in the lane the node gives it, as ThingsBoard
  Edge's TbMsgPushToCloudNode (AbstractTbMsgPushNode.buildEvent) makes it: telemetry and
  TIMESERIES_UPDATED messages a TIMESERIES_UPDATED event; posted attributes an
  ATTRIBUTES_UPDATED event, an ATTRIBUTES_UPDATED message one marked ``attributesUpdated``
  (sent as attributesUpdatedMsg); ATTRIBUTES_DELETED an ATTRIBUTES_DELETED event; the
  connect/activity events telemetry, or attributes when their metadata names a scope; an alarm
  message (ALARM, ALARM_CREATED, ALARM_UPDATED, ALARM_SEVERITY_UPDATED) an ALARM event, ADDED
  when the alarm node's metadata says ``isNewAlarm``, ALARM_CLEAR for ``isClearedAlarm``,
  else UPDATED; ALARM_ACK / ALARM_CLEAR messages an ALARM event of that action; a device's
  TO_SERVER_RPC_REQUEST an RPC_CALL request event (method, params, requestId).
- ``CreateAlarm`` / ``ClearAlarm``: the alarm's state lives in the entity's rule state (saved
  with the Append); the cloud hears of it only when the ALARM message is pushed.
- ``SendRpc``: an RPC request to the device, numbered by the device (``RuleRpcRequests``),
  QUEUED with the Append (``PutRpc``) and handed to the device's shard once it committed, as a
  cloud request is; made by the edge, it is never reported to the cloud.
- ``Log``: one log line (ThingsBoard's TbLogNode logs at INFO).
- ``Visited`` / ``Failed``: per-node counts; a failure is logged at most once a minute per node
  with the number of failures not logged since.

The rule chain metrics (``RuleCounters``, docs/metrics.md):

- ``edge_sync_rule_node_messages_total{chain,digest,node}`` and
  ``edge_sync_rule_node_failures_total{chain,digest,node}``: every node of a chain has its two
  series from the moment the chain goes in force, at 0 (a first failure is an increase
  Prometheus sees). The chain's name and digest are labels: a swap starts new series rather
  than continuing (or resetting) those of a node of the same name in the chain before, so a
  series never goes backwards. The series of the chain in force and of the one before it are
  kept (that one's last counts stay scrapeable); older ones are removed at a swap. A message an
  earlier chain's engine was running at the swap counts in that chain's series when the node
  is not in the new chain, else in the new chain's (as the runtime counts it).
- ``edge_sync_rule_chain_info{chain,source,digest}`` (1; absent without a chain),
  ``edge_sync_rule_chain_version`` (absent without a chain) and
  ``edge_sync_rule_chain_in_force`` (1 or 0): read from the runtime when scraped.
- ``edge_sync_rule_chain_refusals_total{source}``: chains refused, from the file or the cloud,
  both series there from the start.
- ``edge_sync_rule_chain_refusal_outstanding{source}`` (1 or 0, read from the chain source):
  a refusal that still holds, whenever it was counted (at start too, before any scrape).
- ``edge_sync_rule_window_messages_dropped_total``: the window tally's messages lost with
  windows dropped because their node left the chain (one series, there from the start; the
  node is in the log line and the status).
- ``edge_sync_rule_script_blocked{chain,digest,node}`` (1 or 0, read from the shards' engines
  when scraped: ``ScriptBlocks``): 1 while the node's script is blocked on any shard, for every
  script node of the chain in force (from its install, at 0).

What a save or push node is handed must be what a device could have posted (keys of at most
255 bytes, 64-bit integers, timestamps from 0 to 2^63-1, text without lone surrogates: the
device API's own checks, storable.py); a script may make anything, and data the store
cannot hold would fail the whole Append, turning the chain's fault into the device's refusal.
Such data is that node's failure instead: counted, logged, nothing of it kept or pushed.

Nothing here reads or writes storage; the entity actor sends the Append.
"""

from __future__ import annotations

import re
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loguru import logger

from edge_sync.actors.messages import (
    Mutation,
    PutAttributes,
    PutLatestTelemetry,
    PutLocalTimeseries,
    PutRpc,
)
from edge_sync.common.wire import compact_json
from edge_sync.devices.rpc import (
    RpcRequest,
    RpcStatus,
    RuleSource,
    TextAnswer,
)
from edge_sync.errors import BadRequest
from edge_sync.metrics import Counter, Metrics
from edge_sync.rules.alarms import event_body
from edge_sync.rules.engine import (
    FAILURE,
    SUCCESS,
    ClearAlarm,
    CreateAlarm,
    Deferred,
    Failed,
    Log,
    Outcome,
    PushToCloud,
    SaveAttributes,
    SaveTimeseries,
    SendRpc,
    Visited,
)
from edge_sync.rules.message import (
    ALARM,
    ATTRIBUTES_DELETED,
    ATTRIBUTES_UPDATED,
    POST_ATTRIBUTES_REQUEST,
    POST_TELEMETRY_REQUEST,
    TO_SERVER_RPC_REQUEST,
    Originator,
    RuleMsg,
)
from edge_sync.rules.nodes import script_of
from edge_sync.rules.runtime import ChainInForce, Refusal, RulesRuntime
from edge_sync.storable import check_json_value, check_timestamp, check_values
from edge_sync.storage.records import Action, Lane, NewEvent, Scope
from edge_sync.storage.rule_chains import CLOUD, FILE, kind_of

_log = logger.bind(component="rules")

# ThingsBoard's AbstractTbMsgPushNode.getAlarmActionType: new, else cleared, else an update
_ALARM_ACTIONS = (("isNewAlarm", Action.ADDED), ("isClearedAlarm", Action.ALARM_CLEAR))
# ... for these types; ALARM_ACK and ALARM_CLEAR messages are events of their own action, and
# the device's connect/activity events telemetry (attributes when the metadata names a scope)
_ALARM_TYPES = frozenset({ALARM, "ALARM_CREATED", "ALARM_UPDATED", "ALARM_SEVERITY_UPDATED"})
_ALARM_STATE_ACTIONS = {"ALARM_ACK": Action.ALARM_ACK, "ALARM_CLEAR": Action.ALARM_CLEAR}
_ACTIVITY_TYPES = frozenset({"CONNECT_EVENT", "DISCONNECT_EVENT", "ACTIVITY_EVENT",
                             "INACTIVITY_EVENT"})
TIMESERIES_UPDATED = "TIMESERIES_UPDATED"
_SCOPES = tuple(scope.value for scope in Scope)


class WindowTally:
    """The rule windows every entity holds, per node, for status and the admin API (each
    entity's figures replaced whole when its state changes), and the messages lost with
    windows dropped because their node is not in the chain in force (cumulative, for
    /metrics). Any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_entity: dict[uuid.UUID, dict[str, tuple[int, int]]] = {}
        self.dropped_windows: dict[str, int] = {}
        """node (as log lines name it) -> windows dropped at their deadline, since start"""
        self.dropped_messages: dict[str, int] = {}
        """node -> acknowledged messages those windows held, lost, since start"""

    def set(self, entity_id: uuid.UUID, counts: Mapping[str, tuple[int, int]]) -> None:
        """The entity's open windows now: node -> (windows, messages held); empty: none."""
        with self._lock:
            if counts:
                self._by_entity[entity_id] = dict(counts)
            else:
                self._by_entity.pop(entity_id, None)

    def dropped(self, node: str, windows: int, messages: int) -> None:
        with self._lock:
            self.dropped_windows[node] = self.dropped_windows.get(node, 0) + windows
            self.dropped_messages[node] = self.dropped_messages.get(node, 0) + messages

    @property
    def dropped_messages_total(self) -> int:
        with self._lock:
            return sum(self.dropped_messages.values())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """node -> {"entities", "open_windows", "held_messages"}, summed over the entities."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for counts in self._by_entity.values():
                for node, (windows, held) in counts.items():
                    seen = out.setdefault(node, {"entities": 0, "open_windows": 0,
                                                 "held_messages": 0})
                    seen["entities"] += 1
                    seen["open_windows"] += windows
                    seen["held_messages"] += held
        return out


@dataclass(frozen=True)
class BlockedScript:
    """One shard's block of a node's script (``ShardRules.script_blocks``): since and until
    (ms, edge time), the timeouts or memory blow-ups counted, the last one (type and text)."""

    chain: str
    digest: str
    node: str
    """as the per-node counts name it (``RuleNode.describe``)"""
    index: int
    shard: int
    since_ms: int
    until_ms: int
    errors: int
    last_error: str


class ScriptBlocks:
    """The rule scripts blocked now, over the shards: each shard runs its own copy of the
    chain's scripts and blocks them on its own (``ScriptEngine.block``). Each shard incarnation
    attaches its reader (``attach``: the latest of a shard replaces the one before); they are
    read only when the status or the metrics ask, never per message. Any thread; the lock is a
    leaf (the readers are called outside it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: dict[int, Callable[[], list[BlockedScript]]] = {}

    def attach(self, shard: int, read: Callable[[], list[BlockedScript]]) -> None:
        with self._lock:
            self._readers[shard] = read

    def read(self) -> list[BlockedScript]:
        """Every shard's blocks in force, by shard."""
        with self._lock:
            readers = sorted(self._readers.items())
        return [block for _, read in readers for block in read()]

    def snapshot(self) -> list[dict[str, Any]]:
        """Per node whose script is blocked on any shard, in chain and node order: ``chain``,
        ``digest``, ``node``, ``shards`` (those where it is blocked), ``since_ms`` (the earliest
        block's start), ``until_ms`` (the latest block's end), and of the shard that blocked it
        last, ``errors`` and ``last_error`` (why: the timeout or memory blow-up that blocked
        it)."""
        by_node: dict[tuple[str, str, int], list[BlockedScript]] = {}
        for block in self.read():
            by_node.setdefault((block.chain, block.digest, block.index), []).append(block)
        out = []
        for key in sorted(by_node):
            blocks = by_node[key]
            last = max(blocks, key=lambda b: (b.since_ms, b.shard))
            out.append({"chain": last.chain, "digest": last.digest, "node": last.node,
                        "shards": sorted(b.shard for b in blocks),
                        "since_ms": min(b.since_ms for b in blocks),
                        "until_ms": max(b.until_ms for b in blocks),
                        "errors": last.errors, "last_error": last.last_error})
        return out


class RuleCounters:
    """Per-node counts of the chain in force: in the runtime (status, admin API) and in
    /metrics (``edge_sync_rule_node_messages_total``, ``edge_sync_rule_node_failures_total``).
    ``windows``: the open rule windows and the messages lost with dropped ones.

    Lock order: ``RulesRuntime``'s lock, then this one's (``_changed`` is the runtime's
    listener, called under its lock), then prometheus_client's child locks (labels, remove,
    inc). So nothing under this lock calls the runtime: ``_bind`` reads it before taking it.
    The scrape's callbacks (``_info``, ``_version``, the in-force gauge, the window tally)
    take one lock at a time. ``WindowTally``'s lock is a leaf (nothing is called under it)."""

    def __init__(self, runtime: RulesRuntime, metrics: Metrics | None = None) -> None:
        self.runtime = runtime
        self.windows = WindowTally()
        self.blocks = ScriptBlocks()
        self._in: Counter | None = None
        self._failed: Counter | None = None
        self._lock = threading.Lock()
        self._refusals: Counter | None = None
        # bound children (no label lookup per message): node -> (messages, failures) of the
        # chain in force; by digest, those of the chains whose series are kept, oldest first
        self._nodes: dict[str, tuple[Counter, Counter]] = {}
        self._kept: dict[str, tuple[str, dict[str, tuple[Counter, Counter]]]] = {}
        self._metrics = metrics
        if metrics is None:
            return
        self._in = metrics.counter(
            "edge_sync_rule_node_messages_total", "messages a rule node received, by chain "
            "(name and digest) and node", _NODE_LABELS)
        self._failed = metrics.counter(
            "edge_sync_rule_node_failures_total", "messages a rule node failed (script error, "
            "time-out, unsupported message) and sent by its Failure connection, by chain (name "
            "and digest) and node", _NODE_LABELS)
        self._refusals = metrics.counter(
            "edge_sync_rule_chain_refusals_total", "rule chains refused (unreadable, invalid): "
            "from rules.file (file) or the cloud's root chain (cloud)", ("source",))
        for source in SOURCES:
            self._refusals.labels(source=source)
        metrics.info("edge_sync_rule_chain", "the rule chain in force: its name, source (file "
                     "or cloud) and digest", ("chain", "source", "digest"), self._info)
        metrics.gauge("edge_sync_rule_chain_version", "the version of the rule chain in force "
                      "(1, 2, ... one more at every swap, going on across restarts)", self._version)
        metrics.gauge("edge_sync_rule_chain_in_force", "1 when a rule chain is in force, else 0",
                      lambda: 0.0 if runtime.current() is None else 1.0)
        windows = self.windows
        metrics.read_counter(
            "edge_sync_rule_window_messages_dropped_total", "acknowledged messages lost with rule "
            "windows dropped at their deadline because their node is not in the chain in force",
            lambda: float(windows.dropped_messages_total))
        metrics.gauge_family(
            "edge_sync_rule_script_blocked", "1 while a rule node's script is blocked (after "
            "rules.script_max_errors timeouts or memory blow-ups) on any shard, its messages "
            "going by Failure at once, else 0; by chain (name and digest) and node, every "
            "script node of the chain in force", _NODE_LABELS, self._blocked)
        runtime.listen(self._changed)
        self._changed(runtime.current())

    def refusal_outstanding(self, read: Callable[[], str | None]) -> None:
        """``edge_sync_rule_chain_refusal_outstanding{source}``: 1 for the source whose current
        chain is refused (``read``: its source, or None) until a chain from it goes in force
        (or the cloud removes its root chain), else 0; both sources there from the start."""
        if self._metrics is None:
            return

        def by_source() -> dict[tuple[str, ...], float]:
            source = read()
            refused = None if source is None else kind_of(source)
            return {(s,): 1.0 if s == refused else 0.0 for s in SOURCES}

        self._metrics.gauge_family(
            "edge_sync_rule_chain_refusal_outstanding", "1 while the current chain of a source "
            "(file or cloud) is refused and no chain from it went in force since (nor did the "
            "cloud remove its root chain), else 0",
            ("source",), by_source)

    def _info(self) -> dict[str, str] | None:
        current = self.runtime.current()
        if current is None:
            return None
        return {"chain": current.chain.name, "source": kind_of(current.source),
                "digest": current.digest}

    def _blocked(self) -> dict[tuple[str, ...], float]:
        """The scrape's ``edge_sync_rule_script_blocked``: every script node of the chain in
        force, 1 when blocked on any shard."""
        current = self.runtime.current()
        if current is None:
            return {}
        title, digest = current.chain.name, current.digest
        out: dict[tuple[str, ...], float] = {
            (title, digest, node.describe()): 0.0 for node in current.meta.nodes
            if script_of(node.type, node.configuration) is not None}
        for block in self.blocks.read():
            if block.digest == digest and (title, digest, block.node) in out:
                out[(title, digest, block.node)] = 1.0
        return out

    def _version(self) -> float:
        current = self.runtime.current()
        if current is None:
            raise LookupError("no rule chain in force")  # the gauge is absent
        return float(current.version)

    def _changed(self, event: ChainInForce | Refusal | None) -> None:
        """The runtime's listener (under its lock: the series exist before any thread sees
        the chain in force): series for a new chain's nodes, a refusal counted."""
        if isinstance(event, Refusal):
            if self._refusals is not None:
                self._refusals.labels(source=kind_of(event.source)).inc()
            return
        with self._lock:
            self._nodes = {} if event is None else self._chain_series(event)

    def _chain_series(self, chain: ChainInForce) -> dict[str, tuple[Counter, Counter]]:
        """Under the lock: the bound children of ``chain``'s nodes, made at 0 when new; the
        series of chains before the one before it removed."""
        assert self._in is not None and self._failed is not None
        digest, title = chain.digest, chain.chain.name
        found = self._kept.pop(digest, None)
        nodes = found[1] if found is not None else {}
        for node in chain.meta.nodes:
            name = node.describe()
            if name not in nodes:
                nodes[name] = (self._in.labels(title, digest, name),
                               self._failed.labels(title, digest, name))
        self._kept[digest] = (title, nodes)  # the most recent last
        while len(self._kept) > 2:
            old_digest = next(iter(self._kept))
            old_title, old_nodes = self._kept.pop(old_digest)
            for name in old_nodes:
                self._in.remove(old_title, old_digest, name)
                self._failed.remove(old_title, old_digest, name)
        return nodes

    def _bind(self, node: str) -> tuple[Counter, Counter] | None:
        """A node not in the chain in force's map: a message of a chain swapped out while it
        ran (its series if kept), else a node the runtime counts all the same (in the chain in
        force's series). The runtime is read before this lock: its listener takes this lock
        under the runtime's."""
        if self._in is None or self._failed is None:
            return None
        current = self.runtime.current()
        with self._lock:
            pair = next((kept[node] for _, kept in reversed(self._kept.values())
                         if node in kept), None)
            if pair is None and current is not None and current.digest in self._kept:
                title, dig = current.chain.name, current.digest
                pair = self._kept[dig][1][node] = (self._in.labels(title, dig, node),
                                                   self._failed.labels(title, dig, node))
            return pair

    def visited(self, node: str, n: int = 1) -> None:
        self.runtime.count(node, visited=n)
        pair = self._nodes.get(node) or self._bind(node)
        if pair is not None:
            pair[0].inc(n)

    def failed(self, node: str) -> None:
        self.runtime.count(node, failed=1)
        pair = self._nodes.get(node) or self._bind(node)
        if pair is not None:
            pair[1].inc()


SOURCES = (FILE, CLOUD)
"""The ``source`` label of the rule chain metrics: where a chain came from (rules.file or the
cloud's root chain), without the file's path (the status names it): ``kind_of(source)``."""

_NODE_LABELS = ("chain", "digest", "node")


def device_metadata(name: str | None, device_type: str | None, ts: int) -> dict[str, str]:
    """The metadata ThingsBoard's transport gives a device message."""
    meta = {"ts": str(ts)}
    if name:
        meta["deviceName"] = name
    if device_type:
        meta["deviceType"] = device_type
    return meta


def telemetry_msgs(device_id: uuid.UUID, entries: Sequence[tuple[int, Sequence[tuple[str, Any]]]],
                   name: str | None, device_type: str | None) -> list[RuleMsg]:
    """The chain's message of each of a post's entries (ts, ((key, value), ...)), in order:
    POST_TELEMETRY_REQUEST with the transport's metadata (``device_metadata``)."""
    origin = Originator("DEVICE", str(device_id))
    shared = device_metadata(name, device_type, 0)
    del shared["ts"]
    of_text = RuleMsg.of_text
    return [of_text(POST_TELEMETRY_REQUEST, origin, dict(values), {"ts": str(ts), **shared}, ts)
            for ts, values in entries]


def attributes_msg(device_id: uuid.UUID, ts: int, values: Mapping[str, Any],
                   name: str | None, device_type: str | None) -> RuleMsg:
    return RuleMsg.of_text(POST_ATTRIBUTES_REQUEST, Originator("DEVICE", str(device_id)),
                           dict(values), device_metadata(name, device_type, ts), ts)


@dataclass(slots=True)
class Planned:
    """What one command's outcomes commit with its Append."""

    events: list[NewEvent] = field(default_factory=list)
    mutations: list[Mutation] = field(default_factory=list)
    pushed: int = 0
    kept_local: int = 0
    rpc_requests: list[RpcRequest] = field(default_factory=list)
    """The RPC requests the chain made (their PutRpc is among ``mutations``): the entity
    delivers them once the Append committed."""
    alarms: list[CreateAlarm | ClearAlarm] = field(default_factory=list)
    """The alarm changes, logged by ``log_alarms`` once the Append committed: they describe
    the stored rule state, which a refused Append leaves as it was."""


def plan(entity_id: uuid.UUID, outcomes: list[Outcome] | tuple[Outcome, ...],
         counters: RuleCounters, now_ms: int, visits: Mapping[str, int] | None = None,
         rpc: Callable[[SendRpc], RpcRequest] | None = None) -> Planned:
    """The events and mutations of ``outcomes`` (in order); counts and logs as it goes.
    ``visits``: messages per node counted already (``Step.visits``), added to those of the
    ``Visited`` outcomes. ``rpc`` makes the request of a ``SendRpc`` (the device's
    ``RuleRpcRequests``; without it, numbered as if the device had no other request). The
    saved timeseries of consecutive ``SaveTimeseries`` with the same TTL go in one local
    timeseries mutation, and all of them in one latest-values mutation:
    the same rows as one mutation each (later points replace earlier ones, the latest value of
    a key is its highest ts, the later on a tie)."""
    out = Planned()
    counts: dict[str, int] = dict(visits) if visits else {}
    saved = _Saved()
    checks = _SeriesChecks()
    for o in outcomes:
        match o:
            case Visited():
                counts[o.node] = counts.get(o.node, 0) + 1
            case SaveTimeseries():
                _save_timeseries(entity_id, o, saved, checks, counters, now_ms)
            case PushToCloud():
                _push(entity_id, o, out, checks, counters, now_ms)
            case Failed():
                _fail(counters, entity_id, o, now_ms)
            case Log():  # when the node runs, as TbLogNode.onMsg logs before tellSuccess:
                # it says the node saw the message, not that anything of it was stored
                _log.bind(node=o.node, entity=str(entity_id)).info("{}", o.text)
            case SaveAttributes():
                data = o.data if isinstance(o.data, dict) else {}
                problem = _unstorable(_check_attributes, now_ms, data)
                if problem is not None:
                    _fail(counters, entity_id, Failed(o.node, problem), now_ms)
                    continue
                out.mutations.append(PutAttributes(entity_id, Scope(o.scope),
                                                   tuple(data.items()), now_ms))
                out.kept_local += 1
            case CreateAlarm() | ClearAlarm():
                out.alarms.append(o)  # logged once committed (log_alarms)
            case SendRpc():
                if rpc is None:
                    rpc = RuleRpcRequests().maker(entity_id, now_ms, ())
                request = rpc(o)
                out.mutations.append(PutRpc(request))
                out.rpc_requests.append(request)
            case Deferred():
                pass  # held by its window (the entity's rule state)
    saved.into(entity_id, out)
    for node, n in counts.items():  # one count per node and call, not per message
        counters.visited(node, n)
    return out


def _draw_rpc_id() -> int:
    return secrets.randbelow(_RPC_ID_MAX) + 1


_RPC_ID_MAX = 2**31 - 1
_RPC_IDS_KEPT = 256


class RuleRpcRequests:
    """The RPC requests one device's rule chain makes, numbered for that device (pure: the
    device's open requests and the time are passed in).

    - **The id the device sees**: one none of the device's open requests has (a cloud
      request's included) nor any this device's chain made lately, drawn at random from 1 to
      2^31-1. ThingsBoard's device actor numbers the requests it sends with a counter of its
      own (DeviceActorMessageProcessor, ``rpcSeq++``), so two open requests of a device never
      share an id, and an answer is taken by the request it answers (RpcBook.answer matches
      by id). On the edge a cloud request keeps the cloud's id (small numbers, counted per
      device by the cloud), so a counter of the edge's own would meet them; a random draw
      away from the open ones does not, but by a chance of about one in 2^31 per request.
    - **The queued time**: after every open request's and every one made before, so the
      store, which orders a device's requests by (queued time, uuid), gives them back after a
      restart in the order they were made.
    - **The uuid**: a new random one (``uuid4``)."""

    __slots__ = ("_draw", "_issued", "_last_queued", "_new_uuid")

    def __init__(self, draw: Callable[[], int] = _draw_rpc_id,
                 new_uuid: Callable[[], uuid.UUID] = uuid.uuid4) -> None:
        self._draw, self._new_uuid = draw, new_uuid
        self._issued: deque[int] = deque(maxlen=_RPC_IDS_KEPT)  # ids made, newest last
        self._last_queued = 0

    def maker(self, device_id: uuid.UUID, now_ms: int, open_requests: Sequence[RpcRequest]
              ) -> Callable[[SendRpc], RpcRequest]:
        """What makes each request of one Append, given the device's open requests now."""
        taken = {r.request_id for r in open_requests}
        latest = max((r.queued_at for r in open_requests), default=0)

        def make(o: SendRpc) -> RpcRequest:
            request_id = self._draw()
            while request_id in taken or request_id in self._issued:
                request_id = self._draw()
            taken.add(request_id)
            self._issued.append(request_id)
            queued = self._last_queued = max(now_ms, latest + 1, self._last_queued + 1)
            return RpcRequest(device_id, self._new_uuid(), request_id, o.method, o.params,
                              o.oneway, o.expiration_time, queued, updated_at=queued,
                              source=RuleSource(o.node_key, o.msg_type,
                                                tuple(o.metadata.items())))

        return make


def rpc_end_msg(request: RpcRequest, now_ms: int) -> tuple[str, RuleMsg] | None:
    """How a finished rule-made request goes on from its node, as ThingsBoard's
    TbSendRPCRequestNode callback sends it, of the type and metadata of the message that made
    it: by ``Success`` the device's answer as the data (``{}`` for a one-way request:
    ``TbMsg.EMPTY_JSON_OBJECT``; a JSON ``null`` answer stays null); by ``Failure``
    ``{"error": NAME}`` with the RpcError name ThingsBoard's device actor gives
    (DeviceActorMessageProcessor.processServerSideRpcTimeout): TIMEOUT for a request delivered
    and not answered in time, NO_ACTIVE_CONNECTION for one that expired before the device got
    it (TIMEOUT when it had expired already when made: ThingsBoard's device actor ignores such
    a request, and its rule engine's timeout answers TIMEOUT,
    DefaultTbRuleEngineRpcService.scheduleTimeout); INTERNAL for one that could not be sent at
    all (too large for the device's MQTT client: the edge's own case). None for a request
    that is not the chain's, or not finished."""
    source = request.source
    if source is None or not request.status.final:
        return None
    if request.status is RpcStatus.SUCCESSFUL:
        answer = request.response
        relation = SUCCESS
        data: Any = ({} if request.oneway else answer.text if isinstance(answer, TextAnswer)
                     else answer)
    else:
        relation = FAILURE
        expired_when_made = request.expiration_time <= request.queued_at
        data = {"error": "TIMEOUT" if expired_when_made else _RPC_END_ERRORS[request.status]}
    return relation, RuleMsg(source.msg_type, Originator("DEVICE", str(request.device_id)),
                             data, dict(source.metadata), now_ms)


_RPC_END_ERRORS = {RpcStatus.TIMEOUT: "TIMEOUT", RpcStatus.EXPIRED: "NO_ACTIVE_CONNECTION",
                   RpcStatus.FAILED: "INTERNAL"}


def log_alarms(entity_id: uuid.UUID, alarms: Sequence[CreateAlarm | ClearAlarm],
               refused: BaseException | None = None) -> None:
    """The alarm lines of a command's outcomes, once its Append is done: INFO when it
    committed (the alarm is as the line says), DEBUG "not stored" when it was refused (the
    alarm stays as it was; the refusal is the queue's line)."""
    entity = str(entity_id)
    for o in alarms:
        if isinstance(o, ClearAlarm) and refused is None:
            _log.bind(entity=entity, alarm=o.alarm_id, alarm_type=o.type, node=o.node).info(
                "alarm {!r} cleared", o.type)
        elif isinstance(o, ClearAlarm):
            _log.bind(entity=entity, alarm=o.alarm_id, alarm_type=o.type, node=o.node,
                      error=str(refused)).debug("alarm {!r} cleared not stored: {}", o.type,
                                                refused)
        elif refused is None:
            _log.bind(entity=entity, alarm=o.alarm_id, alarm_type=o.type, severity=o.severity,
                      node=o.node).info(
                "alarm {!r} {} ({})", o.type, "created" if o.new else "updated", o.severity)
        else:
            _log.bind(entity=entity, alarm=o.alarm_id, alarm_type=o.type, severity=o.severity,
                      node=o.node, error=str(refused)).debug(
                "alarm {!r} {} ({}) not stored: {}", o.type, "created" if o.new else "updated",
                o.severity, refused)


def _series(data: Any, ts: int) -> list[tuple[int, tuple[tuple[str, Any], ...]]] | None:
    """Telemetry data as (ts, ((key, value), ...)) entries: ThingsBoard's shapes, an object of
    values, ``{"ts", "values"}``, or a list of either; None when it is none of them."""
    if isinstance(data, list):
        entries = []
        for item in data:
            got = _series(item, ts)
            if got is None:
                return None
            entries.extend(got)
        return entries
    if not isinstance(data, dict):
        return None
    if len(data) == 2 and "ts" in data and "values" in data and isinstance(data["values"], dict):
        if not isinstance(data["ts"], int) or isinstance(data["ts"], bool):
            return None
        return [(data["ts"], tuple(data["values"].items()))]
    return [(ts, tuple(data.items()))]


def _unstorable(check: Callable[..., None], *args: Any) -> str | None:
    """Why data a node was given cannot be kept (``check(*args)`` raised BadRequest), else
    None."""
    try:
        check(*args)
    except BadRequest as exc:
        return f"the message data cannot be stored: {exc}"
    return None


class _SeriesChecks:
    """The storability verdicts of one ``plan`` call's telemetry, by message data: a save node
    and a push node given the same message (the same data object and ts) check it once. The
    data objects are kept referenced, so an id is never reused within the call."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], tuple[Any, str | None]] = {}

    def problem(self, data: Any, ts: int,
                entries: list[tuple[int, tuple[tuple[str, Any], ...]]]) -> str | None:
        key = (id(data), ts)
        seen = self._seen.get(key)
        if seen is not None and seen[0] is data:
            return seen[1]
        problem = _unstorable(_check_series, entries)
        self._seen[key] = (data, problem)
        return problem


def _check_series(entries: list[tuple[int, tuple[tuple[str, Any], ...]]]) -> None:
    for ts, values in entries:
        check_timestamp("telemetry", ts)
        check_values("telemetry", values)


def _check_attributes(ts: int, data: Mapping[str, Any]) -> None:
    check_timestamp("attributes", ts)
    check_values("attributes", data.items())


def _check_event(event: NewEvent) -> None:
    check_timestamp("alarm", event.ts)
    check_json_value("alarm", event.body)


@dataclass(slots=True)
class _Saved:
    """The timeseries a call's ``SaveTimeseries`` outcomes keep: the latest value per key, and
    the local points in runs of one TTL, in order."""

    latest: dict[str, tuple[int, Any]] = field(default_factory=dict)
    runs: list[tuple[int, list[tuple[int, tuple[tuple[str, Any], ...]]]]] = field(
        default_factory=list)
    count: int = 0

    def add(self, entries: list[tuple[int, tuple[tuple[str, Any], ...]]], ttl: int,
            series: bool = True, latest_too: bool = True) -> None:
        """The points of one save: into the local timeseries when ``series``, into the latest
        values when ``latest_too`` (the node's processing settings)."""
        if latest_too:
            latest = self.latest
            for ts, values in entries:
                for key, value in values:
                    seen = latest.get(key)
                    if seen is None or seen[0] <= ts:
                        latest[key] = (ts, value)
        if series:
            if self.runs and self.runs[-1][0] == ttl:
                self.runs[-1][1].extend(entries)
            else:
                self.runs.append((ttl, list(entries)))
        self.count += 1

    def into(self, entity_id: uuid.UUID, out: Planned) -> None:
        if not self.count:
            return
        if self.latest:
            out.mutations.append(PutLatestTelemetry(entity_id, tuple(
                (k, ts, v) for k, (ts, v) in self.latest.items())))
        out.mutations.extend(PutLocalTimeseries(entity_id, tuple(entries), ttl)
                             for ttl, entries in self.runs)
        out.kept_local += self.count


def _save_timeseries(entity_id: uuid.UUID, o: SaveTimeseries, saved: _Saved,
                     checks: _SeriesChecks, counters: RuleCounters, now_ms: int) -> None:
    entries = _series(o.data, o.ts)
    if entries is None:
        _fail(counters, entity_id, Failed(o.node, "the message data is not "
                     "telemetry (an object of values, {ts, values}, or a list of them)"), now_ms)
        return
    problem = checks.problem(o.data, o.ts, entries)
    if problem is not None:
        _fail(counters, entity_id, Failed(o.node, problem), now_ms)
        return
    saved.add(entries, o.ttl, o.series, o.latest)


def _push(entity_id: uuid.UUID, o: PushToCloud, out: Planned, checks: _SeriesChecks,
          counters: RuleCounters, now_ms: int) -> None:
    lane = Lane.HIGH if o.lane == "HIGH" else Lane.NORMAL
    problem: str | None = None
    kind = o.msg_type
    if kind in _ACTIVITY_TYPES:  # AbstractTbMsgPushNode: telemetry, or attributes of a scope
        kind = ATTRIBUTES_UPDATED if o.metadata.get("scope") else TIMESERIES_UPDATED
    if kind in _ALARM_TYPES or kind in _ALARM_STATE_ACTIONS:
        event = _alarm_event(entity_id, o, lane)
        if event is None:
            _fail(counters, entity_id, Failed(
                o.node, f"an {o.msg_type} message whose data has no alarm id"), now_ms)
            return
        if kind in _ALARM_STATE_ACTIONS:  # the action the message names
            event = replace(event, action=_ALARM_STATE_ACTIONS[kind])
        problem = _unstorable(_check_event, event)
        events = [event]
    elif kind in (POST_TELEMETRY_REQUEST, TIMESERIES_UPDATED):
        entries = _series(o.data, o.ts)
        if entries is None:
            _fail(counters, entity_id, Failed(
                o.node, "the message data is not telemetry"), now_ms)
            return
        problem = checks.problem(o.data, o.ts, entries)
        events = [NewEvent("DEVICE", "DEVICE", entity_id, Action.TIMESERIES_UPDATED,
                           {"ts": ts, "values": dict(values)}, ts, lane)
                  for ts, values in entries]
    elif kind in (POST_ATTRIBUTES_REQUEST, ATTRIBUTES_UPDATED) and isinstance(o.data, dict):
        problem = _scope_problem(o.scope) or _unstorable(_check_attributes, o.ts, o.data)
        body: dict[str, Any] = {"scope": o.scope, "kv": dict(o.data)}
        if kind == ATTRIBUTES_UPDATED:  # ThingsBoard Edge: attributesUpdatedMsg, not a post
            body["attributesUpdated"] = True
        events = [NewEvent("DEVICE", "DEVICE", entity_id, Action.ATTRIBUTES_UPDATED, body,
                           o.ts, lane)]
    elif kind == ATTRIBUTES_DELETED:
        keys = o.data.get("attributes") if isinstance(o.data, dict) else None
        if not (isinstance(keys, list) and keys and all(isinstance(k, str) for k in keys)):
            _fail(counters, entity_id, Failed(
                o.node, "an ATTRIBUTES_DELETED message's data names no attribute keys (an "
                        "\"attributes\" list of key names)"), now_ms)
            return
        problem = _scope_problem(o.scope)
        events = [NewEvent("DEVICE", "DEVICE", entity_id, Action.ATTRIBUTES_DELETED,
                           {"scope": o.scope, "keys": list(keys)}, o.ts, lane)]
    elif kind == TO_SERVER_RPC_REQUEST:
        request = _rpc_request(o)
        if request is None:
            _fail(counters, entity_id, Failed(
                o.node, "a TO_SERVER_RPC_REQUEST message's data has no method"), now_ms)
            return
        event = NewEvent("DEVICE", "DEVICE", entity_id, Action.RPC_CALL, request, o.ts, lane)
        problem = _unstorable(_check_event, event)
        events = [event]
    else:
        _fail(counters, entity_id, Failed(
            o.node, f"{o.msg_type} with this data cannot be pushed by the edge"), now_ms)
        return
    if problem is not None:
        _fail(counters, entity_id, Failed(o.node, problem), now_ms)
        return
    out.events.extend(events)
    out.pushed += 1


def _scope_problem(scope: str) -> str | None:
    if scope in _SCOPES:
        return None
    return f"attribute scope {scope[:40]!r} is not one of {', '.join(_SCOPES)}"


_INT32 = re.compile(r"[+-]?[0-9]{1,10}")


def _rpc_request(o: PushToCloud) -> dict[str, Any] | None:
    """A device's RPC request to the server as ThingsBoard Edge's push node carries it
    (AbstractTbMsgPushNode.addRpcRequestsDetailsIntoEventBody, then
    EdgeMsgConstructorUtils.constructDeviceRpcCallMsg): requestId, serviceId and sessionId
    from the metadata (a requestId that is not an int is 0, as Jackson's asInt reads it),
    ``method`` (text) and ``params`` (JSON text) from the data. None: no method."""
    data = o.data if isinstance(o.data, dict) else {}
    method = data.get("method")
    if method is None or isinstance(method, (dict, list)):
        return None
    text = o.metadata.get("requestId") or ""
    request_id = int(text) if _INT32.fullmatch(text) else 0
    body: dict[str, Any] = {
        "requestId": request_id if -2**31 <= request_id < 2**31 else 0,
        "method": method if isinstance(method, str) else compact_json(method),
        "params": compact_json(data.get("params"))}
    for key in ("serviceId", "sessionId"):
        if o.metadata.get(key) is not None:
            body[key] = o.metadata[key]
    return body


def _alarm_event(entity_id: uuid.UUID, o: PushToCloud, lane: Lane) -> NewEvent | None:
    """The ALARM event of an alarm message (ThingsBoard's Alarm JSON, or an earlier
    edge-sync's alarm with a plain-text id, such as one held in a window): its body is the
    alarm as the edge keeps it (``rules.alarms.event_body``); None when the data names no
    alarm id."""
    action = next((a for flag, a in _ALARM_ACTIONS if o.metadata.get(flag) == "true"),
                  Action.UPDATED)
    body = event_body(o.data, str(entity_id))
    if body is None:
        return None
    return NewEvent("ALARM", "ALARM", uuid.UUID(body["id"]), action, body, o.ts, lane)


def _fail(counters: RuleCounters, entity_id: uuid.UUID, failed: Failed, now_ms: int) -> None:
    """A node failed on a message: counted, and logged at most as often as the runtime
    allows (with the count of the failures not logged), on one line, with the chain's name."""
    counters.failed(failed.node)
    # the first failure not logged makes a line due at the minute's end (the runtime's
    # failure_lines_due, which the shard schedules)
    log_now, suppressed = counters.runtime.should_log_failure(failed.node, now_ms)
    if log_now:
        more = f" ({suppressed} more failures of this node since the last line)" \
            if suppressed else ""
        current = counters.runtime.current()
        _log.bind(node=failed.node, chain=None if current is None else current.chain.name,
                  entity=str(entity_id), suppressed=suppressed).warning(
            "rule node {} failed: {}; the message goes by Failure{}", failed.node,
            one_line(failed.error), more)


def log_failure_lines(counters: RuleCounters, now_ms: int) -> None:
    """The failures not logged of each node whose minute of failure lines has ended, one line
    per node (a burst followed by silence is told in full). The runtime then knows when the
    next such minute ends (``RulesRuntime.failure_lines_due``)."""
    for node, count, chain in counters.runtime.take_failure_lines(now_ms):
        _log.bind(node=node, chain=chain, suppressed=count).warning(
            "rule node {} failed {} more times in the minute after its last failure line; "
            "those messages went by Failure", node, count)


def one_line(text: str) -> str:
    """A failure's text on one line (a log line is one line): a script error's stack frames
    joined with `` | `` after its message, the sandbox's own wrapper frames left out
    (``Error: too hot | at __script (script:1:70)``)."""
    if "\n" not in text:
        return text
    return " | ".join(part for part in (line.strip() for line in text.splitlines())
                      if part and not part.endswith("(wrapper)"))
