"""The rule engine's script sandbox: a rule node's JavaScript or TBEL script, compiled once and run
per message in an embedded QuickJS (quickjs-ng) context under a per-call time limit and a memory cap.

Owns: wrapping a ThingsBoard script body into a function of ``(msg, metadata, msgType)`` as
ThingsBoard does, mapping TBEL's common subset onto JavaScript (and refusing the rest at compile),
passing values in and out as JSON (never Python ``eval``), the typed script errors, and recreating
the context after a timeout or a memory blow-up so the next call runs on a clean one, and
blocking a script that keeps timing out or blowing its memory (ThingsBoard's blocklist: after
``max_errors`` such errors, each within ``block_s`` of the one before, calls fail at once with
``ScriptBlocked`` until ``block_s`` after the last). A batch of messages runs in one script call
(``call_many``) with the results of one call per message.

Thread-safety: a QuickJS runtime must only be used by the thread that created it. A ScriptEngine
serialises its calls with a lock and, when called from a thread other than the one that built its
context, rebuilds the context in the calling thread (a recompile, about a millisecond). Meant use:
one engine per script per shard thread. Choice of engine and measured figures: docs/rules-scripts.md.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import _quickjs  # type: ignore[import-not-found]  # quickjs-ng's C extension, no stubs
from loguru import logger

from edge_sync.rules.patterns import java_double
from edge_sync.rules.tbel_runtime import (
    TBEL_GETTERS,
    TBEL_HELPERS,
    TBEL_JAVA_STATICS,
    TBEL_METHODS,
    TBEL_NAMESPACES,
)
from edge_sync.rules.tbel_runtime import runtime as tbel_runtime
from edge_sync.rules.tbel_runtime import runtime_names as tbel_runtime_names
from edge_sync.rules.tbel_zones import known_zones, year_rules, zone_known

if TYPE_CHECKING:
    from edge_sync.config import RulesConfig

ScriptLang = Literal["JS", "TBEL"]

DEFAULT_TIME_LIMIT_S = 0.1
DEFAULT_MEMORY_LIMIT_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_STACK_BYTES = 512 * 1024
# ThingsBoard's js.local/js.remote/tbel max_errors and max_black_list_duration_sec defaults
DEFAULT_MAX_ERRORS = 3
DEFAULT_BLOCK_S = 60.0
# call_many: items per script call (bounds the batch's memory), and the share of the per-call
# time limit a batch call may use before it leaves the remaining items to the next call
MAX_BATCH = 256
# TBEL: the most times one message runs again for the region time zones it needs (each round
# loads every id and year its run lacked, at most 16 of each: tbel_runtime.js); so at most 3
# runs and 2 loads per message, the second load counted in the message's time limit
MAX_ZONE_ROUNDS = 2
# TBEL: the ids and years of region time zones an engine keeps loaded (more: all are dropped at
# the next message that needs one it has not)
MAX_ZONE_KEYS = 256
# a zone key the runtime asks for: "id year" (a year of a JavaScript Date's)
_ZONE_YEAR = re.compile(r"-?[0-9]{1,7}")
BATCH_BUDGET = 0.5
# the name of ThingsBoard's script arguments, in order
ARG_NAMES = ("msg", "metadata", "msgType")


class ScriptError(Exception):
    """Any failure of a rule script: compile or run."""


class ScriptSyntaxError(ScriptError):
    """The script does not compile (the engine's message), or uses TBEL that does not map to JS."""


class ScriptRuntimeError(ScriptError):
    """The script threw (the thrown value's text and the engine's stack), or returned a value that
    is not JSON-able or not of the shape its node expects."""


class ScriptTimeout(ScriptError):
    """The call ran longer than the engine's per-call time limit and was interrupted."""


class ScriptMemoryExceeded(ScriptError):
    """The call needed more memory than the engine's cap and was stopped."""


class ScriptBlocked(ScriptError):
    """The script is blocked after ``max_errors`` timeouts or memory blow-ups: the call was not
    made (ThingsBoard's AbstractScriptInvokeService.invokeScript, its text)."""


@dataclass(frozen=True, slots=True)
class ScriptBlock:
    """A block in force, as ``ScriptEngine.block`` reads it: how long ago it started and how
    long it has left (seconds), the errors counted, the last one (type and text); ``since``
    and ``until`` on the limits' clock (the same at every read of one block)."""

    blocked_for_s: float
    left_s: float
    errors: int
    last_error: str
    since: float
    until: float


@dataclass(frozen=True)
class ScriptLimits:
    """Per-engine limits: wall time of one call, memory of the whole context, the JS stack; and
    the blocklist: after ``max_errors`` timeouts or memory blow-ups, each within ``block_s`` of
    the one before, the script is blocked until ``block_s`` after the last (``block_s`` 0: never
    blocked). ``clock``: seconds, monotonic (the blocklist's; a test's own)."""

    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
    max_stack_bytes: int = DEFAULT_MAX_STACK_BYTES
    max_errors: int = DEFAULT_MAX_ERRORS
    block_s: float = DEFAULT_BLOCK_S
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.time_limit_s <= 0:
            raise ValueError("time_limit_s must be > 0")
        if self.memory_limit_bytes < 1024 * 1024:
            raise ValueError("memory_limit_bytes must be at least 1 MiB")
        if self.max_stack_bytes < 64 * 1024:
            raise ValueError("max_stack_bytes must be at least 64 KiB")
        if self.max_errors < 1:
            raise ValueError("max_errors must be at least 1")
        if self.block_s < 0:
            raise ValueError("block_s must be >= 0")

    @classmethod
    def of_settings(cls, timeout_ms: int, memory_mb: int, max_errors: int = DEFAULT_MAX_ERRORS,
                    block_s: float = DEFAULT_BLOCK_S) -> ScriptLimits:
        """The limits of ``rules.script_timeout_ms``, ``rules.script_memory_mb``,
        ``rules.script_max_errors`` and ``rules.script_block_duration_s``."""
        return cls(time_limit_s=timeout_ms / 1000, memory_limit_bytes=memory_mb * 1024 * 1024,
                   max_errors=max_errors, block_s=block_s)

    @classmethod
    def of_config(cls, rules: RulesConfig) -> ScriptLimits:
        """The limits a site's ``rules`` section sets: time and memory, and the blocklist's
        max errors and block duration. The agent, ``rules check --config`` and ``check-config``
        all build their limits here, so a script is compiled and blocked the same way by each."""
        return cls.of_settings(rules.script_timeout_ms, rules.script_memory_mb,
                               rules.script_max_errors, rules.script_block_duration_s)


@dataclass(slots=True)  # not frozen: one per message out of a transform, a frozen one costs more
class TransformResult:
    """One message out of a transform script."""

    msg: Any
    metadata: dict[str, Any]
    msg_type: str


# --- TBEL: the subset that maps onto JavaScript ----------------------------------------------------

# TBEL (MVEL) constructs with no JavaScript counterpart in the subset: refused at compile.
_TBEL_REFUSED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bforeach\b"), "foreach without (item : collection)"),
    (re.compile(r"\bimport\b"), "import"),
    # (but ``new Date(...)``: ThingsBoard's TbDate, the runtime's)
    (re.compile(r"\bnew\s+(?!Date\s*\()[A-Za-z_]"), "new (Java object construction)"),
    (re.compile(r"\b(?:int|long|double|float|boolean|byte|short|char|String|Map|List|Object)"
                r"\s+[A-Za-z_$][\w$]*\s*[=;]"), "typed declarations (use var)"),
    (re.compile(r"\.\?"), "null-safe navigation (.?)"),
    # JavaScript's optional chaining (``l.sort?.()``, ``(l.sort)?.()`` would call JavaScript's
    # method); MVEL has none. Not before a digit: ``c ?.5 : 1`` is a ternary
    (re.compile(r"\?\.(?!\d)"), "optional chaining (?.)"),
    (re.compile(r"\bwith\s*\("), "with blocks"),
    # MVEL declares with ``var`` (or a type) only; a ``let`` would also escape the per-call scope
    (re.compile(r"\b(?:let|const|class)\s+[A-Za-z_$]"), "let, const and class declarations (use var)"),
    (re.compile(r"`"), "template literals (`...`)"),
    # JavaScript's global object: what a script set on it would outlive the call (the runtime
    # freezes it too: tbel_runtime.js, __tbelLock)
    (re.compile(r"(?<![\w$.])(?:globalThis|this)(?![\w$])"), "this and globalThis"),
    # ``l["sort"]()``, ``(l["sort"])()``: a call of a computed member would run JavaScript's
    # method of that name
    (re.compile(r"\][\s)]*\("), "a call of a computed member (x[\"name\"](...))"),
    # ``(l.sort)()``: a member read, then called, would be JavaScript's method of that name
    # (MVEL has no such call: it reads a property named sort)
    (re.compile(r"\.\s*[A-Za-z_$][\w$]*\s*\)[\s)]*\("),
     "a call of a parenthesized member ((x.name)(...))"),
)
# Checked on the script as written (comments blanked, before any rewrite: the translation's own
# code names the runtime's ``__tbel...``). A name (not a member ``x.__proto__``, a map key) that
# starts with ``__`` is the runtime's or the wrapper's (MVEL would take it as any name, but no
# ThingsBoard script needs one): a script that named one could reach or shadow the runtime. An
# escape in a name (``\u005f_tbelS``) would hide one. MVEL has no async functions nor generators:
# an awaiting call leaves a job queued per call, its memory held until the cap.
_TBEL_RESERVED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![\w$])__[\w$]*"), "a name starting with __ (the runtime's names)"),
    (re.compile(r"\\u"), "an escape in a name (\\u)"),
    # ``async`` before ``function``, a name (``async x => ...``, an async method ``{async f()
    # {...}}``), ``(`` or ``*``; ``async``, ``await`` and ``yield`` as plain names or keys stay
    # names (the script's function is neither async, a generator nor strict code)
    (re.compile(r"(?<![\w$])async(?=\s*[A-Za-z_$(*])|\bfunction\s*\*"),
     "an async function or a generator function"),
)
# ``foreach (item : collection)`` and MVEL's ``for (item : collection)``, the item's optional type
_TBEL_FOREACH = re.compile(
    r"\b(?:foreach|for)\s*\(\s*(?:[A-Za-z_$][\w$.]*(?:\[\])?\s+)?([A-Za-z_$][\w$]*)\s*:")
# ``.name`` then maybe ``(``: a method call, or a property read
_TBEL_MEMBER = re.compile(r"\.\s*([A-Za-z_$][\w$]*)(\s*\()?")
# what follows a property that is written (``x.size = 1``, ``x.values += ...``), not read
_TBEL_WRITE = re.compile(r"\s*(?:[-+*/%&|^]|<<|>>>?|\*\*)?=(?!=)")
# a class whose methods a script may call, just before ``.name(``: JavaScript's own (Math, JSON,
# Date) or the runtime's Java classes (Integer, ...)
_TBEL_CLASSES: dict[str, frozenset[str] | None] = {**TBEL_NAMESPACES, **TBEL_JAVA_STATICS}
_TBEL_CALLS = frozenset(TBEL_METHODS)
# JavaScript's global functions (and Object.prototype's, which the global object inherits) that
# TBEL has no function of that name for: a call is refused (MVEL finds no method ``toString(5)``),
# unless the script defines it (``def toString(x)``)
_TBEL_JS_GLOBAL_CALL = re.compile(
    r"(?<![\w$.])(eval|isFinite|escape|unescape|encodeURIComponent|decodeURIComponent|toString|"
    r"valueOf|hasOwnProperty|isPrototypeOf|propertyIsEnumerable|toLocaleString|Function|Object|"
    r"Array|Number|Symbol|Error|Proxy|Promise|BigInt|RegExp|Date|Reflect|queueMicrotask)\s*\(")
_TBEL_DEF = re.compile(r"\bdef\s+([A-Za-z_$][\w$]*)\s*\(")
_TBEL_DEF_VAR = re.compile(r"\bdef\s+(?=[A-Za-z_$])")
# ``name = ...`` (not ``==``, ``=>``): a variable the script assigns; a member ``x.name = ...``
# (``x. name``, spaces after the dot too) matches with its dot in group 1, and is no variable
_TBEL_ASSIGNED = re.compile(r"(?:(\.\s*)|(?<![\w$.]))([A-Za-z_$][\w$]*)\s*=(?![=>])")
_TBEL_NAME = re.compile(r"[A-Za-z_$][\w$]*")
# ``.split("regex"`` / ``.matches('regex')`` / ``.replaceAll("regex"``: a literal regular
# expression, checked at compile
_TBEL_REGEX_ARG = re.compile(
    r"\.\s*(?:split|matches|replaceAll|replaceFirst)\s*\(\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')\s*[,)]",
    re.S)
_JS_FUNCTION = re.compile(r"\bfunction\s+([A-Za-z_$][\w$]*)")
# where a string literal or a comment starts, and where a literal ends (its closing quote, a
# backslash escaping any one character, the line break included); a lone ``/`` and JavaScript's
# HTML-like comments (``<!--``, ``-->``) are stopped at too (``_split_code_and_literals``)
_LITERAL_START = re.compile(r"['\"]|//|/\*|/|<!--|-->")
_LITERAL_END = {q: re.compile(r"[^\\" + q + r"]*(?:\\.[^\\" + q + r"]*)*" + q, re.S)
                for q in "'\""}
# a token of code, for what precedes a ``/``: a name, a number, or one other character
_CODE_TOKEN = re.compile(r"[A-Za-z_$][\w$]*|\d[\w.]*|\S")
# JavaScript's keywords after which a ``/`` starts a regular expression literal
_JS_KEYWORDS_BEFORE_EXPRESSION = frozenset({
    "return", "typeof", "case", "do", "else", "in", "of", "instanceof", "new", "void", "delete",
    "throw", "yield", "await"})
# the keywords whose ``(...)`` is a statement's head: a ``/`` after its ``)`` starts a regular
# expression literal in JavaScript
_JS_HEAD_KEYWORDS = frozenset({"if", "while", "for", "with"})


class _CodeState:
    """What the code read so far ends with, for a ``/``: whether JavaScript reads a ``/`` there as
    a division (after a value: a name, a number, a string literal, ``]``, or a ``)`` that closes
    an expression) or as the start of a regular expression literal (anywhere else: after an
    operator, ``(``, ``{``, a keyword such as ``return``, or the ``)`` of an ``if``/``while``/
    ``for``/``with`` head). Fed the code in order; each character once."""

    __slots__ = ("last", "parens", "value")

    def __init__(self) -> None:
        self.value = False  # a / here would be a division
        self.last = ""  # the last token
        self.parens: list[str] = []  # per open "(": the name just before it

    def read(self, code: str) -> None:
        for found in _CODE_TOKEN.finditer(code):
            token = found.group(0)
            first = token[0]
            if first.isalpha() or first in "_$":
                # a member's name (``x.return``) is a value, as any name but a keyword
                self.value = self.last == "." or token not in _JS_KEYWORDS_BEFORE_EXPRESSION
            elif first.isdigit():
                self.value = True
            elif token == "(":
                last = self.last
                self.parens.append(last if last[:1].isalpha() else "")
                self.value = False
            elif token == ")":
                head = self.parens.pop() if self.parens else ""
                self.value = head not in _JS_HEAD_KEYWORDS
            else:
                self.value = token == "]"
            self.last = token

    def literal(self) -> None:
        """A string literal was read: a value."""
        self.value, self.last = True, "''"


def _split_code_and_literals(source: str) -> list[tuple[bool, str]]:
    """(is_code, text) runs: string literals and comments are not code and are kept verbatim.
    Linear in the source: each step jumps to the next quote, comment start or ``/`` (a regex
    search), and a literal's end is found by ``_LITERAL_END`` in one search.

    MVEL has no regular expression literals and no HTML-like comments, but JavaScript reads
    ``/"/`` as one and ``<!-- "`` as a comment: a quote in them would make this split (and so
    every check of the script) take code for a string. So a ``/`` where JavaScript could start a
    regular expression literal (``_CodeState``), ``<!--`` and ``-->`` are refused
    (ScriptSyntaxError, with the line); a division is code."""
    out: list[tuple[bool, str]] = []
    start, n = 0, len(source)
    state = _CodeState()
    read = 0  # the code up to here is in ``state``
    i = 0
    while True:
        found = _LITERAL_START.search(source, i)
        if found is None:
            break
        i = found.start()
        c = found.group(0)
        if c in ("<!--", "-->"):
            raise _refused(source, i, "an HTML-like comment (<!-- or -->)", c)
        if c == "/":
            state.read(source[read:i])
            if not state.value:
                line_end = source.find("\n", i)
                raise _refused(source, i, "a regular expression literal (/.../)",
                               source[i:i + 20 if line_end < 0 else min(line_end, i + 20)])
            state.read("/")
            read = i = i + 1
            continue
        state.read(source[read:i])
        if c == "//":
            j = source.find("\n", i)
            end = n if j < 0 else j
        elif c == "/*":
            j = source.find("*/", i + 2)
            end = n if j < 0 else j + 2
        else:
            closing = _LITERAL_END[c].match(source, i + 1)
            end = n if closing is None else closing.end()
            state.literal()
        if i > start:
            out.append((True, source[start:i]))
        out.append((False, source[i:end]))
        i = start = read = end
    if start < n:
        out.append((True, source[start:]))
    return out


def _blank_comments(source: str) -> str:
    """``source`` with each comment's characters made spaces (its line breaks kept): no rewrite
    or refusal is misled by a comment between ``.`` and a name (``l./* c */sort()``), and line
    and column numbers stay those of the script."""
    parts = []
    for is_code, text in _split_code_and_literals(source):
        if not is_code and text[:2] in ("//", "/*"):
            text = re.sub(r"[^\n]", " ", text)
        parts.append(text)
    return "".join(parts)


def _code_mask(source: str) -> list[bool]:
    """Per character of ``source``: whether it is code (not in a string literal or comment)."""
    mask: list[bool] = []
    for is_code, text in _split_code_and_literals(source):
        mask.extend([is_code] * len(text))
    return mask


def _foreach_to_js(source: str) -> str:
    """``foreach (x : c) {`` (and ``for (x : c)``) as ``for (var x of __tbelIter(c)) {``: the
    iteration of MVEL's ForEachNode (``__tbelIter``); line breaks kept. ``var``, not ``let``: the
    body may declare the item's name again (``var x = ...``), as MVEL allows."""
    mask = _code_mask(source)
    out: list[str] = []
    done = 0
    for found in _TBEL_FOREACH.finditer(source):
        if found.start() < done or not mask[found.start()]:
            continue
        # the header's closing parenthesis, counting code parentheses only
        depth, i = 1, found.end()
        while i < len(source) and depth:
            if mask[i]:
                depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        if depth:
            line = source[: found.start()].count("\n") + 1
            raise ScriptSyntaxError(f"TBEL: foreach without its closing parenthesis (line {line}); "
                                    "see docs/rules-scripts.md")
        header = source[found.start():found.end()]
        out.append(source[done:found.start()])
        out.append(f"for (var {found.group(1)} of __tbelIter(" + "\n" * header.count("\n"))
        out.append(source[found.end():i - 1] + "))")
        done = i
    out.append(source[done:])
    return "".join(out)


_TBEL_VAR = re.compile(r"\bvar\s+([A-Za-z_$][\w$]*)")


def _assigned(code: str) -> set[str]:
    """The names ``code`` assigns or declares with ``var`` (not members ``x.name = ...``)."""
    names = {name for member, name in _TBEL_ASSIGNED.findall(code) if not member}
    return names | set(_TBEL_VAR.findall(code))


_MAX_DEF_NESTING = 64


def _def_locals(source: str) -> str:
    """Each ``def name(params) { body }``'s own variables declared at the top of its body
    (``{ var total, i; ...``, on the same line): the names its body assigns that the enclosing
    code has not assigned or declared before the ``def``. MVEL compiles a function's body with its
    own variables (org.mvel2.ast.Function: the body's variables that are not the enclosing
    context's become indexed inputs) and gives each call a FunctionVariableResolverFactory of
    its own, so a recursive call has its own ``total``, and the script's does not change; a
    name the script set before the ``def`` is the script's, shared. A ``def`` inside a ``def``
    follows the same rule in the enclosing one's context (its ParserContext is the enclosing
    function's): the enclosing one's parameters and the names it assigned before the inner
    ``def`` are shared, the rest are the inner one's own. Linear: the braces are matched once,
    and each def's code is scanned once, its inner defs' bodies skipped."""
    mask = _code_mask(source)
    code = "".join(c if m else " " for c, m in zip(source, mask, strict=True))
    # each "{"'s matching end (past its "}"), in one pass
    ends: dict[int, int] = {}
    opened: list[int] = []
    for i, c in enumerate(code):
        if c == "{":
            opened.append(i)
        elif c == "}" and opened:
            ends[opened.pop()] = i + 1
    # the defs with a body: (start, name, params, brace, end), in order of start
    defs: list[tuple[int, str, set[str], int, int]] = []
    for found in _TBEL_DEF.finditer(code):
        close = code.find(")", found.end())
        brace = close + 1
        while close >= 0 and brace < len(code) and code[brace].isspace():
            brace += 1
        if close < 0 or brace >= len(code) or code[brace] != "{":
            continue
        end = ends.get(brace, len(code))
        defs.append((found.start(), found.group(1), set(_TBEL_NAME.findall(code[found.end():close])),
                     brace, end))
    out: list[str] = []
    at = 0  # the next def of ``defs`` to place

    def region(lo: int, hi: int, shared: set[str], depth: int) -> set[str]:
        """Copy source[lo:hi] to ``out``, each def directly in it with its own variables
        declared (``shared``: the names visible to a def at ``lo``); the names the region itself
        assigns (not its defs' bodies)."""
        nonlocal at
        if depth > _MAX_DEF_NESTING:
            line = source[:lo].count("\n") + 1
            raise ScriptSyntaxError(f"TBEL: a def nested more than {_MAX_DEF_NESTING} deep "
                                    f"(line {line}); see docs/rules-scripts.md")
        assigned: set[str] = set()
        done = lo
        while at < len(defs) and defs[at][0] < hi:
            start, name, params, brace, end = defs[at]
            at += 1
            if start < done:
                continue  # a def in a def's parameters: not one
            assigned |= _assigned(code[done:start])
            out.append(source[done:brace + 1])
            marker = len(out)
            out.append("")
            # the body, up to its "}" (an unclosed one: to the end of the script)
            body_hi = end - 1 if brace in ends else end
            inner = region(brace + 1, body_hi, shared | assigned | params, depth + 1)
            # (msg, metadata and msgType, the script's arguments, stay the script's)
            own = sorted(inner - params - shared - assigned - {name} - set(ARG_NAMES))
            if own:
                out[marker] = " var " + ", ".join(own) + ";"
            out.append(source[body_hi:end])
            done = end
        assigned |= _assigned(code[done:hi])
        out.append(source[done:hi])
        return assigned

    region(0, len(code), set(), 0)
    return "".join(out)


def _refuse_reserved(source: str) -> None:
    """ScriptSyntaxError at the first of ``_TBEL_RESERVED`` in ``source``'s code (comments
    blanked; string literals are data); a name after a dot is a member (a map key)."""
    offset = 0
    for is_code, text in _split_code_and_literals(source):
        start, offset = offset, offset + len(text)
        if not is_code:
            continue
        for pattern, what in _TBEL_RESERVED:
            for found in pattern.finditer(text):
                if found.group(0)[0] != "\\" and _char_before(text, found.start()) == ".":
                    continue
                raise _refused(source, start + found.start(), what, found.group(0))


def _proto_key(source: str, start: int, text: str) -> str:
    """A string literal that is a key of an object literal (after ``{`` or ``,``, before ``:``)
    and reads ``__proto__`` (or holds an escape, which may spell it) as a computed key
    (``["__proto__"]: v``): JavaScript's literal ``"__proto__": v`` sets the object's prototype
    instead of a key."""
    if text[1:-1] != "__proto__" and "\\" not in text:
        return text
    after = start + len(text)
    while after < len(source) and source[after].isspace():
        after += 1
    if after < len(source) and source[after] == ":" and _char_before(source, start) in ("{", ","):
        return "[" + text + "]"
    return text


# in a string literal: an escape (a backslash and the character after it), or a line break of
# the script's own, which MVEL keeps in the text (ParseTools.captureStringLiteral stops only at
# the closing quote) and JavaScript refuses
_LITERAL_LINE_BREAK = re.compile(r"\\(?:\r\n|.)|\r\n|\r|\n", re.S)
# a line break as JavaScript reads the same text: its escape, then (LF, CR LF) a line
# continuation (a backslash and the break itself, which JavaScript reads as nothing), so that
# the script's lines stay its own; a lone CR, which the edge does not count as a line, is its
# escape alone
_LINE_BREAK_ESCAPES = {"\r\n": "\\r\\n\\\r\n", "\r": "\\r", "\n": "\\n\\\n"}


def _literal_to_js(source: str, start: int, text: str) -> str:
    """A TBEL string literal (at ``start`` in ``source``) as JavaScript reads the same text: its
    line breaks written as escapes (``_LINE_BREAK_ESCAPES``). A backslash before a line break is
    refused, as MVEL refuses it (ParseTools.handleEscapeSequence: "illegal escape sequence");
    JavaScript would read a line continuation and drop the break. Other escapes are kept."""
    if "\n" not in text and "\r" not in text:
        return text
    out: list[str] = []
    at = 0
    for found in _LITERAL_LINE_BREAK.finditer(text):
        pair = found.group(0)
        if pair[0] == "\\":
            if pair[1] in "\r\n":
                line = source[:start + found.start()].count("\n") + 1
                raise ScriptSyntaxError(
                    f"TBEL: illegal escape sequence: a backslash before a line break in a "
                    f"string (line {line}); see docs/rules-scripts.md")
            continue
        out += (text[at:found.start()], _LINE_BREAK_ESCAPES[pair])
        at = found.end()
    out.append(text[at:])
    return "".join(out)


def tbel_to_js(source: str) -> str:
    """The JavaScript of a TBEL script in the supported subset; ScriptSyntaxError for the rest.

    Supported: expressions (arithmetic, comparison, logic, ternary, string concatenation), ``var``
    declarations, ``def name(args) { ... }`` functions (each call with its own variables:
    ``_def_locals``; and ``def x = ...`` as ``var``), if/else,
    while, C-style for loops and ``foreach (x : collection)``, return, map literals ``{"k": v}``
    and list literals ``[a, b]``, field access ``msg.k`` / ``msg["k"]``, the Java methods of
    maps, lists, text, map entries and TbDate in ``TBEL_METHODS`` (``x.name(`` becomes a call of the
    runtime's symbol-keyed method: ``tbel_runtime``), ``x.size`` and the other reads MVEL takes
    as a call (``TBEL_GETTERS``), ``Math.f(...)``, ``JSON.parse`` / ``stringify``, ``new
    Date(...)`` and the class methods of ``TBEL_JAVA_STATICS`` (``Date.now()``, ...). Any other
    method call is refused, and so is a call of a computed or parenthesized member
    (``x["name"]()``, ``(x.name)()``), optional chaining (``x?.y``), ``this`` and
    ``globalThis``, names starting with ``__`` (the runtime's), escapes in names, async
    functions and generator functions (``_TBEL_RESERVED``); regular expression literals and
    HTML-like comments (``_split_code_and_literals``). A quoted ``"__proto__"`` key of a
    map literal becomes a computed key (a key, not the prototype: ``_proto_key``). A line break
    inside a string literal is part of its text, as in MVEL (``_literal_to_js``). Comments are
    made spaces first; line numbers are kept
    (and columns, but on the line of a ``def``'s ``{``, where its own variables are declared).
    Linear in the script's length.
    """
    source = _blank_comments(source)
    _refuse_reserved(source)
    source = _def_locals(_foreach_to_js(source))
    defined = set(_TBEL_DEF.findall(source)) | set(_JS_FUNCTION.findall(source))
    parts = []
    offset = 0
    for is_code, text in _split_code_and_literals(source):
        start, offset = offset, offset + len(text)
        if is_code:
            for pattern, what in _TBEL_REFUSED:
                found = pattern.search(text)
                if found:
                    raise _refused(source, start + found.start(), what, found.group(0))
            for found in _TBEL_JS_GLOBAL_CALL.finditer(text):
                if found.group(1) == "Date" and _name_before(text, found.start()) == "new":
                    continue  # new Date(...): TbDate
                if found.group(1) not in defined and _char_before(text, found.start()) != ".":
                    raise _refused(source, start + found.start(),
                                   f"the function {found.group(1)}()", found.group(0))
            text = _TBEL_DEF.sub(r"function \1(", text)
            text = _TBEL_DEF_VAR.sub("var ", text)
            text = _members_to_js(source, start, text)
        elif text[:1] in "'\"":
            text = _literal_to_js(source, start, _proto_key(source, start, text))
        parts.append(text)
    return "".join(parts)


def tbel_scope(source: str) -> list[str]:
    """The declarations of a TBEL script's function, made afresh on each call: the Java classes
    (``Integer = __tbelJava.Integer``) and TbUtils helpers (``toInt = __tbelH.toInt``) the
    script names, then the names it assigns (``total = 5``, not a member ``x.total = 5``), in
    order of first use (``let``, ``const`` and ``class`` are refused: TBEL has none); a
    helper's name the script defines (``def toInt(x)``) is its own function. So, as in MVEL,
    where each run has fresh variables, nothing a script sets without ``var`` on one message,
    even a helper's name (``toInt = null``), is still there on the next. Only the names the
    script uses: a call binds no more than it needs."""
    code = "".join(text if is_code else " " * len(text)
                   for is_code, text in _split_code_and_literals(_blank_comments(source)))
    used = set(_TBEL_NAME.findall(code)) - set(_TBEL_DEF.findall(code)) - set(
        _JS_FUNCTION.findall(code))
    out = [f"{name} = __tbelJava.{name}" for name in TBEL_JAVA_STATICS if name in used]
    out += [f"{name} = __tbelH.{name}" for name in TBEL_HELPERS if name in used]
    out += dict.fromkeys(name for member, name in _TBEL_ASSIGNED.findall(code)
                         if not member)
    return out


def _refused(source: str, at: int, what: str, found: str) -> ScriptSyntaxError:
    line = source[:at].count("\n") + 1
    return ScriptSyntaxError(f"TBEL: {what} is not in the supported subset (line {line}: "
                             f"{found.strip()!r}); see docs/rules-scripts.md")


def _char_before(text: str, at: int) -> str:
    """The last character of ``text[:at]`` that is not white space ("" when none). Read
    backwards from ``at`` (never a copy of the text before it): the translation stays linear in
    the script's length."""
    while at > 0 and text[at - 1].isspace():
        at -= 1
    return text[at - 1] if at > 0 else ""


def _name_before(text: str, at: int) -> str:
    """The name just before ``at`` (white space between allowed), when it is a name of its own
    (not a member ``x.Math``): ``Math`` for ``Math .`` at ``at``; else ""."""
    while at > 0 and text[at - 1].isspace():
        at -= 1
    end = at
    while at > 0 and (text[at - 1].isalnum() or text[at - 1] in "_$"):
        at -= 1
    if at == end or (at > 0 and text[at - 1] == "."):
        return ""
    return text[at:end]


def _members_to_js(source: str, start: int, text: str) -> str:
    """A code part's ``.name(`` calls and ``.size``-like reads as the runtime's (line breaks
    kept); a call of any other method refused, but on ``Math`` and ``JSON``."""
    out: list[str] = []
    done = 0
    for found in _TBEL_MEMBER.finditer(text):
        name, call = found.group(1), found.group(2)
        breaks = "\n" * found.group(0).count("\n")
        if call:
            cls = _name_before(text, found.start())
            if cls in _TBEL_CLASSES:
                allowed = _TBEL_CLASSES[cls]
                if allowed is not None and name not in allowed:
                    raise _refused(source, start + found.start(),
                                   f"the method {cls}.{name}()", found.group(0))
                continue
            if name not in _TBEL_CALLS:
                raise _refused(source, start + found.start(), f"the method {name}()",
                               found.group(0))
            js = f"[__tbelS.{name}](" + breaks
        elif name in TBEL_GETTERS and not _TBEL_WRITE.match(text, found.end()):
            js = f"[__tbelG.{name}]" + breaks
        else:
            continue
        out.append(text[done:found.start()])
        out.append(js)
        done = found.end()
    out.append(text[done:])
    return "".join(out)


# --- the engine ------------------------------------------------------------------------------------

# The body starts on the wrapper's second line: _locate turns the engine's positions into the body's.
_PROLOGUE = (
    "var __edgeAt = 0, __edgeRunMany, __edgeRun = (function () { var __parse = JSON.parse, "
    "__stringify = JSON.stringify, __InternalError = InternalError; "
    "function __script(msg, metadata, msgType) {\n"
)
# TBEL: the runtime before the script
# (``__edgeRegex``: the runtime's check of a regular expression, which compile calls on the
# script's literal ones; ``__edgeLock``: called after the epilogue, it freezes what a script
# could change for the next call, the script's function among it: ``arguments.callee``)
# The TBEL script's function is compiled where each name of the wrapper's (the runtime's, the
# runner's, the engine's globals) is a ``const``: the runtime's objects the translation calls
# (``__tbelS``, ...) as themselves, the rest undefined. A script that named one (the compile
# checks refuse ``__`` names; this is for a gap in them) can neither replace it nor keep
# anything in it from one call to the next; ``__script`` itself is its function expression's own
# name, which an assignment does not change.
_TBEL_USED = ("__tbelS", "__tbelG", "__tbelIter", "__tbelH", "__tbelJava")
_TBEL_WRAPPER_NAMES = tuple(dict.fromkeys((*tbel_runtime_names(), "__parse", "__stringify",
                                           "__InternalError", "__oom", "__edgeAt", "__edgeRegex",
                                           "__edgeLock", "__edgeRunMany", "__edgeRun",
                                           "__edgeZoneLoad", "__edgeZoneOut", "__edgeZoneLacked")))
_TBEL_SHIELD = (
    "{ const __edgeT = Object.freeze([" + ", ".join(_TBEL_USED) + "]); { const "
    + ", ".join([f"{name} = __edgeT[{i}]" for i, name in enumerate(_TBEL_USED)]
                + [f"{name} = void 0" for name in _TBEL_WRAPPER_NAMES if name not in _TBEL_USED])
    + "; ")
_PROLOGUE_TBEL = _PROLOGUE.replace(
    "var __edgeAt = 0,",
    "var __edgeRegex, __edgeLock, __edgeZoneLoad, __edgeZoneLacked, __edgeAt = 0,").replace(
    "function __script",
    tbel_runtime() + " __edgeRegex = __tbelRegex; __edgeZoneLoad = __tbelZoneLoad; "
    "__edgeLock = function () { __tbelLock([__script]); }; " + _TBEL_SHIELD
    + "var __script = function __script")


def _tbel_prologue(scope: Sequence[str]) -> str:
    """The TBEL prologue with ``scope`` (``tbel_scope``) declared first in the script's
    function, on its first line (a ``var`` of a parameter keeps its value)."""
    if not scope:
        return _PROLOGUE_TBEL
    return _PROLOGUE_TBEL[:-1] + " var " + ", ".join(scope) + ";\n"


_POSITION = re.compile(r"<input>:(\d+)(?::(\d+))?")
_log = logger.bind(component="rules")


def _locate(text: str, body_lines: int) -> str:
    """The engine's message with its positions as ``script:line:column`` of the script body."""
    def body(found: re.Match[str]) -> str:
        line = int(found.group(1)) - 1
        if not 1 <= line <= body_lines:
            return "wrapper"
        return f"script:{line}" + (f":{found.group(2)}" if found.group(2) else "")
    return _POSITION.sub(body, text)


# After the body: the single runner (``call``), returned, and the batch runner
# (``call_many``), set as a global: the script on each [msg, metadata, msgType] of a JSON array,
# each item's value or thrown error as the single runner gives it (both anonymous functions, so
# a thrown error's stack reads the same). The batch runner stops early, returning what it has:
# when the wall time passes the budget (the rest go in another call, under a fresh time limit),
# after an error that may be a memory blow-up (the context is recreated first), or at a value
# ``JSON.stringify`` refuses (that item is then called alone, for the single runner's error).
# ``__edgeAt`` is the index of the item running: after the time limit interrupts a batch, the
# item that ran over it.
# A batch in which no item threw comes back as the array of the values' JSON (each serialized
# under the key "value", as in a per-item result); otherwise as each item's {ok, value} or
# {ok: false, error}.
_EPILOGUE = """
}
function __oom(e) {  // the engine's own memory blow-up, not an error the script made or threw:
  // its InternalError "out of memory", or null when it could not even make that error (a
  // script's own "throw null" reads the same, and is taken as one)
  return e === null || (e instanceof __InternalError && e.message === "out of memory");
}
__edgeRunMany = [function (argsJson, budgetMs) {
  __edgeAt = -1;
  var items = __parse(argsJson), parts = [], values = [], started = Date.now(), stop = "";
  for (var i = 0; i < items.length; i++) {
    if (i > 0 && Date.now() - started > budgetMs) { stop = "budget"; break; }
    var a = items[i], value, text = null, oom = false, out;
    __edgeAt = i;  // read after an interrupt: which item ran over the limit
    try {
      value = __script(a[0], a[1], a[2]);
    } catch (e) {
      oom = __oom(e);
      text = "unprintable error";
      try { text = String(e) + ((e && e.stack) ? "\\n" + e.stack : ""); } catch (e2) {}
    }
    if (text !== null) {
      if (values !== null) {  // from here on each item says whether it threw
        for (var k = 0; k < values.length; k++) { parts.push('{"ok":true,"value":' + values[k] + '}'); }
        values = null;
      }
      parts.push(__stringify(oom ? {ok: false, error: text, oom: true} : {ok: false, error: text}));
      if (oom) { stop = "memory"; break; }
      continue;
    }
    // under the key "value", as the per-item result has it (a toJSON method sees that key)
    try { out = __stringify({value: value}); } catch (e3) { stop = "alone"; break; }
    out = out === "{}" ? "null" : out.slice(9, -1);
    if (values !== null) { values.push(out); } else { parts.push('{"ok":true,"value":' + out + '}'); }
  }
  // join, not +: a concatenation may give a rope string, which the binding cannot convert
  return values !== null ? ['{"stop":"', stop, '","values":[', values.join(","), ']}'].join("")
    : ['{"stop":"', stop, '","results":[', parts.join(","), ']}'].join("");
}][0];
return function (argsJson) {
  var a = __parse(argsJson);
  var value;
  try {
    value = __script(a[0], a[1], a[2]);
  } catch (e) {
    var oom = __oom(e), text = "unprintable error";
    try { text = String(e) + ((e && e.stack) ? "\\n" + e.stack : ""); } catch (e2) {}
    return __stringify(oom ? {ok: false, error: text, oom: true} : {ok: false, error: text});
  }
  try {
    return __stringify({ok: true, value: value});
  } catch (e) {  // a value JSON.stringify refuses (a BigInt, a toJSON that throws)
    var oom = __oom(e), text = "unprintable error";
    try { text = String(e) + ((e && e.stack) ? "\\n" + e.stack : ""); } catch (e2) {}
    return __stringify(oom ? {ok: false, error: text, oom: true} : {ok: false, error: text});
  }
};
})();
"""

# TBEL: a run that lacked some region time zone's id or year (``__tbelZoneRun``: tbel_runtime.js,
# zoneUse), set to null at each run's start, ends with ``zone``, the keys it lacked, and ``kept``,
# the loaded ones it used, whatever the script made of the stand-ins: the engine loads them all
# and runs the message again (``ScriptEngine.call``); one that used more zones than a run may ends
# with that error, whatever the script made of it; in a batch, such an item is called alone. A
# run the engine stopped (its interrupt, a memory blow-up: rethrown past the runner) leaves that
# result to ``__edgeZoneLacked``, which the engine calls then.
_EPILOGUE_TBEL = _EPILOGUE.replace(
    "\n}\nfunction __oom",
    "\n};}}\nfunction __edgeZoneOut() {\n"
    "  var z = __tbelZoneRun, kept = [], k;\n"
    "  if (z.want.length > 0) {\n"
    "    for (k in z.used) { if (z.want.indexOf(k) < 0) { kept.push(k); } }\n"
    "    return __stringify({ok: false, error: \"\", zone: z.want, kept: kept});\n  }\n"
    "  return z.over ? __stringify({ok: false, error: z.over}) : null;\n}\n"
    "__edgeZoneLacked = function () {\n"
    "  return __tbelZoneRun !== null && __tbelZoneRun.want.length > 0 ? __edgeZoneOut() : null;\n"
    "};\nfunction __oom", 1,
).replace(
    "    __edgeAt = i;",
    "    __tbelZoneRun = null;\n    __edgeAt = i;", 1,
).replace(
    "    if (text !== null) {\n",
    "    if (__tbelZoneRun !== null && __edgeZoneOut() !== null) { stop = \"alone\"; break; }\n"
    "    if (text !== null) {\n", 1,
).replace(
    "  var a = __parse(argsJson);\n  var value;\n",
    "  __tbelZoneRun = null;\n  var a = __parse(argsJson);\n  var value, z;\n", 1,
).replace(
    "    return __stringify(oom ? {ok: false, error: text, oom: true} : {ok: false, error: text});\n"
    "  }\n  try {\n",
    "    if (__tbelZoneRun !== null && oom && __tbelZoneRun.want.length > 0) { throw e; }\n"
    "    if (__tbelZoneRun !== null && !oom && (z = __edgeZoneOut()) !== null) { return z; }\n"
    "    return __stringify(oom ? {ok: false, error: text, oom: true} : {ok: false, error: text});\n"
    "  }\n  if (__tbelZoneRun !== null && (z = __edgeZoneOut()) !== null) { return z; }\n"
    "  try {\n", 1)
assert _EPILOGUE_TBEL.count("__tbelZoneRun") == 10, _EPILOGUE_TBEL.count("__tbelZoneRun")


def _is_oom(text: str) -> bool:
    """An exception the engine raised past the wrapper's catch is a memory blow-up: QuickJS's
    "InternalError: out of memory", or "null" when it could not even make the error object.
    (Inside the wrapper, ``__oom`` decides on the error itself: QuickJS's own InternalError
    "out of memory", or null; a text a script throws is its error, whatever it says.)"""
    return text.startswith("InternalError: out of memory") or text.strip() == "null"


def _is_interrupt(text: str) -> bool:
    """The engine's time limit interrupted the call (an interrupt cannot be caught in JS)."""
    return text.startswith("InternalError: interrupted")


def _zone_keys(wanted: Any, least: int = 1) -> list[str]:
    """The keys a run lacked (or used loaded), as the runtime lists them: at most 16 ids and 16
    years."""
    if (type(wanted) is not list or not least <= len(wanted) <= 32
            or not all(type(key) is str and 0 < len(key) <= 100 for key in wanted)):
        raise ScriptRuntimeError("the runtime asked for time-zone rules it cannot have")
    return wanted


def _zone_rules(key: str) -> str:
    """What the runtime is given for a key: whether an id is known, or a year's rules."""
    if " " not in key:
        return zone_known(key)
    zone_id, _, year = key.rpartition(" ")
    return year_rules(zone_id, int(year) if _ZONE_YEAR.fullmatch(year) else None)


class ScriptEngine:
    """One compiled rule script. ``call`` runs it on one message and returns its JSON value;
    ``filter``, ``transform`` and ``switch`` check the shape a node of that kind expects."""

    def __init__(self, script: str, lang: ScriptLang = "JS", limits: ScriptLimits | None = None,
                 *, node: str = "", chain: str = "") -> None:
        """``node`` and ``chain``: how the blocklist's log lines name the script's node."""
        if lang not in ("JS", "TBEL"):
            raise ValueError(f"unknown scriptLang {lang!r} (JS or TBEL)")
        self.lang: ScriptLang = lang
        self.limits = limits or ScriptLimits()
        self.node = node
        self.chain = chain
        # the blocklist (ThingsBoard's BlockedScriptInfo): errors counted, when the count
        # expires (block_s after the last), when the script was blocked (None: it is not)
        self._errors = 0
        self._expires = 0.0
        self._blocked_at: float | None = None
        self._last_error = ""
        # the block in force as one value, (since, until, errors, last error), replaced whole:
        # ``block`` reads it from any thread without the lock
        self._block: tuple[float, float, int, str] | None = None
        body = tbel_to_js(script) if lang == "TBEL" else script
        self._body_lines = body.count("\n") + 1
        prologue = _tbel_prologue(tbel_scope(script)) if lang == "TBEL" else _PROLOGUE
        # TBEL: the intrinsics frozen once the wrapper is built (tbel_runtime.js, __tbelLock)
        # (TBEL: the script's function closes the two blocks of _TBEL_SHIELD)
        self._source = prologue + body + (
            _EPILOGUE_TBEL + "__edgeLock();\n" if lang == "TBEL" else _EPILOGUE)
        self._lock = threading.Lock()
        self._context: Any = None
        self._run: Any = None
        self._run_many: Any = None
        self._owner = 0
        # TBEL: the region time zones' ids and years loaded, each key's JSON as the runtime has
        # it: loaded again into a context built anew (after a timeout, on another thread)
        self._zone_loads: dict[str, str] = {}
        with self._lock:
            self._build()
            if lang == "TBEL":
                self._check_regexes(script)
        # TBEL using Date: it may need region time zones (``_call_with_zones``)
        self._zones = lang == "TBEL" and "Date" in script
        if self._zones:
            known_zones()  # read once per process here, not in a call under its time limit

    def _check_regexes(self, script: str) -> None:
        """A literal regular expression of ``split`` / ``matches`` that Java refuses, or that
        the runtime cannot translate, refuses the script at compile, naming its line (one given
        at run time fails that call with the same error)."""
        source = _blank_comments(script)
        mask = _code_mask(source)
        for found in _TBEL_REGEX_ARG.finditer(source):
            if not mask[found.start()]:
                continue
            literal = _literal_to_js(source, found.start(1), found.group(1))
            try:
                self._context.eval(f"__edgeRegex({literal})")
            except _quickjs.JSException as exc:
                line = source[:found.start()].count("\n") + 1
                text = str(exc).splitlines()[0]
                see = "" if "docs/rules-scripts.md" in text else "; see docs/rules-scripts.md"
                raise ScriptSyntaxError(
                    f"TBEL: {text} (line {line}: {found.group(0).strip()!r}){see}") from None

    def _build(self) -> None:
        context = _quickjs.Context()
        context.set_memory_limit(self.limits.memory_limit_bytes)
        context.set_max_stack_size(self.limits.max_stack_bytes)
        # compile without the per-call limit (a large script may take longer than one call)
        try:
            context.eval(self._source)
        except _quickjs.JSException as exc:
            text = str(exc).rstrip()
            if _is_oom(text):
                raise ScriptMemoryExceeded(f"compiling the script: {text}") from None
            raise ScriptSyntaxError(_locate(text, self._body_lines)) from None
        except ValueError as exc:  # the binding takes no NUL character (a C string)
            # the body's line: the prologue is the source's first line (as ``_locate`` counts)
            line = self._source[:self._source.find("\0")].count("\n")
            raise ScriptSyntaxError(
                f"the script holds a NUL character (U+0000; line {line}), which the engine "
                "cannot compile: write it as an escape (\\u0000)") from exc
        if self._zone_loads:
            try:
                context.get("__edgeZoneLoad")(json.dumps(list(self._zone_loads.items())), False)
            except _quickjs.JSException:
                self._zone_loads.clear()  # (none loaded: each is asked for again when needed)
        context.set_time_limit(self.limits.time_limit_s)
        self._context, self._run = context, context.get("__edgeRun")
        self._run_many = context.get("__edgeRunMany")
        self._owner = threading.get_ident()

    def _reset(self) -> None:
        self._context = self._run = self._run_many = None

    # --- the blocklist (ThingsBoard's AbstractScriptInvokeService: isDisabled, handleScriptException)

    def blocked(self) -> ScriptBlocked | None:
        """The error of a call now when the script is blocked, else None. A count whose
        ``block_s`` has passed since its last error is dropped (isDisabled): the script runs
        again, and a new count starts from 0. O(1); no clock read while nothing is counted."""
        if not self._errors:
            return None
        now = self.limits.clock()
        if now >= self._expires:
            self._errors = 0
            self._block = None
            if self._blocked_at is not None:
                blocked_for, self._blocked_at = now - self._blocked_at, None
                _log.bind(node=self.node, chain=self.chain).info(
                    "rule node {} of chain {!r}: its script is no longer blocked (blocked "
                    "{:.0f} s): it runs again", self.node, self.chain, blocked_for)
            return None
        if self._errors < self.limits.max_errors:
            return None
        return ScriptBlocked(
            f"Script invocation is blocked due to maximum error count "
            f"{self.limits.max_errors}!")

    def block(self) -> ScriptBlock | None:
        """The block in force now, else None: for the status and the metrics, read when they
        are asked (any thread, no lock, nothing changed: the script's next call ends an
        expired block, as ``blocked`` does)."""
        block = self._block
        if block is None:
            return None
        since, until, errors, last_error = block
        now = self.limits.clock()
        if now >= until:
            return None
        return ScriptBlock(now - since, until - now, errors, last_error, since, until)

    def _count_error(self, error: ScriptError) -> None:
        """A timeout or a memory blow-up: counted, and the count lives ``block_s`` from now
        (BlockedScriptInfo.incrementAndGet). A script that throws is not counted (ThingsBoard
        counts every error but a RUNTIME one)."""
        limits = self.limits
        if limits.block_s <= 0:
            return
        now = limits.clock()
        self._errors += 1
        self._expires = now + limits.block_s
        self._last_error = f"{type(error).__name__}: {error}"
        if self._errors >= limits.max_errors:
            self._block = (now if self._blocked_at is None else self._blocked_at,
                           self._expires, self._errors, self._last_error)
        if self._errors >= limits.max_errors and self._blocked_at is None:
            self._blocked_at = now
            _log.bind(node=self.node, chain=self.chain, errors=self._errors,
                      block_s=limits.block_s).warning(
                "rule node {} of chain {!r}: its script is blocked for {:g} s after {} "
                "timeouts or memory blow-ups; until then its messages go by Failure at once",
                self.node, self.chain, limits.block_s, self._errors)

    def _timeout(self) -> ScriptTimeout:
        error = ScriptTimeout(f"the script ran over its {self.limits.time_limit_s:g} s limit")
        self._count_error(error)
        return error

    def _memory_exceeded(self) -> ScriptMemoryExceeded:
        error = ScriptMemoryExceeded(
            f"the script exceeded its {self.limits.memory_limit_bytes} byte memory cap")
        self._count_error(error)
        return error

    def call(self, msg: Any, metadata: dict[str, Any], msg_type: str) -> Any:
        """The script's return value (JSON: None for undefined) for one message."""
        try:
            args = json.dumps([msg, metadata, msg_type], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ScriptRuntimeError(f"the message is not JSON-able: {exc}") from None
        with self._lock:
            blocked = self.blocked()
            if blocked is not None:
                raise blocked
            if self._run is None or self._owner != threading.get_ident():
                self._build()
            # (TBEL using Date: the message's time, on the engine's clock, from its first run)
            started = time.process_time() if self._zones else 0.0
            try:
                out = self._run(args)
            except _quickjs.JSException as exc:
                lacked = self._lacked(exc) if self._zones else None
                if lacked is None:
                    raise self._run_error(exc) from None
                self._reset()
                out = lacked  # (no cost on the way of a run that ends well)
            # no Context.gc() per call: QuickJS collects on its own allocation threshold, and
            # the binding's gc() runs a full Python gc.collect() (milliseconds, under the GIL)
        if not isinstance(out, str):
            if type(out) is dict:  # a run stopped on a stand-in zone: what it lacked
                return self._call_with_zones(out, args, started, stopped=True)
            raise ScriptRuntimeError(f"the script's value is not JSON-able: {out!r}")
        result = json.loads(out)
        if not result["ok"]:
            if "zone" in result:
                return self._call_with_zones(result, args, started)
            raise self._failed(result)
        return result.get("value")

    def _lacked(self, exc: _quickjs.JSException) -> dict[str, Any] | None:
        """After the engine's interrupt or a memory blow-up (under the lock, before the context
        is dropped): what the run lacked and used, when it lacked some zone (a run on stand-ins,
        which may take a path the real one never takes), else None (the error stands)."""
        text = str(exc).rstrip()
        if not (_is_interrupt(text) or _is_oom(text)):
            return None
        try:
            out = self._context.get("__edgeZoneLacked")()
        except _quickjs.JSException:
            return None
        return json.loads(out) if isinstance(out, str) else None

    def _run_error(self, exc: _quickjs.JSException) -> ScriptError:
        """The error of a run the engine ended with an exception past the wrapper's catch."""
        text = str(exc).rstrip()
        self._reset()  # the next call runs on a fresh context
        # a timeout is the engine's interrupt alone, never a call that took long on the wall
        # clock: its thread may have waited (for the GIL the binding releases during the call,
        # for a CPU) while the script threw past its try (a value JSON.stringify refuses), a
        # runtime error however long it waited
        if _is_interrupt(text):
            return self._timeout()
        if _is_oom(text):
            return self._memory_exceeded()
        return ScriptRuntimeError(_locate(text, self._body_lines))

    def _failed(self, result: dict[str, Any]) -> ScriptError:
        """The error of a run whose script threw (or blew the memory cap inside the wrapper)."""
        if result.get("oom"):
            with self._lock:
                self._reset()
            return self._memory_exceeded()
        return ScriptRuntimeError(_locate(result["error"], self._body_lines))

    def _call_with_zones(self, lacked: dict[str, Any], args: str, started: float,
                         stopped: bool = False) -> Any:
        """The message run again once the region time zones' ids and years its run lacked
        (``lacked["zone"]``: ``"Europe/Berlin"``, ``"Europe/Berlin 2024"``) are loaded into the
        context (tbel_zones.zone_known and year_rules, computed here, between runs: the binding
        lets no script call into Python under a time limit). A run that lacks some goes on with
        stand-ins and lists every one it lacked, so a message usually runs twice at most, and
        never more than ``MAX_ZONE_ROUNDS + 1`` times (then the edge's own error, not counted).
        The runs share the message's time limit: each run again has only what the runs before
        it left (``set_time_limit``, on the engine's clock, the process's CPU time, counted from
        the first run's start; the first loading is left out, a later one counted), so only the
        engine's interrupt is a timeout and a message's runs and loads together stay within the
        limit and one loading (a script that asks for new years in each run spends no more).
        ``stopped``: the run was ended by the engine's interrupt or a memory blow-up while it
        lacked some (on stand-ins, it may have taken a path the real run never takes): not
        counted, and once per message its time is given back (the limit counted anew from the
        next run), so a message costs at most about twice its limit and one loading."""
        limit = self.limits.time_limit_s
        started = started or time.process_time()
        first = True  # the message's first load: the cache may be emptied then, only then
        given_back = False
        for round_ in range(MAX_ZONE_ROUNDS):
            if stopped and not given_back:
                started, given_back = time.process_time(), True
            # (a stand-in for an id lists its year too: none read when the id is unknown)
            keys = [key for key in _zone_keys(lacked.get("zone"))
                    if " " not in key or zone_known(key.rpartition(" ")[0]) == "null"]
            if first:  # (left out of the limit: an engine's once-per-year cost)
                loading = time.process_time()
                loads = [(key, _zone_rules(key)) for key in keys]
                started += time.process_time() - loading
            else:  # (counted: none past the limit, whose interrupt then ends the run)
                loads = []
                for key in keys:
                    if time.process_time() - started >= limit:
                        break
                    loads.append((key, _zone_rules(key)))
            with self._lock:
                reset = first and len(self._zone_loads) + len(loads) > MAX_ZONE_KEYS
                if reset:
                    # (the loaded keys this message's run used are kept: loaded again with the new)
                    kept = self._zone_loads
                    self._zone_loads = {key: kept[key] for key in
                                        _zone_keys(lacked.get("kept", []), 0) if key in kept}
                    loads = [*self._zone_loads.items(), *loads]
                self._zone_loads.update(loads)
                first = False
                if self._run is None or self._owner != threading.get_ident():
                    self._build()  # (with all of them)
                else:
                    try:
                        self._context.get("__edgeZoneLoad")(json.dumps(loads), reset)
                    except _quickjs.JSException as exc:
                        self._reset()
                        raise ScriptRuntimeError(f"loading time-zone rules: {exc}") from None
                context = self._context
                # (at least a microsecond: none left, the engine's interrupt ends the run)
                context.set_time_limit(max(limit - (time.process_time() - started), 1e-6))
                try:
                    out = self._run(args)
                except _quickjs.JSException as exc:
                    stop = self._lacked(exc) if round_ + 1 < MAX_ZONE_ROUNDS else None
                    if stop is None:
                        raise self._run_error(exc) from None
                    self._reset()
                    lacked, stopped = stop, True
                    continue
                finally:
                    context.set_time_limit(limit)
            if not isinstance(out, str):
                raise ScriptRuntimeError(f"the script's value is not JSON-able: {out!r}")
            result = json.loads(out)
            if result["ok"]:
                return result.get("value")
            if "zone" not in result:
                raise self._failed(result)
            lacked = result
        raise ScriptRuntimeError(
            "sandbox: the region time zones the script uses did not settle in "
            f"{MAX_ZONE_ROUNDS + 1} runs (see docs/rules-scripts.md)")

    def call_many(self, items: Sequence[tuple[Any, dict[str, Any], str]]) -> list[Any]:
        """``call`` on each ``(msg, metadata, msg_type)``, in order, in as few script calls as
        the limits allow: each item's value, or the ``ScriptError`` ``call`` would have raised
        for it (returned, not raised). Same results as calling ``call`` item by item: a batch
        call the time limit interrupts is taken up at the item that ran over it: the first of
        the call has had its whole limit (less the batch's JSON parse) and times out, a later
        one runs again first of the next call (the items before it too, in a call of their
        own), so each item gets its own limit and only the guilty ones fail; a batch call that
        blows the memory cap as a whole is redone item by item; an item whose value
        ``JSON.stringify`` refuses, or whose error may depend on the stack depth, is called
        alone; after an item's memory blow-up the context is recreated, as ``call`` does.
        Once the script is blocked (``blocked``: checked before each script call, not per
        item) the items left get its ``ScriptBlocked`` at once."""
        out: list[Any] = [None] * len(items)
        start = 0
        while start < len(items):
            blocked = self.blocked()
            if blocked is not None:
                out[start:] = [blocked] * (len(items) - start)
                break
            start = self._call_batch(items, start, out)
        return out

    def _call_one(self, item: tuple[Any, dict[str, Any], str]) -> Any:
        try:
            return self.call(*item)
        except ScriptError as exc:
            return exc

    def _call_batch(self, items: Sequence[tuple[Any, dict[str, Any], str]], start: int,
                    out: list[Any], size: int = MAX_BATCH) -> int:
        """Run up to ``size`` items from ``start`` in one script call, store their results in
        ``out``; return the index of the first item left for the next call."""
        chunk = items[start:start + size]
        if len(chunk) == 1:
            out[start] = self._call_one(chunk[0])
            return start + 1
        try:
            args = json.dumps(chunk, allow_nan=False)
        except (TypeError, ValueError):
            args = None  # some item is not JSON-able: ``call`` says which
        text: str | None = None
        at: Any = None  # the item the time limit interrupted
        lacked: dict[str, Any] | None = None  # what it lacked, when it was the first
        if args is not None:
            with self._lock:
                if self._run is None or self._owner != threading.get_ident():
                    self._build()
                try:
                    text = self._run_many(args, self.limits.time_limit_s * 1000 * BATCH_BUDGET)
                except _quickjs.JSException as exc:
                    at = self._context.get("__edgeAt") if _is_interrupt(str(exc)) else None
                    if at == 0 and self._zones:
                        lacked = self._lacked(exc)
                    self._reset()
        if at == 0 and lacked is not None:  # on stand-ins: as ``call`` after its first run
            try:
                out[start] = self._call_with_zones(lacked, json.dumps(chunk[0]), 0.0, stopped=True)
            except ScriptError as exc:
                out[start] = exc
            return start + 1
        if at == 0:  # the first item had the whole limit: it timed out
            out[start] = self._timeout()
            return start + 1
        if type(at) is int and 0 < at < len(chunk):
            # the items before ``at`` ran within the budget: again in a call of their own;
            # ``at`` is then the first of the next call, with its whole limit
            return self._call_batch(items, start, out, at)
        if not isinstance(text, str):  # a memory blow-up of the batch: item by item
            for k, item in enumerate(chunk):
                out[start + k] = self._call_one(item)
            return start + len(chunk)
        batch = json.loads(text)
        values = batch.get("values")
        if values is not None:  # no item threw: their values, in order
            out[start:start + len(values)] = values
            done = start + len(values)
        else:
            done = self._results(batch["results"], chunk, start, out)
            if done < 0:  # stopped early at ~done
                return ~done
        if batch["stop"] == "alone":
            out[done] = self._call_one(chunk[done - start])
            return done + 1
        return done

    def _results(self, results: list[dict[str, Any]],
                 chunk: Sequence[tuple[Any, dict[str, Any], str]], start: int,
                 out: list[Any]) -> int:
        """A batch's per-item results (some item threw) into ``out``: the index after the
        last, or ``~index`` of the next item to run when one of them stopped the batch."""
        for k, result in enumerate(results):
            if result["ok"]:
                out[start + k] = result.get("value")
                continue
            error = result["error"]
            if result.get("oom"):
                with self._lock:
                    self._reset()
                out[start + k] = self._memory_exceeded()
                return ~(start + k + 1)
            if "stack overflow" in error:
                # how deep the script got depends on the caller's frames: call it alone
                out[start + k] = self._call_one(chunk[k])
                return ~(start + k + 1)
            out[start + k] = ScriptRuntimeError(_locate(error, self._body_lines))
        return start + len(results)

    def filter(self, msg: Any, metadata: dict[str, Any], msg_type: str) -> bool:
        """A filter script's verdict: it must return a boolean."""
        return _as_filter(self.call(msg, metadata, msg_type))

    def switch(self, msg: Any, metadata: dict[str, Any], msg_type: str) -> list[str]:
        """A switch script's relation names: it must return a string or an array of strings."""
        return _as_switch(self.call(msg, metadata, msg_type))

    def transform(self, msg: Any, metadata: dict[str, Any], msg_type: str) -> list[TransformResult]:
        """A transform script's messages, as ThingsBoard reads them (``_as_transform``):
        ``{msg, metadata, msgType}`` or a non-empty array of them, each part optional (the
        incoming one kept), the metadata made text."""
        return _as_transform(self.call(msg, metadata, msg_type), msg, metadata, msg_type,
                             self.lang)

    def filter_many(self, items: Sequence[tuple[Any, dict[str, Any], str]]
                    ) -> list[bool | ScriptError]:
        """``filter`` on each item (``call_many``): its verdict or its error."""
        return [_checked(_as_filter, v) for v in self.call_many(items)]

    def switch_many(self, items: Sequence[tuple[Any, dict[str, Any], str]]
                    ) -> list[list[str] | ScriptError]:
        """``switch`` on each item (``call_many``): its relation names or its error."""
        return [_checked(_as_switch, v) for v in self.call_many(items)]

    def transform_many(self, items: Sequence[tuple[Any, dict[str, Any], str]]
                       ) -> list[list[TransformResult] | ScriptError]:
        """``transform`` on each item (``call_many``): its messages or its error."""
        out: list[list[TransformResult] | ScriptError] = []
        lang = self.lang
        for (msg, metadata, msg_type), value in zip(items, self.call_many(items), strict=True):
            if isinstance(value, ScriptError):
                out.append(value)
                continue
            try:
                out.append(_as_transform(value, msg, metadata, msg_type, lang))
            except ScriptError as exc:
                out.append(exc)
        return out


T = TypeVar("T")


def _checked(check: Callable[[Any], T], value: Any) -> T | ScriptError:
    """``check(value)``, or the error it raised; an error given stays as it is."""
    if isinstance(value, ScriptError):
        return value
    try:
        return check(value)
    except ScriptError as exc:
        return exc


def _as_filter(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScriptRuntimeError(f"a filter script must return a boolean, not {value!r}")
    return value


def _as_switch(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ScriptRuntimeError(
        f"a switch script must return a relation name or an array of them, not {value!r}")


def _as_transform(value: Any, msg: Any, metadata: dict[str, str], msg_type: str,
                  lang: ScriptLang) -> list[TransformResult]:
    """A transform script's value as ThingsBoard's transform node reads it: an object is one
    message, an array one message per item (RuleNodeJsScriptEngine / RuleNodeTbelScriptEngine
    .executeUpdateTransform), each read by ``_unbind``. An empty array is an error: ThingsBoard
    (TbAbstractTransformNode.transformSuccess) sends the incoming message by Failure ("Message
    or messages list are empty!"). An array item that is not an object is, in JS, a copy of the
    incoming message (JsonNode.has finds none of the keys); in TBEL an error, as is any other
    value in either."""
    if type(value) is dict:
        return [_unbind(value, msg, metadata, msg_type, lang)]
    if type(value) is list:
        if not value:
            raise ScriptRuntimeError(
                "a transform script returned an empty array: no message (ThingsBoard sends the "
                "incoming message by Failure)")
        out = []
        for item in value:
            if type(item) is not dict:
                if lang == "TBEL":
                    raise ScriptRuntimeError(
                        f"a transform script must return {{msg, metadata, msgType}} or an array "
                        f"of them, not {item!r} in an array")
                item = _NOTHING
            out.append(_unbind(item, msg, metadata, msg_type, lang))
        return out
    raise ScriptRuntimeError(
        f"a transform script must return {{msg, metadata, msgType}} or an array of them, "
        f"not {value!r}")


_NOTHING: dict[str, Any] = {}
"""A JS array item that is not an object: none of msg, metadata, msgType (never changed)."""


def _unbind(item: dict[str, Any], msg: Any, metadata: dict[str, str], msg_type: str,
            lang: ScriptLang) -> TransformResult:
    """One message out of a transform, as ThingsBoard's unbindMsg makes it
    (RuleNodeJsScriptEngine.unbindMsg for JS, RuleNodeTbelScriptEngine.unbindMsg for TBEL):

    - ``msg``: absent, the incoming data; in JS null is the data null, in TBEL null is absent
      (a TBEL map drops a key put to null: the tbel library's ExecutionHashMap.put);
    - ``metadata``: absent or null, the incoming metadata (``metadata`` itself, the dict the
      script was given, and so is metadata given back unchanged, the same keys in the same
      order with the same text); otherwise an object, made text (``_metadata_text``);
    - ``msgType``: absent or empty, the incoming type; a value that is not text as Jackson's
      asText gives it in JS (null "null", a number its Java text, an object or array "", so the
      incoming type), Java's toString in TBEL (null is absent there)."""
    data = item.get("msg", msg)
    if data is None and lang == "TBEL":
        data = msg
    meta = item.get("metadata")
    if meta is None or meta is metadata:
        meta = metadata
    elif type(meta) is dict:
        # the given text as it went (JS puts index-like keys first, which the order check sees)
        meta = (metadata if meta == metadata and list(meta) == list(metadata)
                else _metadata_text(meta, lang))
    else:
        raise ScriptRuntimeError(
            f"a transform's metadata must be an object, not {meta!r} (ThingsBoard cannot make "
            "it a Map<String, String>)")
    kind = item.get("msgType", msg_type)
    if type(kind) is not str:
        if lang == "TBEL":
            kind = "" if kind is None else _java_text(kind)
        else:
            kind = "" if type(kind) in (dict, list) else _java_text(kind)
    return TransformResult(data, meta, kind or msg_type)


def _metadata_text(meta: dict[str, Any], lang: ScriptLang) -> dict[str, str]:
    """A transform's metadata as ThingsBoard's Map<String, String>: text as it is, true/false
    as "true"/"false", numbers as Java writes them (``_java_text``), a null value leaves its key
    out (TbMsgMetaData.putValue skips nulls; TBEL's unbindMsg filters them). An object or array
    value: in JS an error (Jackson's conversion to String refuses one: the script fails), in
    TBEL Java's toString of the map or list (``{a=1, b=[2, 3]}``)."""
    for value in meta.values():
        if type(value) is not str:
            break
    else:
        return meta
    out: dict[str, str] = {}
    for key, value in meta.items():
        if type(value) is str:
            out[key] = value
        elif value is None:
            continue
        elif lang == "JS" and type(value) in (dict, list):
            raise ScriptRuntimeError(
                f"a transform's metadata.{key} is {'an object' if type(value) is dict else 'an array'}"
                ": metadata values are text, numbers or booleans (ThingsBoard cannot make it a "
                "String)")
        else:
            out[key] = _java_text(value)
    return out


def _java_text(value: Any) -> str:
    """A JSON value as Java's toString gives it: null "null", booleans "true"/"false", whole
    numbers in decimal, other numbers as Double.toString (``java_double``), text as it is, a
    map ``{k=v, ...}`` and a list ``[a, b]`` (AbstractMap / AbstractCollection.toString; a
    key whose value is null is left out, as a TBEL map holds none)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return java_double(value)
    if type(value) is dict:
        return "{" + ", ".join(f"{k}={_java_text(v)}" for k, v in value.items()
                               if v is not None) + "}"
    if type(value) is list:
        return "[" + ", ".join(_java_text(v) for v in value) + "]"
    return str(value)


