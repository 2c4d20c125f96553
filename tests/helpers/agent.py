"""Drive a real `edge-sync run` process from a test: start it on free loopback ports (device
HTTP, admin, MQTT, and MQTT over TLS when a test turns it on) with a data directory in tmp,
wait until it serves, talk to its device and admin APIs over HTTP, kill it (SIGKILL) or stop it
(SIGTERM), and read its LMDB event log directly, read-only.

The process logs JSON lines (EDGE_LOG_FORMAT=json) to one stderr file per start, kept in the
agent's work directory, so tests can assert on log lines. Every HTTP call that gets no answer
(connection refused or reset, the process died mid-request, a timeout) raises `NoAnswer`.

`Load` runs client threads that post numbered telemetry per device and record every outcome;
`check_log` compares the log with that record (acknowledged = there exactly once, in order).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Counts, StoredEvent
from tests.helpers.ports import free_ports
from tests.helpers.process import ServiceProcess
from tests.helpers.wait import wait_until

__all__ = [
    "Agent",
    "AgentStartError",
    "Gate",
    "History",
    "HttpClient",
    "Load",
    "NoAnswer",
    "Response",
    "Track",
    "check_log",
    "read_counts",
    "read_log",
]

START_DEADLINE_S = 20.0

_AGENT_CMD = [sys.executable, "-m", "edge_sync.cli.edge", "run"]


class NoAnswer(Exception):
    """An HTTP request got no response: the agent is down, died mid-request or timed out."""


class AgentStartError(RuntimeError):
    """`edge-sync run` exited (or never served) while we waited for it to start."""


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return json.dumps(body).encode()


class HttpClient:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port; reconnects after any failure.

    Not thread-safe: give each thread its own. A request that gets no response raises NoAnswer
    (and the connection is dropped, so the next request opens a fresh one). http.client never
    resends a request, so a NoAnswer request was sent at most once.
    """

    def __init__(self, port: int, *, timeout: float = 15.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterable[bytes] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        chunked: bool = False,
    ) -> Response:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        conn = self._conn
        try:
            conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise NoAnswer(f"{method} 127.0.0.1:{self.port}{path}: {exc!r}") from exc
        if resp.will_close:
            self.close()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def post_json(self, path: str, body: Any) -> Response:
        """POST a JSON-able value (bytes are sent as they are)."""
        return self.request("POST", path, _encode(body))

    def post_telemetry(self, token: str, body: Any) -> int:
        return self.post_json(f"/api/v1/{token}/telemetry", body).status

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _once(port: int, method: str, path: str, body: bytes | None = None,
          *, timeout: float = 15.0) -> Response:
    """One request on its own connection (thread-safe)."""
    with HttpClient(port, timeout=timeout) as client:
        return client.request(method, path, body)


# -- reading the store ---------------------------------------------------------------------------


def read_log(data_dir: Path) -> list[StoredEvent]:
    """Every event of the store at data_dir, in seq order (each one decoded), read-only."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        with store.read() as txn:
            return list(EventLog(store).iter_events(txn))
    finally:
        store.close()


def read_counts(data_dir: Path) -> Counts:
    """The event log's counts (including next_seq), read-only."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        with store.read() as txn:
            return EventLog(store).counts(txn)
    finally:
        store.close()


# -- the agent process ---------------------------------------------------------------------------


class Agent(ServiceProcess):
    """A real `edge-sync run` subprocess; restartable on the same ports and data directory."""

    label = "edge-sync run"
    command = _AGENT_CMD
    stderr_prefix = "agent"

    def __init__(
        self,
        workdir: Path,
        *,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, data_dir=data_dir, env=env)
        self.pick_ports()

    def pick_ports(self) -> None:
        self.http_port, self.admin_port, self.mqtt_port, self.mqtt_tls_port = free_ports(4)

    def own_env(self) -> dict[str, str]:
        return {
            "EDGE_DATA_DIR": str(self.data_dir),
            "EDGE_HTTP_HOST": "127.0.0.1",
            "EDGE_HTTP_PORT": str(self.http_port),
            "EDGE_ADMIN_HOST": "127.0.0.1",
            "EDGE_ADMIN_PORT": str(self.admin_port),
            "EDGE_MQTT_HOST": "127.0.0.1",
            "EDGE_MQTT_PORT": str(self.mqtt_port),
            "EDGE_MQTT_TLS_HOST": "127.0.0.1",
            "EDGE_MQTT_TLS_PORT": str(self.mqtt_tls_port),
            "EDGE_LOG_FORMAT": "json",
        }

    def start(self, env: Mapping[str, str] | None = None, *,
              timeout: float = START_DEADLINE_S) -> Agent:
        """Start and wait until GET /api/status answers 200 (AgentStartError otherwise); a
        port another process holds is dealt with as ``spawn_until_serving`` says."""
        failed = self.spawn_until_serving(env, timeout,
                                          lambda left: self.wait_ready_or_exit(timeout=left))
        if failed is not None:
            code, text = failed
            raise AgentStartError(f"edge-sync run exited with {code} while starting:\n{text}")
        return self

    def wait_ready_or_exit(self, *, timeout: float = START_DEADLINE_S) -> int | None:
        """Wait until GET /api/status answers 200 (None) or the process exits (its exit code).
        AgentStartError (after killing it) when neither happens within timeout."""
        proc = self.proc
        assert proc is not None

        def outcome() -> tuple[int | None] | None:
            code = proc.poll()
            if code is not None:
                return (code,)
            try:
                if _once(self.admin_port, "GET", "/api/status", timeout=2.0).status == 200:
                    return (None,)
            except NoAnswer:
                pass
            return None

        try:
            (code,) = wait_until(outcome, timeout=timeout, what="edge-sync run to serve or exit")
        except AssertionError as exc:
            self.kill9()
            raise AgentStartError(f"{exc}:\n{self.stderr_text()}") from None
        return code

    # -- HTTP --------------------------------------------------------------------------------

    def admin(self, method: str, path: str, body: Any = None) -> Response:
        return _once(self.admin_port, method, path, None if body is None else _encode(body))

    def device(self, method: str, path: str, body: Any = None) -> Response:
        return _once(self.http_port, method, path, None if body is None else _encode(body))

    def create_device(self, name: str) -> tuple[str, str]:
        """Provision a device through the admin API: (id, token)."""
        resp = self.admin("POST", "/api/devices", {"name": name})
        if resp.status != 201:
            raise AssertionError(f"device {name!r} not created: {resp.status} {resp.body!r}")
        out = resp.json()
        return str(out["id"]), str(out["token"])

    def post_telemetry(self, token: str, body: Any) -> int:
        """POST telemetry on a fresh connection; the status code (NoAnswer if none)."""
        return self.device("POST", f"/api/v1/{token}/telemetry", body).status

    def client(self, *, timeout: float = 15.0) -> HttpClient:
        """A keep-alive client of the device API (one per thread)."""
        return HttpClient(self.http_port, timeout=timeout)

    def read_log(self) -> list[StoredEvent]:
        return read_log(self.data_dir)


# -- load: client threads posting telemetry -----------------------------------------------------

PARK_DEADLINE_S = 20.0
PROGRESS_DEADLINE_S = 20.0


@dataclass
class Track:
    """What one device's client saw: values it posted ({"v": n}, n counting up) by outcome.

    Only the device's client thread appends; the controller reads while the clients are parked.
    """

    name: str
    id: uuid.UUID
    token: str
    next_value: int = 0
    acked: list[int] = field(default_factory=list)
    unanswered: list[int] = field(default_factory=list)
    refused: list[tuple[int, int, str]] = field(default_factory=list)  # (value, status, message)

    def must_be_absent(self) -> set[int]:
        """Refused values that cannot have been stored: every refusal except a 503 that says
        the outcome is unknown (a timeout)."""
        return {v for v, status, message in self.refused
                if status != 503 or "restarting" in message}


class Gate:
    """Clients pass it before each request; closed, they park. The controller waits until every
    client is parked, so nothing is in flight while it checks the log."""

    def __init__(self, parties: int) -> None:
        self._cond = threading.Condition()
        self._open = False
        self._stopping = False
        self._parked = 0
        self._parties = parties

    def enter(self) -> bool:
        """Client thread: wait until open; False once stopping."""
        with self._cond:
            if self._open and not self._stopping:
                return True
            self._parked += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._open or self._stopping)
            self._parked -= 1
            return not self._stopping

    def backoff(self, seconds: float) -> None:
        """Client thread, after a request got no answer: wait a little, or until closed."""
        with self._cond:
            self._cond.wait_for(lambda: not self._open or self._stopping, seconds)

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._open = False
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def wait_parked(self, timeout: float = PARK_DEADLINE_S) -> None:
        wait_until(lambda: self._parked == self._parties, timeout=timeout, condition=self._cond,
                   what=f"all {self._parties} clients parked", show=lambda: f"{self._parked} parked")


class _Client(threading.Thread):
    """Posts to its devices round-robin, one request at a time, until the gate stops it."""

    def __init__(self, index: int, port: int, tracks: list[Track], gate: Gate) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self._port = port
        self._tracks = tracks
        self._gate = gate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with HttpClient(self._port, timeout=30.0) as http:
                i = 0
                while self._gate.enter():
                    track = self._tracks[i % len(self._tracks)]
                    i += 1
                    value = track.next_value
                    track.next_value += 1
                    try:
                        resp = http.post_json(f"/api/v1/{track.token}/telemetry", {"v": value})
                    except NoAnswer:
                        track.unanswered.append(value)
                        self._gate.backoff(0.01)
                        continue
                    if resp.status == 200:
                        track.acked.append(value)
                    else:
                        try:
                            message = str(resp.json().get("message"))
                        except ValueError:
                            message = resp.body.decode(errors="replace")
                        track.refused.append((value, resp.status, message))
        except BaseException as exc:  # reported by Load.finish
            self.error = exc


class Load:
    """Client threads, each owning a few devices (created once, through the admin API), posting
    sequentially while the gate is open. Starts with the gate closed."""

    def __init__(self, agent: Agent, *, clients: int = 4, devices_per_client: int = 3) -> None:
        self.gate = Gate(clients)
        self.tracks: list[list[Track]] = []
        for c in range(clients):
            owned = []
            for d in range(devices_per_client):
                name = f"dev-{c}-{d}"
                device_id, token = agent.create_device(name)
                owned.append(Track(name, uuid.UUID(device_id), token))
            self.tracks.append(owned)
        self.clients = [_Client(i, agent.http_port, t, self.gate)
                        for i, t in enumerate(self.tracks)]
        for client in self.clients:
            client.start()

    @property
    def all_tracks(self) -> list[Track]:
        return [t for owned in self.tracks for t in owned]

    def acked_total(self) -> int:
        return sum(len(t.acked) for t in self.all_tracks)

    def refused(self) -> list[tuple[str, int, int, str]]:
        return [(t.name, *r) for t in self.all_tracks for r in t.refused]

    def go(self) -> None:
        self.gate.open()

    def pause_and_park(self) -> None:
        """Close the gate and wait until no request is in flight."""
        self.gate.close()
        self.gate.wait_parked()

    def finish(self) -> None:
        """Stop the clients; re-raise what went wrong in them."""
        self.gate.stop()
        for client in self.clients:
            client.join(PARK_DEADLINE_S)
        errors = [c.error for c in self.clients if c.error is not None]
        assert errors == [], errors
        assert not any(c.is_alive() for c in self.clients)

    def wait_acked(self, at_least: int, timeout: float = PROGRESS_DEADLINE_S) -> None:
        """Wait until at least this many posts were acknowledged in total."""
        wait_until(lambda: self.acked_total() >= at_least, timeout=timeout,
                   what=f"{at_least} acknowledged posts", show=self.acked_total)


@dataclass
class History:
    """The log as seen at the previous check: seq -> event id, and the highest seq."""

    ids: dict[int, uuid.UUID] = field(default_factory=dict)
    max_seq: int = 0


def check_log(data_dir: Path, load: Load, history: History | None = None) -> list[StoredEvent]:
    """Check the log against what the clients saw (call it with the clients parked):

    - the whole log decodes; seqs are strictly increasing and next_seq follows the last one;
    - with a history: an event once seen keeps its seq and id, and new events only get seqs
      above the previous maximum (seqs are never reused);
    - each device has its ADDED and CREDENTIALS_UPDATED events, then only telemetry;
    - per device the values are strictly increasing (each at most once, in posting order),
      every acknowledged value is there, and nothing is there that was never posted or that was
      refused for certain.
    """
    events = read_log(data_dir)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), "seqs not strictly increasing"
    assert seqs and seqs[0] >= 1
    counts = read_counts(data_dir)
    assert counts.total == len(events)
    assert counts.next_seq == seqs[-1] + 1
    if history is not None:
        current = {e.seq: e.id for e in events}
        for seq, event_id in history.ids.items():
            assert current.get(seq) == event_id, f"event at seq {seq} vanished or was replaced"
        new = [s for s in seqs if s not in history.ids]
        assert all(s > history.max_seq for s in new), "a new event got an old seq"
        history.ids = current
        history.max_seq = seqs[-1]

    by_device: dict[uuid.UUID, list[StoredEvent]] = {}
    for e in events:
        by_device.setdefault(e.entity_id, []).append(e)
    tracks = {t.id: t for t in load.all_tracks}
    assert set(by_device) == set(tracks), "events of unknown entities in the log"
    for device_id, device_events in by_device.items():
        track = tracks[device_id]
        actions = [e.action for e in device_events]
        assert actions[:2] == [Action.ADDED, Action.CREDENTIALS_UPDATED], track.name
        assert set(actions[2:]) <= {Action.TIMESERIES_UPDATED}, track.name
        assert all(set(e.body["values"]) == {"v"} for e in device_events[2:]), track.name
        values = [e.body["values"]["v"] for e in device_events[2:]]
        assert values == sorted(set(values)), f"{track.name}: duplicated or out of order"
        missing = sorted(set(track.acked) - set(values))
        assert missing == [], f"{track.name}: acknowledged values lost: {missing}"
        maybe = set(track.acked) | set(track.unanswered) | {v for v, *_ in track.refused}
        unexpected = sorted(set(values) - maybe)
        assert unexpected == [], f"{track.name}: values never posted: {unexpected}"
        refused_but_stored = sorted(set(values) & track.must_be_absent())
        assert refused_but_stored == [], f"{track.name}: refused yet stored: {refused_but_stored}"
    return events
