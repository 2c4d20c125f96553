"""``scripts/bench compare``: the same outage workload through edge-sync and through a Mosquitto bridge.

A correctness comparison more than a speed one. For each system, on loopback, in a temporary
directory:

1. The cloud side and the edge side start.
   - edge-sync: ``edge-cloud serve`` (an edge registered with ``edge-cloud edge create`` before it
     starts) and ``edge-sync run`` linked to it (reconnect 100 ms .. 1 s, no jitter, uplink resend
     after 1 s, batches sent after at most 100 ms); ``--devices`` devices are provisioned through
     the edge's admin API. Ready when the edge's link is CONNECTED.
   - mosquitto (Debian's ``mosquitto``, installed with apt-get when it is not there): two brokers
     with generated config files (``mosquitto_config`` has them; the "edge" one bridges
     ``telemetry/#`` out at QoS 1 to the "cloud" one). Both persist with the most durable settings
     Mosquitto has (``autosave_on_changes true`` + ``autosave_interval 1``: the whole in-memory
     database is written to disk, fsync'd and renamed in place after every change, at the end of
     the event-loop iteration that made it), unbounded queues (``max_queued_messages 0``), one
     QoS 1 message in flight per client (``max_inflight_messages 1``, the setting the Mosquitto
     manual gives for in-order delivery) and TCP_NODELAY. A collector (paho-mqtt, fixed client
     id, ``clean_session=False``, QoS 1 subscription to ``telemetry/#``) records every message
     the cloud broker hands it, duplicates included, in arrival order. The bridge retries every
     ~2 s (``restart_timeout 1 1``; with the one-value form ``restart_timeout 1``, 2.0.11 retried
     only every 6-9 s here); the collector and the devices reconnect after 0.1 .. 0.5 s. Ready
     when a probe message published to the edge broker came out at the collector. The exact
     config files are printed on stderr (first run).
2. ``--devices`` device threads each post ``--points`` points, one at a time, with a per-device
   counter (``{"device": i, "n": n}``): to edge-sync as ``POST /api/v1/{token}/telemetry``
   (accepted = answered 200), to Mosquitto as a QoS 1 PUBLISH on ``telemetry/{i}`` from one
   paho client per device (accepted = PUBACK received, at any time before the end). A device
   never re-posts a point itself; paho does resend a QoS 1 PUBLISH that was in flight when the
   connection dropped (that is MQTT's session behaviour, so it is left on).
3. After a third of all points were accepted, the cloud side stops (SIGTERM: ``edge-cloud
   serve`` / the cloud broker, which saves its database on the way out). The devices go on.
4. After half of all points were accepted (the cloud still down), the devices are held before
   their next point and the edge side is killed with SIGKILL (``edge-sync run`` / the edge
   broker): what was in flight may fail. The edge side is started again on the same store /
   persistence directory and, once it serves, the devices go on until each posted all points.
5. The cloud side starts again (same store / persistence directory); the clock for ``drain_s``
   runs from the moment it serves (``edge-cloud``'s admin API says running / the cloud broker
   accepts TCP connections). The benchmark waits until every accepted point arrived and nothing
   more arrived for 2 s, or nothing arrived for 10 s, or 120 s (``--drain-timeout``) passed.

Figures, per system (the JSON line's keys):

- ``accepted``: points the devices got an acknowledgement for (200 / PUBACK).
- ``delivered``: distinct points that reached the cloud: applied by the reference cloud
  (``GET /api/events`` of its admin API, TIMESERIES_UPDATED events) / received by the collector.
- ``lost``: accepted points that were never delivered.
- ``duplicated``: deliveries beyond the first of a point. The reference cloud deduplicates by
  the edge's seq, so a duplicate there would be a point stored twice by the edge; behind
  Mosquitto nothing deduplicates QoS 1 (at least once), so a duplicate is one the cloud
  application sees.
- ``misordered``: per device, in first-delivery order, points delivered after a point with a
  higher counter of the same device, summed over devices (progress on stderr also gives the
  number of inverted pairs).
- ``drain_s``: from the cloud side's restart to the last delivery (duplicates included).
- ``peak_rss_mb``: the edge side's peak resident set (VmHWM, sampled every 0.2 s and right
  before the kill), the largest of its incarnations: ``edge-sync run`` (a Python process; the
  figure includes the interpreter and resident pages of the LMDB map) / the edge broker.

With ``--runs N`` (default 1) the whole sequence runs N times per system (the order of the two
systems alternates); the counts are summed over the runs, ``drain_s`` is the median and
``peak_rss_mb`` the largest. Output: progress on stderr; on stdout the table, then, last, one
JSON line ``{"edge_sync": {...}, "mosquitto": {...}}``.

Exit 1 (after the JSON line) when a run could not be completed (a process did not start or
stop cleanly, the devices did not finish) or edge-sync broke its delivery contract (an accepted
point lost, duplicated or out of order); Mosquitto's losses are findings, not failures.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    SetupError,
    emit,
    ensure_mosquitto,
    free_port,
    peak_rss_mb,
    progress,
    wait_port,
)
from bench.common import mosquitto_config as common_mosquitto_config
from bench.common import tail as _tail

PAHO_REQUIREMENT = "paho-mqtt==2.2.0"
KEYS = ("accepted", "delivered", "lost", "duplicated", "misordered", "drain_s", "peak_rss_mb")
SYSTEMS = ("edge_sync", "mosquitto")
TOPIC_PREFIX = "telemetry/"
PROBE_TOPIC = "telemetry/_probe"
_POLL_S = 0.05
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    devices: int = 20
    points: int = 500
    runs: int = 1
    drain_timeout: float = 120.0
    quiet_s: float = 10.0  # nothing arrived for this long: stop waiting, even when incomplete
    settle_s: float = 2.0  # everything accepted arrived and nothing more for this long: done
    ack_timeout: float = 15.0  # a device waits this long for the answer to one point
    post_timeout: float = 600.0  # all devices must have posted everything within this


class CompareError(SetupError):
    """A run could not be completed (reported, then exit 1)."""


# -- processes ---------------------------------------------------------------------------------


class Proc:
    """A subprocess we started: its output to a log file (appended over restarts)."""

    def __init__(self, name: str, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        return self.proc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=_STOP_TIMEOUT_S)

    def terminate(self) -> int | None:
        """SIGTERM and wait: the exit code (None when it does not run; -9 when it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill9()
            return -9


class RssWatch(threading.Thread):
    """Samples the VmHWM of whatever process ``pid()`` names, every 0.2 s; keeps the largest."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        super().__init__(name="rss-watch", daemon=True)
        self._pid = pid
        self._halt = threading.Event()
        self.peak_mb = 0.0

    def sample(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            self.peak_mb = max(self.peak_mb, peak_rss_mb(pid))

    def run(self) -> None:
        while not self._halt.wait(0.2):
            self.sample()

    def stop(self) -> float:
        self.sample()
        self._halt.set()
        self.join(5)
        return self.peak_mb


# -- the devices -------------------------------------------------------------------------------


class DeviceClient:
    """One device's connection to the edge side."""

    def post(self, n: int) -> bool:
        """Post point n; True when the edge side acknowledged it."""
        raise NotImplementedError

    def late_acks(self) -> set[int]:
        """Points acknowledged after post() gave up on them."""
        return set()

    def close(self) -> None:
        pass


@dataclass
class Tally:
    """What the devices saw; the controller reads the totals while they run."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[int, list[int]] = field(default_factory=dict)
    failed: dict[int, list[int]] = field(default_factory=dict)
    accepted_total: int = 0
    finished: int = 0
    errors: list[str] = field(default_factory=list)

    def record(self, device: int, n: int, ok: bool) -> None:
        with self.lock:
            (self.accepted if ok else self.failed).setdefault(device, []).append(n)
            self.accepted_total += ok

    def accepted_points(self, clients: Sequence[DeviceClient]) -> set[tuple[int, int]]:
        with self.lock:
            out = {(d, n) for d, ns in self.accepted.items() for n in ns}
        for d, client in enumerate(clients):
            out.update((d, n) for n in client.late_acks())
        return out


class Devices:
    """One thread per device, posting points 0..points-1 while the gate is open."""

    def __init__(self, clients: Sequence[DeviceClient], points: int) -> None:
        self.clients = list(clients)
        self.points = points
        self.tally = Tally()
        self.gate = threading.Event()
        self.abort = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), name=f"device-{i}", daemon=True)
                        for i in range(len(self.clients))]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, device: int) -> None:
        client = self.clients[device]
        try:
            for n in range(self.points):
                while not self.gate.wait(0.5):
                    if self.abort.is_set():
                        return
                if self.abort.is_set():
                    return
                self.tally.record(device, n, client.post(n))
        except Exception as exc:  # reported by the controller
            with self.tally.lock:
                self.tally.errors.append(f"device {device}: {exc!r}")
        finally:
            with self.tally.lock:
                self.tally.finished += 1

    def wait_accepted(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.tally.accepted_total < count:
            if self.tally.finished == len(self.threads):
                raise CompareError(f"the devices finished with only {self.tally.accepted_total} "
                                   f"points accepted (waiting for {count})")
            if time.monotonic() > deadline:
                raise CompareError(f"only {self.tally.accepted_total} points accepted after "
                                   f"{timeout:.0f}s (waiting for {count})")
            time.sleep(_POLL_S / 5)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self.threads):
            self.abort.set()
            raise CompareError(f"the devices did not finish within {timeout:.0f}s "
                               f"({self.tally.accepted_total} points accepted)")
        if self.tally.errors:
            raise CompareError("device errors: " + "; ".join(self.tally.errors[:3]))

    def stop(self) -> None:
        self.abort.set()
        self.gate.set()
        for t in self.threads:
            t.join(5)
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()


# -- the system under test ------------------------------------------------------------------------


Arrival = tuple[int, int, float]  # device, counter, time.monotonic() of the delivery


class System:
    """One side of the comparison: its cloud side, its edge side and its devices."""

    key = ""
    label = ""

    def __init__(self, workdir: Path, opts: Options) -> None:
        self.workdir = workdir
        self.opts = opts

    def start(self) -> None:
        raise NotImplementedError

    def device_clients(self) -> list[DeviceClient]:
        raise NotImplementedError

    def stop_cloud(self) -> None:
        raise NotImplementedError

    def start_cloud(self) -> float:
        """Start the cloud side again; the time.monotonic() at which it serves."""
        raise NotImplementedError

    def kill_edge(self) -> None:
        raise NotImplementedError

    def start_edge(self) -> None:
        raise NotImplementedError

    def edge_pid(self) -> int | None:
        raise NotImplementedError

    def arrivals(self) -> list[Arrival]:
        """Every delivery to the cloud so far, in arrival order, duplicates included."""
        raise NotImplementedError

    def close(self) -> list[str]:
        """Stop everything; what went wrong while stopping."""
        raise NotImplementedError


# -- edge-sync -----------------------------------------------------------------------------------


class _HttpDevice(DeviceClient):
    def __init__(self, port: int, token: str, device: int) -> None:
        self._port = port
        self._path = f"/api/v1/{token}/telemetry"
        self._device = device
        self._conn: http.client.HTTPConnection | None = None

    def post(self, n: int) -> bool:
        body = json.dumps({"device": self._device, "n": n}).encode()
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30.0)
        try:
            self._conn.request("POST", self._path, body, {"Content-Type": "application/json"})
            resp = self._conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return False
        if resp.will_close:
            self.close()
        return resp.status == 200

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None


def _admin(port: int, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    from edge_sync.cli.common import admin_call
    from edge_sync.config import AdminConfig

    return admin_call(AdminConfig(port=port), method, path, body, timeout=timeout)


class EdgeSyncSystem(System):
    key = "edge_sync"
    label = "edge-sync"

    def __init__(self, workdir: Path, opts: Options) -> None:
        super().__init__(workdir, opts)
        self.routing_key = f"bench-compare-{secrets.token_hex(4)}"
        self.secret = secrets.token_urlsafe(16)
        self.rpc_port, self.cloud_admin_port = free_port(), free_port()
        self.http_port, self.edge_admin_port = free_port(), free_port()
        base = dict(os.environ)
        base["PYTHONUNBUFFERED"] = "1"
        self.cloud_env = {
            **base,
            "CLOUD_DATA_DIR": str(workdir / "cloud-store"),
            "EDGES_RPC_HOST": "127.0.0.1",
            "EDGES_RPC_PORT": str(self.rpc_port),
            "CLOUD_ADMIN_HOST": "127.0.0.1",
            "CLOUD_ADMIN_PORT": str(self.cloud_admin_port),
            "CLOUD_LOG_LEVEL": "INFO",
        }
        self.edge_env = {
            **base,
            "EDGE_DATA_DIR": str(workdir / "edge-store"),
            "EDGE_HTTP_HOST": "127.0.0.1",
            "EDGE_HTTP_PORT": str(self.http_port),
            "EDGE_ADMIN_HOST": "127.0.0.1",
            "EDGE_ADMIN_PORT": str(self.edge_admin_port),
            "EDGE_MQTT_ENABLED": "false",  # devices post over HTTP here; never take 1883
            "EDGE_MQTT_TLS_ENABLED": "false",
            "EDGE_LOG_LEVEL": "INFO",
            "CLOUD_ROUTING_KEY": self.routing_key,
            "CLOUD_ROUTING_SECRET": self.secret,
            "CLOUD_RPC_HOST": "127.0.0.1",
            "CLOUD_RPC_PORT": str(self.rpc_port),
            "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100",
            "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000",
            "EDGE_CLOUD_RECONNECT_JITTER": "0",
            "EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S": "1",
            "EDGE_CLOUD_RETRY_INTERVAL_MS": "1000",
            "EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS": "1000",
            "EDGE_CLOUD_BATCH_TIMEOUT_MS": "100",
        }
        self.cloud = Proc("edge-cloud serve", [sys.executable, "-m", "edge_sync.cli.cloud", "serve"],
                          workdir / "edge-cloud.log", self.cloud_env)
        self.edge = Proc("edge-sync run", [sys.executable, "-m", "edge_sync.cli.edge", "run"],
                         workdir / "edge-sync.log", self.edge_env)
        self._events_seen = 0
        self._arrivals: list[Arrival] = []
        self._wall_minus_mono = time.time() - time.monotonic()

    # -- cloud
    def _register_edge(self) -> None:
        cmd = [sys.executable, "-m", "edge_sync.cli.cloud", "edge", "create", "--name", "bench-compare",
               "--routing-key", self.routing_key, "--secret", self.secret, "--json"]
        done = subprocess.run(cmd, env=self.cloud_env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise CompareError(f"edge-cloud edge create exited with {done.returncode}: {done.stderr[-2000:]}")

    def start_cloud(self) -> float:
        from edge_sync.cli.common import AdminUnreachable

        proc = self.cloud.spawn()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise CompareError(f"edge-cloud serve exited with {proc.returncode} while starting:\n"
                                   f"{_tail(self.cloud.log)}")
            with contextlib.suppress(AdminUnreachable, ValueError):
                code, status = _admin(self.cloud_admin_port, "GET", "/api/status", timeout=2.0)
                if code == 200 and isinstance(status, dict) and status.get("server") == "running":
                    return time.monotonic()
            if time.monotonic() > deadline:
                raise CompareError(f"edge-cloud serve not running after {_START_TIMEOUT_S:.0f}s:\n"
                                   f"{_tail(self.cloud.log)}")
            time.sleep(_POLL_S / 2)

    def stop_cloud(self) -> None:
        code = self.cloud.terminate()
        if code != 0:
            raise CompareError(f"edge-cloud serve exited with {code} on SIGTERM:\n{_tail(self.cloud.log)}")

    # -- edge
    def _edge_status(self) -> dict[str, Any] | None:
        from edge_sync.cli.common import AdminUnreachable

        with contextlib.suppress(AdminUnreachable, ValueError):
            code, status = _admin(self.edge_admin_port, "GET", "/api/status", timeout=2.0)
            if code == 200 and isinstance(status, dict):
                return status
        return None

    def start_edge(self) -> None:
        proc = self.edge.spawn()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while self._edge_status() is None:
            if proc.poll() is not None:
                raise CompareError(f"edge-sync run exited with {proc.returncode} while starting:\n"
                                   f"{_tail(self.edge.log)}")
            if time.monotonic() > deadline:
                raise CompareError(f"edge-sync run did not serve within {_START_TIMEOUT_S:.0f}s:\n"
                                   f"{_tail(self.edge.log)}")
            time.sleep(_POLL_S / 2)

    def kill_edge(self) -> None:
        self.edge.kill9()

    def edge_pid(self) -> int | None:
        return self.edge.pid

    def start(self) -> None:
        self._register_edge()
        self.start_cloud()
        self.start_edge()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            status = self._edge_status() or {}
            if status.get("link", {}).get("state") == "CONNECTED":
                return
            if time.monotonic() > deadline:
                raise CompareError(f"the edge's link is not CONNECTED after {_START_TIMEOUT_S:.0f}s "
                                   f"({status.get('link')}):\n{_tail(self.edge.log)}")
            time.sleep(_POLL_S)

    def device_clients(self) -> list[DeviceClient]:
        out: list[DeviceClient] = []
        for i in range(self.opts.devices):
            code, body = _admin(self.edge_admin_port, "POST", "/api/devices", {"name": f"bench-dev-{i}"})
            if code != 201 or not isinstance(body, dict):
                raise CompareError(f"creating device {i}: HTTP {code} {body!r}")
            out.append(_HttpDevice(self.http_port, str(body["token"]), i))
        return out

    def arrivals(self) -> list[Arrival]:
        """The cloud's applied events, fetched incrementally from its admin API while it runs."""
        from edge_sync.cli.common import AdminUnreachable

        while self.cloud.pid is not None:
            try:
                code, page = _admin(self.cloud_admin_port, "GET",
                                    f"/api/events?edge={self.routing_key}&after={self._events_seen}"
                                    "&limit=100000", timeout=30.0)
            except AdminUnreachable:
                break
            if code != 200 or not isinstance(page, list) or not page:
                break
            for event in page:
                self._events_seen = int(event["apply_index"])
                values = (event.get("body") or {}).get("values") or {}
                if event.get("action") == "TIMESERIES_UPDATED" and "device" in values and "n" in values:
                    t = event["applied_at"] / 1000.0 - self._wall_minus_mono
                    self._arrivals.append((int(values["device"]), int(values["n"]), t))
        return list(self._arrivals)

    def close(self) -> list[str]:
        errors = []
        for proc in (self.edge, self.cloud):
            code = proc.terminate()
            if code not in (0, None):
                errors.append(f"{proc.name} exited with {code} on SIGTERM")
        return errors


# -- Mosquitto -----------------------------------------------------------------------------------


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise CompareError(f"the MQTT client library is missing: .venv/bin/pip install "
                           f"{PAHO_REQUIREMENT}") from None
    return mqtt


def mosquitto_config(role: str, port: int, data_dir: Path, cloud_port: int | None = None) -> str:
    """The config file of the "cloud" broker or of the "edge" broker (bridged to cloud_port)."""
    text = common_mosquitto_config(f"scripts/bench compare: the {role} broker", port, data_dir, [
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_on_changes true",
        "autosave_interval 1",
        "max_queued_messages 0",
        "max_inflight_messages 1",
        "set_tcp_nodelay true",
    ])
    if role == "edge":
        assert cloud_port is not None
        text += "\n" + "\n".join([
            "connection cloud",
            f"address 127.0.0.1:{cloud_port}",
            "remote_clientid bench-bridge",
            "local_clientid bench-bridge-local",
            "topic telemetry/# out 1",
            "cleansession false",
            "bridge_attempt_unsubscribe false",
            "restart_timeout 1 1",  # base 1 s, cap 1 s: the fastest retry 2.0.11 does (~2 s)
            "notifications false",
        ]) + "\n"
    return text


class Broker:
    """One mosquitto broker with its generated config and persistence directory."""

    def __init__(self, binary: str, role: str, workdir: Path, cloud_port: int | None = None) -> None:
        self.role = role
        self.port = free_port()
        self.dir = workdir / f"mosquitto-{role}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(mosquitto_config(role, self.port, self.dir, cloud_port))
        self.proc = Proc(f"mosquitto ({role})", [binary, "-c", str(self.conf)], self.dir / "stdout.log")

    def start(self) -> float:
        proc = self.proc.spawn()
        wait_port(self.port, proc, self.proc.name, self.dir / "mosquitto.log", _START_TIMEOUT_S)
        return time.monotonic()


class _MqttDevice(DeviceClient):
    """One paho client per device; a point is accepted when its PUBACK arrives (on_publish)."""

    def __init__(self, port: int, device: int, ack_timeout: float) -> None:
        mqtt = _paho()
        self._device = device
        self._topic = f"{TOPIC_PREFIX}{device}"
        self._ack_timeout = ack_timeout
        self._cond = threading.Condition()
        self._acked: set[int] = set()  # mids acknowledged and not yet claimed by post()
        self._given_up: dict[int, int] = {}  # mid -> point, for PUBACKs after post() gave up
        self._late: set[int] = set()
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-dev-{device}",
                                  clean_session=True, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(_START_TIMEOUT_S):
            raise CompareError(f"MQTT device {device} could not connect to the edge broker")

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._cond:
            if mid in self._given_up:
                self._late.add(self._given_up.pop(mid))
            else:
                self._acked.add(mid)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes) -> Any:
        """QoS 1 PUBLISH; paho keeps it (and sends it once connected) even while disconnected."""
        return self.client.publish(topic, payload, qos=1)

    def post(self, n: int) -> bool:
        mid = self.publish(self._topic, json.dumps({"device": self._device, "n": n}).encode()).mid
        with self._cond:
            if self._cond.wait_for(lambda: mid in self._acked, self._ack_timeout):
                self._acked.discard(mid)
                return True
            self._given_up[mid] = n
            return False

    def late_acks(self) -> set[int]:
        with self._cond:
            return set(self._late)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Collector:
    """The cloud application: a persistent QoS 1 subscription to telemetry/# on the cloud broker."""

    def __init__(self, port: int) -> None:
        mqtt = _paho()
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []
        self.probes = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-collector",
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(_START_TIMEOUT_S):
            raise CompareError("the collector could not subscribe on the cloud broker")

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(f"{TOPIC_PREFIX}#", qos=1)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        if msg.topic == PROBE_TOPIC:
            self.probes += 1
            return
        try:
            body = json.loads(msg.payload)
            arrival = (int(body["device"]), int(body["n"]), now)
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self._arrivals.append(arrival)

    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class MosquittoSystem(System):
    key = "mosquitto"
    label = "mosquitto"

    def __init__(self, workdir: Path, opts: Options, binary: str, version: str) -> None:
        super().__init__(workdir, opts)
        self.label = f"mosquitto {version}"
        self.cloud = Broker(binary, "cloud", workdir)
        self.edge = Broker(binary, "edge", workdir, cloud_port=self.cloud.port)
        self.collector: Collector | None = None
        self.devices: list[_MqttDevice] = []

    def start(self) -> None:
        self.cloud.start()
        self.collector = Collector(self.cloud.port)
        self.edge.start()

    def device_clients(self) -> list[DeviceClient]:
        self.devices = [_MqttDevice(self.edge.port, i, self.opts.ack_timeout)
                        for i in range(self.opts.devices)]
        # the bridge is up when a probe published to the edge broker reaches the collector
        assert self.collector is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while self.collector.probes == 0:
            if time.monotonic() > deadline:
                raise CompareError("the edge broker's bridge did not forward a probe within "
                                   f"{_START_TIMEOUT_S:.0f}s:\n{_tail(self.edge.dir / 'mosquitto.log')}")
            self.devices[0].publish(PROBE_TOPIC, b'{"probe": true}')
            time.sleep(0.5)
        return list(self.devices)

    def stop_cloud(self) -> None:
        code = self.cloud.proc.terminate()
        if code != 0:
            raise CompareError(f"the cloud broker exited with {code} on SIGTERM:\n"
                               f"{_tail(self.cloud.dir / 'mosquitto.log')}")

    def start_cloud(self) -> float:
        return self.cloud.start()

    def kill_edge(self) -> None:
        self.edge.proc.kill9()

    def start_edge(self) -> None:
        self.edge.start()

    def edge_pid(self) -> int | None:
        return self.edge.proc.pid

    def arrivals(self) -> list[Arrival]:
        return self.collector.arrivals() if self.collector is not None else []

    def close(self) -> list[str]:
        if self.collector is not None:
            with contextlib.suppress(Exception):
                self.collector.close()
        errors = []
        for broker in (self.edge, self.cloud):
            code = broker.proc.terminate()
            if code not in (0, None):
                errors.append(f"{broker.proc.name} exited with {code} on SIGTERM")
        return errors


# -- one run ---------------------------------------------------------------------------------------


def inversions(values: list[int]) -> int:
    """Pairs (i < j) with values[i] > values[j] (merge sort, O(n log n))."""
    if len(values) < 2:
        return 0
    mid = len(values) // 2
    left, right = sorted(values[:mid]), sorted(values[mid:])
    count = inversions(values[:mid]) + inversions(values[mid:])
    j = 0
    for x in left:  # for each left element, how many right elements are smaller
        while j < len(right) and right[j] < x:
            j += 1
        count += j
    return count


def score(accepted: set[tuple[int, int]], arrivals: list[Arrival], t0: float) -> dict[str, Any]:
    """The figures of one run from the accepted points and the cloud's arrivals."""
    seen: set[tuple[int, int]] = set()
    first: dict[int, list[int]] = {}
    highest: dict[int, int] = {}
    duplicated = misordered = 0
    for device, n, _t in arrivals:
        if (device, n) in seen:
            duplicated += 1
            continue
        seen.add((device, n))
        first.setdefault(device, []).append(n)
        if n < highest.get(device, -1):
            misordered += 1
        else:
            highest[device] = n
    after = [t for *_x, t in arrivals if t >= t0]
    return {
        "accepted": len(accepted),
        "delivered": len(seen),
        "lost": len(accepted - seen),
        "duplicated": duplicated,
        "misordered": misordered,
        "drain_s": max(after) - t0 if after else 0.0,
        "inverted_pairs": sum(inversions(v) for v in first.values()),
        "delivered_unacked": len(seen - accepted),
    }


def run_once(system: System, opts: Options) -> dict[str, Any]:
    label = system.label
    total = opts.devices * opts.points
    rss = RssWatch(system.edge_pid)
    devices: Devices | None = None
    rss.start()
    try:
        system.start()
        devices = Devices(system.device_clients(), opts.points)
        progress(f"{label}: cloud and edge up; {opts.devices} devices x {opts.points} points")
        devices.start()
        devices.gate.set()
        t_start = time.monotonic()
        devices.wait_accepted(total // 3, opts.post_timeout)
        system.stop_cloud()
        progress(f"{label}: {devices.tally.accepted_total:,} accepted; cloud side stopped (outage)")
        devices.wait_accepted(total // 2, opts.post_timeout)
        devices.gate.clear()
        rss.sample()
        system.kill_edge()
        accepted_at_kill = devices.tally.accepted_total
        progress(f"{label}: {accepted_at_kill:,} accepted; edge side killed (SIGKILL)")
        system.start_edge()
        devices.gate.set()
        progress(f"{label}: edge side restarted")
        devices.join(opts.post_timeout - (time.monotonic() - t_start))
        with devices.tally.lock:
            failed = sum(len(v) for v in devices.tally.failed.values())
        progress(f"{label}: devices done in {time.monotonic() - t_start:.1f}s: "
                 f"{devices.tally.accepted_total:,} accepted, {failed} not acknowledged")
        t0 = system.start_cloud()
        progress(f"{label}: cloud side restarted; draining")
        accepted = devices.tally.accepted_points(devices.clients)
        last_count, last_change = len(system.arrivals()), t0
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            arrivals = system.arrivals()
            if len(arrivals) != last_count:
                last_count, last_change = len(arrivals), now
            complete = accepted <= {(d, n) for d, n, _t in arrivals}
            if complete and now - last_change >= opts.settle_s:
                break
            if now - last_change >= opts.quiet_s:
                progress(f"{label}: nothing arrived for {opts.quiet_s:.0f}s; stop waiting")
                break
            if now - t0 >= opts.drain_timeout:
                progress(f"{label}: drain not complete after {opts.drain_timeout:.0f}s; stop waiting")
                break
        accepted = devices.tally.accepted_points(devices.clients)
        result = score(accepted, system.arrivals(), t0)
    finally:
        if devices is not None:
            devices.stop()
        errors = system.close()
        result_rss = rss.stop()
    if errors:
        raise CompareError("; ".join(errors))
    result["peak_rss_mb"] = result_rss
    return result


# -- output ----------------------------------------------------------------------------------------


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts summed over the runs, drain_s the median, peak_rss_mb the largest."""
    out: dict[str, Any] = {k: sum(r[k] for r in runs) for k in ("accepted", "delivered", "lost",
                                                                "duplicated", "misordered")}
    out["drain_s"] = round(statistics.median(r["drain_s"] for r in runs), 2)
    out["peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in runs), 1)
    return out


ROWS = (
    ("accepted", "points accepted (200 / PUBACK)", "{:,}"),
    ("delivered", "points that reached the cloud", "{:,}"),
    ("lost", "lost (accepted, never delivered)", "{:,}"),
    ("duplicated", "duplicated (extra deliveries)", "{:,}"),
    ("misordered", "out of order per device", "{:,}"),
    ("drain_s", "drain time after the outage (s)", "{:.2f}"),
    ("peak_rss_mb", "peak RSS of the edge side (MiB)", "{:.1f}"),
)


def table(results: dict[str, dict[str, Any]], labels: dict[str, str]) -> str:
    columns = [k for k in SYSTEMS if k in results]
    width = max(len(r[1]) for r in ROWS)
    col = max(14, *(len(labels[k]) for k in columns))
    lines = [f"{'':<{width}}  " + "  ".join(f"{labels[k]:>{col}}" for k in columns)]
    for key, title, fmt in ROWS:
        cells = []
        for k in columns:
            value = results[k].get(key)
            cells.append(f"{'-' if value is None else fmt.format(value):>{col}}")
        lines.append(f"{title:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="scripts/bench compare",
        description="The same workload (devices posting numbered points, a cloud outage, kill -9 of "
        "the edge side during it, recovery) through edge-sync and through a Mosquitto bridge with "
        "its most durable settings. Progress goes to stderr; stdout gets a table and, last, one "
        "JSON line {\"edge_sync\": {...}, \"mosquitto\": {...}}.",
    )
    p.add_argument("--devices", type=int, default=None, help="devices posting (default 20; --quick 5)")
    p.add_argument("--points", type=int, default=None, help="points per device (default 500; --quick 100)")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole sequence N times (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke test: 5 devices x 100 points")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="longest wait for the backlog after the cloud restarts, in s (default 120)")
    args = p.parse_args(list(argv))
    opts = Options(
        devices=args.devices if args.devices is not None else (5 if args.quick else 20),
        points=args.points if args.points is not None else (100 if args.quick else 500),
        runs=args.runs,
        drain_timeout=args.drain_timeout,
    )
    if min(opts.devices, opts.points, opts.runs) < 1 or opts.drain_timeout <= 0:
        p.error("--devices, --points, --runs and --drain-timeout must be positive")
    if opts.devices * opts.points < 4:
        p.error("--devices x --points must be at least 4")
    return opts


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    try:
        binary, version = ensure_mosquitto()
        _paho()
    except SetupError as exc:
        progress(f"FAILED: {exc}")
        emit({k: dict.fromkeys(KEYS) for k in SYSTEMS})
        return 1
    progress(f"compare: {opts.devices} devices x {opts.points} points, {opts.runs} run(s); "
             f"edge-sync vs mosquitto {version} ({binary})")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in SYSTEMS}
    labels = {"edge_sync": "edge-sync", "mosquitto": f"mosquitto {version}"}
    errors: list[str] = []
    for run in range(1, opts.runs + 1):
        order = SYSTEMS if run % 2 else tuple(reversed(SYSTEMS))
        for key in order:
            progress(f"run {run}/{opts.runs}: {labels[key]}")
            with tempfile.TemporaryDirectory(prefix=f"compare-{key}-") as tmp:
                workdir = Path(tmp)
                system: System = (EdgeSyncSystem(workdir, opts) if key == "edge_sync"
                                  else MosquittoSystem(workdir, opts, binary, version))
                if isinstance(system, MosquittoSystem) and run == 1:
                    progress("mosquitto edge broker config:\n" + system.edge.conf.read_text().rstrip())
                    progress("mosquitto cloud broker config:\n" + system.cloud.conf.read_text().rstrip())
                try:
                    result = run_once(system, opts)
                except Exception as exc:  # reported in the output and by the exit code
                    errors.append(f"{labels[key]} run {run}: {exc}")
                    progress(f"{labels[key]}: FAILED: {exc}")
                    continue
            runs[key].append(result)
            progress(f"{labels[key]} run {run}: " + ", ".join(
                f"{k} {result[k]:.2f}" if isinstance(result[k], float) else f"{k} {result[k]}"
                for k in (*KEYS, "inverted_pairs", "delivered_unacked")))
    results = {k: aggregate(v) for k, v in runs.items() if v}
    print(f"scripts/bench compare: {opts.devices} devices x {opts.points} points, cloud outage from 1/3, "
          f"kill -9 of the edge side at 1/2, {opts.runs} run(s)")
    print(table(results, labels))
    emit({k: results.get(k, dict.fromkeys(KEYS)) for k in SYSTEMS})
    mine = results.get("edge_sync")
    if mine is not None and (mine["lost"] or mine["duplicated"] or mine["misordered"]):
        errors.append(f"edge-sync broke its delivery contract: {mine['lost']} lost, "
                      f"{mine['duplicated']} duplicated, {mine['misordered']} out of order")
    if errors:
        progress("FAILED: " + "; ".join(errors))
        return 1
    return 0
