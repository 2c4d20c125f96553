"""Batched rule execution (edge_sync/rules: ``ScriptEngine.call_many``, ``RuleEngine.run_many``,
``EntityRules.on_messages``) gives exactly what the one-at-a-time calls give: random chains of
every supported node over random batches (scripts that throw, loop for ever, blow their memory
or return the wrong shape for some messages), plus exact cases."""

from __future__ import annotations

import collections
import math
import random
from typing import Any

import pytest

from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import (
    Failed,
    Outcome,
    PushToCloud,
    RuleEngine,
    SaveTimeseries,
    Visited,
    count_visits,
)
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.sandbox import (
    ScriptEngine,
    ScriptError,
    ScriptLimits,
    ScriptMemoryExceeded,
    ScriptRuntimeError,
    ScriptTimeout,
)
from edge_sync.rules.session import EntityRules, Step

DEV = Originator("DEVICE", "d1")
ORIGIN = ("DEVICE", "d1")
T0 = 1_700_000_000_000
TELEMETRY = "POST_TELEMETRY_REQUEST"
# block_s 0: no blocklist, whose state (errors counted across messages) depends on the order
# the calls come in, which is what these tests vary; tests/unit/test_rules_sandbox.py has its own
LIMITS = ScriptLimits(time_limit_s=0.03, memory_limit_bytes=2 * 1024 * 1024, block_s=0)
LOOP, BLOW, THROW = 13, 17, 7  # msg.v values the scripts misbehave on

BLOW_UP = ("if (msg.v === 17) { var hog = []; "
           "while (true) { hog.push(new Array(100000).fill(msg.v)); } }\n")
LOOP_JS = "if (msg.v === 13) { while (true) {} }\n"


def filter_js(salt: int) -> str:
    return (LOOP_JS + BLOW_UP
            + "if (msg.v === 7) { throw new Error('seven ' + msgType); }\n"
            "if (msg.v === 11) { return 'yes'; }\n"
            f"return (msg.v + {salt}) % 2 === 0;")


def switch_js(salt: int) -> str:
    return (LOOP_JS
            + "if (msg.v === 7) { throw new TypeError('bad ' + msg.v); }\n"
            "if (msg.v === 9) { return 42; }\n"
            "if (msg.v === 5) { return []; }\n"
            f"var k = (msg.v + {salt}) % 4;\n"
            "return k === 3 ? ['a', 'c', 'a'] : ['a', 'b', 'c'][k];")


def transform_js(salt: int) -> str:
    return (LOOP_JS + BLOW_UP
            + "if (msg.v === 3) { return {nope: 1}; }\n"
            "if (msg.v === 7) { throw 'thrown text'; }\n"
            "if (msg.v === 19) { return {msg: {big: 1n}}; }\n"
            f"var out = {{v: (msg.v * 3 + {salt}) % 20, seen: (msg.seen || 0) + 1}};\n"
            "if (msg.v % 5 === 1) { return [{msg: out, metadata: {split: '1'}}, "
            "{msg: {v: msg.v}, msgType: 'POST_ATTRIBUTES_REQUEST'}]; }\n"
            # metadata changed in place, or left out; the type changed alone
            "if (msg.v % 7 === 2) { metadata.touched = 'yes'; "
            "return {msg: out, metadata: metadata, msgType: msgType}; }\n"
            "if (msg.v % 7 === 4) { return {msg: out, msgType: 'POST_ATTRIBUTES_REQUEST'}; }\n"
            "if (msg.v % 7 === 5) { return {msg: out}; }\n"
            "return {msg: out, metadata: metadata, msgType: msgType};")


LOG_JS = (LOOP_JS
          + "if (msg.v === 2) { return {v: msg.v, t: msgType}; }\n"
          "if (msg.v === 7) { throw new RangeError('log ' + msg.v); }\n"
          "return 'v=' + msg.v + ' ts=' + metadata.ts;")

RELATIONS: dict[str, list[str]] = {
    n.MSG_TYPE_SWITCH: ["Post telemetry", "Post attributes", "Other"],
    n.JS_FILTER: ["True", "False", "Failure"],
    n.CHECK_MESSAGE: ["True", "False", "Failure"],
    n.JS_SWITCH: ["a", "b", "c", "Failure"],
    n.TRANSFORM: ["Success", "Failure"],
    n.LOG: ["Success", "Failure"],
    n.SAVE_TIMESERIES: ["Success", "Failure"],
    n.SAVE_ATTRIBUTES: ["Success", "Failure"],
    n.PUSH_TO_CLOUD: ["Success", "Failure"],
    n.DEDUPLICATION: ["Success", "Failure"],
    n.AGGREGATE: ["Success", "Failure"],
    n.CREATE_ALARM: ["Created", "Updated", "Failure"],
    n.CLEAR_ALARM: ["Cleared", "False", "Failure"],
}
PLAIN = [t for t in RELATIONS if t not in (n.CREATE_ALARM, n.CLEAR_ALARM)]


def node_doc(kind: str, rnd: random.Random, i: int) -> dict[str, Any]:
    salt = rnd.randrange(10)
    config: dict[str, Any] = {
        n.MSG_TYPE_SWITCH: {},
        n.JS_FILTER: {"jsScript": filter_js(salt)},
        n.JS_SWITCH: {"jsScript": switch_js(salt)},
        n.TRANSFORM: {"jsScript": transform_js(salt)},
        n.LOG: {"jsScript": LOG_JS},
        n.CHECK_MESSAGE: {"messageNames": rnd.choice([["v"], ["v", "k"], []]),
                          "metadataNames": rnd.choice([[], ["k"]]),
                          "checkAllKeys": rnd.choice([True, False])},
        n.SAVE_TIMESERIES: {"defaultTTL": rnd.choice([0, 60])},
        n.SAVE_ATTRIBUTES: {"scope": "SERVER_SCOPE"},
        n.PUSH_TO_CLOUD: {"scope": "SERVER_SCOPE"},
        n.DEDUPLICATION: {"interval": 1, "strategy": rnd.choice(["FIRST", "LAST", "ALL"]),
                          "outMsgType": TELEMETRY, "maxPendingMsgs": rnd.randint(2, 5)},
        n.AGGREGATE: {"interval": 1, "maxPendingMsgs": rnd.randint(2, 6)},
        n.CREATE_ALARM: {"alarmType": "High ${k}", "severity": "MAJOR",
                         "alarmDetailsBuildJs": "return {v: msg.v};"},
        n.CLEAR_ALARM: {"alarmType": "High ${k}",
                        "alarmDetailsBuildJs": "return metadata.prevAlarmDetails || null;"},
    }[kind]
    return {"type": kind, "name": f"n{i}", "configuration": config,
            "id": {"entityType": "RULE_NODE", "id": f"node-{i}"}}


def random_chain(rnd: random.Random) -> dict[str, Any]:
    """A random acyclic chain (connections go to higher indexes), every node reachable."""
    count = rnd.randint(2, 7)
    kinds = list(PLAIN) + ([n.CREATE_ALARM, n.CLEAR_ALARM] if rnd.random() < 0.2 else [])
    nodes = [rnd.choice(kinds) for _ in range(count)]
    conns: list[tuple[int, int, str]] = []
    for target in range(1, count):
        for _ in range(rnd.randint(1, 2)):
            source = rnd.randrange(target)
            conns.append((source, target, rnd.choice(RELATIONS[nodes[source]])))
    for _ in range(rnd.randint(0, 3)):  # fan-out: more connections, duplicates included
        source = rnd.randrange(count - 1)
        target = rnd.randrange(source + 1, count)
        conns.append((source, target, rnd.choice(RELATIONS[nodes[source]])))
    return {"ruleChain": {"name": "random", "type": "EDGE"},
            "metadata": {"firstNodeIndex": 0,
                         "nodes": [node_doc(kind, rnd, i) for i, kind in enumerate(nodes)],
                         "connections": [{"fromIndex": a, "toIndex": b, "type": r}
                                         for a, b, r in conns]}}


def build(doc: dict[str, Any], max_steps: int = 1000) -> RuleEngine:
    rc, meta = parse(doc)
    ids = iter(f"alarm-{i}" for i in range(1, 10_000))
    return RuleEngine(rc, meta, clock=lambda: 777, limits=LIMITS, max_steps=max_steps,
                      new_id=lambda: next(ids))


def random_msgs(rnd: random.Random, count: int) -> list[RuleMsg]:
    out = []
    for _ in range(count):
        v = LOOP if rnd.random() < 0.02 else rnd.randrange(20)
        kind = rnd.choices([TELEMETRY, "POST_ATTRIBUTES_REQUEST", "ACTIVITY_EVENT"],
                           [6, 3, 1])[0]
        data: Any = {"v": v}
        if rnd.random() < 0.5:
            data["k"] = rnd.choice(["x", "y"])
        if rnd.random() < 0.05:
            data = [v]  # not an object: check fields fails on it
        meta = {"ts": str(T0 + rnd.randrange(1000))} if rnd.random() < 0.7 else {}
        if rnd.random() < 0.5:
            meta["k"] = rnd.choice(["x", "y"])
        out.append(RuleMsg(kind, DEV, data, meta, ts=T0 + rnd.randrange(1000)))
    return out


# 10 seeds in the default suite, 200 with --soak (scripts/test --soak)
SEEDS = [*range(10), *(pytest.param(seed, marks=pytest.mark.soak) for seed in range(10, 200))]


@pytest.mark.parametrize("seed", SEEDS)
def test_run_many_equals_run_one_after_the_other(seed: int) -> None:
    rnd = random.Random(seed)
    doc = random_chain(rnd)
    max_steps = rnd.choice([1000, 1000, 9, 4])
    one, many = build(doc, max_steps), build(doc, max_steps)
    counting = build(doc, max_steps)
    alarms_one: dict[str, Any] = {}
    alarms_many: dict[str, Any] = {}
    alarms_counting: dict[str, Any] = {}
    for _ in range(3):
        msgs = random_msgs(rnd, rnd.randint(0, 14))
        expected = [one.run(m, alarms_one) for m in msgs]
        assert many.run_many(msgs, alarms_many) == expected
        assert alarms_many == alarms_one
        # counting the markers instead: the same outcomes without them, and their exact counts
        visits: dict[str, int] = {}
        assert counting.run_many(msgs, alarms_counting, visits) == [
            [o for o in run if not isinstance(o, Visited)] for run in expected]
        assert visits == dict(collections.Counter(
            o.node for run in expected for o in run if isinstance(o, Visited)))
    msgs = random_msgs(rnd, 5)
    assert many.run_many(msgs) == [one.run(m) for m in msgs]  # no alarms given: each its own


def sequential(rules: EntityRules, engine: RuleEngine, msgs: list[RuleMsg], now: int) -> Step:
    """What on_messages must give: the on_message steps in turn, the Visited markers of their
    outcomes counted per node instead, the windows that woke in their order."""
    steps = [rules.on_message(engine, m, now) for m in msgs]
    visits: dict[str, int] = {}
    for s in steps:
        for o in s.outcomes:
            if isinstance(o, Visited):
                visits[o.node] = visits.get(o.node, 0) + 1
    return Step(tuple(o for s in steps for o in s.outcomes if not isinstance(o, Visited)),
                steps[-1].record if steps else None, any(s.changed for s in steps),
                tuple(j for s in steps for j in s.jumps), tuple(d for s in steps for d in s.dropped),
                visits, tuple(c for s in steps for c in s.closed))


@pytest.mark.parametrize("seed", SEEDS)
def test_on_messages_equals_on_message_one_after_the_other(seed: int) -> None:
    rnd = random.Random(1000 + seed)
    doc = random_chain(rnd)
    one_engine, many_engine = build(doc), build(doc)
    one, many = EntityRules(), EntityRules()
    now = T0
    for _ in range(5):
        now += rnd.choice([0, 300, 1200, 2500, -700])  # windows close; the clock may go back
        msgs = random_msgs(rnd, rnd.randint(1, 14))
        expected = sequential(one, one_engine, msgs, now)
        got = many.on_messages(many_engine, msgs, now)
        assert got == expected
    assert many.on_due(many_engine, now + 5000) == one.on_due(one_engine, now + 5000)


def test_on_messages_of_nothing_does_nothing() -> None:
    engine = build(random_chain(random.Random(3)))
    rules = EntityRules()
    assert rules.on_messages(engine, [], T0) == Step((), None, False, (), ())


# --- the sandbox's batch -------------------------------------------------------------------


def items(*values: Any) -> list[tuple[Any, dict[str, Any], str]]:
    return [({"v": v}, {"ts": "1"}, TELEMETRY) for v in values]


def outcome_of(engine: ScriptEngine, item: tuple[Any, dict[str, Any], str]) -> Any:
    try:
        return engine.call(*item)
    except ScriptError as exc:
        return exc


def same(got: list[Any], expected: list[Any]) -> None:
    """Values equal; errors of the same class with the same text."""
    assert [(type(g), str(g)) if isinstance(g, ScriptError) else g for g in got] == [
        (type(e), str(e)) if isinstance(e, ScriptError) else e for e in expected]


def test_a_looping_item_times_out_alone() -> None:
    engine = ScriptEngine(LOOP_JS + "return msg.v * 2;", limits=LIMITS)
    got = engine.call_many(items(1, LOOP, 2, LOOP, 3))
    assert [g if not isinstance(g, ScriptError) else (type(g), str(g)) for g in got] == [
        2, (ScriptTimeout, "the script ran over its 0.03 s limit"), 4,
        (ScriptTimeout, "the script ran over its 0.03 s limit"), 6]
    assert engine.call_many(items(4, 5)) == [8, 10]


def test_a_memory_blow_up_fails_alone_and_the_rest_run_on_a_fresh_context() -> None:
    engine = ScriptEngine(BLOW_UP + "return msg.v * 2;", limits=LIMITS)
    got = engine.call_many(items(1, BLOW, 2, 3))
    assert [g if not isinstance(g, ScriptError) else (type(g), str(g)) for g in got] == [
        2, (ScriptMemoryExceeded, "the script exceeded its 2097152 byte memory cap"), 4, 6]


def test_each_items_error_is_the_one_call_raises() -> None:
    script = ("if (msg.v === 1) { throw new Error('one'); }\n"
              "if (msg.v === 2) { throw 'text'; }\n"
              "if (msg.v === 3) { return 1n; }\n"
              "if (msg.v === 4) { var o = {}; o.o = o; return o; }\n"
              "if (msg.v === 5) { var f = function (k) { return f(k + 1) + 1; }; return f(0); }\n"
              "if (msg.v === 6) { return undefined; }\n"
              "return [msg.v, metadata.ts, msgType];")
    batch = ScriptEngine(script, limits=LIMITS)
    alone = ScriptEngine(script, limits=LIMITS)
    values = [*items(0, 1, 2, 3, 0, 4, 5, 6, 7), ({"v": math.nan}, {}, TELEMETRY)]
    got = batch.call_many(values)
    same(got, [outcome_of(alone, item) for item in values])
    assert got[0] == [0, "1", TELEMETRY] and got[7] is None
    assert str(got[1]).splitlines()[:2] == ["Error: one", "    at __script (script:1:30)"]
    assert isinstance(got[3], ScriptRuntimeError) and isinstance(got[9], ScriptRuntimeError)
    assert str(got[9]).startswith("the message is not JSON-able")


def test_a_slow_batch_is_split_by_the_time_budget_not_failed() -> None:
    engine = ScriptEngine("var t = Date.now(); while (Date.now() - t < 8) {}\nreturn msg.v;",
                          limits=ScriptLimits(time_limit_s=0.05))
    assert engine.call_many(items(*range(8))) == list(range(8))


def test_shape_checks_per_item() -> None:
    engine = ScriptEngine("return msg.v;")
    verdicts = engine.filter_many(items(True, 1, False))
    assert verdicts[0] is True and verdicts[2] is False
    assert str(verdicts[1]) == "a filter script must return a boolean, not 1"
    names = engine.switch_many(items("a", ["b", "c"], [1]))
    assert names[:2] == [["a"], ["b", "c"]]
    assert str(names[2]) == ("a switch script must return a relation name or an array of "
                             "them, not [1]")
    shaped = ScriptEngine("return msg.v === 0 ? {msg: 1} : 5;").transform_many(items(0, 1))
    assert [(r.msg, r.metadata, r.msg_type) for r in shaped[0]] == [(1, {"ts": "1"}, TELEMETRY)]
    assert str(shaped[1]) == ("a transform script must return {msg, metadata, msgType} or an "
                              "array of them, not 5")


def test_a_transform_batch_gives_what_one_call_at_a_time_gives() -> None:
    """Metadata changed in place, replaced, left out, the type changed alone: the batch's
    results are the single calls'; a result without metadata, or with the metadata it was
    given unchanged, holds the very metadata given (nothing decoded), one with other metadata
    a decoded copy."""
    script = ("if (msg.v === 1) { metadata.ts = '2'; }\n"
              "if (msg.v === 2) { return {msg: msg, metadata: {other: 'x'}, msgType: msgType}; }\n"
              "if (msg.v === 3) { return {msg: msg, msgType: 'ALARM'}; }\n"
              "if (msg.v === 4) { return {msg: msg}; }\n"
              "return {msg: msg, metadata: metadata, msgType: msgType};")
    engine = ScriptEngine(script)
    given = items(0, 1, 2, 3, 4)
    results = engine.transform_many(given)
    assert [[(r.msg, r.metadata, r.msg_type) for r in rs] for rs in results] == [
        [({"v": 0}, {"ts": "1"}, TELEMETRY)],
        [({"v": 1}, {"ts": "2"}, TELEMETRY)],
        [({"v": 2}, {"other": "x"}, TELEMETRY)],
        [({"v": 3}, {"ts": "1"}, "ALARM")],
        [({"v": 4}, {"ts": "1"}, TELEMETRY)],
    ] == [[(r.msg, r.metadata, r.msg_type) for r in engine.transform(*item)]
          for item in given]
    assert [rs[0].metadata is item[1] for rs, item in zip(results, given, strict=True)] == [
        True, False, False, True, True]


def test_metadata_a_transform_gives_back_as_it_went_is_the_messages_own() -> None:
    """In a batch walk, metadata returned untouched (same keys, order and text) keeps the
    message's own mapping; metadata changed in place, or whose index-like keys JavaScript put
    first, is the decoded copy, in JavaScript's order. The outcomes are ``run``'s."""
    doc = {"ruleChain": {"name": "t", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0,
        "nodes": [
            {"type": n.TRANSFORM, "name": "Touch",
             "configuration": {"jsScript": "if (msg.v === 1) { metadata.x = 'y'; }\n"
                                           "return {msg: msg, metadata: metadata, "
                                           "msgType: msgType};"}},
            {"type": n.PUSH_TO_CLOUD, "name": "Push", "configuration": {"scope": "SERVER_SCOPE"}},
        ],
        "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Success"}]}}
    engine = build(doc)
    msgs = [RuleMsg(TELEMETRY, DEV, {"v": v}, meta, ts=T0)
            for v, meta in ((0, {"ts": "5", "b": "1"}), (1, {"ts": "5"}),
                            (2, {"b": "1", "7": "seven"}))]
    runs = engine.run_many(msgs, {}, {})
    one_by_one = [count_visits(engine.run(m), {}) for m in msgs]
    assert runs == one_by_one  # (a mapping's == ignores the key order: compared below)
    pushes = [o for run in runs for o in run if isinstance(o, PushToCloud)]
    assert [p.metadata is m.metadata for p, m in zip(pushes, msgs, strict=True)] == [
        True, False, False]
    assert [list(p.metadata.items()) for p in pushes] == [
        list(p.metadata.items()) for run in one_by_one for p in run
        if isinstance(p, PushToCloud)] == [
        [("ts", "5"), ("b", "1")], [("ts", "5"), ("x", "y")], [("7", "seven"), ("b", "1")]]


TRICKY_TRANSFORMS = [
    # results the batch must give back whole (not slimmed), as one call at a time gives them
    "return {msg: msg, metadata: metadata, msgType: msgType, debug: BigInt(1)};",
    "var o = {}; o.o = o; return {msg: msg, x: o};",
    "return {msg: msg, get x() { throw new Error('boom'); }};",
    "return {msg: {a: 1}, toJSON: function () { return {msg: 'other'}; }};",
    "return Object.create({msg: msg});",
    "var o = {}; Object.defineProperty(o, 'msg', {value: msg, enumerable: false}); return o;",
    "var o = Object.create({msgType: 'OTHER'}); o.msg = msg; return o;",
    "var n = 0; return {msg: msg, get metadata() { n++; return n === 1 ? {a: 'x'} : metadata; }};",
    "var n = 0; return {msg: msg, metadata: metadata, get msgType() { n++; "
    "return n === 1 ? 'ONE' : msgType; }};",
    "return {msg: function () {}, metadata: metadata, msgType: msgType};",
    "return {msg: {toJSON: function () { return undefined; }}, metadata: metadata};",
    "metadata['2'] = 'two'; return {msg: msg, metadata: metadata, msgType: msgType};",
    "return {msg: msg, metadata: {ts: 1}, msgType: msgType};",
    "return {msg: msg, metadata: null};",
    "return {msg: msg, msgType: 7};",
    "return {msg: null};",
    "return {toJSON: function (k) { return {msg: 'key=' + k}; }};",
]


@pytest.mark.parametrize("script", TRICKY_TRANSFORMS)
def test_a_transform_batch_equals_one_call_at_a_time_on_odd_results(script: str) -> None:
    engine = ScriptEngine(script)
    given = [({"v": v}, {"b": "1", "ts": "5"}, TELEMETRY) for v in (1, 2, 3)]

    def shown(result: Any) -> Any:
        if isinstance(result, ScriptError):
            return (type(result), str(result))
        return [(r.msg, r.metadata, list(r.metadata), r.msg_type) for r in result]

    one_by_one = []
    for item in given:
        try:
            one_by_one.append(shown(engine.transform(*item)))
        except ScriptError as exc:
            one_by_one.append(shown(exc))
    assert [shown(r) for r in engine.transform_many(given)] == one_by_one


def test_a_batch_value_is_serialized_under_the_key_value() -> None:
    """A value's toJSON sees the key it had in the per-item result ("value"), batch or not."""
    engine = ScriptEngine("return {toJSON: function (k) { return 'key=' + k; }};")
    assert engine.call_many(items(1, 2)) == [engine.call(*items(1)[0])] * 2 == ["key=value"] * 2


# --- exact order of a fan-out ----------------------------------------------------------------


def test_multi_branch_outcomes_keep_each_messages_depth_first_order() -> None:
    doc = {"ruleChain": {"name": "t", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0,
        "nodes": [
            {"type": n.JS_SWITCH, "name": "Split",
             "configuration": {"jsScript": "return msg.v > 1 ? ['hot', 'all'] : ['all'];"}},
            {"type": n.PUSH_TO_CLOUD, "name": "Push", "configuration": {"scope": "SERVER_SCOPE"}},
            {"type": n.SAVE_TIMESERIES, "name": "Save", "configuration": {"defaultTTL": 0}},
            {"type": n.JS_FILTER, "name": "Odd",
             "configuration": {"jsScript": "if (msg.v === 7) { throw new Error('no'); }\n"
                                           "return msg.v % 2 === 1;"}},
        ],
        "connections": [{"fromIndex": 0, "toIndex": 1, "type": "hot"},
                        {"fromIndex": 0, "toIndex": 3, "type": "all"},
                        {"fromIndex": 0, "toIndex": 2, "type": "all"},
                        {"fromIndex": 3, "toIndex": 1, "type": "True"},
                        {"fromIndex": 3, "toIndex": 2, "type": "Failure"}]}}
    engine = build(doc)
    msgs = [RuleMsg(TELEMETRY, DEV, {"v": v}, {}, ts=T0 + v) for v in (3, 0, 7)]
    split, push, save, odd = (f"nodes[{i}] {name!r}" for i, name in
                              enumerate(("Split", "Push", "Save", "Odd")))

    def pushed(v: int) -> PushToCloud:
        return PushToCloud(push, ORIGIN, TELEMETRY, "SERVER_SCOPE", "NORMAL", {"v": v}, {},
                           T0 + v)

    def saved(v: int) -> SaveTimeseries:
        return SaveTimeseries(save, ORIGIN, T0 + v, {"v": v}, 0)

    expected: list[list[Outcome]] = [
        [Visited(split), Visited(push), pushed(3), Visited(odd), Visited(push), pushed(3),
         Visited(save), saved(3)],
        [Visited(split), Visited(odd), Visited(save), saved(0)],
        [Visited(split), Visited(push), pushed(7), Visited(odd),
         Failed(odd, "ScriptRuntimeError: Error: no\n    at __script (script:1:30)\n"
                     "    at <anonymous> (wrapper)\n"),
         Visited(save), saved(7), Visited(save), saved(7)],
    ]
    assert engine.run_many(msgs) == expected
    assert [engine.run(m) for m in msgs] == expected
