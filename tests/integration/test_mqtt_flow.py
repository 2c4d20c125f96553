"""The MQTT server under pressure, in one process: a whole EdgeApp (real LMDB) and real clients
(paho-mqtt).

- Flood control: a client flooding QoS 0 and QoS 1 publishes is not read while
  mqtt.max_inflight_per_client of its publishes await their commit (the pauses are counted),
  so another client's QoS 1 publishes are acknowledged meanwhile; every publish the flooder
  sent is stored exactly once, in order.
- Storage full: a QoS 1 publish the store refuses gets no PUBACK (the connection closes), and
  every acknowledged publish is stored, nothing else. A QoS 0 publish the store refuses closes
  the connection too (as ThingsBoard does), with one WARNING, not one per publish. A
  connection whose reading is paused at the inflight cap, and whose commits then fail, is
  closed: it does not wait for room that never comes.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.app import EdgeApp
from tests.helpers.mqtt_app import AppFactory, no_connections, values
from tests.helpers.mqtt_device import TELEMETRY, MqttDevice
from tests.helpers.mqtt_gateway import Logs, held_commits
from tests.helpers.mqtt_raw import RawClient, publish_packet
from tests.helpers.wait import wait_until

DEADLINE_S = 30.0
INFLIGHT = 16


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    with AppFactory(tmp_path) as apps:
        yield apps


def device(app: EdgeApp, name: str) -> tuple[uuid.UUID, str]:
    created, done = app.service.create_device(name, token=f"tok-{name}")
    done.result(DEADLINE_S)
    return created.id, created.token


def test_a_flooding_client_is_held_back_and_another_is_still_served(make_app: AppFactory) -> None:
    app = make_app(EDGE_MQTT_MAX_INFLIGHT_PER_CLIENT=str(INFLIGHT))
    flood_id, flood_token = device(app, "flooder")
    calm_id, calm_token = device(app, "calm")
    total = 6000  # every 4th at QoS 1, the rest at QoS 0
    with MqttDevice(app.mqtt_port, flood_token) as flooder, \
            MqttDevice(app.mqtt_port, calm_token) as calm:
        flooder.client.max_inflight_messages_set(0)  # paho: no window of its own
        flooder.client.max_queued_messages_set(0)
        assert flooder.connect() == 0 and calm.connect() == 0
        mids = [flooder.publish(TELEMETRY, {"n": n}, qos=1 if n % 4 == 0 else 0).mid
                for n in range(total)]
        qos1 = mids[::4]
        wanted = set(qos1)

        def flood_acked() -> list[int]:  # paho reports QoS 0 publishes as sent ones too
            return [mid for mid in flooder.acked_ids() if mid in wanted]

        wait_until(lambda: app.metrics.snapshot()["edge_sync_mqtt_reads_paused_total"] > 0,
                   timeout=DEADLINE_S, what="the flooder's reading paused")
        calm_mids = [calm.publish(TELEMETRY, {"n": n}).mid for n in range(50)]
        wait_until(lambda: len(calm.acked_ids()) == 50, timeout=DEADLINE_S,
                   what="the calm client's 50 PUBACKs",
                   show=lambda: (len(calm.acked_ids()), len(flood_acked())))
        flood_acked_then = len(flood_acked())
        assert calm.acked_ids() == calm_mids
        wait_until(lambda: len(flood_acked()) == len(qos1), timeout=DEADLINE_S,
                   what="the flooder's PUBACKs", show=lambda: len(flood_acked()))
        assert flood_acked() == qos1
        assert not flooder.disconnected.is_set() and not calm.disconnected.is_set()
    wait_until(lambda: len(values(app, flood_id)) == total, timeout=DEADLINE_S,
               what="every flooded publish stored", show=lambda: len(values(app, flood_id)))
    assert values(app, flood_id) == list(range(total))  # each exactly once, in order
    assert values(app, calm_id) == list(range(50))
    assert flood_acked_then < len(qos1), "the flood was over before the calm client was served"
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_storage_full_closes_the_connection_without_the_refused_puback(
        make_app: AppFactory) -> None:
    app = make_app(EDGE_STORAGE_MAP_SIZE_INITIAL_MB="1", EDGE_STORAGE_MAX_MB="1")
    device_id, token = device(app, "filler")
    pad = "f" * 2000
    acked: list[int] = []
    with MqttDevice(app.mqtt_port, token) as dev:
        assert dev.connect() == 0
        for n in range(2000):  # 1 MiB holds a few hundred of these; one in flight at a time
            info = dev.publish(TELEMETRY, {"n": n, "pad": pad})
            wait_until(lambda: info.mid in dev.acked_ids() or dev.disconnected.is_set(),  # noqa: B023
                       timeout=DEADLINE_S, what=f"PUBACK of {n} or the connection closed")
            if info.mid not in dev.acked_ids():
                refused = n
                break
            acked.append(n)
        else:
            raise AssertionError("the store never filled up")
        assert dev.disconnected.is_set()
    assert len(acked) > 100
    assert values(app, device_id) == acked
    assert refused not in values(app, device_id)
    # still full: a new connection's publish is refused the same way, and nothing is stored
    with MqttDevice(app.mqtt_port, token) as again:
        assert again.connect() == 0
        info = again.publish(TELEMETRY, json.dumps({"n": -1, "pad": pad}).encode())
        wait_until(again.disconnected.is_set, timeout=DEADLINE_S, what="connection closed")
        assert info.mid not in again.acked_ids()
    assert values(app, device_id) == acked
    no_connections(app)  # nothing of the test still runs (or logs) once it returns


def test_storage_full_closes_a_qos0_publisher_with_one_warning(make_app: AppFactory) -> None:
    """3,000 QoS 0 publishes into a full store: the first failed commit closes the connection
    (one WARNING of the connection); the disconnect line counts the publishes not stored."""
    app = make_app(EDGE_STORAGE_MAP_SIZE_INITIAL_MB="1", EDGE_STORAGE_MAX_MB="1")
    device_id, token = device(app, "qos0-filler")
    pad = "f" * 2000
    logs = Logs()
    try:
        with RawClient(app.mqtt_port, timeout=DEADLINE_S) as raw:
            assert raw.connect("qos0", token) == (0, 0)
            with contextlib.suppress(OSError):  # the server closes while the client still sends
                for n in range(3000):
                    raw.send(publish_packet(TELEMETRY, json.dumps({"n": n, "pad": pad}).encode()))
            assert raw.closed_by_server()
        no_connections(app)
    finally:
        logs.close()
    warnings = [r for r in logs.records if r["level"].name == "WARNING"
                and r["extra"].get("component") == "mqtt"]
    assert len(warnings) == 1, [r["message"] for r in warnings[:5]]
    assert warnings[0]["message"].startswith("QoS 0 publish not committed: ")
    assert warnings[0]["message"].endswith(", closing the connection")
    (line,) = logs.matching("disconnected from MQTT", device=str(device_id))
    assert line["extra"]["not_committed"] >= 1
    # the commands the connection handed over before it closed are all done (the queue takes
    # them in order): nothing of the test still runs (or logs) once it returns
    app.service.post_attributes(token, {"barrier": 1}).exception(DEADLINE_S)
    stored = values(app, device_id)
    assert len(stored) < 3000 and stored == sorted(set(stored))


def test_a_connection_paused_at_the_inflight_cap_whose_commits_fail_is_closed(
        make_app: AppFactory) -> None:
    app = make_app(EDGE_STORAGE_MAP_SIZE_INITIAL_MB="1", EDGE_STORAGE_MAX_MB="1",
                   EDGE_MQTT_MAX_INFLIGHT_PER_CLIENT="4")
    device_id, token = device(app, "paused")
    pad = "p" * 2000
    while app.service.post_telemetry(token, {"n": -1, "pad": pad}).exception(
            DEADLINE_S) is None:  # fill the store: the next commit fails
        pass
    paused = app.metrics.snapshot()["edge_sync_mqtt_reads_paused_total"]
    with RawClient(app.mqtt_port, timeout=DEADLINE_S) as raw:
        assert raw.connect("paused", token) == (0, 0)
        with held_commits(app.store):  # the commits wait: the 4 publishes taken reach the cap
            raw.send(b"".join(publish_packet(TELEMETRY, json.dumps({"n": n, "pad": pad}).encode(),
                                             qos=1, packet_id=n + 1) for n in range(10)))
            wait_until(lambda: app.metrics.snapshot()["edge_sync_mqtt_reads_paused_total"] > paused,
                       timeout=DEADLINE_S, what="the connection's reading paused at the cap")
        # the commits go on now, and fail (storage full): closed, nothing acknowledged
        with pytest.raises(ConnectionError):
            raw.read()
    no_connections(app)
    assert values(app, device_id) == [-1] * len(values(app, device_id))
