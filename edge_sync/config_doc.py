"""Renders the configuration reference (a Markdown table per file) from the commented YAML in
edge_sync/conf/, so the README's reference cannot drift from the defaults: a test compares them.

Run ``python -m edge_sync.config_doc`` to print it.
"""

from __future__ import annotations

import re
from pathlib import Path

CONF_DIR = Path(__file__).parent / "conf"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[a-z_]+):(?P<rest>.*)$")
_DOC = re.compile(r"^(?P<text>.*?)\s*Default: (?P<default>.*?)\.\s*Env: (?P<env>[A-Z_0-9]+)\s*$")


def rows(path: Path) -> list[tuple[str, str, str, str]]:
    """(dotted key, env var, default, description) for every documented key of a YAML file."""
    out: list[tuple[str, str, str, str]] = []
    stack: list[tuple[int, str]] = []
    comment = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = stripped.lstrip("# ")
            continue
        m = _KEY.match(line)
        if not m:
            comment = ""
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m["key"]])
        if m["rest"].strip():
            doc = _DOC.match(comment)
            if doc:
                out.append((key, doc["env"], doc["default"], doc["text"]))
        else:
            stack.append((indent, m["key"]))
        comment = ""
    return out


def render() -> str:
    parts: list[str] = []
    for name, title in (("edge.yml", "Edge agent (`conf/edge.yml`)"),
                        ("cloud.yml", "Reference cloud (`conf/cloud.yml`)")):
        parts.append(f"#### {title}\n")
        parts.append("| key | env var | default | meaning |")
        parts.append("|---|---|---|---|")
        for key, env, default, text in rows(CONF_DIR / name):
            parts.append(f"| `{key}` | `{env}` | {default} | {text.replace('|', '/')} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render())
