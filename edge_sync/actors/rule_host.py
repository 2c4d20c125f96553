"""One shard's access to the rule chain in force: its own compiled RuleEngine (a script
context belongs to one thread), rebuilt when the chain in force changes, and the store reads its
entities need (their saved rule state, a device's name and type for the message metadata).

Owns nothing durable: the chain is the RulesRuntime's, the rule state the store's.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger

from edge_sync.actors.rule_outcomes import BlockedScript, RuleCounters, log_failure_lines
from edge_sync.rules.engine import RuleEngine
from edge_sync.rules.runtime import ChainInForce
from edge_sync.rules.sandbox import ScriptLimits
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_store import RuleStore


class ShardRules:
    """Runs on its shard's thread only."""

    def __init__(self, counters: RuleCounters, store: LmdbStore, *,
                 now_ms: Callable[[], int], new_id: Callable[[], str],
                 limits: ScriptLimits | None = None, shard: int = 0) -> None:
        self.counters = counters
        self.runtime = counters.runtime
        self._store = store
        self._rules = RuleStore(store)
        self._entities = EntityStore(store)
        self._now_ms = now_ms
        self._new_id = new_id
        self._limits = limits
        self._engine: RuleEngine | None = None
        self._chain: ChainInForce | None = None  # the chain self._engine runs
        # both as one value, replaced whole: read by other threads (``script_blocks``)
        self._running: tuple[RuleEngine, ChainInForce] | None = None
        self._shard = shard
        # a block's since/until in edge time (ms), taken at its first read: the block's own
        # clock is monotonic, and converting it again at each read would move them by a ms
        self._block_times: dict[tuple[int, float, float], tuple[int, int]] = {}
        self._block_lock = threading.Lock()
        self._log = logger.bind(component="rules", shard=shard)
        counters.blocks.attach(shard, self.script_blocks)

    def engine(self) -> RuleEngine | None:
        """The engine of the chain in force (None: no chain, today's behaviour); built again
        whenever another chain is in force. Compared by identity: the runtime makes a new
        ``ChainInForce`` at every swap only, and a version alone does not name one chain (a
        chain kept in the store takes its kept version again)."""
        current = self.runtime.current()
        if current is None:
            self._engine, self._chain, self._running = None, None, None
            return None
        if self._engine is None or current is not self._chain:
            self._engine = RuleEngine(current.chain, current.meta, clock=self._now_ms,
                                      limits=self._limits, new_id=self._new_id)
            self._chain = current
            self._running = (self._engine, current)
            self._log.bind(chain=current.chain.name, version=current.version).debug(
                "rule chain compiled on this shard")
        return self._engine

    def script_blocks(self) -> list[BlockedScript]:
        """The scripts this shard's engine has blocked now, when it runs the chain in force
        (an engine of a chain swapped out blocks nothing any more: its next message builds the
        new one). Any thread: called when the status or the metrics ask, never per message."""
        running = self._running
        if running is None:
            return []
        engine, chain = running
        if chain is not self.runtime.current():
            return []
        blocks = engine.script_blocks()
        now_ms = self._now_ms()
        out = []
        with self._block_lock:
            seen = self._block_times
            self._block_times = {}  # the blocks over (or of an engine gone) are forgotten
            for node, block in blocks:
                key = (node.index, block.since, block.until)
                times = seen.get(key) or (now_ms - round(block.blocked_for_s * 1000),
                                          now_ms + round(block.left_s * 1000))
                self._block_times[key] = times
                out.append(BlockedScript(chain.chain.name, chain.digest, node.describe(),
                                         node.index, self._shard, *times, block.errors,
                                         block.last_error))
        return out

    def failure_lines_due(self) -> int | None:
        """When (ms) failures not logged are due a line (``log_failure_lines``); O(1)."""
        return self.runtime.failure_lines_due()

    def log_failure_lines(self, now_ms: int) -> None:
        log_failure_lines(self.counters, now_ms)

    def load_state(self, entity_id: uuid.UUID) -> dict[str, Any] | None:
        with self._store.read() as txn:
            return self._rules.state(txn, entity_id)

    def entities_with_state(self) -> list[uuid.UUID]:
        with self._store.read() as txn:
            return self._rules.entities_with_state(txn)

    def describe(self, device_id: uuid.UUID) -> tuple[str | None, str | None]:
        """The device's name and type (profile name), for the metadata of its messages."""
        with self._store.read() as txn:
            device = self._entities.device(txn, device_id)
        if device is None:
            return None, None
        return device.name, device.type
