"""Garbage collection settings: ``edge-sync run`` freezes what start-up made and raises the
first generation's threshold to 10,000 (edge_sync/app.py, tune_gc_for_service); an EdgeApp
started in a process of someone else's (this test process) leaves the process's settings alone.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from edge_sync.app import GC_FIRST_GENERATION_THRESHOLD, EdgeApp
from edge_sync.config import load_edge_config
from tests.helpers.agent import Agent
from tests.helpers.wait import wait_until


def test_edge_sync_run_freezes_start_up_and_raises_the_first_threshold(tmp_path: Path) -> None:
    with Agent(tmp_path / "agent", env={"EDGE_LOG_LEVEL": "DEBUG"}) as agent:
        agent.start()

        def tuned() -> list[dict[str, Any]]:
            return [r for r in agent.log_records()
                    if r["message"].startswith("garbage collection tuned")]

        (record,) = wait_until(tuned, timeout=10.0, what="the garbage collection log line")
        assert record["threshold"][0] == GC_FIRST_GENERATION_THRESHOLD == 10_000
        assert record["frozen"] > 10_000  # modules, classes, functions, the supervision tree
        assert agent.terminate() == 0


def test_an_in_process_edge_app_leaves_the_process_gc_settings_alone(tmp_path: Path) -> None:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "1",
        "EDGE_MQTT_ENABLED": "false",
    })
    app = EdgeApp(cfg).start()
    try:
        assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
    finally:
        app.stop()
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)
