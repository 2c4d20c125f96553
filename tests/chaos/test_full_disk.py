"""Chaos: the edge's storage fills up during a cloud outage, at its size cap
(storage.max_size_mb) and on a real small filesystem (an 8 MiB tmpfs). New data is refused
with 507, each refusal counted (edge_sync_events_total{outcome="refused"},
edge_sync_device_requests_total{code="507"}) and
logged with its reason; nothing accepted is lost; once the cloud is back and the backlog
drains, the same running edge accepts data again, and the cloud holds exactly what was
accepted, once, in order.

tests/integration/test_bad_input.py covers a full store without a link (507 body, the store
kept across a restart); this file adds the outage, the counters, the recovery and the real
filesystem.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.agent import Agent, HttpClient, Response, read_log
from tests.helpers.cloud_proc import (
    CloudProc,
    edge_status,
    link_env,
    wait_connected,
)
from tests.helpers.metric_values import metric_total
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-full-disk"
SECRET = "sec-full-disk-4c1e9a"
PAD = "f" * 2000
DEADLINE_S = 60.0
REFUSAL_LOG_INTERVAL_S = 0.5
REFUSALS = 6  # posts refused in a row before the cloud comes back


# -- the devices' side ------------------------------------------------------------------------------


@dataclass
class Poster:
    """Posts numbered telemetry for a few devices and records every outcome. Posts alternate
    between one entry ({"v": n, "pad": ...}) and a list of three entries (three events), so the
    refusal counter is checked in events, not in requests."""

    agent: Agent
    devices: dict[str, str]  # device id -> token
    next_value: int = 0
    accepted: dict[str, list[int]] = field(default_factory=dict)
    refused: list[tuple[str, list[int], Response]] = field(default_factory=list)
    posts: int = 0

    def post(self, client: HttpClient) -> Response:
        ids = sorted(self.devices)
        device = ids[(self.posts // 2) % len(ids)]  # each device gets both sizes
        n = 1 if self.posts % 2 == 0 else 3
        self.posts += 1
        values = list(range(self.next_value, self.next_value + n))
        self.next_value += n
        now = int(time.time() * 1000)
        body: Any = ({"v": values[0], "pad": PAD} if n == 1 else
                     [{"ts": now + i, "values": {"v": v, "pad": PAD}} for i, v in enumerate(values)])
        resp = client.post_json(f"/api/v1/{self.devices[device]}/telemetry", body)
        if resp.status == 200:
            self.accepted.setdefault(device, []).extend(values)
        else:
            self.refused.append((device, values, resp))
        return resp

    def fill(self, refusals: int, *, limit: int = 20_000) -> int:
        """Post until `refusals` posts in a row were refused; the number accepted meanwhile."""
        accepted = 0
        in_a_row = 0
        with self.agent.client() as client:
            for _ in range(limit):
                resp = self.post(client)
                if resp.status == 200:
                    assert in_a_row == 0, "a post was accepted between refusals during the outage"
                    accepted += 1
                else:
                    in_a_row += 1
                    if in_a_row == refusals:
                        return accepted
        raise AssertionError(f"storage never filled up in {limit} posts")

    def refused_events(self) -> int:
        return sum(len(values) for _, values, _ in self.refused)


def create_devices(agent: Agent, count: int) -> dict[str, str]:
    return dict(agent.create_device(f"filler-{i}") for i in range(count))


# -- checks -----------------------------------------------------------------------------------------


def check_refusals(agent: Agent, poster: Poster, full_message: str) -> None:
    """Every 507: its JSON body; the counters, one per refused event and one per refused
    request; the refusal lines (``check_refusal_lines``)."""
    for _device, _values, resp in poster.refused:
        assert resp.status == 507, (resp.status, resp.body)
        assert resp.headers["retry-after"] == "1"
        body = resp.json()
        assert (body["status"], body["error"]) == (507, "insufficient storage"), body
        assert body["message"].startswith("storage full, new data refused: "), body
        assert full_message in body["message"], body

    metrics = edge_status(agent)["metrics"]
    assert metric_total(metrics, "edge_sync_events_total", outcome="refused") == poster.refused_events()
    assert metrics['edge_sync_device_requests_total{protocol="http",code="507"}'] == len(poster.refused)
    # the default policy refuses, never evicts
    assert metric_total(metrics, "edge_sync_events_total", outcome="evicted") == 0
    prometheus = agent.admin("GET", "/metrics").body.decode()
    refused = [s for f in text_string_to_metric_families(prometheus) for s in f.samples
               if s.name == "edge_sync_events_total" and s.labels["outcome"] == "refused"]
    assert sum(s.value for s in refused) == poster.refused_events()

    # every refused command counted, whatever events it makes
    assert metrics['edge_sync_appends_refused_total{reason="storage_full"}'] == len(poster.refused)
    check_refusal_lines(agent, poster)


def refusal_lines(agent: Agent) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                          list[dict[str, Any]]]:
    """The queue's refusal lines: the first of each run, the summaries, the ends."""
    records = [r for r in agent.log_records() if r.get("component") == "queue"]
    return ([r for r in records if r["message"].startswith("storage full: new data refused")],
            [r for r in records if " more commands refused from " in r["message"]],
            [r for r in records if r["message"].startswith("storage accepts again after ")])


def check_refusal_lines(agent: Agent, poster: Poster) -> None:
    """A full store's refusals are a few lines, not one per request: one WARNING with the first
    refusal in full, then one summary per interval (EDGE_STORAGE_REFUSAL_LOG_INTERVAL_S) that
    together count every refusal and name the devices refused; no per-request line above
    DEBUG (the HTTP 507s, the queue's ``append refused``)."""
    first_device, first_values, first_resp = poster.refused[0]
    firsts, _, _ = refusal_lines(agent)
    assert [(r["level"], r["entity"], r["events"], r["error"]) for r in firsts] == [
        ("WARNING", first_device, len(first_values), first_resp.json()["message"])]
    assert firsts[0]["message"] == (
        f"storage full: new data refused from now on ({first_resp.json()['message']}); "
        f"refusals are summarised every {REFUSAL_LOG_INTERVAL_S:g} s until the store accepts "
        "again")
    later = len(poster.refused) - 1
    summaries = wait_until(
        lambda: (lines := refusal_lines(agent)[1]) and sum(r["refused"] for r in lines) == later
        and lines, timeout=DEADLINE_S, what="summaries telling every refusal")
    assert all(r["level"] == "WARNING" for r in summaries)
    per_device: dict[str, int] = {}
    for r in summaries:
        assert sum(r["most_refused"].values()) == r["refused"]  # two devices: all named
        for device, n in r["most_refused"].items():
            per_device[device] = per_device.get(device, 0) + n
    expected: dict[str, int] = {}
    for device, _, _ in poster.refused[1:]:
        expected[device] = expected.get(device, 0) + 1
    assert per_device == expected
    assert summaries[-1]["total"] == len(poster.refused)
    records = agent.log_records()
    assert [r for r in records if r["message"].startswith("append refused: ")] == []
    assert [r for r in records if r.get("component") == "device-http"
            and r.get("code") == "507"] == []


def stored_values(agent: Agent) -> dict[str, list[int]]:
    """Telemetry values per device in the edge's log (seq order)."""
    out: dict[str, list[int]] = {}
    for e in read_log(agent.data_dir):
        if e.action == "TIMESERIES_UPDATED":
            out.setdefault(str(e.entity_id), []).append(e.body["values"]["v"])
    return out


def check_cloud_holds_exactly(cloud: CloudProc, poster: Poster) -> None:
    """Each device: ADDED, CREDENTIALS_UPDATED, then exactly the accepted values, in order,
    each once; no refused value; no (store, seq) applied twice."""
    events = cloud.events(RK)
    keys = [(e["store_id"], e["seq"]) for e in events]
    assert len(keys) == len(set(keys)), "an event applied twice"
    per_device: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        per_device.setdefault(e["entity_id"], []).append(e)
    assert set(per_device) == set(poster.devices)
    refused = {v for _, values, _ in poster.refused for v in values}
    for device, evs in per_device.items():
        assert [e["action"] for e in evs[:2]] == ["ADDED", "CREDENTIALS_UPDATED"]
        assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs)
        values = [e["body"]["values"]["v"] for e in evs[2:]]
        assert values == poster.accepted.get(device, []), f"{device}: cloud != accepted"
        assert not set(values) & refused


def wait_drained_alive(agent: Agent, *, timeout: float = DEADLINE_S) -> dict[str, Any]:
    """wait_drained, failing at once when the edge exits, its queue actor crashes, or a
    downlink (the sync's) cannot be applied: with a full store none of these may happen, and
    each of them means the backlog will never drain."""
    def drained() -> dict[str, Any] | None:
        assert agent.running, f"the edge exited with {agent.proc.poll() if agent.proc else None}"
        records = agent.log_records()
        crashed = [r["message"] for r in records
                   if r.get("child") == "queue" and r["message"].startswith("queue exited with")]
        assert crashed == [], f"the queue actor crashed: {crashed[0]}"
        failed = [r["message"] for r in records
                  if r.get("component") == "downlink" and "not applied" in r["message"]]
        assert failed == [], f"the link cannot finish its sync: {failed[0]}"
        st = edge_status(agent)
        if st["queue"]["pending"] == 0 and st["link"].get("in_flight_messages") == 0:
            return st
        return None

    return dict(wait_until(drained, timeout=timeout, what="the backlog drained"))


def outage(agent: Agent, poster: Poster, full_message: str) -> None:
    """The cloud is down: post until refused; check the refusals and that nothing accepted was
    lost; the edge keeps answering reads."""
    accepted = poster.fill(REFUSALS)
    assert accepted > 50, accepted
    check_refusals(agent, poster, full_message)
    assert stored_values(agent) == poster.accepted, "an accepted value is missing on the edge"
    token = next(iter(poster.devices.values()))
    # client keys only: asking for shared attributes the edge does not hold would queue a
    # request to the cloud, one more event the full disk refuses (and counts)
    attrs = agent.device("GET", f"/api/v1/{token}/attributes?clientKeys=v")
    assert (attrs.status, attrs.json()) == (200, {"client": {}})
    st = edge_status(agent)
    assert st["queue"]["pending"] == sum(len(v) for v in poster.accepted.values()) + 4
    assert st["link"]["state"] != "CONNECTED"


def recovery(agent: Agent, cloud: CloudProc, poster: Poster, *, after: int) -> None:
    """Start the cloud: the backlog drains, then `after` new posts are all accepted by the same
    process (delivered events are purged to make room); the cloud holds exactly the accepted
    values, once each, in order."""
    pid = agent.pid
    cloud.start()
    wait_drained_alive(agent)
    wait_connected(agent, timeout=DEADLINE_S)
    refused_before = len(poster.refused)
    with agent.client() as client:
        for _ in range(after):
            resp = poster.post(client)
            assert resp.status == 200, (resp.status, resp.body)
    assert len(poster.refused) == refused_before
    wait_drained_alive(agent)
    assert agent.pid == pid and agent.running, "the edge was restarted"
    metrics = edge_status(agent)["metrics"]
    assert metric_total(metrics, "edge_sync_events_total", outcome="refused") == poster.refused_events()
    check_cloud_holds_exactly(cloud, poster)
    purges = [r for r in agent.log_records() if r.get("component") == "queue"
              and r["message"] == "purged deployed events"]
    assert purges, "room was made without purging delivered events?"
    # the end of the run, once the store took commands and refused none for an interval
    ends = wait_until(lambda: refusal_lines(agent)[2], timeout=DEADLINE_S,
                      what="the end of the refusals")
    assert [(r["level"], r["total"], r["entities"]) for r in ends] == [
        ("INFO", len(poster.refused), len({device for device, _, _ in poster.refused}))]
    assert len(refusal_lines(agent)[0]) == 1  # one run


# -- at the size cap ----------------------------------------------------------------------------------


def edge_at_cap(tmp_path: Path, procs: Callable[[Any], Any]) -> tuple[CloudProc, Agent, Poster]:
    """A registered but stopped cloud, and an edge linked to it with a 1 MiB store cap."""
    cloud = procs(CloudProc(tmp_path / "cloud"))
    cloud.create_edge("edge-full", RK, SECRET)  # with the server down: straight to its store
    agent = procs(Agent(tmp_path / "edge", env=link_env(
        cloud, RK, SECRET, EDGE_STORAGE_MAX_MB="1", EDGE_STORAGE_MAP_SIZE_INITIAL_MB="1",
        EDGE_STORAGE_REFUSAL_LOG_INTERVAL_S=str(REFUSAL_LOG_INTERVAL_S))))
    agent.start()
    return cloud, agent, Poster(agent, create_devices(agent, 2))


def test_size_cap_reached_during_outage_refuses_counts_and_logs(tmp_path, procs):
    _cloud, agent, poster = edge_at_cap(tmp_path, procs)
    outage(agent, poster, "stored data would exceed the size cap of 1 MiB (storage.max_size_mb)")
    assert agent.terminate() == 0
    assert stored_values(agent) == poster.accepted
    assert "Traceback" not in agent.stderr_text()


def test_size_cap_recovers_by_itself_when_the_backlog_drains(tmp_path, procs):
    cloud, agent, poster = edge_at_cap(tmp_path, procs)
    outage(agent, poster, "(storage.max_size_mb)")
    recovery(agent, cloud, poster, after=150)


# -- on a small filesystem --------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted in tmp_path, unmounted at the end. Mounting needs root (or
    CAP_SYS_ADMIN), which the test suite runs with: a failure to mount fails the test, with
    the reason."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot mount an 8 MiB tmpfs for the full-disk test: {exc}")
    if out.returncode != 0:
        pytest.fail("cannot mount an 8 MiB tmpfs for the full-disk test (needs root or "
                    f"CAP_SYS_ADMIN): {out.stderr.strip() or out.returncode}")
    try:
        yield mount_point
    finally:
        done = subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30,
                              check=False)
        if done.returncode != 0:  # still busy: detach it now, freed when the last user exits
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30,
                           check=False)


def _full_filesystem(message: str) -> bool:
    """A refusal names the full filesystem and LMDB's error: ENOSPC, or EIO when a page write
    ran out of space part-way (LMDB's mdb_page_flush reports a short write as EIO; which of the
    two a full tmpfs gives depends on where the last write falls)."""
    return "disk full under " in message and (
        "(mdb_txn_commit: No space left on device)" in message
        or "(mdb_txn_commit: Input/output error)" in message)


@contextlib.contextmanager
def edge_on(small_fs: Path, tmp_path: Path) -> Iterator[tuple[CloudProc, Agent]]:
    """A stopped cloud and an edge whose store is on the small filesystem; both killed on
    exit (before the filesystem is unmounted)."""
    cloud = CloudProc(tmp_path / "cloud")
    agent = Agent(tmp_path / "edge", data_dir=small_fs / "data",
                  env=link_env(cloud, RK, SECRET,
                               EDGE_STORAGE_REFUSAL_LOG_INTERVAL_S=str(REFUSAL_LOG_INTERVAL_S)))
    try:
        cloud.create_edge("edge-small-fs", RK, SECRET)
        agent.start()
        yield cloud, agent
    finally:
        agent.close()
        cloud.close()


def test_small_filesystem_full_loses_nothing_accepted(small_fs, tmp_path):
    """Once the disk is full the edge keeps answering, with 507; every value answered 200 is
    in the log, in order, and nothing refused is, also after the process is killed."""
    with edge_on(small_fs, tmp_path) as (_cloud, agent):
        poster = Poster(agent, create_devices(agent, 2))
        refused = 0
        with agent.client() as client:
            for _ in range(20_000):
                resp = poster.post(client)  # NoAnswer (the edge died of a full disk) fails
                refused += resp.status != 200
                if refused == 10:
                    break
        assert refused == 10
        assert agent.running, agent.stderr_text()[-3000:]
        assert sum(len(v) for v in poster.accepted.values()) > 500
        agent.kill9()
        assert stored_values(agent) == poster.accepted
        statuses = [resp.status for _, _, resp in poster.refused]
        assert statuses == [507] * 10, statuses
        assert all(_full_filesystem(resp.json()["message"]) for _, _, resp in poster.refused)


def test_small_filesystem_full_refuses_with_507_and_recovers_by_itself(small_fs, tmp_path):
    with edge_on(small_fs, tmp_path) as (cloud, agent):
        poster = Poster(agent, create_devices(agent, 2))
        outage(agent, poster, "disk full under ")
        for _, _, resp in poster.refused:
            assert _full_filesystem(resp.json()["message"]), resp.json()
        recovery(agent, cloud, poster, after=150)
