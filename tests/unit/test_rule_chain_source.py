"""ChainSource at start against a real LMDB store holding the cloud's root chain as the link
stores it (GraphStore entities RULE_CHAIN and RULE_CHAIN_METADATA): the chain in force is kept
as the last one from the cloud, and a new ChainSource on the same store (a restart) puts it in
force again when the root chain has no metadata yet, or is refused; a root chain the cloud
removed leaves nothing to fall back on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from edge_sync.api.events_query import iso_ms
from edge_sync.clock import Clock
from edge_sync.rules.runtime import ChainInForce, Refusal, RulesRuntime
from edge_sync.rules.source import ChainSource
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.rule_chains import CLOUD, RuleChainStore
from tests.helpers.log_capture import log_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
T0 = 1_796_544_000_000
ROOT = uuid.UUID("c8436fe3-f14b-11f1-8064-d78de962460b")
NEW_ROOT = uuid.UUID("d8436fe3-f14b-11f1-8064-d78de962460b")


class Fixed(Clock):
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms


def put_root(store: LmdbStore, chain_id: uuid.UUID, name: str, export: Path | None,
             now_ms: int, *, root: bool = True) -> None:
    """The root RULE_CHAIN and (``export``'s) metadata as the link stores them."""
    graph = GraphStore(store)
    typed = {"entityType": "RULE_CHAIN", "id": str(chain_id)}

    def write(txn: Any) -> None:
        graph.put_entity(txn, "RULE_CHAIN", chain_id, json.dumps(
            {"id": typed, "name": name, "type": "EDGE", "root": root}), now_ms=now_ms)
        if export is not None:
            meta = json.loads(export.read_text())["metadata"]
            graph.put_entity(txn, "RULE_CHAIN_METADATA", chain_id,
                             json.dumps({**meta, "ruleChainId": typed}), now_ms=now_ms)

    store.write(write)


def start(store: LmdbStore, ms: int) -> tuple[ChainSource, Any]:
    source = ChainSource(RulesRuntime(), store, None, clock=Fixed(ms))
    return source, source.load()


def test_a_restart_keeps_the_last_cloud_chain_when_the_root_has_no_metadata_or_is_refused(
        tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=32)
    try:
        put_root(store, ROOT, "Edge Root Rule Chain", FIXTURES / "selective_sync.json", T0)
        _, first = start(store, T0)
        assert isinstance(first, ChainInForce) and (first.source, first.version) == (CLOUD, 1)
        with store.read() as txn:
            kept = RuleChainStore(store).get(txn, CLOUD)
        assert kept is not None
        assert (kept.name, kept.digest, kept.version, kept.since_ms) == (
            "Edge Root Rule Chain", first.digest, 1, T0)

        # another chain became root, its metadata not here yet: the kept chain stays in force
        put_root(store, ROOT, "Edge Root Rule Chain", None, T0 + 1, root=False)
        put_root(store, NEW_ROOT, "New root", None, T0 + 2)
        with log_records() as records:
            _, again = start(store, T0 + 10)
        assert isinstance(again, ChainInForce)
        assert (again.chain.name, again.version, again.digest, again.in_force_since_ms,
                again.loaded_at_ms) == ("Edge Root Rule Chain", 1, first.digest, T0, T0 + 10)
        assert [r["message"] for r in records if r["extra"].get("component") == "rules"] == [
            f"rule chain 'Edge Root Rule Chain' stays in force: root rule chain 'New root' "
            f"({NEW_ROOT}) has no metadata yet (version 1, digest {first.digest}, in force "
            f"since {iso_ms(T0)})"]

        # its metadata comes, refused: after a restart the kept chain still stays in force
        put_root(store, NEW_ROOT, "New root", FIXTURES / "unknown_node_type.json", T0 + 20)
        with log_records() as records:
            source, result = start(store, T0 + 30)
        assert isinstance(result, Refusal)
        in_force = source.runtime.current()
        assert in_force is not None
        assert (in_force.chain.name, in_force.version, in_force.digest) == (
            "Edge Root Rule Chain", 1, first.digest)
        errors = [r["message"] for r in records if r["level"].name == "ERROR"]
        assert errors == [
            f"rule chain from cloud refused (rule chain 'Edge Root Rule Chain' from cloud stays "
            f"in force: version 1, digest {first.digest}, in force since {iso_ms(T0)}): "
            + "; ".join(result.problems)]
        status = source.status()
        assert (status["last_refusal"]["outstanding"], status["health"]["level"]) == (
            True, "degraded")

        # the cloud removed its root chains: no chain, and nothing kept to fall back on
        store.write(lambda txn: GraphStore(store).delete_entity(
            txn, "RULE_CHAIN", NEW_ROOT, now_ms=T0 + 40))
        _, none = start(store, T0 + 50)
        assert none is None
        with store.read() as txn:
            assert RuleChainStore(store).get(txn, CLOUD) is None
    finally:
        store.close()


def test_a_refused_root_chain_the_cloud_removes_is_no_longer_outstanding(
        tmp_path: Path) -> None:
    """The cloud's first root chain is refused (no chain in force), then the cloud removes it:
    the refusal no longer holds (no alert, health back), though no chain is in force."""
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=32)
    try:
        clock = Fixed(T0)
        source = ChainSource(RulesRuntime(), store, None, clock=clock)
        assert source.load() is None
        put_root(store, ROOT, "Edge Root Rule Chain", FIXTURES / "unknown_node_type.json",
                 T0 + 10)
        clock.ms = T0 + 10
        assert isinstance(source.cloud_changed(), Refusal)
        assert (source.outstanding_source(), source.status()["health"]["level"]) == (
            CLOUD, "degraded")

        store.write(lambda txn: GraphStore(store).delete_entity(
            txn, "RULE_CHAIN", ROOT, now_ms=T0 + 20))
        clock.ms = T0 + 20
        with log_records() as records:
            assert source.cloud_changed() is None
        assert [(r["level"].name, r["message"]) for r in records
                if r["extra"].get("component") == "rules"] == [
            ("INFO", "the refused cloud root rule chain is gone (no root rule chain synced from "
                     "the cloud): the refusal no longer holds; no rule chain in force")]
        status = source.status()
        assert (source.outstanding_source(), status["health"], status["last_refusal"]["at_ms"],
                status["last_refusal"]["outstanding"]) == (
            None, {"level": "healthy", "reasons": []}, T0 + 10, False)

        # the same chain sent again is a new refusal, not one "refused before, unchanged"
        put_root(store, ROOT, "Edge Root Rule Chain", FIXTURES / "unknown_node_type.json",
                 T0 + 30)
        clock.ms = T0 + 30
        assert isinstance(source.cloud_changed(), Refusal)
        assert (source.outstanding_source(), source.status()["last_refusal"]["at_ms"]) == (
            CLOUD, T0 + 30)
    finally:
        store.close()


def test_a_downlink_of_another_chain_while_the_root_is_refused_changes_no_refusal(
        tmp_path: Path) -> None:
    """The refusal the status shows stays the one logged (its time, what stays in force, its
    health reason); nothing is validated or logged again."""
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=32)
    try:
        clock = Fixed(T0)
        runtime = RulesRuntime()
        source = ChainSource(runtime, store, None, clock=clock)
        put_root(store, ROOT, "Root", FIXTURES / "selective_sync.json", T0)
        first = source.load()
        assert isinstance(first, ChainInForce)
        clock.ms = T0 + 1000
        put_root(store, ROOT, "Root", FIXTURES / "unknown_node_type.json", T0 + 1000)
        refused = source.cloud_changed()
        assert isinstance(refused, Refusal)
        before = source.status()
        still = (f"rule chain 'Root' from cloud stays in force: version 1, digest "
                 f"{first.digest}, in force since {iso_ms(T0)}")
        assert (before["last_refusal"]["at_ms"], before["last_refusal"]["outstanding"],
                before["last_refusal"]["still"]) == (T0 + 1000, True, still)

        clock.ms = T0 + 2000
        put_root(store, uuid.uuid4(), "Other", None, T0 + 2000, root=False)
        with log_records() as records:
            assert source.cloud_changed() is first
        assert [r["message"] for r in records if r["extra"].get("component") == "rules"] == []
        assert source.status() == before
        assert runtime.last_refusal == refused
    finally:
        store.close()


def test_a_listener_that_raises_does_not_stop_the_chain_from_being_kept(
        tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=32)
    try:
        runtime = RulesRuntime()

        def broken(event: ChainInForce | Refusal | None) -> None:
            raise RuntimeError("series not made")

        runtime.listen(broken)
        put_root(store, ROOT, "Root", FIXTURES / "selective_sync.json", T0)
        with log_records() as records:
            result = ChainSource(runtime, store, None, clock=Fixed(T0)).load()
        assert isinstance(result, ChainInForce)
        assert [(r["level"].name, r["message"]) for r in records
                if r["extra"].get("component") == "rules"] == [
            ("ERROR", "rule chain listener failed on ChainInForce: RuntimeError: series not made"),
            ("INFO", f"rule chain 'Root' in force from cloud (version 1, 3 nodes, digest "
                     f"{result.digest})")]
        with store.read() as txn:
            kept = RuleChainStore(store).get(txn, CLOUD)
        assert kept is not None and (kept.digest, kept.version) == (result.digest, 1)
    finally:
        store.close()
