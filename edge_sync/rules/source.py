"""Where the rule chain in force comes from, and putting it in force.

Owns the choice of source and its log lines: a local file (``rules.file``) wins over the
cloud's root rule chain; with neither, no chain is in force and every accepted message goes to
the cloud as it came. A chain that cannot be read or validated is refused with every problem
logged, and the chain in force before stays in force. The cloud's root chain is the synced
RULE_CHAIN whose JSON says ``"root": true`` (ThingsBoard sets it for the edge's root chain),
with its RULE_CHAIN_METADATA; it is read again after every downlink that changes a rule chain.
"""

from __future__ import annotations

import json
from pathlib import Path

from loguru import logger

from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.errors import EdgeSyncError
from edge_sync.rules.chain import RuleChain, RuleChainMetaData, parse_entities, parse_file
from edge_sync.rules.runtime import ChainInForce, Refusal, RulesRuntime
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore

_log = logger.bind(component="rules")

CLOUD = "cloud"


def file_source(path: Path) -> str:
    return f"file:{path}"


class ChainSource:
    """Loads the chain in force into a RulesRuntime: at start, and when the cloud's rule chains
    change. Called from one thread at a time (the app at start, then the DownlinkActor)."""

    def __init__(self, runtime: RulesRuntime, store: LmdbStore, file: Path | None, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.runtime = runtime
        self.store = store
        self.file = file
        self.clock = clock

    def load(self) -> ChainInForce | Refusal | None:
        """At start: the file's chain when ``rules.file`` is set, else the cloud's root chain,
        else none. Logs which chain is in force and from where."""
        if self.file is not None:
            return self._load_file(self.file)
        return self.cloud_changed(at_start=True)

    def _load_file(self, path: Path) -> ChainInForce | Refusal:
        source = file_source(path)
        try:
            chain, meta = parse_file(path.read_bytes(), str(path))
        except OSError as exc:
            return self._refuse(source, [f"cannot read {path}: {exc.strerror or exc}"])
        except EdgeSyncError as exc:
            return self._refuse(source, [str(exc)])
        return self._install(chain, meta, source)

    def cloud_changed(self, *, at_start: bool = False) -> ChainInForce | Refusal | None:
        """A downlink changed a rule chain (or the agent starts without a file): the cloud's
        root chain goes in force, unless a file is in force (it wins: nothing changes)."""
        if self.file is not None:
            _log.debug("a cloud rule chain changed; rules.file is in force and wins")
            return self.runtime.current()
        found = self._cloud_root()
        if isinstance(found, str):
            current = self.runtime.current()
            if current is not None and current.source == CLOUD and found.startswith("no root"):
                self.runtime.clear(found)
                _log.bind(source=CLOUD).warning("rule chain no longer in force: {}", found)
                return None
            if at_start:
                _log.bind(source=CLOUD).info(
                    "no rule chain in force ({}): every accepted message goes to the cloud as it "
                    "came", found)
            elif current is not None:
                _log.bind(source=CLOUD, chain=current.chain.name).info(
                    "rule chain {!r} stays in force: {}", current.chain.name, found)
            return current
        if isinstance(found, Refusal):
            return found
        chain, meta = found
        return self._install(chain, meta, CLOUD)

    def _cloud_root(self) -> tuple[RuleChain, RuleChainMetaData] | Refusal | str:
        """The root chain and its metadata; a Refusal when they do not parse; the reason as
        text when there is none yet."""
        graph = GraphStore(self.store)
        with self.store.read() as txn:
            roots = []
            for rec in graph.entities(txn, entity_type="RULE_CHAIN"):
                try:
                    doc = json.loads(rec.json)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("root") is True:
                    roots.append((rec, doc))
            if not roots:
                return "no root rule chain synced from the cloud"
            rec, doc = max(roots, key=lambda r: r[0].updated_ms)
            meta_rec = graph.entity(txn, rec.id, "RULE_CHAIN_METADATA")
        if meta_rec is None:
            return f"root rule chain {rec.name!r} ({rec.id}) has no metadata yet"
        try:
            return parse_entities(doc, json.loads(meta_rec.json))
        except (EdgeSyncError, ValueError) as exc:
            return self._refuse(CLOUD, [str(exc)])

    def _install(self, chain: RuleChain, meta: RuleChainMetaData,
                 source: str) -> ChainInForce | Refusal:
        before = self.runtime.current()
        result = self.runtime.install(chain, meta, source, self.clock.now_ms())
        if isinstance(result, Refusal):
            self._log_refusal(result, before)
            return result
        if before is None or before.version != result.version:
            _log.bind(chain=chain.name, source=source, version=result.version,
                      digest=result.digest, nodes=len(meta.nodes)).info(
                "rule chain {!r} in force from {} (version {}, {} nodes, digest {})",
                chain.name, source, result.version, len(meta.nodes), result.digest)
        return result

    def _refuse(self, source: str, problems: list[str]) -> Refusal:
        refusal = self.runtime.refuse(source, problems, self.clock.now_ms())
        self._log_refusal(refusal, self.runtime.current())
        return refusal

    @staticmethod
    def _log_refusal(refusal: Refusal, kept: ChainInForce | None) -> None:
        still = (f"rule chain {kept.chain.name!r} from {kept.source} stays in force"
                 if kept is not None else "no rule chain in force")
        _log.bind(source=refusal.source, problems=len(refusal.problems)).error(
            "rule chain from {} refused ({}): {}", refusal.source, still,
            "; ".join(refusal.problems))
