"""The rule chain in force and what it did, held for every thread (one lock, no I/O, no clock
reads: times are given): which chain runs (``ChainInForce``: source, version, digest), the last
chain refused and why (``Refusal``), per-node counts (messages in, failures) for status and
metrics, and a per-node rate limit on failure log lines (with when the next line of failures
not logged is due).

Lock order: this runtime's lock is taken first, its listeners are called under it (the
metrics' ``RuleCounters`` takes its own lock there, and prometheus_client its child locks
under that); nothing called under those calls back into the runtime. Nothing else nests.

Owns: installing a chain (validated first, its scripts compiled: a chain with problems is
refused as a whole and the chain in force stays), its version (1, 2, ... at every swap,
going on from the highest an earlier run kept: ``resume_version``;
installing the same chain from the same source again is no swap), its digest (sha256 of the
canonical JSON of chain + metadata, first 12 hex digits), clearing it (no chain: the edge does
what it did without rules), the counts (reset at every swap: they are the chain in force's)
and the status snapshot.
Building a ``RuleEngine`` from the chain is the caller's (one per thread: scripts are bound to
the thread that runs them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from edge_sync.rules.chain import RuleChain, RuleChainMetaData
from edge_sync.rules.sandbox import ScriptLimits
from edge_sync.rules.validate import validate

FAILURE_LOG_INTERVAL_MS = 60_000
DIGEST_HEX = 12

_log = logger.bind(component="rules")


@dataclass(frozen=True)
class ChainInForce:
    chain: RuleChain
    meta: RuleChainMetaData
    source: str
    """``file:/path/x.json`` or ``cloud``"""
    version: int
    """1, 2, ...: increases at every swap"""
    digest: str
    """sha256 of the canonical JSON of chain + metadata, first 12 hex digits"""
    loaded_at_ms: int
    since_ms: int | None = None
    """when this chain (this digest from this source) first went in force, perhaps in an
    earlier run (rules/source.py keeps it in the store); None: ``loaded_at_ms``"""

    @property
    def in_force_since_ms(self) -> int:
        return self.loaded_at_ms if self.since_ms is None else self.since_ms


@dataclass(frozen=True)
class Refusal:
    source: str
    at_ms: int
    problems: tuple[str, ...]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def digest(chain: RuleChain, meta: RuleChainMetaData) -> str:
    """The chain's identity: sha256 of its canonical JSON (sorted keys, no spaces), 12 hex."""
    text = json.dumps({"chain": _plain(chain), "meta": _plain(meta)}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_HEX]


ChainListener = Callable[[ChainInForce | Refusal | None], None]
"""Told a new chain in force (``ChainInForce``), a refusal (``Refusal``) or a clear (None)."""


class RulesRuntime:
    """The chain in force, the last refusal, the counts; any thread. Listeners (``listen``:
    the metrics) are told of every swap, refusal and clear."""

    def __init__(self, limits: ScriptLimits | None = None) -> None:
        """``limits``: the script limits the shards run scripts under, which validation
        compiles them under (a script too large for the memory cap is refused here)."""
        self._limits = limits
        self._lock = threading.Lock()
        self._current: ChainInForce | None = None
        self._version = 0
        self._refusal: Refusal | None = None
        self._cleared: str | None = None
        self._counts: dict[str, dict[str, int]] = {}
        self._logged: dict[str, tuple[int, int]] = {}  # node -> (last line at, suppressed)
        self._left: list[tuple[int, str, int, str]] = []  # failures not logged of chains
        # swapped out or cleared, still to be told: (last line at, node, suppressed, chain)
        self._lines_due: int | None = None  # the earliest end of a minute of failures not
        # logged (written under the lock; read without: one attribute, O(1))
        self._listeners: list[ChainListener] = []

    def listen(self, listener: ChainListener) -> None:
        """Tell ``listener`` of every change from now on, in the order they are made: a chain
        put in force, a refusal recorded with ``refuse`` (once per refusal the chain source
        logs: a chain ``install`` finds invalid is the caller's to record), a clear. Called on
        the thread that made it, under this runtime's lock (so it must not call the runtime);
        installing the same chain again tells nothing. A listener that raises is logged and
        the change stands (the others are told all the same)."""
        with self._lock:
            self._listeners.append(listener)

    def _tell(self, event: ChainInForce | Refusal | None) -> None:
        """With the lock held. The change is made already: a listener's failure must not
        stop the caller from finishing it (keeping the chain, its log line)."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:  # logged: the change stands
                what = "a clear" if event is None else type(event).__name__
                _log.bind(error=str(exc)).error(
                    "rule chain listener failed on {}: {}: {}", what, type(exc).__name__, exc)

    def current(self) -> ChainInForce | None:
        with self._lock:
            return self._current

    @property
    def last_refusal(self) -> Refusal | None:
        with self._lock:
            return self._refusal

    @property
    def version(self) -> int:
        """The last version installed (0: none ever); stays after a clear."""
        with self._lock:
            return self._version

    def resume_version(self, version: int) -> None:
        """At start: versions go on from ``version`` (the highest an earlier run kept), so a
        chain's version means the same chain across restarts."""
        with self._lock:
            self._version = max(self._version, version)

    def install(self, chain: RuleChain, meta: RuleChainMetaData, source: str,
                now_ms: int, *, kept: tuple[str, int, int] | None = None
                ) -> ChainInForce | Refusal:
        """The chain in force after installing this one: refused when it has problems (the
        chain in force unchanged; the refusal is returned, not recorded: ``refuse`` records
        the one the caller logs, so ``last_refusal`` is always a refusal somebody was told
        of); the current one, version unchanged, when it is the same chain (digest) from the
        same source; else a new version.
        ``kept``: (digest, version, since_ms) of the last chain in force from this source in an
        earlier run; when this chain has that digest it takes that version and since again."""
        problems = validate(chain, meta, self._limits)
        if problems:
            return Refusal(source, now_ms, tuple(str(p) for p in problems))
        fingerprint = digest(chain, meta)
        with self._lock:
            current = self._current
            if current is not None and current.digest == fingerprint \
                    and current.source == source:
                return current
            since: int | None
            if kept is not None and kept[0] == fingerprint:
                version, since = kept[1], kept[2]
                self._version = max(self._version, version)
            else:
                self._version += 1
                version, since = self._version, None
            self._current = ChainInForce(chain, meta, source, version, fingerprint, now_ms,
                                         since)
            self._cleared = None
            self._counts = {}
            self._carry(current)
            self._tell(self._current)
            return self._current

    def refuse(self, source: str, problems: list[str] | tuple[str, ...],
               now_ms: int) -> Refusal:
        """Record a chain refused (one that does not parse, or that ``install`` refused): kept
        as ``last_refusal`` and told to the listeners; the chain in force stays."""
        refusal = Refusal(source, now_ms, tuple(problems))
        with self._lock:
            self._refusal = refusal
            self._tell(refusal)
        return refusal

    def clear(self, reason: str) -> None:
        """No chain in force (the edge does what it does without rules); ``reason`` shows in
        the snapshot."""
        with self._lock:
            self._carry(self._current)
            self._current = None
            self._cleared = reason
            self._counts = {}
            self._tell(None)

    def count(self, node: str, visited: int = 0, failed: int = 0) -> None:
        """Add to a node's counts (``node``: the outcomes' ``node``, its describe())."""
        with self._lock:
            counts = self._counts.setdefault(node, {"in": 0, "failed": 0})
            counts["in"] += visited
            counts["failed"] += failed

    def counts(self) -> dict[str, dict[str, int]]:
        """node -> {"in": n, "failed": n} (a copy), nodes counted so far."""
        with self._lock:
            return {k: dict(v) for k, v in self._counts.items()}

    def snapshot(self) -> dict[str, Any]:
        """For status and the API: the chain in force (None fields without one), every node
        with its counts, the last refusal, and why there is no chain (``cleared``)."""
        with self._lock:
            current, refusal = self._current, self._refusal
            counts = {k: dict(v) for k, v in self._counts.items()}
            cleared, version = self._cleared, self._version
        nodes = []
        if current is not None:
            for node in current.meta.nodes:
                c = counts.get(node.describe(), {})
                nodes.append({"node": node.describe(), "type": node.type,
                              "in": c.get("in", 0), "failed": c.get("failed", 0)})
        return {
            "chain": None if current is None else current.chain.name,
            "id": None if current is None else current.chain.id,
            "source": None if current is None else current.source,
            "version": version if current is None else current.version,
            "digest": None if current is None else current.digest,
            "loaded_at_ms": None if current is None else current.loaded_at_ms,
            "since_ms": None if current is None else current.in_force_since_ms,
            "nodes": nodes,
            "last_refusal": None if refusal is None else {
                "source": refusal.source, "at_ms": refusal.at_ms,
                "problems": list(refusal.problems)},
            "cleared": cleared,
        }

    def should_log_failure(self, node: str, now_ms: int) -> tuple[bool, int]:
        """At most one failure log line per node per 60 s: (log now?, failures not logged since
        that node's last line). The first failure of a node logs; a clock gone back logs.
        The first failure not logged after a line makes a line due at that minute's end
        (``failure_lines_due``)."""
        with self._lock:
            last = self._logged.get(node)
            if last is None or now_ms - last[0] >= FAILURE_LOG_INTERVAL_MS or now_ms < last[0]:
                self._logged[node] = (now_ms, 0)
                if last is not None and last[1]:  # its failures not logged are in this line
                    self._lines_due = self._earliest_due()
                return True, 0 if last is None else last[1]
            self._logged[node] = (last[0], last[1] + 1)
            if not last[1]:
                due = last[0] + FAILURE_LOG_INTERVAL_MS
                if self._lines_due is None or due < self._lines_due:
                    self._lines_due = due
            return False, last[1] + 1

    def _carry(self, going: ChainInForce | None) -> None:
        """Under the lock, at a swap or a clear: the failure lines start afresh for the chain
        coming in; the failures not logged of the one going out are still told when their
        minute ends (``take_failure_lines``, with its name)."""
        if going is not None:
            self._left.extend((last, node, n, going.chain.name)
                              for node, (last, n) in self._logged.items() if n)
        self._logged = {}
        self._lines_due = self._earliest_due()

    def take_failure_lines(self, now_ms: int) -> list[tuple[str, int, str | None]]:
        """The nodes whose minute of failure lines has ended with failures not logged, how
        many, and their chain's name: (node, count, chain), oldest line first; taken (the
        node's next line says none). A chain swapped out or cleared since has its own."""
        with self._lock:
            chain = None if self._current is None else self._current.chain.name
            due = [(last, node, n, chain) for node, (last, n) in self._logged.items()
                   if n and now_ms - last >= FAILURE_LOG_INTERVAL_MS]
            for last, node, _, _ in due:
                self._logged[node] = (last, 0)
            left = [e for e in self._left if now_ms - e[0] >= FAILURE_LOG_INTERVAL_MS]
            if left:
                self._left = [e for e in self._left if now_ms - e[0] < FAILURE_LOG_INTERVAL_MS]
            if due or left:
                self._lines_due = self._earliest_due()
            return [(node, n, name) for _, node, n, name in sorted(left + due,
                                                                    key=lambda e: e[0])]

    def failure_lines_due(self) -> int | None:
        """When the first minute of failure lines with failures not logged ends (ms), if any.
        O(1), no lock: the shards ask after every command."""
        return self._lines_due

    def _earliest_due(self) -> int | None:
        """Under the lock (when failures not logged are told, at a swap: rare)."""
        lasts = [last for last, n in self._logged.values() if n]
        lasts.extend(entry[0] for entry in self._left)
        return min(lasts) + FAILURE_LOG_INTERVAL_MS if lasts else None
