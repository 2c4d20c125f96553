"""ThingsBoard's rule chain format, parsed into frozen dataclasses: a ``RuleChain`` and its
``RuleChainMetaData`` (nodes, connections between them, the first node, legacy connections to
other rule chains).

Two shapes are accepted:

- ThingsBoard's export file, ``{"ruleChain": {...}, "metadata": {...}}`` (node ids taken out);
- the two entity JSONs the cloud syncs, RULE_CHAIN and RULE_CHAIN_METADATA (ids included),
  given as two objects (``parse_entities``) or, in a file, as a JSON array of the two.

Parsing checks the shape only (a node's type, name and configuration object as the import
checks them: ``common.tb_shapes.check_node``); what the shape means (supported node types,
indexes in range, cycles, configurations) is ``validate.py``'s, which reports every problem at
once. A shape error is a ``BadRequest`` naming where (``metadata.nodes[2].name: missing``).
A node's ``debugMode``, ``debugSettings`` and ``additionalInfo`` (the editor's layout) are
ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from edge_sync.common.tb_shapes import check_node, load
from edge_sync.errors import BadRequest
from edge_sync.validators import MAX_NAME_BYTES, text_fits

CHAIN_TYPES = ("CORE", "EDGE")


@dataclass(frozen=True, slots=True)
class RuleNode:
    """One node: its index in ``nodes``, ThingsBoard class name, name and configuration."""

    index: int
    type: str
    name: str
    configuration: Mapping[str, Any]
    configuration_version: int = 0
    id: str | None = None

    def describe(self) -> str:
        """``nodes[2] "Save Timeseries"``: how problems name a node."""
        return f"nodes[{self.index}] {self.name!r}"


@dataclass(frozen=True, slots=True)
class NodeConnection:
    """A relation from one node to another by index, with its type (``Success``, ``True``,
    a message type, ...)."""

    from_index: int
    to_index: int
    type: str


@dataclass(frozen=True, slots=True)
class RuleChainConnection:
    """A legacy connection from a node to another rule chain (``ruleChainConnections``)."""

    from_index: int
    target_rule_chain_id: str
    type: str


@dataclass(frozen=True, slots=True)
class RuleChainMetaData:
    """A chain's nodes and connections. ``first_node_index`` is None when the chain has no
    first node (absent, null or -1); it is not range-checked here."""

    nodes: tuple[RuleNode, ...]
    connections: tuple[NodeConnection, ...]
    first_node_index: int | None
    rule_chain_connections: tuple[RuleChainConnection, ...] = ()
    rule_chain_id: str | None = None


@dataclass(frozen=True, slots=True)
class RuleChain:
    """The chain itself: name, type (CORE or EDGE), id when synced, root flag."""

    name: str
    type: str = "CORE"
    id: str | None = None
    root: bool = False


def parse_file(raw: bytes, source: str) -> tuple[RuleChain, RuleChainMetaData]:
    """A chain file's bytes (UTF-8 JSON), either shape; BadRequest naming ``source``."""
    doc = load(raw, source)
    try:
        return parse(doc)
    except BadRequest as exc:
        raise BadRequest(f"{source}: {exc}") from None


def parse(doc: Any) -> tuple[RuleChain, RuleChainMetaData]:
    """An export (``{"ruleChain", "metadata"}``) or a JSON array of the RULE_CHAIN and the
    RULE_CHAIN_METADATA entity JSONs, in either order."""
    if isinstance(doc, list):
        if len(doc) != 2 or not all(isinstance(d, Mapping) for d in doc):
            raise BadRequest("expected the RULE_CHAIN and RULE_CHAIN_METADATA JSON objects "
                             f"(two), got a list of {len(doc)}")
        first, second = doc
        meta, chain = (first, second) if "nodes" in first else (second, first)
        return parse_entities(chain, meta)
    if not isinstance(doc, Mapping):
        raise BadRequest(f"expected a JSON object, got {_type_name(doc)}")
    if "ruleChain" not in doc:
        raise BadRequest("ruleChain: missing (a rule chain export is "
                         "{\"ruleChain\": {...}, \"metadata\": {...}})")
    chain_doc, meta_doc = doc["ruleChain"], doc.get("metadata")
    if not isinstance(chain_doc, Mapping):
        raise BadRequest(f"ruleChain: expected a JSON object, got {_type_name(chain_doc)}")
    if not isinstance(meta_doc, Mapping):
        raise BadRequest("metadata: " + ("missing (the rule chain's nodes and connections)"
                                         if meta_doc is None else
                                         f"expected a JSON object, got {_type_name(meta_doc)}"))
    return parse_chain(chain_doc, "ruleChain"), parse_metadata(meta_doc, "metadata")


def parse_entities(chain: Mapping[str, Any], metadata: Mapping[str, Any]
                   ) -> tuple[RuleChain, RuleChainMetaData]:
    """The two entity JSONs the cloud syncs; their ids must agree when both carry one."""
    parsed_chain = parse_chain(chain, "RULE_CHAIN")
    parsed_meta = parse_metadata(metadata, "RULE_CHAIN_METADATA")
    if parsed_chain.id and parsed_meta.rule_chain_id \
            and parsed_chain.id != parsed_meta.rule_chain_id:
        raise BadRequest(f"RULE_CHAIN_METADATA.ruleChainId: {parsed_meta.rule_chain_id} is not "
                         f"the rule chain's id {parsed_chain.id}")
    return parsed_chain, parsed_meta


def parse_chain(doc: Mapping[str, Any], where: str) -> RuleChain:
    name = doc.get("name")
    if not text_fits(name, MAX_NAME_BYTES):
        raise BadRequest(f"{where}.name: " + ("missing" if name is None else
                         f"expected text of 1 to {MAX_NAME_BYTES} bytes"))
    kind = doc.get("type") or "CORE"
    if kind not in CHAIN_TYPES:
        raise BadRequest(f"{where}.type: expected CORE or EDGE, got {kind!r}")
    return RuleChain(name=name, type=kind, id=_id_of(doc.get("id")), root=doc.get("root") is True)


def parse_metadata(doc: Mapping[str, Any], where: str) -> RuleChainMetaData:
    nodes = tuple(_node(n, i, f"{where}.nodes[{i}]")
                  for i, n in enumerate(_list_of(doc, "nodes", where)))
    connections = tuple(_connection(c, f"{where}.connections[{i}]")
                        for i, c in enumerate(_list_of(doc, "connections", where)))
    legacy = tuple(_chain_connection(c, f"{where}.ruleChainConnections[{i}]")
                   for i, c in enumerate(_list_of(doc, "ruleChainConnections", where)))
    first = doc.get("firstNodeIndex")
    if first == -1:  # ThingsBoard's "no first node"
        first = None
    if first is not None and not _is_int(first):
        raise BadRequest(f"{where}.firstNodeIndex: expected a node index, got {first!r}")
    return RuleChainMetaData(nodes=nodes, connections=connections, first_node_index=first,
                             rule_chain_connections=legacy,
                             rule_chain_id=_id_of(doc.get("ruleChainId")))


def _node(doc: Any, index: int, where: str) -> RuleNode:
    if not isinstance(doc, Mapping):
        raise BadRequest(f"{where}: expected a JSON object, got {_type_name(doc)}")
    check_node(doc, where)
    return RuleNode(index=index, type=doc["type"], name=doc["name"],
                    configuration=doc["configuration"],
                    configuration_version=doc.get("configurationVersion", 0),
                    id=_id_of(doc.get("id")))


def _connection(doc: Any, where: str) -> NodeConnection:
    if not isinstance(doc, Mapping):
        raise BadRequest(f"{where}: expected a JSON object, got {_type_name(doc)}")
    for key in ("fromIndex", "toIndex"):
        if not _is_int(doc.get(key)):
            raise BadRequest(f"{where}.{key}: expected a node index, got {doc.get(key)!r}")
    if not text_fits(doc.get("type"), MAX_NAME_BYTES):
        raise BadRequest(f"{where}.type: missing (the relation type, e.g. \"Success\")")
    return NodeConnection(from_index=doc["fromIndex"], to_index=doc["toIndex"], type=doc["type"])


def _chain_connection(doc: Any, where: str) -> RuleChainConnection:
    if not isinstance(doc, Mapping):
        raise BadRequest(f"{where}: expected a JSON object, got {_type_name(doc)}")
    if not _is_int(doc.get("fromIndex")):
        raise BadRequest(f"{where}.fromIndex: expected a node index, got {doc.get('fromIndex')!r}")
    target = _id_of(doc.get("targetRuleChainId"))
    if target is None:
        raise BadRequest(f"{where}.targetRuleChainId: expected a RULE_CHAIN id")
    kind = doc.get("type") or "Success"
    return RuleChainConnection(from_index=doc["fromIndex"], target_rule_chain_id=target,
                               type=str(kind))


def _id_of(value: Any) -> str | None:
    """The ``id`` of a ThingsBoard typed id (``{"entityType", "id"}``), else None."""
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    return None


def _list_of(doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where}.{key}: expected a list, got {_type_name(value)}")
    return value


def _is_int(value: Any) -> TypeGuard[int]:
    """A whole number (not a boolean); its range is validate.py's to judge."""
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def to_entities(chain: RuleChain, meta: RuleChainMetaData) -> list[dict[str, Any]]:
    """The chain as the two entity JSONs the cloud syncs (RULE_CHAIN, RULE_CHAIN_METADATA), in
    a JSON array: what ``parse`` reads back into equal dataclasses (the same digest). How the
    edge keeps the last chain in force of each source (storage/rule_chains.py)."""
    def typed(kind: str, value: str | None) -> dict[str, str] | None:
        return None if value is None else {"entityType": kind, "id": value}

    chain_doc: dict[str, Any] = {"name": chain.name, "type": chain.type, "root": chain.root,
                                 "id": typed("RULE_CHAIN", chain.id)}
    meta_doc: dict[str, Any] = {
        "ruleChainId": typed("RULE_CHAIN", meta.rule_chain_id),
        "firstNodeIndex": -1 if meta.first_node_index is None else meta.first_node_index,
        "nodes": [{"type": n.type, "name": n.name, "configuration": dict(n.configuration),
                   "configurationVersion": n.configuration_version,
                   "id": typed("RULE_NODE", n.id)} for n in meta.nodes],
        "connections": [{"fromIndex": c.from_index, "toIndex": c.to_index, "type": c.type}
                        for c in meta.connections],
        "ruleChainConnections": [{"fromIndex": c.from_index, "type": c.type,
                                  "targetRuleChainId": typed("RULE_CHAIN",
                                                             c.target_rule_chain_id)}
                                 for c in meta.rule_chain_connections],
    }
    return [chain_doc, meta_doc]
