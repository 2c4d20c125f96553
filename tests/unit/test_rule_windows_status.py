"""Open rule windows as the status and the log tell of them: windows of a node not in the chain
are counted once when dropped, also when the first commit of the drop fails; one line per shard
for the windows a chain swap orphans; with no chain in force the windows wait (not "dropped");
windows dropped are shown in the status; one ISO time function; one way to build the script
limits from the configuration. A real store, a real RulesRuntime, real QuickJS; the queue
commits (or fails) each Append at once."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edge_sync.actors.entity import EntityActor, OrphanedWindows
from edge_sync.actors.messages import (
    Append,
    ExpireRpcs,
    PostTelemetry,
    PutRuleState,
    RuleChainChanged,
)
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import RuleCounters
from edge_sync.actors.shard import ShardActor
from edge_sync.app import EdgeApp
from edge_sync.cli.edge import _rules_text
from edge_sync.common.iso_time import iso_ms
from edge_sync.config import load_edge_config
from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.rules.sandbox import ScriptLimits
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_chains import CLOUD
from edge_sync.storage.rule_store import RuleStore
from tests.helpers.log_capture import log_records
from tests.helpers.wait import wait_until

T0 = 1_700_000_000_000
INTERVAL_S = 60
AGG = "'agg' (AggregateNode)"
DEVICES = [uuid.UUID(f"00000000-0000-4000-8000-00000000c00{i}") for i in range(1, 4)]


def windows_chain(with_agg: bool) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {"type": n.MSG_TYPE_SWITCH, "name": "switch", "configuration": {"version": 0}},
        {"type": n.PUSH_TO_CLOUD, "name": "push", "configuration": {"scope": "SERVER_SCOPE"}}]
    connections = [(0, 1, "Post attributes")]
    if with_agg:
        nodes.append({"type": n.AGGREGATE, "name": "agg",
                      "configuration": {"interval": INTERVAL_S}})
        connections += [(0, 2, "Post telemetry"), (2, 1, "Success")]
    return {"ruleChain": {"name": "Boiler ops", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "nodes": nodes,
        "connections": [{"fromIndex": a, "toIndex": b, "type": r} for a, b, r in connections]}}


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def now_ms(self) -> int:
        return self.ms


class Queue:
    """Commits each Append at once, writing its rule state to the store as the QueueActor
    does; ``fail_next`` Appends fail instead."""

    def __init__(self, store: LmdbStore) -> None:
        self.store, self.rules = store, RuleStore(store)
        self.fail_next = 0
        self.committed = 0

    def tell(self, message: Append) -> None:
        assert message.reply is not None
        if self.fail_next:
            self.fail_next -= 1
            message.reply.set_exception(OSError("disk full"))
            return
        for m in message.mutations:
            if isinstance(m, PutRuleState):
                self.store.write(lambda txn, m=m: self.rules.put_state(txn, m.entity_id, m.record))
        self.committed += 1
        message.reply.set_result(range(self.committed, self.committed + 1))


def rig(tmp_path: Path) -> tuple[Clock, Queue, RulesRuntime, RuleCounters, ShardActor]:
    clock = Clock()
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    queue = Queue(store)
    runtime = RulesRuntime()
    runtime.install(*parse(windows_chain(with_agg=True)), "file:boiler.json", T0)
    counters = RuleCounters(runtime)
    shard = ShardActor(lambda _reason: None, 0, queue, passivate_after_s=600.0,  # type: ignore[arg-type]
                       store=store, shards=1, clock=clock,  # type: ignore[arg-type]
                       rules=lambda i: ShardRules(counters, store, now_ms=clock.now_ms,
                                                  new_id=lambda: str(uuid.uuid4()), shard=i))
    return clock, queue, runtime, counters, shard


def post(shard: ShardActor, device: uuid.UUID, values: list[int]) -> Future[Any]:
    reply: Future[Any] = Future()
    shard.on_receive(PostTelemetry(device, tuple((T0 + i, (("v", v),))
                                                 for i, v in enumerate(values)), reply))
    return reply


def drain(shard: ShardActor) -> None:
    """What the shard told itself (an entity's RuleStateStale), handled in order."""
    while not shard.actor_inbox.empty():
        shard.on_receive(shard.actor_inbox.get().message)


def test_windows_dropped_after_a_failed_commit_are_counted_and_logged_once(tmp_path: Path
                                                                           ) -> None:
    clock, queue, runtime, counters, shard = rig(tmp_path)
    assert post(shard, DEVICES[0], [1, 2, 3]).result(0) == range(1, 2)
    runtime.install(*parse(windows_chain(with_agg=False)), "file:boiler.json", T0 + 1)
    shard.on_receive(RuleChainChanged())
    clock.ms = T0 + INTERVAL_S * 1000
    queue.fail_next = 1
    with log_records() as records:
        shard.on_receive(ExpireRpcs())  # dropped, but the commit fails: the store keeps them
        drain(shard)  # RuleStateStale: read again, the entity woken again
        assert counters.windows.dropped_windows == {}
        shard.on_receive(ExpireRpcs())  # dropped again, committed this time
    dropped = [r for r in records if r["message"].startswith("1 rule windows dropped")]
    assert [r["message"] for r in dropped] == [
        f"1 rule windows dropped at their deadline with the 3 acknowledged messages they held: "
        f"node {AGG} is not in the chain in force 'Boiler ops'"]
    assert (counters.windows.dropped_windows, counters.windows.dropped_messages) == (
        {AGG: 1}, {AGG: 3})
    assert queue.committed == 2


def test_a_swap_orphaning_windows_of_many_entities_is_one_warning_with_each_entity_at_debug(
        tmp_path: Path) -> None:
    clock, queue, runtime, counters, shard = rig(tmp_path)
    for i, device in enumerate(DEVICES):
        assert post(shard, device, list(range(i + 1))).result(0) == range(i + 1, i + 2)
    runtime.install(*parse(windows_chain(with_agg=False)), "file:boiler.json", T0 + 1)
    rules = ShardRules(counters, queue.store, now_ms=clock.now_ms, new_id=lambda: "x", shard=0)
    orphans = OrphanedWindows()
    with log_records() as records:
        for device in DEVICES:  # as a shard binds its entities to the new chain
            entity = EntityActor(device, queue, 0.0, now_ms=clock.now_ms,  # type: ignore[arg-type]
                                 tell_self=lambda _m: None, rules=rules)
            assert entity.load_rules(clock.ms, orphans)[:2] == (1, DEVICES.index(device) + 1)
        orphans.log(0)
    lines = [(r["level"].name, r["message"]) for r in records
             if r["extra"].get("component") == "rules"
             and not r["message"].startswith("rule chain compiled")]
    drop = iso_ms(T0 + INTERVAL_S * 1000)
    each = [("DEBUG", f"1 open rule windows of node {AGG} hold {k} acknowledged messages: the "
                      f"node is not in the chain in force 'Boiler ops'; they will be dropped at "
                      f"{drop} unless a chain with that node goes in force before")
            for k in (1, 2, 3)]
    assert lines == [*each, (
        "WARNING", f"3 open rule windows of 3 entities hold 6 acknowledged messages: their nodes "
                   f"({AGG}) are not in the chain in force 'Boiler ops'; they will be dropped "
                   f"from {drop} to {drop} unless a chain with those nodes goes in force before "
                   f"(each entity at DEBUG)")]
    summary = records[-1]["extra"]
    assert (summary["shard"], summary["nodes"], summary["entities"], summary["windows"],
            summary["messages"], summary["drop_at_ms"], summary["last_drop_at_ms"]) == (
        0, [AGG], 3, 3, 6, T0 + INTERVAL_S * 1000, T0 + INTERVAL_S * 1000)


def test_no_orphan_no_summary_line() -> None:
    with log_records() as records:
        OrphanedWindows().log(0)
    assert list(records) == []


def app(tmp_path: Path) -> EdgeApp:
    return EdgeApp(load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "1",
        "EDGE_MQTT_ENABLED": "false"}))


def test_with_no_chain_in_force_open_windows_wait_and_dropped_windows_are_shown(
        tmp_path: Path) -> None:
    edge = app(tmp_path)
    try:
        tally = edge.rule_counters.windows
        tally.set(DEVICES[0], {"nodes[2] 'agg'": (1, 40)})
        tally.set(DEVICES[1], {AGG: (2, 5)})
        tally.dropped(AGG, 3, 12)
        status = edge._rules_status()
        assert status["chain"] is None
        assert (status["orphaned_windows"], status["waiting_windows"]) == ([], [
            {"node": AGG, "entities": 1, "open_windows": 2, "held_messages": 5},
            {"node": "nodes[2] 'agg'", "entities": 1, "open_windows": 1, "held_messages": 40}])
        assert (status["dropped_windows"], status["dropped_messages"]) == ({AGG: 3}, {AGG: 12})

        edge.rules.install(*parse(windows_chain(with_agg=False)), "file:boiler.json", T0)
        status = edge._rules_status()
        assert (status["orphaned_windows"], status["waiting_windows"]) == ([
            {"node": AGG, "entities": 1, "open_windows": 2, "held_messages": 5},
            {"node": "nodes[2] 'agg'", "entities": 1, "open_windows": 1, "held_messages": 40}],
            [])
    finally:
        edge.store.close()


def test_the_status_text_says_windows_wait_with_no_chain_in_force() -> None:
    rules = {"chain": None, "nodes": [], "orphaned_windows": [],
             "waiting_windows": [{"node": AGG, "entities": 1, "open_windows": 2,
                                  "held_messages": 5}],
             "dropped_windows": {AGG: 3}, "dropped_messages": {AGG: 12}, "last_refusal": None}
    assert _rules_text(rules, running=True) == [
        "rule chain:   none in force: every accepted message goes to the cloud",
        f"  {AGG}: open windows 2 (5 messages held), wait for a chain in force",
        "  dropped at their deadline (node not in the chain): 3 windows, 12 messages lost",
    ]


def test_iso_time_is_one_function_with_a_fallback() -> None:
    assert iso_ms(T0 + 123) == "2023-11-14T22:13:20.123Z"
    assert (iso_ms(10**20), iso_ms(10**20, f"{10**20} ms")) == ("", f"{10**20} ms")


def test_script_limits_of_the_configuration_carry_the_blocklist_settings() -> None:
    rules = load_edge_config(env={
        "EDGE_RULES_SCRIPT_TIMEOUT_MS": "250", "EDGE_RULES_SCRIPT_MEMORY_MB": "16",
        "EDGE_RULES_SCRIPT_MAX_ERRORS": "5", "EDGE_RULES_SCRIPT_BLOCK_DURATION_S": "120"}).rules
    limits = ScriptLimits.of_config(rules)
    assert (limits.time_limit_s, limits.memory_limit_bytes, limits.max_errors,
            limits.block_s) == (0.25, 16 * 1024 * 1024, 5, 120)


def test_shards_are_told_when_the_chain_is_cleared_and_their_windows_wait(tmp_path: Path
                                                                          ) -> None:
    """The cloud removed its root chain: the chain in force is cleared and every shard is told,
    so windows on disk it had not loaded are tallied (waiting for a chain)."""
    _, queue, _, _, shard = rig(tmp_path / "rig")
    assert post(shard, DEVICES[0], [1, 2, 3]).result(0) == range(1, 2)
    with queue.store.read() as txn:
        record = queue.rules.state(txn, DEVICES[0])
    edge = app(tmp_path).start()
    try:
        edge.rules.install(*parse(windows_chain(with_agg=True)), CLOUD, T0)
        edge.store.write(lambda txn: RuleStore(edge.store).put_state(txn, DEVICES[0], record))
        assert edge._rules_status()["orphaned_windows"] == []  # not loaded: nothing told
        edge._rules_changed()  # no root chain in the store: cleared
        assert edge.rules.current() is None
        waiting = wait_until(lambda: edge._rules_status()["waiting_windows"], timeout=10,
                             what="the shard's windows tallied after the clear")
        assert waiting == [{"node": AGG, "entities": 1, "open_windows": 1, "held_messages": 3}]
    finally:
        edge.stop()


AGG_BOUND = "nodes[2] 'agg' (AggregateNode)"


def test_each_window_that_wakes_is_one_debug_line_and_late_ones_keep_their_warnings(
        tmp_path: Path) -> None:
    """A window closing on time says so at DEBUG (device, node, messages, deadline, how late);
    one woken late keeps its WARNING (the clock jumped) or, loaded overdue at start, the
    shard's INFO line."""
    clock, queue, _, counters, shard = rig(tmp_path)
    device = DEVICES[0]
    assert post(shard, device, [1, 2, 3]).result(0) == range(1, 2)
    due = T0 + INTERVAL_S * 1000
    clock.ms = due
    with log_records() as records:
        shard.on_receive(ExpireRpcs())
    woke = [r for r in records if r["message"].startswith("rule window")]
    assert [(r["level"].name, r["message"]) for r in woke] == [(
        "DEBUG", f"rule window of node {AGG_BOUND} for device {device} woke: 3 messages sent "
                 f"on in 1 outputs, 0 kept; due at {iso_ms(due)}, 0 ms late")]
    assert {k: woke[0]["extra"][k] for k in ("entity", "node", "messages", "kept",
                                               "deadline_ms", "late_ms")} == {
        "entity": str(device), "node": AGG_BOUND, "messages": 3, "kept": 0,
        "deadline_ms": due, "late_ms": 0}

    post(shard, device, [4, 5]).result(0)  # committed; its window opens at `due`
    clock.ms = due + 3 * INTERVAL_S * 1000 + 500  # the clock jumped past two more intervals
    with log_records() as records:
        shard.on_receive(ExpireRpcs())
    late = 2 * INTERVAL_S * 1000 + 500
    assert [(r["level"].name, r["message"]) for r in records
            if r["extra"].get("component") == "rules"] == [
        ("DEBUG", f"rule window of node {AGG_BOUND} for device {device} woke: 2 messages sent "
                  f"on in 1 outputs, 0 kept; due at {iso_ms(due + INTERVAL_S * 1000)}, {late} "
                  f"ms late"),
        ("WARNING", f"edge clock jumped forward by {late} ms while a rule window was open: the "
                    f"window wakes once; the skipped intervals give nothing")]

    post(shard, device, [6]).result(0)  # its window is left open: the agent stops
    opened = clock.ms
    clock.ms = opened + INTERVAL_S * 1000 + 7_000  # started again after its deadline
    again = ShardActor(lambda _reason: None, 0, queue, passivate_after_s=600.0,  # type: ignore[arg-type]
                       store=queue.store, shards=1, clock=clock,  # type: ignore[arg-type]
                       rules=lambda i: ShardRules(counters, queue.store, now_ms=clock.now_ms,
                                                  new_id=lambda: str(uuid.uuid4()), shard=i))
    with log_records() as records:
        again._load_rule_states()
    assert [(r["level"].name, r["message"]) for r in records
            if r["message"].startswith(("rule window", "rule state"))] == [
        ("DEBUG", f"rule window of node {AGG_BOUND} for device {device} woke: 1 messages sent "
                  f"on in 1 outputs, 0 kept; due at {iso_ms(opened + INTERVAL_S * 1000)}, "
                  f"7000 ms late"),
        ("INFO", "rule state of 1 entities loaded: 1 open rule windows (1 held messages), 1 "
                 "overdue (their deadline passed while the agent was down): closed now")]
