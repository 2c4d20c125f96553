"""A device's saved rule state (storage/rule_store.py's record) rewritten as an earlier edge
version kept it, for the tests of loading old windows."""

from __future__ import annotations

import json
from typing import Any

import msgpack


def as_version_1(record: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """``record`` as an earlier edge version kept it: version 1, each node's windows under its
    old key (``keys``: new key -> old key)."""
    old = json.loads(json.dumps(record))
    old["v"] = 1
    for entry in old["windows"]:
        key = keys[entry["node"]]
        entry["node"] = key
        for w in entry["windows"]["windows"]:
            w["node"] = key
        entry["windows"]["closed_seq"] = [[key, o, s] for _, o, s in
                                          entry["windows"]["closed_seq"]]
    return dict(msgpack.unpackb(msgpack.packb(old)))
