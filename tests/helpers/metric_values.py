"""Reading metric values in tests: from the status API's ``metrics`` snapshot (keys
``name{label="value",...}``), summed over the samples whose labels include the ones given."""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEY = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_total(snapshot: Mapping[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    out = 0.0
    for key, value in snapshot.items():
        m = _KEY.match(key)
        if m is None or m["name"] != name:
            continue
        have = dict(_LABEL.findall(m["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            out += value
    return out
