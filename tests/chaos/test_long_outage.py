"""Chaos scenario 1: a long outage.

The cloud is unreachable while devices keep posting; the edge keeps everything on disk, its RSS
stays flat, nothing is refused, and once the link returns everything drains: alarms and RPC
responses raised during the outage first (more of them than ThingsBoard's in-memory 10,000-event
high-priority queue holds), then the telemetry backlog in order, each event applied exactly once.

Real processes on loopback: `edge-sync run` (tests.helpers.agent.Agent) and `edge-cloud serve`
(tests.helpers.cloud_proc.CloudProc). The edge is linked to the cloud, 50 devices are created and
post one point each, the edge drains. The cloud then sends the devices persistent two-way RPC
requests (its admin API, POST /api/rpc/twoway/{deviceId} with "persistent": true and an
expirationTime a week away, so none expires during the test), and the test waits until the edge
holds every one of them QUEUED (GET /api/rpc?status=QUEUED on the edge's admin API, exactly the
requests sent) and the cloud's downlink queue is empty; then the cloud is killed with SIGKILL and
stays down for the whole outage. During the outage 5 client threads (10 devices each) post
telemetry over the device HTTP API (arrays of entries; each entry is one event: a reefer's
readings, ~300 bytes of JSON, with "v" counting up per device) and, interleaved evenly, single
high-lane events: alarms (admin API POST /api/alarms, 201 with the alarm id and seq) and RPC
responses (the device takes its next request with GET /api/v1/{token}/rpc?timeout=MS, which must
be the oldest one sent to it, and answers it with POST /api/v1/{token}/rpc/{id}). Every request
must be answered 200 (201 for alarms). The edge's VmRSS/VmHWM (/proc/<pid>/status) is sampled at
every 10% of the outage's events. Then the cloud is started again on the same ports and store,
and the drain is sampled the same way (every 10% of the backlog delivered). The samples are
printed (pytest -s) and are part of every RSS assertion message.

Checked exactly, streaming the cloud's events in apply order (GET /api/events, in pages, with
O(devices + high events) state, so the 10,000,000-event soak needs no list of all events):
- apply indexes 1..N, one edge store, every (store id, seq) applied once; N == the edge's log;
- every alarm and RPC response raised during the outage applied (none lost, none unknown), each
  alarm with the seq its 201 named, each RPC response as the answer to its request (device,
  requestUuid, requestId, expirationTime) carrying the device's answer;
- high lane first: each of them applied before every outage telemetry event with a lower seq
  (all of which were pending when the link returned), and in fact before the first outage
  telemetry event at all;
- per device: ADDED, CREDENTIALS_UPDATED, then values 0, 1, 2, ... each once, in posting order;
- the edge: nothing pending or in flight, nothing dead, refused, evicted or answered 5xx, no
  RPC answer dropped (none came for a request that no longer awaited it); no RPC request open,
  each one QUEUED, DELIVERED and SUCCESSFUL once (its metrics);
- the cloud: every RPC request SUCCESSFUL, with the device's answer (GET /api/rpc/{id}).

RSS flat: the 100% sample, and the peak since the base sample (VmHWM, reset through
/proc/<pid>/clear_refs at the base sample), within RSS_MARGIN_MIB of the base sample's VmRSS. The
outage's base is its 20% sample (past the warm-up); the drain's is its 0% sample, because the
drain reads the high lane first, at its very start. The margin allows for the designed sawtooth:
the writer and the link advise the kernel to drop the store's mapped pages a few times a second
(LmdbStore.release_pages_every), and in between the pages their writes and reads touch stay
resident. Anything kept per event (heap, or
resident pages of the map) grows with the backlog instead: the bounded backlog is ~100 MiB on
disk, so 80% of it stands well above the margin; at the soak size any growth does.

The edge runs a push-only rule chain (PUSH_ONLY_CHAIN: type switch, push to cloud), as an operator
who wants a pure store-and-forward edge configures it: this scenario measures the queue. The
reference cloud's default root chain also saves every point on the edge (TbMsgTimeseriesNode),
which doubles the rows in the store and raises the drain's start-up peak of mapped, reclaimable
pages (its high-lane reads fault in the rows around each event page): docs/known-limits.md.

Bounded: 100,000 telemetry events + 12,000 high-lane events: 11,000 alarms and 1,000 RPC
responses (slow marker, < 3 min). Soak (`scripts/test --soak`): 10,000,000 telemetry events (a
ship three days offline at 40 events/s) + 20,000 high-lane events: 19,000 alarms and 1,000 RPC
responses. The RPC responses are a fraction of the high lane: each needs its request sent by the
cloud before the outage. LONG_OUTAGE_SOAK_EVENTS=N runs the soak test at
N telemetry events without --soak (e.g. to prove it works at a smaller size).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import Agent, HttpClient, NoAnswer
from tests.helpers.cloud_proc import (
    CloudProc,
    edge_status,
    link_env,
    link_state,
    wait_connected,
    wait_drained,
)
from tests.helpers.wait import wait_until

RK = "rk-long-outage"
SECRET = "sec-long-outage-5c1e9a"
TS0 = 1_700_000_000_000  # ts of value 0; value n has ts TS0 + n
THINGSBOARD_HIGH_QUEUE = 10_000  # ThingsBoard's in-memory high-priority queue
RSS_MARGIN_MIB = 32.0
_PUSH = "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode"
PUSH_ONLY_CHAIN = {"ruleChain": {"name": "Push only", "type": "EDGE"}, "metadata": {
    "firstNodeIndex": 0,
    "nodes": [
        {"type": "org.thingsboard.rule.engine.filter.TbMsgTypeSwitchNode",
         "name": "Message Type Switch", "configuration": {"version": 0}},
        {"type": _PUSH, "name": "Push to Cloud", "configuration": {"scope": "CLIENT_SCOPE"}}],
    "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Post telemetry"},
                    {"fromIndex": 0, "toIndex": 1, "type": "Post attributes"}]}}
PAGE = 20_000  # cloud events per GET /api/events page
SOAK_ENV = "LONG_OUTAGE_SOAK_EVENTS"
MIB = 1024.0
RPC_METHOD = "setDefrost"
RPC_EXPIRES_IN_MS = 7 * 24 * 3600 * 1000  # far beyond any run, the soak's included
RPC_TIMEOUT_MS = 600_000  # the longest the cloud takes (expirationTime overrides it)
RPC_POLL_MS = 10_000  # a device's poll; its request is already on the edge, so it answers at once
MAX_RPC_LISTING = 10_000  # the edge's GET /api/rpc limit


@dataclass(frozen=True)
class Sizes:
    telemetry: int  # telemetry events posted during the outage
    high: int  # alarms + RPC responses raised during the outage
    rpcs: int  # of which RPC responses (requests the cloud sent before the outage)
    per_post: int  # telemetry entries per HTTP post
    devices: int = 50
    clients: int = 5  # client threads; each owns devices/clients devices

    @property
    def total(self) -> int:
        return self.telemetry + self.high

    @property
    def alarms(self) -> int:
        return self.high - self.rpcs


BOUNDED = Sizes(telemetry=100_000, high=12_000, rpcs=1_000, per_post=20)
SOAK = Sizes(telemetry=10_000_000, high=20_000, rpcs=1_000, per_post=100)


# -- the edge's memory ---------------------------------------------------------------------------


def read_rss(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of a live process, in MiB."""
    names = {"VmRSS:": "rss", "VmHWM:": "hwm", "RssAnon:": "anon", "RssFile:": "file"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(None, 1)[0] if line else ""
        if key in names:
            out[names[key]] = int(line.split()[1]) / MIB
    return out


def reset_hwm(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class RssSample:
    phase: str
    pct: int
    events: int
    at_s: float
    rss: float
    hwm: float
    anon: float
    file: float

    def line(self) -> str:
        return (f"{self.phase:>6} {self.pct:3d}% {self.events:>11,} events {self.at_s:7.1f}s  "
                f"VmRSS {self.rss:6.1f} MiB (anon {self.anon:6.1f}, file {self.file:6.1f})  "
                f"VmHWM {self.hwm:6.1f} MiB")


class RssWatch:
    """Samples the edge's memory at 0%, 10%, ..., 100% of a phase's events. VmHWM is reset at
    the base sample (base_pct), so the 100% sample's VmHWM is the peak since then."""

    def __init__(self, pid: int, phase: str, total: int, *, base_pct: int) -> None:
        self.pid = pid
        self.phase = phase
        self.total = total
        self.base_pct = base_pct
        self.t0 = time.monotonic()
        self.samples: list[RssSample] = []
        self.hwm_reset = False
        self.poll(0)

    def poll(self, done: int) -> None:
        while len(self.samples) <= 10 and done * 10 >= len(self.samples) * self.total:
            pct = len(self.samples) * 10
            m = read_rss(self.pid)
            self.samples.append(RssSample(self.phase, pct, done, time.monotonic() - self.t0,
                                          m["rss"], m["hwm"], m["anon"], m["file"]))
            if pct == self.base_pct:
                self.hwm_reset = reset_hwm(self.pid)
            print(self.samples[-1].line(), flush=True)

    @property
    def complete(self) -> bool:
        return len(self.samples) == 11

    def report(self) -> str:
        return "\n".join(s.line() for s in self.samples)

    def check_flat(self) -> None:
        """The 100% sample, and the peak since the base sample, within RSS_MARGIN_MIB of the
        base sample's VmRSS."""
        assert self.complete, f"{self.phase}: only {len(self.samples)} samples:\n{self.report()}"
        base, last = self.samples[self.base_pct // 10], self.samples[10]
        growth = last.rss - base.rss
        peak = last.hwm - base.rss if self.hwm_reset else 0.0
        scope = (f"VmHWM since {self.base_pct}%" if self.hwm_reset
                 else "VmHWM not resettable, not checked")
        assert growth <= RSS_MARGIN_MIB and peak <= RSS_MARGIN_MIB, (
            f"{self.phase}: the edge's RSS grew with the backlog: VmRSS {growth:+.1f} MiB from "
            f"{self.base_pct}% to 100%, peak {peak:+.1f} MiB ({scope}); margin {RSS_MARGIN_MIB} "
            f"MiB\n{self.report()}")


# -- the devices ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RpcRequest:
    """A persistent two-way RPC request the cloud sent a device before the outage."""

    rpc_id: str  # the cloud's rpcId: the requestUuid of the downlink and of the answer
    device_id: str
    request_id: int  # the id the device sees: the cloud counts them per device from 1
    params: dict[str, Any]
    expiration_time: int


@dataclass
class Device:
    name: str
    id: str
    token: str
    next_value: int = 0  # telemetry values 0 .. next_value-1 were posted and answered 200
    rpcs: deque[RpcRequest] = field(default_factory=deque)  # sent to it, not answered yet


@dataclass(frozen=True)
class RpcAnswer:
    request: RpcRequest
    response: dict[str, Any]  # what the device answered (POST /rpc/{id} answered 200)

    def applied_body(self) -> dict[str, Any]:
        """The body of the cloud's RPC_CALL apply-log event for this answer."""
        return {"requestId": self.request.request_id, "response": self.response, "error": "",
                "requestUuid": self.request.rpc_id, "oneway": False,
                "expirationTime": self.request.expiration_time}


@dataclass
class Raised:
    """The high-lane events a client raised, as their answers described them."""

    alarms: dict[str, int] = field(default_factory=dict)  # alarm id -> seq (from the 201)
    rpcs: dict[str, RpcAnswer] = field(default_factory=dict)  # rpc id -> the device's answer


def reading(v: int) -> dict[str, Any]:
    """Telemetry value number v of a device: a reefer container's readings (~300 bytes of JSON,
    so the bounded backlog is ~100 MiB on disk and growth proportional to it stands well out of
    RSS_MARGIN_MIB), with "v" counting up per device."""
    return {
        "v": v, "supply_temp_c": -18.0 + v % 40 / 10, "return_temp_c": -16.5 + v % 30 / 10,
        "ambient_temp_c": 24.0 + v % 90 / 10, "humidity_pct": 60 + v % 25,
        "compressor_current_a": 11.5 + v % 17 / 10, "supply_voltage_v": 440 + v % 7,
        "defrost": v % 97 == 0, "door_open": False, "power_source": "SHIP",
        "alarm_code": "NONE" if v % 211 else "A047", "setpoint_c": -18.0,
        "position": {"lat": 51.9 - v % 500 / 1000, "lon": 4.1 + v % 700 / 1000},
    }


def interleave(posts: int, highs: int) -> Iterator[bool]:
    """posts + highs operations, True for a high-lane one, spread evenly (Bresenham)."""
    n = posts + highs
    for i in range(n):
        yield (i + 1) * highs // n > i * highs // n


class Client(threading.Thread):
    """Posts one client's share of the outage, one request at a time: telemetry arrays to its
    devices round-robin, interleaved with alarms and RPC responses (alarms and RPC responses
    interleaved evenly in turn, each kind to the client's devices round-robin). Stops at the
    first request that is not answered as it must be (recorded in `refused`)."""

    SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING")

    def __init__(self, index: int, agent: Agent, devices: list[Device], posts: list[int],
                 highs: int, rpcs: int, abort: threading.Event) -> None:
        super().__init__(name=f"outage-client-{index}", daemon=True)
        self.index = index
        self.devices = devices
        self.posts = posts
        self.highs = highs
        self.rpcs = rpcs  # of the highs, RPC responses
        self.abort = abort
        self.http = HttpClient(agent.http_port, timeout=120.0)
        self.admin = HttpClient(agent.admin_port, timeout=120.0)
        self.raised = Raised()
        self.done = 0  # events answered 200/201
        self.refused: list[str] = []
        self.error: BaseException | None = None

    def rpc_devices(self) -> Iterator[Device]:
        """The device of each RPC response this client raises, in order."""
        for r in range(self.rpcs):
            yield self.devices[r % len(self.devices)]

    def run(self) -> None:
        try:
            post = high = alarm = rpc = 0
            is_rpc = interleave(self.highs - self.rpcs, self.rpcs)
            for is_high in interleave(len(self.posts), self.highs):
                if self.abort.is_set():
                    return
                if is_high:
                    if next(is_rpc):
                        ok = self._rpc(self.devices[rpc % len(self.devices)], high)
                        rpc += 1
                    else:
                        ok = self._alarm(self.devices[alarm % len(self.devices)], high)
                        alarm += 1
                    high += 1
                else:
                    ok = self._telemetry(self.devices[post % len(self.devices)], self.posts[post])
                    post += 1
                if not ok:
                    self.abort.set()
                    return
        except BaseException as exc:  # re-raised by the test
            self.error = exc
            self.abort.set()
        finally:
            self.http.close()
            self.admin.close()

    def _refuse(self, what: str, status: int | str, body: bytes = b"") -> bool:
        self.refused.append(f"{what}: {status} {body[:300]!r}")
        return False

    def _telemetry(self, dev: Device, count: int) -> bool:
        first = dev.next_value
        body = [{"ts": TS0 + v, "values": reading(v)} for v in range(first, first + count)]
        try:
            resp = self.http.post_json(f"/api/v1/{dev.token}/telemetry", body)
        except NoAnswer as exc:
            return self._refuse(f"telemetry {dev.name} v{first}..", f"no answer ({exc})")
        if resp.status != 200:
            return self._refuse(f"telemetry {dev.name} v{first}..", resp.status, resp.body)
        dev.next_value += count
        self.done += count
        return True

    def _alarm(self, dev: Device, n: int) -> bool:
        body = {"device": dev.id, "type": "overheat",
                "severity": self.SEVERITIES[n % len(self.SEVERITIES)], "details": {"n": n}}
        try:
            resp = self.admin.post_json("/api/alarms", body)
        except NoAnswer as exc:
            return self._refuse(f"alarm on {dev.name}", f"no answer ({exc})")
        if resp.status != 201:
            return self._refuse(f"alarm on {dev.name}", resp.status, resp.body)
        answer = resp.json()
        self.raised.alarms[str(answer["alarm_id"])] = int(answer["seq"])
        self.done += 1
        return True

    def _rpc(self, dev: Device, n: int) -> bool:
        """The device takes its next request (the oldest the cloud sent it) and answers it."""
        if not dev.rpcs:
            return self._refuse(f"rpc of {dev.name}", "no request left for it")
        request = dev.rpcs[0]
        what = f"rpc {request.request_id} of {dev.name}"
        try:
            resp = self.http.request("GET", f"/api/v1/{dev.token}/rpc?timeout={RPC_POLL_MS}")
        except NoAnswer as exc:
            return self._refuse(f"poll for {what}", f"no answer ({exc})")
        if resp.status != 200:
            return self._refuse(f"poll for {what}", resp.status, resp.body)
        expected = {"id": request.request_id, "method": RPC_METHOD, "params": request.params}
        if resp.json() != expected:
            return self._refuse(f"poll for {what}", "another request", resp.body)
        answer = {"result": "done", "request": request.request_id, "n": n}
        try:
            resp = self.http.post_json(f"/api/v1/{dev.token}/rpc/{request.request_id}", answer)
        except NoAnswer as exc:
            return self._refuse(what, f"no answer ({exc})")
        if resp.status != 200:
            return self._refuse(what, resp.status, resp.body)
        dev.rpcs.popleft()
        self.raised.rpcs[request.rpc_id] = RpcAnswer(request, answer)
        self.done += 1
        return True


def plan_clients(agent: Agent, devices: list[Device], sizes: Sizes,
                 abort: threading.Event) -> list[Client]:
    """Split the outage over the clients: posts of sizes.per_post entries (the last one shorter)
    and the high-lane events (RPC responses among them) round-robin; client k owns devices k,
    k+clients, ..."""
    posts = [min(sizes.per_post, sizes.telemetry - start)
             for start in range(0, sizes.telemetry, sizes.per_post)]
    n = sizes.clients
    return [
        Client(k, agent, devices[k::n], posts[k::n], len(range(k, sizes.high, n)),
               len(range(k, sizes.rpcs, n)), abort)
        for k in range(n)
    ]


def send_rpc_requests(cloud: CloudProc, agent: Agent, clients: list[Client]) -> None:
    """Before the outage: the cloud sends every RPC request the clients will answer (persistent,
    two-way, expiring a week away), appended to each device's `rpcs`; returns once the edge
    holds exactly these requests QUEUED and the cloud's downlink queue is empty."""
    expires = int(time.time() * 1000) + RPC_EXPIRES_IN_MS
    sent: list[RpcRequest] = []
    with HttpClient(cloud.admin_port, timeout=60.0) as admin:
        for client in clients:
            for dev in client.rpc_devices():
                params = {"zone": len(dev.rpcs) % 3, "n": len(dev.rpcs)}
                body = {"method": RPC_METHOD, "params": params, "persistent": True,
                        "timeout": RPC_TIMEOUT_MS, "expirationTime": expires}
                resp = admin.post_json(f"/api/rpc/twoway/{dev.id}", body)
                assert resp.status == 200, (dev.name, resp.status, resp.body)
                answer = resp.json()
                assert list(answer) == ["rpcId"], answer
                assert resp.headers["x-rpc-id"] == answer["rpcId"], resp.headers
                request = RpcRequest(answer["rpcId"], dev.id, len(dev.rpcs) + 1, params, expires)
                dev.rpcs.append(request)
                sent.append(request)
    assert len(sent) <= MAX_RPC_LISTING, len(sent)
    wait_until(lambda: edge_status(agent)["rpc_open"] == len(sent)
               and cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=120,
               what=f"the edge holds the {len(sent):,} RPC requests",
               show=lambda: (edge_status(agent)["rpc_open"], cloud.edge_row(RK)))
    resp = agent.admin("GET", f"/api/rpc?status=QUEUED&limit={MAX_RPC_LISTING}")
    assert resp.status == 200, resp.body
    # the edge keeps params as the cloud's JSON text (the device's poll gets them parsed)
    held = sorted((r["device_id"], r["request_id"], r["request_uuid"], r["method"],
                   json.loads(r["params"]), r["oneway"], r["expiration_time"])
                  for r in resp.json())
    assert held == sorted((r.device_id, r.request_id, r.rpc_id, RPC_METHOD, r.params, False,
                           r.expiration_time) for r in sent)


# -- checking what the cloud applied, streaming --------------------------------------------------


@dataclass
class Expected:
    boundary: int  # highest seq accepted before the outage (all of it delivered then)
    total_events: int  # the edge's log, all of it
    next_seq: int
    devices: list[Device]
    raised: Raised


def cloud_pages(cloud: CloudProc) -> Iterator[list[dict[str, Any]]]:
    after = 0
    while True:
        page = cloud.admin("GET", f"/api/events?edge={RK}&after={after}&limit={PAGE}")
        if not page:
            return
        yield page
        after += len(page)


def verify_cloud(cloud: CloudProc, exp: Expected) -> dict[str, Any]:
    """Everything in the module docstring's cloud list; returns a summary. One AssertionError
    listing every kind of problem found (with a few examples each)."""
    problems: dict[str, list[str]] = {}

    def problem(kind: str, text: str) -> None:
        found = problems.setdefault(kind, [])
        found.append(text)

    by_id = {d.id: d for d in exp.devices}
    seen = bytearray(exp.next_seq + 1)
    store_ids: set[str | None] = set()
    last_value = {d.id: -1 for d in exp.devices}
    lifecycle: dict[str, list[str]] = {d.id: [] for d in exp.devices}
    alarms_applied: set[str] = set()
    rpcs_applied: set[str] = set()
    applied = 0
    min_outage_ts_seq: int | None = None  # lowest seq of outage telemetry applied so far
    first_outage_ts: int | None = None  # apply index of the first outage telemetry
    last_high: int | None = None  # apply index of the last outage high-lane event
    for page in cloud_pages(cloud):
        for e in page:
            applied += 1
            index, seq = e["apply_index"], e["seq"]
            if index != applied:
                problem("apply indexes not contiguous", f"{index} at position {applied}")
            store_ids.add(e["store_id"])
            if not isinstance(seq, int) or not 0 < seq < len(seen):
                problem("seq outside the edge's log", f"apply {index}: seq {seq!r}")
                continue
            if seen[seq]:
                problem("applied more than once", f"seq {seq} (again at apply {index})")
                continue
            seen[seq] = 1
            action, entity = e["action"], e["entity_id"]
            outage = seq > exp.boundary
            if action == "TIMESERIES_UPDATED":
                v = e["body"]["values"]["v"]
                if entity not in by_id:
                    problem("telemetry of an unknown device", f"seq {seq}: {entity}")
                    continue
                if v != last_value[entity] + 1:
                    problem("telemetry out of order, lost or doubled",
                            f"{by_id[entity].name}: v{v} after v{last_value[entity]} (seq {seq})")
                last_value[entity] = v
                if e["body"] != {"ts": TS0 + v, "values": reading(v)}:
                    problem("telemetry changed on the way", f"seq {seq}: {e['body']}")
                if outage != (v > 0):
                    problem("pre-outage/outage boundary", f"seq {seq}: v{v}")
                if outage:
                    if first_outage_ts is None:
                        first_outage_ts = index
                    if min_outage_ts_seq is None or seq < min_outage_ts_seq:
                        min_outage_ts_seq = seq
            elif outage and (e["entity_type"] == "ALARM" or action == "RPC_CALL"):
                if e["entity_type"] == "ALARM":
                    if exp.raised.alarms.get(entity) != seq:
                        problem("alarm not raised or with another seq",
                                f"apply {index}: alarm {entity} at seq {seq} "
                                f"(its 201 said {exp.raised.alarms.get(entity)})")
                    alarms_applied.add(entity)
                else:
                    rpc_id = e["body"].get("requestUuid")
                    answered = exp.raised.rpcs.get(rpc_id)
                    if answered is None or rpc_id in rpcs_applied:
                        problem("rpc response not raised (or twice)",
                                f"apply {index}: {entity} {e['body']}")
                    elif (entity, e["body"]) != (answered.request.device_id,
                                                 answered.applied_body()):
                        problem("rpc response changed on the way",
                                f"apply {index}: {entity} {e['body']}, answered "
                                f"{answered.request.device_id} {answered.applied_body()}")
                    rpcs_applied.add(rpc_id)
                last_high = index
                if min_outage_ts_seq is not None and min_outage_ts_seq < seq:
                    problem("high lane overtaken by older telemetry",
                            f"{action} seq {seq} applied at {index}, after telemetry seq "
                            f"{min_outage_ts_seq}")
                if first_outage_ts is not None:
                    problem("high lane not first",
                            f"{action} seq {seq} applied at {index}, after the first outage "
                            f"telemetry (apply {first_outage_ts})")
            elif not outage and action in ("ADDED", "CREDENTIALS_UPDATED") and entity in by_id:
                lifecycle[entity].append(action)
                if last_value[entity] != -1:
                    problem("creation after data", f"{by_id[entity].name}: {action} seq {seq}")
            else:
                problem("unexpected event", f"apply {index}: {e}")

    for d in exp.devices:
        if lifecycle[d.id] != ["ADDED", "CREDENTIALS_UPDATED"]:
            problem("device lifecycle", f"{d.name}: {lifecycle[d.id]}")
        if last_value[d.id] != d.next_value - 1:
            problem("telemetry lost", f"{d.name}: last value v{last_value[d.id]} applied, "
                                      f"v{d.next_value - 1} posted")
    lost_alarms = set(exp.raised.alarms) - alarms_applied
    lost_rpcs = set(exp.raised.rpcs) - rpcs_applied
    if lost_alarms:
        problem("alarms lost", f"{len(lost_alarms)}: {sorted(lost_alarms)[:5]}")
    if lost_rpcs:
        problem("rpc responses lost", f"{len(lost_rpcs)}: {sorted(lost_rpcs)[:5]}")
    if applied != exp.total_events:
        problem("applied count", f"cloud applied {applied:,}, the edge's log has "
                                 f"{exp.total_events:,}")
    if len(store_ids) != 1 or None in store_ids:
        problem("store ids", f"{store_ids}")
    assert not problems, "the cloud's apply order is wrong:\n" + "\n".join(
        f"- {kind}: {len(found)}, e.g. {found[:5]}" for kind, found in problems.items())
    return {"applied": applied, "alarms": len(alarms_applied), "rpcs": len(rpcs_applied),
            "last_high_apply": last_high, "first_outage_telemetry_apply": first_outage_ts}


def verify_cloud_rpcs(cloud: CloudProc, raised: Raised) -> list[str]:
    """Every RPC request as the cloud now has it (GET /api/rpc/{id}): SUCCESSFUL with the
    device's answer; what is not, one line each."""
    wrong: list[str] = []
    with HttpClient(cloud.admin_port, timeout=60.0) as admin:
        for rpc_id, answered in raised.rpcs.items():
            resp = admin.request("GET", f"/api/rpc/{rpc_id}")
            if resp.status != 200:
                wrong.append(f"{rpc_id}: {resp.status} {resp.body[:200]!r}")
                continue
            rec = resp.json()
            got = (rec["status"], rec["deviceId"]["id"], rec["requestId"], rec["response"],
                   rec["error"])
            want = ("SUCCESSFUL", answered.request.device_id, answered.request.request_id,
                    answered.response, None)
            if got != want:
                wrong.append(f"{rpc_id}: {got}, expected {want}")
    return wrong


# -- the scenario --------------------------------------------------------------------------------


def _watch(what: str, watch: RssWatch, progress: Callable[[], int],
           finished: Callable[[], bool], *, timeout: float) -> None:
    """Poll progress (sampling RSS at every 10%) until finished(); AssertionError at the
    deadline."""
    def done_sampling() -> bool:
        done = finished()
        watch.poll(progress())
        return done

    wait_until(done_sampling, timeout=timeout, what=what,
               show=lambda: f"progress {progress():,}/{watch.total:,}\n{watch.report()}")


@dataclass
class Outcome:
    """What one run of the scenario observed; each test checks one aspect of it."""

    sizes: Sizes
    outage: RssWatch
    drain: RssWatch
    edge_queue: dict[str, Any]  # the edge's queue status after the drain
    edge_bad_metrics: dict[str, Any]  # refusal/eviction/dead-letter/5xx counters that are not 0
    edge_rpc_metrics: dict[str, Any]  # edge_sync_rpc_requests_total{status=...}
    edge_rpc_open: int  # RPC requests the edge holds open (QUEUED or DELIVERED) after the drain
    cloud_rpcs_wrong: list[str]  # RPC requests the cloud does not hold SUCCESSFUL with the answer
    expected_next_seq: int
    verify_error: AssertionError | None
    summary: dict[str, Any]


def run_long_outage(workdir: Path, sizes: Sizes) -> Outcome:
    """The whole scenario (see the module docstring). Raises on what makes the rest meaningless
    (a refused request, a phase past its deadline); records the rest in the Outcome."""
    assert sizes.high > THINGSBOARD_HIGH_QUEUE, sizes
    assert 0 < sizes.rpcs <= min(sizes.high, MAX_RPC_LISTING), sizes
    t_start = time.monotonic()
    cloud = CloudProc(workdir / "cloud")
    chain = workdir / "push_only.json"
    chain.parent.mkdir(parents=True, exist_ok=True)
    chain.write_text(json.dumps(PUSH_ONLY_CHAIN), encoding="utf-8")
    agent = Agent(workdir / "edge", env=link_env(
        cloud, RK, SECRET,
        EDGE_HTTP_REQUEST_TIMEOUT_S="120",  # a busy shared machine is not the scenario
        EDGE_RULES_FILE=str(chain),
    ))
    try:
        cloud.start()
        cloud.create_edge("long-outage", RK, SECRET)
        agent.start()
        wait_connected(agent, timeout=60)
        return _scenario(cloud, agent, sizes, t_start)
    finally:
        agent.close()
        cloud.close()


def _scenario(cloud: CloudProc, agent: Agent, sizes: Sizes, t_start: float) -> Outcome:
    # Before the outage: devices created on the edge, one point each, all delivered.
    devices = [Device(f"dev-{i:02d}", *agent.create_device(f"dev-{i:02d}"))
               for i in range(sizes.devices)]
    for d in devices:
        assert agent.post_telemetry(d.token, [{"ts": TS0, "values": reading(0)}]) == 200, d.name
        d.next_value = 1
    wait_drained(agent, timeout=120)
    # The RPC requests the devices answer during the outage: sent by the cloud, held by the edge.
    abort = threading.Event()
    clients = plan_clients(agent, devices, sizes, abort)
    t_rpc = time.monotonic()
    send_rpc_requests(cloud, agent, clients)
    print(f"rpc: {sizes.rpcs:,} requests sent by the cloud and held by the edge in "
          f"{time.monotonic() - t_rpc:.1f}s", flush=True)
    boundary = int(edge_status(agent)["queue"]["next_seq"]) - 1
    assert boundary == 3 * sizes.devices, boundary

    # The outage: the cloud dies and stays down while the devices keep posting.
    cloud.kill9()
    wait_until(lambda: link_state(agent) != "CONNECTED", timeout=60, what="the edge noticed the outage")
    outage = RssWatch(agent.pid, "outage", sizes.total, base_pct=20)
    t_fill = time.monotonic()
    for c in clients:
        c.start()
    try:
        _watch("the outage's posts", outage, lambda: sum(c.done for c in clients),
               lambda: not any(c.is_alive() for c in clients),
               timeout=max(240.0, sizes.total / 1000))
    finally:
        abort.set()
        for c in clients:
            c.join(30)
    fill_s = time.monotonic() - t_fill
    errors = [c.error for c in clients if c.error is not None]
    assert errors == [], errors
    refused = [r for c in clients for r in c.refused]
    assert refused == [], f"requests refused during the outage: {refused[:10]}"
    raised = Raised()
    for c in clients:
        raised.alarms.update(c.raised.alarms)
        raised.rpcs.update(c.raised.rpcs)
    assert (len(raised.alarms), len(raised.rpcs)) == (sizes.alarms, sizes.rpcs)
    assert [d.name for d in devices if d.rpcs] == []  # every request sent was answered
    assert sum(c.done for c in clients) == sizes.total
    assert sum(d.next_value - 1 for d in devices) == sizes.telemetry

    st = edge_status(agent)
    queue = st["queue"]
    print(f"outage: {sizes.total:,} events ({sizes.telemetry:,} telemetry, "
          f"{len(raised.alarms):,} alarms, {len(raised.rpcs):,} rpc responses) accepted in "
          f"{fill_s:.1f}s = {sizes.total / fill_s:,.0f} events/s; link {st['link']['state']}; "
          f"pending high {queue['pending_high']:,}, normal {queue['pending_normal']:,}",
          flush=True)
    assert st["link"]["state"] != "CONNECTED", st["link"]
    assert (queue["pending_high"], queue["pending_normal"]) == (sizes.high, sizes.telemetry), queue

    # The link returns: the cloud restarts on the same ports and store; everything drains.
    backlog = int(queue["pending"])
    t_drain = time.monotonic()
    cloud.start(timeout=60)
    t_up = time.monotonic()
    drain = RssWatch(agent.pid, "drain", backlog, base_pct=0)
    last: dict[str, Any] = {}

    def drained() -> bool:
        last.update(edge_status(agent))
        return bool(last["queue"]["pending"] == 0 and last["link"].get("in_flight_messages") == 0)

    _watch("the drain", drain, lambda: backlog - int(last["queue"]["pending"]), drained,
           timeout=max(300.0, backlog / 1000))
    drain_s = time.monotonic() - t_up
    print(f"drain: {backlog:,} events in {drain_s:.1f}s after the cloud answered "
          f"({time.monotonic() - t_drain:.1f}s with its start) = {backlog / drain_s:,.0f} events/s",
          flush=True)

    # What the edge and the cloud hold now.
    st = edge_status(agent)
    queue, metrics = st["queue"], st["metrics"]
    never = ('edge_sync_events_total{lane="high",outcome="refused"}',
             'edge_sync_events_total{lane="normal",outcome="refused"}',
             'edge_sync_events_total{lane="normal",outcome="evicted"}',
             'edge_sync_events_total{lane="high",outcome="dead_lettered"}',
             'edge_sync_events_total{lane="normal",outcome="dead_lettered"}',
             *(k for k in metrics if k.startswith("edge_sync_dead_letters_total")),
             'edge_sync_rpc_answers_dropped_total',
             *(f'edge_sync_device_requests_total{{protocol="http",code="{c}"}}'
               for c in (500, 503, 507)))
    t_verify = time.monotonic()
    verify_error: AssertionError | None = None
    summary: dict[str, Any] = {}
    try:
        summary = verify_cloud(cloud, Expected(boundary, boundary + sizes.total,
                                               int(queue["next_seq"]), devices, raised))
        print(f"cloud: {summary['applied']:,} events applied exactly once; {summary['alarms']:,} "
              f"alarms and {summary['rpcs']:,} rpc responses all applied by apply index "
              f"{summary['last_high_apply']:,}, the first outage telemetry at "
              f"{summary['first_outage_telemetry_apply']:,}; checked in "
              f"{time.monotonic() - t_verify:.1f}s", flush=True)
    except AssertionError as exc:
        verify_error = exc
    cloud_rpcs_wrong = verify_cloud_rpcs(cloud, raised)
    assert agent.terminate() == 0, agent.stderr_text()[-4000:]
    assert cloud.terminate() == 0, cloud.stderr_text()[-4000:]
    print(f"scenario: {time.monotonic() - t_start:.1f}s", flush=True)
    return Outcome(
        sizes=sizes, outage=outage, drain=drain, edge_queue=dict(queue),
        edge_bad_metrics={k: metrics.get(k) for k in never if metrics.get(k)},
        edge_rpc_metrics={k: v for k, v in metrics.items()
                          if k.startswith("edge_sync_rpc_requests_total")},
        edge_rpc_open=int(st["rpc_open"]), cloud_rpcs_wrong=cloud_rpcs_wrong,
        expected_next_seq=boundary + sizes.total + 1, verify_error=verify_error,
        summary=summary)


@pytest.fixture(scope="module", params=[
    pytest.param(BOUNDED, id="bounded", marks=[pytest.mark.slow, pytest.mark.timeout(600)]),
    pytest.param(SOAK, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(4 * 3600)]),
])
def outage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           soak: bool) -> Outcome:
    """One run of the scenario per size, shared by the tests below."""
    sizes: Sizes = request.param
    if sizes is SOAK:
        override = os.environ.get(SOAK_ENV)
        if not soak and not override:
            pytest.skip(f"10,000,000 events: run with --soak (or {SOAK_ENV}=N for N events)")
        if override:
            sizes = dataclasses.replace(SOAK, telemetry=int(override))
    return run_long_outage(tmp_path_factory.mktemp("long-outage"), sizes)


def test_drain_high_lane_first_exactly_once(outage: Outcome) -> None:
    """Everything drained; the cloud applied each event once, alarms and RPC responses first,
    per-device order kept; the edge refused, evicted and dead-lettered nothing; every RPC request
    went QUEUED, DELIVERED, SUCCESSFUL on the edge and is SUCCESSFUL in the cloud."""
    if outage.verify_error is not None:
        raise outage.verify_error
    q = outage.edge_queue
    assert (q["pending"], q["dead"], q["next_seq"]) == (0, 0, outage.expected_next_seq), q
    assert outage.edge_bad_metrics == {}, outage.edge_bad_metrics
    sizes = outage.sizes
    assert (outage.summary["alarms"], outage.summary["rpcs"]) == (sizes.alarms, sizes.rpcs)
    assert outage.edge_rpc_open == 0
    assert outage.edge_rpc_metrics == {
        f'edge_sync_rpc_requests_total{{status="{s}"}}': sizes.rpcs
        for s in ("DELIVERED", "QUEUED", "SUCCESSFUL")}, outage.edge_rpc_metrics
    assert outage.cloud_rpcs_wrong == [], outage.cloud_rpcs_wrong[:10]


def test_outage_rss_flat(outage: Outcome) -> None:
    print(outage.outage.report())
    outage.outage.check_flat()


def test_drain_rss_flat(outage: Outcome) -> None:
    print(outage.drain.report())
    outage.drain.check_flat()


def test_interleave_spreads_high_lane_evenly() -> None:
    ops = list(interleave(1000, 60))
    assert len(ops) == 1060 and sum(ops) == 60
    at = [k for k, high in enumerate(ops) if high]
    gaps = [j - i for i, j in itertools.pairwise(at)]
    assert max(gaps) - min(gaps) <= 1
