"""The rule chain metrics (RuleCounters over a real RulesRuntime and Metrics registry, read back
through prometheus-client's own parser): which chain is in force (info, version, 0/1 gauge),
refusals by source, and per-node series that exist at 0 from a chain's install, carry the
chain's name and digest, never go backwards across a swap, and are kept for the chain in force
and the one before it only."""

from __future__ import annotations

import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge_sync.actors.rule_outcomes import SOURCES, RuleCounters, plan
from edge_sync.metrics import Metrics
from edge_sync.rules import nodes as n
from edge_sync.rules.chain import RuleChain, RuleChainMetaData, parse
from edge_sync.rules.engine import Failed, Visited
from edge_sync.rules.runtime import Refusal, RulesRuntime, digest
from edge_sync.storage.rule_chains import kind_of

T0 = 1_700_000_000_000
FILE = "file:/etc/edge-sync/rules.json"
PUSH = "nodes[1] 'Push'"


def chain(name: str = "Boiler ops", ttl: int = 0) -> tuple[RuleChain, RuleChainMetaData]:
    nodes = [{"type": n.SAVE_TIMESERIES, "name": "Save", "configuration": {"defaultTTL": ttl}},
             {"type": n.PUSH_TO_CLOUD, "name": "Push", "configuration": {"scope": "SERVER_SCOPE"}}]
    return parse({"ruleChain": {"name": name, "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "nodes": nodes,
        "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Success"}]}})


def cyclic() -> tuple[RuleChain, RuleChainMetaData]:
    _, meta = chain()
    doc: dict[str, Any] = {"ruleChain": {"name": "Cycle", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "nodes": [{"type": node.type, "name": node.name,
                                        "configuration": dict(node.configuration)}
                                       for node in meta.nodes],
        "connections": [{"fromIndex": a, "toIndex": b, "type": "Success"}
                        for a, b in ((0, 1), (1, 0))]}}
    return parse(doc)


def rule_samples(m: Metrics) -> dict[str, float]:
    """Every rule chain and node sample as 'name{label="v",...}' (labels sorted): value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            if s.name.startswith(("edge_sync_rule_chain", "edge_sync_rule_node")):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def nodes_of(name: str, dig: str, **values: tuple[float, float]) -> dict[str, float]:
    """The two series of each node: values = {node: (messages, failures)}."""
    out = {}
    for node, (messages, failures) in values.items():
        labels = f'chain="{name}",digest="{dig}",node="{node}"'
        out[f"edge_sync_rule_node_messages_total{{{labels}}}"] = messages
        out[f"edge_sync_rule_node_failures_total{{{labels}}}"] = failures
    return out


REFUSALS_NONE = {'edge_sync_rule_chain_refusals_total{source="cloud"}': 0,
                 'edge_sync_rule_chain_refusals_total{source="file"}': 0}


def test_without_a_chain_only_the_gauge_at_0_and_the_refusal_counters_at_0() -> None:
    m = Metrics()
    RuleCounters(RulesRuntime(), m)
    assert rule_samples(m) == {"edge_sync_rule_chain_in_force": 0, **REFUSALS_NONE}
    families = {f.name: f.type for f in text_string_to_metric_families(m.exposition().decode())}
    assert (families["edge_sync_rule_chain_refusals"], families["edge_sync_rule_chain_in_force"]) \
        == ("counter", "gauge")


def test_a_chain_in_force_has_its_info_version_and_every_nodes_series_at_0() -> None:
    m, rt = Metrics(), RulesRuntime()
    counters = RuleCounters(rt, m)
    rc, meta = chain()
    rt.install(rc, meta, FILE, T0)
    d = digest(rc, meta)
    assert rule_samples(m) == {
        f'edge_sync_rule_chain_info{{chain="Boiler ops",digest="{d}",source="file"}}': 1,
        "edge_sync_rule_chain_version": 1, "edge_sync_rule_chain_in_force": 1, **REFUSALS_NONE,
        **nodes_of("Boiler ops", d, **{"nodes[0] 'Save'": (0, 0), PUSH: (0, 0)})}

    plan(uuid.UUID(int=1), [Visited("nodes[0] 'Save'"), Visited(PUSH), Failed(PUSH, "boom")],
         counters, T0)
    assert rule_samples(m) == {
        f'edge_sync_rule_chain_info{{chain="Boiler ops",digest="{d}",source="file"}}': 1,
        "edge_sync_rule_chain_version": 1, "edge_sync_rule_chain_in_force": 1, **REFUSALS_NONE,
        **nodes_of("Boiler ops", d, **{"nodes[0] 'Save'": (1, 0), PUSH: (1, 1)})}


def test_a_swap_starts_new_series_and_keeps_only_the_chain_before() -> None:
    """Same node names in each chain: each chain's series are its own (a series never goes
    backwards); after the third chain the first one's series are gone."""
    m, rt = Metrics(), RulesRuntime()
    counters = RuleCounters(rt, m)
    chains = [chain(ttl=ttl) for ttl in (0, 10, 20)]
    digests = [digest(*c) for c in chains]
    assert len(set(digests)) == 3
    rt.install(*chains[0], FILE, T0)
    counters.visited(PUSH, 5)
    rt.install(*chains[1], "cloud", T0 + 1)
    counters.visited(PUSH, 2)
    counters.failed(PUSH)
    samples = rule_samples(m)
    assert {k: v for k, v in samples.items() if "rule_node" in k} == {
        **nodes_of("Boiler ops", digests[0], **{"nodes[0] 'Save'": (0, 0), PUSH: (5, 0)}),
        **nodes_of("Boiler ops", digests[1], **{"nodes[0] 'Save'": (0, 0), PUSH: (2, 1)})}
    assert samples[f'edge_sync_rule_chain_info{{chain="Boiler ops",digest="{digests[1]}",'
                   f'source="cloud"}}'] == 1
    assert samples["edge_sync_rule_chain_version"] == 2

    rt.install(*chains[2], "cloud", T0 + 2)
    assert {k: v for k, v in rule_samples(m).items() if "rule_node" in k} == {
        **nodes_of("Boiler ops", digests[1], **{"nodes[0] 'Save'": (0, 0), PUSH: (2, 1)}),
        **nodes_of("Boiler ops", digests[2], **{"nodes[0] 'Save'": (0, 0), PUSH: (0, 0)})}

    rt.install(*chains[1], "cloud", T0 + 3)  # back to a kept chain: its series go on
    counters.visited(PUSH)
    assert {k: v for k, v in rule_samples(m).items() if "rule_node" in k} == {
        **nodes_of("Boiler ops", digests[1], **{"nodes[0] 'Save'": (0, 0), PUSH: (3, 1)}),
        **nodes_of("Boiler ops", digests[2], **{"nodes[0] 'Save'": (0, 0), PUSH: (0, 0)})}
    assert rule_samples(m)["edge_sync_rule_chain_version"] == 4


def test_refusals_are_counted_by_source_and_the_chain_in_force_stays() -> None:
    m, rt = Metrics(), RulesRuntime()
    RuleCounters(rt, m)
    rc, meta = chain()
    rt.install(rc, meta, "cloud", T0)
    invalid = rt.install(*cyclic(), "cloud", T0 + 1)
    assert isinstance(invalid, Refusal)  # not counted until recorded, as the source does
    rt.refuse("cloud", invalid.problems, T0 + 1)
    rt.refuse(FILE, ["cannot read /etc/edge-sync/rules.json: No such file or directory"], T0 + 2)
    rt.refuse("cloud", ["RULE_CHAIN.name: missing"], T0 + 3)
    samples = rule_samples(m)
    assert {k: v for k, v in samples.items() if "rule_node" not in k} == {
        f'edge_sync_rule_chain_info{{chain="Boiler ops",digest="{digest(rc, meta)}",'
        f'source="cloud"}}': 1,
        "edge_sync_rule_chain_version": 1, "edge_sync_rule_chain_in_force": 1,
        'edge_sync_rule_chain_refusals_total{source="cloud"}': 2,
        'edge_sync_rule_chain_refusals_total{source="file"}': 1}


def test_a_cleared_chain_leaves_no_info_and_keeps_its_series() -> None:
    m, rt = Metrics(), RulesRuntime()
    counters = RuleCounters(rt, m)
    rc, meta = chain()
    rt.install(rc, meta, "cloud", T0)
    counters.visited(PUSH, 3)
    rt.clear("no root rule chain synced from the cloud")
    assert rule_samples(m) == {
        "edge_sync_rule_chain_in_force": 0, **REFUSALS_NONE,
        **nodes_of("Boiler ops", digest(rc, meta), **{"nodes[0] 'Save'": (0, 0), PUSH: (3, 0)})}


def test_a_chain_installed_before_the_counters_has_its_series() -> None:
    m, rt = Metrics(), RulesRuntime()
    rc, meta = chain()
    rt.install(rc, meta, FILE, T0)
    RuleCounters(rt, m)
    assert {k: v for k, v in rule_samples(m).items() if "rule_node" in k} == nodes_of(
        "Boiler ops", digest(rc, meta), **{"nodes[0] 'Save'": (0, 0), PUSH: (0, 0)})


def test_the_source_label_is_file_or_cloud() -> None:
    assert (kind_of(FILE), kind_of("cloud"), SOURCES) == ("file", "cloud", ("file", "cloud"))


def test_messages_lost_with_orphaned_windows_are_one_counter_from_the_start() -> None:
    m = Metrics()
    counters = RuleCounters(RulesRuntime(), m)
    assert m.value("edge_sync_rule_window_messages_dropped_total") == 0
    assert "edge_sync_rule_window_messages_dropped_total 0.0" in m.exposition().decode()
    counters.windows.dropped("'agg' (AggregateNode)", 1, 40)
    counters.windows.dropped("'dedup' (TbMsgDeduplicationNode)", 2, 7)
    assert m.value("edge_sync_rule_window_messages_dropped_total") == 47


def test_an_outstanding_refusal_is_one_gauge_per_source() -> None:
    m = Metrics()
    counters = RuleCounters(RulesRuntime(), m)
    source: dict[str, str | None] = {"v": None}
    counters.refusal_outstanding(lambda: source["v"])
    gauge = "edge_sync_rule_chain_refusal_outstanding"
    assert (m.value(gauge, source="file"), m.value(gauge, source="cloud")) == (0, 0)
    assert f'{gauge}{{source="file"}} 0.0' in m.exposition().decode()
    source["v"] = FILE
    assert (m.value(gauge, source="file"), m.value(gauge, source="cloud")) == (1, 0)
    source["v"] = "cloud"
    assert (m.value(gauge, source="file"), m.value(gauge, source="cloud")) == (0, 1)
