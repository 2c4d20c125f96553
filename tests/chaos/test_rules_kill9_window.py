"""Chaos: the edge killed with SIGKILL while an aggregation window is open.

The edge runs tests/fixtures/rules/aggregation.json with a longer window (the edge's own
``edge_sync.rules.AggregateNode`` -> push to cloud). A device posts 500 readings (acknowledged:
the window's state is on disk with them), the edge is killed (SIGKILL) at once, started again
on the same data folder, and the device posts 500 more. Whether the restart took longer than
the window or not, the summaries the cloud gets add up to exactly the 1,000 acknowledged
readings: count, sum, min and max; nothing lost, nothing counted twice. The restarted edge
says it loaded the rule state, and no window is left open at the end.

Two cases: the edge is started again at once, well within a 12 s window (the restored window
takes the next 500: exactly one summary of 1,000), or, with a 5 s window, only once the window's
deadline has passed (the restored window closes at start with the first 500, the next 500 open a
new one: exactly two summaries).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rule_store import RuleStore
from tests.chaos.conftest import DEADLINE_S, RK
from tests.helpers.agent import read_log
from tests.helpers.cloud_proc import check_delivered, wait_drained
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
INTERVAL_S = {"brief": 12, "past-deadline": 5}
HALF = 500


def chain_file(tmp_path: Path, interval_s: int) -> Path:
    """aggregation.json with a window of ``interval_s``."""
    doc = json.loads((FIXTURES / "aggregation.json").read_text(encoding="utf-8"))
    doc["ruleChain"]["name"] = f"Aggregate {interval_s} s"
    node = doc["metadata"]["nodes"][0]
    assert node["type"] == "edge_sync.rules.AggregateNode"
    node["configuration"]["interval"] = interval_s
    path = tmp_path / f"aggregation_{interval_s}s.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def entities_with_rule_state(data_dir: Path) -> list[uuid.UUID]:
    """The entities whose rule state (open windows, active alarms) is on disk, read-only."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        with store.read() as txn:
            return list(RuleStore(store).entities_with_state(txn))
    finally:
        store.close()


def summaries(events: list[dict[str, Any]], device_id: str) -> list[dict[str, Any]]:
    return [e["body"]["values"] for e in events
            if e["entity_id"] == device_id and e["action"] == "TIMESERIES_UPDATED"]


def expected_summary(values: range) -> dict[str, Any]:
    return {"v_min": values[0], "v_max": values[-1], "v_sum": sum(values),
            "v_avg": sum(values) / len(values), "v_count": len(values)}


@pytest.mark.parametrize("down", ["brief", "past-deadline"])
def test_kill9_mid_window_counts_each_acknowledged_reading_once(tmp_path, linked, down):
    interval_s = INTERVAL_S[down]
    chain = chain_file(tmp_path, interval_s)
    link = linked(EDGE_RULES_FILE=str(chain))
    agent, cloud = link.agent, link.cloud
    device_id, token = agent.create_device("meter-kill9")
    assert agent.admin("GET", "/api/rules").json()["chain"] == f"Aggregate {interval_s} s"

    assert agent.post_telemetry(token, [{"v": n} for n in range(HALF)]) == 200
    acked_ms = int(time.time() * 1000)  # the window opened before: it closes by acked + interval
    assert agent.kill9() == -signal.SIGKILL
    assert entities_with_rule_state(agent.data_dir) == [uuid.UUID(device_id)]  # on disk
    if down == "past-deadline":
        wait_until(lambda: time.time() * 1000 > acked_ms + interval_s * 1000,
                   timeout=interval_s + DEADLINE_S, what="the open window's deadline passed")

    agent.start()
    loaded = wait_until(
        lambda: [r for r in agent.log_records() if r["message"].startswith("rule state of")],
        timeout=DEADLINE_S, what="the restarted edge to log the rule state it loaded")
    overdue = 1 if down == "past-deadline" else 0
    assert [r["message"] for r in loaded] == [
        f"rule state of 1 entities loaded: 1 open rule windows ({HALF} held messages), "
        f"{overdue} overdue (their deadline passed while the agent was down): closed now"]
    assert agent.post_telemetry(token, [{"v": n} for n in range(HALF, 2 * HALF)]) == 200
    if down == "brief":  # the case's premise: the second half reached the restored window
        took_ms = int(time.time() * 1000) - acked_ms
        assert took_ms < interval_s * 1000, f"the restart took {took_ms} ms, over the window"

    def counted() -> int:
        return sum(s["v_count"] for s in summaries(cloud.events(RK), device_id))

    wait_until(lambda: counted() >= 2 * HALF, timeout=interval_s + DEADLINE_S,
               what="summaries of 1,000 readings at the cloud", show=counted)
    # no window is open any more: no summary can come after these
    wait_until(lambda: entities_with_rule_state(agent.data_dir) == [], timeout=DEADLINE_S,
               what="every rule window closed",
               show=lambda: entities_with_rule_state(agent.data_dir))
    total = int(wait_drained(agent, timeout=DEADLINE_S)["queue"]["total"])
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    events = cloud.events(RK)
    assert len(events) == total
    check_delivered(events, read_log(agent.data_dir))

    got = summaries(events, device_id)
    assert all(s["v_count"] <= 2 * HALF for s in got), got
    assert all(s["v_avg"] == s["v_sum"] / s["v_count"] for s in got), got
    # the totals, whatever the restart's length
    assert sum(s["v_count"] for s in got) == 2 * HALF
    assert sum(s["v_sum"] for s in got) == sum(range(2 * HALF))
    assert min(s["v_min"] for s in got) == 0
    assert max(s["v_max"] for s in got) == 2 * HALF - 1
    # one window when the restart beat the deadline, else the window before the kill and one
    # after
    one = [expected_summary(range(2 * HALF))]
    two = [expected_summary(range(HALF)), expected_summary(range(HALF, 2 * HALF))]
    assert got == (one if down == "brief" else two), got
