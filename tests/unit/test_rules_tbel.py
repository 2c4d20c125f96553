"""TBEL scripts as ThingsBoard runs them: foreach (MVEL's ForEachNode), the Java methods of maps,
lists, text and map entries (the tbel library's ExecutionHashMap / ExecutionArrayList /
ExecutionEntry, java.util and java.lang.String), MVEL's reads of ``x.size`` and the like, and
ThingsBoard's TbUtils helpers; each through ``ScriptEngine(..., "TBEL")``, with exact results.
Expected values marked "TbelInvokeDocsIoTest" are those of ThingsBoard's own test of its TBEL
documentation (application/src/test/java/.../script/TbelInvokeDocsIoTest.java)."""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import time
import zoneinfo
from typing import Any

import pytest

from edge_sync.rules import nodes as n
from edge_sync.rules import sandbox, tbel_zones
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import Failed, Outcome, RuleEngine, SaveTimeseries, Visited
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.sandbox import (
    ScriptEngine,
    ScriptError,
    ScriptRuntimeError,
    ScriptSyntaxError,
    TransformResult,
    tbel_scope,
    tbel_to_js,
)

TELEMETRY = "POST_TELEMETRY_REQUEST"


def run(script: str, msg: Any = None, metadata: dict[str, str] | None = None) -> Any:
    return ScriptEngine(script, "TBEL").call({} if msg is None else msg, metadata or {}, TELEMETRY)


def error(script: str, msg: Any = None) -> str:
    """The first line of the script's run-time error."""
    with pytest.raises(ScriptRuntimeError) as caught:
        run(script, msg)
    return str(caught.value).splitlines()[0]


# -- foreach ----------------------------------------------------------------------------------

def test_foreach_over_a_list_sums_breaks_and_returns() -> None:
    """TbelInvokeDocsIoTest.foreach_Test: [1, 2, 3] sums to 6; break leaves the loop, return in
    the body returns from the script (ForEachNode: breakFlag, tiltFlag)."""
    assert run("var numbers = [1, 2, 3];\nvar sum = 0;\nforeach (n : numbers) {\n  sum+=n;\n}\n"
               "return sum;") == 6
    assert run("var seen = [];\nforeach (x : msg.l) { if (x == 3) { break; } seen.add(x); }\n"
               "return seen;", {"l": [1, 2, 3, 4]}) == [1, 2]
    assert run("foreach (x : msg.l) { if (x > 1) { return x * 10; } }\nreturn 0;",
               {"l": [1, 2, 3]}) == 20


def test_foreach_over_text_an_integer_and_mvels_for_colon_form() -> None:
    """ForEachNode: text by character, an integer n as 1..n; ``for (x : c)`` is the same loop,
    and an item's type (``String s``) is accepted."""
    assert run("var out = [];\nforeach (c : msg.s) { out.add(c); }\nreturn out;",
               {"s": "abc"}) == ["a", "b", "c"]
    assert run("var n = 0;\nforeach (i : 4) { n = n + i; }\nreturn n;") == 10
    assert run("var n = '';\nfor (x : msg.l) { n = n + x; }\nreturn n;", {"l": ["a", "b"]}) == "ab"
    assert run("var n = '';\nforeach (String s : msg.l) { n = n + s; }\nreturn n;",
               {"l": ["a", "b"]}) == "ab"


def test_foreach_over_a_map_and_its_keys_values_and_entries() -> None:
    """TbelInvokeDocsIoTest.mapsIterateThrough_Test / mapsImplicitIterationWithoutEntrySet: a
    map and its entrySet() give entries with key / getKey() and value / getValue(); keys() and
    values() are lists (ExecutionHashMap)."""
    script = ("var out = [];\n"
              "foreach (e : msg) { out.add(e.key + '=' + e.getValue()); }\n"
              "foreach (e : msg.entrySet()) { out.add(e.getKey() + ':' + e.value); }\n"
              "foreach (k : msg.keys()) { out.add(k); }\n"
              "foreach (v : msg.values()) { out.add(v); }\n"
              "return out;")
    assert run(script, {"a": 1, "b": "x"}) == ["a=1", "b=x", "a:1", "b:x", "a", "b", 1, "x"]


def test_an_entry_is_a_copy_whose_set_value_returns_the_old_value() -> None:
    """ExecutionHashMap.entrySet: new ExecutionEntry copies; setValue changes the entry only;
    ExecutionEntry.equals compares key and value."""
    assert run("var es = msg.entrySet();\nvar e = null;\nforeach (x : es) { e = x; }\n"
               "var old = e.setValue(5);\nvar same = false;\n"
               "foreach (x : es) { same = e.equals(x); }\n"
               "return [old, e.getValue(), e.key, msg, same, es.size(), e.toString()];",
               {"a": 1}) == [1, 5, "a", {"a": 1}, True, 1, "a=5"]


def test_foreach_over_what_cannot_be_iterated_or_a_list_changed_meanwhile_fails() -> None:
    """ForEachNode: "non-iterable type" for null, a boolean or a fraction; ArrayList's
    iterator throws ConcurrentModificationException when the list's size changed."""
    assert error("foreach (x : msg.nope) { }\nreturn 1;") == (
        "TypeError: foreach: non-iterable type: null")
    assert error("foreach (x : 1.5) { }\nreturn 1;") == (
        "TypeError: foreach: non-iterable type: 1.5")
    assert error("foreach (x : msg.l) { msg.l.add(x); }\nreturn 1;", {"l": [1, 2]}) == (
        "Error: ConcurrentModificationException: the list changed while foreach ran over it")


def test_foreach_keeps_line_numbers_and_leaves_strings_and_comments_alone() -> None:
    source = ("var s = 'foreach (x : y)'; // foreach (a : b)\n"
              "foreach (x :\n  msg.l) { s = s + x; }\nreturn s.size();")
    assert tbel_to_js(source) == (
        "var s = 'foreach (x : y)';                   \n"
        "for (var x of __tbelIter(\n  msg.l)) { s = s + x; }\nreturn s[__tbelS.size]();")
    assert error(source, {"l": [1]}) == "TypeError: size(): text is not a list or a map"


# -- string literals --------------------------------------------------------------------------

def test_a_string_literal_may_span_lines_as_in_mvel() -> None:
    """MVEL's ParseTools.captureStringLiteral stops only at the closing quote: a line break of
    the script inside a string is part of its text (LF, CR LF, CR), as in ThingsBoard Edge's
    own test chains (a TbLogNode script ``return '<LF>Incoming message:<LF>' + ...``).
    JavaScript refuses a raw line break in a string; the script's line numbers stay its own."""
    assert run("return 'a\nb';") == "a\nb"
    assert run('return "cr\r\nlf" + \'c\rr\';') == "cr\r\nlfc\rr"
    assert run("return '\nIncoming message:\n' + JSON.stringify(msg);", {"t": 25}) == (
        '\nIncoming message:\n{"t":25}')
    # an escape is kept as it was: \\ then n is a backslash and an n, not a line break
    assert run("return 'a\\\\nb';") == "a\\nb"
    assert run("var s = 'one\ntwo\nthree';\nreturn s.split('\\n').size();") == 3
    # the error's line is the script's: line 4, after a string over three lines (CR LF the
    # same); a lone CR is no line of the script's, for the edge as for its error lines
    for script in ("var s = 'a\nb\nc';\nreturn s.nosuch.size();",
                   "var s = 'a\r\nb\r\nc';\nreturn s.nosuch.size();",
                   "var s = 'a\rb';\n\n\nreturn s.nosuch.size();"):
        with pytest.raises(ScriptRuntimeError) as caught:
            run(script)
        assert "at __script (script:4:17)" in str(caught.value), script


@pytest.mark.parametrize("script, line", [("return 'a\\\nb';", 1),
                                          ("var x = 1;\nreturn 'a\\\r\nb';", 2),
                                          ("return \"a\\\rb\";", 1)])
def test_a_backslash_before_a_line_break_in_a_string_is_refused_as_mvel_refuses_it(
        script: str, line: int) -> None:
    """MVEL's ParseTools.handleEscapeSequence: a backslash before a line break is an "illegal
    escape sequence" (JavaScript would read a line continuation and drop the break)."""
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine(script, "TBEL")
    assert str(caught.value) == (
        f"TBEL: illegal escape sequence: a backslash before a line break in a string (line "
        f"{line}); see docs/rules-scripts.md")
    assert run("return 'a\\\\\nb';") == "a\\\nb"  # an escaped backslash, then a break


def test_a_literal_regex_over_a_line_break_is_checked_at_compile() -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine("var s = 'a';\nreturn s.split('(\n').size();", "TBEL")
    assert str(caught.value).startswith("TBEL: PatternSyntaxException: ")
    assert "(line 2: \".split('(\\n')\")" in str(caught.value)
    assert run("return 'a\nb'.split('\n').size();") == 2


@pytest.mark.parametrize("lang", ["TBEL", "JS"])
def test_a_nul_character_in_a_script_is_a_syntax_error_naming_its_line(lang: str) -> None:
    """The engine's binding takes the source as a C string: a NUL character cannot be compiled.
    The script is refused with its line (before, a ValueError escaped the validation)."""
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine("var x = 1;\nreturn 'a\u0000b';", lang)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "the script holds a NUL character (U+0000; line 2), which the engine cannot compile: "
        "write it as an escape (\\u0000)")
    assert ScriptEngine("return 'a\\u0000b';", lang).call(  # type: ignore[arg-type]
        {}, {}, TELEMETRY) == "a\u0000b"


# -- maps -------------------------------------------------------------------------------------

def test_map_methods_as_execution_hash_map_and_java_util_map() -> None:
    """get: the value or null; put: the previous value or null, a null value removes the key
    (ExecutionHashMap.put); putIfAbsent, getOrDefault, containsKey, containsValue (equals:
    by content), replace (HashMap.replace), putAll, size, isEmpty."""
    script = """var m = msg;
return [
  m.get('a'), m.get('nope'), m.getOrDefault('nope', 7), m.getOrDefault('a', 7),
  m.put('a', 2), m.put('new', 'n'), m.put('b', null), m.containsKey('b'),
  m.putIfAbsent('a', 9), m.putIfAbsent('c', 3),
  m.containsKey('c'), m.containsValue({x: [1]}), m.containsValue(42),
  m.replace('a', 5), m.replace('zz', 1), m.containsKey('zz'),
  m.replace('a', 5, 6), m.replace('a', 5, 7),
  m.size(), m.isEmpty(), {}.isEmpty(),
  m
];"""
    assert run(script, {"a": 1, "b": "x", "l": {"x": [1]}}) == [
        1, None, 7, 1,
        1, None, "x", False,
        2, None,
        True, True, False,
        2, None, False,
        True, False,
        4, False, True,
        {"a": 6, "l": {"x": [1]}, "new": "n", "c": 3},
    ]


def test_map_put_all_keys_values_and_clear() -> None:
    """TbelInvokeDocsIoTest.mapsAddNewEntry_Test / mapsGetKeysValues_Test: putAll adds the
    entries in order; keys() and values() are new lists; clear() empties the map."""
    assert run("msg.putAll({'test': 12, 'input': {'http': 130}});\n"
               "var keys = msg.keys();\nkeys.add('not in the map');\n"
               "return [msg, keys, msg.values(), msg.keySet()];", {"a": 1}) == [
        {"a": 1, "test": 12, "input": {"http": 130}}, ["a", "test", "input", "not in the map"],
        [1, 12, {"http": 130}], ["a", "test", "input"]]
    assert run("metadata.clear();\nreturn [metadata, metadata.size()];", {}) == [{}, 0]


def test_map_and_list_equals_compare_content() -> None:
    assert run("return [msg.equals({b: [1, {c: 2}], a: 1}), msg.equals({a: 1}), "
               "msg.b.equals([1, {c: 2}]), msg.b.equals([{c: 2}, 1])];",
               {"a": 1, "b": [1, {"c": 2}]}) == [True, False, True, False]


def test_size_and_the_other_reads_mvel_makes_calls() -> None:
    """MVEL's property read takes a method of that name with no argument before a map's key
    (PropertyTools.getGetter, ReflectiveAccessorOptimizer.getBeanProperty): msg.size is the
    map's size even with a data key "size", msg.values its values, list.size the list's
    (TbelInvokeDocsIoTest.listsCreateNewList_Test: ``i < list.size``). msg["size"] reads the
    key, and a write sets it."""
    data = {"size": 9, "values": "v", "l": ["A", "B", "C"]}
    assert run("var s = '';\nfor (var i = 0; i < msg.l.size; i++) { s += msg.l[i]; }\n"
               "return [s, msg.size, msg['size'], msg.values, msg.keys, msg.l.empty, "
               "msg.isEmpty, msg.size == 3, msg.size >= 3, msg['values']];", data) == [
        "ABC", 3, 9, [9, "v", ["A", "B", "C"]], ["size", "values", "l"], False, False, True,
        True, "v"]
    assert run("msg.size = 5;\nmsg.values += '!';\nreturn msg;", {"size": 1, "values": "v"}) == {
        "size": 5, "values": "v!"}


def test_method_names_as_data_keys_are_data_and_json_sees_no_method() -> None:
    """The methods are keyed by symbols every value inherits: a data key named get, put,
    remove or containsKey is data, and the message goes out as it came."""
    data = {"get": 1, "put": [2], "remove": {"x": 3}, "containsKey": "k"}
    assert run("return [msg.get('get'), msg.put.get(0), msg.remove.x, msg['containsKey'], "
               "msg.containsKey('put'), JSON.stringify(msg), msg];", data) == [
        1, 2, 3, "k", True, '{"get":1,"put":[2],"remove":{"x":3},"containsKey":"k"}', data]


# -- lists ------------------------------------------------------------------------------------

def test_list_methods_as_execution_array_list() -> None:
    """TbelInvokeDocsIoTest.listAddPushDelete_Test / listChange_Test / listGetInfo_Test: add
    (true), add(index, v), addAll, addAll(index, c), set (the element replaced), push (true),
    unshift, remove, shift, pop, indexOf(v, from), contains, length."""
    script = """var list = msg.list;
var r = {};
r.put("addAll", list.addAll(["thigsboard", 4, 67]));
r.put("addAllIndex", list.addAll(2, ["x"]));
r.put("add", list.add("a"));
r.put("addIndex", list.add(0, "first"));
r.put("set", list.set(1, "65"));
r.put("push", list.push("p"));
list.unshift("u1", "u2");
r.put("removeValue", list.remove("C"));
r.put("shift", list.shift());
r.put("pop", list.pop());
r.put("list", list);
r.put("get", list.get(2));
r.put("indexOf", list.indexOf(4));
r.put("indexOfFrom", list.indexOf("u2", 2));
r.put("lastIndexOf", list.lastIndexOf(67));
r.put("contains", [list.contains(67), list.contains("zz"), [{a: [1]}].contains({a: [1]}),
  [1, null].contains(msg.nope), [1, null].indexOf(null)]);
r.put("sizes", [list.size(), list.length(), list.isEmpty(), [].isEmpty()]);
return r;"""
    assert run(script, {"list": ["A", "B", "C"]}) == {
        "addAll": True, "addAllIndex": True, "add": True, "set": "A", "push": True,
        "removeValue": True, "shift": "u1", "pop": "p",
        "list": ["u2", "first", "65", "B", "x", "thigsboard", 4, 67, "a"],
        "get": "65", "indexOf": 6, "indexOfFrom": -1, "lastIndexOf": 7,
        "contains": [True, False, True, True, 1], "sizes": [9, 9, False, True]}


def test_list_indexes_out_of_range_throw_as_java_does() -> None:
    """ArrayList: get/set check the index (IndexOutOfBoundsException, Objects.checkIndex), add
    at an index rangeCheckForAdd; shift of an empty list is remove(0); pop of one is null."""
    assert error("return msg.l.get(3);", {"l": [1, 2, 3]}) == (
        "RangeError: Index 3 out of bounds for length 3")
    assert error("return msg.l.get(-1);", {"l": [1]}) == (
        "RangeError: Index -1 out of bounds for length 1")
    assert error("return msg.l.set(1, 0);", {"l": [1]}) == (
        "RangeError: Index 1 out of bounds for length 1")
    assert error("return msg.l.add(5, 0);", {"l": [1, 2]}) == "RangeError: Index: 5, Size: 2"
    assert error("return [].shift();") == "RangeError: Index 0 out of bounds for length 0"
    assert error("return msg.l.get('0');", {"l": [1]}) == (
        "TypeError: get(0): the index is not a whole number")
    assert run("return [[].pop(), [1, 2].add(2, 3)];") == [None, None]


def test_list_join_as_execution_array_list_join() -> None:
    """ExecutionArrayList.join: each element's toString joined, then ", " made "," and the
    brackets taken out; a null element throws (Object::toString)."""
    assert run("return [msg.l.join(), msg.l.join(' | '), [1, 2].join(', ')];",
               {"l": [1, 2.5, "a", [3, 4], {"k": "v"}]}) == [
        "1,2.5,a,3,4,{k=v}", "1 | 2.5 | a | 3,4 | {k=v}", "1,2"]
    assert error("return [1, null].join();") == "TypeError: join(): the list holds null"


def test_list_sort_reverse_slice_and_concat_as_execution_array_list() -> None:
    """TbelInvokeDocsIoTest.listSort_Test and listNewListOrStringSort_Test: sort by number when
    every element reads as one, descending with false, in place (null); toSorted, toReversed,
    slice (negative indexes from the end) and concat give new lists; a start after the end of
    a slice throws (ArrayList.subList)."""
    assert run("""var list = msg.list;
var r = {};
r.put("sort", list.sort());
r.put("sortList", list.slice());
r.put("sortFalse", list.sort(false));
r.put("sortFalseList", list.slice());
r.put("reverse", list.reverse());
r.put("reverseList", list.slice());
return r;""", {"list": [2096, "98", 5, "65"]}) == {
        "sortList": [5, "65", "98", 2096], "sortFalseList": [2096, "98", "65", 5],
        "reverseList": [5, "65", "98", 2096]}
    assert run("var list = msg.list;\n"
               "return [list.toSorted(), list.toSorted(false), list.toReversed(), list.slice(3), "
               "list.slice(0, 2), list.slice(-2), list.concat(['thigsboard', 4, 67]), list, "
               "['b', 'a', 10, null, [1]].toSorted(), [1, '1.5', ' 2 ', '1e1'].toSorted(false)];",
               {"list": [67, 2, 2, 2]}) == [
        [2, 2, 2, 67], [67, 2, 2, 2], [2, 2, 2, 67], [2], [67, 2], [2, 2],
        [67, 2, 2, 2, "thigsboard", 4, 67], [67, 2, 2, 2],
        [10, [1], "a", "b", None], ["1e1", " 2 ", "1.5", 1]]
    assert error("return [1, 2, 3].slice(3, 1);") == "RangeError: fromIndex(3) > toIndex(1)"


def test_to_string_is_javas_text_of_the_value() -> None:
    """Object.toString as Java writes each: AbstractMap / AbstractCollection.toString (a key
    whose value is null is not in a TBEL map), numbers, booleans, text as it is."""
    assert run("return [msg.toString(), msg.l.toString(), msg.l.get(0).toString(), "
               "(2.5).toString(), true.toString(), 'a'.toString(), 'a'.concat('b')];",
               {"a": 1, "l": [7, "x", {"k": None, "j": [1]}]}) == [
        "{a=1, l=[7, x, {j=[1]}]}", "[7, x, {j=[1]}]", "7", "2.5", "true", "a", "ab"]


def test_list_clear_and_methods_of_another_kind_fail() -> None:
    assert run("msg.l.clear();\nreturn msg;", {"l": [1, 2]}) == {"l": []}
    assert error("return msg.l.containsKey(0);", {"l": [1]}) == (
        "TypeError: containsKey(): a list is not a map")
    assert error("return msg.m.set(0, 1);", {"m": {}}) == "TypeError: set(): a map is not a list"
    assert error("return msg.n.size();", {"n": 5}) == (
        "TypeError: size(): a number is not a list or a map")


# -- text -------------------------------------------------------------------------------------

def test_text_methods_as_java_lang_string() -> None:
    """String.length, isEmpty, equals, equalsIgnoreCase, contains, startsWith(p[, offset]),
    endsWith, substring, toUpperCase, toLowerCase, trim (only characters up to U+0020: a
    no-break space stays), indexOf, lastIndexOf (a negative start finds nothing), replace
    (every occurrence, literally), split (a one-character separator, trailing empty strings
    removed)."""
    script = """var s = msg.s;
return [
  s.length(), s.isEmpty(), ''.isEmpty(), s.equals('Hello, World'), s.equals(msg.n),
  s.equalsIgnoreCase('hELLO, wORLD'), s.equalsIgnoreCase(null), s.contains('lo, W'),
  s.startsWith('Hell'), s.startsWith('World', 7), s.startsWith('H', -1), s.endsWith('ld'),
  s.substring(7), s.substring(0, 5), s.toUpperCase(), s.toLowerCase(),
  msg.padded.trim(), s.indexOf('o'), s.indexOf('o', 5), s.lastIndexOf('o'),
  s.lastIndexOf('o', -1), 'a$b$'.replace('$', '$$&'), 'a,b,,c,,'.split(','),
  ','.split(','), ''.split(','), 'a.b'.split('\\\\.')
];"""
    assert run(script, {"s": "Hello, World", "n": 5, "padded": "\t x \u00a0\n"}) == [
        12, False, True, True, False,
        True, False, True,
        True, True, False, True,
        "World", "Hello", "HELLO, WORLD", "hello, world",
        "x \u00a0", 4, 8, 8,
        -1, "a$$&b$$&", ["a", "b", "", "c"],
        [], [""], ["a", "b"],
    ]


def test_text_methods_fail_as_java_does() -> None:
    """substring's bounds (StringIndexOutOfBoundsException); a regular expression outside the
    translated subset, given at run time, fails the call naming what is not supported."""
    assert error("return msg.s.substring(2, 9);", {"s": "abc"}) == (
        "RangeError: begin 2, end 9, length 3")
    assert error("return msg.s.substring(2, 1);", {"s": "abc"}) == (
        "RangeError: begin 2, end 1, length 3")
    assert error("return msg.s.split(msg.re);", {"s": "a,b", "re": "a++"}) == (
        'SyntaxError: the regular expression "a++": the possessive quantifier ++ is not '
        "supported here (see docs/rules-scripts.md)")
    assert error("return msg.s.contains(5);", {"s": "a5"}) == "TypeError: contains(): 5 is not text"


# -- what stays outside the subset --------------------------------------------------------------

@pytest.mark.parametrize(("script", "message"), [
    ("return msg.l.stream();", "TBEL: the method stream() is not in the supported subset (line 1: "
     "'.stream('); see docs/rules-scripts.md"),
    ("var m = {};\nreturn msg.t.toFixed(2);", "TBEL: the method toFixed() is not in the "
     "supported subset (line 2: '.toFixed('); see docs/rules-scripts.md"),
    ("return msg.m.invert();", "TBEL: the method invert() is not in the supported subset "
     "(line 1: '.invert('); see docs/rules-scripts.md"),
])
def test_a_method_outside_the_subset_is_refused_at_compile(script: str, message: str) -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine(script, "TBEL")
    assert str(caught.value) == message


def test_math_json_and_date_now_keep_their_own_methods_and_literals_are_left_alone() -> None:
    """java.lang.Math's methods are JavaScript's; JSON is ThingsBoard's TbJson (stringify,
    parse); Date.now() is TbDate.now (epoch milliseconds); another method of Date than now,
    UTC and parse is refused."""
    assert run("metadata.arrivalTs = Date.now();\n"
               "return [Math.max(1, 2), Math.abs(-3), JSON.parse('[1]'), "
               "JSON.stringify({a: 'x.size()'}), 'msg.sort() .put(', "
               "metadata.arrivalTs > 1700000000000];") == [
        2, 3, [1], '{"a":"x.size()"}', "msg.sort() .put(", True]
    for script, method in (("return Date.from(2020);", "Date.from"), ("return JSON.foo(1);", "JSON.foo")):
        with pytest.raises(ScriptSyntaxError) as caught:
            ScriptEngine(script, "TBEL")
        assert str(caught.value).startswith(f"TBEL: the method {method}() is not in the supported")
    assert tbel_to_js("var a = 'x.put(1)'; /* .sort( */ return a.size;") == (
        "var a = 'x.put(1)';              return a[__tbelG.size];")


def test_js_scripts_keep_javascripts_own_semantics() -> None:
    """Only TBEL gets the runtime: in JS msg.size is the data, size() is no method, and
    parseInt is JavaScript's."""
    js = ScriptEngine("return [msg.size, parseInt('12.5'), typeof btoa];")
    assert js.call({"size": 9}, {}, TELEMETRY) == [9, 12, "function"]
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine("return msg.l.size();").call({"l": [1]}, {}, TELEMETRY)
    assert str(caught.value).splitlines()[0] == "TypeError: not a function"


# -- TbUtils helpers -----------------------------------------------------------------------------

def test_base64_text_and_bytes_helpers() -> None:
    """TbelInvokeDocsIoTest.atobBtoa_Test, stringToBytesBinaryString_Test, bytesToString_Test,
    decodeToJson_Test; TbUtils.btoa/atob (UTF-8), stringToBytes (signed bytes),
    bytesToString / decodeToString (-128..255, text through parseInt), decodeToJson."""
    script = """var e = btoa(msg.s);
return [e, atob(e), stringToBytes('hé'), stringToBytes('hé', 'ISO-8859-1'),
  bytesToString([0x48, 0x45, 0x4C, 0x4C, 0x4F]), bytesToString([104, 195, 169]),
  bytesToString([-61, -87, '0x41', '66']), decodeToString([104, 105]), bytesToString([233], 'latin1'),
  decodeToJson(stringToBytes(atob('eyJoZWxsbyI6ICJ3b3JsZCJ9'))), decodeToJson('[1, "a"]'),
  atob('w6k'), bytesToString([0xC3])];"""
    assert run(script, {"s": "Hello, world"}) == [
        "SGVsbG8sIHdvcmxk", "Hello, world", [104, -61, -87], [104, -23],
        "HELLO", "hé",
        "éAB", "hi", "é",
        {"hello": "world"}, [1, "a"],
        "é", "\ufffd"]


def test_hex_helpers() -> None:
    """TbelInvokeDocsIoTest.hexToBytes_Test; TbUtils.bytesToHex (Byte.parseByte of each
    element), base64ToHex, hexToBase64, base64ToBytesList."""
    assert run("return [hexToBytes('0x01752B0367FA000500010488FFFFFFFFFFFFFFFF33'), "
               "bytesToHex([1, -1, 127, '12']), base64ToHex('AQID/w=='), hexToBase64('010203FF'), "
               "base64ToBytesList('AQID/w==')];") == [
        [1, 117, 43, 3, 103, -6, 0, 5, 0, 1, 4, -120, -1, -1, -1, -1, -1, -1, -1, -1, 51],
        "01FF7F0C", "010203FF", "AQID/w==", [1, 2, 3, -1]]


def test_number_parsing_helpers() -> None:
    """TbelInvokeDocsIoTest.parseInt_Test, parseFloat_Test, parseDouble_Test; TbUtils
    parseHexToInt (big- and little-endian), parseBytesToInt (ByteBuffer.getInt)."""
    assert run("""return [
  parseInt("0"), parseInt("473"), parseInt("+42"), parseInt("-0", 10), parseInt("-0xFF"),
  parseInt("-FF", 16), parseInt("1100110", 2), parseInt("2147483647", 10),
  parseInt("-2147483648", 10), parseInt("Kona", 27), parseInt("11111111111111111111111111111110", 2),
  parseInt(""), parseFloat("4.2"), parseFloat("0x41200000"), parseDouble("4.2"),
  parseDouble("0x400921FB54442D18"), parseHexToInt("AABB"), parseHexToInt("BBAA", false),
  parseLittleEndianHexToInt("BBAA"), parseBigEndianHexToInt("0x00FF"),
  parseBytesToInt([0xAA, 0xBB, 0xCC, 0xDD]), parseBytesToInt([1, 2, 3, 4], 1, 2, false),
  parseBytesToInt([0, 0, 1, 0], 2)
];""") == [
        0, 473, 42, 0, -255,
        -255, 102, 2147483647,
        -2147483648, 411787, -2,
        None, 4.2, 10, 4.2,
        3.141592653589793, 43707, 43707,
        43707, 255,
        -1430532899, 770,
        256]


def test_byte_float_and_hex_helpers_as_tbutils_test() -> None:
    """TbUtilsTest.parseBytesToFloat / parseFloat / intToHex_Test / parseBytesToLong: floats as
    Java prints them (1.4E-44, 1.1803216E8, 8.0821E-41), intToHex's digits, endianness and
    length; a long beyond 2^53 is an error here (not exact as a double)."""
    assert run("""var b = [0x4C, 0xE1, 0x20, 0xE4];
return [
  parseBytesToFloat([0x0A]), parseBytesToFloat([65, -22, 98, -52], 0),
  parseBytesToFloat(b, 0, 4, true), parseBytesToFloat(b, 0, 2, false),
  parseBytesToFloat(b, 0, 2), parseBytesToFloat(b, 0, 3, false),
  parseHexToFloat("41EA62CC"), parseLittleEndianHexToFloat("CC62EA41"),
  parseBigEndianHexToFloat("0x3F800000"),
  intToHex(-2578), intToHex(-2555994, true, true), intToHex(-2555994, false, true),
  intToHex(2147483647, true, true), intToHex(-2147483648, true, true),
  intToHex(0xABCDEF, false, true, 4), intToHex(0xAB, false, false, 2), intToHex(0xABCD, true, true, 2),
  intToHex(0), parseBytesToLong([0, 0, 1, 0]), parseBytesToLong([1, 2], 0, 2, false),
  parseBytesToLong([-1, -1, -1, -1, -1, -1, -1, -1])
];""") == [
        1.4e-44, 29.29824, 118032160, 8.0821e-41,
        2.7579e-41, 3.019557e-39,
        29.29824, 29.29824, 1,
        "FFF5EE", "0xFFD8FFA6", "0xA6FFD8FF",
        "0x7FFFFFFF", "0x80000000",
        "0xCDAB", "AB", "0xCD",
        "00", 256, 513,
        -1]
    assert error("return parseBytesToFloat([-1, -1, -1, -1], 0, 4, true);") == (
        "NumberFormatException: byte[] 0xFFFFFFFF is a Not-a-Number (NaN) value")
    assert error("return parseBytesToLong([64, -101, 4, -79, 12, -78, -107, -22], 0, 8);") == (
        "RangeError: parseBytesToLong(): 4655319798286292458 is beyond 2^53, not exact as a number here")


@pytest.mark.parametrize(("call", "message"), [
    ('parseInt("2147483648", 10)', 'NumberFormatException: For input string: "2147483648"'),
    ('parseInt("99", 8)', 'NumberFormatException: Failed radix [8] for value: "99", must be [-1] !'),
    ('parseInt("12.5")', 'NumberFormatException: For input string: "12.5"'),
    ('parseInt("A")', 'NumberFormatException: The hexadecimal value: "A" must be of even length, '
     "or if the decimal value must be a number!"),
    ('parseInt("1", 7)', "IllegalArgumentException: Invalid radix: [7]"),
    ('parseDouble(" 1.5")', 'NumberFormatException: Value: " 1.5" is not numeric or hexDecimal format!'),
    ("atob('QQ=')", "IllegalArgumentException: Input byte array has wrong 4-byte ending unit"),
    ("atob('Q')", "IllegalArgumentException: Last unit does not have enough valid bits"),
    ("atob('a b')", "IllegalArgumentException: Illegal base64 character 20"),
    ("hexToBytes('ABC')", "IllegalArgumentException: Hex string must be even-length."),
    ("bytesToString([256])", "NumberFormatException: The value '256' could not be correctly "
     "converted to a byte. Integer to byte conversion requires the use of only 8 bits (with a "
     "range of min/max = -128/255)!"),
    ("bytesToHex([200])", 'NumberFormatException: Value out of range. Value:"200" Radix:10'),
    ("parseBytesToInt([1, 2, 3, 4, 5], 0, 5)",
     "IllegalArgumentException: Length: 5 is too large. Maximum 4 bytes is allowed!"),
    ("stringToBytes('x', 'UTF-16')", 'TypeError: charset "UTF-16" is not supported here '
     "(UTF-8, ISO-8859-1, US-ASCII)"),
    ("raiseError('boom')", "Error: boom"),
    ("toFlatMap({})", "ReferenceError: toFlatMap is not defined"),
    ("intToHex(4292411302)", "TypeError: intToHex(): not an int"),
])
def test_helpers_fail_as_tbutils_does(call: str, message: str) -> None:
    assert error(f"return {call};") == message


def test_rounding_and_other_helpers() -> None:
    """TbelInvokeDocsIoTest.toFixed_Test / toInt_Test; NumberUtils.toFixed (HALF_UP of the
    double's decimal text), toInt (HALF_UP), isNaN; TbUtils.isMap, isList, padStart, padEnd,
    encodeURI / decodeURI (TbelInvokeDocsIoTest.encodeDecodeUri_Test)."""
    assert run("return [toFixed(0.345, 1), toFixed(0.345, 2), toFixed(2.5, 0), toFixed(-2.5, 0), "
               "toFixed(1.005, 2), toFixed(1234.5678, -2), toInt(0.3), toInt(0.5), toInt(2.7), "
               "toInt(-2.5), isNaN(1), isNaN(0.0 / 0.0), isMap({}), isMap([]), isList([]), "
               "isList('a'), padStart('5', 3, '0'), padEnd('5', 3, 'x')];") == [
        0.3, 0.35, 3, -3, 1.01, 1200, 0, 1, 3, -3, False, True, True, False, True, False,
        "005", "5xx"]
    original = ("-_.!~*'();/?:@&=+$,#ht://example.ж д a/path with spaces/?param1=Київ 1"
                "&param2=Україна2")  # noqa: RUF001 (ThingsBoard's test text)
    encoded = ("-_.!~*'();/?:@&=+$,#ht://example.%D0%B6%20%D0%B4%20a/path%20with%20spaces/"
               "?param1=%D0%9A%D0%B8%D1%97%D0%B2%201&param2=%D0%A3%D0%BA%D1%80%D0%B0%D1%97"
               "%D0%BD%D0%B02")
    assert run("return [encodeURI(msg.o), decodeURI(msg.e)];", {"o": original, "e": encoded}) == [
        encoded, original]


def test_java_class_methods_a_script_may_call() -> None:
    """java.lang.Integer.parseInt / valueOf / toString / toHexString and MAX_VALUE,
    Long.parseLong (exact up to 2^53 here), Double.parseDouble (Java's trim), String.valueOf
    (Java's text), Boolean.parseBoolean; also inside a def function."""
    assert run("def hex(s) { return Integer.parseInt(s, 16); }\n"
               "return [Integer.parseInt('12'), hex('-FF'), Integer.valueOf('+7'), "
               "Integer.toString(255, 16), Integer.toString(5, 99), Integer.toHexString(-1), "
               "Integer.MAX_VALUE, Long.parseLong('9007199254740991'), Double.parseDouble(' 1.5 '), "
               "String.valueOf(msg), String.valueOf(null), Boolean.parseBoolean('TRUE'), "
               "Boolean.parseBoolean(null)];", {"a": [1, 2.5]}) == [
        12, -255, 7, "ff", "5", "ffffffff", 2147483647, 9007199254740991, 1.5, "{a=[1, 2.5]}",
        "null", True, False]


@pytest.mark.parametrize(("call", "message"), [
    ("Integer.parseInt('12.5')", 'NumberFormatException: For input string: "12.5"'),
    ("Integer.parseInt('2147483648')", 'NumberFormatException: For input string: "2147483648"'),
    ("Integer.parseInt('z', 16)", 'NumberFormatException: For input string: "z" under radix 16'),
    ("Integer.parseInt(null)", "NumberFormatException: Cannot parse null string: null"),
    ("Integer.parseInt('1', 40)", "NumberFormatException: radix 40 greater than Character.MAX_RADIX"),
    ("Double.parseDouble('')", "NumberFormatException: empty String"),
    ("Long.parseLong('9007199254740993')", 'RangeError: Long.parseLong("9007199254740993"): beyond '
     "2^53, not exact as a number here"),
    ("Long.MAX_VALUE", "ReferenceError: Long.MAX_VALUE is not supported here (see "
     "docs/rules-scripts.md)"),
])
def test_java_class_methods_fail_as_java_does(call: str, message: str) -> None:
    assert error(f"return {call};") == message


def test_another_java_class_method_is_refused_at_compile() -> None:
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine("return Integer.bitCount(3);", "TBEL")
    assert str(caught.value) == (
        "TBEL: the method Integer.bitCount() is not in the supported subset (line 1: "
        "'.bitCount('); see docs/rules-scripts.md")
    assert ScriptEngine("return typeof Integer;").call({}, {}, TELEMETRY) == "undefined"


# -- in a chain -------------------------------------------------------------------------------------

SCRIPT = """var out = {};
foreach (e : msg.entrySet()) {
  if (e.getValue() != null && !e.key.startsWith("_")) {
    out.put(e.getKey().toLowerCase(), e.value);
  }
}
foreach (r : msg.getOrDefault("readings", [])) {
  out.put(r.get("name"), toFixed(r.value, 1));
}
out.remove("readings");
metadata.put("count", "" + out.size());
return {msg: out, metadata: metadata, msgType: msgType};"""


def test_a_tbel_transform_with_foreach_and_map_methods_runs_in_a_chain() -> None:
    """A transform node whose TBEL script flattens readings with foreach and map methods, then
    save timeseries: what is saved and the metadata the script set, one by one and batched."""
    docs = [{"type": n.TRANSFORM, "name": "Flatten",
             "configuration": {"scriptLang": "TBEL", "tbelScript": SCRIPT}},
            {"type": n.SAVE_TIMESERIES, "name": "Save", "configuration": {"defaultTTL": 0}}]
    rc, meta = parse({"ruleChain": {"name": "t", "type": "EDGE"},
                      "metadata": {"firstNodeIndex": 0, "nodes": docs, "connections": [
                          {"fromIndex": 0, "toIndex": 1, "type": "Success"}]}})
    engine = RuleEngine(rc, meta, clock=lambda: 777)
    data = {"Temp": 21.46, "_raw": "x", "readings": [{"name": "hum", "value": 40.06},
                                                     {"name": "co2", "value": 412.55}]}
    msg = RuleMsg(TELEMETRY, Originator("DEVICE", "d1"), data, {"ts": "5"}, ts=1000)
    saved = SaveTimeseries("nodes[1] 'Save'", ("DEVICE", "d1"), 5,
                           {"temp": 21.46, "hum": 40.1, "co2": 412.6}, 0, True, True)

    def effects(out: list[Outcome]) -> list[Outcome]:
        return [o for o in out if not isinstance(o, Visited)]

    assert effects(engine.run(msg)) == [saved]
    assert [effects(out) for out in engine.run_many([msg, msg])] == [[saved], [saved]]
    bad = RuleMsg(TELEMETRY, Originator("DEVICE", "d1"), {"readings": [{"name": "x"}]},
                  {"ts": "5"}, ts=1000)
    failed = effects(engine.run(bad))
    assert [type(o) for o in failed] == [Failed]
    assert ScriptEngine(SCRIPT, "TBEL").transform(data, {"ts": "5"}, TELEMETRY) == [
        TransformResult({"temp": 21.46, "hum": 40.1, "co2": 412.6}, {"ts": "5", "count": "3"},
                        TELEMETRY)]


# -- argument counts, comments, foreach over an integer, per-call state -------------------------


def test_split_with_a_limit_as_java_lang_string_split() -> None:
    """String.split(regex, limit): a limit > 0 gives at most limit parts (the last holds the
    rest), 0 removes trailing empty strings, < 0 keeps them; no separator found: the text."""
    assert run('return ["k=v=w".split("=", 2), "k=v=w".split("=", 1), "a,b,,".split(",", -1),\n'
               '  "a,b,,".split(",", 0), "a,b,,".split(",", 10), "abc".split(",", 2), ",".split(","),\n'
               '  "".split(",")];') == [
        ["k", "v=w"], ["k=v=w"], ["a", "b", "", ""], ["a", "b"], ["a", "b", "", ""], ["abc"],
        [], [""]]


def test_map_remove_of_a_key_and_value_removes_only_on_a_match() -> None:
    """Map.remove(key, value) (HashMap.remove(Object, Object)): true and removed when the
    value equals, else false and the map as it was."""
    assert run('var m = {"a": 1, "b": 2};\nvar r1 = m.remove("a", 2);\nvar r2 = m.remove("b", 2);\n'
               'return [r1, r2, m, m.remove("zz", null)];') == [False, True, {"a": 1}, False]


@pytest.mark.parametrize(("script", "message"), [
    ("return msg.toString(5);",
     "TypeError: unable to resolve method: toString() with 1 argument on a map"),
    ("var l = [3, 1];\nl.sort(true, 5);\nreturn l;",
     "TypeError: unable to resolve method: sort() with 2 arguments on a list"),
    ("return [1].get();", "TypeError: unable to resolve method: get() with 0 arguments on a list"),
    ('return "ab".substring(0, 1, 2);',
     "TypeError: unable to resolve method: substring() with 3 arguments on text"),
    ("return toInt(1.5, 2);", "TypeError: unable to resolve method: toInt() with 2 arguments"),
    ("return padStart('1', 3);", "TypeError: unable to resolve method: padStart() with 2 arguments"),
    ("return Integer.parseInt('1', 10, 3);",
     "TypeError: unable to resolve method: Integer.parseInt() with 3 arguments"),
])
def test_a_call_with_an_argument_count_java_has_no_overload_for_fails(script: str,
                                                                       message: str) -> None:
    """MVEL finds no method for a call whose argument count no overload has (ExecutionArrayList,
    ExecutionHashMap, java.lang.String, TbUtils's stubs): an error, never the extra arguments
    dropped."""
    assert error(script, {"a": 1}) == message


@pytest.mark.parametrize("script", [
    "return toString(5);", "return eval('1');", "return isFinite(1);", "return Array(3);",
])
def test_a_call_of_a_javascript_global_function_is_refused_at_compile(script: str) -> None:
    """TBEL has no function of these names (MVEL finds no method): refused, not JavaScript's."""
    with pytest.raises(ScriptSyntaxError, match="is not in the supported subset"):
        ScriptEngine(script, "TBEL")
    assert run("def toString(x) { return 'v' + x; }\nreturn toString(5);") == "v5"
    assert run("return [Integer. toString(5), msg ./* c */ toString()];", {"a": 1}) == ["5", "{a=1}"]


def test_a_comment_between_the_dot_and_the_method_name_is_seen_through() -> None:
    """ExecutionArrayList.sort by number whatever the comments; a method outside the subset
    is refused behind a comment too; Math's methods stay Math's across a line comment."""
    assert run("var l = [10, 9, 1];\nl./* c */sort();\nl .  // c\n  add(2);\nreturn l;") == [
        1, 9, 10, 2]
    assert run("return Math // c\n  .max(1, 2);") == 2
    with pytest.raises(ScriptSyntaxError, match=r"the method chars\(\) is not in the supported"):
        ScriptEngine('return "abc"./**/chars();', "TBEL")


@pytest.mark.parametrize("script", [
    'var l = [10, 9, 1];\nl["sort"]();\nreturn l;', 'return msg["toString"]();',
    'var l = [10, 9, 1];\n(l.sort)();\nreturn l;', 'var l = [10, 9, 1];\n((l . sort))();\nreturn l;',
    'var l = [10, 9, 1];\n(l["sort"])();\nreturn l;',
    "return `a`;",
])
def test_a_computed_member_call_and_a_template_literal_are_refused(script: str) -> None:
    """``l["sort"]()`` and ``(l.sort)()`` would be JavaScript's sort (by text: [1, 10, 9]);
    MVEL has neither them nor template literals."""
    with pytest.raises(ScriptSyntaxError, match="is not in the supported subset"):
        ScriptEngine(script, "TBEL")


def test_foreach_over_an_integer_counts_as_it_goes() -> None:
    """MVEL's ForEachNode counts 1..n in a loop (no list of n elements): a break after 10 of
    a million is cheap, within the default 16 MiB memory cap."""
    assert run("var n = 0;\nforeach (i : msg.n) { n = n + i; if (i == 10) { break; } }\nreturn n;",
               {"n": 1_000_000}) == 55
    assert run("var n = 0;\nforeach (i : 0) { n = n + 1; }\nreturn n;") == 0


def test_foreach_body_may_declare_the_items_name_again() -> None:
    """MVEL lets the body of ``foreach (x : l)`` declare ``var x``."""
    assert run("var s = 0;\nforeach (x : [1, 2]) { var x = x * 10; s = s + x; }\nreturn s;") == 30


def test_a_helper_assigned_by_a_script_is_fresh_on_the_next_message() -> None:
    """Each run has fresh variables (MVEL's variable factory per invocation): ``toInt = null``
    on one message leaves NumberUtils.toInt (HALF_UP) for the next; a name set without ``var``
    is not there on the next message."""
    engine = ScriptEngine("var r = [toInt(2.5), flag == true];\n"
                          "if (msg.first) { toInt = null; flag = true; }\nreturn r;", "TBEL")
    assert engine.call({"first": True}, {}, TELEMETRY) == [3, False]
    assert engine.call({}, {}, TELEMETRY) == [3, False]
    assert engine.call_many([({}, {}, TELEMETRY), ({"first": True}, {}, TELEMETRY),
                             ({}, {}, TELEMETRY)]) == [[3, False]] * 3
    assert run("def toInt(x) { return 'mine'; }\nreturn [toInt(1.5), parseInt('12')];") == [
        "mine", 12]


def test_add_all_of_more_than_65535_elements() -> None:
    """ArrayList.addAll has no limit on the collection's size."""
    assert run("var big = [];\nforeach (i : 70000) { big.add(i); }\nvar l = [0];\nl.addAll(big);\n"
               "l.addAll(1, [-1]);\nreturn [l.size(), l[0], l[1], l[2], l[70001]];") == [
        70002, 0, -1, 1, 70000]


def test_the_small_java_details() -> None:
    """ExecutionArrayList.indexOf(o, fromIndex) is the index in slice(fromIndex) plus fromIndex
    as given ([1, 2, 3].indexOf(3, -1): 0 + -1); Integer/Boolean.equals; Integer.valueOf(int),
    Long.valueOf(long), Double.valueOf(double); Jackson writes a Map.Entry as {"a": 1}."""
    assert run("return [[1, 2, 3].indexOf(3, -1), [1, 2, 3].indexOf(3, 1), [1, 2, 3].indexOf(9, -1),\n"
               "  (1).equals(1), (1).equals(2), (1).equals('1'), true.equals(true),\n"
               "  Integer.valueOf(5), Long.valueOf(7), Double.valueOf(1.5)];") == [
        -1, 2, -1, True, False, False, True, 5, 7, 1.5]
    assert run("return msg.entrySet();", {"a": 1, "b": "x"}) == [{"a": 1}, {"b": "x"}]


@pytest.mark.parametrize(("call", "message"), [
    ("parseBytesToInt([1, 2, 3], -1, 2)",
     "IndexOutOfBoundsException: Range [-1, -1 + 2) out of bounds for length 3"),
    ("parseBytesToInt([1, 2, 3], 0, -1)", "IllegalArgumentException: newPosition > limit: (5 > 4)"),
    ("parseBytesToInt([1, 2, 3], 0, -1, false)",
     "IndexOutOfBoundsException: Range [0, 0 + -1) out of bounds for length 3"),
    ("parseBytesToLong([1, 2, 3], -1, 2)",
     "IndexOutOfBoundsException: Range [-1, -1 + 2) out of bounds for length 3"),
])
def test_parse_bytes_with_a_negative_offset_or_length_fails_as_byte_buffer_does(
        call: str, message: str) -> None:
    """TbUtils.parseBytesToInt/Long pass a negative offset or length through their checks to
    ByteBuffer: position(size - length) throws IllegalArgumentException, put(data, offset,
    length) IndexOutOfBoundsException."""
    assert error(f"return {call};") == message


def test_the_helpers_python_names_are_the_runtimes() -> None:
    """TBEL_HELPERS (bound per call in the script's function) lists exactly the runtime's."""
    import _quickjs  # type: ignore[import-not-found]

    from edge_sync.rules.tbel_runtime import TBEL_HELPERS, runtime
    context = _quickjs.Context()
    context.eval(runtime())
    assert context.eval("JSON.stringify(Object.keys(__tbelH).filter(k => k !== 'java'))") == (
        json.dumps(list(TBEL_HELPERS), separators=(",", ":")))


def test_a_member_written_after_a_spaced_dot_is_no_variable_of_the_script() -> None:
    """``msg. JSON = 1`` writes the message's key JSON: the global JSON stays JSON's (it was
    taken for a variable the script assigns, declared afresh per call, and hid it)."""
    assert run("msg. JSON = 1; msg.j = JSON.stringify([1]); return msg;", {"a": 1}) == {
        "a": 1, "JSON": 1, "j": "[1]"}
    assert run("msg . Math = 2; msg.m = Math.max(1, 3); return msg;", {}) == {"Math": 2, "m": 3}


@pytest.mark.parametrize("script", [
    "let toInt = 5; return toInt;",
    "const limit = 3; return limit;",
    "class A {}\nreturn 1;",
])
def test_let_const_and_class_are_refused_as_tbel_has_none(script: str) -> None:
    """MVEL declares with ``var`` (or a type): JavaScript's lexical declarations are refused, so
    none escapes the per-call scope of the names a script assigns."""
    with pytest.raises(ScriptSyntaxError, match="let, const and class declarations"):
        ScriptEngine(script, "TBEL")


def _long_script(lines: int) -> str:
    """A TBEL script of ``lines`` lines: member calls, class methods, helpers, literals and
    comments at a few places only, so most of it is one run of code."""
    out = []
    for i in range(lines // 4):
        note = f" // note {i}" if i == 0 else ""
        out.append(f"var a{i} = msg.temperature + {i};{note}")
        out.append(f"if (a{i} > 5) {{ msg.put(a{i}, Math.max(a{i}, 2)); }}")
        out.append(f"var s{i} = msg.keys.size() + " + ("'x'.length();" if i == lines // 8 else "1;"))
        out.append(f"total = toInt(a{i});" + (" /* c */" if i == lines // 4 - 1 else ""))
    return "\n".join(out) + "\nreturn {msg: msg};"


def test_a_long_script_translates_in_time_linear_in_its_length() -> None:
    """A 4,000-line script is translated (tbel_to_js and tbel_scope) in well under a second of
    CPU time: about 0.05 s on the 2-core development machine, where it took 2 s when each
    ``.name(`` rescanned the code before it for a class name (quadratic in the length of a run
    of code). The bound, ten times the time measured, is CPU time of this process
    (time.process_time), so a loaded machine does not make it fail."""
    script = _long_script(4000)
    assert script.count("\n") == 4000
    started = time.process_time()
    js = tbel_to_js(script)
    tbel_scope(script)
    spent = time.process_time() - started
    assert js.count("\n") == 4000 and "Math.max(" in js and "[__tbelS.put](" in js
    assert spent < 0.5, spent


# -- java.lang.String: charAt, matches and split by a regular expression ------------------------

def test_split_by_a_regular_expression_as_java_lang_string_split() -> None:
    """String.split(regex, limit) is Pattern.split: the JDK's own examples of String.split
    ("boo:and:foo" by "o" and ":" with limits 2, 5, -2 and 0), a regex of several characters,
    a zero-width match at the start gives no leading empty string (Java 8 and later), a match
    of width > 0 there does; "." is a regex (every character a separator: no part left)."""
    assert run('var s = "boo:and:foo";\nreturn [s.split(":", 2), s.split(":", 5), s.split(":", -2),\n'
               '  s.split("o", 5), s.split("o", -2), s.split("o", 0), s.split("o", 2)];') == [
        ["boo", "and:foo"], ["boo", "and", "foo"], ["boo", "and", "foo"],
        ["b", "", ":and:f", "", ""], ["b", "", ":and:f", "", ""], ["b", "", ":and:f"],
        ["b", "o:and:foo"]]
    assert run('return ["a1b22c333".split("\\\\d+"), "a1b22c333".split("\\\\d+", -1),\n'
               '  " a  b ".split("\\\\s+"), "abc".split(""), "a.b.c".split("."),\n'
               '  "2023-01-02T03:04".split("[-T:]"), "a,b;c".split("[,;]", 2), "x".split("y")];') == [
        ["a", "b", "c"], ["a", "b", "c", ""], ["", "a", "b"], ["a", "b", "c"], [],
        ["2023", "01", "02", "03", "04"], ["a", "b;c"], ["x"]]


def test_java_regex_reads_differ_from_javascripts_and_are_translated() -> None:
    """What Java's Pattern reads otherwise than JavaScript: \\s is [ \\t\\n\\x0B\\f\\r] (a
    no-break space is no space), "." stops at Java's line terminators (\\u0085 too) and
    (?s) lifts that, "$" matches before a final line terminator, a "]" first in a class is a
    literal, \\Q...\\E quotes, \\p{Digit}-like POSIX classes, (?i) ignores case; matches()
    takes the whole text."""
    assert run('return ["a b\\u00a0c".split("\\\\s"), "a\\u0085b".matches("a.b"),\n'
               '  "a\\u0085b".matches("(?s)a.b"), "ab]c".split("[]]"), "a*b".split("\\\\Q*\\\\E"),\n'
               '  "x1y".split("\\\\p{Digit}"), "caT".matches("(?i)[a-z]+"), "abc".matches("b"),\n'
               '  "abc".matches("a.c"), "ab\\n".split("b$"), "ab".matches("a|ab")];') == [
        ["a", "b\u00a0c"], False, True, ["ab", "c"], ["a", "b"], ["x", "y"], True, False,
        True, ["a", "\n"], True]


def test_replace_all_and_first_as_java_lang_string() -> None:
    """String.replaceAll / replaceFirst (Matcher.replaceAll / replaceFirst): a Java regex; in
    the replacement $n is group n (as many digits as name a group: "$11" with one group is
    group 1 then "1"), ${name} a named group, an unmatched group nothing, \\$ a dollar; an
    empty match between every character; the replacement's errors only at a match."""
    assert run('return ["a1b22c".replaceAll("\\\\d+", "#"), "abc".replaceAll("", "-"),\n'
               '  "John Smith".replaceAll("(\\\\w+) (\\\\w+)", "$2, $1"),\n'
               '  "a.b".replaceFirst("\\\\.", "\\\\$"), "aaa".replaceFirst("a", "b"),\n'
               '  "2024-01-02".replaceAll("(?<y>\\\\d{4})-(\\\\d\\\\d)-(\\\\d\\\\d)", "$3/$2/${y}"),\n'
               '  "ab".replaceAll("(a)|b", "[$1]"), "abc".replaceAll("(b)", "$11"),\n'
               '  " x  y ".replaceAll("\\\\s+", ""), "abc".replaceAll("z", "$2")];') == [
        "a#b#c", "-a-b-c-", "Smith, John", "a$b", "baa", "02/01/2024", "[a][]", "ab1c", "xy",
        "abc"]
    assert error('return "abc".replaceAll("b", "$2");') == "IndexOutOfBoundsException: No group 2"
    assert error('return "abc".replaceAll("b", "x\\\\");') == (
        "IllegalArgumentException: character to be escaped is missing")
    assert error('return "abc".replaceAll("b", "${x}");') == (
        "IllegalArgumentException: No group with name {x}")


def test_char_at_as_java_lang_string() -> None:
    """String.charAt: the character (a one-character text); an index outside the text is
    StringIndexOutOfBoundsException, as Java 17 words it."""
    assert run('var s = "abc";\nreturn [s.charAt(0), s.charAt(2), s.charAt(1) == "b"];') == [
        "a", "c", True]
    assert error('return "abc".charAt(3);') == "RangeError: String index out of range: 3"
    assert error('return "abc".charAt(-1);') == "RangeError: String index out of range: -1"


@pytest.mark.parametrize(("script", "message"), [
    ('return "abc".split("a++");', 'TBEL: SyntaxError: the regular expression "a++": the '
     "possessive quantifier ++ is not supported here (see docs/rules-scripts.md) (line 1: "
     "'.split(\"a++\")')"),
    ('var x = 1;\nreturn "abc".matches("(?>a)bc");', 'TBEL: SyntaxError: the regular expression '
     '"(?>a)bc": an atomic group (?>...) is not supported here (see docs/rules-scripts.md) '
     "(line 2: '.matches(\"(?>a)bc\")')"),
    ("return 'abc'.split('a[b[c]]', 2);", 'TBEL: SyntaxError: the regular expression "a[b[c]]": a '
     "class inside a character class ([a[b]]) is not supported here (see "
     "docs/rules-scripts.md) (line 1: \".split('a[b[c]]',\")"),
    ('return "abc".split("\\\\y");', "TBEL: PatternSyntaxException: Illegal/unsupported escape "
     "sequence near index 1 (line 1: '.split(\"\\\\\\\\y\")'); see docs/rules-scripts.md"),
    ('return "abc".split("*");', "TBEL: PatternSyntaxException: Dangling meta character '*' "
     "near index 0 (line 1: '.split(\"*\")'); see docs/rules-scripts.md"),
    ('return "abc".split("[a");', "TBEL: PatternSyntaxException: Unclosed character class near "
     "index 1 (line 1: '.split(\"[a\")'); see docs/rules-scripts.md"),
    ('return "abc".matches("(?m)a");', 'TBEL: SyntaxError: the regular expression "(?m)a": the '
     "inline flag group (?m) is not supported here (see docs/rules-scripts.md) (line 1: "
     "'.matches(\"(?m)a\")')"),
    ('return "abc".split("\\\\p{L}");', 'TBEL: SyntaxError: the regular expression "\\\\p{L}": the '
     "character property \\p{L} is not supported here (see docs/rules-scripts.md) (line 1: "
     "'.split(\"\\\\\\\\p{L}\")')"),
])
def test_a_literal_regular_expression_java_refuses_or_that_differs_is_refused_at_compile(
        script: str, message: str) -> None:
    """Java's PatternSyntaxException (its description and index) or what is not translated:
    refused when the script is compiled, naming the line."""
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine(script, "TBEL")
    assert str(caught.value) == message


def test_a_regular_expression_in_a_string_literal_is_no_call() -> None:
    """``.split("[")`` inside a string literal is text, not checked."""
    assert run("return \"a.split('[')\";") == "a.split('[')"


# -- TbUtils: longs, doubles, bytes ----------------------------------------------------------------

def test_parse_long_as_tbutils() -> None:
    """TbelInvokeDocsIoTest.parseLong_Test and TbUtilsTest.parseLong: radix 0 (decimal, else
    hex), 2 (64-bit two's complement), 8, 16, 27; blank text null. Java's long beyond 2^53 (the
    tests' Long.MAX_VALUE cases) is an error here, not an inexact number."""
    assert run('return [parseLong("0"), parseLong("473"), parseLong("+42"), parseLong("-0", 10),\n'
               '  parseLong("-0xFFFF"), parseLong("-FFFF", 16), parseLong("11001101100110", 2),\n'
               '  parseLong("KonaLong", 27), parseLong("FFFFFFFF"), parseLong(""), parseLong(" "),\n'
               '  parseLong("1111111111111111111111111111111111111111111111111100110010011010", 2)];'
               ) == [0, 473, 42, 0, -65535, -65535, 13158, 218840926543, 4294967295, None, None,
                     -13158]
    assert error('return parseLong("777777777777777777777", 8);') == (
        "RangeError: parseLong(): 9223372036854775807 is beyond 2^53, not exact as a number here")


@pytest.mark.parametrize(("call", "message"), [
    # TbelInvokeDocsIoTest.parseLong_Test's errors
    ('parseLong("9223372036854775808", 10)',
     'NumberFormatException: For input string: "9223372036854775808"'),
    ('parseLong("0xFGFFFFFF", 16)',
     'NumberFormatException: Failed radix [16] for value: "0xFGFFFFFF", must be [-1] !'),
    ('parseLong("FFFFFFFFF", 16)', 'NumberFormatException: The hexadecimal value: "FFFFFFFFF" '
     "must be of even length, or if the decimal value must be a number!"),
    ('parseLong("1787", 8)',
     'NumberFormatException: Failed radix [8] for value: "1787", must be [-1] !'),
    ('parseLong("KonaLong", 10)',
     'NumberFormatException: Failed radix [10] for value: "KonaLong", must be [-1] !'),
    # compareIntLongValueMinMax
    ('parseLong("zzzzzzzzzzzzzzzzzzz", 36)', 'NumberFormatException: Value "zzzzzzzzzzzzzzzzzzz"'
     "is greater than the maximum Long value 9223372036854775807 !"),
    ('parseHexToLong("409B04B10CB295EA")', "RangeError: parseHexToLong(): 4655319798286292458 "
     "is beyond 2^53, not exact as a number here"),
    ('parseHexToLong("")', "TypeError: parseHexToLong(): the value is blank (null)"),
    ("parseBytesToDouble([-1, -1, -1, -1, -1, -1, -1, -1], 0, 8, true)",
     "NumberFormatException: byte[] 0xFFFFFFFFFFFFFFFF is a Not-a-Number (NaN) value"),
    ("parseBytesIntToFloat([1, 2], 3)",
     "IllegalArgumentException: Offset: 3 is out of bounds for array with length: 2!"),
    ("parseBytesLongToDouble([1, 2, 3, 4, 5, 6, 7, 8, 9], 0, 9)",
     "IllegalArgumentException: Length: 9 is too large. Maximum 8 bytes is allowed!"),
    ('intLongToRadixString(5, 3)', "IllegalArgumentException: Invalid radix: [3]"),
    ("longToHex(1.5)", "TypeError: longToHex(): 1.5 is not a whole number"),
])
def test_long_double_and_byte_helpers_fail_as_tbutils_does(call: str, message: str) -> None:
    assert error(f"return {call};") == message


def test_hex_to_long_and_double_helpers_as_tbutils_test() -> None:
    """TbUtilsTest.parsDouble / doubleToHex_Test (longValHex "409B04B10CB295EA" is the double
    1729.1729, reversed -2.7208640774822924E205), parseHexToLong's endian forms,
    parseHexIntLongToFloat_Test."""
    assert run('return [parseHexToLong("0x1F2E"), parseHexToLong("2E1F", false),\n'
               '  parseBigEndianHexToLong("FFFFFFFF"), parseLittleEndianHexToLong("FFFFFF7F")];'
               ) == [7982, 7982, 4294967295, 2147483647]
    assert run('var h = "409B04B10CB295EA";\nreturn [parseHexToDouble(h), parseHexToDouble(h, false),\n'
               '  parseBigEndianHexToDouble(h), parseLittleEndianHexToDouble("EA95B20CB1049B40"),\n'
               '  parseHexToDouble("0x000000000000000A")];') == [
        1729.1729, -2.7208640774822924E205, 1729.1729, 1729.1729, 4.9E-323]
    assert run('return [parseHexIntLongToFloat("0x0A", true), parseHexIntLongToFloat("0x0A", false),\n'
               '  parseHexIntLongToFloat("0x00000A", true), parseHexIntLongToFloat("0x0A0000", false),\n'
               '  parseHexIntLongToFloat("0x000A0A", true), parseHexIntLongToFloat("0x0A0A00", false)];'
               ) == [10.0, 10.0, 10.0, 10.0, 2570.0, 2570.0]


def test_bytes_to_double_and_float_helpers_as_tbutils_test() -> None:
    """TbUtilsTest.parseBytesToDouble, parseBytesLongToDouble (the AT101 coordinates) and
    parseBytesIntToFloat, and TbelInvokeDocsIoTest's bytesIntToFloat7/8 and
    bytesLongToDouble1/2. parseBytesIntToFloat's float is a whole number, held exactly
    (918517504, which Java prints 9.185175E8), so that its division by a factor is Java's."""
    assert run("var d = [64, -101, 4, -79, 12, -78, -107, -22];\n"
               "return [parseBytesToDouble([0x0A]), parseBytesToDouble(d, 0),\n"
               "  parseBytesToDouble(d, 0, 8, false),\n"
               "  parseBytesToDouble([0x7F, 0xC0, 0xFF, 0x00, 0x7F, 0xC0, 0xFF, 0x00], 0, 8, false)];"
               ) == [4.9E-323, 1729.1729, -2.7208640774822924E205, 7.234601680440024E-304]
    assert run("var l = [0, 0, 0, 0, 0, 0, 0, 0x0A];\n"
               'var c = hexToBytes("0x32D009423F23B300B0106E08D96B6C00");\n'
               "return [parseBytesLongToDouble(l), parseBytesLongToDouble(l, 7, 1, true),\n"
               "  parseBytesLongToDouble(l, 7, 1, false), parseBytesLongToDouble(l, 6, 2, false),\n"
               "  parseBytesLongToDouble(c, 0, 8, false) / 1e15,\n"
               "  parseBytesLongToDouble(c, 8, 8, false) / 1e15,\n"
               "  parseBytesLongToDouble(l, 0, 8, false) == 7.2057594037927936E17];") == [
        10.0, 10.0, 10.0, 2560.0, 50.422775429058610, 30.517877378257072, True]
    assert run("var i = [0x00, 0x00, 0x00, 0x0A];\n"
               'var b = hexToBytes("0x01756403671B01048836BF7701F000090722050000");\n'
               "return [parseBytesIntToFloat(i, 3, 1, true), parseBytesIntToFloat(i, 2, 2, false),\n"
               "  parseBytesIntToFloat(i, 0, 4, false) / 1e3, parseBytesIntToFloat(b, 9, 4, false) / 1e6,\n"
               "  parseBytesIntToFloat(b, 13, 4, false) / 1e6, parseBytesIntToFloat(b, 9),\n"
               "  parseBytesIntToFloat(b, 9, 2), parseBytesIntToFloat(b, 9, 2, false),\n"
               "  parseBytesIntToFloat(b, b.size())];") == [
        10.0, 2560.0, 167772.16, 24.62495, 118.030576, 918517504, 14015.0, 48950.0, 0.0]


def test_base64_bytes_and_hex_text_helpers_as_tbutils() -> None:
    """TbelInvokeDocsIoTest.base64_Test; TbUtilsTest.longToHex_Test (those within 2^53),
    floatToHex_Test, doubleToHex_Test, numberToString_Test, intToHexWithPrintUnsignedBytes_Test."""
    assert run('return [base64ToHex("Kkk="), bytesToBase64([42, 73]), base64ToBytes("Kkk="),\n'
               '  base64ToBytesList("AQIDBAU="), hexToBytesArray("0x0102FF"),\n'
               "  printUnsignedBytes(hexToBytes(intToHex(-40, false, true))),\n"
               "  printUnsignedBytes(hexToBytes(intToHex(-40, true, true)))];") == [
        "2A49", "Kkk=", [42, 73], [1, 2, 3, 4, 5], [1, 2, -1], [216, 255], [255, 216]]
    assert run("return [longToHex(0xAB, true, true), longToHex(0xABCD, true, true),\n"
               "  longToHex(0xABCDEF, true, true), longToHex(188900977659375, false, true, 8),\n"
               "  longToHex(0xAB, true, true, 2), longToHex(0xAB, false, false, 2),\n"
               "  longToHex(-10977906346360922, true, true, 4),\n"
               "  longToHex(-10977906346360922, false, false, 4)];"
               ) == ["0xAB", "0xABCD", "0xABCDEF", "0xABEFCDAB", "0xAB", "AB", "0xFFA6", "D8FF"]
    assert run("return [floatToHex(123456789.00), floatToHex(123456789.67), floatToHex(10.0),\n"
               "  floatToHex(1.4E-44), floatToHex(10.0, false), doubleToHex(1729.1729),\n"
               "  doubleToHex(1729.1729, false), doubleToHex(4.9E-323)];") == [
        "0x4CEB79A3", "0x4CEB79A3", "0x41200000", "0x0000000A", "0x00002041",
        "0x409B04B10CB295EA", "0xEA95B20CB1049B40", "0x000000000000000A"]
    assert run("return [intLongToRadixString(58, 2), intLongToRadixString(158, 2),\n"
               "  intLongToRadixString(131585, 2), intLongToRadixString(-102, 2),\n"
               "  intLongToRadixString(-13158, 2), intLongToRadixString(13158, 16),\n"
               "  intLongToRadixString(-13158, 16), intLongToRadixString(-13158, 16, true, true),\n"
               "  intLongToRadixString(1024, 16, true, true), intLongToRadixString(-1024, 16, true, true),\n"
               "  intLongToRadixString(1356099454469, 36)];") == [
        "00111010", "0000000010011110", "00000000000000100000001000000001",
        "1111111111111111111111111111111111111111111111111111111110011010",
        "1111111111111111111111111111111111111111111111111100110010011010", "3366", "FFCC9A",
        "0xFFCC9A", "0x0400", "0xFFFC00", "hazelnut"]


# -- ExecutionHashMap: sortByKey, sortByValue ------------------------------------------------------

def test_map_sort_by_key_and_by_value_as_execution_hash_map() -> None:
    """TbelInvokeDocsIoTest.mapsSort_Test: sortByKey orders the map by its keys, clone copies
    it, sortByValue orders it by its values (73, 73, "508": all numbers, so by number; equal
    values keep their order) and gives null (ExecutionHashMap.sortByValue is void)."""
    script = (
        'msg.put("humidity", 73);\nmsg.putIfAbsent("temperature1", 73);\nmsg.remove("temperature");\n'
        "msg.sortByKey();\nvar mapSortByKey = msg.clone();\nvar sortByValue = msg.sortByValue();\n"
        "return {mapSortByKey: mapSortByKey, sortByValue: sortByValue, mapSortByValue: msg};")
    out = run(script, {"temperature": 42, "nested": "508"})
    assert out == {"mapSortByKey": {"humidity": 73, "nested": "508", "temperature1": 73},
                   "sortByValue": None,
                   "mapSortByValue": {"humidity": 73, "temperature1": 73, "nested": "508"}}
    assert list(out["mapSortByKey"]) == ["humidity", "nested", "temperature1"]
    assert list(out["mapSortByValue"]) == ["humidity", "temperature1", "nested"]


def test_map_sorts_descending_by_text_and_into_a_new_map() -> None:
    """sortByKey(false) / sortByValue(false) sort descending; values that are not all numbers
    sort by their text (String.valueOf, compareTo); toSortedByKey / toSortedByValue leave the
    map as it is and give a sorted copy (ExecutionHashMap.toSortedByKey / toSortedByValue)."""
    out = run('var m = {"b": "x", "c": 10, "a": "y"};\nvar byKey = m.toSortedByKey(false);\n'
              "var byValue = m.toSortedByValue();\nm.sortByValue(false);\n"
              "return [m, byKey, byValue, [3, 1].clone()];")
    assert [list(x) for x in out[:3]] == [["a", "b", "c"], ["c", "b", "a"], ["c", "b", "a"]]
    assert out[3] == [3, 1]
    assert error("var m = {a: 1};\nm.sortByKey(1);\nreturn m;") == (
        "TypeError: sortByKey(): asc is not true or false")


# -- def: each call's own variables ---------------------------------------------------------------

def test_a_name_a_def_assigns_is_its_own_on_each_call() -> None:
    """MVEL gives each call of a ``def`` function its own variables (org.mvel2.ast.Function.call:
    a FunctionVariableResolverFactory per call, the body's variables indexed in it): a recursive
    call does not overwrite its caller's ``a`` (fib(10) is 55; with one shared ``a`` it was
    wrong), nor its caller's ``x``; and the script's own ``t``, set after the ``def``, is not
    the function's."""
    assert run("def fib(n) { if (n < 2) { return n; } a = fib(n - 1); b = fib(n - 2); "
               "return a + b; }\nreturn fib(10);") == 55
    assert run("def first(l, i) { x = l[i]; if (i + 1 < l.size()) { first(l, i + 1); } "
               "return x; }\nreturn first([1, 2, 3], 0);") == 1
    assert run("def f(a) { t = a * 2; return t; }\nt = 1;\nvar y = f(5);\nreturn [t, y];") == [
        1, 10]


def test_a_name_the_script_set_before_a_def_is_shared_with_it() -> None:
    """A variable the script declared or assigned before the ``def`` is the script's: the
    function reads and sets it (Function: the enclosing context's variables are its inputs);
    so are the script's arguments msg, metadata and msgType."""
    assert run("count = 0;\ndef inc() { count = count + 1; return count; }\ninc(); inc();\n"
               "return count;") == 2
    assert run("var seen = [];\ndef visit(n) { seen.add(n); if (n > 0) { visit(n - 1); } }\n"
               "visit(2);\nreturn seen;") == [2, 1, 0]
    assert run("def f(x) { msg = {'v': x}; }\nf(5);\nreturn msg;", {"v": 1}) == {"v": 5}


# -- Date: ThingsBoard's TbDate ---------------------------------------------------------------------

def test_new_date_of_text_as_tb_date() -> None:
    """TbelInvokeDocsIoTest.tbDateStringTZ_Test: ISO text with an offset (Z, -04, +02:00,
    +03:00:00) or none (the server's zone, UTC here), RFC 1123 text (GMT, +043056); and
    TbDateTest.TestFromString's other texts."""
    assert run('var d1 = new Date("2023-08-06T04:04:05.123Z");\n'
               'var d2 = new Date("2023-08-06T12:04:05.123");\n'
               'var d3 = new Date("2023-08-06T04:04:05.00-04");\n'
               'var d4 = new Date("2023-08-06T04:04:05.00+02:00");\n'
               'var d5 = new Date("2023-08-06T04:04:05.00+03:00:00");\n'
               'var d6 = new Date("Tue, 3 Jun 2008 11:05:30 GMT");\n'
               'var d7 = new Date("Tue, 3 Jun 2008 11:05:30 +043056");\n'
               "return [d1.toISOString(), d2.toISOString(), d3.toISOString(), d4.toISOString(),\n"
               "  d5.toISOString(), d6.toISOString(), d7.toISOString()];") == [
        "2023-08-06T04:04:05.123Z", "2023-08-06T12:04:05.123Z", "2023-08-06T08:04:05Z",
        "2023-08-06T02:04:05Z", "2023-08-06T01:04:05Z", "2008-06-03T11:05:30Z",
        "2008-06-03T06:34:34Z"]
    assert run('return [new Date("2023-09-06T01:04:05.00+04:30:56").toISOString(),\n'
               '  new Date("Sat, 3 Jun 2023 11:05:30 +0400").toISOString(),\n'
               '  new Date("Thu, 29 Feb 2024 11:05:30 -03").toISOString(),\n'
               '  new Date("Sat, 3 Jun 2023 11:05:30").toISOString(), new Date(0).getTime(),\n'
               '  Date.parse("1970-01-01 T00:00:00"), Date.parse("x")];') == [
        "2023-09-05T20:33:09Z", "2023-06-03T07:05:30Z", "2024-02-29T14:05:30Z",
        "2023-06-03T11:05:30Z", 0, 0, -1]


def test_date_add_functions_as_tb_date() -> None:
    """TbelInvokeDocsIoTest.tbDateFunction_Test: addYears ... addNanos from
    2024-01-01T10:00:00Z, each ISO text as its comments give it (Instant.toString: no fraction
    when zero, else 3, 6 or 9 digits)."""
    steps = [("addYears", 1), ("addYears", -2), ("addMonths", 2), ("addMonths", 10),
             ("addMonths", -13), ("addWeeks", 4), ("addWeeks", -5), ("addDays", 6),
             ("addDays", 45), ("addDays", -50), ("addHours", 23), ("addHours", -47),
             ("addMinutes", 59), ("addMinutes", -60), ("addSeconds", 59), ("addSeconds", -60),
             ("addNanos", 999999), ("addNanos", -1000000)]
    script = 'var d = new Date("2024-01-01T10:00:00.00Z");\nvar out = [d.toISOString()];\n' + "".join(
        f"d.{name}({n}); out.add(d.toISOString());\n" for name, n in steps) + "return out;"
    assert run(script) == [
        "2024-01-01T10:00:00Z", "2025-01-01T10:00:00Z", "2023-01-01T10:00:00Z",
        "2023-03-01T10:00:00Z", "2024-01-01T10:00:00Z", "2022-12-01T10:00:00Z",
        "2022-12-29T10:00:00Z", "2022-11-24T10:00:00Z", "2022-11-30T10:00:00Z",
        "2023-01-14T10:00:00Z", "2022-11-25T10:00:00Z", "2022-11-26T09:00:00Z",
        "2022-11-24T10:00:00Z", "2022-11-24T10:59:00Z", "2022-11-24T09:59:00Z",
        "2022-11-24T09:59:59Z", "2022-11-24T09:58:59Z", "2022-11-24T09:58:59.000999999Z",
        "2022-11-24T09:58:58.999999999Z"]


def test_date_utc_fields_and_set_time_as_tb_date_test() -> None:
    """TbDateTest.TestToUTC (0 for year, month or date is 1899, 12, 31; a two-digit year is
    19yy or 20yy), TestMethodGetTimeUTC, TestMethodSetTime (getUTCDay: Monday 1 ... Sunday 7;
    getUTCMonth 1 to 12), Test_Year_Moth_Date_Hours_Min_Sec_Without_TZ."""
    assert run("return [Date.UTC(0), new Date(Date.UTC(0)).toJSON(),\n"
               "  new Date(Date.UTC(96, 2, 2, 3, 4, 5)).toJSON(),\n"
               "  new Date(Date.UTC(22, 0, 0, 3, 4, 5, 678)).toJSON(),\n"
               "  new Date(Date.UTC(903, 0, 0, 3, 4, 5, 678)).toJSON(),\n"
               "  new Date(Date.UTC(2024, 2, 29, 3, 4, 5, 678)).toJSON(),\n"
               "  new Date(Date.UTC(1996, 1, 2, 3, 4, 5)).valueOf(),\n"
               "  new Date(Date.UTC(1969, 7, 20, 20, 17, 40)).valueOf(),\n"
               "  new Date(23, 9, 7, 8, 4, 5, 567).toISOString(), new Date(2023, 8, 18).getTime()];"
               ) == [-2209075200000, "1899-12-31T00:00:00Z", "1996-02-02T03:04:05Z",
                     "2022-12-31T03:04:05.678Z", "0903-12-31T03:04:05.678Z",
                     "2024-02-29T03:04:05.678Z", 820551845000, -14182940000,
                     "2023-09-07T08:04:05.567Z", 1692316800000]
    assert run('var d1 = new Date(1975, 12, 31, 23, 15, 30, 567, "-03:00");\n'
               "var out = [d1.getUTCMinutes(), d1.getUTCDay()];\n"
               "d1.setTime(d1.getTime() + 5 * 60 * 1000);\nout.add(d1.getUTCMinutes());\n"
               "out.add(d1.getUTCDay());\nd1.setTime(-378682769433);\n"
               "out.addAll([d1.getUTCFullYear(), d1.getUTCMonth(), d1.getUTCDate(), d1.getUTCHours(),\n"
               "  d1.getUTCMinutes(), d1.getUTCSeconds(), d1.getUTCMilliseconds(), d1.getUTCDay(),\n"
               "  d1.getFullYear(), d1.getHours(), d1.parseSecond()]);\nreturn out;") == [
        15, 4, 20, 4, 1958, 1, 1, 2, 20, 30, 567, 3, 1958, 2, -378682770]


@pytest.mark.parametrize(("script", "message"), [
    ("return Date.UTC(2023, 2, 29, 3, 4, 5, 678);",
     "DateTimeException: Invalid date 'February 29' as '2023' is not a leap year"),
    ('return new Date("2023-09-06T01:04:05.00+045");',
     "ConversionException: Cannot parse value [2023-09-06T01:04:05.00+045] as instant"),
    ('return new Date("Tue, 3 Jun 2023 11:05:30 GMT");',
     "ConversionException: Cannot parse value [Tue, 3 Jun 2023 11:05:30 GMT] as instant"),
    ("return {d: new Date(0)};", "TypeError: a Date in the script's value: ThingsBoard writes its "
     "localized text, which is not made here; give toISOString() or getTime() (see "
     "docs/rules-scripts.md)"),
    ("return new Date(0).toString();", "TypeError: the text of a Date (TbDate.toString: "
     "localized) is not made here: use toISOString() (see docs/rules-scripts.md)"),
    ('return new Date("1/2/2023", "M/d/yyyy");', "TypeError: new Date(text, pattern...) is not "
     "supported here (see docs/rules-scripts.md)"),
])
def test_dates_fail_as_tb_date_does_or_name_what_is_not_here(script: str, message: str) -> None:
    assert error(script) == message


def test_a_date_method_outside_the_subset_is_refused_at_compile() -> None:
    """TbDate's localized texts are not mapped: refused at compile."""
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine("var d = new Date(0);\nreturn d.toLocaleString();", "TBEL")
    assert str(caught.value) == ("TBEL: the method toLocaleString() is not in the supported "
                                 "subset (line 2: '.toLocaleString('); see docs/rules-scripts.md")
    with pytest.raises(ScriptSyntaxError, match=r"new \(Java object construction\)"):
        ScriptEngine("return new Dates(0);", "TBEL")


def both(first: str, second: str) -> str:
    """A step of TbDateTest's setter tests: a setter call on d1 and d2, their texts kept."""
    return f"d1.{first}; d2.{second}; o1.add(d1.toISOString()); o2.add(d2.toISOString());\n"


# TbDateTest's setter tests (TestMethodSetUTCFullYearMonthDate, TestMethodSeFullYearMonthDate,
# TestMethodSeHoursMinutesSecondsMilliSec, TestMethodSetUTCHoursMinutesSecondsMilliSec), the
# dates after each step as TbDate (ThingsBoard's source, the server's zone UTC) gives them
SET_YEAR_MONTH_DATE = (
    "var d1 = new Date(1975, 12, 31, 23, 15, 30, 567, \"-04:00\");\n"
    "var d2 = new Date(1975, 12, 31, 23, 15, 30, 567, \"+04:00\");\n"
    "var o1 = [d1.toISOString()], o2 = [d2.toISOString()];\n"
    + both("setUTCFullYear(1969)", "setUTCFullYear(1969)")
    + both("setUTCFullYear(1975, 5)", "setUTCFullYear(2023, 11)")
    + both("setUTCFullYear(2023, 2, 28)", "setUTCFullYear(2023, 12, 31)")
    + both("setUTCMonth(11)", "setUTCMonth(2)")
    + both("setUTCMonth(5, 20)", "setUTCMonth(2, 8)")
    + both("setUTCDate(6)", "setUTCDate(15)")
    + "return [o1, o2];")


def test_date_set_full_year_month_and_date_as_tb_date() -> None:
    """TbDate.setUTCFullYear / setUTCMonth / setUTCDate and their overloads (TbDateTest's
    sequences): a day past the 28th with the year or month alone is counted from the new
    month's 1st (December 31 with month 2 is March 3); setFullYear ... setDate the same, the
    server's zone being UTC."""
    assert run(SET_YEAR_MONTH_DATE) == [
        ["1976-01-01T03:15:30.567Z", "1969-01-01T03:15:30.567Z", "1975-05-01T03:15:30.567Z",
         "2023-02-28T03:15:30.567Z", "2023-11-28T03:15:30.567Z", "2023-05-20T03:15:30.567Z",
         "2023-05-06T03:15:30.567Z"],
        ["1975-12-31T19:15:30.567Z", "1969-12-31T19:15:30.567Z", "2023-12-01T19:15:30.567Z",
         "2023-12-31T19:15:30.567Z", "2023-03-03T19:15:30.567Z", "2023-02-08T19:15:30.567Z",
         "2023-02-15T19:15:30.567Z"]]
    assert run(SET_YEAR_MONTH_DATE.replace("setUTC", "set")) == run(SET_YEAR_MONTH_DATE)
    assert run("var d = new Date(1975, 12, 31, 1, 15, 30, 567);\nvar out = [d.toISOString()];\n"
               "d.setFullYear(1969); out.add(d.toISOString());\n"
               "d.setFullYear(1975, 2); out.add(d.toISOString());\n"
               "d.setFullYear(2023, 6, 30); out.add(d.toISOString());\n"
               "d.setMonth(2); out.add(d.toISOString());\n"
               "d.setMonth(1, 24); out.add(d.toISOString());\n"
               "d.setDate(6); out.add(d.toISOString());\nreturn out;") == [
        "1975-12-31T01:15:30.567Z", "1969-12-31T01:15:30.567Z", "1975-03-03T01:15:30.567Z",
        "2023-06-30T01:15:30.567Z", "2023-03-02T01:15:30.567Z", "2023-01-24T01:15:30.567Z",
        "2023-01-06T01:15:30.567Z"]
    assert run('var a = new Date("2023-01-31T10:00:00Z"), b = new Date("2024-01-31T10:00:00Z");\n'
               'var c = new Date("2024-02-29T10:00:00Z"), e = new Date("2024-02-29T10:00:00Z");\n'
               "a.setMonth(2); b.setUTCMonth(2); c.setFullYear(2023); e.setUTCFullYear(2023);\n"
               "return [a.toISOString(), b.toISOString(), c.toISOString(), e.toISOString()];") == [
        "2023-03-03T10:00:00Z", "2024-03-02T10:00:00Z", "2023-03-01T10:00:00Z",
        "2023-03-01T10:00:00Z"]


SET_TIME_OF_DAY = (
    "var d1 = new Date(1975, 12, 31, 23, 15, 30, 567, \"+02:00\");\n"
    "var d2 = new Date(1975, 12, 31, 23, 15, 30, 567, \"-02:00\");\n"
    "var o1 = [d1.toISOString()], o2 = [d2.toISOString()];\n"
    + both("setHours(5)", "setHours(23)")
    + both("setHours(23, 45)", "setHours(1, 5)")
    + both("setHours(0, 12, 59)", "setHours(4, 45, 1)")
    + both("setHours(2, 32, 49, 123)", "setHours(8, 45, 12, 234)")
    + both("setMinutes(5)", "setMinutes(15)")
    + both("setMinutes(5, 34)", "setMinutes(25, 43)")
    + both("setMinutes(25, 14, 567)", "setMinutes(45, 3, 876)")
    + both("setSeconds(5)", "setSeconds(23)")
    + both("setSeconds(45, 987)", "setSeconds(54, 842)")
    + both("setMilliseconds(675)", "setMilliseconds(923)")
    + "return [o1, o2, d1.getMilliseconds(), d2.getUTCMilliseconds()];")


@pytest.mark.parametrize("script", [SET_TIME_OF_DAY, SET_TIME_OF_DAY.replace(".set", ".setUTC")])
def test_date_set_hours_minutes_seconds_milliseconds_as_tb_date(script: str) -> None:
    """TbDate.setHours / setMinutes / setSeconds / setMilliseconds and their overloads, and
    their setUTC... forms (TbDateTest's sequences): the fields given changed, the rest kept."""
    assert run(script) == [
        ["1975-12-31T21:15:30.567Z", "1975-12-31T05:15:30.567Z", "1975-12-31T23:45:30.567Z",
         "1975-12-31T00:12:59.567Z", "1975-12-31T02:32:49.123Z", "1975-12-31T02:05:49.123Z",
         "1975-12-31T02:05:34.123Z", "1975-12-31T02:25:14.567Z", "1975-12-31T02:25:05.567Z",
         "1975-12-31T02:25:45.987Z", "1975-12-31T02:25:45.675Z"],
        ["1976-01-01T01:15:30.567Z", "1976-01-01T23:15:30.567Z", "1976-01-01T01:05:30.567Z",
         "1976-01-01T04:45:01.567Z", "1976-01-01T08:45:12.234Z", "1976-01-01T08:15:12.234Z",
         "1976-01-01T08:25:43.234Z", "1976-01-01T08:45:03.876Z", "1976-01-01T08:45:23.876Z",
         "1976-01-01T08:45:54.842Z", "1976-01-01T08:45:54.923Z"],
        675, 923]


def test_date_setters_keep_or_drop_the_nanoseconds_and_wrap_milliseconds_as_tb_date() -> None:
    """A setter keeps the nanoseconds it does not set (ZonedDateTime.withHour), but the
    day-past-the-28th rule's Instant.ofEpochMilli drops those below the millisecond;
    milliseconds become nanoseconds as Java's int product (4295 * 1000000 wraps to 32704);
    setUTCMinutes(min, sec, ms) makes the date anew with TbDate.parseInstant, a year below
    70 becoming 20yy (setMinutes does not)."""
    assert run("var a = new Date(1500); a.addNanos(7); a.setHours(3);\n"
               'var b = new Date("2023-01-30T00:00:00.001Z"); b.addNanos(7); b.setMonth(3);\n'
               'var c = new Date("2023-01-20T00:00:00.001Z"); c.addNanos(7); c.setMonth(3);\n'
               "var e = new Date(0); e.setMilliseconds(4295);\n"
               'var f = new Date("0050-06-15T10:20:30Z"); f.setUTCMinutes(1, 2, 3);\n'
               'var g = new Date("0050-06-15T10:20:30Z"); g.setMinutes(1, 2, 3);\n'
               "return [a.toISOString(), b.toISOString(), c.toISOString(), e.toISOString(),\n"
               "  new Date(2023, 1, 1, 0, 0, 0, 4295).toISOString(), f.toISOString(),\n"
               "  g.toISOString()];") == [
        "1970-01-01T03:00:01.500000007Z", "2023-03-30T00:00:00.001Z",
        "2023-03-20T00:00:00.001000007Z", "1970-01-01T00:00:00.000032704Z",
        "2023-01-01T00:00:00.000032704Z", "2050-06-15T10:01:02.003Z", "0050-06-15T10:01:02.003Z"]


@pytest.mark.parametrize(("script", "message"), [
    ("new Date(0).setHours(24);", "Invalid value for HourOfDay (valid values 0 - 23): 24"),
    ("new Date(0).setUTCHours(-1);", "Invalid value for HourOfDay (valid values 0 - 23): -1"),
    ("new Date(0).setMinutes(60);", "Invalid value for MinuteOfHour (valid values 0 - 59): 60"),
    ("new Date(0).setSeconds(1, 1000);",
     "Invalid value for NanoOfSecond (valid values 0 - 999999999): 1000000000"),
    ("new Date(0).setMilliseconds(-1);",
     "Invalid value for NanoOfSecond (valid values 0 - 999999999): -1000000"),
    ('new Date("2023-02-10T00:00:00Z").setDate(30);', "Invalid date 'FEBRUARY 30'"),
    ('new Date("2023-02-10T00:00:00Z").setDate(29);',
     "Invalid date 'February 29' as '2023' is not a leap year"),
    ("new Date(0).setDate(32);", "Invalid value for DayOfMonth (valid values 1 - 28/31): 32"),
    ("new Date(0).setUTCDate(0);", "Invalid value for DayOfMonth (valid values 1 - 28/31): 0"),
    ("new Date(0).setMonth(13);", "Invalid value for MonthOfYear (valid values 1 - 12): 13"),
    ("new Date(0).setMonth(4, 31);", "Invalid date 'APRIL 31'"),
    ("new Date(0).setFullYear(1000000000);",
     "Invalid value for Year (valid values -999999999 - 999999999): 1000000000"),
    ("new Date(0).setFullYear(2023, 2, 29);",
     "Invalid date 'February 29' as '2023' is not a leap year"),
    # LocalDate.of before LocalTime.of: the date's error first
    ("new Date(2023, 2, 30, 25, 0);", "Invalid date 'FEBRUARY 30'"),
    ("new Date(2023, 1, 32);", "Invalid value for DayOfMonth (valid values 1 - 28/31): 32"),
])
def test_date_setters_out_of_range_fail_with_javas_text(script: str, message: str) -> None:
    """LocalDateTime.withX / LocalDate.of's DateTimeException, as Java words it."""
    assert error(script + "\nreturn 1;") == "DateTimeException: " + message


def test_date_setters_take_javas_overloads_only() -> None:
    """setHours has 1 to 4 arguments, setDate one: another count is MVEL's missing method."""
    assert error("new Date(0).setHours(1, 2, 3, 4, 5); return 1;") == (
        "TypeError: unable to resolve method: setHours() with 5 arguments on a Date")
    assert error("new Date(0).setDate(); return 1;") == (
        "TypeError: unable to resolve method: setDate() with 0 arguments on a Date")
    assert error('[].setHours(1); return 1;') == "TypeError: setHours(): a list is not a Date"


def test_a_dates_property_written_is_its_setter_as_mvel() -> None:
    """MVEL's setter rule (the method set + the property's name, of one parameter): d.hours = 5
    is d.setHours(5), d.fullYear = 2020 d.setFullYear(2020), d.UTCMonth = 3 d.setUTCMonth(3);
    a value out of range is the setter's error."""
    assert run('var d = new Date("2024-01-31T10:20:30Z");\n'
               "d.hours = 5; d.fullYear = 2020; d.UTCMonth = 3; d.minutes = 7; d.seconds = 8;\n"
               "d.milliseconds = 9; d.date = 2;\n"
               "return [d.toISOString(), d.hours, d.month];") == [
        "2020-03-02T05:07:08.009Z", 5, 3]
    assert error("var d = new Date(0); d.hours = 24; return 1;") == (
        "DateTimeException: Invalid value for HourOfDay (valid values 0 - 23): 24")


# TbDate(year, ..., tz): ZoneId.of(tz), then ZonedDateTime.of (its gap and overlap rules); the
# expected instants are Java 17's
@pytest.mark.parametrize(("zone", "expected"), [
    # Europe/Berlin: 2024-03-31 02:30 is in the gap (02:00 to 03:00 does not exist): moved later
    # by the gap, 03:30 +02:00; 2024-10-27 02:30 is in the overlap: the earlier offset, +02:00
    ("Europe/Berlin", ["2024-03-31T01:30:00Z", "2024-10-27T00:30:00Z", "2024-03-10T01:30:00Z",
                       "2024-11-03T00:30:00Z"]),
    ("America/New_York", ["2024-03-31T06:30:00Z", "2024-10-27T06:30:00Z",
                          "2024-03-10T07:30:00Z", "2024-11-03T05:30:00Z"]),
    ("Asia/Kolkata", ["2024-03-30T21:00:00Z", "2024-10-26T21:00:00Z", "2024-03-09T21:00:00Z",
                      "2024-11-02T20:00:00Z"]),
    ("UTC+01:00", ["2024-03-31T01:30:00Z", "2024-10-27T01:30:00Z", "2024-03-10T01:30:00Z",
                   "2024-11-03T00:30:00Z"]),
    ("GMT-5", ["2024-03-31T07:30:00Z", "2024-10-27T07:30:00Z", "2024-03-10T07:30:00Z",
               "2024-11-03T06:30:00Z"]),
    ("UT+1", ["2024-03-31T01:30:00Z", "2024-10-27T01:30:00Z", "2024-03-10T01:30:00Z",
              "2024-11-03T00:30:00Z"]),
    ("Etc/GMT+5", ["2024-03-31T07:30:00Z", "2024-10-27T07:30:00Z", "2024-03-10T07:30:00Z",
                   "2024-11-03T06:30:00Z"]),
    ("GMT0", ["2024-03-31T02:30:00Z", "2024-10-27T02:30:00Z", "2024-03-10T02:30:00Z",
              "2024-11-03T01:30:00Z"]),
    ("Z", ["2024-03-31T02:30:00Z", "2024-10-27T02:30:00Z", "2024-03-10T02:30:00Z",
           "2024-11-03T01:30:00Z"]),
    ("+0530", ["2024-03-30T21:00:00Z", "2024-10-26T21:00:00Z", "2024-03-09T21:00:00Z",
               "2024-11-02T20:00:00Z"]),
])
def test_new_date_in_a_zone_as_java(zone: str, expected: list[str]) -> None:
    assert run("var z = msg.z;\n"
               "return [new Date(2024, 3, 31, 2, 30, z).toISOString(),\n"
               "  new Date(2024, 10, 27, 2, 30, z).toISOString(),\n"
               "  new Date(2024, 3, 10, 2, 30, z).toISOString(),\n"
               "  new Date(2024, 11, 3, 1, 30, z).toISOString()];", {"z": zone}) == expected


def test_new_date_in_a_region_long_ago_and_far_ahead_as_java() -> None:
    """Before a zone's first rule its local mean time (Berlin +00:53:28); years past the
    database's (and datetime's 9999) by its yearly rule; the zone in text of the script, and
    a day of another year of the same zone in the same message (each year's rules loaded once
    and the call made again)."""
    assert run('return [new Date(1850, 1, 1, "Europe/Berlin").toISOString(),\n'
               '  new Date(12024, 7, 1, "Europe/Berlin").toISOString(),\n'
               '  new Date(2023, 7, 1, "Europe/Berlin").getTime(),\n'
               '  new Date(2024, 1, 1, 0, 0, 0, "Europe/Berlin").getTime()];') == [
        "1849-12-31T23:06:32Z", "+12024-06-30T22:00:00Z", 1688162400000, 1704063600000]


@pytest.mark.parametrize(("zone", "message"), [
    ("Europe/Nowhere", "ZoneRulesException: Unknown time-zone ID: Europe/Nowhere"),
    # Java 17's database has no EST (ZoneId.SHORT_IDS maps it, ZoneId.of does not)
    ("EST", "ZoneRulesException: Unknown time-zone ID: EST"),
    ("europe/berlin", "ZoneRulesException: Unknown time-zone ID: europe/berlin"),
    ("Europe/../../etc/passwd", "ZoneRulesException: Unknown time-zone ID: Europe/../../etc/passwd"),
    ("../../etc/passwd",
     "DateTimeException: Invalid ID for region-based ZoneId, invalid format: ../../etc/passwd"),
    ("/etc/passwd",
     "DateTimeException: Invalid ID for region-based ZoneId, invalid format: /etc/passwd"),
    ("GMT+19", "DateTimeException: Invalid ID for offset-based ZoneId: GMT+19"),
    ("+19", "DateTimeException: Zone offset hours not in valid range: value 19 is not in the "
            "range -18 to 18"),
    ("+1:00", "DateTimeException: Invalid ID for ZoneOffset, non numeric characters found: "
              "+1:00"),
    ("x", "DateTimeException: Invalid ID for ZoneOffset, invalid format: x"),
    ("+18:01", "DateTimeException: Zone offset not in valid range: -18:00 to +18:00"),
    ("+01:60", "DateTimeException: Zone offset minutes not in valid range: value 60 is not in "
               "the range -59 to 59"),
])
def test_new_date_in_a_zone_java_refuses_fails_with_its_text(zone: str, message: str) -> None:
    """ZoneId.of's exceptions (ZoneRulesProvider.getProvider, ZoneRegion.checkName,
    ZoneOffset.of), with Java 17's text."""
    assert error("return new Date(2024, 1, 1, msg.z).getTime();", {"z": zone}) == message



def test_an_unknown_region_fails_before_the_dates_fields_as_zone_id_of() -> None:
    """TbDate's constructor calls ZoneId.of(tz) before ZonedDateTime.of: an unknown region is
    its error, not the impossible date's (Java 17: ZoneRulesException), and a date past
    JavaScript's years in a region is the same error as with an offset."""
    assert error('return new Date(2023, 2, 30, 0, 0, "Europe/Nowhere").getTime();') == (
        "ZoneRulesException: Unknown time-zone ID: Europe/Nowhere")
    assert error('return new Date(2023, 2, 30, 0, 0, "Europe/Berlin").getTime();') == (
        "DateTimeException: Invalid date 'FEBRUARY 30'")
    beyond = ("TypeError: a date beyond the years -271821 to 275760 is not supported here "
              "(see docs/rules-scripts.md)")
    assert [error('return new Date(1000000, 1, 1, 0, 0, "Asia/Tokyo").getTime();'),
            error('return new Date(1000000, 1, 1, 0, 0, "+09:00").getTime();')] == [beyond] * 2


def test_a_setter_past_javascripts_years_fails_as_the_others() -> None:
    """A setter's day past the 28th (counted from the 1st of the new month) is checked against
    JavaScript's years as every other date: +275760-08-31 with month 9 (October 1st) is an error, not a
    broken date."""
    beyond = ("TypeError: a date beyond the years -271821 to 275760 is not supported here "
              "(see docs/rules-scripts.md)")
    for setter in ("d.setMonth(9)", "d.setFullYear(275760, 9)", "d.setUTCMonth(9)"):
        assert error("var d = new Date(0);\nd.setTime(8640000000000000 - 13 * 86400000);\n"
                     f"{setter};\nreturn d.toISOString();") == beyond
    assert run("var d = new Date(0);\nd.setTime(8640000000000000 - 13 * 86400000);\n"
               "var e = null;\ntry { d.setMonth(9); } catch (x) { e = x.message; }\n"
               "return [d.toISOString(), e == null];") == ["+275760-08-31T00:00:00Z", False]


def _local_changes(path: str) -> list[int]:
    """The local times (seconds, fold 0: ``tbel_zones``' reading) at which a zone's offset
    changes, from its TZif file (RFC 8536: the 64-bit block of version 2 and later; type 0
    before the first transition)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"TZif":
        return []
    counts = struct.unpack(">6l", data[20:44])
    isut, isstd, leap, times, types, chars = counts
    if data[4] == 0:  # version 1: 32-bit times only
        size, at = 4, 44
    else:
        at = 44 + times * 5 + types * 6 + chars + leap * 8 + isstd + isut
        isut, isstd, leap, times, types, chars = struct.unpack(">6l", data[at + 20:at + 44])
        size, at = 8, at + 44
    moments = struct.unpack(f">{times}{'q' if size == 8 else 'l'}", data[at:at + times * size])
    at += times * size
    kinds = data[at:at + times]
    at += times
    offsets = [struct.unpack(">l", data[at + 6 * k:at + 6 * k + 4])[0] for k in range(types)]
    out, before = [], offsets[0]
    for moment, kind in zip(moments, kinds, strict=True):
        after = offsets[kind]
        if after != before:
            out.append(moment + max(before, after))
        before = after
    return out


def test_no_zone_changes_its_offset_twice_within_the_scans_step() -> None:
    """``tbel_zones`` scans a year's local times every 3 hours and finds each change by
    bisection: right only while no zone of the installed database changes its offset twice
    within 3 hours of local time (today's closest: about 95 hours apart)."""
    zones = tbel_zones.known_zones()
    if not zones:
        pytest.skip("the system's time-zone database (/usr/share/zoneinfo, the OS package "
                    "tzdata) is not installed: no region zone to check")
    close = []
    for zone_id in sorted(zones):
        path = next(os.path.join(root, zone_id) for root in zoneinfo.TZPATH
                    if os.path.isfile(os.path.join(root, zone_id)))
        changes = _local_changes(path)
        close += [(zone_id, a) for a, b in itertools.pairwise(changes) if b - a < tbel_zones._STEP]
    assert (len(zones) > 400, close) == (True, [])

def test_a_hostile_zone_id_is_refused_before_the_database_is_asked() -> None:
    """Control characters and a path are Java's invalid format; a very long id of valid
    characters is unknown without a look-up; the engine's own rules function takes nothing but
    a short region id and a year in range, and gives text (never raises)."""
    from edge_sync.rules.tbel_zones import year_rules

    long_id = "A" + "b" * 100_000
    assert error("return new Date(2024, 1, 1, msg.z).getTime();", {"z": "a\u0000b"}) == (
        "DateTimeException: Invalid ID for region-based ZoneId, invalid format: a\u0000b")
    assert error("return new Date(2024, 1, 1, msg.z).getTime();", {"z": "Europe/Berlin\n"}) == (
        "DateTimeException: Invalid ID for region-based ZoneId, invalid format: Europe/Berlin")
    assert error("return new Date(2024, 1, 1, msg.z).getTime();", {"z": long_id}) == (
        "ZoneRulesException: Unknown time-zone ID: " + long_id)
    assert [json.loads(year_rules(z, y)) for z, y in (
        ("../../etc/passwd", 2024), ("posix/Europe/Berlin", 2024), ("Europe/Berlin", 2024),
        (long_id, 2024), ("Europe/Berlin", 10**9), ("Europe/Berlin", "2024"), (None, 1))] == [
        "ZoneRulesException: the time zone is not a region id",
        "ZoneRulesException: Unknown time-zone ID: posix/Europe/Berlin",
        [3600, 7786800, 7200, 25930800, 3600],
        "ZoneRulesException: the time zone is not a region id",
        "ZoneRulesException: the year is out of range",
        "ZoneRulesException: the year is out of range",
        "ZoneRulesException: the time zone is not a region id"]


def test_zone_rules_are_loaded_between_calls_under_the_scripts_limits() -> None:
    """A call that needs a year of a region's rules fails inside, the engine loads the year
    and calls again: the script's value is the same whether it caught the error or not, a
    batch gives each item its zone, a call may use at most 16 years, and the time limit
    still interrupts a script that uses a zone."""
    caught = ScriptEngine('var t = -1;\ntry { t = new Date(2024, 7, 1, msg.z).getTime(); }\n'
                          "catch (e) { t = -2; }\nreturn t;", "TBEL")
    assert [caught.call({"z": "Asia/Tokyo"}, {}, TELEMETRY),
            caught.call({"z": "Asia/Tokyo"}, {}, TELEMETRY)] == [1719759600000, 1719759600000]
    batch = ScriptEngine("return new Date(2024, 7, 1, msg.z).toISOString();", "TBEL")
    assert batch.call_many([({"z": z}, {}, TELEMETRY) for z in (
        "Asia/Tokyo", "UTC+01:00", "America/Sao_Paulo", "Asia/Tokyo")]) == [
        "2024-06-30T15:00:00Z", "2024-06-30T23:00:00Z", "2024-07-01T03:00:00Z",
        "2024-06-30T15:00:00Z"]
    years = ("var out = [];\nfor (var y = 2000; y < msg.end; y++) {\n"
             '  out.add(new Date(y, 1, 1, "Europe/Berlin").getTime()); }\nreturn out;')
    # (a limit no loaded machine runs over: the count of years is what is tested here)
    limits = sandbox.ScriptLimits(time_limit_s=5, block_s=0)
    assert len(ScriptEngine(years, "TBEL", limits).call({"end": 2016}, {}, TELEMETRY)) == 16
    with pytest.raises(ScriptRuntimeError) as caught:
        ScriptEngine(years, "TBEL", limits).call({"end": 2017}, {}, TELEMETRY)
    assert str(caught.value) == ZONE_CAP
    slow = ScriptEngine('var d = new Date(2024, 7, 1, "Europe/Berlin");\nwhile (true) {}',
                        "TBEL", sandbox.ScriptLimits(time_limit_s=0.05, block_s=0))
    with pytest.raises(sandbox.ScriptTimeout):
        slow.call({}, {}, TELEMETRY)


# the sandbox's own limit on the region time zones one message uses (not a Java exception)
ZONE_CAP = ("sandbox: a call may use at most 16 region time zones and 16 years of them "
            "(see docs/rules-scripts.md)")
BERLIN_YEARS = ("if (msg.end == 0) { return \"no zone\"; }\nvar out = 0;\n"
                "for (var y = msg.start; y < msg.end; y++) {\n"
                '  out = out + new Date(y, 1, 1, "Europe/Berlin").getTime() % 7; }\n'
                "return msg.end - msg.start;")


def outcome(engine: ScriptEngine, msg: Any) -> Any:
    try:
        return engine.call(msg, {}, TELEMETRY)
    except ScriptError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_a_messages_zone_outcome_never_depends_on_the_messages_before_it() -> None:
    """The cap counts the zone years a run uses, loaded or not: the same message over it fails
    the same way every time, and a message within it succeeds the first time even when the
    engine already holds nearly as many years as it keeps (no year it loaded for a message is
    dropped in the middle of that message)."""
    engine = ScriptEngine(BERLIN_YEARS, "TBEL", sandbox.ScriptLimits(time_limit_s=5, block_s=0))
    over = {"start": 2000, "end": 2017}
    assert [outcome(engine, over), outcome(engine, over)] == [f"ScriptRuntimeError: {ZONE_CAP}"] * 2
    full = ScriptEngine(BERLIN_YEARS, "TBEL", sandbox.ScriptLimits(time_limit_s=5, block_s=0))
    start = 1000
    for _ in range(15):  # 15 x 16 years, and 10 more: 250 years and the id loaded
        assert full.call({"start": start, "end": start + 16}, {}, TELEMETRY) == 16
        start += 16
    assert full.call({"start": start, "end": start + 10}, {}, TELEMETRY) == 10
    start += 10
    assert [full.call({"start": start, "end": start + 16}, {}, TELEMETRY),
            full.call({"start": start, "end": start + 16}, {}, TELEMETRY)] == [16, 16]


def test_a_message_after_a_capped_or_timed_out_one_loads_nothing_it_did_not_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a run used or lacked is its own: after a message over the cap, or one the time
    limit interrupted once it used a zone, a message that uses no zone runs once, alone or in
    a batch, and loads nothing. (A run interrupted on a stand-in has what it lacked loaded,
    and runs again: here to a real timeout.)"""
    rounds: list[Any] = []
    real = ScriptEngine._call_with_zones

    def counted(self: ScriptEngine, lacked: dict[str, Any], args: str, started: float,
                stopped: bool = False) -> Any:
        rounds.append(lacked["zone"])
        return real(self, lacked, args, started, stopped)

    monkeypatch.setattr(ScriptEngine, "_call_with_zones", counted)
    engine = ScriptEngine(BERLIN_YEARS, "TBEL", sandbox.ScriptLimits(time_limit_s=5, block_s=0))
    assert outcome(engine, {"start": 2000, "end": 2017}) == f"ScriptRuntimeError: {ZONE_CAP}"
    assert len(rounds) == 1  # every year it lacked, in one round
    rounds.clear()
    assert engine.call({"end": 0}, {}, TELEMETRY) == "no zone"
    assert engine.call_many([({"end": 0}, {}, TELEMETRY)] * 2) == ["no zone", "no zone"]
    slow = ScriptEngine('var d = new Date(2024, 7, 1, "Asia/Tokyo");\n'
                        "if (msg.loop) { while (true) {} }\nreturn 1;", "TBEL",
                        sandbox.ScriptLimits(time_limit_s=0.05, block_s=0))
    # (a run that lacks a zone goes on with a stand-in: this one to its loop)
    assert [outcome(slow, {"loop": True}), rounds] == [
        "ScriptTimeout: the script ran over its 0.05 s limit", [["Asia/Tokyo", "Asia/Tokyo 2024"]]]
    rounds.clear()
    assert [engine.call({"end": 0}, {}, TELEMETRY), rounds] == ["no zone", []]
    assert [slow.call({"loop": False}, {}, TELEMETRY), rounds] == [1, []]
    # what was loaded is kept for the context built anew after a timeout
    assert outcome(slow, {"loop": True}) == "ScriptTimeout: the script ran over its 0.05 s limit"
    assert [slow.call({"loop": False}, {}, TELEMETRY), rounds] == [1, []]


def test_a_run_stopped_on_a_stand_in_runs_again_uncounted() -> None:
    """A run on a stand-in offset may take a path the real one never takes: one the time limit
    or the memory cap stops while it lacks a zone has what it lacked loaded, its error not
    counted, and runs again (ThingsBoard's Java returns 23: 00:00 at +01:00 is 23:00Z), alone
    or first of a batch."""
    looping = ('var d = new Date(2024, 1, 1, 0, 0, "Europe/Berlin");\n'
               "while (d.getUTCHours() == 0) { }\nreturn d.getUTCHours();")
    engine = ScriptEngine(looping, "TBEL", sandbox.ScriptLimits(time_limit_s=0.05, max_errors=1))
    assert [engine.call({}, {}, TELEMETRY), engine.blocked()] == [23, None]
    batch = ScriptEngine(looping, "TBEL", sandbox.ScriptLimits(time_limit_s=0.05, max_errors=1))
    assert [batch.call_many([({}, {}, TELEMETRY)] * 2), batch.blocked()] == [[23, 23], None]
    growing = ('var d = new Date(2024, 1, 1, 0, 0, "Europe/Berlin");\nvar a = [];\n'
               "if (d.getUTCHours() == 0) {\n"
               '  while (true) { a.add("xxxxxxxxxxxxxxxxxxxxxxxxxxxx" + a.size()); }\n}\n'
               "return d.getUTCHours();")
    engine = ScriptEngine(growing, "TBEL", sandbox.ScriptLimits(
        time_limit_s=5, memory_limit_bytes=8 << 20, max_errors=1))
    assert [engine.call({}, {}, TELEMETRY), engine.blocked()] == [23, None]


def test_an_unknown_regions_year_is_not_loaded() -> None:
    """A stand-in for an id not loaded lists its year too: the year of an id that turns out
    unknown is not read nor kept (the id's error comes first)."""
    engine = ScriptEngine('return new Date(2008, 7, 1, "Europe/Nowhere").getTime();', "TBEL")
    assert [outcome(engine, {}).splitlines()[0], list(engine._zone_loads)] == [
        "ScriptRuntimeError: ZoneRulesException: Unknown time-zone ID: Europe/Nowhere",
        ["Europe/Nowhere"]]


def _cpu_loop_per_second() -> int:
    """How many turns of the scripts' loop below the engine runs in a second of CPU time."""
    engine = ScriptEngine("var n = 0;\nfor (var i = 0; i < msg.n; i++) { n = n + 1; }\nreturn n;",
                          "TBEL", sandbox.ScriptLimits(time_limit_s=10))
    engine.call({"n": 1000}, {}, TELEMETRY)
    started = time.process_time()
    engine.call({"n": 2_000_000}, {}, TELEMETRY)
    return int(2_000_000 / (time.process_time() - started))


def test_a_message_and_its_runs_again_for_zones_share_one_time_limit() -> None:
    """Each run again for a zone has only the time the runs before it left, counted from the
    first run's start on the engine's clock (the process's CPU time): a script that takes 3/4
    of its limit times out on a message that must run twice, its CPU time within the limit
    (and the loading), and no longer does once the years are loaded."""
    turns = _cpu_loop_per_second()
    script = ("var n = 0;\nfor (var i = 0; i < msg.n; i++) { n = n + 1; }\n"
              'return [n, new Date(2022, 7, 1, "Europe/Berlin").getTime()];')
    engine = ScriptEngine(script, "TBEL", sandbox.ScriptLimits(time_limit_s=0.4, block_s=0))
    msg = {"n": int(turns * 0.3)}
    started = time.process_time()
    assert outcome(engine, msg) == "ScriptTimeout: the script ran over its 0.4 s limit"
    assert time.process_time() - started < 0.4 + 0.1
    assert engine.call(msg, {}, TELEMETRY) == [msg["n"], 1656626400000]


def test_a_message_runs_at_most_three_times_for_its_zones() -> None:
    """A script that asks for new zone years in each run (it can tell a stand-in from a loaded
    year) runs 3 times at most, the second load counted in its limit: the message fails with the
    edge's own error, not counted towards the block, its CPU time a small multiple of the limit
    (about the limit and one load of 32 keys, which is left out of it)."""
    script = (
        "var probe = 0;\n"
        "while (probe < 15) {\n"
        '  try { new Date(2023, 2, 30, 0, 0, "Foo/P" + msg.base + "x" + probe); }\n'
        '  catch (e) { var s = "" + e; if (!s.contains("Unknown")) { break; } }\n'
        "  probe = probe + 1;\n}\n"
        "var k = 0;\n"
        "while (k < 16) {\n"
        '  new Date(msg.base + probe * 16 + k, 7, 1, "Europe/Berlin");\n'
        "  k = k + 1;\n}\n"
        "return probe;")
    engine = ScriptEngine(script, "TBEL", sandbox.ScriptLimits(time_limit_s=0.1, max_errors=1))
    for base in (1000, 2000, 3000):
        started = time.process_time()
        assert outcome(engine, {"base": base}) == (
            "ScriptRuntimeError: sandbox: the region time zones the script uses did not settle "
            "in 3 runs (see docs/rules-scripts.md)")
        assert time.process_time() - started < 0.1 * 3
    assert engine.blocked() is None


def test_a_message_near_the_cache_drop_runs_twice_as_on_a_fresh_engine() -> None:
    """When a message's first load drops the engine's years (256 kept), the ones its run used
    loaded are kept: it runs twice, as on an engine that holds only them, and gives the same
    result (a run that takes 0.4 of its limit, twice, within it; three times, over it)."""
    turns = _cpu_loop_per_second()
    script = ("var n = 0;\nfor (var i = 0; i < msg.n; i++) { n = n + 1; }\nvar out = [];\n"
              "for (var k = 0; k < msg.zs.length; k++) {\n"
              "  out.push(new Date(msg.zs[k][1], 7, 1, msg.zs[k][0]).getTime());\n}\n"
              "return out.length;")
    limits = sandbox.ScriptLimits(time_limit_s=0.3, block_s=0)
    old = [["Europe/Berlin", 2000 + y] for y in range(8)]
    msg = {"n": int(turns * 0.3 * 0.4), "zs": old + [["Europe/Berlin", 2100 + y] for y in range(8)]}
    fresh, full = ScriptEngine(script, "TBEL", limits), ScriptEngine(script, "TBEL", limits)
    for engine in (fresh, full):
        assert engine.call({"n": 0, "zs": old}, {}, TELEMETRY) == 8
    year = 1900
    while len(full._zone_loads) < 250:
        zones = [[zone, year] for zone in ("Asia/Tokyo", "America/New_York", "Europe/Paris",
                                           "Africa/Cairo", "Asia/Dubai")]
        assert full.call({"n": 0, "zs": zones}, {}, TELEMETRY) == 5
        year += 1
    assert [outcome(fresh, msg), outcome(full, msg)] == [16, 16]
    assert len(full._zone_loads) == 17  # the id, its 8 years kept and 8 new


# a process that keeps a CPU busy: it says so once running, and ends on its own a few seconds on
# or once its parent is gone (no orphan spins if the test's process is killed)
_HOG = ("import os, time\nparent, end = os.getppid(), time.monotonic() + 5\nprint('busy', flush=True)\n"
        "while time.monotonic() < end and os.getppid() == parent:\n    pass\n")


def test_a_busy_machine_makes_no_zone_timeout() -> None:
    """The limit is the script's CPU time, not the wall time its runs took: on a CPU shared
    with a busy process, a message that runs twice for its zones, each run a quarter of its
    limit in CPU time (and more than the limit in wall time between them), succeeds. (One
    busy process, pinned with this thread to one CPU, running before the call starts: the call
    takes about twice its CPU time on the wall clock.)"""
    turns = _cpu_loop_per_second()
    cpu = sorted(os.sched_getaffinity(0))[-1]
    script = ("var n = 0;\nfor (var i = 0; i < msg.n; i++) { n = n + 1; }\n"
              'return [n, new Date(2022, 7, 1, "Europe/Berlin").getTime(),\n'
              '  new Date(2023, 7, 1, "Europe/Berlin").getTime(),\n'
              '  new Date(2024, 7, 1, "Europe/Berlin").getTime()];')
    engine = ScriptEngine(script, "TBEL", sandbox.ScriptLimits(time_limit_s=0.1, block_s=0))
    msg = {"n": int(turns * 0.1 * 0.25)}
    tbel_zones._rules.cache_clear()  # (each year read in the call: the same CPU time each time)
    mask = os.sched_getaffinity(0)
    with subprocess.Popen([sys.executable, "-c", _HOG], stdout=subprocess.PIPE, text=True) as hog:
        try:
            os.sched_setaffinity(hog.pid, {cpu})
            assert hog.stdout is not None and hog.stdout.readline() == "busy\n"
            os.sched_setaffinity(0, {cpu})  # (this thread: the engine runs on it)
            wall, cpu_time = time.monotonic(), time.process_time()
            value = engine.call(msg, {}, TELEMETRY)
            wall, cpu_time = time.monotonic() - wall, time.process_time() - cpu_time
        finally:
            os.sched_setaffinity(0, mask)
            hog.kill()
    assert value == [msg["n"], 1656626400000, 1688162400000, 1719784800000]
    assert (wall > 0.1, cpu_time < 0.1) == (True, True)


# -- each call's state is its own ---------------------------------------------------------------

def test_no_code_from_text_through_a_constructor_or_eval() -> None:
    """MVEL has no Function constructor nor eval: ``x.constructor.constructor`` (JavaScript's
    Function, of any kind of function) is nothing, and ``eval`` is no name."""
    assert error('var F = msg.constructor.constructor; return F("return 1")();') == (
        "TypeError: not a function")
    assert run('def g() { return 1; }\nreturn [g.constructor == null, '
               'msg["constructor"]["constructor"] == null];') == [True, True]
    assert error('var e = eval; return e("1");') == "ReferenceError: eval is not defined"


def test_what_a_call_sets_on_a_shared_object_is_gone_on_the_next_call() -> None:
    """Each MVEL run has fresh variables: nothing one message's script sets on a value it
    reaches (a constructor, a prototype, a global by a destructuring) is there on the next."""
    for script in ('var o = msg["constructor"]; if (msg.first) { o.leak = 42; } return o.leak;',
                   'var o = [].constructor.prototype; if (msg.first) { o.leak = 42; } return o.leak;',
                   'if (msg.first) { msg.constructor.prototype.leak = 42; } return {}.leak;',
                   # the runtime's own (a helper, TbDate's prototype), the script's function
                   'if (msg.first) { toInt.leak = 42; } return toInt.leak;',
                   'var p = new Date(0).constructor.prototype; if (msg.first) { p.leak = 42; }\n'
                   'return p.leak;',
                   'if (msg.first) { arguments.callee.leak = 42; } return arguments.callee.leak;',
                   'var f = Reflect.defineProperty;\n'
                   'if (msg.first) { f(toInt, "leak", {value: 42}); } return toInt.leak;'):
        engine = ScriptEngine(script, "TBEL")
        # (the write to a frozen object is ignored, as the script is not strict code)
        assert [engine.call({"first": True}, {}, TELEMETRY),
                engine.call({}, {}, TELEMETRY)] == [None, None], script
    engine = ScriptEngine("if (msg.first) { [leak] = [42]; return 0; } return leak;", "TBEL")
    assert engine.call({"first": True}, {}, TELEMETRY) == 0
    with pytest.raises(ScriptRuntimeError, match="ReferenceError: leak is not defined"):
        engine.call({}, {}, TELEMETRY)


@pytest.mark.parametrize(("script", "found"), [
    ("return __tbelS;", "__tbelS"),
    ("var x = 1;\n__tbelH = null; return x;", "__tbelH"),
    ("var __x = 1; return __x;", "__x"),
    ("return {__proto__: 5};", "__proto__"),
    ("return msg. __proto__ + __edgeAt;", "__edgeAt"),
    ("return \\u005f_tbelS;", "\\u005f"),
])
def test_a_name_starting_with_two_underscores_is_refused(script: str, found: str) -> None:
    """Names that start with ``__`` are the runtime's: refused where they are names (a member
    ``msg.__proto__`` or a key in quotes is a map key, and allowed), as are escapes in names."""
    with pytest.raises(ScriptSyntaxError) as caught:
        tbel_to_js(script)
    line = script[:script.index(found.replace("\\\\", "\\"))].count("\n") + 1
    assert f"(line {line}: " in str(caught.value), str(caught.value)
    assert "the runtime's names" in str(caught.value) or "escape" in str(caught.value)
    assert run('return [msg.__proto__, msg["__x"], "__tbelS"];', {"__proto__": 1, "__x": 2}) == [
        1, 2, "__tbelS"]


@pytest.mark.parametrize("script", [
    "var f = async function() { return 1; }; f(); return 1;",
    "var o = {async f() { return 1; }}; return 1;",
    "var o = {async *f() { return 1; }}; return 1;",
    "var f = async x => 1; return 1;",
    "var f = async\nfunction () { return 1; }; return 1;",
    "var f = function* () { yield 1; }; return 1;",
    "var f = function *g() { return 1; }; return 1;",
    "var f = async () => 1; return 1;",
])
def test_async_await_and_generators_are_refused(script: str) -> None:
    """MVEL has no async functions nor generators: an awaiting call would leave a job queued per
    call (its memory kept until the cap): refused at compile. In text, comments and as a map
    key after a dot they are data."""
    with pytest.raises(ScriptSyntaxError,
                       match="an async function or a generator function"):
        tbel_to_js(script)
    assert run('// async await\nreturn [msg.async, "await yield function*"];', {"async": 1}) == [
        1, "await yield function*"]


def test_an_awaiting_function_leaves_nothing_queued_per_call() -> None:
    """The refusal is what keeps memory flat: no TBEL script can queue a job."""
    with pytest.raises(ScriptSyntaxError):
        ScriptEngine("var f = async function() { await null; return 1; }; f(); return 1;", "TBEL")


def test_a_key_named_proto_is_a_key_as_any_in_a_map_the_script_makes() -> None:
    """A TBEL map is a LinkedHashMap: "__proto__" is a key as any (put, putAll, putIfAbsent, a
    literal, a member or index write), read back by get, a member or an index, and never the
    map's prototype."""
    assert run('var m = {}; m.put("__proto__", 5); return [m, m.get("__proto__"), m.size()];') == [
        {"__proto__": 5}, 5, 1]
    assert run('var m = {"__proto__": 5, "a": 1}; return [m, m["__proto__"], m.keys()];') == [
        {"__proto__": 5, "a": 1}, 5, ["__proto__", "a"]]
    assert run("var m = {'__proto__': {x: 1}}; return [m.x, m];") == [None, {"__proto__": {"x": 1}}]
    assert run('var m = {}; m.__proto__ = {x: 1}; return [m.x, m, m.containsKey("__proto__")];') == [
        None, {"__proto__": {"x": 1}}, True]
    assert run('var m = {}; var k = "__proto__"; m[k] = [1]; return [m.x, m];') == [
        None, {"__proto__": [1]}]
    assert run('var m = {}; m.putAll({"__proto__": 2}); var n = {}; n.putIfAbsent("__proto__", 3);\n'
               'return [m, n, {}.__proto__, {}.get("__proto__"), [].__proto__];') == [
        {"__proto__": 2}, {"__proto__": 3}, None, None, None]
    # scriptLang JS keeps JavaScript's __proto__, names and async functions
    engine = ScriptEngine('var __m = {}; __m.__proto__ = {x: 1}; var f = async function () {};\n'
                          'return [__m.x, {"__proto__": 5}];', "JS")
    assert engine.call({}, {}, TELEMETRY) == [1, {}]


def test_a_proto_key_from_json_round_trips_out_of_a_transform() -> None:
    """A device's JSON key "__proto__" reads, writes and comes out of a transform unchanged."""
    engine = ScriptEngine('msg.n = msg["__proto__"].a + 1; msg.__proto__.b = 2;\n'
                          'return {msg: msg, metadata: metadata, msgType: msgType};', "TBEL")
    out = engine.call({"__proto__": {"a": 1}}, {}, TELEMETRY)
    assert json.dumps(out) == ('{"msg": {"__proto__": {"a": 1, "b": 2}, "n": 2}, "metadata": {}, '
                               '"msgType": "POST_TELEMETRY_REQUEST"}')


@pytest.mark.parametrize("script", ["return globalThis;", "return this;",
                                    "def f() { return this.x; } return f();"])
def test_this_and_global_this_are_refused(script: str) -> None:
    with pytest.raises(ScriptSyntaxError, match="this and globalThis"):
        tbel_to_js(script)


def test_a_map_key_named_as_an_object_method_reads_and_writes_as_any_key() -> None:
    """A TBEL map is a LinkedHashMap: "constructor", "toString", "valueOf" are keys as any."""
    assert run('var m = {}; m.constructor = 5; m.toString = 3; m.put("valueOf", 7);\n'
               'return [m.constructor, m.toString, m.get("valueOf"), m];') == [
        5, 3, 7, {"constructor": 5, "toString": 3, "valueOf": 7}]
    assert run('return [msg.constructor, msg.get("constructor"), msg["toString"]];',
               {"constructor": "data", "toString": 1}) == ["data", "data", 1]


def test_a_js_script_keeps_javascripts_function_constructor() -> None:
    """scriptLang JS is ThingsBoard's JavaScript engine: its Function constructor is there."""
    engine = ScriptEngine('return msg.constructor.constructor("return 7")();', "JS")
    assert engine.call({}, {}, TELEMETRY) == 7


# -- Java regular expressions: case, word bounds, surrogates (results of Java 17's Pattern) ---------

def test_case_insensitive_folds_ascii_letters_only_as_java() -> None:
    """Pattern.CASE_INSENSITIVE without UNICODE_CASE: US-ASCII letters only (é is not É, the long s
    U+017F is not s, the Kelvin sign is not k); a class's ASCII letter range takes the other case of the
    letters it holds (CIRange: [Z-a] holds z, so _ and Z..a both cases); \\p{Lower} is either
    case (CharPredicates.forPOSIXName)."""
    assert run('return ["é".matches("(?i)É"), "Ä".matches("(?i)ä"), "\\u017F".matches("(?i)s"),\n'
               '  "\\u212A".matches("(?i)k"), "\\u017F".matches("(?i)\\\\w"), "É".matches("(?i)[é]"),\n'
               '  "k".matches("(?i)[\\\\u212A]")];') == [False] * 7
    assert run('return ["caT".matches("(?i)[a-z]+"), "_".matches("(?i)[Z-a]"),\n'
               '  "z".matches("(?i)[Y-\\\\x5F]"), "A".matches("(?i)\\\\x61"),\n'
               '  "aB".matches("(?i)\\\\QAb\\\\E"), "A".matches("(?i)\\\\p{Lower}"),\n'
               '  "1".matches("(?i)\\\\P{Upper}"), "Kk".matches("(?i)[K]+"),\n'
               '  "Q".matches("(?i)[^q]"), "a".matches("(?i)\\\\P{Upper}")];') == [True] * 8 + [
        False, False]


def test_word_bounds_are_unicode_letters_and_digits_as_java_17() -> None:
    """Java 17's Pattern.Bound: a word character is Character.isLetterOrDigit or "_", and a
    non-spacing mark after one counts with it (JavaScript's \\b is ASCII)."""
    assert run('return ["café x".split("\\\\b"), "naïve".replaceAll("\\\\b", "|"),\n'
               '  "a1_é b".replaceAll("\\\\B", "|"), "x\\u0663y z".split("\\\\b"),\n'
               '  "ab\\u0301c d".replaceAll("\\\\b", "|")];') == [
        ["café", " ", "x"], "|naïve|", "a|1|_|é b", ["x\u0663y", " ", "z"], "|ab\u0301c| |d|"]


def test_a_surrogate_pair_of_escapes_is_one_code_point_as_java() -> None:
    """Pattern.uxxxx: a high surrogate's escape then a low one's match the one code point."""
    assert run('return [msg.s.matches("\\\\uD83D\\\\uDE00"), msg.s.matches("[\\\\uD83D\\\\uDE00]"),\n'
               '  msg.s.matches("\\\\uD83D"), (msg.s + "x").matches("\\\\uD83D\\\\uDE00x")];',
               {"s": "\U0001F600"}) == [True, True, False, True]


def test_a_class_escape_then_a_dash_is_a_literal_dash_as_java() -> None:
    """Pattern.range: "-" after \\w or \\p{...} in a class makes no range (Java accepts
    [\\w-z]: \\w, "-" and "z")."""
    assert run('return ["x".matches("[\\\\w-z]"), "-".matches("[\\\\w-z]"),\n'
               '  "-".matches("[\\\\p{Digit}-z]"), "b".matches("[\\\\w-a-c]"), "+".matches("[\\\\w-z]")];'
               ) == [True, True, True, True, False]


@pytest.mark.parametrize(("regex", "quantifier"), [("^*", "*"), ("$*", "*"), ("(?=a)*a", "*"),
                                                   ("a(?<=a)+", "+"), ("\\\\A*a", "*")])
def test_a_quantified_anchor_or_lookaround_is_named_as_not_supported(
        regex: str, quantifier: str) -> None:
    """Java repeats an anchor or a lookaround ("".matches("^*") is true); JavaScript cannot:
    refused as not supported here, not as a Java syntax error."""
    with pytest.raises(ScriptSyntaxError) as caught:
        ScriptEngine(f'return "a".matches("{regex}");', "TBEL")
    assert f"a quantifier ({quantifier}) on an anchor or a lookaround is not supported here" in str(
        caught.value)
    assert "PatternSyntaxException" not in str(caught.value)


@pytest.mark.parametrize("script", ["var l = [3, 10, 2]; return (l.sort)?.();",
                                    "var l = [3, 10, 2]; return l.sort?.();",
                                    "return msg?.a;"])
def test_optional_chaining_is_refused_as_mvel_cannot_parse_it(script: str) -> None:
    """``?.`` is JavaScript's (a call through it would be JavaScript's own method, a text
    sort); MVEL has ``.?`` null-safe navigation, refused too."""
    with pytest.raises(ScriptSyntaxError, match=r"optional chaining \(\?\.\)"):
        tbel_to_js(script)


def test_a_ternary_before_a_fraction_is_no_optional_chaining() -> None:
    assert run("var c = msg.c; return c ?.5 : 1;", {"c": True}) == 0.5


DATE_TEXT = ("TypeError: the text of a Date (TbDate.toString: localized) is not made here: use "
             "toISOString() (see docs/rules-scripts.md)")


@pytest.mark.parametrize("script", ['var d = new Date(0); return "t=" + d;',
                                    "var d = new Date(0); return d + 1;",
                                    "var d = new Date(0); return d.toString();"])
def test_a_date_in_a_concatenation_fails_as_its_to_string(script: str) -> None:
    """MVEL concatenates String.valueOf(d), TbDate.toString's localized text: not made here,
    the same error whichever way the text is asked for (never "[object Object]")."""
    assert error(script) == DATE_TEXT


def test_dates_compare_as_mvels_objects_that_are_not_comparable() -> None:
    """TbDate is not Comparable: MVEL's < > <= >= of two are false
    (MathProcessor.doOperationNonNumeric); getTime() compares the instants."""
    assert run("var a = new Date(1), b = new Date(2);\n"
               "return [a < b, a > b, a <= b, b >= a, a.getTime() < b.getTime(), a == a];") == [
        False, False, False, False, True, True]


def test_a_dates_instant_is_no_property_and_its_getters_read_as_mvel() -> None:
    """MVEL has no property ms on a TbDate; d.time is d.getTime() (its getter rule), d.time = x
    is d.setTime(x), d.fullYear is d.getFullYear()."""
    assert run('var d = new Date(0);\nd.ms = "x";\nreturn [d.getTime(), d.ns];') == [0, None]
    assert run("var d = new Date(5);\nvar r = [d.time, d.fullYear, d.UTCFullYear, d.month];\n"
               "d.time = 7;\nr.add(d.getTime());\nreturn r;") == [5, 1970, 1970, 1, 7]


def test_a_def_in_a_def_has_its_own_variables_as_mvel() -> None:
    """org.mvel2.ast.Function compiles an inner def in the enclosing function's context: a
    name the enclosing def assigned before the inner def is shared (20), one it assigns only
    after is the inner def's own (11: inner's k is not outer's)."""
    assert run("def outer(n) { def inner(m) { k = m * 2; return k; } k = 1; "
               "return inner(n) + k; }\nreturn outer(5);") == 11
    assert run("def outer(n) { k = 1; def inner(m) { k = m * 2; return k; } "
               "return inner(n) + k; }\nreturn outer(5);") == 20


def test_defs_nested_too_deep_are_refused() -> None:
    with pytest.raises(ScriptSyntaxError, match="a def nested more than 64 deep"):
        tbel_to_js("def f() {" * 70 + "}" * 70)


def test_print_unsigned_bytes_takes_a_list_of_bytes_only_as_tb_utils() -> None:
    """TbUtils.printUnsignedBytes(List<Byte>) iterates ``for (Byte b : byteArray)``: a list of
    the byte helpers (hexToBytes, stringToBytes, base64ToBytesList, a slice of one) works
    (TbelInvokeDocsIoTest.printUnsignedBytes_Test); a list literal's Integers are a
    ClassCastException; an empty list has no item to cast."""
    assert run('return [printUnsignedBytes(hexToBytes("01FF")), printUnsignedBytes([]),\n'
               '  printUnsignedBytes(stringToBytes("é")), printUnsignedBytes(base64ToBytesList("AP8=")),\n'
               '  printUnsignedBytes(hexToBytes("01FF7F").slice(1))];') == [
        [1, 255], [], [195, 169], [0, 255], [255, 127]]
    assert error("return printUnsignedBytes([-1, 1, 300]);") == (
        "ClassCastException: class java.lang.Integer cannot be cast to class java.lang.Byte")
    assert error('return printUnsignedBytes(["a"]);') == (
        "ClassCastException: class java.lang.String cannot be cast to class java.lang.Byte")


@pytest.mark.parametrize(("script", "found"), [
    # a quote in a regular expression literal would hide the code after it from every check
    ('var r = /"/; var prev = __edgeAt; __edgeAt = {n: 0}; var r2 = /"/; return prev;', '/"/'),
    ("var r = /'/; var g = globalThis; var r2 = /'/; return 1;", "/'/"),
    ('var x = 1;\nreturn /"/.test("a");', '/"/'),
    ('var a = [1, /x/];', "/x/"),
    ('if (msg.a) /"/.test(1); var g = globalThis; var r = /"/; return 1;', '/"/'),
    ('var x = 4; return typeof /x/;', "/x/"),
    ('var s = "a"; var t = msg.a ? /"/ : 1;', '/"/'),
])
def test_a_regular_expression_literal_is_refused(script: str, found: str) -> None:
    """MVEL has no regular expression literals: a ``/`` where JavaScript would start one is
    refused at compile, with its line (after an ``if (...)`` head too)."""
    with pytest.raises(ScriptSyntaxError, match="a regular expression literal") as caught:
        tbel_to_js(script)
    line = script[:script.index(found)].count("\n") + 1
    assert f"(line {line}: " in str(caught.value), str(caught.value)


@pytest.mark.parametrize("script", [
    'var a = 1; a <!-- "\nvar p = typeof __edgeAt; var s = "x";\nreturn p;',
    'var a = 1;\n--> "\nvar g = globalThis; "\nreturn 1;',
])
def test_an_html_like_comment_is_refused(script: str) -> None:
    """JavaScript reads ``<!--`` and ``-->`` as comments (MVEL has none): refused at compile."""
    with pytest.raises(ScriptSyntaxError, match="an HTML-like comment"):
        tbel_to_js(script)


@pytest.mark.parametrize(("script", "value"), [
    ("var a = msg.a; var b = msg.b; return a / b;", 1.5),
    ("var a = 1; var b = 3; return (a + b) / 2;", 2),
    ("var x = [9]; var i = 0; return x[i] / 3;", 3),
    ("return msg.t / 10;", 2),
    ("return 10 / 4;", 2.5),
    ('return "ssss".length / 2;', 2),
    ("var a = 8; a /= 2; return a; // a / b", 4),
    ("return msg.t /* t */ / 10;", 2),
    ("if (msg.t > 1) { return msg.t / 4; } return 0;", 5),
    ('var m = {"k": 6}; return m["k"] / 3 / 2;', 1),
])
def test_a_division_compiles_and_computes(script: str, value: float) -> None:
    assert run(script, {"a": 6, "b": 4, "t": 20}) == value


def test_error_stack_settings_a_call_makes_are_gone_on_the_next_call() -> None:
    """quickjs-ng keeps ``Error.prepareStackTrace`` and ``Error.stackTraceLimit`` in the
    context: a TBEL script's write is ignored, so call 1 sees what call 0 saw."""
    script = ('var before = [typeof Error.prepareStackTrace, Error.stackTraceLimit];\n'
              'def f(e, s) { return "seen " + msg.i; }\n'
              'if (msg.i == 0) { Error.prepareStackTrace = f; Error.stackTraceLimit = 0; }\n'
              'var stack = ""; try { var x = null; x.y = 1; } catch (e) { stack = e.stack; }\n'
              'return [before, stack.indexOf("__script") >= 0];')
    engine = ScriptEngine(script, "TBEL")
    assert [engine.call({"i": i}, {}, TELEMETRY) for i in range(3)] == [
        [["undefined", 10], True]] * 3


def test_no_promise_job_can_be_queued_by_a_tbel_script() -> None:
    """A promise's job (``then``, ``queueMicrotask``) would outlive the call, its memory held:
    TBEL engines have no ``Promise``, ``queueMicrotask``, ``FinalizationRegistry`` nor
    ``WeakRef`` (MVEL has none of them)."""
    assert run("return [typeof Promise, typeof queueMicrotask, typeof FinalizationRegistry, "
               "typeof WeakRef];") == ["undefined"] * 4
    script = ("var ap = Reflect.apply; var P = Promise; var p = ap(P.resolve, P, [1]);\n"
              "def f(v) { return 1; } ap(p.then, p, [f]); return 1;")
    with pytest.raises(ScriptRuntimeError, match="ReferenceError: Promise is not defined"):
        ScriptEngine(script, "TBEL").call({}, {}, TELEMETRY)
    # (before, with a 20000-item list kept by the job, the memory cap came at call 13)
    with pytest.raises(ScriptRuntimeError,
                       match="ReferenceError: queueMicrotask is not defined"):
        ScriptEngine("var q = queueMicrotask; def f() { return 1; } q(f); return 1;",
                     "TBEL").call({}, {}, TELEMETRY)
    assert ScriptEngine("return typeof Promise;", "JS").call({}, {}, TELEMETRY) == "function"


def test_async_await_and_yield_as_plain_names_and_keys() -> None:
    """MVEL takes them as any name: the script's function is neither async, a generator nor strict
    code, so JavaScript does too."""
    assert run("var yield = msg.y; return {yield: yield};", {"y": 3}) == {"yield": 3}
    assert run("var await = 2; var async = 3; return {async: 1, await: await + async};") == {
        "async": 1, "await": 5}


def test_no_name_of_the_wrappers_keeps_anything_from_one_call_to_the_next(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a script to name one of the wrapper's names past the compile checks and the scope's
    declarations (both turned off here, as a gap in the scanner would), it could not replace it,
    nor keep anything in it: each is a ``const`` of the script's scope (or the script function's
    own name)."""
    monkeypatch.setattr(sandbox, "_TBEL_RESERVED", ())
    monkeypatch.setattr(sandbox, "tbel_scope", lambda source: [])
    names = (*sandbox._TBEL_WRAPPER_NAMES, "__script", "__edgeT")
    assert {"__tbelS", "__tbelLock", "__stringify", "__parse", "__oom", "__edgeAt"} <= set(names)
    for name in names:
        script = (f"var before = typeof {name}; var kept = null;\n"
                  f"try {{ kept = {name}.kept; }} catch (e) {{}}\n"
                  f"if (msg.i == 0) {{ try {{ {name} = {{kept: 1}}; }} catch (e) {{}}\n"
                  f"  try {{ {name}.kept = 1; }} catch (e) {{}} }}\n"
                  "return [before, kept];")
        engine = ScriptEngine(script, "TBEL")
        results = [engine.call({"i": i}, {}, TELEMETRY) for i in range(3)]
        assert results[0] == results[1] == results[2], (name, results)
        assert results[0][1] is None, (name, results)
    # the runner's own JSON.stringify is the one that serializes a result
    engine = ScriptEngine("if (msg.i == 0) { try { __stringify = function (v) { return \"1\"; }; }"
                          " catch (e) {} } return msg.i;", "TBEL")
    assert [engine.call({"i": i}, {}, TELEMETRY) for i in range(3)] == [0, 1, 2]
