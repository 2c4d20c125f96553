"""End to end under faults, with real processes on loopback: the cloud (`edge-cloud serve`) or the
edge (`edge-sync run`) is killed with SIGKILL while points flow over the link and restarted on
the same ports and data directory; a downlink's acknowledgement is lost with the edge killed
after applying it. The outcome is checked exactly: what the cloud applied against what the
devices were told (200: there exactly once; no answer: at most once), per-device order, and the
cloud's downlink queue and the edge's applied-downlink record.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Status
from tests.helpers.agent import Agent, History, Load, check_log, read_log
from tests.helpers.cloud_proc import (
    CloudProc,
    check_delivered,
    edge_status,
    link_env,
    link_state,
    wait_connected,
    wait_drained,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-e2e-faults"
SECRET = "sec-e2e-faults-a8d2e4"
DEADLINE_S = 30.0



# -- helpers -----------------------------------------------------------------------------------


def check_cloud_against_load(cloud_events: list[dict[str, Any]], load: Load,
                             edge_data_dir: Any) -> None:
    """The cloud holds exactly the edge's log (check_delivered), and per device: creation first,
    then the telemetry values in posting order; every value that got 200 exactly once; nothing
    that was never posted; a value whose request got no answer at most once."""
    edge_log = read_log(edge_data_dir)
    assert [e.seq for e in edge_log if e.status is not Status.DEPLOYED] == []
    grouped = check_delivered(cloud_events, edge_log)
    tracks = {str(t.id): t for t in load.all_tracks}
    assert set(grouped) == set(tracks)
    for device_id, events in grouped.items():
        track = tracks[device_id]
        actions = [e["action"] for e in events]
        assert actions[:2] == ["ADDED", "CREDENTIALS_UPDATED"], (track.name, actions[:4])
        assert set(actions[2:]) == {"TIMESERIES_UPDATED"}, track.name
        values = [e["body"]["values"]["v"] for e in events[2:]]
        assert values == sorted(set(values)), f"{track.name}: duplicated or out of order"
        missing = sorted(set(track.acked) - set(values))
        assert missing == [], f"{track.name}: acknowledged values not in the cloud: {missing}"
        never = sorted(set(values) - set(track.acked) - set(track.unanswered))
        assert never == [], f"{track.name}: values in the cloud that were never accepted: {never}"


# -- a TCP proxy that can swallow what the edge sends ------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target, byte for byte, one thread per direction.

    hold(): from now on, bytes from the client (the edge) are read and dropped, so nothing the
    edge sends reaches the cloud, while the cloud's bytes still reach the edge.
    sever(): close every current connection (nothing more is forwarded) and stop holding, so
    the next connection is forwarded normally."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._holding = False
        self.dropped = 0  # bytes from the edge swallowed while holding
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_edge: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            with self._lock:
                swallow = from_edge and self._holding
                if swallow:
                    self.dropped += len(data)
            if swallow:
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def hold(self) -> None:
        with self._lock:
            self._holding = True

    def sever(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
            self._holding = False
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.sever()


def applied_downlink_ids(data_dir: Any) -> list[int]:
    """The downlinkMsgIds recorded in the edge's `downlinks` database (read-only), key order."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        with store.read() as txn:
            count = store.entries(txn, "downlinks")
            with txn.cursor(db=store.dbs["downlinks"]) as cur:
                ids = [struct.unpack(">i", bytes(key[:4]))[0] for key, _ in cur]
    finally:
        store.close()
    assert len(ids) == count
    return ids


# -- tests -------------------------------------------------------------------------------------


def test_cloud_killed_mid_batch(tmp_path, soak, procs):
    step = 5000 if soak else 600
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-cloud-killed", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET))).start()
    wait_connected(agent)
    load = Load(agent, clients=4, devices_per_client=3)
    try:
        load.go()
        # Points flow and the cloud is applying them: kill it mid-stream.
        cloud.wait_applied(RK, step // 2, timeout=DEADLINE_S)
        cloud.kill9()
        # The devices keep posting, the edge keeps accepting.
        load.wait_acked(load.acked_total() + step, timeout=60)
        wait_until(lambda: link_state(agent) != "CONNECTED", timeout=DEADLINE_S, what="the link down")
        seen = cloud.events(RK)  # read from the store with the cloud down
        assert seen and len(seen) < load.acked_total()
        cloud.restart()
        wait_connected(agent)
        load.wait_acked(load.acked_total() + step, timeout=60)
        load.pause_and_park()
    finally:
        load.finish()
    assert load.refused() == []
    assert [t.unanswered for t in load.all_tracks] == [[] for _ in load.all_tracks]
    check_log(agent.data_dir, load)

    st = wait_drained(agent)
    total = st["queue"]["total"]
    assert total == load.acked_total() + 2 * len(load.all_tracks)
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    cloud_events = cloud.events(RK)
    assert len(cloud_events) == total
    check_cloud_against_load(cloud_events, load, agent.data_dir)
    # Everything the cloud had applied before it was killed is still there, in the same place.
    assert cloud_events[:len(seen)] == seen


def test_edge_killed_mid_batch(tmp_path, soak, procs):
    backlog = 20_000 if soak else 2_000
    cloud = procs(CloudProc(tmp_path / "cloud"))
    cloud.create_edge("edge-killed", RK, SECRET)  # registered with the cloud down (CLI)
    # Small messages, one in flight: draining the backlog takes many round trips.
    agent = procs(Agent(tmp_path / "edge", env=link_env(
        cloud, RK, SECRET, EDGE_CLOUD_BATCH_SIZE="10", EDGE_CLOUD_WINDOW="1"))).start()
    load = Load(agent, clients=4, devices_per_client=3)
    history = History()
    try:
        load.go()
        load.wait_acked(backlog, timeout=120)  # a backlog builds while the cloud is down
        cloud.start()
        # The link drains the backlog while points keep flowing: kill the edge mid-drain.
        cloud.wait_applied(RK, backlog // 3, timeout=DEADLINE_S)
        agent.kill9()
        load.pause_and_park()
        at_kill = read_log(agent.data_dir)
        pending_at_kill = [e.seq for e in at_kill if e.status is Status.PENDING]
        assert pending_at_kill, "the backlog had drained before the kill: nothing was tested"
        check_log(agent.data_dir, load, history)
        unanswered_at_kill = sum(len(t.unanswered) for t in load.all_tracks)

        agent.start()
        load.go()
        load.wait_acked(load.acked_total() + 500, timeout=60)
        load.pause_and_park()
    finally:
        load.finish()
    assert load.refused() == []
    check_log(agent.data_dir, load, history)
    assert sum(len(t.unanswered) for t in load.all_tracks) == unanswered_at_kill

    st = wait_drained(agent)
    total = st["queue"]["total"]
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    cloud_events = cloud.events(RK)
    assert len(cloud_events) == total
    # The restarted edge resent what it had sent but not seen acknowledged: the cloud
    # recognised those (edge store, seq) and applied none of them twice.
    check_cloud_against_load(cloud_events, load, agent.data_dir)


def _edge_with_device(tmp_path: Any, procs: Callable[[Any], Any], *,
                      proxy: TcpProxy | None = None) -> tuple[CloudProc, Agent, str, str]:
    """A cloud, an edge linked to it (through the proxy when given, which is pointed at the
    cloud) and a device created on the edge that the cloud already knows."""
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-downlinks", RK, SECRET)
    extra = {}
    if proxy is not None:
        proxy.target = cloud.rpc_port
        extra["CLOUD_RPC_PORT"] = str(proxy.port)
    agent = procs(Agent(tmp_path / "edge", env=link_env(cloud, RK, SECRET, **extra)))
    agent.start()
    wait_connected(agent)
    device_id, token = agent.create_device("valve")
    cloud.wait_applied(RK, 2, timeout=DEADLINE_S)  # the cloud knows the device
    return cloud, agent, device_id, token


def _shared(agent: Agent, token: str, keys: str) -> dict[str, Any]:
    resp = agent.device("GET", f"/api/v1/{token}/attributes?sharedKeys={keys}")
    assert resp.status == 200, resp.body
    return dict(resp.json().get("shared", {}))


def test_downlink_queued_while_edge_down_is_applied_on_reconnect(tmp_path, procs):
    cloud, agent, device_id, token = _edge_with_device(tmp_path, procs)
    assert agent.terminate() == 0
    wait_until(lambda: cloud.edge_row(RK)["connected"] is False, timeout=DEADLINE_S,
               what="the cloud sees the edge gone")

    out = cloud.set_attr("valve", {"setpoint": 42, "mode": "auto"}, routing_key=RK)
    assert out["device"] == device_id
    assert cloud.edge_row(RK)["queued_downlinks"] == 1

    agent.start()
    # Wait on the cloud's side: a device read of a shared key the edge does not hold yet would
    # ask the cloud for it, and that answer is one more downlink.
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=DEADLINE_S,
               what="the cloud's downlink queue empty")
    assert _shared(agent, token, "setpoint,mode") == {"setpoint": 42, "mode": "auto"}
    m = edge_status(agent)["metrics"]
    # This run: the (incremental) sync's syncCompletedMsg, then the queued attribute update.
    assert (m['edge_sync_downlinks_total{outcome="applied"}'],
            m['edge_sync_downlinks_total{outcome="duplicate"}']) == (2, 0)
    applied = [r for r in agent.log_records()
               if r.get("component") == "downlink" and "applied" in r["message"]]
    assert [r["downlink_id"] for r in applied if "SHARED_SCOPE" in r["applied"]] == \
        [out["downlink"]]
    ids = applied_downlink_ids(agent.data_dir)
    assert sorted(ids) == sorted(set(ids))


@dataclass
class AckLost:
    """The state after _kill_edge_before_ack: the edge applied downlink `dl_id` (shared
    attribute setpoint=7 of the device with `token`), its acknowledgement never reached the
    cloud, the edge was killed, then restarted and linked again."""

    cloud: CloudProc
    agent: Agent
    token: str
    dl_id: int


def _kill_edge_before_ack(tmp_path: Any, procs: Callable[[Any], Any],
                          proxy: TcpProxy) -> AckLost:
    cloud, agent, _device_id, token = _edge_with_device(tmp_path, procs, proxy=proxy)

    # From here on nothing the edge sends reaches the cloud: the edge applies the downlink and
    # acknowledges it, the acknowledgement is swallowed, and the edge is killed.
    proxy.hold()
    out = cloud.set_attr("valve", {"setpoint": 7}, routing_key=RK)
    dl_id = int(out["downlink"])
    # The attribute is readable as soon as its transaction commits; the "applied" line and the
    # acknowledgement follow it. Kill the edge only once both happened (the acknowledgement
    # being the last thing the edge sends, swallowed by the proxy).
    wait_until(lambda: _shared(agent, token, "setpoint") == {"setpoint": 7}, timeout=DEADLINE_S,
               what="the attribute applied on the edge")

    def first_run() -> list[str]:
        return [r["message"].split(":")[0] for r in agent.log_records()
                if r.get("component") == "downlink" and r.get("downlink_id") == dl_id]

    assert wait_until(first_run, timeout=DEADLINE_S, what=f"downlink {dl_id} logged as applied") \
        == [f"downlink {dl_id} applied"]
    wait_until(lambda: proxy.dropped > 0, timeout=DEADLINE_S,
               what="the edge's acknowledgement swallowed by the proxy")
    agent.kill9()
    proxy.sever()
    wait_until(lambda: cloud.edge_row(RK)["connected"] is False, timeout=DEADLINE_S,
               what="the cloud sees the edge gone")
    assert cloud.edge_row(RK)["queued_downlinks"] == 1  # applied, but never acknowledged
    assert first_run() == [f"downlink {dl_id} applied"]  # (the killed run's log)

    agent.start()
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=DEADLINE_S,
               what="the redelivered downlink acknowledged")
    # The cloud removes the downlink from its queue, then logs the acknowledgement.
    wait_until(lambda: [r for r in cloud.log_records(all_runs=True)
                        if r["message"] == "downlink acknowledged" and r["downlink_id"] == dl_id],
               timeout=DEADLINE_S, what=f"the cloud's log line for downlink {dl_id} acknowledged")
    return AckLost(cloud, agent, token, dl_id)


def test_unacknowledged_downlink_redelivered_after_edge_kill(tmp_path, procs):
    proxy = TcpProxy(0)
    try:
        lost = _kill_edge_before_ack(tmp_path, procs, proxy)
        assert _shared(lost.agent, lost.token, "setpoint") == {"setpoint": 7}
        sent = [r for r in lost.cloud.log_records(all_runs=True)
                if r["message"] == "downlink sent" and r["downlink_id"] == lost.dl_id]
        assert len(sent) == 2  # delivered, then redelivered on the new stream
        acked = [r for r in lost.cloud.log_records(all_runs=True)
                 if r["message"] == "downlink acknowledged" and r["downlink_id"] == lost.dl_id]
        assert len(acked) == 1  # only the redelivery's acknowledgement arrived
        assert lost.cloud.edge_row(RK)["connected"] is True
    finally:
        proxy.close()


def test_downlink_applied_once_after_edge_restart(tmp_path, procs):
    proxy = TcpProxy(0)
    try:
        lost = _kill_edge_before_ack(tmp_path, procs, proxy)
        agent, dl_id = lost.agent, lost.dl_id
        assert _shared(agent, lost.token, "setpoint") == {"setpoint": 7}
        m = edge_status(agent)["metrics"]
        second_run = [r for r in agent.log_records()
                      if r.get("component") == "downlink" and r.get("downlink_id") == dl_id]
        assert agent.terminate() == 0
        ids = applied_downlink_ids(agent.data_dir)
        assert sorted(ids) == sorted(set(ids)), f"a downlink id recorded twice: {sorted(ids)}"
        # This run: the sync's syncCompletedMsg applied; the redelivery only acknowledged.
        assert (m['edge_sync_downlinks_total{outcome="applied"}'],
                m['edge_sync_downlinks_total{outcome="duplicate"}']) == (1, 1)
        assert len(second_run) == 1 and "redelivered" in second_run[0]["message"]
    finally:
        proxy.close()
