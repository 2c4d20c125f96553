"""What the MQTT tests share: an agent in this process (a whole EdgeApp: real LMDB, the real
MQTT server on loopback) started on free ports and stopped at the end, the telemetry and
events it stored (read from its log, or from a real process's log through tests/helpers/agent.py),
and the round trips a client makes to know the server has written what was due.

    @pytest.fixture
    def make_app(tmp_path: Path) -> Iterator[AppFactory]:
        with AppFactory(tmp_path) as apps:
            yield apps

``no_connections`` waits until the server has ended every connection (its last log line
written): a test calls it before it returns, so nothing of it is still running, and logging,
once the test is over.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, StoredEvent
from tests.helpers.mqtt_device import TELEMETRY, MqttDevice
from tests.helpers.wait import wait_until

__all__ = ["DEADLINE_S", "MQTT_ON", "AppFactory", "events_of", "log_of", "no_connections",
           "publish_once", "round_trip", "values"]

DEADLINE_S = 10.0

MQTT_ON = {"EDGE_MQTT_ENABLED": "true", "EDGE_MQTT_HOST": "127.0.0.1", "EDGE_MQTT_PORT": "0"}
"""The MQTT server on a free loopback port (also for an edge of tests/helpers/fake_peer.py)."""

BASE_ENV = {
    "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
    "EDGE_ACTORS_SHARDS": "2", **MQTT_ON,
}
"""An agent on free loopback ports, MQTT on, no cloud link."""


class AppFactory:
    """Starts in-process agents on one data directory (``tmp_path / "edge"``), with
    ``BASE_ENV`` and the settings given; ``close`` stops every one it started."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "edge"
        self.apps: list[EdgeApp] = []

    def __call__(self, **env: str) -> EdgeApp:
        cfg = load_edge_config(env={"EDGE_DATA_DIR": str(self.data_dir), **BASE_ENV, **env})
        app = EdgeApp(cfg).start()
        self.apps.append(app)
        return app

    def close(self) -> None:
        for app in reversed(self.apps):
            app.stop()
        self.apps.clear()

    def __enter__(self) -> AppFactory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_of(app: EdgeApp) -> list[StoredEvent]:
    """Every event in the agent's log, in order."""
    with app.store.read() as txn:
        return list(EventLog(app.store).iter_events(txn))


def events_of(source: EdgeApp | Iterable[StoredEvent], device_id: uuid.UUID | str,
              action: str) -> list[StoredEvent]:
    """The events of one device and action, in log order; ``source`` an in-process agent, or
    the events of a real process's log (``Agent.read_log()``)."""
    events = log_of(source) if isinstance(source, EdgeApp) else source
    wanted = str(device_id)
    return [e for e in events if str(e.entity_id) == wanted and e.action == action]


def values(source: EdgeApp | Iterable[StoredEvent], device_id: uuid.UUID | str,
           key: str = "n") -> list[Any]:
    """The value of ``key`` in each telemetry event of the device, in log order."""
    return [e.body["values"][key]
            for e in events_of(source, device_id, Action.TIMESERIES_UPDATED)]


def publish_once(dev: MqttDevice, n: int, *, timeout: float = DEADLINE_S) -> None:
    """Publish ``{"n": n}`` at QoS 1 and wait for its PUBACK."""
    info = dev.publish(TELEMETRY, {"n": n})
    wait_until(lambda: info.mid in dev.acked_ids(), timeout=timeout, what=f"PUBACK of {n}")


def round_trip(client: MqttDevice, request_id: int) -> None:
    """An attribute request answered: the connection's one writer has written everything
    that was due before it (in order), so what has not arrived by then was not sent."""
    client.publish(f"v1/devices/me/attributes/request/{request_id}", {"clientKeys": "none"})
    client.wait_message(f"v1/devices/me/attributes/response/{request_id}")


def no_connections(app: EdgeApp, *, timeout: float = DEADLINE_S) -> None:
    """Wait until the agent's MQTT server has ended every connection (each one's last line
    logged): what a client closed is over on the server's side too."""
    server = app.mqtt_server
    assert server is not None, "the MQTT server is not running"
    wait_until(lambda: server.connections == 0, timeout=timeout,
               what="every MQTT connection ended on the server", show=lambda: server.connections)
