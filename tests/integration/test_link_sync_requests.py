"""An operator's sync request while a sync runs, against the reference cloud (in-process, real
gRPC on loopback) and a whole EdgeApp: the edge sends no second SyncRequestMsg while one is
unanswered (ThingsBoard would ignore it and never answer it, so the edge treats every peer
alike); it holds the request, shows it pending in its status, and sends it once the running
sync completes. The cloud's first full sync is held before its SyncCompletedMsg until the
test has asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer, full_sync
from edge_sync.config import load_cloud_config, load_edge_config
from edge_sync.status import collect_status
from tests.helpers.wait import wait_until

DEADLINE_S = 30.0


@pytest.fixture
def link_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m.record["message"])), level="INFO",
                      filter=lambda r: r["extra"].get("component") == "link")
    yield lines
    logger.remove(sink)


def status(app: EdgeApp) -> dict[str, Any]:
    return collect_status(app.store, now_ms=int(time.time() * 1000), link=app.link_board.value)


def test_a_full_sync_asked_for_during_the_first_sync_runs_once_that_one_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, link_logs: list[str]) -> None:
    release = threading.Event()
    full_syncs: list[float] = []  # when the cloud started each full sync
    packs = full_sync.packs

    def held_packs(*args: Any, **kwargs: Any) -> Iterator[bytes]:
        """The cloud's full sync; the first one waits before its SyncCompletedMsg (last)."""
        full_syncs.append(time.monotonic())
        first = len(full_syncs) == 1
        items = list(packs(*args, **kwargs))
        yield from items[:-1]
        if first:
            release.wait(DEADLINE_S)
        yield items[-1]

    monkeypatch.setattr(full_sync, "packs", held_packs)
    cloud = CloudServer(load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_PORT": "0",
        "CLOUD_ADMIN_PORT": "0"})).start()
    app: EdgeApp | None = None
    try:
        cloud.service.create_edge("e", routing_key="rk", secret="s")
        app = EdgeApp(load_edge_config(env={
            "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0",
            "EDGE_ADMIN_PORT": "0", "EDGE_MQTT_ENABLED": "false", "CLOUD_ROUTING_KEY": "rk",
            "CLOUD_ROUTING_SECRET": "s", "CLOUD_RPC_PORT": str(cloud.port)})).start()
        edge = app
        wait_until(lambda: len(full_syncs) == 1 and edge.link_board.value["state"] == "SYNCING",
                   timeout=DEADLINE_S, what="the first full sync under way")
        asked_ms = int(time.time() * 1000)
        edge._request_sync(True, "operator")

        def pending() -> dict[str, Any] | None:
            last = edge.link_board.value["last_sync"]
            return last if last.get("pending") is not None else None

        held = wait_until(pending, timeout=DEADLINE_S, what="the operator's request pending")
        assert (held["full"], held["completed_ms"]) == (True, None)
        assert (held["pending"]["full"], held["pending"]["reason"]) == (True, "operator")
        assert held["pending"]["requested_ms"] >= asked_ms
        assert len(full_syncs) == 1 and edge.link_board.value["state"] == "SYNCING"
        assert ("full sync requested (operator): deferred until the full sync under way "
                "completes (a cloud ignores a sync request while it syncs); full sync pending"
                in link_logs)

        release.set()

        def second_done() -> dict[str, Any] | None:
            st = status(edge)
            last = st["sync"]["last"]
            return st if last["reason"] == "requested: operator" and last["completed_ms"] else None

        st = wait_until(second_done, timeout=DEADLINE_S, what="the operator's full sync completed")
        assert len(full_syncs) == 2  # the cloud ran a second full sync, after the first
        last = st["sync"]["last"]
        assert (last["full"], last["pending"]) == (True, None)
        assert (st["sync"]["full_in_progress"], st["sync"]["full_requested"]) == (False, None)
        assert st["sync"]["last_full_ms"] >= last["requested_ms"] >= held["pending"]["requested_ms"]
        assert st["link"]["state"] == "CONNECTED"
        assert ("deferred full sync (operator): the sync under way completed; SyncRequestMsg sent"
                in link_logs)
    finally:
        release.set()
        if app is not None:
            app.stop()
        cloud.stop()
