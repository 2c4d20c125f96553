"""`edge-sync status` with the agent stopped (the store read read-only): which chain a start
would put in force, and the chains kept in the store from each source (storage/rule_chains.py),
which stay in force when their source's chain is refused at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_sync.cli.edge import main
from edge_sync.rules.chain import parse_file, to_entities
from edge_sync.rules.runtime import digest
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_chains import TABLE, KeptChain, RuleChainStore
from tests.helpers.ports import free_ports

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rules" / "selective_sync.json"
SINCE_MS = 1_796_544_000_000  # 2026-12-06T08:00:00Z


def store_with_kept_chains(data_dir: Path, *, damaged_cloud: bool = False) -> str:
    """A store holding a chain kept from a file and one from the cloud; the file chain's digest."""
    chain, meta = parse_file(FIXTURE.read_bytes(), str(FIXTURE))
    kept_digest = digest(chain, meta)
    store = LmdbStore(data_dir, initial_map_mb=4, max_size_mb=64)
    try:
        kept = RuleChainStore(store)
        store.write(lambda txn: kept.put(txn, KeptChain(
            "file:/etc/edge-sync/boiler.json", chain.name, kept_digest, 3, SINCE_MS,
            to_entities(chain, meta))))
        store.write(lambda txn: kept.put(txn, KeptChain(
            "cloud", "Edge Root Rule Chain", "931a1a400a0a", 2, SINCE_MS - 60_000,
            to_entities(chain, meta))))
        if damaged_cloud:
            store.write(lambda txn: txn.put(b"cloud", b"\x00junk", db=store.dbs[TABLE]))
    finally:
        store.close()
    return kept_digest


@pytest.fixture
def stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of an edge whose agent is not running (nothing on its admin port)."""
    data_dir = tmp_path / "edge"
    monkeypatch.setenv("EDGE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("EDGE_ADMIN_PORT", str(free_ports(1)[0]))
    return data_dir


def rule_lines(out: str) -> list[str]:
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("rule chain:"))
    return lines[first:]


def test_a_stopped_agent_shows_what_its_start_loads_and_the_chains_kept(
        stopped: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    kept_digest = store_with_kept_chains(stopped)
    monkeypatch.setenv("EDGE_RULES_FILE", "/etc/edge-sync/boiler.json")
    assert main(["status"]) == 0
    assert rule_lines(capsys.readouterr().out) == [
        "rule chain:   (the agent is not running: the chain in force is the agent's)",
        "  at start: rules.file /etc/edge-sync/boiler.json is loaded; if it is refused, the chain "
        "kept from the file goes in force (none kept: the agent does not start)",
        f"  kept from file:/etc/edge-sync/boiler.json: 'Selective sync' (version 3, digest "
        f"{kept_digest}, in force since 2026-12-06T08:00:00.000Z)",
        "  kept from cloud: 'Edge Root Rule Chain' (version 2, digest 931a1a400a0a, in force "
        "since 2026-12-06T07:59:00.000Z)",
    ]
    assert main(["status", "--json"]) == 0
    rules = json.loads(capsys.readouterr().out)["rules"]
    assert [(k["source"], k["version"], k["since_ms"]) for k in rules["kept"]] == [
        ("file:/etc/edge-sync/boiler.json", 3, SINCE_MS), ("cloud", 2, SINCE_MS - 60_000)]
    assert (rules["chain"], rules["problems"]) == (None, [])


def test_without_rules_file_the_start_takes_the_clouds_chain_and_a_damaged_record_is_named(
        stopped: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store_with_kept_chains(stopped, damaged_cloud=True)
    monkeypatch.delenv("EDGE_RULES_FILE", raising=False)
    assert main(["status"]) == 0
    lines = rule_lines(capsys.readouterr().out)
    assert lines[1] == ("  at start: the cloud's root rule chain in the store; if it is refused, "
                        "the chain kept from the cloud goes in force (none kept: no chain)")
    assert lines[2].startswith("  kept from file:/etc/edge-sync/boiler.json: 'Selective sync'")
    assert lines[3].startswith("  kept chain unreadable: rule_chains: cloud: ")
    assert len(lines) == 4
