"""Where the rule chain in force comes from, and putting it in force.

Owns the choice of source and its log lines: a local file (``rules.file``) wins over the
cloud's root rule chain; with neither, no chain is in force and every accepted message goes to
the cloud as it came. A chain that cannot be read or validated is refused with every problem
logged, and the chain in force before stays in force. The cloud's root chain is the synced
RULE_CHAIN whose JSON says ``"root": true`` (ThingsBoard sets it for the edge's root chain),
with its RULE_CHAIN_METADATA; it is read again after every downlink that changes a rule chain.

"The chain in force before" holds across restarts: every chain put in force is kept in the
store as the last chain in force from its source (storage/rule_chains.py, one for ``rules.file``,
one for the cloud). At start, when the source's current chain is refused (or the file cannot be
read), the kept chain of that same source goes in force again and the ERROR line names it. With
``rules.file`` set and nothing kept to fall back on, the agent refuses to start (ConfigError).

Also what the status shows beside the runtime's snapshot: a refusal outstanding (the source's
current chain refused, an older chain or none in force), the file on disk when it is no longer
the chain in force (the file is read at start only), and the cloud's root chain while
``rules.file`` wins over it (logged once per change).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from edge_sync.api.events_query import iso_ms
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.errors import ConfigError, EdgeSyncError
from edge_sync.rules.chain import (
    RuleChain,
    RuleChainMetaData,
    parse,
    parse_entities,
    parse_file,
    to_entities,
)
from edge_sync.rules.runtime import ChainInForce, Refusal, RulesRuntime, digest
from edge_sync.rules.sandbox import ScriptLimits
from edge_sync.rules.validate import notes, validate
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.rule_chains import CLOUD, FILE, KeptChain, RuleChainStore, kind_of

_log = logger.bind(component="rules")

Parsed = tuple[RuleChain, RuleChainMetaData]


def file_source(path: Path) -> str:
    return f"file:{path}"


def read_chain_file(path: Path) -> Parsed | list[str]:
    """A chain file read and parsed (shape only); its problems when it cannot be read or
    parsed, each a line as ``edge-sync rules check`` prints them."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [f"{path}: {exc.strerror or exc}"]
    try:
        return parse_file(raw, str(path))
    except EdgeSyncError as exc:
        return [str(exc)]


def check_chain_file(path: Path, limits: ScriptLimits | None) -> tuple[Parsed, str] | list[str]:
    """What the agent does with ``rules.file`` at start, without a store: read, parse, validate
    (scripts compiled under ``limits``). The chain and its digest, or every problem."""
    found = read_chain_file(path)
    if isinstance(found, list):
        return found
    problems = [str(p) for p in validate(*found, limits)]
    return problems if problems else (found, digest(*found))


@dataclass(frozen=True)
class _Root:
    """The cloud's root chain as stored: its record id and name, its ThingsBoard version (when
    the cloud sends one), what identifies its metadata, and the chain parsed or why not."""

    id: str
    name: str
    tb_version: int | None
    meta_key: str
    chain_key: str
    parsed: Parsed | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Outstanding:
    """A refusal of the source's current chain while an older chain (or none) is in force."""

    refusal: Refusal
    still: str


class ChainSource:
    """Loads the chain in force into a RulesRuntime: at start, and when the cloud's rule chains
    change. Called from one thread at a time (the app at start, then the DownlinkActor);
    ``status`` from any thread (it reads what those calls left)."""

    def __init__(self, runtime: RulesRuntime, store: LmdbStore, file: Path | None, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.runtime = runtime
        self.store = store
        self.file = file
        self.clock = clock
        self._kept = RuleChainStore(store)
        self._outstanding: _Outstanding | None = None
        self._refused: tuple[str, str] | None = None  # the cloud root last refused: its
        # metadata and chain (_Root.meta_key, chain_key)
        self._shadow: dict[str, Any] | None = None  # the cloud root while rules.file wins
        self._disk: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    # -- at start ---------------------------------------------------------------------------

    def load(self) -> ChainInForce | Refusal | None:
        """At start: the file's chain when ``rules.file`` is set, else the cloud's root chain,
        else none; a refused one leaves the last chain in force from the same source (kept in
        the store) in force. Logs which chain is in force and from where. ConfigError when
        ``rules.file`` is refused and no chain from it was kept."""
        try:
            with self.store.read() as txn:
                self.runtime.resume_version(self._kept.max_version(txn))
        except EdgeSyncError as exc:
            _log.bind(error=str(exc)).warning("kept rule chains unreadable: {}", exc)
        if self.file is not None:
            result = self._load_file(self.file)
            self._shadow_check()
            return result
        return self.cloud_changed(at_start=True)

    def _load_file(self, path: Path) -> ChainInForce:
        source = file_source(path)
        found = read_chain_file(path)
        if isinstance(found, list):
            problems = found
        else:
            result = self._install(*found, source)
            if isinstance(result, ChainInForce):
                return result
            problems = list(result.problems)
        kept = self._restore(FILE)
        if not isinstance(kept, ChainInForce):
            because = ("no chain from rules.file was in force before to keep in force"
                       if kept is None else
                       f"the last chain in force from rules.file is refused too: {kept}")
            raise ConfigError(f"rules.file {path} refused: {'; '.join(problems)} ({because}; "
                              "edge-sync rules check names every problem)")
        refusal = self.runtime.refuse(source, problems, self.clock.now_ms())
        self._log_refusal(refusal, kept)
        return kept

    def _restore(self, kind: str) -> ChainInForce | str | None:
        """The last chain in force from ``kind`` put in force again (its version and since
        kept); None when none was kept; why not as text when it is refused now."""
        try:
            with self.store.read() as txn:
                kept = self._kept.get(txn, kind)
        except EdgeSyncError as exc:
            return f"it cannot be read from the store: {exc}"
        if kept is None:
            return None
        try:
            chain, meta = parse(kept.entities)
        except EdgeSyncError as exc:
            return f"{kept.name!r} (digest {kept.digest}): {exc}"
        result = self.runtime.install(chain, meta, kept.source, self.clock.now_ms(),
                                      kept=(kept.digest, kept.version, kept.since_ms))
        if isinstance(result, Refusal):
            return f"{kept.name!r} (digest {kept.digest}): {'; '.join(result.problems)}"
        return result

    # -- the cloud's root chain -------------------------------------------------------------

    def cloud_changed(self, *, at_start: bool = False) -> ChainInForce | Refusal | None:
        """A downlink changed a rule chain (or the agent starts without a file): the cloud's
        root chain goes in force, unless a file is in force (it wins: the cloud's root chain
        is only shown, and logged once per change)."""
        if self.file is not None:
            self._shadow_check()
            return self.runtime.current()
        found = self._cloud_root()
        current = self.runtime.current()
        if isinstance(found, str):
            removed = found.startswith("no root")
            refused = self._outstanding is not None \
                and kind_of(self._outstanding.refusal.source) == CLOUD
            if removed:  # a refusal of the cloud's root chain no longer holds: it is gone
                self._refused = None
                if refused:
                    self._outstanding = None
            if current is not None and current.source == CLOUD and removed:
                self.runtime.clear(found)
                self._forget(CLOUD)
                _log.bind(source=CLOUD).warning("rule chain no longer in force: {}", found)
                return None
            if removed and refused and not at_start:
                _log.bind(source=CLOUD).info(
                    "the refused cloud root rule chain is gone ({}): the refusal no longer "
                    "holds; {}", found, _still(current))
                return current
            if at_start and not found.startswith("no root"):
                kept = self._restore(CLOUD)
                if isinstance(kept, ChainInForce):
                    _log.bind(source=CLOUD, chain=kept.chain.name).info(
                        "rule chain {!r} stays in force: {}", kept.chain.name,
                        f"{found} ({_describe(kept)})")
                    return kept
            if at_start:
                if found.startswith("no root"):  # the cloud removed it: nothing to fall back on
                    self._forget(CLOUD)
                _log.bind(source=CLOUD).info(
                    "no rule chain in force ({}): every accepted message goes to the cloud as it "
                    "came", found)
            elif current is not None:
                _log.bind(source=CLOUD, chain=current.chain.name).info(
                    "rule chain {!r} stays in force: {}", current.chain.name, found)
            return current
        if not at_start and self._refused == (found.meta_key, found.chain_key):
            return current  # the root chain refused before, unchanged: another chain changed
        if found.parsed is not None:
            result = self._install(*found.parsed, CLOUD)
            if isinstance(result, ChainInForce):
                self._refused = None
                return result
            problems: tuple[str, ...] = result.problems
        else:
            problems = found.problems
        if not at_start and self._refused is not None and self._refused[0] == found.meta_key:
            # the metadata refused before, unchanged: no new refusal. The root RULE_CHAIN
            # changed (still refused with it): its new metadata is on its way. ThingsBoard
            # Edge asks for a chain's metadata after every RULE_CHAIN update
            # (RuleChainCloudProcessor.processRuleChainMsgFromCloud queues a
            # RULE_CHAIN_METADATA_REQUEST), and ThingsBoard sends RULE_CHAIN before its
            # RULE_CHAIN_METADATA (RuleChainEdgeProcessor.convertRuleChainEventToDownlink; the
            # edge's DefaultDownlinkMessageService.processDownlinkMsg applies them in that
            # order): the metadata refused before is about to be replaced, not refused again
            self._refused = (found.meta_key, found.chain_key)
            _log.bind(source=CLOUD, chain=found.name).info(
                "cloud root rule chain {!r} changed; its metadata, refused before, is "
                "unchanged: waiting for new metadata ({})", found.name, _still(current))
            return current
        self._refused = (found.meta_key, found.chain_key)
        kept = self._restore(CLOUD) if at_start and current is None else current
        refusal = self.runtime.refuse(CLOUD, list(problems), self.clock.now_ms())
        self._log_refusal(refusal, kept if isinstance(kept, ChainInForce) else None,
                          kept_refused=kept if isinstance(kept, str) else None)
        return refusal

    def _cloud_root(self) -> _Root | str:
        """The root chain with its metadata; the reason as text when there is none yet."""
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
        version = doc.get("version")
        tb_version = version if isinstance(version, int) and not isinstance(version, bool) \
            else None
        meta_key = f"{rec.id}:{hashlib.sha256(meta_rec.json.encode()).hexdigest()}"
        chain_key = hashlib.sha256(rec.json.encode()).hexdigest()
        try:
            parsed = parse_entities(doc, json.loads(meta_rec.json))
        except (EdgeSyncError, ValueError) as exc:
            return _Root(str(rec.id), rec.name, tb_version, meta_key, chain_key, None,
                         (str(exc),))
        return _Root(str(rec.id), rec.name, tb_version, meta_key, chain_key, parsed)

    def _shadow_check(self) -> None:
        """While ``rules.file`` wins: the cloud's root chain, shown in the status as shadowed
        and logged at INFO once per change (another chain, or the same one changed)."""
        try:
            found = self._cloud_root()
        except EdgeSyncError as exc:
            _log.bind(error=str(exc)).warning("cloud root rule chain unreadable: {}", exc)
            return
        if isinstance(found, str):
            self._shadow = None
            return
        fingerprint = digest(*found.parsed) if found.parsed is not None else None
        key = (found.id, fingerprint or found.meta_key)
        if self._shadow is not None and self._shadow["key"] == key:
            return
        now = self.clock.now_ms()
        self._shadow = {"key": key, "chain": found.name, "id": found.id,
                        "version": found.tb_version, "digest": fingerprint,
                        "problems": list(found.problems), "received_ms": now}
        _log.bind(source=CLOUD, chain=found.name, version=found.tb_version,
                  digest=fingerprint).info(
            "cloud root rule chain {!r} ({}) received; not in force: rules.file wins",
            found.name, _version_digest(found.tb_version, fingerprint))

    # -- putting in force -------------------------------------------------------------------

    def _install(self, chain: RuleChain, meta: RuleChainMetaData,
                 source: str) -> ChainInForce | Refusal:
        """Validate and put in force; on success logged, kept in the store and any refusal of
        this source settled. A refusal is returned unlogged (the caller says what stays)."""
        kind = kind_of(source)
        try:
            with self.store.read() as txn:
                kept = self._kept.get(txn, kind)
        except EdgeSyncError:
            kept = None
        before = self.runtime.current()
        result = self.runtime.install(
            chain, meta, source, self.clock.now_ms(),
            kept=None if kept is None else (kept.digest, kept.version, kept.since_ms))
        if isinstance(result, Refusal):
            return result
        if self._outstanding is not None and kind_of(self._outstanding.refusal.source) == kind:
            self._outstanding = None
        if before is None or before.version != result.version:
            _log.bind(chain=chain.name, source=source, version=result.version,
                      digest=result.digest, nodes=len(meta.nodes)).info(
                "rule chain {!r} in force from {} (version {}, {} nodes, digest {})",
                chain.name, source, result.version, len(meta.nodes), result.digest)
            for note in notes(meta):
                _log.bind(chain=chain.name, source=source).warning(
                    "rule chain {!r}: {}", chain.name, note)
        if kept is None or (kept.digest, kept.version, kept.source) != \
                (result.digest, result.version, result.source):
            self._keep(result)
        return result

    def _keep(self, result: ChainInForce) -> None:
        kept = KeptChain(source=result.source, name=result.chain.name, digest=result.digest,
                         version=result.version, since_ms=result.in_force_since_ms,
                         entities=to_entities(result.chain, result.meta))
        try:
            self.store.write(lambda txn: self._kept.put(txn, kept), maintenance=True)
        except EdgeSyncError as exc:
            _log.bind(source=result.source, error=str(exc)).warning(
                "rule chain {!r} is in force but not kept in the store: after a restart a "
                "refused chain from {} would leave no chain to fall back on: {}",
                result.chain.name, result.source, exc)

    def _forget(self, kind: str) -> None:
        """The last chain in force from ``kind`` is no longer one to fall back on."""
        try:
            with self.store.read() as txn:
                if self._kept.get(txn, kind) is None:
                    return
            self.store.write(lambda txn: self._kept.delete(txn, kind), maintenance=True)
        except EdgeSyncError as exc:
            _log.bind(error=str(exc)).warning("kept rule chain not removed: {}", exc)

    def _log_refusal(self, refusal: Refusal, kept: ChainInForce | None, *,
                     kept_refused: str | None = None) -> None:
        still = _still(kept)
        if kept_refused is not None:
            still += f"; the last chain in force from it is refused too: {kept_refused}"
        self._outstanding = _Outstanding(refusal, still)
        _log.bind(source=refusal.source, problems=len(refusal.problems)).error(
            "rule chain from {} refused ({}): {}", refusal.source, still,
            "; ".join(refusal.problems))

    # -- status -----------------------------------------------------------------------------

    def outstanding_source(self) -> str | None:
        """The source (``file:/path`` or ``cloud``) whose current chain is refused while an
        older chain or none is in force, else None (for /metrics)."""
        outstanding = self._outstanding
        return None if outstanding is None else outstanding.refusal.source

    def status(self) -> dict[str, Any]:
        """The runtime's snapshot, with times as ISO 8601 UTC too, and: ``file`` (rules.file
        on disk against the chain in force), ``shadowed`` (the cloud's root chain while the
        file wins), ``health`` (degraded, with the reasons, while a refusal is outstanding or
        the file on disk is not the chain in force)."""
        out = self.runtime.snapshot()
        out["since"] = iso_ms(out["since_ms"]) if out.get("since_ms") is not None else None
        refusal = out.get("last_refusal")
        outstanding = self._outstanding
        if refusal is not None:
            refusal["at"] = iso_ms(refusal["at_ms"])
            refusal["outstanding"] = outstanding is not None \
                and outstanding.refusal.at_ms == refusal["at_ms"] \
                and outstanding.refusal.source == refusal["source"]
            refusal["still"] = outstanding.still if refusal["outstanding"] and outstanding \
                else None
        reasons = []
        if outstanding is not None:
            reasons.append(f"rule chain from {outstanding.refusal.source} refused at "
                           f"{iso_ms(outstanding.refusal.at_ms)} ({outstanding.still})")
        disk = self._disk_check(out)
        out["file"] = disk
        if disk is not None and not disk["matches"]:
            reasons.append(disk["note"])
        shadow = self._shadow
        out["shadowed"] = None if shadow is None else {
            **{k: v for k, v in shadow.items() if k != "key"},
            "received": iso_ms(shadow["received_ms"])}
        out["health"] = {"level": "degraded" if reasons else "healthy", "reasons": reasons}
        return out

    def _disk_check(self, snapshot: dict[str, Any]) -> dict[str, Any] | None:
        """``rules.file`` as it is on disk now against the chain in force: its digest (read
        again only when the file's size, mtime or inode changed), whether it matches."""
        if self.file is None:
            return None
        path = self.file
        in_force = snapshot.get("digest") if str(snapshot.get("source") or "").startswith(
            "file:") else None
        try:
            st = os.stat(path)
        except OSError as exc:
            found: dict[str, Any] = {"digest": None, "problem": f"{path}: {exc.strerror or exc}"}
        else:
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if self._disk is not None and self._disk[0] == stamp:
                found = self._disk[1]
            else:
                parsed = read_chain_file(path)
                found = ({"digest": None, "problem": "; ".join(parsed)}
                         if isinstance(parsed, list) else
                         {"digest": digest(*parsed), "problem": None})
                self._disk = (stamp, found)
        matches = found["digest"] is not None and found["digest"] == in_force
        if matches:
            note = None
        elif found["digest"] is None:
            note = f"rules.file {path} on disk is not the chain in force: {found['problem']}"
        else:
            note = (f"rules.file {path} on disk (digest {found['digest']}) is not the chain in "
                    f"force (digest {in_force}): the file is read at start only")
        return {"path": str(path), "digest": found["digest"], "matches": matches,
                "note": note}


def _describe(chain: ChainInForce) -> str:
    return (f"version {chain.version}, digest {chain.digest}, in force since "
            f"{iso_ms(chain.in_force_since_ms)}")


def _still(kept: ChainInForce | None) -> str:
    if kept is None:
        return "no rule chain in force"
    return f"rule chain {kept.chain.name!r} from {kept.source} stays in force: {_describe(kept)}"


def _version_digest(version: int | None, fingerprint: str | None) -> str:
    parts = ([f"version {version}"] if version is not None else []) + \
        [f"digest {fingerprint}" if fingerprint is not None else "does not parse"]
    return ", ".join(parts)
