"""A looping rule script on a shard: one device's body of looping messages holds the shard for
the blocklist's few time limits (ThingsBoard's AbstractScriptInvokeService: blocked after
max_errors timeouts), not one limit per message, so another device of the same shard is
answered as usual; the failures no line told of are logged when their minute ends, on the
shard's deadline timer, no new failure needed; and once the block has run out the script runs
again. Real QuickJS, a real store; the clocks are the test's."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edge_sync.actors.messages import ExpireRpcs, PostTelemetry
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import RuleCounters
from edge_sync.actors.shard import FAILURE_LINES, ShardActor
from edge_sync.rules.chain import parse
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.rules.sandbox import ScriptLimits
from edge_sync.storage.env import LmdbStore
from tests.helpers.instant_queue import InstantQueue
from tests.helpers.log_capture import log_records

T0 = 1_700_000_000_000
LIMIT_S = 0.1
LOOPER = uuid.UUID("00000000-0000-4000-8000-00000000b001")
NEIGHBOUR = uuid.UUID("00000000-0000-4000-8000-00000000b008")
FILTER = "nodes[0] 'hot?'"
PUSH = "nodes[1] 'push'"
CHAIN = {"ruleChain": {"name": "Boiler ops", "type": "CORE"}, "metadata": {
    "firstNodeIndex": 0, "nodes": [
        {"type": "org.thingsboard.rule.engine.filter.TbJsFilterNode", "name": "hot?",
         "configuration": {"scriptLang": "JS", "jsScript":
                           "if (msg.temperature === 13) { while (true) {} }\nreturn true;"}},
        {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "push",
         "configuration": {"scope": "SERVER_SCOPE"}}],
    "connections": [{"fromIndex": 0, "toIndex": 1, "type": "True"},
                    {"fromIndex": 0, "toIndex": 1, "type": "Failure"}]}}


class Clock:
    """The shard's wall clock (ms) and the blocklist's (s), moved together by hand."""

    def __init__(self) -> None:
        self.ms = T0

    def now_ms(self) -> int:
        return self.ms

    def seconds(self) -> float:
        return self.ms / 1000


def post(shard: ShardActor, device: uuid.UUID, temperatures: list[int], ts: int) -> Future[Any]:
    reply: Future[Any] = Future()
    shard.on_receive(PostTelemetry(device, tuple(
        (ts + i, (("temperature", t),)) for i, t in enumerate(temperatures)), reply))
    return reply


def test_a_looping_script_holds_its_shard_for_max_errors_limits_and_the_shard_goes_on(
        tmp_path: Path) -> None:
    clock, queue = Clock(), InstantQueue()
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    runtime = RulesRuntime()
    runtime.install(*parse(CHAIN), "file:boiler.json", T0)
    counters = RuleCounters(runtime)
    limits = ScriptLimits(time_limit_s=LIMIT_S, clock=clock.seconds)
    shard = ShardActor(lambda _reason: None, 0, queue, passivate_after_s=600.0,  # type: ignore[arg-type]
                       store=store, shards=1, clock=clock,  # type: ignore[arg-type]
                       rules=lambda i: ShardRules(counters, store, now_ms=clock.now_ms,
                                                  new_id=lambda: str(uuid.uuid4()),
                                                  limits=limits, shard=i))
    try:
        with log_records() as records:
            started = time.thread_time()  # the shard's thread: the scripts' run time
            looper = post(shard, LOOPER, [13] * 100 + [55], T0)
            spent = time.thread_time() - started
            neighbour = post(shard, NEIGHBOUR, [20], T0)
        # the looper's body: three timeouts, then blocked: every message left, its good one
        # and the neighbour's too (the script is blocked, whoever sent the message), goes by
        # Failure at once; all of it stored and answered
        # three limits, plus the rest of the work on 102 messages (a tenth of a second or two
        # on a loaded machine); a limit per message would be 10 s
        assert spent < 3 * LIMIT_S + 0.25, spent
        assert looper.result(0) == range(1, 2) and neighbour.result(0) == range(2, 3)
        assert [len(a.events) for a in queue.appends] == [101, 1]
        assert runtime.counts() == {FILTER: {"in": 102, "failed": 102},
                                    PUSH: {"in": 102, "failed": 0}}
        lines = [(r["level"].name, r["message"]) for r in records
                 if r["extra"].get("component") == "rules" and r["level"].name != "DEBUG"]
        assert lines == [
            ("WARNING", f"rule node {FILTER} of chain 'Boiler ops': its script is blocked for "
                        "60 s after 3 timeouts or memory blow-ups; until then its messages go "
                        "by Failure at once"),
            ("WARNING", f"rule node {FILTER} failed: ScriptTimeout: the script ran over its "
                        "0.1 s limit; the message goes by Failure"),
        ]
        # the 101 failures not logged (2 timeouts, 99 blocked) are told when the minute ends
        assert shard._scheduled[FAILURE_LINES] == T0 + 60_000
        clock.ms = T0 + 59_999
        with log_records() as records:
            shard.on_receive(ExpireRpcs())
        assert [r["message"] for r in records] == []
        clock.ms = T0 + 60_000  # also when the block runs out: the script runs again
        with log_records() as records:
            shard.on_receive(ExpireRpcs())
            again = post(shard, LOOPER, [21], T0 + 1_000)
        assert [(r["level"].name, r["message"], r["extra"].get("suppressed")) for r in records
                if r["extra"].get("component") == "rules"] == [
            ("WARNING", f"rule node {FILTER} failed 101 more times in the minute after its "
                        "last failure line; those messages went by Failure", 101),
            ("INFO", f"rule node {FILTER} of chain 'Boiler ops': its script is no longer "
                     "blocked (blocked 60 s): it runs again", None),
        ]
        assert again.result(0) == range(3, 4)
        assert runtime.counts()[FILTER] == {"in": 103, "failed": 102}
        assert [e.body["values"] for e in queue.appends[2].events] == [{"temperature": 21}]
        assert FAILURE_LINES not in shard._scheduled
    finally:
        store.close()
