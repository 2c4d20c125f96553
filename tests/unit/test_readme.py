"""The documents stay true: the configuration reference in docs/configuration.md is the one
generated from conf/*.yml, the README shows the commands the project promises (scripts/test,
scripts/demo, scripts/bench), every local link of the README and docs/ resolves, and nothing
refers to files outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_sync.config_doc import current, render, rows, splice

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_config_reference_in_docs_is_current() -> None:
    reference = current(CONFIGURATION.read_text())
    assert reference is not None, "docs/configuration.md lacks the config-reference markers"
    assert reference.strip() == render().strip(), (
        "docs/configuration.md is stale: run `python -m edge_sync.config_doc --write`"
    )


def test_readme_links_the_configuration_reference_instead_of_holding_it() -> None:
    assert current(README) is None
    assert "(docs/configuration.md)" in README


def test_splice_replaces_only_the_marked_block() -> None:
    doc = "intro\n<!-- config-reference:begin -->\nold\n<!-- config-reference:end -->\ntail\n"
    new = splice(doc, "new table\n")
    assert new.startswith("intro\n") and new.endswith("tail\n")
    assert current(new) == "new table\n\n"
    with pytest.raises(ValueError):
        splice("no markers", "x")


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


def test_readme_links_every_document_in_docs() -> None:
    for doc in DOCS:
        assert f"(docs/{doc.name})" in README, f"README does not link docs/{doc.name}"


@pytest.mark.parametrize("path", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_local_links_resolve(path: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        assert (path.parent / target).exists(), f"{path.name} links {target}, which is missing"


@pytest.mark.parametrize("path", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_documents_stand_alone(path: Path) -> None:
    text = path.read_text()
    for pattern in (r"\.\./", r"\bdesign\.md\b", r"\bthe spec\b", r"\bissue \d", r"shared/"):
        assert not re.search(pattern, text, re.I), f"{path.name} refers outside the repo: {pattern}"
