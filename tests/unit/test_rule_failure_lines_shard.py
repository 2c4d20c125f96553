"""A shard and the rule chain in force, beyond one device command: failures raised when rule
windows close (on the shard's deadline timer, or overdue when the saved windows are loaded)
are told in full when their minute ends, as those of a command are; and a shard builds its
engine again whenever another chain is in force, even one that has the same version. Real
QuickJS, a real store; the clock is the test's."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edge_sync.actors.messages import (
    ExpireRpcs,
    PostTelemetry,
    PutRuleState,
    RuleChainChanged,
)
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import RuleCounters
from edge_sync.actors.shard import FAILURE_LINES, ShardActor
from edge_sync.rules.chain import parse
from edge_sync.rules.runtime import ChainInForce, RulesRuntime, digest
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_store import RuleStore
from tests.helpers.instant_queue import InstantQueue
from tests.helpers.log_capture import log_records

T0 = 1_700_000_000_000
DEVICES = (uuid.UUID("00000000-0000-4000-8000-00000000c001"),
           uuid.UUID("00000000-0000-4000-8000-00000000c002"))
CHECK = "nodes[1] 'check'"


def chain(script: str = "throw new Error('bad reading');") -> dict[str, Any]:
    """A 10 s deduplication window whose output goes to a script that fails."""
    return {"ruleChain": {"name": "Boiler ops", "type": "CORE"}, "metadata": {
        "firstNodeIndex": 0, "nodes": [
            {"type": "org.thingsboard.rule.engine.deduplication.TbMsgDeduplicationNode",
             "name": "dedup", "configuration": {"interval": 10, "strategy": "LAST",
                                                "maxPendingMsgs": 100, "maxRetries": 3}},
            {"type": "org.thingsboard.rule.engine.filter.TbJsFilterNode", "name": "check",
             "configuration": {"scriptLang": "JS", "jsScript": script}},
            {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "push",
             "configuration": {"scope": "SERVER_SCOPE"}}],
        "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Success"},
                        {"fromIndex": 1, "toIndex": 2, "type": "True"},
                        {"fromIndex": 1, "toIndex": 2, "type": "Failure"}]}}


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def now_ms(self) -> int:
        return self.ms


def shard_of(store: LmdbStore, clock: Clock, queue: InstantQueue) -> tuple[ShardActor, RulesRuntime]:
    runtime = RulesRuntime()
    runtime.install(*parse(chain()), "file:boiler.json", T0)
    counters = RuleCounters(runtime)
    shard = ShardActor(lambda _reason: None, 0, queue, passivate_after_s=600.0,  # type: ignore[arg-type]
                       store=store, shards=1, clock=clock,  # type: ignore[arg-type]
                       rules=lambda i: ShardRules(counters, store, now_ms=clock.now_ms,
                                                  new_id=lambda: str(uuid.uuid4()), shard=i))
    return shard, runtime


def post(shard: ShardActor, device: uuid.UUID, ts: int) -> None:
    reply: Future[Any] = Future()
    shard.on_receive(PostTelemetry(device, ((ts, (("temperature", 20),)),), reply))
    assert reply.result(0) is not None


def failure_lines(records: list[Any]) -> list[tuple[str, Any]]:
    return [(r["message"], r["extra"].get("suppressed")) for r in records
            if r["extra"].get("component") == "rules" and r["message"].startswith("rule node")]


def test_failures_of_windows_closed_on_the_deadline_timer_are_told_when_their_minute_ends(
        tmp_path: Path) -> None:
    clock, queue = Clock(), InstantQueue()
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    try:
        shard, runtime = shard_of(store, clock, queue)
        for device in DEVICES:
            post(shard, device, T0)
        assert FAILURE_LINES not in shard._scheduled
        clock.ms = T0 + 10_000  # both windows close: the script fails on each output
        with log_records() as records:
            shard.on_receive(ExpireRpcs())
        assert runtime.counts()[CHECK] == {"in": 2, "failed": 2}
        assert failure_lines(records) == [
            (f"rule node {CHECK} failed: ScriptRuntimeError: Error: bad reading | at __script "
             "(script:1:11); the message goes by Failure", 0)]
        # the second failure is not logged: the shard wakes when its minute ends
        assert shard._scheduled[FAILURE_LINES] == T0 + 70_000
        clock.ms = T0 + 70_000
        with log_records() as records:
            shard.on_receive(ExpireRpcs())
        assert failure_lines(records) == [
            (f"rule node {CHECK} failed 1 more times in the minute after its last failure "
             "line; those messages went by Failure", 1)]
        assert FAILURE_LINES not in shard._scheduled
    finally:
        store.close()


def test_failures_of_overdue_windows_closed_when_loaded_are_told_when_their_minute_ends(
        tmp_path: Path) -> None:
    clock, queue = Clock(), InstantQueue()
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    try:
        before, _ = shard_of(store, clock, queue)
        for device in DEVICES:
            post(before, device, T0)
        rules = RuleStore(store)
        states = [m for a in queue.appends for m in a.mutations if isinstance(m, PutRuleState)]
        assert len(states) == 2

        def keep(txn: Any) -> None:
            for state in states:
                rules.put_state(txn, state.entity_id, state.record)

        store.write(keep)
        # a new incarnation (a restart) finds both windows overdue and closes them at once
        clock.ms = T0 + 10_000
        shard, runtime = shard_of(store, clock, InstantQueue())
        with log_records() as records:
            shard.on_receive(RuleChainChanged())
        assert runtime.counts()[CHECK] == {"in": 2, "failed": 2}
        assert len(failure_lines(records)) == 1
        assert shard._scheduled[FAILURE_LINES] == T0 + 70_000
    finally:
        store.close()


def test_a_shard_builds_its_engine_again_for_another_chain_of_the_same_version(
        tmp_path: Path) -> None:
    """A chain kept in the store takes its kept version again (rules/source.py), so a version
    alone does not say which chain is in force."""
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    try:
        runtime = RulesRuntime()
        first = runtime.install(*parse(chain()), "cloud", T0)
        assert isinstance(first, ChainInForce)
        rules = ShardRules(RuleCounters(runtime), store, now_ms=lambda: T0,
                           new_id=lambda: str(uuid.uuid4()))
        engine = rules.engine()
        assert engine is not None
        other = parse(chain("return true;"))
        again = runtime.install(*other, "cloud", T0 + 1, kept=(digest(*other), 1, T0))
        assert isinstance(again, ChainInForce) and again.version == first.version == 1
        rebuilt = rules.engine()
        assert rebuilt is not None and rebuilt is not engine
        assert rebuilt is rules.engine()  # the same chain: built once
    finally:
        store.close()
