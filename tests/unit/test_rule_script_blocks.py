"""A blocked rule script is shown, not only logged: which node of which chain, since when,
until when and why (the last timeout or memory blow-up), over the shards (each blocks its own
copy of the chain's scripts), in the status (``edge-sync status``, the admin API's rules view)
and as ``edge_sync_rule_script_blocked{chain,digest,node}`` in /metrics. Read when asked, from
the shards' engines: real QuickJS, a real store, a real RulesRuntime and Metrics registry (read
back through prometheus-client's parser); the blocklist's clock is moved by hand."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import BlockedScript, RuleCounters
from edge_sync.app import EdgeApp
from edge_sync.cli.edge import _rules_text
from edge_sync.common.iso_time import iso_ms
from edge_sync.config import load_edge_config
from edge_sync.metrics import Metrics
from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.runtime import RulesRuntime, digest
from edge_sync.rules.sandbox import ScriptBlock, ScriptEngine, ScriptLimits, ScriptTimeout
from edge_sync.storage.env import LmdbStore

T0 = 1_700_000_000_000
LOOP = 13
FILTER = "nodes[0] 'hot?'"
TIMEOUT = "ScriptTimeout: the script ran over its 0.05 s limit"


class Clocks:
    """The edge's clock (ms) and the blocklist's (monotonic s), moved together by hand."""

    def __init__(self) -> None:
        self.ms = T0
        self.s = 1_000.0

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.s

    def advance(self, seconds: float) -> None:
        self.s += seconds
        self.ms += round(seconds * 1000)


def chain_doc(name: str = "Boiler ops") -> dict[str, Any]:
    nodes = [
        {"type": n.JS_FILTER, "name": "hot?", "configuration": {
            "jsScript": f"if (msg.v === {LOOP}) {{ while (true) {{}} }}\nreturn msg.v > 50;"}},
        {"type": n.LOG, "name": "log", "configuration": {"jsScript": "return 'v=' + msg.v;"}},
        {"type": n.PUSH_TO_CLOUD, "name": "push", "configuration": {"scope": "SERVER_SCOPE"}}]
    return {"ruleChain": {"name": name, "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "nodes": nodes,
        "connections": [{"fromIndex": 0, "toIndex": 1, "type": "True"},
                        {"fromIndex": 0, "toIndex": 2, "type": "True"}]}}


def shard_rules(counters: RuleCounters, store: LmdbStore, clocks: Clocks, shard: int
                ) -> ShardRules:
    return ShardRules(counters, store, now_ms=clocks.now_ms, new_id=lambda: str(uuid.uuid4()),
                      limits=ScriptLimits(time_limit_s=0.05, max_errors=2, block_s=60.0,
                                          clock=clocks.monotonic), shard=shard)


def loop_twice(rules: ShardRules) -> None:
    """Two looping messages through the shard's engine: its copy of the filter is blocked."""
    engine = rules.engine()
    assert engine is not None
    for _ in range(2):
        engine.run(RuleMsg("POST_TELEMETRY_REQUEST", Originator("DEVICE", "d1"), {"v": LOOP}, {},
                           ts=T0))


def blocked_samples(m: Metrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            if s.name == "edge_sync_rule_script_blocked":
                out[",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))] = s.value
    return out


def test_the_sandbox_tells_its_block_without_changing_it() -> None:
    clocks = Clocks()
    engine = ScriptEngine(f"if (msg.v === {LOOP}) {{ while (true) {{}} }}\nreturn 1;",
                          limits=ScriptLimits(time_limit_s=0.05, max_errors=2, block_s=60.0,
                                              clock=clocks.monotonic))
    assert [type(v) for v in engine.call_many([({"v": LOOP}, {}, "T")])] == [ScriptTimeout]
    assert engine.block() is None  # one error: counted, not blocked
    clocks.advance(1.0)
    assert [type(v) for v in engine.call_many([({"v": LOOP}, {}, "T")])] == [ScriptTimeout]
    clocks.advance(20.0)
    assert engine.block() == ScriptBlock(20.0, 40.0, 2, TIMEOUT, 1_001.0, 1_061.0)
    clocks.advance(40.0)
    assert engine.block() is None  # expired: read as such before any call ends it
    assert engine.call({"v": 1}, {}, "T") == 1


def test_blocks_of_every_shard_are_one_entry_per_node_and_one_gauge(tmp_path: Path) -> None:
    clocks, m, runtime = Clocks(), Metrics(), RulesRuntime()
    counters = RuleCounters(runtime, m)
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    try:
        rc, meta = parse(chain_doc())
        runtime.install(rc, meta, "file:boiler.json", T0)
        d = digest(rc, meta)
        shards = [shard_rules(counters, store, clocks, i) for i in range(2)]
        labels = {f'chain="Boiler ops",digest="{d}",node="{FILTER}"',
                  f'chain="Boiler ops",digest="{d}",node="nodes[1] \'log\'"'}
        # every script node of the chain in force has its series at 0 (not the push node)
        assert blocked_samples(m) == dict.fromkeys(labels, 0.0)
        assert counters.blocks.snapshot() == []

        loop_twice(shards[0])
        first = clocks.ms
        assert counters.blocks.read() == [
            BlockedScript("Boiler ops", d, FILTER, 0, 0, first, first + 60_000, 2, TIMEOUT)]
        clocks.ms += 3  # the edge's clock drifts from the blocklist's: a block reads the same
        assert [(b.since_ms, b.until_ms) for b in counters.blocks.read()] == [
            (first, first + 60_000)]
        clocks.ms -= 3
        clocks.advance(10.0)
        loop_twice(shards[1])  # blocked on shard 1 too, 10 s later
        assert counters.blocks.snapshot() == [
            {"chain": "Boiler ops", "digest": d, "node": FILTER, "shards": [0, 1],
             "since_ms": first, "until_ms": first + 70_000, "errors": 2, "last_error": TIMEOUT}]
        assert blocked_samples(m) == {
            f'chain="Boiler ops",digest="{d}",node="{FILTER}"': 1.0,
            f'chain="Boiler ops",digest="{d}",node="nodes[1] \'log\'"': 0.0}

        clocks.advance(50.0)  # shard 0's block is over, shard 1's not yet
        assert [(b["shards"], b["since_ms"]) for b in counters.blocks.snapshot()] == [
            ([1], first + 10_000)]
        clocks.advance(10.0)
        assert counters.blocks.snapshot() == []
        assert set(blocked_samples(m).values()) == {0.0}

        loop_twice(shards[0])
        assert len(counters.blocks.snapshot()) == 1
        rc2, meta2 = parse(chain_doc("Boiler ops v2"))  # a swap: that engine runs no more
        runtime.install(rc2, meta2, "file:boiler.json", T0 + 1)
        d2 = digest(rc2, meta2)
        assert counters.blocks.snapshot() == []
        assert blocked_samples(m) == {
            f'chain="Boiler ops v2",digest="{d2}",node="{FILTER}"': 0.0,
            f'chain="Boiler ops v2",digest="{d2}",node="nodes[1] \'log\'"': 0.0}
    finally:
        store.close()


def test_the_status_and_the_admin_api_show_a_blocked_script(tmp_path: Path) -> None:
    edge = EdgeApp(load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "1",
        "EDGE_MQTT_ENABLED": "false"}))
    try:
        clocks = Clocks()
        edge.rules.install(*parse(chain_doc()), "file:boiler.json", T0)
        assert edge._rules_status()["blocked_scripts"] == []
        loop_twice(shard_rules(edge.rule_counters, edge.store, clocks, 0))
        status = edge._rules_status()  # GET /api/rules, and "rules" in GET /api/status
        since, until = clocks.ms, clocks.ms + 60_000
        assert status["blocked_scripts"] == [
            {"chain": "Boiler ops", "digest": status["digest"], "node": FILTER, "shards": [0],
             "since_ms": since, "since": iso_ms(since), "until_ms": until,
             "until": iso_ms(until), "errors": 2, "last_error": TIMEOUT}]
        assert _rules_text(status, running=True)[-1] == (
            f"  {FILTER}: script blocked since {iso_ms(since)} until {iso_ms(until)} on shard 0 "
            f"after 2 timeouts or memory blow-ups (last: {TIMEOUT}): its messages go by Failure")
    finally:
        edge.store.close()
