"""`scripts/bench sync --quick --drain-queue` end to end (about 15 s): a real `edge-cloud serve`
with a plant of 1,000 entities for one edge (a dashboard just under the 4 MiB message limit
included) and a real `edge-sync run` on an empty store. The JSON line (the last line of stdout)
has every figure, and after the full sync the edge holds exactly what the cloud assigns (the
benchmark checks it entity by entity and reports any difference as an error).

The seeding queued about one downlink per entity (a device's carries its device profile as the
graph stores it). The full sync supersedes them: at its end the cloud drops every one (an
edge-sync edge asked for the sync, cloud/session.py _drop_superseded), so nothing of the seeding
is sent again, the queue is empty right after the sync and the edge stays exact.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.sync import TARGET_ENTITIES_PER_S

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


AFTER_QUEUE = "run 1, after the queue: "


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    """The JSON line of one quick run (exit 1 only for differences after the queue)."""
    cmd = [sys.executable, "-m", "bench", "sync", "--quick", "--drain-queue"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    lines = done.stdout.strip().splitlines()
    assert lines, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
    line: dict[str, Any] = json.loads(lines[-1])
    after = [e for e in line["errors"] if e.startswith(AFTER_QUEUE)]
    assert done.returncode == (1 if after else 0), done.stderr[-4000:]
    return line


def test_quick_run_syncs_the_whole_plant_exactly(quick: dict[str, Any]) -> None:
    assert quick["bench"] == "sync" and quick["quick"] is True and quick["runs"] == 1
    assert quick["entities"] == 1000 and quick["near_limit_dashboard"] is True
    assert [e for e in quick["errors"] if not e.startswith(AFTER_QUEUE)] == []
    assert quick["exact"] is True
    counts = quick["counts"]
    # the plant (1,000) plus the cloud's own entities, rule chain metadata, device credentials
    assert counts["DEVICE"] == counts["DEVICE_CREDENTIALS"] > 0
    assert counts["RULE_CHAIN"] == counts["RULE_CHAIN_METADATA"] >= 3
    assert counts["RELATION"] > 0 and counts["ASSET"] > 0 and counts["DASHBOARD"] >= 4
    assert {"TENANT", "QUEUE", "USER", "WIDGET_TYPE", "WIDGETS_BUNDLE", "CUSTOMER",
            "DEVICE_PROFILE", "ASSET_PROFILE", "ENTITY_VIEW"} <= set(counts)
    assert quick["entries_synced"] == sum(counts.values()) > 1000


def test_quick_run_reports_every_figure(quick: dict[str, Any]) -> None:
    assert 0 < quick["sync_s"] < quick["spawn_to_synced_s"]
    assert quick["entities_per_s"] == pytest.approx(1000 / quick["sync_s"], rel=0.01)
    assert quick["entries_per_s"] > quick["entities_per_s"] > 0
    # packs of up to 100 entries, the near-limit dashboard's apart, SyncCompletedMsg alone
    assert quick["entries_synced"] / 100 < quick["sync_downlinks"] < quick["entries_synced"] / 10
    assert quick["ms_per_downlink"] == pytest.approx(
        quick["sync_s"] * 1000 / quick["sync_downlinks"], rel=0.02)
    assert quick["edge_peak_rss_mb"] > 0 and quick["cloud_peak_rss_mb"] > 0
    assert quick["seed_s"] > 0 and quick["queued_after_seed"] >= 1000
    assert quick["queue_drain_s"] is not None and quick["superseded_by_sync"] is not None
    assert quick["target"] == {"entities_per_s": TARGET_ENTITIES_PER_S}
    assert quick["met"]["entities_per_s"] is (quick["entities_per_s"] >= TARGET_ENTITIES_PER_S)
    assert len(quick["samples"]) == 1 and len(quick["machine"]) == 2


def test_the_queue_after_the_sync_keeps_the_edge_exact(quick: dict[str, Any]) -> None:
    # the sync dropped the seeding's whole queue (one downlink per entity and metadata): the
    # queue was emptied by the sync, none of it went to the edge again (drained, not timed out)
    assert quick["superseded_by_sync"] == quick["queued_after_seed"] >= 1000
    assert quick["exact_after_queue"] is True and quick["errors"] == []
