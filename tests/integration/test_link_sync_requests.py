"""An operator's sync request while a sync runs, or right after one, with a whole EdgeApp.

Against the reference cloud (in-process, real gRPC on loopback): the edge sends no second
SyncRequestMsg while one is unanswered (ThingsBoard would ignore it and never answer it, so the
edge treats every peer alike); it holds the request, shows it pending in its status, and sends
it once the running sync completes. The cloud's first full sync is held before its
SyncCompletedMsg until the test has asked.

Against the emulated ThingsBoard server (tests.helpers.tb_server), whose session counts its
sync as running a while after the SyncCompletedMsg was acknowledged, as ThingsBoard's does: a
request right after a sync completes waits until the cloud counts that sync over; one the cloud
ignores all the same is sent again when the sync deadline passes, and a request held meanwhile
still runs; a session that answers no sync request at all is replaced by a new one.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer, full_sync
from edge_sync.config import load_cloud_config, load_edge_config
from edge_sync.link import connection
from edge_sync.link.held_sync import RELEASE_DELAY_S
from edge_sync.status import collect_status
from tests.helpers.tb_server import TbServer
from tests.helpers.wait import wait_until

DEADLINE_S = 30.0
SYNC_TIMEOUT_S = 3.0
"""connection.SYNC_TIMEOUT_S in the ThingsBoard tests (cloud.rpc.timeout_ms is shorter): how
long a sync request waits for its SyncCompletedMsg (with no new downlink) before the edge counts
it as ignored."""


@pytest.fixture
def link_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"),
                      level="INFO",
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
        assert ("INFO full sync requested (operator): deferred until the full sync under way "
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
        assert ("INFO deferred full sync (operator): the sync under way completed; SyncRequestMsg "
                "sent" in link_logs)
    finally:
        release.set()
        if app is not None:
            app.stop()
        cloud.stop()


# -- against the emulated ThingsBoard server -----------------------------------------------------


@pytest.fixture
def tb_edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[TbServer], EdgeApp]]:
    """start(server): the server started, and an EdgeApp linked to it with a short sync
    deadline; both stopped at the end."""
    monkeypatch.setattr(connection, "SYNC_TIMEOUT_S", SYNC_TIMEOUT_S)
    servers: list[TbServer] = []
    apps: list[EdgeApp] = []

    def start(server: TbServer) -> EdgeApp:
        servers.append(server.start())
        apps.append(EdgeApp(load_edge_config(env={
            "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0",
            "EDGE_ADMIN_PORT": "0", "EDGE_MQTT_ENABLED": "false", "CLOUD_ROUTING_KEY": "rk",
            "CLOUD_ROUTING_SECRET": "s", "CLOUD_RPC_HOST": "127.0.0.1",
            "CLOUD_RPC_PORT": str(server.port), "CLOUD_RPC_TIMEOUT": "2000",
            "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100",
            "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "200"})).start())
        return apps[-1]

    yield start
    for app in apps:
        app.stop()
    for server in servers:
        server.stop()


def connect_sync_completed(app: EdgeApp) -> None:
    """Wait until the edge applied the SyncCompletedMsg of its connect's sync."""
    def done() -> bool:
        last = app.link_board.value["last_sync"]
        return last is not None and last["completed_ms"] is not None

    wait_until(done, timeout=DEADLINE_S, what="the connect's sync completed")


def sync_done(app: EdgeApp, reason: str) -> dict[str, Any]:
    """The status once the sync asked for with ``reason`` completed."""
    def done() -> dict[str, Any] | None:
        st = status(app)
        last = st["sync"]["last"]
        return st if last["reason"] == reason and last["completed_ms"] else None

    return wait_until(done, timeout=DEADLINE_S, what=f"the sync {reason!r} completed",
                      show=lambda: status(app)["sync"])


def ignored(kind: str, reason: str) -> str:
    """The warning of a sync request the cloud did not answer in time."""
    return (f"WARNING no answer to the {kind} sync request ({reason}) within "
            f"{SYNC_TIMEOUT_S:.0f}s: the cloud ignored it (ThingsBoard does while it counts its "
            "previous sync as running); SyncRequestMsg sent again")


def test_a_request_right_after_a_sync_completes_waits_until_thingsboard_counts_it_over(
        tb_edge: Callable[[TbServer], EdgeApp], link_logs: list[str]) -> None:
    """ThingsBoard clears its sync flag in a callback after the SyncCompletedMsg's
    acknowledgement (EdgeGrpcSession.doSync -> markSyncCompletedSendEdgeEventUpdate), here half
    a second after it: a request sent at once would be ignored. It is held RELEASE_DELAY_S,
    then sent once, and the cloud runs it."""
    server = TbServer("rk", "s", sync_flag_clear_delay_s=RELEASE_DELAY_S / 2)
    app = tb_edge(server)
    connect_sync_completed(app)
    asked = time.monotonic()
    app._request_sync(False, "check")
    server.wait_for(lambda: len(server.sync_requests) == 2, what="the operator's request")
    assert time.monotonic() - asked >= RELEASE_DELAY_S - 0.1
    st = sync_done(app, "requested: check")
    assert (st["sync"]["last"]["full"], st["sync"]["last"]["pending"]) == (False, None)
    with server.cond:
        assert server.sync_requests == server.sync_starts == [True, False]  # none ignored
        assert len(server.connects) == 1
    assert [line for line in link_logs if line.startswith("INFO incremental sync requested")] \
        == ["INFO incremental sync requested (check): deferred 1.0s, the full sync having just "
            "completed (a cloud may not count it as over yet); incremental sync pending"]
    assert [line for line in link_logs if line.startswith("WARNING")] == []


def test_a_request_thingsboard_ignores_is_sent_again_and_a_full_one_asked_meanwhile_runs(
        tb_edge: Callable[[TbServer], EdgeApp], link_logs: list[str]) -> None:
    """The cloud clears its flag later than RELEASE_DELAY_S after each acknowledgement: it
    ignores the operator's request and answers nothing. When the sync deadline passes the edge
    says so and sends the request again, which runs; the full sync the operator asked for
    meanwhile is held until then, sent, ignored in turn, sent again, and runs and completes,
    on the same stream."""
    server = TbServer("rk", "s", sync_flag_clear_delay_s=RELEASE_DELAY_S + 1.5)
    app = tb_edge(server)
    connect_sync_completed(app)
    app._request_sync(False, "check")
    server.wait_for(lambda: len(server.sync_requests) == 2, what="the first operator request")
    sent = time.monotonic()
    with server.cond:
        assert server.sync_starts == [True]  # ignored: "Sync is already started"
    app._request_sync(True, "restore")

    def pending() -> dict[str, Any] | None:
        last = app.link_board.value["last_sync"]
        return last if last["pending"] is not None else None

    held = wait_until(pending, timeout=DEADLINE_S, what="the full request held")
    assert (held["reason"], held["completed_ms"]) == ("requested: check", None)
    assert (held["pending"]["full"], held["pending"]["reason"]) == (True, "restore")

    st = sync_done(app, "requested: restore")
    assert time.monotonic() - sent >= 2 * SYNC_TIMEOUT_S + RELEASE_DELAY_S
    with server.cond:
        assert server.sync_requests == [True, False, False, True, True]
        assert server.sync_starts == [True, False, True]
        assert server.sync_completed == 3
        assert len(server.connects) == 1  # no reconnect
    last = st["sync"]["last"]
    assert (last["full"], last["pending"]) == (True, None)
    assert (st["sync"]["full_in_progress"], st["sync"]["full_requested"]) == (False, None)
    assert st["link"]["state"] == "CONNECTED"
    assert [line for line in link_logs if line.startswith("WARNING")] == [
        ignored("incremental", "check"), ignored("full", "restore")]
    assert ("INFO deferred full sync (restore): the sync under way completed; SyncRequestMsg "
            "sent" in link_logs)


def test_a_thingsboard_session_that_answers_no_sync_request_is_replaced_by_a_new_one(
        tb_edge: Callable[[TbServer], EdgeApp], link_logs: list[str]) -> None:
    """The session's flag is never cleared (as when its sync failed): the request and its
    resend go unanswered, so the edge reconnects. The full sync asked for meanwhile is durable:
    the new session's connect sync is full, and covers it."""
    server = TbServer("rk", "s", sync_flag_clear_delay_s=math.inf)
    app = tb_edge(server)
    connect_sync_completed(app)
    app._request_sync(False, "check")
    server.wait_for(lambda: len(server.sync_requests) == 2, what="the first operator request")
    app._request_sync(True, "restore")
    server.wait_for(lambda: len(server.connects) == 2, timeout=DEADLINE_S,
                    what="the edge reconnected")

    def covered() -> bool:
        return ("INFO deferred full sync (restore) not sent: the sync after the reconnect "
                "covered it" in link_logs)

    wait_until(covered, timeout=DEADLINE_S, what="the held request covered")
    st = status(app)
    with server.cond:
        assert server.sync_requests == [True, False, False, True]
        assert server.sync_starts == [True, True]
        assert server.sync_completed == 2
    last = st["sync"]["last"]
    assert (last["full"], last["reason"], last["pending"]) == (True, "requested: restore", None)
    assert last["completed_ms"] is not None
    assert (st["sync"]["full_in_progress"], st["sync"]["full_requested"]) == (False, None)
    assert [line for line in link_logs if line.startswith("WARNING")] == [
        ignored("incremental", "check"),
        "WARNING link CONNECTED -> BACKOFF: no answer to the incremental sync request (check) "
        f"sent twice, {SYNC_TIMEOUT_S:.0f}s each: a new cloud session syncs; next attempt in "
        "0.1s"]
