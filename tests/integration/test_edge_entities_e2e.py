"""Edge-made graph changes reach the reference cloud (`edge-cloud serve` and `edge-sync run`,
real processes): the asset, its relation, its update, the key deletes and the deletes are
applied once each, in the edge's seq order, none dead-lettered, and the cloud's graph then
holds (or no longer holds) what the edge made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc, link_env, wait_connected, wait_drained


def test_edge_made_changes_are_applied_by_the_reference_cloud(tmp_path: Path,
                                                              procs: Any) -> None:
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("plant-1", "rk-1", "secret-1")
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, "rk-1", "secret-1"))).start()
    wait_connected(agent)
    asset = agent.admin("POST", "/api/assets", {"name": "line-1", "type": "line"}).json()["id"]
    device, token = agent.create_device("pump-1")
    assert agent.admin("POST", "/api/relations",
                       {"from": asset, "to": device, "type": "Contains"}).status == 201
    assert agent.admin("PUT", f"/api/assets/{asset}", {"label": "north"}).status == 200
    assert agent.post_telemetry(token, {"t": 1}) == 200
    assert agent.admin("DELETE", f"/api/entities/{device}/timeseries",
                       {"keys": ["t"]}).status == 200
    assert agent.admin("DELETE", f"/api/entities/{device}/attributes/SHARED_SCOPE",
                       {"keys": ["x"]}).status == 200
    wait_drained(agent)
    held = cloud.admin("GET", f"/api/entities/{asset}")
    assert (held["name"], held["edges"], held["entity"]["label"]) == ("line-1", ["rk-1"], "north")
    assert cloud.admin("GET", f"/api/relations?id={asset}") == [
        {"from": {"entityType": "ASSET", "id": asset}, "to": {"entityType": "DEVICE", "id": device},
         "type": "Contains", "typeGroup": "COMMON", "additionalInfo": None}]
    assert agent.admin("DELETE", f"/api/relations?entity={asset}").status == 200
    assert agent.admin("DELETE", f"/api/assets/{asset}").status == 200
    assert agent.admin("DELETE", f"/api/devices/{device}").status == 200
    wait_drained(agent)
    assert [e.seq for e in agent.read_log() if e.status.value != "DEPLOYED"] == []
    assert [(e["seq"], e["entity_type"], e["action"]) for e in cloud.events("rk-1")] == [
        (1, "ASSET", "ADDED"), (2, "DEVICE", "ADDED"), (3, "DEVICE", "CREDENTIALS_UPDATED"),
        (4, "ASSET", "RELATION_ADD_OR_UPDATE"), (5, "ASSET", "UPDATED"),
        (6, "DEVICE", "TIMESERIES_UPDATED"), (7, "DEVICE", "TIMESERIES_DELETED"),
        (8, "DEVICE", "ATTRIBUTES_DELETED"), (9, "ASSET", "RELATION_DELETED"),
        (10, "ASSET", "DELETED"), (11, "DEVICE", "DELETED")]
    assert cloud.admin("GET", "/api/entities?type=ASSET") == []
