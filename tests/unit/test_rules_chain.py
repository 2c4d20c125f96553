"""Rule chains parsed from ThingsBoard's two shapes (the export file, the synced RULE_CHAIN +
RULE_CHAIN_METADATA entity JSONs) into frozen dataclasses; shape errors name where."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from edge_sync.errors import BadRequest
from edge_sync.rules.chain import (
    NodeConnection,
    RuleChain,
    RuleChainConnection,
    parse,
    parse_entities,
    parse_file,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
CHAIN_ID = "8d5f0a10-9a1c-11ef-9a34-7d5a1b8e1f00"


def export(name: str = "telemetry_dedup_chain.json") -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_an_export_parses_into_chain_and_metadata() -> None:
    chain, meta = parse(export())
    assert chain == RuleChain(name="Boiler telemetry", type="EDGE", id=None, root=False)
    assert meta.first_node_index == 0
    assert [(n.index, n.name) for n in meta.nodes[:3]] == [
        (0, "Message Type Switch"), (1, "Deduplicate 10 s"), (2, "Celsius to Kelvin")]
    dedup = meta.nodes[1]
    assert dedup.type == "org.thingsboard.rule.engine.deduplication.TbMsgDeduplicationNode"
    assert dict(dedup.configuration) == {"interval": 10, "strategy": "LAST",
                                         "maxPendingMsgs": 100, "maxRetries": 3}
    assert meta.connections[:2] == (NodeConnection(0, 1, "Post telemetry"),
                                    NodeConnection(1, 2, "Success"))
    assert len(meta.connections) == 11
    assert meta.rule_chain_connections == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        chain.name = "other"  # type: ignore[misc]


def test_the_synced_entity_jsons_parse_the_same_in_either_order() -> None:
    doc = export()
    entity_chain = {**doc["ruleChain"], "id": {"entityType": "RULE_CHAIN", "id": CHAIN_ID},
                    "root": True}
    entity_meta = copy.deepcopy(doc["metadata"])
    entity_meta["ruleChainId"] = {"entityType": "RULE_CHAIN", "id": CHAIN_ID}
    for i, node in enumerate(entity_meta["nodes"]):
        node["id"] = {"entityType": "RULE_NODE", "id": f"00000000-0000-1000-8000-{i:012d}"}
    chain, meta = parse_entities(entity_chain, entity_meta)
    assert chain == RuleChain(name="Boiler telemetry", type="EDGE", id=CHAIN_ID, root=True)
    assert meta.rule_chain_id == CHAIN_ID
    assert meta.nodes[10].id == "00000000-0000-1000-8000-000000000010"
    assert parse([entity_meta, entity_chain]) == (chain, meta)
    assert parse([entity_chain, entity_meta]) == (chain, meta)
    _, exported = parse(doc)
    assert [n.type for n in exported.nodes] == [n.type for n in meta.nodes]


def test_metadata_of_another_chain_is_refused() -> None:
    meta = {"ruleChainId": {"entityType": "RULE_CHAIN", "id": "00000000-0000-1000-8000-00000000beef"},
            "nodes": [], "connections": []}
    chain = {"id": {"entityType": "RULE_CHAIN", "id": CHAIN_ID}, "name": "A"}
    with pytest.raises(BadRequest) as err:
        parse_entities(chain, meta)
    assert str(err.value) == ("RULE_CHAIN_METADATA.ruleChainId: "
                              "00000000-0000-1000-8000-00000000beef is not the rule chain's id "
                              f"{CHAIN_ID}")


def test_no_first_node_and_legacy_chain_connections() -> None:
    target = {"entityType": "RULE_CHAIN", "id": CHAIN_ID}
    _, meta = parse({"ruleChain": {"name": "A"}, "metadata": {
        "firstNodeIndex": -1, "nodes": None, "connections": None,
        "ruleChainConnections": [{"fromIndex": 0, "targetRuleChainId": target}]}})
    assert meta.first_node_index is None
    assert meta.nodes == ()
    assert meta.rule_chain_connections == (RuleChainConnection(0, CHAIN_ID, "Success"),)


@pytest.mark.parametrize(("change", "error"), [
    (lambda d: d.pop("metadata"), "metadata: missing (the rule chain's nodes and connections)"),
    (lambda d: d.pop("ruleChain"), 'ruleChain: missing (a rule chain export is '
                                   '{"ruleChain": {...}, "metadata": {...}})'),
    (lambda d: d["ruleChain"].pop("name"), "ruleChain.name: missing"),
    (lambda d: d["ruleChain"].update(type="FANCY"),
     "ruleChain.type: expected CORE or EDGE, got 'FANCY'"),
    (lambda d: d["metadata"]["nodes"][4].pop("name"), "metadata.nodes[4].name: missing"),
    (lambda d: d["metadata"]["nodes"][2].update(configuration="x"),
     "metadata.nodes[2].configuration: expected a JSON object, got text"),
    (lambda d: d["metadata"]["nodes"].append(7),
     "metadata.nodes[11]: expected a JSON object, got a number"),
    (lambda d: d["metadata"]["connections"][3].pop("toIndex"),
     "metadata.connections[3].toIndex: expected a node index, got None"),
    (lambda d: d["metadata"]["connections"][0].update(type=""),
     'metadata.connections[0].type: missing (the relation type, e.g. "Success")'),
    (lambda d: d["metadata"].update(firstNodeIndex="0"),
     "metadata.firstNodeIndex: expected a node index, got '0'"),
    (lambda d: d["metadata"].update(connections={}),
     "metadata.connections: expected a list, got an object"),
])
def test_shape_errors_name_where(change: Any, error: str) -> None:
    doc = export()
    change(doc)
    with pytest.raises(BadRequest) as err:
        parse(doc)
    assert str(err.value) == error


def test_a_file_names_itself_in_errors() -> None:
    with pytest.raises(BadRequest) as err:
        parse_file(b"{nope", "chain.json")
    assert str(err.value) == ("chain.json: malformed JSON: Expecting property name enclosed in "
                              "double quotes at line 1 column 2")
    with pytest.raises(BadRequest) as err:
        parse_file(b"[1, 2, 3]", "chain.json")
    assert str(err.value) == ("chain.json: expected the RULE_CHAIN and RULE_CHAIN_METADATA JSON "
                              "objects (two), got a list of 3")
    chain, _ = parse_file((FIXTURES / "cycle_chain.json").read_bytes(), "cycle_chain.json")
    assert chain.name == "Retry loop"
