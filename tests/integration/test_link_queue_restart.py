"""A QueueActor restart while the link drains: acknowledgements that arrive while it is down are
kept and recorded once it is back, without a reconnect, so nothing stays PENDING that the cloud
already has (and nothing is applied twice)."""

from __future__ import annotations

from pathlib import Path

from edge_sync.actors.messages import Crash
from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer
from edge_sync.config import load_cloud_config, load_edge_config
from edge_sync.status import collect_status
from tests.helpers.wait import wait_until


def test_acks_during_a_queue_restart_are_recorded(tmp_path: Path) -> None:
    cloud = CloudServer(load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_PORT": "0",
        "CLOUD_ADMIN_PORT": "0"})).start()
    cloud.service.create_edge("e", routing_key="rk", secret="s")
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "CLOUD_ROUTING_KEY": "rk", "CLOUD_ROUTING_SECRET": "s", "CLOUD_RPC_PORT": str(cloud.port),
        "EDGE_CLOUD_BATCH_SIZE": "20", "EDGE_CLOUD_WINDOW": "2", "EDGE_MQTT_ENABLED": "false"})
    app = EdgeApp(cfg).start()
    try:
        device, created = app.service.create_device("d")
        created.result(10)
        total = 6000
        futures = [app.service.post_entries(device.id, tuple((i * 100 + j + 1, (("n", i * 100 + j),))
                                                            for j in range(100)))
                   for i in range(total // 100)]
        for f in futures:
            f.result(30)
        crashes = 0

        def drained_crashing_the_queue_on_the_way() -> bool:
            """True once nothing is pending; until then, crash the QueueActor after every
            1000 acknowledged events (three times)."""
            nonlocal crashes
            if collect_status(app.store, now_ms=0)["queue"]["pending"] == 0:
                return True
            if crashes < 3 and app.metrics.value("edge_sync_events_total", lane="normal", outcome="acked") \
                    > (crashes + 1) * 1000:
                ref = app._actor_ref("queue")
                assert ref is not None
                ref.tell(Crash("test: restart while acks arrive"))
                crashes += 1
            return False

        wait_until(drained_crashing_the_queue_on_the_way, timeout=60, poll=0.01,
                   what="the queue drained while the QueueActor is crashed three times",
                   show=lambda: f"{crashes} crashes, "
                                f"{collect_status(app.store, now_ms=0)['queue']['pending']} pending")
        assert crashes == 3
        assert collect_status(app.store, now_ms=0)["queue"]["pending"] == 0
        assert app.supervisor.restarts("queue") == 3
        assert app.metrics.snapshot()["edge_sync_link_connects_accepted_total"] == 1  # no reconnect
        applied = cloud.service.events("rk", after=0, limit=0)
        values = [e.body["values"]["n"] for e in applied if e.action == "TIMESERIES_UPDATED"]
        assert values == list(range(total))
    finally:
        app.stop()
        cloud.stop()
