"""The README's configuration reference is the one generated from conf/*.yml, and the README
shows the commands the project promises (scripts/test, scripts/demo, scripts/bench)."""

from __future__ import annotations

import re
from pathlib import Path

from edge_sync.config_doc import render, rows

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_config_reference_in_readme_is_current() -> None:
    m = re.search(r"<!-- config-reference:begin -->\n(.*?)<!-- config-reference:end -->", README, re.S)
    assert m, "README lacks the config-reference markers"
    assert m.group(1).strip() == render().strip(), (
        "README configuration reference is stale: paste `python -m edge_sync.config_doc`"
    )


def test_every_yaml_key_is_documented() -> None:
    for name in ("edge.yml", "cloud.yml"):
        lines = (ROOT / "conf" / name).read_text().splitlines()
        text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
        placeholders = re.findall(r"\$\{([A-Z_0-9]+):", text)
        documented = {env for _key, env, _d, _t in rows(ROOT / "conf" / name)}
        assert set(placeholders) == documented, name


def test_readme_shows_the_scripts() -> None:
    for command in ("scripts/test", "scripts/demo", "scripts/bench ingest", "edge-sync run"):
        assert command in README
