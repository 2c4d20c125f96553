"""The last rule chain in force per source, kept in a real LMDB store
(storage/rule_chains.py): a chain written as the two entity JSONs (rules/chain.py
``to_entities``) reads back as the same chain (the same digest), for every fixture chain; one
record per source kind, the highest version, a damaged record named."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_sync.errors import StorageCorrupt
from edge_sync.rules.chain import parse, parse_file, to_entities
from edge_sync.rules.runtime import digest
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_chains import CLOUD, FILE, TABLE, KeptChain, RuleChainStore, kind_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_a_chain_as_entities_reads_back_as_the_same_chain(fixture: str) -> None:
    path = FIXTURES / fixture
    chain, meta = parse_file(path.read_bytes(), str(path))
    again = parse(to_entities(chain, meta))
    assert again == (chain, meta)
    assert digest(*again) == digest(chain, meta)


def test_one_record_per_source_kind_in_a_real_store(tmp_path: Path) -> None:
    path = FIXTURES / "selective_sync.json"
    chain, meta = parse_file(path.read_bytes(), str(path))
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=16)
    try:
        kept = RuleChainStore(store)
        first = KeptChain("file:/etc/a.json", chain.name, digest(chain, meta), 3, 1000,
                          to_entities(chain, meta))
        moved = KeptChain("file:/etc/b.json", chain.name, digest(chain, meta), 4, 2000,
                          to_entities(chain, meta))
        cloud = KeptChain("cloud", "Root", "abc", 2, 500, to_entities(chain, meta))
        store.write(lambda txn: kept.put(txn, first))
        store.write(lambda txn: kept.put(txn, cloud))
        store.write(lambda txn: kept.put(txn, moved))  # the same kind: replaces the first
        with store.read() as txn:
            assert (kept.get(txn, FILE), kept.get(txn, CLOUD), kept.max_version(txn)) == (
                moved, cloud, 4)
        store.write(lambda txn: kept.delete(txn, CLOUD))
        store.write(lambda txn: txn.put(b"file", b"\x00junk", db=store.dbs[TABLE]))
        with store.read() as txn:
            assert kept.get(txn, CLOUD) is None
            with pytest.raises(StorageCorrupt, match=r"^rule_chains: file: "):
                kept.get(txn, FILE)
            assert kept.max_version(txn) == 0
    finally:
        store.close()
    assert (kind_of("file:/x.json"), kind_of("cloud")) == (FILE, CLOUD)
