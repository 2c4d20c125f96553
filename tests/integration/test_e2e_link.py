"""End to end over the cloud link, with real processes on loopback: `edge-cloud serve`
(tests.helpers.cloud_proc.CloudProc) and `edge-sync run` (tests.helpers.agent.Agent), each with
its LMDB store in tmp_path and JSON logs captured to files there.

Devices post over the edge's device HTTP API; what the cloud applied is read back with its
admin API / `edge-cloud events --json` and compared with the edge's own log (read-only LMDB):
exactly once, per-device order, creation before data, dead letters where the contract says so.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from edge_sync.storage.records import Status
from tests.helpers.agent import Agent, NoAnswer, read_log
from tests.helpers.cloud_proc import (
    CloudProc,
    check_delivered,
    edge_status,
    link_env,
    link_state,
    small_message_link,
    wait_connected,
    wait_drained,
)
from tests.helpers.metric_values import metric_total
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-e2e-link"
SECRET = "sec-e2e-link-5b1f0c"
DEADLINE_S = 30.0



# -- helpers -----------------------------------------------------------------------------------


def telemetry_values(events: list[dict[str, Any]], key: str) -> list[Any]:
    return [e["body"]["values"][key] for e in events if e["action"] == "TIMESERIES_UPDATED"]


def post_points(agent: Agent, devices: list[tuple[str, str]], per_device: int, *,
                threads: int) -> list[tuple[str, int, Any]]:
    """Post per_device points to every device, {"n": 0..per_device-1}, from `threads` client
    threads that each own a share of the devices (so each device's requests are sequential, in
    counter order). Returns every answer that was not 200: (device id, n, status or error)."""
    failures: list[tuple[str, int, Any]] = []
    lock = threading.Lock()

    def client(owned: list[tuple[str, str]]) -> None:
        with agent.client(timeout=30.0) as http:
            for n in range(per_device):
                for device_id, token in owned:
                    try:
                        code: Any = http.post_telemetry(token, {"n": n})
                    except NoAnswer as exc:
                        code = repr(exc)
                    if code != 200:
                        with lock:
                            failures.append((device_id, n, code))

    workers = [threading.Thread(target=client, args=(devices[i::threads],), daemon=True)
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(600)
    assert not any(w.is_alive() for w in workers), "posting clients did not finish"
    return failures


def assert_device_stream(events: list[dict[str, Any]], token: str, values: list[Any],
                         key: str = "n") -> None:
    """One device as the cloud applied it: ADDED, CREDENTIALS_UPDATED (its token), then
    exactly these telemetry values, in this order."""
    actions = [e["action"] for e in events]
    assert actions[:2] == ["ADDED", "CREDENTIALS_UPDATED"], actions[:4]
    assert set(actions[2:]) <= {"TIMESERIES_UPDATED"}, sorted(set(actions))
    assert events[1]["body"]["credentialsId"] == token
    assert telemetry_values(events, key) == values


# -- tests -------------------------------------------------------------------------------------


def test_e2e_10k_points_50_devices(tmp_path, soak, procs):
    n_devices = 50
    per_device = 2000 if soak else 200  # 100,000 / 10,000 points
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-10k", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)

    devices = [agent.create_device(f"dev-{i:02d}") for i in range(n_devices)]
    tokens = dict(devices)
    failures = post_points(agent, devices, per_device, threads=10)
    assert failures == []

    total = n_devices * (per_device + 2)
    cloud.wait_applied(RK, total, timeout=300 if soak else 120)
    st = wait_drained(agent)
    assert st["queue"]["pending"] == 0 and st["queue"]["dead"] == 0
    assert st["queue"]["deployed"] == total

    edge_log = read_log(agent.data_dir)
    assert len(edge_log) == total
    not_deployed = [(e.seq, e.status.value) for e in edge_log if e.status is not Status.DEPLOYED]
    assert not_deployed == []

    cloud_events = cloud.events(RK)
    assert len(cloud_events) == total  # exactly once: no more than the edge has
    grouped = check_delivered(cloud_events, edge_log)
    assert set(grouped) == set(tokens)
    for device_id, events in grouped.items():
        assert_device_stream(events, tokens[device_id], list(range(per_device)))
    assert cloud.applied_count(RK) == total


def test_cloud_down_then_back(tmp_path, procs):
    n_devices, per_device = 3, 100
    cloud = procs(CloudProc(tmp_path / "cloud"))  # ports reserved, not started yet
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    devices = [agent.create_device(f"offline-{i}") for i in range(n_devices)]
    tokens = dict(devices)
    assert post_points(agent, devices, per_device, threads=n_devices) == []

    # The edge has tried (and failed) to reach the cloud a few times, and queues everything.
    wait_until(lambda: edge_status(agent)["metrics"]["edge_sync_link_connect_attempts_total"] >= 3,
               timeout=DEADLINE_S, what="3 failed connection attempts")
    st = edge_status(agent)
    total = n_devices * (per_device + 2)
    assert st["link"]["state"] != "CONNECTED"
    assert st["link"]["state"] in {"CONNECTING", "BACKOFF"}, st["link"]
    assert st["metrics"]["edge_sync_link_connects_accepted_total"] == 0
    assert st["queue"]["pending"] == total
    assert st["queue"]["deployed"] == 0

    # The edge is registered while the cloud is down (the CLI writes its store directly).
    cloud.create_edge("edge-offline", RK, SECRET)
    assert cloud.events_cli(RK) == []
    cloud.start()

    wait_connected(agent)
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    st = wait_drained(agent)
    assert st["queue"]["deployed"] == total
    edge_log = read_log(agent.data_dir)
    assert [e.seq for e in edge_log if e.status is not Status.DEPLOYED] == []
    cloud_events = cloud.events(RK)
    assert len(cloud_events) == total
    grouped = check_delivered(cloud_events, edge_log)
    assert set(grouped) == set(tokens)
    for device_id, events in grouped.items():
        assert_device_stream(events, tokens[device_id], list(range(per_device)))


def test_bad_credentials_no_retry_storm(tmp_path, procs):
    rk, secret = "rk-not-registered-yet", "sEcReT-never-logged-93c1"
    max_interval_s = 2.0
    window_s = 5.0
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    agent = procs(Agent(tmp_path / "edge", env=link_env(
        cloud, rk, secret,
        EDGE_CLOUD_RECONNECT_INTERVAL_MS="100",
        EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS=str(int(max_interval_s * 1000)),
    ))).start()
    device_id, token = agent.create_device("waiting")
    for n in range(5):
        assert agent.post_telemetry(token, {"n": n}) == 200

    wait_until(lambda: link_state(agent) == "AUTH_FAILED", timeout=DEADLINE_S, what="AUTH_FAILED")
    first = edge_status(agent)["metrics"]["edge_sync_link_connect_attempts_total"]
    states: set[str] = set()
    end = time.monotonic() + window_s
    while time.monotonic() < end:  # the behaviour under test: the link over a fixed window
        st = edge_status(agent)
        states.add(st["link"]["state"])
        time.sleep(0.05)  # the sampling pace, not a wait for a condition
    st = edge_status(agent)
    m = st["metrics"]
    during = m["edge_sync_link_connect_attempts_total"] - first
    # After BAD_CREDENTIALS the edge retries only at the maximum backoff: at most one attempt
    # per max_interval (+2 for the window's edges), yet it does keep retrying.
    assert 1 <= during <= int(window_s / max_interval_s) + 2, during
    assert m["edge_sync_link_connects_accepted_total"] == 0
    assert m["edge_sync_link_bad_credentials_total"] >= m["edge_sync_link_connect_attempts_total"] - 1
    assert states <= {"AUTH_FAILED", "CONNECTING"}, states
    assert st["queue"]["pending"] == 7
    refusals = [r for r in cloud.log_records() if r["message"].startswith("bad credentials")]
    assert 1 <= len(refusals) <= int((window_s + 2) / max_interval_s) + 3, len(refusals)
    assert all(r.get("routing_key") == rk for r in refusals)

    errors = [r for r in agent.log_records()
              if r["level"] == "ERROR" and r.get("state") == "AUTH_FAILED"]
    assert errors, "no ERROR line for the AUTH_FAILED state"
    assert all(rk in r["message"] and "bad credentials" in r["message"] for r in errors)

    # Registered in the cloud: the link is up within the maximum interval (plus a margin) and
    # the queue drains.
    cloud.create_edge("edge-late", rk, secret)
    registered = time.monotonic()
    wait_until(lambda: link_state(agent) == "CONNECTED", timeout=max_interval_s * 1.2 + 3.0,
               what="CONNECTED after the edge was registered")
    assert time.monotonic() - registered <= max_interval_s * 1.2 + 3.0
    cloud.wait_applied(rk, 7, timeout=DEADLINE_S)
    wait_drained(agent)
    grouped = check_delivered(cloud.events(rk), read_log(agent.data_dir))
    assert_device_stream(grouped[device_id], token, [0, 1, 2, 3, 4])

    for text in (agent.stderr_text(all_runs=True), cloud.stderr_text(all_runs=True)):
        assert secret not in text


def test_oversized_event_dead_lettered(tmp_path, procs):
    cloud, agent = small_message_link(procs, tmp_path, "edge-small-msgs", RK, SECRET)
    device_id, token = agent.create_device("big-talker")
    big = "x" * 20_000
    with agent.client() as http:
        for n in range(5):
            assert http.post_telemetry(token, {"n": n}) == 200
        assert http.post_telemetry(token, {"n": 5, "blob": big}) == 200
        for n in range(6, 11):
            assert http.post_telemetry(token, {"n": n}) == 200

    st = wait_drained(agent)
    assert st["queue"]["dead"] == 1
    assert st["queue"]["deployed"] == 12
    assert metric_total(st["metrics"], "edge_sync_dead_letters_total") == 1
    edge_log = read_log(agent.data_dir)
    dead = [e for e in edge_log if e.status is Status.DEAD]
    assert [e.body["values"]["n"] for e in dead] == [5]
    assert dead[0].body["values"]["blob"] == big
    assert dead[0].error is not None and "maxInboundMessageSize" in dead[0].error
    assert "8192" in dead[0].error
    assert [e.seq for e in edge_log if e.status is Status.PENDING] == []

    cloud_events = cloud.events(RK)
    grouped = check_delivered(cloud_events, edge_log)
    assert_device_stream(grouped[device_id], token, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10])
    assert len(cloud_events) == 12
    # The dead letter is committed (and counted in the status) before the queue logs it.
    dl = wait_until(lambda: [r for r in agent.log_records() if r["message"] == "event dead-lettered"],
                    timeout=DEADLINE_S, what="the dead letter logged")
    assert [r["seq"] for r in dl] == [dead[0].seq]
    # docs/logs.md's recipe for every dead letter of one device finds it, with its lane
    mine = [r for r in agent.log_records()
            if r.get("entity_id") == device_id and r["message"] == "event dead-lettered"]
    assert [(r["component"], r["seq"], r["entity_type"], r["lane"]) for r in mine] == \
        [("queue", dead[0].seq, "DEVICE", "normal")]
    assert "maxInboundMessageSize" in mine[0]["error"]


def test_shared_attribute_reaches_device(tmp_path, procs):
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-attrs", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)

    # A device created on the edge reaches the cloud through the uplink; a shared attribute
    # set in the cloud comes back down and the device reads it.
    device_id, token = agent.create_device("thermostat")
    cloud.wait_applied(RK, 2, timeout=DEADLINE_S)
    out = cloud.set_attr("thermostat", {"setpoint": 21.5, "mode": "eco", "limits": {"hi": 30}},
                         routing_key=RK)
    assert out["device"] == device_id

    def shared() -> dict[str, Any] | None:
        resp = agent.device("GET", f"/api/v1/{token}/attributes?sharedKeys=setpoint,mode,limits")
        assert resp.status == 200, resp.body
        got = resp.json().get("shared")
        return got if got else None

    got = wait_until(shared, timeout=DEADLINE_S, what="the shared attributes on the edge")
    assert got == {"setpoint": 21.5, "mode": "eco", "limits": {"hi": 30}}
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=DEADLINE_S,
               what="the cloud's downlink queue empty")

    # A device created in the cloud (sent down to the edge) can post with its token, and its
    # telemetry goes up.
    made = cloud.create_device(RK, "cloud-made", token="tok-cloud-made-1")
    assert made["token"] == "tok-cloud-made-1"

    def accepted() -> bool:
        return agent.post_telemetry("tok-cloud-made-1", {"temp": 19}) == 200

    wait_until(accepted, timeout=DEADLINE_S, what="the cloud-made device accepted on the edge")
    st = wait_drained(agent)
    edge_log = read_log(agent.data_dir)
    cloud_events = cloud.events(RK)
    grouped = check_delivered(cloud_events, edge_log)
    assert [(e["action"], e["body"]["values"]) for e in grouped[made["id"]]] == \
        [("TIMESERIES_UPDATED", {"temp": 19})]
    assert [e["action"] for e in grouped[device_id]] == ["ADDED", "CREDENTIALS_UPDATED"]
    assert st["queue"]["dead"] == 0
    assert edge_status(agent)["devices"] == 2
