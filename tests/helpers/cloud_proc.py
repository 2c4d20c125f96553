"""Drive a real `edge-cloud serve` process from a test: start it on free loopback ports with a
data directory in tmp, wait until its admin API answers, operate it (edges, devices, shared
attributes) and read what it applied from an edge, kill it (SIGKILL) or stop it (SIGTERM), and
start it again on the same ports and data directory.

The process logs JSON lines (CLOUD_LOG_FORMAT=json) to one stderr file per start, kept in the
work directory. Reads of the applied events go through the admin API while the server runs and
through `edge-cloud events --json` (LMDB read transactions) when it does not; operator writes
go through the `edge-cloud` CLI, which itself uses the running server's admin API (so downlinks
are sent at once) or, with the server stopped, the store directly.

    cloud = CloudProc(tmp_path / "cloud").start()
    cloud.create_edge("edge-1", "rk-1", "secret-1")
    ... edge with CLOUD_RPC_PORT=cloud.rpc_port ...
    cloud.wait_applied("rk-1", 10)
    events = cloud.events("rk-1")
    cloud.kill9(); cloud.start()
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_sync.storage.records import Action, Status, StoredEvent
from tests.helpers.agent import Agent, NoAnswer, _once
from tests.helpers.ports import free_ports
from tests.helpers.process import ServiceProcess
from tests.helpers.wait import wait_until

__all__ = [
    "CloudCliError",
    "CloudProc",
    "CloudStartError",
    "by_entity",
    "check_delivered",
    "edge_status",
    "link_env",
    "link_state",
    "wait_connected",
    "wait_drained",
]

START_DEADLINE_S = 20.0
CLI_TIMEOUT_S = 60.0

_SERVE_CMD = [sys.executable, "-m", "edge_sync.cli.cloud", "serve"]
_CLI_CMD = [sys.executable, "-m", "edge_sync.cli.cloud"]


class CloudStartError(RuntimeError):
    """`edge-cloud serve` exited (or never served) while we waited for it to start."""


class CloudCliError(AssertionError):
    """An `edge-cloud` operator command failed."""


class CloudProc(ServiceProcess):
    """A real `edge-cloud serve` subprocess; restartable on the same ports and data directory."""

    label = "edge-cloud serve"
    command = _SERVE_CMD
    stderr_prefix = "cloud"

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
        self.rpc_port, self.admin_port = free_ports(2)

    def own_env(self) -> dict[str, str]:
        return {
            "CLOUD_DATA_DIR": str(self.data_dir),
            "EDGES_RPC_HOST": "127.0.0.1",
            "EDGES_RPC_PORT": str(self.rpc_port),
            "CLOUD_ADMIN_HOST": "127.0.0.1",
            "CLOUD_ADMIN_PORT": str(self.admin_port),
            "CLOUD_LOG_FORMAT": "json",
        }

    def start(self, env: Mapping[str, str] | None = None, *,
              timeout: float = START_DEADLINE_S) -> CloudProc:
        """Start (again: same ports, same data directory) and wait until GET /api/status says
        the server runs. CloudStartError when it exits or does not serve in time; a port
        another process holds (also the killed one's, for a moment after a kill) is dealt with
        as ``spawn_until_serving`` says."""
        failed = self.spawn_until_serving(env, timeout, self._wait_ready_or_exit)
        if failed is not None:
            code, text = failed
            raise CloudStartError(f"edge-cloud serve exited with {code} while starting:\n{text}")
        return self

    def _wait_ready_or_exit(self, timeout: float) -> int | None:
        """None once GET /api/status says the server runs; its exit code if it exits first."""
        proc = self.proc
        assert proc is not None

        def outcome() -> tuple[int | None] | None:
            code = proc.poll()
            if code is not None:
                return (code,)
            try:
                resp = _once(self.admin_port, "GET", "/api/status", timeout=2.0)
                if resp.status == 200 and resp.json().get("server") == "running":
                    return (None,)
            except (NoAnswer, ValueError):
                pass
            return None

        try:
            (code,) = wait_until(outcome, timeout=timeout, what="edge-cloud serve to serve or exit")
        except AssertionError as exc:
            self.kill9()
            raise CloudStartError(f"{exc}:\n{self.stderr_text()}") from None
        return code

    def restart(self, env: Mapping[str, str] | None = None, *,
                timeout: float = START_DEADLINE_S) -> CloudProc:
        """Stop the server if it runs (SIGTERM), then start it on the same ports and store."""
        if self.running:
            self.terminate()
        return self.start(env, timeout=timeout)

    # -- the admin API and the CLI -------------------------------------------------------------

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the running server's admin API; the parsed JSON answer (AssertionError if >= 400)."""
        raw = None if body is None else json.dumps(body).encode()
        try:
            resp = _once(self.admin_port, method, path, raw)
        except NoAnswer:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"edge-cloud serve exited with {self.proc.returncode}:\n"
                                     f"{self.stderr_text()[-4000:]}") from None
            raise
        if resp.status >= 400:
            raise AssertionError(f"{method} {path}: {resp.status} {resp.body!r}")
        return resp.json()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `edge-cloud ARGS` against this cloud's data directory and admin port."""
        proc = subprocess.run([*_CLI_CMD, *args], env=self.environment(), cwd=self.workdir,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        if check and proc.returncode != 0:
            raise CloudCliError(f"edge-cloud {' '.join(args)} exited with {proc.returncode}:\n"
                                f"{proc.stderr}")
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def create_edge(self, name: str, routing_key: str, secret: str) -> dict[str, Any]:
        """`edge-cloud edge create`: the edge's JSON (id, routing_key, secret, created)."""
        return dict(self.cli_json("edge", "create", "--name", name, "--routing-key", routing_key,
                                  "--secret", secret))

    def create_device(self, routing_key: str, name: str, *, token: str | None = None,
                      type_: str | None = None) -> dict[str, Any]:
        """`edge-cloud device create --edge RK`: the device's JSON (id, token, downlinks)."""
        args = ["device", "create", "--edge", routing_key, "--name", name]
        if token is not None:
            args += ["--token", token]
        if type_ is not None:
            args += ["--type", type_]
        return dict(self.cli_json(*args))

    def set_attr(self, device: str, values: Mapping[str, Any], *,
                 routing_key: str | None = None) -> dict[str, Any]:
        """`edge-cloud attr set --device D KEY=JSON...`: the answer (with its downlink number)."""
        args = ["attr", "set", "--device", device]
        if routing_key is not None:
            args += ["--edge", routing_key]
        args += [f"{k}={json.dumps(v)}" for k, v in values.items()]
        return dict(self.cli_json(*args))

    def status(self) -> dict[str, Any]:
        """GET /api/status of the running server."""
        return dict(self.admin("GET", "/api/status"))

    def edge_row(self, routing_key: str) -> dict[str, Any]:
        """The edge's row of the running server's status (connected, applied_events,
        queued_downlinks, stream)."""
        for row in self.status()["edges"]:
            if row["routing_key"] == routing_key:
                return dict(row)
        raise AssertionError(f"no edge {routing_key!r} in the cloud's status")

    def applied_count(self, routing_key: str) -> int:
        """How many events the running cloud applied from the edge (cheap: one counter)."""
        return int(self.edge_row(routing_key)["applied_events"])

    def events(self, routing_key: str) -> list[dict[str, Any]]:
        """Every event the cloud applied from the edge, in apply order: the admin API while the
        server runs, else `edge-cloud events --edge RK --json` (reads the store directly)."""
        if self.running:
            out: list[dict[str, Any]] = []
            while True:
                page = self.admin(
                    "GET", f"/api/events?edge={routing_key}&after={len(out)}&limit=100000")
                if not page:
                    return out
                assert page[0]["apply_index"] == len(out) + 1, "apply indexes not contiguous"
                out.extend(page)
        return self.events_cli(routing_key)

    def events_cli(self, routing_key: str) -> list[dict[str, Any]]:
        """`edge-cloud events --edge RK --json` (works with the server running or stopped)."""
        text = self.cli("events", "--edge", routing_key, "--json").stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_applied(self, routing_key: str, count: int, *, timeout: float) -> None:
        """Wait until the running cloud applied at least `count` events from the edge."""
        wait_until(lambda: self.applied_count(routing_key) >= count, timeout=timeout,
                   what=f"{count} events applied from {routing_key}",
                   show=lambda: self.applied_count(routing_key))


# -- the edge's side of the link -----------------------------------------------------------------


def link_env(cloud: CloudProc, routing_key: str, secret: str, **extra: str) -> dict[str, str]:
    """Environment for an `edge-sync run` (tests.helpers.agent.Agent) linked to this cloud, with
    short reconnect delays (100 ms .. 1 s), a circuit breaker that reopens after 1 s and an
    uplink resent 1 s after a failure or 1 s without an answer, so faults heal quickly.
    ``extra`` overrides any of them."""
    env = {
        "CLOUD_ROUTING_KEY": routing_key,
        "CLOUD_ROUTING_SECRET": secret,
        "CLOUD_RPC_HOST": "127.0.0.1",
        "CLOUD_RPC_PORT": str(cloud.rpc_port),
        "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "100",
        "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "1000",
        "EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S": "1",
        "EDGE_CLOUD_RETRY_INTERVAL_MS": "1000",
        "EDGE_CLOUD_RETRY_ACK_TIMEOUT_MS": "1000",
        "EDGE_CLOUD_BATCH_TIMEOUT_MS": "100",
    }
    env.update(extra)
    return env


SMALL_CLOUD_MESSAGE_BYTES = 8192
"""The gRPC message size ``small_message_link``'s cloud takes at most."""


def small_message_link(procs: Callable[[Any], Any], folder: Path, edge_name: str,
                       routing_key: str, secret: str) -> tuple[CloudProc, Agent]:
    """A cloud that refuses gRPC messages over SMALL_CLOUD_MESSAGE_BYTES and an edge linked to
    it, connected, whose device API takes bodies up to 256 KiB: a post of about 20 KB is an
    event the edge accepts and the cloud refuses as too large (a dead letter). Both processes
    are registered with ``procs`` (the test's fixture) and live in ``folder``."""
    cloud = procs(CloudProc(folder / "cloud", env={
        "EDGES_RPC_MAX_INBOUND_MESSAGE_SIZE": str(SMALL_CLOUD_MESSAGE_BYTES)})).start()
    cloud.create_edge(edge_name, routing_key, secret)
    agent = procs(Agent(folder / "edge", env=link_env(
        cloud, routing_key, secret, EDGE_HTTP_MAX_BODY_BYTES="262144"))).start()
    wait_connected(agent)
    return cloud, agent


def edge_status(agent: Agent) -> dict[str, Any]:
    """GET /api/status of a running edge (link, queue, metrics)."""
    resp = agent.admin("GET", "/api/status")
    assert resp.status == 200, resp.body
    return dict(resp.json())


def link_state(agent: Agent) -> str:
    return str(edge_status(agent)["link"]["state"])


def wait_connected(agent: Agent, *, timeout: float = 30.0) -> None:
    wait_until(lambda: link_state(agent) == "CONNECTED", timeout=timeout, what="the link CONNECTED",
               show=lambda: edge_status(agent)["link"])


def wait_drained(agent: Agent, *, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the edge has nothing pending and no uplink message in flight; its status."""
    def drained() -> dict[str, Any] | None:
        st = edge_status(agent)
        if st["queue"]["pending"] == 0 and st["link"].get("in_flight_messages") == 0:
            return st
        return None

    return dict(wait_until(drained, timeout=timeout, what="the edge's queue drained"))


# -- checking what the cloud applied against the edge's log ---------------------------------------


def by_entity(cloud_events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The cloud's applied events per entity id, in apply order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in cloud_events:
        out.setdefault(e["entity_id"], []).append(e)
    return out


ANSWERED_ACTIONS = frozenset({Action.ATTRIBUTES_REQUEST, Action.RULE_CHAIN_METADATA_REQUEST})
"""The edge's requests: the cloud acknowledges and answers them with downlinks, and never
applies them (edge_sync/cloud/uplink_kinds.py ANSWERED), so they are not in its applied events.
An attribute request exists only when a device read ran ahead of a downlink (timing)."""


def check_delivered(cloud_events: list[dict[str, Any]],
                    edge_events: list[StoredEvent]) -> dict[str, list[dict[str, Any]]]:
    """What the cloud applied (in apply order) is exactly the edge's log minus its dead letters
and its requests (ANSWERED_ACTIONS):

    - apply indexes run 1..N; every applied event carries an edge seq, and no (edge store, seq)
      was applied twice;
    - the applied seqs are the seqs of the edge's events that are not DEAD, none missing, none
      extra; each with the same entity, action and (for telemetry) the same ts and values;
    - per entity, the cloud applied the events in seq order (the edge's acceptance order).

    Returns the cloud's events per entity id, in apply order."""
    assert [e["apply_index"] for e in cloud_events] == list(range(1, len(cloud_events) + 1))
    keys = [(e["store_id"], e["seq"]) for e in cloud_events]
    assert all(seq is not None for _, seq in keys), "an applied event has no edge seq"
    dups = sorted(k for k, n in Counter(keys).items() if n > 1)
    assert dups == [], f"applied more than once: {dups[:10]}"
    stores = {store for store, _ in keys}
    assert len(stores) <= 1, f"events from several edge stores: {stores}"

    expected = {e.seq: e for e in edge_events
                if e.status is not Status.DEAD and e.action not in ANSWERED_ACTIONS}
    got = {e["seq"]: e for e in cloud_events}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert missing == [], (f"{len(missing)} events never reached the cloud: "
                           f"{ {s: str(expected[s].action) for s in missing[:20]} }")
    assert extra == [], f"the cloud applied events the edge does not have: seqs {extra[:20]}"
    for seq, mine in expected.items():
        theirs = got[seq]
        assert (theirs["entity_id"], theirs["action"]) == (str(mine.entity_id), str(mine.action)), \
            f"seq {seq}: cloud has {theirs['entity_id']} {theirs['action']}, edge has " \
            f"{mine.entity_id} {mine.action}"
        if mine.action == "TIMESERIES_UPDATED":
            assert theirs["body"] == {"ts": mine.body["ts"], "values": mine.body["values"]}, seq

    grouped = by_entity(cloud_events)
    for entity, events in grouped.items():
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs), f"{entity}: applied out of seq order"
    return grouped
