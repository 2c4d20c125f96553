"""The whole entity graph, both ways, with real processes: a real `edge-cloud serve` populated
with the issue's sizes (2,000 devices of 3 types, 200 assets, 300 relations with a cycle among
them, 20 dashboards plus one within 1 KiB of the edge's 4 MiB message limit, 5 rule chains
forwarding to each other, 10 users, customers, widget types, entity views, shared attributes),
all assigned to one edge, and a real `edge-sync run` linked to it (tests/helpers/graph_rig.py).

a. First connect: the edge asks for a full sync and its status records it completed; the edge's
   graph then equals the cloud's assignment exactly, entity by entity (parsed JSON, the same key
   sets), relations as (from, to, type, group); its apply log has every entity after its
   references and each once; nothing is held.
b. Outage with changes on both sides: the cloud stopped; on the cloud (the `edge-cloud` CLI,
   straight into its store) an asset created and assigned, a dashboard updated, a relation of
   the cycle deleted, a device added; on the edge (its admin API) an asset created, a relation
   added, a shared attribute key deleted. The cloud restarted: the edge's next sync is
   incremental (its status and its log say so), and both sides converge: the cloud holds the
   edge's asset, relation and deletion, the edge the cloud's changes, compared again entity by
   entity.
c. Half of the assets and devices unassigned on the cloud (its admin API, ThingsBoard's
   DELETE /api/edge/{edge}/{kind}/{id}): they and what depends on them (relations, entity views)
   are gone from the edge, the rest untouched, compared again; nothing was added twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cloud_proc import link_state
from tests.helpers.graph_rig import (
    EdgeView,
    GraphRig,
    Sizes,
    added_twice,
    graph_diff,
    order_violations,
    tid,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

DEADLINE_S = 120.0
SIZES = Sizes()  # the sizes


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[GraphRig]:
    r = GraphRig(tmp_path, routing_key="rk-graph-e2e", secret="secret-graph-e2e-7d1")
    yield r
    r.close()


def _sync_requests(rig: GraphRig) -> list[str]:
    """Each "accepted as edge ...; full|incremental sync requested: why" of the edge's log."""
    return [str(r["message"]) for r in rig.edge.log_records()
            if "sync requested" in str(r["message"]) and "accepted as edge" in str(r["message"])]


def _check_first_sync(rig: GraphRig, view: EdgeView) -> None:
    pop = rig.population
    assert pop is not None
    assert view.count("DEVICE") == SIZES.devices
    assert view.count("DEVICE_CREDENTIALS") == SIZES.devices
    assert view.count("ASSET") == SIZES.assets
    assert view.count("DASHBOARD") == SIZES.dashboards + 1
    assert view.count("RULE_CHAIN") == SIZES.rule_chains + 1  # and the cloud's edge root chain
    assert view.count("RULE_CHAIN_METADATA") == SIZES.rule_chains + 1
    assert view.count("USER") == SIZES.users
    assert view.count("DEVICE_PROFILE") == SIZES.device_types + 1  # and the default one
    assert view.count("ENTITY_VIEW") == SIZES.entity_views
    assert len(view.relations) == SIZES.relations
    assert set(pop.cycle) <= set(view.relations)
    assert pop.near_limit_dashboard is not None
    big = view.entities[("DASHBOARD", pop.near_limit_dashboard)]
    assert len(json.dumps(big)) > 4 * 1024 * 1024 - 2048
    assert view.held == []
    assert order_violations(view.log, view.entities) == []
    assert added_twice(view.log) == {}
    assert view.shared == pop.shared


def test_the_whole_graph_both_ways(rig: GraphRig) -> None:
    timings: dict[str, float] = {}

    def lap(what: str, since: float) -> None:
        timings[what] = round(time.monotonic() - since, 1)
        print(f"graph e2e: {what} took {timings[what]} s")

    gaps: list[str] = []  # reporting checks, asserted at the end so the later phases still run
    t0 = time.monotonic()
    pop = rig.populate(SIZES)
    lap("populate", t0)
    rig.cloud.start()
    agent = rig.make_agent().start()

    # -- a. the first connect: a full sync of everything -------------------------------------------
    t1 = time.monotonic()
    status = rig.wait_full_sync_completed(timeout=DEADLINE_S)
    cloud, edge = rig.wait_converged(timeout=DEADLINE_S)
    lap("first full sync", t1)
    assert status["sync"]["last_full_version"] is not None
    assert status["graph"]["held"] == {"count": 0, "first": []}
    requests = _sync_requests(rig)
    assert len(requests) == 1 and "full sync requested: first connect" in requests[0], requests
    _check_first_sync(rig, edge)
    assert graph_diff(cloud, edge) == []
    first_log_end = edge.log[-1].index

    # -- b. an outage, changes on both sides, an incremental sync -----------------------------------
    t2 = time.monotonic()
    rig.cloud.terminate()
    wait_until(lambda: link_state(agent) != "CONNECTED", timeout=DEADLINE_S,
               what="the edge to see the cloud gone")
    rk = rig.routing_key

    def cli(*args: str) -> Any:
        return json.loads(rig.cloud.cli(*args).stdout)

    new_asset = cli("entity", "create", "--type", "ASSET", "--name", "cloud-made-asset",
                    "--output", "json")
    assert cli("assign", "--edge", rk, new_asset["id"], "--output", "json")["changed"] is True
    dashboard = str(pop.dashboards[0])
    body = rig.cloud_view().entities[("DASHBOARD", uuid.UUID(dashboard))]
    body["title"] = "Dashboard 00 (renamed)"
    body["configuration"]["states"] = {"default": {"name": "Main", "root": True}}
    changed = rig.cloud.workdir / "dashboard.json"
    changed.write_text(json.dumps(body))
    cli("entity", "update", dashboard, "--json", str(changed), "--output", "json")
    gone = pop.cycle[0]
    cli("relation", "delete", "--from", gone[1], "--to", gone[3], "--type", gone[4],
        "--output", "json")
    new_device = cli("device", "create", "--edge", rk, "--name", "cloud-made-device",
                     "--type", pop.device_types[1], "--json")
    edge_asset = agent.admin("POST", "/api/assets", {"name": "edge-made-asset",
                                                     "type": "building", "label": "E"})
    assert edge_asset.status == 201, edge_asset.body
    edge_asset_id = uuid.UUID(edge_asset.json()["id"])
    target = pop.devices[5]
    rel = agent.admin("POST", "/api/relations", {"from": tid("ASSET", edge_asset_id),
                                                 "to": tid("DEVICE", target), "type": "Contains"})
    assert rel.status == 201, rel.body
    with_shared = next(iter(pop.shared))
    deleted = agent.admin("DELETE", f"/api/entities/{with_shared}/attributes/SHARED_SCOPE",
                          {"keys": ["mode"]})
    assert deleted.status == 200, deleted.body

    rig.cloud.start()
    cloud, edge = rig.wait_converged(edge_made=[edge_asset_id], timeout=DEADLINE_S)
    lap("outage and incremental sync", t2)
    requests = _sync_requests(rig)
    assert len(requests) == 2 and "incremental sync requested" in requests[1], requests
    last = rig.status()["sync"]["last"]  # status.py: "the last sync the link reports"
    if last is None or last.get("full") is not False:
        gaps.append(f"the edge's status does not report the incremental sync: sync.last={last}")
    # the cloud holds the edge's changes
    assert ("ASSET", edge_asset_id) in cloud.entities
    assert cloud.entities[("ASSET", edge_asset_id)]["name"] == "edge-made-asset"
    assert ("ASSET", str(edge_asset_id), "DEVICE", str(target), "Contains", "COMMON") \
        in cloud.relations
    assert cloud.shared[with_shared] == {k: v for k, v in pop.shared[with_shared].items()
                                         if k != "mode"}
    # the edge holds the cloud's changes
    assert edge.entities[("ASSET", uuid.UUID(new_asset["id"]))]["name"] == "cloud-made-asset"
    assert edge.entities[("DASHBOARD", uuid.UUID(dashboard))]["title"] == "Dashboard 00 (renamed)"
    assert gone not in edge.relations
    assert ("DEVICE", uuid.UUID(new_device["id"])) in edge.entities
    assert edge.shared[with_shared] == cloud.shared[with_shared]
    assert edge.shared == cloud.shared
    assert edge.held == []
    assert order_violations(edge.log, edge.entities) == []
    assert added_twice(edge.log) == {}
    # the incremental sync re-added nothing: only the changes are in the apply log since
    since = [(e.entity_type, e.action) for e in edge.log if e.index > first_log_end]
    assert sorted(since) == sorted([
        ("ASSET", "ADDED"),  # the edge's own
        ("RELATION", "ADDED"),  # the edge's own
        ("ASSET", "ADDED"),  # the cloud's
        ("DASHBOARD", "UPDATED"),
        ("RELATION", "DELETED"),
        ("DEVICE", "ADDED"), ("DEVICE_CREDENTIALS", "ADDED"),
    ]), since

    # -- c. half of the assets and devices unassigned on the cloud ----------------------------------
    t3 = time.monotonic()
    half_assets = pop.assets[::2]
    half_devices = pop.devices[::2]
    before = edge

    def unassign(kind_and_id: tuple[str, uuid.UUID]) -> Any:
        kind, entity_id = kind_and_id
        path = "asset" if kind == "ASSET" else "device"
        return rig.cloud.admin("DELETE", f"/api/edge/{rk}/{path}/{entity_id}")

    targets = [("ASSET", a) for a in half_assets] + [("DEVICE", d) for d in half_devices]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(unassign, targets))
    assert all(a["changed"] is True for a in answers)
    cloud, edge = rig.wait_converged(edge_made=[edge_asset_id], timeout=60)
    lap("unassign half", t3)
    gone_ids = set(half_assets) | set(half_devices)
    assert not any(entity_id in gone_ids for _, entity_id in edge.entities)
    views_gone = {v for v, (_, target_id) in pop.entity_views.items() if target_id in gone_ids}
    assert views_gone and not any(("ENTITY_VIEW", v) in edge.entities for v in views_gone)
    assert not any(k[1] in {str(i) for i in gone_ids} or k[3] in {str(i) for i in gone_ids}
                   for k in edge.relations)
    # the rest untouched: the same JSON as before the unassignment
    kept = {k: v for k, v in before.entities.items() if k[1] not in gone_ids
            and not (k[0] == "ENTITY_VIEW" and k[1] in views_gone)}
    assert {k: edge.entities.get(k) for k in kept} == kept
    assert edge.held == []
    assert added_twice(edge.log) == {}

    # -- d. a full sync of the converged edge changes nothing ---------------------------------------
    t4 = time.monotonic()
    log_end = edge.log[-1].index
    asked = int(time.time() * 1000)
    resp = agent.admin("POST", "/api/sync", {"full": True})
    assert resp.status == 202, resp.body
    rig.wait_full_sync_completed(after_ms=asked, timeout=DEADLINE_S)
    cloud, edge = rig.wait_converged(edge_made=[edge_asset_id], timeout=DEADLINE_S)
    lap("full sync again", t4)
    assert [e for e in edge.log if e.index > log_end] == []
    assert edge.held == []
    print(f"graph e2e timings (s): {timings}")
    assert gaps == []
