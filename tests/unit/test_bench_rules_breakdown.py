"""`scripts/bench rules --breakdown` (bench/rules_breakdown.py): while its block runs, the agent's
functions count the thread CPU spent in them by label (each node's batch, the script calls), and
afterwards every function is the original again."""

from __future__ import annotations

from collections import Counter

from bench.rules import INGEST_CHAIN
from bench.rules_breakdown import cpu_per_label, per_entry
from edge_sync.actors import entity, queue_actor
from edge_sync.rules import engine, sandbox, session
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import PushToCloud, RuleEngine
from edge_sync.rules.message import Originator, RuleMsg

DEV = Originator("DEVICE", "d1")


def telemetry(count: int) -> list[RuleMsg]:
    return [RuleMsg("POST_TELEMETRY_REQUEST", DEV, {"temperature": i}, {"ts": str(i)}, i)
            for i in range(count)]


def test_each_node_and_the_scripts_are_counted_while_the_block_runs() -> None:
    with cpu_per_label() as seconds:
        chain = RuleEngine(*parse(INGEST_CHAIN), clock=lambda: 0)
        runs = chain.run_many(telemetry(50), {}, {})
    pushed = [o for run in runs for o in run if isinstance(o, PushToCloud)]
    assert [p.data["temperature_f"] for p in pushed] == [i * 9 / 5 + 32 for i in range(50)]
    assert set(seconds) == {"rules.compile", "rules.engine", "rules.js",
                            *(f"rules.node[{i}]" for i in range(6))}
    assert all(value > 0 for value in seconds.values())
    # each label is its whole function: the engine holds its nodes, the scripts' nodes the calls
    nodes = sum(seconds[f"rules.node[{i}]"] for i in range(6))
    assert seconds["rules.engine"] >= nodes
    assert seconds["rules.node[2]"] + seconds["rules.node[3]"] >= seconds["rules.js"]


def test_the_functions_are_the_originals_again_afterwards() -> None:
    owners = [(entity.EntityActor, "handle"), (entity.EntityActor, "_run_chain"),
              (entity, "telemetry_msgs"), (entity, "plan"), (session.EntityRules, "on_messages"),
              (engine.RuleEngine, "run_many"), (engine.RuleEngine, "_visit_many"),
              (queue_actor.QueueActor, "on_receive"), (queue_actor.QueueActor, "_append"),
              (queue_actor.QueueActor, "_mutate"), (sandbox.ScriptEngine, "_build")]
    before = [getattr(owner, name) for owner, name in owners]
    with cpu_per_label():
        assert all(getattr(owner, name) is not fn
                   for (owner, name), fn in zip(owners, before, strict=True))
    assert all(getattr(owner, name) is fn for (owner, name), fn in zip(owners, before, strict=True))


def test_per_entry_is_microseconds_per_entry_largest_first() -> None:
    assert per_entry(Counter({"a": 0.001, "b": 0.003}), 100) == {"b": 30.0, "a": 10.0}
    assert per_entry(Counter({"a": 1.0}), 0) == {}
