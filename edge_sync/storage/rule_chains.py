"""The last rule chain put in force from each source, kept so that "the chain in force before
stays in force" holds across restarts: when ``rules.file`` (or the cloud's root chain) is
refused at start, the last chain in force from that same source goes in force again
(rules/source.py).

Layout (a named database of the edge's LMDB environment, storage/env.py LATER_DB_NAMES: a store
of an earlier release gets it at its first writable open, a read-only open of such a store
finds nothing; every value in codec.py's checksummed envelope):
  rule_chains  b"file" | b"cloud"  -> {"schema": 1, "source", "name", "digest", "version",
                                       "since_ms", "entities": [RULE_CHAIN, RULE_CHAIN_METADATA]}
``source`` is the full source (``file:/etc/edge-sync/x.json`` or ``cloud``), ``since_ms`` when
that chain (that digest from that source) first went in force, ``entities`` the chain as the two
entity JSONs the cloud syncs (rules/chain.py ``to_entities``), which ``parse`` reads back.

Nothing here is read outside a transaction the caller holds (LmdbStore.read / write).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lmdb

from edge_sync.errors import StorageCorrupt
from edge_sync.storage import codec
from edge_sync.storage.env import LmdbStore

TABLE = "rule_chains"
SCHEMA = 1
FILE, CLOUD = "file", "cloud"


def kind_of(source: str) -> str:
    """``file`` for ``file:/...``, else ``cloud``: the key a source's record is kept under."""
    return FILE if source.startswith("file:") else CLOUD


@dataclass(frozen=True)
class KeptChain:
    """The last chain in force from one source."""

    source: str
    name: str
    digest: str
    version: int
    since_ms: int
    entities: list[Any]

    def as_record(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "source": self.source, "name": self.name,
                "digest": self.digest, "version": self.version, "since_ms": self.since_ms,
                "entities": self.entities}


class RuleChainStore:
    """The ``rule_chains`` table. On a read-only open of a store of an earlier release (no
    table) every read finds nothing."""

    def __init__(self, store: LmdbStore) -> None:
        self.present = TABLE in store.dbs
        self._db = store.dbs.get(TABLE)

    def get(self, txn: lmdb.Transaction, kind: str) -> KeptChain | None:
        """The last chain in force from ``kind`` (FILE or CLOUD); None when none was kept.
        StorageCorrupt when the record is damaged or of an unknown shape."""
        if self._db is None:
            return None
        raw = txn.get(kind.encode(), db=self._db)
        if raw is None:
            return None
        what = f"{TABLE}: {kind}"
        record = codec.unpack(raw, what)
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise StorageCorrupt(f"{what}: record of an unexpected shape")
        try:
            return KeptChain(source=str(record["source"]), name=str(record["name"]),
                             digest=str(record["digest"]), version=int(record["version"]),
                             since_ms=int(record["since_ms"]), entities=list(record["entities"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageCorrupt(f"{what}: record of an unexpected shape ({exc})") from exc

    def put(self, txn: lmdb.Transaction, kept: KeptChain) -> None:
        """Keep ``kept`` as the last chain in force from its source (replacing the one before).
        Unstorable when msgpack cannot hold it."""
        assert self._db is not None
        txn.put(kind_of(kept.source).encode(), codec.pack(kept.as_record()), db=self._db)

    def delete(self, txn: lmdb.Transaction, kind: str) -> None:
        if self._db is not None:
            txn.delete(kind.encode(), db=self._db)

    def max_version(self, txn: lmdb.Transaction) -> int:
        """The highest version kept (0: none): versions go on from there after a restart."""
        versions = []
        for kind in (FILE, CLOUD):
            try:
                kept = self.get(txn, kind)
            except StorageCorrupt:
                continue
            if kept is not None:
                versions.append(kept.version)
        return max(versions, default=0)
