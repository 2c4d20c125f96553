"""GET /metrics of both real processes (`edge-sync run`, `edge-cloud serve`) after a known
workload, read with prometheus-client's own parser: the content type, every family's type,
and exact values (events by lane and outcome, device answers by protocol and code over HTTP
and MQTT, queue depth, link and breaker state, the sync latency histogram and the status'
``sync_latency_ms``, the uplink round-trip histogram; the cloud's applied events, dedup and
connected edges)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edge_sync.storage.records import Lane, Status
from tests.helpers.agent import Agent, read_log
from tests.helpers.cloud_proc import CloudProc, link_env, wait_connected, wait_drained
from tests.helpers.mqtt_device import MqttDevice

pytestmark = pytest.mark.slow

RK = "rk-prometheus"
SECRET = "sec-prometheus-3c9d"
DEADLINE_S = 30.0


def scrape(port: int) -> tuple[str, dict[str, str], list[Sample]]:
    """(content type, {family: type}, every sample) of GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE_S) as resp:
        content_type = resp.headers["Content-Type"]
        text = resp.read().decode()
    families = list(text_string_to_metric_families(text))
    return (content_type, {f.name: f.type for f in families},
            [s for f in families for s in f.samples])


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_both_processes_expose_their_metrics_to_prometheus(tmp_path, procs) -> None:
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-prometheus", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)
    devices = [agent.create_device(f"prom-{i}") for i in range(2)]
    for n in range(5):
        for _, token in devices:
            assert agent.post_telemetry(token, {"n": n}) == 200
    assert agent.post_telemetry("no-such-token", {"n": 0}) == 401
    for token in (devices[0][1], "no-such-token"):  # CONNACK 0, then 5 (not authorized)
        with MqttDevice(agent.mqtt_port, token) as device:
            device.connect()
    total = 2 * (5 + 2)  # per device: ADDED, CREDENTIALS_UPDATED and 5 points
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    st = wait_drained(agent)
    log = read_log(agent.data_dir)
    assert [e.status for e in log] == [Status.DEPLOYED] * total
    high = sum(e.lane is Lane.HIGH for e in log)

    content_type, types, edge = scrape(agent.admin_port)
    assert content_type.startswith("text/plain; version=")
    assert {name: types[name] for name in (
        "edge_sync_events", "edge_sync_device_requests", "edge_sync_queue_depth",
        "edge_sync_link_state", "edge_sync_sync_latency_seconds",
        "edge_sync_supervisor_restarts")} == {
        "edge_sync_events": "counter", "edge_sync_device_requests": "counter",
        "edge_sync_queue_depth": "gauge", "edge_sync_link_state": "gauge",
        "edge_sync_sync_latency_seconds": "histogram", "edge_sync_supervisor_restarts": "counter"}
    assert all(name.startswith("edge_sync_") for name in types), sorted(types)
    for outcome, expected in (("appended", total), ("acked", total)):
        assert value(edge, "edge_sync_events_total", lane="high", outcome=outcome) == high
        assert value(edge, "edge_sync_events_total", lane="normal", outcome=outcome) \
            == expected - high
    for outcome in ("refused", "evicted", "dead_lettered"):
        assert value(edge, "edge_sync_events_total", outcome=outcome) == 0, outcome
    assert value(edge, "edge_sync_device_requests_total", protocol="http", code="200") == 10
    assert value(edge, "edge_sync_device_requests_total", protocol="http", code="401") == 1
    assert {s.labels["code"]: s.value for s in edge if s.name == "edge_sync_device_requests_total"
            and s.labels["protocol"] == "mqtt"} == {"0": 1, "5": 1}
    assert {s.labels["lane"]: s.value for s in edge if s.name == "edge_sync_queue_depth"} == {
        "high": 0, "normal": 0}
    assert {s.labels["status"]: s.value for s in edge if s.name == "edge_sync_queue_events"} == {
        "pending": 0, "deployed": total, "dead": 0}
    assert value(edge, "edge_sync_queue_oldest_pending_age_seconds") == 0
    assert {s.labels["state"] for s in edge
            if s.name == "edge_sync_link_state" and s.value == 1} == {"CONNECTED"}
    assert value(edge, "edge_sync_link_state") == 1  # one state at a time
    assert {s.labels["state"] for s in edge
            if s.name == "edge_sync_link_breaker_state" and s.value == 1} == {"CLOSED"}
    assert value(edge, "edge_sync_sync_latency_seconds_count") == total
    assert value(edge, "edge_sync_sync_latency_seconds_bucket", le="+Inf") == total
    # every uplink message was acknowledged once, none resent: each timed once, send to ack
    assert types["edge_sync_uplink_ack_seconds"] == "histogram"
    assert value(edge, "edge_sync_uplink_resends_total") == 0
    sent_messages = value(edge, "edge_sync_uplink_messages_sent_total")
    assert sent_messages >= 1
    assert value(edge, "edge_sync_uplink_ack_seconds_count") == sent_messages
    assert value(edge, "edge_sync_uplink_ack_seconds_bucket", le="+Inf") == sent_messages
    assert 0 < value(edge, "edge_sync_uplink_ack_seconds_sum") < DEADLINE_S * sent_messages
    assert value(edge, "edge_sync_storage_cap_bytes") > value(edge, "edge_sync_storage_used_bytes") > 0
    # the store's parts add up to the used bytes: the drained log is all delivered (kept for
    # storage.retention_hours); the cloud's root chain saved the 10 points locally (a page of
    # points, a page of their expiry index), the two devices' latest values fit one page
    parts = {s.labels["part"]: s.value for s in edge if s.name == "edge_sync_storage_part_bytes"}
    assert list(parts) == ["pending", "delivered", "local_timeseries", "latest", "other"]
    assert sum(parts.values()) == value(edge, "edge_sync_storage_used_bytes")
    assert (parts["pending"], parts["local_timeseries"], parts["latest"]) == (0, 8192, 4096)
    assert parts["delivered"] > 0
    assert value(edge, "edge_sync_rule_local_points") == 10
    assert value(edge, "edge_sync_supervisor_restarts_total") == 0
    latency_ms = st["link"]["sync_latency_ms"]
    assert isinstance(latency_ms, int) and latency_ms >= 0
    assert latency_ms / 1000 <= value(edge, "edge_sync_sync_latency_seconds_sum")

    content_type, types, sent = scrape(cloud.admin_port)
    assert content_type.startswith("text/plain; version=")
    assert all(name.startswith("edge_cloud_") for name in types), sorted(types)
    assert types["edge_cloud_uplink_events"] == "counter"
    assert value(sent, "edge_cloud_uplink_events_total", outcome="applied") == total
    assert value(sent, "edge_cloud_uplink_events_total", outcome="duplicate") == 0
    assert value(sent, "edge_cloud_edges_connected") == 1
    assert value(sent, "edge_cloud_downlinks_total", outcome="parked") == 0
