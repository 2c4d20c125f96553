"""A parsed rule chain judged as a whole, every problem at once: a node type outside the
supported subset (``nodes.SUPPORTED``: the whole chain is refused, the type named), a
connection from or to a node index that does not exist (dangling), a cycle among the
connections between nodes (named by node names), a first node index out of range, each
supported node's configuration (``nodes.check_configuration``: scripts present for their
``scriptLang``, required fields), and each script compiled by the sandbox that will run it
(``sandbox.ScriptEngine``: a script it refuses, TBEL outside the subset or a syntax error,
refuses the chain here rather than failing every message). Problems come in a fixed order:
the first node, then node by node (configuration, then script), then connections, then
cycles; each names where (``metadata.nodes[2]...``).

Compiling costs about a millisecond a script, once per chain checked or loaded; ``check``
gives the compiled scripts to the rule engine, which keeps them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from edge_sync.rules.chain import RuleChain, RuleChainMetaData, RuleNode
from edge_sync.rules.nodes import DEVICE_PROFILE, SUPPORTED, check_configuration, script_of
from edge_sync.rules.sandbox import ScriptEngine, ScriptError, ScriptLimits

WHERE = "metadata"


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the chain cannot be run: where (a path in the export) and what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def validate(chain: RuleChain, meta: RuleChainMetaData,
             limits: ScriptLimits | None = None) -> list[Problem]:
    """Every problem of the chain; empty when the edge could run it (its scripts compiled
    under ``limits``, the sandbox's defaults when None)."""
    return check(chain, meta, limits)[0]


def check(chain: RuleChain, meta: RuleChainMetaData, limits: ScriptLimits | None = None
          ) -> tuple[list[Problem], dict[int, ScriptEngine]]:
    """``validate``'s problems, and each script node's compiled script by node index (for the
    rule engine, which runs them)."""
    nodes = meta.nodes
    scripts: dict[int, ScriptEngine] = {}
    out: list[Problem] = []
    first = meta.first_node_index
    if first is not None and not 0 <= first < len(nodes):
        out.append(Problem(f"{WHERE}.firstNodeIndex",
                           f"{first} names no node (there are {len(nodes)})"))
    elif first is None and nodes:
        out.append(Problem(f"{WHERE}.firstNodeIndex",
                           "missing: no node receives the chain's messages"))
    for node in nodes:
        problems = _node_problems(node)
        out.extend(problems)
        if not problems:
            compiled = _compile(node, limits, chain.name)
            if isinstance(compiled, Problem):
                out.append(compiled)
            elif compiled is not None:
                scripts[node.index] = compiled
    for i, conn in enumerate(meta.connections):
        for key, index in (("fromIndex", conn.from_index), ("toIndex", conn.to_index)):
            if not 0 <= index < len(nodes):
                out.append(Problem(f"{WHERE}.connections[{i}].{key}",
                                   f"dangling: {index} names no node (there are {len(nodes)})"))
    for i, legacy in enumerate(meta.rule_chain_connections):
        if not 0 <= legacy.from_index < len(nodes):
            out.append(Problem(f"{WHERE}.ruleChainConnections[{i}].fromIndex",
                               f"dangling: {legacy.from_index} names no node (there are "
                               f"{len(nodes)})"))
    for cycle in find_cycles(meta):
        path = " -> ".join(nodes[i].describe() for i in (*cycle, cycle[0]))
        out.append(Problem(f"{WHERE}.connections", f"cycle: {path}"))
    return out, scripts


def _node_problems(node: RuleNode) -> list[Problem]:
    where = f"{WHERE}.nodes[{node.index}]"
    if node.type not in SUPPORTED:
        return [Problem(f"{where}.type", f"{node.type} ({node.name!r}) is not a supported node "
                                         "type: the chain is refused (docs/rules.md)")]
    return [Problem(f"{where}.configuration.{field}", message)
            for field, message in check_configuration(node.type, node.configuration,
                                                       node.configuration_version)]


def _compile(node: RuleNode, limits: ScriptLimits | None, chain: str
             ) -> ScriptEngine | Problem | None:
    """The node's script compiled by the sandbox (None: the node runs none), or why the sandbox
    refuses it, naming the node and the script's field."""
    script = script_of(node.type, node.configuration)
    if script is None:
        return None
    lang, field, text = script
    try:
        return ScriptEngine(text, "TBEL" if lang == "TBEL" else "JS", limits,
                            node=node.describe(), chain=chain)
    except ScriptError as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        return Problem(f"{WHERE}.nodes[{node.index}].configuration.{field}",
                       f"{node.describe()}: the {lang} script is refused: "
                       f"{type(exc).__name__}: {reason}")


def find_cycles(meta: RuleChainMetaData) -> list[tuple[int, ...]]:
    """One cycle per strongly connected group of nodes (a node connected to itself included),
    as node indexes from the group's lowest, along the lowest-index connections; groups in
    order of their lowest index. Dangling connections are left out."""
    count = len(meta.nodes)
    edges: dict[int, list[int]] = {i: [] for i in range(count)}
    for conn in meta.connections:
        if 0 <= conn.from_index < count and 0 <= conn.to_index < count:
            edges[conn.from_index].append(conn.to_index)
    for targets in edges.values():
        targets.sort()
    cycles = []
    for group in _strongly_connected(edges):
        start = min(group)
        if len(group) == 1 and start not in edges[start]:
            continue
        cycles.append(_path_back(edges, group, start))
    return sorted(cycles)


def _strongly_connected(edges: dict[int, list[int]]) -> list[set[int]]:
    """Tarjan's algorithm, iterative (a chain may be long)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    groups: list[set[int]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return groups


def _path_back(edges: dict[int, list[int]], group: set[int], start: int) -> tuple[int, ...]:
    """The shortest path from ``start`` back to itself within ``group`` (breadth first, lower
    indexes first)."""
    came_from: dict[int, int] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in edges[node]:
                if target not in group:
                    continue
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return tuple(reversed(path))
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError("a strongly connected group has a cycle through each member")


def notes(meta: RuleChainMetaData) -> list[str]:
    """What of a valid chain runs on the edge otherwise than on ThingsBoard, one text a node:
    ``rules check`` prints them, and the agent logs them as WARNINGs when the chain goes in
    force. Empty for most chains."""
    return [f"nodes[{node.index}] {node.name!r} (TbDeviceProfileNode) passes every message on "
            "by Success and sends no alarm: the alarm rules of the device profiles are not "
            "evaluated on the edge (a cloud whose rule chain has a device profile node "
            "evaluates them on what the edge pushes)"
            for node in meta.nodes if node.type == DEVICE_PROFILE]


def summary(chain: RuleChain, meta: RuleChainMetaData) -> str:
    """One line: name, nodes, connections and the node types used (simple names, counted)."""
    used = Counter(SUPPORTED[n.type].short if n.type in SUPPORTED else n.type
                   for n in meta.nodes)
    types = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(used.items()))
    return (f"{chain.name!r} ({chain.type}): {len(meta.nodes)} nodes, "
            f"{len(meta.connections)} connections; node types: {types or 'none'}")
