"""Chaos: the edge killed with SIGKILL in the middle of a full sync of the whole entity graph.

A real `edge-cloud serve` populated with the issue's sizes (tests/helpers/graph_rig.py
ISSUE_PLANT, bench/graph_population.py's plant: 2,000 devices, 200 assets, 300 relations with a
cycle, 20 dashboards one close to the 4 MiB limit, rule chains, users, entity views, ...) and a
real `edge-sync run` that connects for the first time. Once part of the graph is applied (the
edge's store counted, read-only) and the sync is still under way, the edge is killed (SIGKILL)
and started again on the same data folder:

- the store says the full sync did not complete, and the next connect asks for a full sync
  again, saying why;
- the edge converges: its graph equals the cloud's assignment entity by entity, relations as
  (from, to, type, group), nothing held;
- nothing was applied twice: across both runs the apply log has exactly one ADDED per entity
  and relation and nothing else (an entity the second sync sends again unchanged is not
  logged), every entity after its references.

With --soak: ten times the population (20,000 devices, about 42,000 entities and 3,000
relations) and five kills, at a tenth, 30, 50, 70 and 90 % of the graph, each restart's sync
interrupted again until the last completes (about 45 s on the 2-core development machine).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.graph_rig import (
    ISSUE_PLANT,
    GraphRig,
    added_twice,
    edge_progress,
    order_violations,
    scaled,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

DEADLINE_S = 180.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[GraphRig]:
    r = GraphRig(tmp_path, routing_key="rk-graph-kill9", secret="secret-graph-kill9-a4e")
    yield r
    r.close()


def _first_sync_request_of_each_run(rig: GraphRig) -> list[str]:
    """Per start of the edge, its first "accepted as edge ...; <mode> sync requested: <why>"."""
    out = []
    for path in rig.edge.stderr_paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                message = str(json.loads(line).get("message", ""))
                if "accepted as edge" in message and "sync requested" in message:
                    out.append(message)
                    break
    return out


def test_kill9_during_a_full_sync_then_a_full_sync_again_applies_nothing_twice(
        rig: GraphRig, soak: bool) -> None:
    spec = scaled(ISSUE_PLANT, 10) if soak else ISSUE_PLANT
    kill_at = (0.1, 0.3, 0.5, 0.7, 0.9) if soak else (0.3,)
    pop = rig.populate(spec)
    rig.cloud.start()
    # what the edge will hold once synced: every entity the cloud assigns (credentials included)
    total = len(rig.cloud_view().entities)
    agent = rig.make_agent()
    started = time.monotonic()
    agent.start()
    for n, fraction in enumerate(kill_at, start=1):
        def mid_sync(fraction: float = fraction) -> bool:
            count, sync = edge_progress(agent.data_dir)
            return sync.in_progress and count >= fraction * total

        wait_until(mid_sync, timeout=DEADLINE_S, what=f"{fraction:.0%} of the graph applied",
                   poll=0.01, show=lambda: edge_progress(agent.data_dir))
        agent.kill9()
        count, sync = edge_progress(agent.data_dir)
        assert sync.in_progress, "killed too late: the full sync had completed"
        assert sync.completed_ms is None
        assert fraction * total <= count < total, (count, total)
        assert sync.generation == n
        agent.start()

    rig.wait_full_sync_completed(timeout=DEADLINE_S)
    cloud, edge = rig.wait_converged(timeout=DEADLINE_S)
    took = time.monotonic() - started
    requests = _first_sync_request_of_each_run(rig)
    assert len(requests) == len(kill_at) + 1, requests
    assert "full sync requested: first connect" in requests[0], requests
    for line in requests[1:]:
        assert "full sync requested: the previous full sync did not complete" in line, line
    assert edge.sync.generation == len(kill_at) + 1
    assert not edge.sync.in_progress
    assert edge.held == []
    assert len(edge.entities) == total
    assert edge.shared == pop.shared
    # one ADDED per entity and relation over every run, nothing else
    assert added_twice(edge.log) == {}
    assert [e for e in edge.log if e.action != "ADDED"] == []
    added = {(e.entity_type, e.id) for e in edge.log}
    assert len(added) == len(cloud.entities) + len(cloud.relations)
    assert order_violations(edge.log, edge.entities) == []
    print(f"graph kill -9: {len(kill_at)} kill(s), {total} entities and {len(cloud.relations)} "
          f"relations converged {took:.1f} s after the first start")
