"""What the entity graph reads from an entity's ThingsBoard JSON text: the object itself
(``parse_entity_json``, also the wire's: common/wire.py re-exports it), its name as ThingsBoard
shows it, and its hard references. Pure: no LMDB, no protobuf.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from edge_sync.common.entity_graph import Ref, references
from edge_sync.errors import BadRequest


def parse_entity_json(text: str, what: str) -> dict[str, Any]:
    """An entity's JSON text as its object; BadRequest naming ``what`` when it is not one."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{what}: entity is not JSON") from exc
    if not isinstance(value, dict):
        raise BadRequest(f"{what}: entity is not a JSON object")
    return value


def name_of(entity_type: str, body: Mapping[str, Any]) -> str:
    """The entity's name as ThingsBoard shows it."""
    field = ("email" if entity_type == "USER"
             else "title" if entity_type in ("DASHBOARD", "CUSTOMER", "TENANT") else "name")
    for key in (field, "name", "title"):  # a widgets bundle has a title, say
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def hard_references(entity_type: str, body: Mapping[str, Any]) -> list[Ref]:
    """entity_graph.references (kept as the graph store's name for it)."""
    return references(entity_type, body)
