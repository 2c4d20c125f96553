"""The shapes of ThingsBoard's JSON files that both the reference cloud (its import,
cloud/tb_import.py) and the edge (its rule chain files, rules/chain.py) read: a file's bytes
decoded, and a rule chain's metadata and rule nodes checked as ThingsBoard's RuleChainService
needs them. Pure; BadRequest names the place of a problem."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeGuard

from edge_sync.errors import BadRequest
from edge_sync.validators import MAX_NAME_BYTES, text_fits


def load(raw: bytes, source: str) -> Any:
    """Decode a file's bytes (UTF-8 JSON, a BOM allowed); BadRequest naming ``source``."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise BadRequest(f"{source}: empty: expected a ThingsBoard export (JSON)")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{source}: not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{source}: malformed JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from exc
    except (RecursionError, ValueError) as exc:
        raise BadRequest(f"{source}: malformed JSON: {str(exc)[:120]}") from exc


def list_of(meta: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """A rule chain metadata's ``nodes`` or ``connections``: a list (absent or null: empty)."""
    value = meta.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where}.{key}: expected a list, got {type_name(value)}")
    return value


def check_node(node: Mapping[str, Any], where: str) -> None:
    """A rule node's shape as ThingsBoard's RuleChainService needs it: a ``type`` and a
    ``name`` (text), a ``configuration`` object, a whole ``configurationVersion``."""
    for key in ("type", "name"):
        if not text_fits(node.get(key), MAX_NAME_BYTES):
            raise BadRequest(f"{where}.{key}: " + ("missing" if key not in node else
                             f"expected text of 1 to {MAX_NAME_BYTES} bytes"))
    if not isinstance(node.get("configuration"), dict):
        raise BadRequest(f"{where}.configuration: " + (
            "missing" if node.get("configuration") is None else
            f"expected a JSON object, got {type_name(node['configuration'])}"))
    if not is_index(node.get("configurationVersion", 0)):
        raise BadRequest(f"{where}.configurationVersion: expected a whole number >= 0")


def check_metadata(meta: Mapping[str, Any], where: str = "metadata") -> None:
    """The shape of a rule chain's metadata (RuleChainMetaData JSON), as the import checks it:
    ``nodes`` a list of rule nodes (check_node), ``connections`` a list of connections between
    them, ``firstNodeIndex`` a node (or none: absent, null, -1). BadRequest naming where."""
    nodes = list_of(meta, "nodes", where)
    for i, node in enumerate(nodes):
        if not isinstance(node, Mapping):
            raise BadRequest(f"{where}.nodes[{i}]: expected a JSON object, got {type_name(node)}")
        check_node(node, f"{where}.nodes[{i}]")
    for i, conn in enumerate(list_of(meta, "connections", where)):
        check_connection(conn, len(nodes), f"{where}.connections[{i}]")
    first = meta.get("firstNodeIndex")
    if first not in (None, -1) and (not is_index(first) or first >= len(nodes)):
        raise BadRequest(f"{where}.firstNodeIndex: {first!r} names no node (there are "
                         f"{len(nodes)})")


def is_index(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_connection(conn: Any, count: int, where: str) -> None:
    if not isinstance(conn, Mapping):
        raise BadRequest(f"{where}: expected a JSON object")
    for key in ("fromIndex", "toIndex"):
        value = conn.get(key)
        if not is_index(value) or value >= count:
            raise BadRequest(f"{where}.{key}: {value!r} names no node (there are {count})")
    if not text_fits(conn.get("type"), MAX_NAME_BYTES):
        raise BadRequest(f"{where}.type: missing (the relation type, e.g. \"Success\")")


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")
