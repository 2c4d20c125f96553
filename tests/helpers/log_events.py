"""Every log event the code of edge_sync/ can emit, found by reading the source (ast), and the
list docs/logs.md gives of them; `compare` says how the two differ.

An event is a call of ``.debug/.info/.success/.warning/.error/.critical/.exception`` (or
``.log(level, ...)``) whose message is a string literal, an f-string (its literal parts, each
placeholder written ``{}``) or a local name assigned one of those in the same function. Its
level is the method's (``.exception``: ERROR; ``.log``: every string constant its level
expression can take). Its fields are the keyword names of every ``.bind(...)`` in the call's
receiver chain and in the definition of the logger it starts from (a module-level ``_log = ...``
or a ``self._log = ...`` of the class); ``component=`` names the component (a constant), else
the component is the process's (``edge`` or ``cloud``) or, bound to a variable, the server's
own name.

Run ``python -m tests.helpers.log_events`` to print the rows docs/logs.md should hold.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "edge_sync"
DOC = ROOT / "docs" / "logs.md"

LEVEL_METHODS = {"debug": "DEBUG", "info": "INFO", "success": "SUCCESS", "warning": "WARNING",
                 "error": "ERROR", "critical": "CRITICAL", "exception": "ERROR"}
LEVELS = ("DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
PROCESS = "(process)"
SERVER = "(server)"


@dataclass
class Event:
    component: str
    template: str
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    sites: list[str] = field(default_factory=list)


# -- reading the code ---------------------------------------------------------------------------


def _strings(node: ast.AST | None) -> list[str]:
    """Every string constant an expression can evaluate to (constants and conditionals)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _template(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{}")
        return "".join(parts)
    return None


@dataclass
class _Binding:
    fields: set[str]
    component: str | None  # a constant, SERVER for a variable, None when not bound


def _bindings(node: ast.AST) -> _Binding:
    """The .bind(...) keywords along a receiver chain such as logger.bind(a=1).opt(...)."""
    out = _Binding(set(), None)
    while True:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "bind":
                for kw in node.keywords:
                    if kw.arg is None:
                        continue
                    if kw.arg == "component":
                        if out.component is None:
                            value = kw.value
                            out.component = (value.value if isinstance(value, ast.Constant)
                                             and isinstance(value.value, str) else SERVER)
                    else:
                        out.fields.add(kw.arg)
            node = func
        elif isinstance(node, ast.Attribute):
            node = node.value
        else:
            return out


def _root(node: ast.AST) -> str | None:
    """The logger a chain starts from: 'logger', '_log', 'self._log', 'self._logger' ..."""
    while True:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("bind", "opt"):
                node = func.value
                continue
            node = func
            continue
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return f"self.{node.attr}"
            return None
        return None


class _Module(ast.NodeVisitor):
    def __init__(self, path: Path, tree: ast.Module,
                 registry: dict[str, dict[str, _Binding]] | None = None) -> None:
        self.path = path
        self._registry = registry if registry is not None else {}
        self.events: list[tuple[str, str, set[str], set[str], str]] = []
        self._module_loggers: dict[str, _Binding] = {}
        self._class_loggers: dict[str, _Binding] = {}
        self._functions: list[ast.AST] = []
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(
                    stmt.targets[0], ast.Name) and _root(stmt.value) == "logger":
                self._module_loggers[stmt.targets[0].id] = _bindings(stmt.value)

    def own_loggers(self, node: ast.ClassDef, inherited: dict[str, _Binding]) -> dict[str, _Binding]:
        """The loggers a class keeps on self (``self._log = ...``, ``def _logger(self)``)."""
        found = dict(inherited)
        outer, self._class_loggers = self._class_loggers, found
        try:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Assign) and len(sub.targets) == 1:
                    target = sub.targets[0]
                    if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                            and target.value.id == "self" and _root(sub.value) in (
                                "logger", *self._module_loggers)):
                        found[f"self.{target.attr}"] = self._binding_of(sub.value, sub.lineno)
                if isinstance(sub, ast.FunctionDef) and sub.name.endswith("logger"):
                    for ret in ast.walk(sub):  # def _logger(self): return _log.bind(...)
                        if isinstance(ret, ast.Return) and ret.value is not None:
                            found[f"self.{sub.name}"] = self._binding_of(ret.value, ret.lineno)
        finally:
            self._class_loggers = outer
        return found

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        inherited: dict[str, _Binding] = {}
        for base in node.bases:
            if isinstance(base, ast.Name):
                inherited.update(self._registry.get(base.id, {}))
        saved = self._class_loggers
        self._class_loggers = {**saved, **self.own_loggers(node, inherited)}
        self.generic_visit(node)
        self._class_loggers = saved

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def _resolve(self, root: str | None) -> _Binding:
        if root is None:
            return _Binding(set(), None)
        if root in self._class_loggers:
            return self._class_loggers[root]
        return self._module_loggers.get(root, _Binding(set(), None))

    def _binding_of(self, expr: ast.AST, lineno: int, depth: int = 0) -> _Binding:
        """What a logger expression has bound: its own .bind(...) calls, and those of the
        logger it starts from (module, class, or a local assigned one, followed back)."""
        own = _bindings(expr)
        root = _root(expr)
        if root is None or root == "logger":
            base = _Binding(set(), None)
        elif root in self._class_loggers or root in self._module_loggers:
            base = self._resolve(root)
        elif depth < 5 and (local := self._local(root, lineno)) is not None:
            base = self._binding_of(local, getattr(local, "lineno", lineno), depth + 1)
        elif len(self._module_loggers) == 1:  # a logger passed in: the module's own
            base = next(iter(self._module_loggers.values()))
        else:
            base = _Binding(set(), None)
        return _Binding(own.fields | base.fields, own.component or base.component)

    def _local(self, name: str, before: int) -> ast.AST | None:
        """The last assignment of name in the enclosing function before a line."""
        if not self._functions:
            return None
        found = None
        for sub in ast.walk(self._functions[-1]):
            if (isinstance(sub, ast.Assign) and sub.lineno < before and len(sub.targets) == 1
                    and isinstance(sub.targets[0], ast.Name) and sub.targets[0].id == name
                    and (found is None or sub.lineno > found.lineno)):
                found = sub
        return found.value if found is not None else None

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        func = node.func
        if not isinstance(func, ast.Attribute):
            return
        if func.attr in LEVEL_METHODS:
            levels, message = {LEVEL_METHODS[func.attr]}, node.args[0] if node.args else None
        elif func.attr == "log" and len(node.args) >= 2:
            level = node.args[0]
            if isinstance(level, ast.Name):
                level = self._local(level.id, node.lineno) or level
            levels, message = set(_strings(level)) or {"(varies)"}, node.args[1]
        else:
            return
        if message is None:
            return
        root = _root(func.value)
        if root is None or not (root == "logger" or root in self._module_loggers
                                or root in self._class_loggers or root in ("log", "_log")
                                or root.startswith("self._log") or root.endswith("_log")):
            return
        if isinstance(message, ast.Name):
            message = self._local(message.id, node.lineno) or message
        template = _template(message)
        if template is None:
            return
        binding = self._binding_of(func.value, node.lineno)
        component = binding.component or PROCESS
        fields = binding.fields - {"component"}
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        site = f"{path}:{node.lineno}"
        self.events.append((component, template, levels, fields, site))


def code_events(package: Path = PACKAGE) -> dict[tuple[str, str], Event]:
    """(component, template) -> the event, over every module of the package."""
    events: dict[tuple[str, str], Event] = {}
    trees = [(path, ast.parse(path.read_text(), filename=str(path)))
             for path in sorted(package.rglob("*.py")) if "proto" not in path.parts]
    registry: dict[str, dict[str, _Binding]] = {}  # class name -> its loggers (for subclasses)
    for path, tree in trees:
        module = _Module(path, tree)
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef):
                registry[stmt.name] = module.own_loggers(stmt, {})
    for path, tree in trees:
        module = _Module(path, tree, registry)
        module.visit(tree)
        for component, template, levels, fields, site in module.events:
            event = events.setdefault((component, template), Event(component, template))
            event.levels |= levels
            event.fields |= fields
            event.sites.append(site)
    return events


# -- reading the document -----------------------------------------------------------------------

_SECTION = re.compile(r"^### Component `([^`]+)`\s*$")
_ROW = re.compile(r"^\| (?P<levels>[A-Z/()a-z]+) \| `(?P<template>.+)` \| (?P<fields>.*) \|\s*$")


def doc_events(text: str) -> tuple[dict[tuple[str, str], Event], list[str]]:
    """The events docs/logs.md lists, and its rows that could not be read (each a problem)."""
    events: dict[tuple[str, str], Event] = {}
    unreadable: list[str] = []
    component: str | None = None
    in_table = False
    for number, line in enumerate(text.splitlines(), 1):
        section = _SECTION.match(line)
        if section:
            component, in_table = section.group(1), False
            continue
        if line.startswith("## "):
            component, in_table = None, False
            continue
        if component is None or not line.startswith("|"):
            continue
        if line.startswith("| level |"):
            in_table = True
            continue
        if line.startswith("|---"):
            continue
        row = _ROW.match(line)
        if not in_table or row is None:
            unreadable.append(f"docs/logs.md:{number}: not a row of an event table: {line!r}")
            continue
        template = row.group("template").replace("\\|", "|")
        fields = {f.strip().strip("`") for f in row.group("fields").split(",") if f.strip()}
        key = (component, template)
        if key in events:
            unreadable.append(f"docs/logs.md:{number}: listed twice: {template!r}")
        events[key] = Event(component, template, set(row.group("levels").split("/")),
                            fields - {"-"})
    return events, unreadable


def compare(code: dict[tuple[str, str], Event], doc: dict[tuple[str, str], Event]) -> list[str]:
    """What the document misses or gets wrong, and what it lists that the code no longer has."""
    problems = []
    for key, event in sorted(code.items()):
        listed = doc.get(key)
        where = ", ".join(event.sites)
        if listed is None:
            problems.append(f"missing from docs/logs.md: component {key[0]!r}, "
                            f"{'/'.join(sorted(event.levels))} {key[1]!r} ({where})")
            continue
        if listed.levels != event.levels:
            problems.append(f"level of {key[1]!r}: docs/logs.md says "
                            f"{'/'.join(sorted(listed.levels))}, the code "
                            f"{'/'.join(sorted(event.levels))} ({where})")
        if listed.fields != event.fields:
            problems.append(f"fields of {key[1]!r}: docs/logs.md lists {sorted(listed.fields)}, "
                            f"the code binds {sorted(event.fields)} ({where})")
    for key in sorted(doc.keys() - code.keys()):
        problems.append(f"docs/logs.md lists what the code no longer logs: component {key[0]!r}, "
                        f"{key[1]!r}")
    return problems


# -- printing the rows --------------------------------------------------------------------------


def _order(component: str) -> tuple[int, str]:
    return (1 if component.startswith("(") else 0, component)


def rows(events: dict[tuple[str, str], Event]) -> Iterator[str]:
    """The event tables, one per component, as docs/logs.md holds them."""
    by_component: dict[str, list[Event]] = defaultdict(list)
    for event in events.values():
        by_component[event.component].append(event)
    for component in sorted(by_component, key=_order):
        yield f"### Component `{component}`"
        yield ""
        yield "| level | message | fields |"
        yield "|---|---|---|"
        for event in sorted(by_component[component],
                            key=lambda e: (min(LEVELS.index(lv) if lv in LEVELS else 9
                                               for lv in e.levels) * -1, e.template)):
            levels = "/".join(sorted(event.levels, key=lambda lv: LEVELS.index(lv)
                                     if lv in LEVELS else 9))
            fields = ", ".join(f"`{f}`" for f in sorted(event.fields)) or "-"
            yield f"| {levels} | `{event.template.replace('|', chr(92) + '|')}` | {fields} |"
        yield ""


if __name__ == "__main__":
    sys.stdout.write("\n".join(rows(code_events())) + "\n")
