"""The rule-script sandbox: ThingsBoard filter, transform and switch scripts in JS and TBEL, their
typed errors, the time limit and memory cap, and that nothing outside the sandbox is reachable."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from edge_sync.rules import nodes
from edge_sync.rules.sandbox import (
    ScriptBlocked,
    ScriptEngine,
    ScriptLimits,
    ScriptMemoryExceeded,
    ScriptRuntimeError,
    ScriptSyntaxError,
    ScriptTimeout,
    TransformResult,
    tbel_to_js,
)
from tests.helpers.log_capture import log_records

META = {"deviceName": "boiler-1", "deviceType": "boiler", "ts": "1700000000000"}
TELEMETRY = "POST_TELEMETRY_REQUEST"


def test_filter_returns_the_exact_boolean() -> None:
    engine = ScriptEngine("return msg.temperature > 20 && metadata.deviceType === 'boiler';")
    assert engine.filter({"temperature": 21}, META, TELEMETRY) is True
    assert engine.filter({"temperature": 19}, META, TELEMETRY) is False


def test_filter_that_returns_no_boolean_is_a_runtime_error() -> None:
    engine = ScriptEngine("return 1;")
    with pytest.raises(ScriptRuntimeError, match=r"^a filter script must return a boolean, not 1$"):
        engine.filter({}, META, TELEMETRY)


def test_transform_returns_exact_msg_metadata_and_type() -> None:
    engine = ScriptEngine(
        "var out = {tempF: msg.temperature * 9 / 5 + 32};\n"
        "metadata.unit = 'F';\n"
        "return {msg: out, metadata: metadata, msgType: 'CONVERTED'};")
    assert engine.transform({"temperature": 100}, META, TELEMETRY) == [
        TransformResult({"tempF": 212}, {**META, "unit": "F"}, "CONVERTED")]


def test_transform_may_return_several_messages_and_keep_the_incoming_type() -> None:
    engine = ScriptEngine("return [{msg: {a: 1}}, {msg: {b: 2}, metadata: {x: '1'}}];")
    assert engine.transform({}, META, TELEMETRY) == [
        TransformResult({"a": 1}, META, TELEMETRY), TransformResult({"b": 2}, {"x": "1"}, TELEMETRY)]


@pytest.mark.parametrize("lang", ["JS", "TBEL"])
def test_a_transform_result_may_leave_out_msg_metadata_and_msg_type(lang: str) -> None:
    """ThingsBoard's unbindMsg: a missing msg keeps the incoming data, a missing metadata the
    incoming metadata, a missing or empty msgType the incoming type."""
    data = {"temperature": 21}
    assert ScriptEngine("return {msgType: 'POST_ATTRIBUTES_REQUEST'};", lang).transform(
        data, META, TELEMETRY) == [TransformResult(data, META, "POST_ATTRIBUTES_REQUEST")]
    assert ScriptEngine("return {metadata: {a: 'b'}, msgType: ''};", lang).transform(
        data, META, TELEMETRY) == [TransformResult(data, {"a": "b"}, TELEMETRY)]
    assert ScriptEngine("return {};", lang).transform(data, META, TELEMETRY) == [
        TransformResult(data, META, TELEMETRY)]
    assert ScriptEngine("return {msg: 1, metadata: null};", lang).transform(
        data, META, TELEMETRY) == [TransformResult(1, META, TELEMETRY)]


@pytest.mark.parametrize("lang", ["JS", "TBEL"])
def test_a_transform_returning_an_empty_array_is_an_error(lang: str) -> None:
    """TbAbstractTransformNode.transformSuccess sends the message by Failure: no message must
    not vanish without a trace."""
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("return [];", lang).transform({}, META, TELEMETRY)
    assert str(caught.value) == ("a transform script returned an empty array: no message "
                                 "(ThingsBoard sends the incoming message by Failure)")


@pytest.mark.parametrize("lang", ["JS", "TBEL"])
def test_transform_metadata_values_become_text_as_thingsboard_makes_them(lang: str) -> None:
    """JS: Jackson's conversion to Map<String, String> (booleans and numbers as text, a number
    as Java writes a double); a null value leaves the key out (TbMsgMetaData.putValue). TBEL:
    toString of each value, nulls filtered out. The same for scalars."""
    engine = ScriptEngine(
        "return {msg: msg, metadata: {flag: true, off: false, n: 12, big: 12345678901234567890,"
        " f: 2.5, g: 12345678.9, tiny: 0.0001, z: null, s: 'text'}};", lang)
    assert engine.transform({}, META, TELEMETRY) == [TransformResult({}, {
        "flag": "true", "off": "false", "n": "12", "big": "12345678901234567000", "f": "2.5",
        "g": "1.23456789E7", "tiny": "1.0E-4", "s": "text"}, TELEMETRY)]


def test_transform_object_metadata_values_fail_in_js_and_are_java_text_in_tbel() -> None:
    script = "return {msg: msg, metadata: {o: {a: 1, b: null, c: [1, 'x', null]}}};"
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine(script).transform({}, META, TELEMETRY)
    assert str(caught.value) == (
        "a transform's metadata.o is an object: metadata values are text, numbers or booleans "
        "(ThingsBoard cannot make it a String)")
    assert ScriptEngine(script, "TBEL").transform({}, META, TELEMETRY) == [
        TransformResult({}, {"o": "{a=1, c=[1, x, null]}"}, TELEMETRY)]


def test_transform_results_where_js_and_tbel_differ_in_thingsboard() -> None:
    """RuleNodeJsScriptEngine.unbindMsg reads Jackson nodes: a null msg is the data null, a
    msgType as asText() (null "null", 7 "7", an object "": the old type), an array item that is
    not an object has none of the keys (a copy of the incoming message). The TBEL engine reads
    Java maps, where a key put to null is absent, and refuses an item that is not a map."""
    data = {"v": 1}
    js = ScriptEngine("if (msg.v === 1) { return {msg: null, msgType: null}; }\n"
                      "if (msg.v === 2) { return {msg: 2, msgType: 7}; }\n"
                      "if (msg.v === 3) { return {msg: 3, msgType: {a: 1}}; }\n"
                      "return [5, {msg: 4}];")
    tbel = ScriptEngine("if (msg.v == 1) { return {msg: null, msgType: null}; }\n"
                        "if (msg.v == 2) { return {msg: 2, msgType: 7}; }\n"
                        "return [5, {msg: 4}];", "TBEL")
    assert [js.transform({"v": v}, META, TELEMETRY) for v in (1, 2, 3, 4)] == [
        [TransformResult(None, META, "null")], [TransformResult(2, META, "7")],
        [TransformResult(3, META, TELEMETRY)],
        [TransformResult({"v": 4}, META, TELEMETRY), TransformResult(4, META, TELEMETRY)]]
    assert [tbel.transform({"v": v}, META, TELEMETRY) for v in (1, 2)] == [
        [TransformResult(data, META, TELEMETRY)], [TransformResult(2, META, "7")]]
    with pytest.raises(ScriptRuntimeError) as caught:
        tbel.transform({"v": 4}, META, TELEMETRY)
    assert str(caught.value) == ("a transform script must return {msg, metadata, msgType} or "
                                 "an array of them, not 5 in an array")
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("return {msg: 1, metadata: 'x'};").transform({}, META, TELEMETRY)
    assert str(caught.value) == ("a transform's metadata must be an object, not 'x' "
                                 "(ThingsBoard cannot make it a Map<String, String>)")


def test_switch_returns_relation_names() -> None:
    engine = ScriptEngine(
        "if (msgType === 'POST_TELEMETRY_REQUEST') {\n"
        "  return msg.temperature > 90 ? ['Telemetry', 'Alarm'] : 'Telemetry';\n"
        "}\n"
        "return 'Other';")
    assert engine.switch({"temperature": 95}, META, TELEMETRY) == ["Telemetry", "Alarm"]
    assert engine.switch({"temperature": 20}, META, TELEMETRY) == ["Telemetry"]
    assert engine.switch({}, META, "POST_ATTRIBUTES_REQUEST") == ["Other"]


def test_undefined_is_none_and_values_round_trip_as_json() -> None:
    assert ScriptEngine("var x = 1;").call({}, META, TELEMETRY) is None
    value = {"s": "é\n\"", "n": 1.5, "b": False, "z": None, "l": [1, [2, {}]]}
    assert ScriptEngine("return msg;").call(value, META, TELEMETRY) == value


def test_syntax_error_is_reported_at_compile_with_the_engines_message() -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine("var x = ;\nreturn true;")
    assert str(caught.value).splitlines()[0] == "SyntaxError: unexpected token in expression: ';'"
    assert str(caught.value).splitlines()[1].strip() == "at script:1:9"


def test_a_throw_is_a_runtime_error_with_its_message() -> None:
    engine = ScriptEngine("if (msg.bad) { throw new Error('bad reading ' + msg.bad); }\nreturn true;")
    with pytest.raises(ScriptRuntimeError) as caught:
        engine.filter({"bad": 7}, META, TELEMETRY)
    assert [line.strip() for line in str(caught.value).splitlines()] == [
        "Error: bad reading 7", "at __script (script:1:49)", "at <anonymous> (wrapper)"]
    assert engine.filter({}, META, TELEMETRY) is True


def test_an_infinite_loop_is_stopped_within_the_limit_and_the_next_call_works() -> None:
    engine = ScriptEngine("if (msg.spin) { while (true) {} }\nreturn msg.v;",
                          limits=ScriptLimits(time_limit_s=0.05))
    started = time.monotonic()
    with pytest.raises(ScriptTimeout, match=r"^the script ran over its 0.05 s limit$"):
        engine.call({"spin": True}, META, TELEMETRY)
    assert time.monotonic() - started < 1.0
    assert engine.call({"v": 3}, META, TELEMETRY) == 3


def test_a_catch_in_the_script_does_not_swallow_the_timeout() -> None:
    engine = ScriptEngine("try { while (true) {} } catch (e) { return 'caught'; }",
                          limits=ScriptLimits(time_limit_s=0.05))
    with pytest.raises(ScriptTimeout):
        engine.call({}, META, TELEMETRY)


def test_an_error_past_the_scripts_try_is_a_runtime_error_however_long_the_call_waited() -> None:
    """A value JSON.stringify refuses (a BigInt) throws in the wrapper, past any try of the
    script: a runtime error, also when the call took longer than the time limit on the wall
    clock because its thread waited (for the GIL here, for a CPU on a loaded machine). Only the
    engine's interrupt is a timeout: its limit counts CPU time (C clock()), and a timeout
    counts towards the blocklist, which a script that throws never does."""
    limit_s = 0.05
    engine = ScriptEngine("var t = Date.now(); while (Date.now() - t < 5) {}\nreturn {big: 1n};",
                          limits=ScriptLimits(time_limit_s=limit_s, max_errors=1, clock=_Clock()))
    stop = threading.Event()

    # one sum() holds the GIL throughout (a C loop): sized to hold it ~3 limits on this CPU
    started = time.perf_counter()
    sum(range(1_000_000))
    chunk = int(1_000_000 * 3 * limit_s / max(time.perf_counter() - started, 1e-6))

    def hold_the_gil() -> None:  # takes the GIL the call releases, and keeps it
        while not stop.is_set():
            sum(range(chunk))

    holder = threading.Thread(target=hold_the_gil)
    holder.start()
    calls: list[tuple[float, type, str]] = []
    try:  # calls until one has waited past the limit (5 at least; at most 200, or 20 s)
        deadline = time.monotonic() + 20
        while len(calls) < 5 or (max(spent for spent, _, _ in calls) < limit_s
                                 and len(calls) < 200 and time.monotonic() < deadline):
            started = time.monotonic()
            try:
                engine.call({}, META, TELEMETRY)
            except (ScriptRuntimeError, ScriptTimeout, ScriptBlocked) as exc:
                calls.append((time.monotonic() - started, type(exc), str(exc).splitlines()[0]))
            else:
                calls.append((time.monotonic() - started, type(None), "no error"))
    finally:
        stop.set()
        holder.join()
    assert max(spent for spent, _, _ in calls) >= limit_s, calls  # some call did wait
    assert [(kind, text) for _, kind, text in calls] == [
        (ScriptRuntimeError, "TypeError: BigInt are forbidden in JSON.stringify")] * len(calls)


def test_an_unbounded_allocation_is_stopped_as_memory_exceeded_and_the_next_call_works() -> None:
    engine = ScriptEngine(
        "if (msg.grow) { var a = []; while (true) { a.push('xxxxxxxxxxxxxxxx' + a.length); } }\n"
        "return msg.v;",
        limits=ScriptLimits(time_limit_s=5.0, memory_limit_bytes=8 * 1024 * 1024))
    with pytest.raises(ScriptMemoryExceeded, match=r"^the script exceeded its 8388608 byte memory cap$"):
        engine.call({"grow": True}, META, TELEMETRY)
    assert engine.call({"v": 4}, META, TELEMETRY) == 4


def test_a_global_left_by_a_blown_call_is_gone_on_the_next_one() -> None:
    engine = ScriptEngine(
        "if (msg.grow) { hog = []; while (true) { hog.push('xxxxxxxxxxxxxxxx' + hog.length); } }\n"
        "return typeof hog;",
        limits=ScriptLimits(time_limit_s=5.0, memory_limit_bytes=8 * 1024 * 1024))
    with pytest.raises(ScriptMemoryExceeded):
        engine.call({"grow": True}, META, TELEMETRY)
    assert engine.call({}, META, TELEMETRY) == "undefined"


def test_no_require_file_network_or_timers_are_available() -> None:
    engine = ScriptEngine("return [typeof require, typeof process, typeof std, typeof os, typeof fetch, "
                          "typeof XMLHttpRequest, typeof setTimeout, typeof importScripts, "
                          "typeof print, typeof console];")
    assert engine.call({}, META, TELEMETRY) == ["undefined"] * 10
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("return require('fs').readFileSync('/etc/passwd');").call({}, META, TELEMETRY)
    assert str(caught.value).splitlines()[0] == "ReferenceError: require is not defined"


def test_module_import_is_refused_at_compile() -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine("import * as std from 'std';\nreturn true;")
    assert str(caught.value).splitlines()[0] == "SyntaxError: Unexpected token '*'"


def test_tbel_filter_transform_and_switch() -> None:
    assert ScriptEngine("return msg.temperature > 20;", "TBEL").filter(
        {"temperature": 25}, META, TELEMETRY) is True
    transform = ScriptEngine(
        "def toF(c) { return c * 9 / 5 + 32; }\n"
        "var out = {\"tempF\": toF(msg.temperature), \"tags\": [\"a\", 'b']};\n"
        "if (msg.temperature > 50) { metadata.hot = \"true\"; } else { metadata.hot = \"false\"; }\n"
        "return {msg: out, metadata: metadata, msgType: msgType};", "TBEL")
    assert transform.transform({"temperature": 100}, {"k": "v"}, TELEMETRY) == [
        TransformResult({"tempF": 212, "tags": ["a", "b"]}, {"k": "v", "hot": "true"}, TELEMETRY)]
    switch = ScriptEngine("def x = msg.level;\nreturn x == 'high' ? ['Alarm'] : 'Normal';", "TBEL")
    assert switch.switch({"level": "high"}, META, TELEMETRY) == ["Alarm"]


def test_tbel_keeps_def_inside_strings_and_comments() -> None:
    source = "// def f(x) foreach\nvar s = 'def g( new List'; /* .size() */ def h(a) { return a; }"
    assert tbel_to_js(source) == (
        "                   \nvar s = 'def g( new List';               function h(a) { return a; }")


def test_tbel_map_remove_returns_the_removed_value_as_java_util_map_does() -> None:
    """ExecutionHashMap.remove (java.util.Map.remove): the key's value, null when absent."""
    engine = ScriptEngine("var had = metadata.remove('a');\n"
                          "var none = metadata.remove('missing');\n"
                          "var nested = msg.inner.remove('x');\n"
                          "return [had, none, nested, metadata, msg];", "TBEL")
    assert engine.call({"inner": {"x": [1], "y": 2}, "remove": "a data key"},
                       {"a": "1", "b": "2"}, TELEMETRY) == [
        "1", None, [1], {"b": "2"}, {"inner": {"y": 2}, "remove": "a data key"}]


def test_tbel_list_remove_by_index_or_by_value_as_java_util_list_does() -> None:
    """ExecutionArrayList: remove(int) takes the element at the index out and returns it (out
    of range throws); remove(Object) takes the first equal element (maps and lists equal by
    content) out and returns true, or false when none is."""
    engine = ScriptEngine("var l = msg.list;\n"
                          "var first = l.remove(0);\n"
                          "var map = l.remove({k: [1, 2]});\n"
                          "var text = l.remove('b');\n"
                          "var absent = l.remove('zzz');\n"
                          "return [first, map, text, absent, l];", "TBEL")
    assert engine.call({"list": ["a", "b", {"k": [1, 2]}, 3, "b"]}, {}, TELEMETRY) == [
        "a", True, True, False, [3, "b"]]
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("return msg.list.remove(2);", "TBEL").call({"list": [1]}, {}, TELEMETRY)
    assert str(caught.value).splitlines()[0] == (
        "RangeError: remove(2): index out of bounds for length 1")
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("return msg.s.remove(0);", "TBEL").call({"s": "text"}, {}, TELEMETRY)
    assert str(caught.value).splitlines()[0] == (
        "TypeError: remove(): text is not a list or a map")


def test_tbel_remove_keeps_the_scripts_line_numbers() -> None:
    assert tbel_to_js("var x = metadata\n  .\n  remove ('a'); // .remove(\nreturn x;") == (
        "var x = metadata\n  [__tbelS.remove](\n'a');            \nreturn x;")
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("var x = metadata\n  .\n  remove ('a');\nreturn nope;", "TBEL").call(
            {}, {"a": "1"}, TELEMETRY)
    assert str(caught.value).splitlines()[:2] == [
        "ReferenceError: nope is not defined", "    at __script (script:4:8)"]


def test_js_scripts_get_no_remove_method() -> None:
    """``remove`` is TBEL's: a JS script calling it on a map fails, as in ThingsBoard's JS."""
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("return metadata.remove('a');").call({}, {"a": "1"}, TELEMETRY)
    assert str(caught.value).splitlines()[0] == "TypeError: not a function"


@pytest.mark.parametrize(("script", "message"), [
    ("var n = 0;\nforeach (x) { }\nreturn true;", "TBEL: foreach without (item : collection) is not in "
     "the supported subset (line 2: 'foreach'); see docs/rules-scripts.md"),
    ("var m = new java.util.HashMap();\nreturn m;", "TBEL: new (Java object construction) is not in the "
     "supported subset (line 1: 'new j'); see docs/rules-scripts.md"),
    ("int x = 5;\nreturn x;", "TBEL: typed declarations (use var) is not in the supported subset "
     "(line 1: 'int x ='); see docs/rules-scripts.md"),
    ("return msg.list\n  .stream () > 0;", "TBEL: the method stream() is not in the supported "
     "subset (line 2: '.stream ('); see docs/rules-scripts.md"),
    ("return msg.s.codePointAt(0);", "TBEL: the method codePointAt() is not in the supported "
     "subset (line 1: '.codePointAt('); see docs/rules-scripts.md"),
    ("return msg.?a;", "TBEL: null-safe navigation (.?) is not in the supported subset (line 1: '.?'); "
     "see docs/rules-scripts.md"),
])
def test_tbel_outside_the_subset_is_refused_at_compile(script: str, message: str) -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine(script, "TBEL")
    assert str(caught.value) == message


def test_from_a_rule_nodes_configuration() -> None:
    """The script a node runs is the one its scriptLang names (nodes.script_of, what chain
    validation compiles); absent: JS; a language without its script is no script (the
    configuration check names it)."""
    def engine(config: dict[str, str]) -> ScriptEngine:
        found = nodes.script_of(nodes.JS_FILTER, config)
        assert found is not None
        lang, _field, script = found
        return ScriptEngine(script, "TBEL" if lang == "TBEL" else "JS")

    js = engine({"scriptLang": "JS", "jsScript": "return 'js';", "tbelScript": "x"})
    tbel = engine({"scriptLang": "TBEL", "jsScript": "x", "tbelScript": "return 'tbel';"})
    assert (js.lang, js.call({}, {}, "T"), tbel.lang, tbel.call({}, {}, "T")) == ("JS", "js", "TBEL", "tbel")
    assert engine({"jsScript": "return 1;"}).lang == "JS"
    no_tbel = {"scriptLang": "TBEL", "jsScript": "return 1;"}
    assert nodes.script_of(nodes.JS_FILTER, no_tbel) is None
    assert nodes.check_configuration(nodes.JS_FILTER, no_tbel) == [
        ("tbelScript", "missing (the script, scriptLang TBEL)")]


def test_an_engine_called_from_another_thread_rebuilds_its_context_there() -> None:
    engine = ScriptEngine("counter = (typeof counter === 'number' ? counter : 0) + 1; return counter;")
    assert engine.call({}, {}, "T") == 1
    assert engine.call({}, {}, "T") == 2
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(engine.call({}, {}, "T")))
    thread.start()
    thread.join()
    assert seen == [1]


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^time_limit_s must be > 0$"):
        ScriptLimits(time_limit_s=0)
    with pytest.raises(ValueError, match=r"^memory_limit_bytes must be at least 1 MiB$"):
        ScriptLimits(memory_limit_bytes=1000)


# --- the blocklist (ThingsBoard's AbstractScriptInvokeService: max_errors, max_black_list_duration_sec)

LOOP_LIMIT_S = 0.05


class _Clock:
    """The blocklist's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 5_000.0

    def __call__(self) -> float:
        return self.now


def _looping(clock: _Clock, **limits: Any) -> ScriptEngine:
    return ScriptEngine("if (msg.t === 13) { while (true) {} }\nreturn msg.t;",
                        limits=ScriptLimits(time_limit_s=LOOP_LIMIT_S, clock=clock, **limits),
                        node="nodes[1] 'to Fahrenheit'", chain="Boiler ops")


def test_a_looping_batch_is_blocked_after_max_errors_timeouts_within_their_limits() -> None:
    clock = _Clock()
    engine = _looping(clock)
    with log_records() as records:
        started = time.thread_time()  # the limit is the script's run time, not the machine's load
        got = engine.call_many([({"t": 13}, META, TELEMETRY)] * 100)
        spent = time.thread_time() - started
    assert [type(v) for v in got] == [ScriptTimeout] * 3 + [ScriptBlocked] * 97
    assert {str(v) for v in got[3:]} == {
        "Script invocation is blocked due to maximum error count 3!"}
    # three timeouts, each under its own limit, and nothing more: not 100 (nor a batch's 101)
    assert spent < 3.5 * LOOP_LIMIT_S, spent
    lines = [(r["level"].name, r["message"], r["extra"]) for r in records]
    assert lines == [("WARNING", "rule node nodes[1] 'to Fahrenheit' of chain 'Boiler ops': its "
                      "script is blocked for 60 s after 3 timeouts or memory blow-ups; until "
                      "then its messages go by Failure at once",
                      {"component": "rules", "node": "nodes[1] 'to Fahrenheit'",
                       "chain": "Boiler ops", "errors": 3, "block_s": 60.0})]
    # blocked: even a message the script would pass fails at once, with no call made
    with pytest.raises(ScriptBlocked):
        engine.call({"t": 1}, META, TELEMETRY)
    clock.now += 59.9
    assert [type(v) for v in engine.call_many([({"t": 1}, META, TELEMETRY)] * 5)] == \
        [ScriptBlocked] * 5
    clock.now += 0.1  # 60 s after the last timeout: it runs again, and says so once
    with log_records() as records:
        assert engine.call_many([({"t": 1}, META, TELEMETRY), ({"t": 2}, META, TELEMETRY)]) \
            == [1, 2]
        assert engine.call({"t": 3}, META, TELEMETRY) == 3
    assert [(r["level"].name, r["message"]) for r in records] == [
        ("INFO", "rule node nodes[1] 'to Fahrenheit' of chain 'Boiler ops': its script is no "
                 "longer blocked (blocked 60 s): it runs again")]
    # the count started anew: two timeouts do not block it
    assert [type(v) for v in engine.call_many([({"t": 13}, META, TELEMETRY)] * 2)] == \
        [ScriptTimeout] * 2
    assert engine.call({"t": 4}, META, TELEMETRY) == 4


def test_good_items_before_a_looping_one_keep_their_values_and_it_gets_its_whole_limit() -> None:
    engine = _looping(_Clock())
    items = [({"t": t}, META, TELEMETRY) for t in (1, 2, 13, 3, 13, 4)]
    got = engine.call_many(items)
    assert got[:2] == [1, 2] and got[3] == 3 and got[5] == 4
    assert [type(got[2]), type(got[4])] == [ScriptTimeout, ScriptTimeout]


def test_errors_spread_over_more_than_the_block_duration_never_block() -> None:
    """ThingsBoard's count lives max_black_list_duration_sec after its last error."""
    clock = _Clock()
    engine = _looping(clock, max_errors=2, block_s=10.0)
    with pytest.raises(ScriptTimeout):
        engine.call({"t": 13}, META, TELEMETRY)
    clock.now += 10.0  # the count has expired
    with pytest.raises(ScriptTimeout):
        engine.call({"t": 13}, META, TELEMETRY)
    assert engine.call({"t": 5}, META, TELEMETRY) == 5
    clock.now += 9.9  # within 10 s of the last: the second error blocks it
    with pytest.raises(ScriptTimeout):
        engine.call({"t": 13}, META, TELEMETRY)
    with pytest.raises(ScriptBlocked, match=r"maximum error count 2!$"):
        engine.call({"t": 5}, META, TELEMETRY)


def test_a_script_that_throws_is_never_blocked() -> None:
    """ThingsBoard counts timeouts and other errors, not a RUNTIME error (the script threw)."""
    engine = ScriptEngine("if (msg.bad) { throw new Error('bad'); }\nreturn 1;",
                          limits=ScriptLimits(clock=_Clock()))
    got = engine.call_many([({"bad": True}, META, TELEMETRY)] * 10)
    assert [type(v) for v in got] == [ScriptRuntimeError] * 10
    assert engine.call({}, META, TELEMETRY) == 1


@pytest.mark.parametrize("thrown", [
    "new Error('modem: out of memory')", "'out of memory'",
    "new Error('interrupted')", "'InternalError: interrupted'",
    "new InternalError('not the engine')"])
def test_what_a_script_throws_is_its_error_whatever_it_says(thrown: str) -> None:
    """Only the engine's own memory blow-up (its InternalError "out of memory", or null when
    it could not make one) and its interrupt are counted towards the block: a script throwing
    a text that says "out of memory" or "interrupted" threw; with max_errors 1 one count
    would block it. The same alone and in a batch, and from a toJSON the wrapper calls."""
    limits = ScriptLimits(max_errors=1, clock=_Clock())
    engine = ScriptEngine(f"if (msg.bad) {{ throw {thrown}; }}\nreturn 1;", limits=limits)
    got = engine.call_many([({"bad": True}, META, TELEMETRY)] * 3 + [({}, META, TELEMETRY)])
    assert [type(v) for v in got] == [ScriptRuntimeError] * 3 + [int]
    with pytest.raises(ScriptRuntimeError):
        engine.call({"bad": True}, META, TELEMETRY)
    assert engine.call({}, META, TELEMETRY) == 1
    to_json = ScriptEngine(f"return {{toJSON: function () {{ throw {thrown}; }}}};",
                           limits=limits)
    with pytest.raises(ScriptRuntimeError):
        to_json.call({}, META, TELEMETRY)
    assert [type(v) for v in to_json.call_many([({}, META, TELEMETRY)] * 2)] == \
        [ScriptRuntimeError] * 2


def test_memory_blow_ups_count_towards_the_block() -> None:
    engine = ScriptEngine(
        "if (msg.grow) { var a = []; while (true) { a.push('xxxxxxxxxxxxxxxx' + a.length); } }\n"
        "return msg.v;",
        limits=ScriptLimits(time_limit_s=5.0, memory_limit_bytes=8 * 1024 * 1024,
                            max_errors=2, clock=_Clock()))
    got = engine.call_many([({"grow": True}, META, TELEMETRY)] * 4)
    assert [type(v) for v in got] == [ScriptMemoryExceeded] * 2 + [ScriptBlocked] * 2


def test_block_duration_zero_turns_the_blocklist_off() -> None:
    engine = _looping(_Clock(), max_errors=1, block_s=0)
    got = engine.call_many([({"t": 13}, META, TELEMETRY)] * 3)
    assert [type(v) for v in got] == [ScriptTimeout] * 3
    assert engine.call({"t": 6}, META, TELEMETRY) == 6


def test_blocklist_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_errors"):
        ScriptLimits(max_errors=0)
    with pytest.raises(ValueError, match="block_s"):
        ScriptLimits(block_s=-1)
    assert ScriptLimits.of_settings(100, 16, 5, 30) == ScriptLimits(
        time_limit_s=0.1, memory_limit_bytes=16 * 1024 * 1024, max_errors=5, block_s=30)
