"""A ConnectionActor that fails releases what its incarnation held: its deadline timer thread,
its stream (and the stream's reader thread) and its channel. Each crash used to leave them
behind for ever; the successor reconnects with its own. Real cloud and agent on loopback."""

from __future__ import annotations

import threading
from pathlib import Path

from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer
from edge_sync.config import load_cloud_config, load_edge_config
from tests.helpers.crashes import crash_and_wait_restarted
from tests.helpers.wait import wait_until

DEADLINE = 30.0


def link_threads(old: set[threading.Thread]) -> dict[str, int]:
    """The live link threads by kind, those in ``old`` left out (another test's, ending):
    the deadline timer, the stream readers."""
    names = [t.name for t in threading.enumerate() if t.is_alive() and t not in old]
    return {"timer": names.count("timer-link"),
            "readers": sum(1 for n in names if n.startswith("link-reader-"))}


def test_each_crash_of_the_link_releases_its_timer_and_stream(tmp_path: Path) -> None:
    cloud = CloudServer(load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_PORT": "0",
        "CLOUD_ADMIN_PORT": "0"})).start()
    cloud.service.create_edge("e", routing_key="rk", secret="s")
    old = set(threading.enumerate())  # another test's agent may still be stopping
    app = EdgeApp(load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "CLOUD_ROUTING_KEY": "rk", "CLOUD_ROUTING_SECRET": "s", "CLOUD_RPC_PORT": str(cloud.port),
        "EDGE_MQTT_ENABLED": "false"})).start()
    try:
        wait_until(app._link_connected, timeout=DEADLINE, what="the link connected")
        assert link_threads(old) == {"timer": 1, "readers": 1}
        for crash in range(1, 4):  # each time, the successor connects again
            crash_and_wait_restarted(app, "connection", crash, timeout=DEADLINE,
                                     then=app._link_connected)
        wait_until(lambda: link_threads(old) == {"timer": 1, "readers": 1},
                   timeout=DEADLINE, what="one timer and one stream reader: the running link's",
                   show=lambda: link_threads(old))
        device, created = app.service.create_device("after-crashes")
        created.result(DEADLINE)
        wait_until(lambda: any(e.entity_id == device.id
                               for e in cloud.service.events("rk", after=0, limit=0)),
                   timeout=DEADLINE, what="the device created after the crashes reached the cloud")
    finally:
        app.stop()
        cloud.stop()
