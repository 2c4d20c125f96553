"""The JavaScript that gives a TBEL script its Java collection and string methods, its ``foreach``
iteration and ThingsBoard's TBEL helper functions (TbUtils), for ``sandbox.tbel_to_js``.

The script's ``x.name(args)`` becomes ``x[__tbelS.name](args)``: a method keyed by a symbol that
every value inherits from Object.prototype, not enumerable, so no data key can collide with it
and JSON never sees it; it dispatches on what ``x`` is (a list: ``java.util.ArrayList`` and the
tbel library's ExecutionArrayList; a map: ``java.util.LinkedHashMap`` and ExecutionHashMap; text:
``java.lang.String``; an entry of ``entrySet()``: ExecutionEntry) and has the Java semantics.
``x.size`` (no call) is read as MVEL reads it: MVEL's property access takes a public method of
that name with no argument before a map's key (PropertyTools.getGetter, ahead of the map lookup
in ReflectiveAccessorOptimizer.getBeanProperty), so ``list.size`` and ``map.size`` are their
sizes; ``x[__tbelG.size]`` is a getter keyed the same way.

The helpers (``TBEL_HELPERS``) a script names are variables of the script's function, bound
afresh on each call (``var toInt = __tbelH.toInt, ...``: ``sandbox.tbel_scope``; a script that
assigns one, ``toInt = null``, changes it for that call only); they shadow JavaScript's own
``parseInt``, ``parseFloat``, ``isNaN``, ``btoa``, ``atob``, ``encodeURI``, ``decodeURI``, whose
semantics differ; each names the Java method it follows. A call of a method or helper with an
argument count Java has no overload for is an error (MVEL finds no method), never a call with
the extra arguments dropped. Other names are a ReferenceError, as any unknown name.

The JavaScript is ``tbel_runtime.js``, joined into one line (it goes on the wrapper's first
line, which keeps the script's line numbers): comments only as whole ``//`` lines, and every
statement ends with ``;``.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

# Methods a script may call: ``.name(`` in code is rewritten to a call of the runtime's method.
TBEL_METHODS: tuple[str, ...] = (
    # lists and maps
    "size", "isEmpty", "get", "remove", "clear", "equals",
    # lists (java.util.ArrayList, ExecutionArrayList)
    "set", "add", "addAll", "contains", "indexOf", "lastIndexOf", "length", "push", "pop",
    "shift", "unshift", "join", "slice", "concat", "reverse", "toReversed", "sort", "toSorted",
    # anything (Java's toString of the value)
    "toString",
    # maps (java.util.LinkedHashMap, ExecutionHashMap)
    "containsKey", "containsValue", "getOrDefault", "put", "putAll", "putIfAbsent", "replace",
    "keys", "keySet", "values", "entrySet", "sortByKey", "sortByValue", "toSortedByKey",
    "toSortedByValue", "clone",
    # map entries (ExecutionEntry)
    "getKey", "getValue", "setValue",
    # text (java.lang.String)
    "equalsIgnoreCase", "startsWith", "endsWith", "substring", "toUpperCase", "toLowerCase",
    "trim", "split", "matches", "charAt", "replaceAll", "replaceFirst",
    # ThingsBoard's TbDate (TBEL's Date)
    "getTime", "valueOf", "parseSecond", "parseSecondMilli", "toISOString", "toJSON", "setTime",
    "getFullYear", "getMonth", "getDate", "getDay", "getHours", "getMinutes", "getSeconds",
    "getMilliseconds", "getUTCFullYear", "getUTCMonth", "getUTCDate", "getUTCDay", "getUTCHours",
    "getUTCMinutes", "getUTCSeconds", "getUTCMilliseconds", "addYears", "addMonths", "addWeeks",
    "addDays", "addHours", "addMinutes", "addSeconds", "addNanos", "setFullYear", "setMonth",
    "setDate", "setHours", "setMinutes", "setSeconds", "setMilliseconds", "setUTCFullYear",
    "setUTCMonth", "setUTCDate", "setUTCHours", "setUTCMinutes", "setUTCSeconds",
    "setUTCMilliseconds",
)
# Names whose read without a call is MVEL's call of the method with no argument (getGetter):
# ``x.size``, ``x.empty`` / ``x.isEmpty``, ``map.keys``, ``map.values``, ...
TBEL_GETTERS: dict[str, str] = {
    "size": "size", "empty": "isEmpty", "isEmpty": "isEmpty", "keys": "keys",
    "values": "values", "keySet": "keySet", "entrySet": "entrySet",
}
# Objects whose methods are JavaScript's and Java's alike, and which (None: any): ``Math.max(a,
# b)`` (java.lang.Math), ``JSON.parse(s)`` (ThingsBoard's TbJson).
TBEL_NAMESPACES: dict[str, frozenset[str] | None] = {
    "Math": None,
    "JSON": frozenset({"stringify", "parse"}),
}
# Java classes whose static methods a script may call (``Integer.parseInt(s)``): in the script's
# scope these names are the runtime's (``__tbelJava``), with these methods only.
TBEL_JAVA_STATICS: dict[str, frozenset[str]] = {
    "Integer": frozenset({"parseInt", "valueOf", "toString", "toHexString"}),
    "Long": frozenset({"parseLong", "valueOf"}),
    "Double": frozenset({"parseDouble", "valueOf"}),
    "String": frozenset({"valueOf"}),
    "Boolean": frozenset({"parseBoolean"}),
    # ThingsBoard's TbDate: ``new Date(...)`` and its static methods
    "Date": frozenset({"now", "UTC", "parse"}),
}

# TbUtils's helpers, functions of the script's scope (the runtime's ``__tbelH``)
TBEL_HELPERS: tuple[str, ...] = (
    "btoa", "atob", "stringToBytes", "bytesToString", "decodeToString", "decodeToJson",
    "bytesToHex", "hexToBytes", "base64ToHex", "hexToBase64", "base64ToBytesList", "parseInt",
    "parseFloat", "parseDouble", "parseHexToInt", "parseLittleEndianHexToInt",
    "parseBigEndianHexToInt", "parseBytesToInt", "parseBytesToLong", "parseBytesToFloat",
    "parseHexToFloat", "parseLittleEndianHexToFloat", "parseBigEndianHexToFloat", "intToHex",
    "toFixed", "toInt", "isNaN", "isMap", "isList", "raiseError", "padStart", "padEnd",
    "encodeURI", "decodeURI", "parseLong", "parseHexToLong", "parseLittleEndianHexToLong",
    "parseBigEndianHexToLong", "parseHexToDouble", "parseLittleEndianHexToDouble",
    "parseBigEndianHexToDouble", "parseHexIntLongToFloat", "parseBytesToDouble",
    "parseBytesLongToDouble", "parseBytesIntToFloat", "base64ToBytes", "bytesToBase64",
    "hexToBytesArray", "printUnsignedBytes", "longToHex", "floatToHex", "doubleToHex",
    "intLongToRadixString",
)

_SOURCE = Path(__file__).with_name("tbel_runtime.js")


@cache
def runtime() -> str:
    """The runtime as one line of JavaScript (its whole-line ``//`` comments left out)."""
    lines = (line.strip() for line in _SOURCE.read_text(encoding="utf-8").splitlines())
    return " ".join(line for line in lines if line and not line.startswith("//"))


@cache
def runtime_names() -> tuple[str, ...]:
    """The names the runtime declares at its top level (``var __tbelS = ...``), in order."""
    names: list[str] = []
    for line in _SOURCE.read_text(encoding="utf-8").splitlines():
        if line.startswith("var "):
            names += re.findall(r"(?:^var |, )(__[\w$]+)", line)
    return tuple(names)
