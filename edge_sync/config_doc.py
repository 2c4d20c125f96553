"""Renders the configuration reference (a Markdown table per file) from the commented YAML in
edge_sync/conf/, so the reference in docs/configuration.md cannot drift from the defaults: a
test compares them.

``python -m edge_sync.config_doc`` prints it; ``python -m edge_sync.config_doc --write`` (from
the repository's root) replaces what stands between the ``<!-- config-reference:begin -->`` and
``<!-- config-reference:end -->`` markers of docs/configuration.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONF_DIR = Path(__file__).parent / "conf"
DOC_PATH = Path("docs/configuration.md")
BEGIN = "<!-- config-reference:begin -->"
END = "<!-- config-reference:end -->"
_BLOCK = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.S)
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


def current(document: str) -> str | None:
    """The reference that stands between the markers of a document (None without markers)."""
    m = _BLOCK.search(document)
    return m.group(1) if m else None


def splice(document: str, reference: str) -> str:
    """The document with ``reference`` between its markers (ValueError without markers)."""
    if current(document) is None:
        raise ValueError(f"no {BEGIN} ... {END} markers")
    return _BLOCK.sub(lambda _m: f"{BEGIN}\n{reference.strip()}\n\n{END}", document, count=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_sync.config_doc",
                                 description="the configuration reference, from conf/*.yml")
    ap.add_argument("--write", nargs="?", const=DOC_PATH, type=Path, default=None, metavar="FILE",
                    help=f"update the reference between the markers of FILE (default {DOC_PATH})")
    args = ap.parse_args(argv)
    if args.write is None:
        print(render())
        return 0
    try:
        args.write.write_text(splice(args.write.read_text(), render()))
    except (OSError, ValueError) as exc:
        print(f"error: {args.write}: {exc}", file=sys.stderr)
        return 1
    print(f"updated {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
