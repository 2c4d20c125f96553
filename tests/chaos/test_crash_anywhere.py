"""Chaos: crash anywhere. While devices post telemetry through the edge's HTTP API and an
operator sets shared attributes in the cloud (through its admin API, and with the `edge-cloud`
CLI straight into its store while it is down), the edge, the cloud, or both are killed with
SIGKILL at random moments (seeded; 30 kills in the bounded run, 300 with --soak) and restarted
on the same ports and data folders; the edge is sometimes killed again while still starting.

After the storm, with both up and everything drained:

- uplink: the cloud applied exactly the edge's log, each (store, seq) once, per device in seq
  order: every point answered 200 exactly once, a point whose request got no answer at most
  once, nothing else;
- downlink: every shared attribute set in the cloud has its final value on the edge (the edge's
  shared attributes equal the cloud's, key for key); a set the cloud acknowledged is there; the
  attribute every set overwrites ("last") holds the newest set's number (applied in order);
  each downlink was applied once (one "applied" log line per downlink id over all runs, no id
  twice in the edge's `downlinks` table) and the cloud's downlink queue is empty;
- neither process ever exited by itself.

Set CHAOS_SEED to replay another schedule.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import random
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_sync.cloud.store import CloudStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Status
from tests.helpers.agent import Agent, Load, check_log, read_log
from tests.helpers.cloud_proc import (
    CloudProc,
    check_delivered,
    link_env,
    wait_connected,
    wait_drained,
)
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-crash-anywhere"
SECRET = "sec-crash-anywhere-61f0c2"
SEED = int(os.environ.get("CHAOS_SEED", "20241127"))
DEADLINE_S = 60.0
CHECKPOINT_EVERY = 10  # kills between two checks that data still flows both ways


# -- the operator: shared attributes set in the cloud ------------------------------------------------


@dataclass(frozen=True)
class AttrSet:
    """One `set shared attributes {s<n>: n, last: n}` of a device and what came of it:
    acked (the cloud answered 200: durable), unanswered (sent, no answer: maybe), refused (not
    sent: the cloud was down) or failed (an error status: not stored)."""

    device: str
    n: int
    outcome: str
    downlink: int | None = None
    detail: str = ""


def attribute_values(n: int) -> dict[str, int]:
    return {f"s{n}": n, "last": n}


@dataclass
class Operator:
    """Sets shared attributes through the cloud's admin API from its own thread, at random
    moments (20..80 ms apart), whether the cloud is up or not."""

    admin_port: int
    devices: list[str]
    numbers: Iterator[int]
    seed: int
    sets: list[AttrSet] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> Operator:
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (idempotent); re-raise what went wrong in it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive()
        assert self.error is None, repr(self.error)

    def acked(self) -> int:
        return sum(s.outcome == "acked" for s in self.sets)

    def _run(self) -> None:
        rng = random.Random(self.seed)
        try:
            while not self._stop.wait(rng.uniform(0.02, 0.08)):  # the operator's pace
                device = rng.choice(self.devices)
                self.sets.append(self._set(device, next(self.numbers)))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _set(self, device: str, n: int) -> AttrSet:
        body = json.dumps({"device": device, "edge": RK, "values": attribute_values(n)}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=15)
        try:
            try:
                conn.connect()
            except OSError as exc:  # nothing was sent
                return AttrSet(device, n, "refused", detail=repr(exc))
            try:
                conn.request("POST", "/api/attributes", body,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                return AttrSet(device, n, "unanswered", detail=repr(exc))
        finally:
            conn.close()
        if resp.status in (200, 201):
            return AttrSet(device, n, "acked", int(json.loads(data)["downlink"]))
        return AttrSet(device, n, "failed", detail=f"{resp.status} {data[:300]!r}")


# -- the storm ---------------------------------------------------------------------------------------


@dataclass
class Storm:
    agent: Agent
    cloud: CloudProc
    load: Load
    operator: Operator
    numbers: Iterator[int]
    rng: random.Random
    kills: Counter[str] = field(default_factory=Counter)
    cli_sets: list[AttrSet] = field(default_factory=list)
    starting_kills: int = 0  # edge kills that hit a process still starting

    def check_alive(self) -> None:
        """Neither process may have exited by itself (a crash, exit 3, a refused store)."""
        for name, p in (("edge-sync run", self.agent), ("edge-cloud serve", self.cloud)):
            assert p.proc is not None
            code = p.proc.poll()
            assert code is None, (f"{name} exited by itself with {code} (seed {SEED}):\n"
                                  f"{p.stderr_text()[-4000:]}")

    def kill(self, target: str) -> None:
        self.check_alive()
        victims: list[Agent | CloudProc] = {
            "edge": [self.agent], "cloud": [self.cloud], "both": [self.agent, self.cloud]}[target]
        if len(victims) == 2 and self.rng.random() < 0.5:
            victims.reverse()
        if self.agent in victims and not self._edge_serving():
            self.starting_kills += 1
        for v in victims:
            assert v.kill9() == -9
        self.kills[target] += 1
        if self.cloud in victims and self.rng.random() < 0.3:
            self._set_with_cli_while_down()
        for v in victims:
            if v is self.cloud:
                self.cloud.start()
            elif self.rng.random() < 0.5:
                self.agent.start()
            else:
                self.agent.spawn()  # the next kill may hit it while it starts

    def _edge_serving(self) -> bool:
        try:
            return self.agent.admin("GET", "/api/status").status == 200
        except Exception:
            return False

    def _set_with_cli_while_down(self) -> None:
        """`edge-cloud attr set` with the server down: straight into the store; the server
        sends it when the edge connects."""
        device = self.rng.choice(self.operator.devices)
        n = next(self.numbers)
        out = self.cloud.set_attr(device, attribute_values(n), routing_key=RK)
        self.cli_sets.append(AttrSet(device, n, "acked", int(out["downlink"])))

    def checkpoint(self, applied_before: int, sets_before: int) -> tuple[int, int]:
        """Both up and linked; points reach the cloud and attribute sets are acknowledged."""
        self.check_alive()
        if not self._edge_serving():
            code = self.agent.wait_ready_or_exit()
            assert code is None, f"edge-sync run exited with {code}:\n{self.agent.stderr_text()}"
        wait_connected(self.agent, timeout=DEADLINE_S)
        self.cloud.wait_applied(RK, applied_before + 1, timeout=DEADLINE_S)
        wait_until(lambda: self.operator.acked() > sets_before, timeout=DEADLINE_S,
                   what="an attribute set acknowledged")
        return self.cloud.applied_count(RK), self.operator.acked()


def schedule(kills: int, rng: random.Random) -> list[str]:
    """Which process(es) each kill hits: a third each, in a random order."""
    targets = (["edge", "cloud", "both"] * math.ceil(kills / 3))[:kills]
    rng.shuffle(targets)
    return targets


# -- the checks --------------------------------------------------------------------------------------


def check_uplink(cloud_events: list[dict[str, Any]], load: Load, edge_dir: Path) -> None:
    """The cloud holds exactly the edge's log (check_delivered: each (store, seq) once, per
    entity in seq order); per device: creation first, then the values in posting order, every
    200 once, an unanswered one at most once, nothing else."""
    edge_log = read_log(edge_dir)
    assert [e.seq for e in edge_log if e.status is not Status.DEPLOYED] == []
    grouped = check_delivered(cloud_events, edge_log)
    tracks = {str(t.id): t for t in load.all_tracks}
    assert set(grouped) == set(tracks)
    for device_id, events in grouped.items():
        track = tracks[device_id]
        assert [e["action"] for e in events[:2]] == ["ADDED", "CREDENTIALS_UPDATED"], track.name
        assert {e["action"] for e in events[2:]} == {"TIMESERIES_UPDATED"}, track.name
        values = [e["body"]["values"]["v"] for e in events[2:]]
        assert values == sorted(set(values)), f"{track.name}: duplicated or out of order"
        missing = sorted(set(track.acked) - set(values))
        assert missing == [], f"{track.name}: acknowledged values not in the cloud: {missing}"
        never = sorted(set(values) - set(track.acked) - set(track.unanswered))
        assert never == [], f"{track.name}: values in the cloud that were never accepted: {never}"


def edge_downlink_keys(edge_dir: Path) -> list[tuple[int, bytes]]:
    """(downlinkMsgId, hash) of every downlink recorded in the edge's `downlinks` table."""
    store = LmdbStore(edge_dir, readonly=True)
    try:
        with store.read() as txn:
            count = store.entries(txn, "downlinks")
            with txn.cursor(db=store.dbs["downlinks"]) as cur:
                keys = [(struct.unpack(">i", bytes(k[:4]))[0], bytes(k[4:])) for k, _ in cur]
    finally:
        store.close()
    assert len(keys) == count
    return keys


def cloud_shared(cloud_dir: Path, devices: list[str]) -> dict[str, dict[str, Any]]:
    store = CloudStore(cloud_dir, readonly=True)
    try:
        return {d: store.shared_attributes(uuid.UUID(d)) for d in devices}
    finally:
        store.close()


def edge_shared(agent: Agent, tokens: dict[str, str]) -> dict[str, dict[str, Any]]:
    out = {}
    for device, token in tokens.items():
        resp = agent.device("GET", f"/api/v1/{token}/attributes")
        assert resp.status == 200, resp.body
        out[device] = dict(resp.json()["shared"])
    return out


def check_downlinks(agent: Agent, cloud: CloudProc, sets: list[AttrSet],
                    tokens: dict[str, str]) -> None:
    devices = sorted(tokens)
    in_cloud = cloud_shared(cloud.data_dir, devices)
    on_edge = wait_until(lambda: (lambda e: e if e == in_cloud else None)(edge_shared(agent, tokens)),
                         timeout=DEADLINE_S,
                         what="the edge's shared attributes equal to the cloud's")
    assert on_edge == in_cloud
    by_device: dict[str, list[AttrSet]] = {}
    for s in sets:
        by_device.setdefault(s.device, []).append(s)
    for device in devices:
        attrs = in_cloud[device]
        mine = by_device.get(device, [])
        maybe = {s.n for s in mine if s.outcome in ("acked", "unanswered")}
        acked = {s.n for s in mine if s.outcome == "acked"}
        present = {int(k[1:]) for k in attrs if k.startswith("s")}
        assert acked <= present, f"{device}: acknowledged sets missing: {sorted(acked - present)}"
        assert present <= maybe, f"{device}: sets never made: {sorted(present - maybe)}"
        assert all(attrs[f"s{n}"] == n for n in present)
        if present:
            assert attrs["last"] == max(present), f"{device}: an older set overwrote a newer one"

    keys = edge_downlink_keys(agent.data_dir)
    ids = [i for i, _ in keys]
    assert len(keys) == len(set(keys)), "a downlink key recorded twice"
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert twice == [], f"downlink ids recorded with two different contents: {twice}"
    # (Every acknowledged set was applied: checked above on the values. Its own downlink id
    # need not be a recorded key: sets queued one after another travel in one DownlinkMsg,
    # recorded under the last one's id.)
    applied = Counter(r["downlink_id"] for r in agent.log_records(all_runs=True)
                      if r.get("component") == "downlink" and " applied: " in r["message"])
    assert [i for i, n in applied.items() if n > 1] == [], "a downlink applied twice"
    # downlinks that failed to apply ("downlink N not applied: why"), not kinds set aside
    failed = [r["message"] for r in agent.log_records(all_runs=True)
              if r.get("component") == "downlink" and " not applied: " in r["message"]]
    assert failed == [], failed[:5]
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=DEADLINE_S,
               what="the cloud's downlink queue empty")


# -- the test -------------------------------------------------------------------------------------------


@pytest.mark.timeout(3600)
def test_kill9_anywhere_while_data_flows_both_ways(tmp_path, soak, procs):
    total_kills = 300 if soak else 30
    rng = random.Random(SEED)
    numbers = itertools.count(1)
    cloud = procs(CloudProc(tmp_path / "cloud", env={"CLOUD_DOWNLINK_RESEND_TIMEOUT_MS": "1000"}))
    cloud.start()
    cloud.create_edge("edge-crash", RK, SECRET)
    agent = procs(Agent(tmp_path / "edge", env=link_env(
        cloud, RK, SECRET,
        EDGE_CLOUD_RECONNECT_INTERVAL_MS="50", EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS="300",
        EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD="50", EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S="1",
        EDGE_CLOUD_RETRY_INTERVAL_MS="500", EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS="500",
        EDGE_CLOUD_BATCH_TIMEOUT_MS="50")))
    agent.start()
    wait_connected(agent)
    load = Load(agent, clients=2, devices_per_client=3)
    tokens = {str(t.id): t.token for t in load.all_tracks}
    cloud.wait_applied(RK, 2 * len(tokens), timeout=DEADLINE_S)  # the cloud knows the devices
    operator = Operator(cloud.admin_port, sorted(tokens), numbers, SEED + 1).start()
    storm = Storm(agent, cloud, load, operator, numbers, rng)
    started = time.monotonic()
    try:
        load.go()
        progress = storm.checkpoint(0, 0)
        for i, target in enumerate(schedule(total_kills, rng)):
            time.sleep(rng.uniform(0.1, 0.6))  # the random moment of the next kill
            storm.kill(target)
            if (i + 1) % CHECKPOINT_EVERY == 0:
                progress = storm.checkpoint(*progress)
        storm.check_alive()
        # Calm: both up and linked; a little more of everything, then stop producing.
        storm.checkpoint(*progress)
        operator.stop()
        load.pause_and_park()
    finally:
        operator.stop()
        load.finish()
    storm_s = time.monotonic() - started

    assert sum(storm.kills.values()) == total_kills
    assert min(storm.kills[t] for t in ("edge", "cloud", "both")) >= total_kills // 3
    refused = load.refused()
    assert {status for _, _, status, _ in refused} <= {503}, refused[:5]
    check_log(agent.data_dir, load)

    st = wait_drained(agent, timeout=DEADLINE_S * 2)
    cloud.wait_applied(RK, st["queue"]["total"], timeout=DEADLINE_S)
    cloud_events = cloud.events(RK)
    assert len(cloud_events) == st["queue"]["total"]
    check_uplink(cloud_events, load, agent.data_dir)

    sets = operator.sets + storm.cli_sets
    assert [s for s in sets if s.outcome == "failed"] == []
    check_downlinks(agent, cloud, sets, tokens)

    acked_points = load.acked_total()
    acked_sets = sum(s.outcome == "acked" for s in sets)
    assert acked_points > 20 * total_kills // 10, f"too little data flowed: {acked_points}"
    assert acked_sets > total_kills // 2, f"too few attribute sets: {acked_sets}"
    redelivered = sum(1 for r in agent.log_records(all_runs=True)
                      if r.get("component") == "downlink" and "redelivered" in r["message"])
    assert agent.terminate() == 0
    assert cloud.terminate() == 0
    print(f"\ncrash anywhere (seed {SEED}): {dict(storm.kills)} kills in {storm_s:.0f}s "
          f"({storm.starting_kills} while the edge was starting), {acked_points} points acked, "
          f"{sum(len(t.unanswered) for t in load.all_tracks)} unanswered, {acked_sets} attribute "
          f"sets acked ({len(storm.cli_sets)} with the CLI while the cloud was down), "
          f"{len(cloud_events)} events applied, {redelivered} downlinks redelivered and only "
          f"acknowledged")


def test_cloud_restart_while_an_operator_command_writes_its_store(tmp_path, procs):
    cloud = procs(CloudProc(tmp_path / "cloud"))
    cloud.create_edge("edge-race", RK, SECRET)
    # What `edge-cloud attr set` holds for the few milliseconds of its write, held a little
    # longer so that the server's start surely falls inside it.
    operator_command = CloudStore(cloud.data_dir)
    released = threading.Timer(1.0, operator_command.close)
    released.start()
    try:
        proc = cloud.spawn()

        def outcome() -> str | None:
            if proc.poll() is not None:
                return "exited"
            try:
                return "serving" if cloud.status().get("server") == "running" else None
            except Exception:  # not answering yet
                return None

        result = wait_until(outcome, timeout=DEADLINE_S, what="edge-cloud serve to serve or exit")
    finally:
        released.join()
    assert result == "serving", (f"edge-cloud serve exited with {proc.poll()}:\n"
                                 f"{cloud.stderr_text()[-2000:]}")
    # And once serving, the operator's earlier write is there: the edge is registered.
    assert cloud.edge_row(RK)["applied_events"] == 0
