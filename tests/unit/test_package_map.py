"""The package map holds: each package imports only what its place in the layers allows.

Read from the source with ``ast`` (every import statement, at any depth, lazy ones included), so
a new import that breaks the map fails here, whatever the import order at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "edge_sync"

# The edge-only parts of the link: everything in link/ (the cloud side lives in cloud/, what both
# sides share in common/).
EDGE_ONLY = ("edge_sync.actors", "edge_sync.api", "edge_sync.link", "edge_sync.app",
             "edge_sync.status", "edge_sync.demo")

RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("edge_sync/cloud", EDGE_ONLY, "the reference cloud must not import the edge's packages"),
    ("edge_sync/common", (*EDGE_ONLY, "edge_sync.cloud", "edge_sync.cli"),
     "common/ is what both sides share: it imports neither side"),
    ("edge_sync/storage", ("edge_sync.actors", "edge_sync.api", "edge_sync.link", "edge_sync.cloud",
                           "edge_sync.common", "pykka", "grpc", "aiohttp"),
     "storage is synchronous and imports neither pykka, grpc, aiohttp nor the layers above it"),
    ("edge_sync/actors", ("aiohttp", "edge_sync.api", "edge_sync.cloud", "grpc"),
     "actors hold actors: no HTTP, no gRPC, no API"),
    ("edge_sync/rules", ("edge_sync.cloud", "grpc", "aiohttp"),
     "the rule engine is the edge's: it reads ThingsBoard's shapes from common/, never the cloud"),
    ("edge_sync", ("bench",), "the product never imports the benchmarks"),
]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


# Pure modules of a forbidden package that any layer may use: the entity graph's vocabulary
# (kinds, references; no protobuf, no I/O) is what storage indexes entities by.
ALLOWED_EVERYWHERE = ("edge_sync.common.entity_graph",)


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "proto" in path.parts:
            continue
        for module in sorted(imported_modules(path)):
            if any(module == a or module.startswith(a + ".") for a in ALLOWED_EVERYWHERE):
                continue
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


@pytest.mark.parametrize(("folder", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_package_imports_only_what_its_layer_allows(
        folder: str, forbidden: tuple[str, ...], why: str) -> None:
    assert offenders(folder, forbidden) == [], why


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from edge_sync.actors.shard import EntityRouter\n    import aiohttp\n")
    assert {"edge_sync.actors.shard", "aiohttp"} <= imported_modules(sample)


def test_the_wheel_holds_only_the_product() -> None:
    setup = (ROOT / "setup.cfg").read_text()
    assert "include = edge_sync*" in setup
    assert not (PACKAGE / "bench").exists()
    assert (ROOT / "bench" / "__main__.py").is_file()
