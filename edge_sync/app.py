"""The edge agent assembled: opens the store, builds the supervision tree (queue, shards, device
HTTP API, admin API) and exposes the in-process device API. ``edge-sync run`` and the tests and
benchmarks all start the agent through EdgeApp.

Tree (one_for_one at each level; actors are reached through Addresses, so a restarted actor
does not force its neighbours to restart):
    edge
    ├── queue          QueueActor: the single writer of the event log, group commit
    ├── shards         Supervisor(one_for_one) of ShardActor shard-0..N-1 (entity actors)
    ├── downlink       DownlinkActor: applies what the cloud sends   } only with a routing key
    ├── connection     ConnectionActor: the gRPC stream to the cloud }
    ├── device-http    the device HTTP API
    ├── mqtt           the device MQTT API (mqtt.enabled, mqtt.tls.enabled; on by default)
    └── admin-http     status, events, devices, metrics
Children stop in reverse order, so in-flight requests finish before the queue commits its last
group and stops.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, cast

import pykka
from loguru import logger

from edge_sync import agent_gauges
from edge_sync.actors.address import Address
from edge_sync.actors.messages import Crash, RuleChainChanged
from edge_sync.actors.queue_actor import QueueActor, QueuePolicy
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import RuleCounters
from edge_sync.actors.shard import EntityRouter, ShardActor
from edge_sync.api.admin_http import AdminHttpApi
from edge_sync.api.device_http import DeviceHttpApi
from edge_sync.api.device_service import DeviceService
from edge_sync.api.entity_service import EntityService
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common import ids
from edge_sync.common.admin_guard import check_bind
from edge_sync.common.http_host import HttpHost
from edge_sync.common.iso_time import iso_ms
from edge_sync.config import EdgeConfig
from edge_sync.errors import ConfigError, EdgeSyncError
from edge_sync.link.connection import ConnectionActor
from edge_sync.link.downlink_actor import DownlinkActor
from edge_sync.link.state import RequestSync, StatusBoard
from edge_sync.metrics import Metrics
from edge_sync.mqtt.connection import Limits
from edge_sync.mqtt.server import Listener, MqttServer
from edge_sync.mqtt.tls import server_context
from edge_sync.rules.engine import WINDOW_TYPES
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.rules.sandbox import ScriptLimits
from edge_sync.rules.source import ChainSource
from edge_sync.storage.entity_store import TokenCache
from edge_sync.storage.env import LmdbStore
from edge_sync.supervisor import (
    ChildSpec,
    ExitReporter,
    Intensity,
    Restart,
    Strategy,
    Supervisor,
    actor_child,
)

_log = logger.bind(component="app")


def open_store(cfg: EdgeConfig, *, readonly: bool = False) -> LmdbStore:
    """Open the configured store (StorageError / StorageCorrupt / QueueFull on failure)."""
    return LmdbStore(
        cfg.storage.data_dir,
        initial_map_mb=cfg.storage.map_size_initial_mb,
        max_size_mb=cfg.storage.max_size_mb,
        readonly=readonly,
    )


GC_FIRST_GENERATION_THRESHOLD = 10_000
"""Net new container objects between two collections of the youngest generation (Python's
default is 700); see `tune_gc_for_service`."""


def tune_gc_for_service() -> None:
    """Garbage collection for a process that is the agent and nothing else (``edge-sync run``),
    once the agent has started: collect once, freeze what is left, then collect the youngest
    generation after 10,000 net new container objects instead of 700.

    Why: a collection holds the GIL, so every thread waits for it, and a full one walks every
    container object the process holds. Under MQTT load the objects of the messages in flight
    (futures, entries, commands: thousands with 100 publishes in flight per client) crossed
    the default threshold about 200 times a second, and what those collections promoted made
    a full collection come one to two times a second: with 10,000 devices provisioned 30-65
    ms each (up to 400 ms), about 0.9 s of collections per 6.5 s of load. With a threshold of
    10,000 the objects in flight stay below it at that load and no collection runs at all.
    What start-up made (modules, classes, functions, the supervision tree: about 56,000
    objects, alive as long as the process) is frozen: left out of every later collection.
    Figures: docs/benchmarks-mqtt.md ("Garbage collection"). The cost: garbage cycles made
    before the freeze are collected first (none is frozen), and up to 10,000 young objects
    wait for a collection (a few MiB at most).

    Not done by EdgeApp itself: both settings belong to the whole process. An application
    that embeds the agent (or a test process that starts one agent after another) keeps
    Python's defaults unless it chooses this; a freeze there would also keep for ever what an
    earlier agent of the same process left for the collector."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_GENERATION_THRESHOLD, second, third)
    _log.bind(frozen=gc.get_freeze_count(), threshold=gc.get_threshold()).debug(
        "garbage collection tuned for the agent's process: {} objects frozen",
        gc.get_freeze_count())


class EdgeApp:
    def __init__(self, cfg: EdgeConfig, *, clock: Clock = SYSTEM_CLOCK,
                 link_board: StatusBoard | None = None) -> None:
        refusal = check_bind("admin", cfg.admin.host, cfg.admin.token)
        if refusal is not None:
            raise ConfigError(refusal)
        self.cfg = cfg
        self.clock = clock
        # a certificate that cannot be loaded is a configuration error, found before anything runs
        self._mqtt_tls = server_context(cfg.mqtt.tls) if cfg.mqtt.tls.enabled else None
        self.metrics = Metrics()
        self.store = open_store(cfg)
        self.store_open = True
        self.ports: dict[str, int] = {}
        intensity = Intensity(cfg.supervisor.max_restarts, cfg.supervisor.within_s)
        restarted = self._on_restart(agent_gauges.restarts(self.metrics))
        self.queue = Address("queue", lambda: self._actor_ref("queue"))
        self.connection = Address("connection", lambda: self._actor_ref("connection"))
        self.downlinks = Address("downlink", lambda: self._actor_ref("downlink"))
        self.link_board = link_board if link_board is not None else StatusBoard()
        link_enabled = bool(cfg.cloud.routing_key)
        shard_names = [f"shard-{i}" for i in range(cfg.actors.shards)]
        self._shard_addresses = [Address(n, functools.partial(self._actor_ref, "shards", n))
                                 for n in shard_names]
        self.router = EntityRouter(self._shard_addresses)
        self.tokens = TokenCache()
        self._mqtt_paused = self.metrics.counter(
            "edge_sync_mqtt_reads_paused_total",
            "times an MQTT connection was not read because mqtt.max_inflight_per_client "
            "publishes awaited their commit")
        self.service = DeviceService(self.store, self.router, tokens=self.tokens, clock=clock,
                                     metrics=self.metrics, type_cast=cfg.devices.type_cast)
        # the rule chain in force: rules.file, else the cloud's root chain, else none
        self.rules = RulesRuntime(self._script_limits())
        self.rule_counters = RuleCounters(self.rules, self.metrics)
        self.chain_source = ChainSource(self.rules, self.store, cfg.rules.file, clock=clock)
        self.rule_counters.refusal_outstanding(self.chain_source.outstanding_source)
        try:
            self.chain_source.load()  # ConfigError: rules.file refused, nothing to fall back on
        except BaseException:
            self.store_open = False
            self.store.close()
            raise
        policy = QueuePolicy(
            group_max_events=cfg.queue.group_commit_max_events,
            full_policy=cfg.storage.full_policy,
            retention_ms=int(cfg.storage.retention_hours * 3600 * 1000),
            purge_interval_s=cfg.storage.purge_interval_s,
            refusal_log_interval_s=cfg.storage.refusal_log_interval_s,
        )
        shards = [
            ChildSpec(
                name,
                actor_child(ShardActor, i, self.queue,
                            passivate_after_s=cfg.actors.passivate_after_s, store=self.store,
                            shards=len(shard_names), clock=clock, metrics=self.metrics,
                            rules=self._shard_rules, address=self._shard_addresses[i]),
            )
            for i, name in enumerate(shard_names)
        ]
        self.device_api = DeviceHttpApi(
            self.service,
            max_body_bytes=cfg.http.max_body_bytes,
            request_timeout_s=cfg.http.request_timeout_s,
            metrics=self.metrics,
            link_connected=self._link_connected if link_enabled else None,
        )
        self.entities = EntityService(self.router, clock=clock)
        self.admin_api = AdminHttpApi(
            self.store, self.service, self.metrics,
            entities=self.entities,
            tell_queue=self.queue.tell,
            request_sync=self._request_sync if link_enabled else None,
            link_status=(lambda: dict(self.link_board.value)) if link_enabled else None,
            request_timeout_s=cfg.http.request_timeout_s, clock=clock,
            crash=self._crash if cfg.admin.fault_injection else None,
            token=cfg.admin.token, readiness=self.readiness,
            rules_status=self._rules_status,
            health=cfg.health, clock_skew_warn_s=cfg.cloud.clock_skew_warn_s,
        )
        self.supervisor = Supervisor(
            "edge",
            [
                ChildSpec("queue", actor_child(
                    QueueActor, self.store, policy=policy, metrics=self.metrics, clock=clock,
                    on_committed=self.connection.tell if link_enabled else None,
                    tokens=self.tokens,
                    local_retention_s=max(1, int(cfg.rules.local_retention_hours * 3600)))),
                ChildSpec("shards", lambda report: Supervisor(
                    "shards", shards, strategy=Strategy.ONE_FOR_ONE, intensity=intensity,
                    on_restart=restarted).start(report), restart=Restart.PERMANENT, shutdown_timeout=30.0),
                *([
                    ChildSpec("downlink", actor_child(
                        DownlinkActor, self.store, self.connection, metrics=self.metrics,
                        tokens=self.tokens, clock=clock, notify=self.router.tell,
                        request_metadata=self.entities.request_metadata,
                        rules_changed=self._rules_changed,
                        tell_queue=self.queue.tell)),
                    ChildSpec("connection", actor_child(
                        ConnectionActor, cfg.cloud, self.store, self.queue, self.downlinks,
                        metrics=self.metrics, board=self.link_board, clock=clock)),
                ] if link_enabled else []),
                ChildSpec("device-http", self._http_starter(
                    "device-http", self.device_api.make_app, cfg.http.host, cfg.http.port),
                    shutdown_timeout=15.0),
                *([ChildSpec("mqtt", self._mqtt_starter, shutdown_timeout=15.0)]
                  if cfg.mqtt.serving else []),
                ChildSpec("admin-http", self._http_starter(
                    "admin-http", self.admin_api.make_app, cfg.admin.host, cfg.admin.port)),
            ],
            strategy=Strategy.ONE_FOR_ONE,
            intensity=intensity,
            on_restart=restarted,
        )
        agent_gauges.register(self.metrics, self.store, now_ms=clock.now_ms,
                              link=(lambda: self.link_board.value) if link_enabled else None)
        if cfg.mqtt.serving:
            agent_gauges.mqtt(self.metrics, self._mqtt_figure)

    def _shard_rules(self, index: int) -> ShardRules:
        """A shard's own view of the chain in force (made per shard incarnation)."""
        clock = self.clock
        return ShardRules(self.rule_counters, self.store, now_ms=clock.now_ms,
                          new_id=lambda: str(ids.time_based(clock.now_ms())),
                          limits=self._script_limits(), shard=index)

    def _rules_changed(self) -> None:
        """A downlink changed a rule chain: the chain in force is read again; when another one
        went in force, every shard binds its entities' windows to it now (a window whose node
        is not in it is warned about at once, not only when it is dropped); when the chain was
        cleared, every shard tallies its entities' windows again (they wait on disk)."""
        before = self.rules.current()
        self.chain_source.cloud_changed()
        after = self.rules.current()
        if after is not before:
            for shard in self._shard_addresses:
                shard.tell(RuleChainChanged())

    def _rules_status(self) -> dict[str, Any]:
        """The chain in force, its counts and health (``ChainSource.status``), with each window
        node's open windows and the messages they hold (``open_windows``, ``held_messages``,
        summed over the devices), windows of nodes not in the chain (``orphaned_windows``:
        dropped at their deadline), or, with no chain in force, every open window
        (``waiting_windows``: they wait on disk for a chain), and the windows dropped at their
        deadline and the messages lost with them (``dropped_windows``, ``dropped_messages``),
        and the scripts blocked on any shard (``blocked_scripts``: node, chain, since, until,
        the shards, the errors counted and the last one; read from the shards' engines now,
        ``ScriptBlocks.snapshot``), each a reason of the rules' health (degraded)."""
        out = self.chain_source.status()
        tally = self.rule_counters.windows
        held = tally.snapshot()
        for node in out["nodes"]:
            if node["type"] in WINDOW_TYPES:
                counts = held.pop(node["node"], {})
                node["open_windows"] = counts.get("open_windows", 0)
                node["held_messages"] = counts.get("held_messages", 0)
        left = [{"node": name, **counts} for name, counts in sorted(held.items())]
        waiting = out["chain"] is None  # expire_due does nothing without a chain: they wait
        out["orphaned_windows"] = [] if waiting else left
        out["waiting_windows"] = left if waiting else []
        out["dropped_windows"] = dict(tally.dropped_windows)
        out["dropped_messages"] = dict(tally.dropped_messages)
        out["blocked_scripts"] = [
            {**block, "since": iso_ms(block["since_ms"]), "until": iso_ms(block["until_ms"])}
            for block in self.rule_counters.blocks.snapshot()]
        _blocks_degrade(out)
        return out

    def _script_limits(self) -> ScriptLimits:
        """``rules.script_timeout_ms``, ``rules.script_memory_mb`` and the blocklist's
        ``rules.script_max_errors`` / ``rules.script_block_duration_s``: what rule scripts run
        (and are compiled at validation) under."""
        return ScriptLimits.of_config(self.cfg.rules)

    def _request_sync(self, full: bool, reason: str) -> None:
        """The admin API's ``POST /api/sync``: the link asks the cloud for a sync."""
        self.connection.tell(RequestSync(full=full, reason=reason))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EdgeApp:
        self.supervisor.start()
        _log.bind(
            data_dir=str(self.cfg.storage.data_dir),
            http_port=self.ports.get("device-http"),
            mqtt_port=self.ports.get("mqtt"),
            mqtt_tls_port=self.ports.get("mqtt-tls"),
            admin_port=self.ports.get("admin-http"),
        ).info("edge-sync started")
        self._warn_plain_mqtt_beside_client_ca()
        return self

    def _warn_plain_mqtt_beside_client_ca(self) -> None:
        """One WARNING at start when the TLS listener requires client certificates
        (``mqtt.tls.client_ca``) while the plain listener is on: it takes an access token
        without any certificate, so the requirement is not one unless that listener is off."""
        mqtt = self.cfg.mqtt
        if not (mqtt.enabled and mqtt.tls.enabled and mqtt.tls.client_ca is not None):
            return
        _log.bind(mqtt_port=self.ports.get("mqtt"), mqtt_tls_port=self.ports.get("mqtt-tls")).warning(
            "mqtt.tls.client_ca requires a client certificate on the MQTT TLS listener (port {}), "
            "but the plain MQTT listener ({}:{}) is on too and accepts a device's access token "
            "without a certificate; turn it off with EDGE_MQTT_ENABLED=false (mqtt.enabled: "
            "false) unless devices are meant to connect without one",
            self.ports.get("mqtt-tls"), mqtt.host, self.ports.get("mqtt"))

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop the tree in reverse order (everything accepted is on disk), close the store."""
        for address in self._addresses():
            address.stopping()
        self.supervisor.stop(timeout=timeout)
        self.store_open = False
        self.store.close()
        _log.info("edge-sync stopped")

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the tree stops: 0 after stop(), 3 when the supervisor gave up."""
        return self.supervisor.wait(timeout)

    @property
    def http_port(self) -> int:
        return self.ports["device-http"]

    @property
    def mqtt_port(self) -> int:
        return self.ports["mqtt"]

    @property
    def mqtt_tls_port(self) -> int:
        return self.ports["mqtt-tls"]

    @property
    def mqtt_server(self) -> MqttServer | None:
        """The MQTT server's current incarnation (None while it is not running)."""
        return cast("MqttServer | None", self.supervisor.child("mqtt"))

    @property
    def admin_port(self) -> int:
        return self.ports["admin-http"]

    # -- wiring ------------------------------------------------------------------------------

    def _addresses(self) -> list[Address]:
        return [self.queue, self.connection, self.downlinks, *self._shard_addresses]

    def _on_restart(self, count: Callable[[str], None]) -> Callable[[str], None]:
        """The supervisors' restart hook: counts the restart (``count``), and tells the
        restarted actor's Address (every shard's, when their supervisor restarted), so that its
        "back" line comes now rather than with the next message."""

        def restarted(child_id: str) -> None:
            count(child_id)
            for address in self._addresses():
                if address.name == child_id or (child_id == "shards"
                                                 and address in self._shard_addresses):
                    address.started()

        return restarted

    def _actor_ref(self, *path: str) -> pykka.ActorRef[Any] | None:
        node: Any = self.supervisor
        for part in path:
            node = node.child(part) if node is not None else None
        return cast("pykka.ActorRef[Any] | None", getattr(node, "ref", None))

    def _link_connected(self) -> bool:
        return self.link_board.value.get("state") == "CONNECTED"

    def readiness(self) -> dict[str, bool]:
        """The admin API's /readyz: the store is open, each supervised actor runs, and each API
        (device HTTP, MQTT when on, admin HTTP) listens."""
        paths = [("queue",), *(("shards", f"shard-{i}") for i in range(self.cfg.actors.shards))]
        if self.cfg.cloud.routing_key:
            paths += [("downlink",), ("connection",)]
        out: dict[str, bool] = {"store": self.store_open}
        for path in paths:
            ref = self._actor_ref(*path)
            out[path[-1]] = ref is not None and ref.is_alive()
        for api in ("device-http", *(("mqtt",) if self.cfg.mqtt.serving else ()), "admin-http"):
            out[api] = self.supervisor.child(api) is not None
        return out

    def _crash(self, target: str) -> bool:
        """Fault injection: tell the named actor (queue, shard-N) to raise."""
        path = ("queue",) if target == "queue" else ("shards", target)
        ref = self._actor_ref(*path)
        if ref is None or not ref.is_alive():
            return False
        ref.tell(Crash(f"injected through the admin API into {target}"))
        return True

    def _http_starter(self, name: str, make_app: Any, host: str, port: int) -> Any:
        def start(report: ExitReporter) -> HttpHost:
            # A restarted server binds the port its first incarnation got (matters for port 0).
            host_ = HttpHost(name, make_app, host=host, port=self.ports.get(name, port),
                             report_exit=report).start()
            self.ports[name] = host_.port
            return host_

        return start

    def _mqtt_starter(self, report: ExitReporter) -> MqttServer:
        # A restarted server binds the ports its first incarnation got; kept sessions are lost.
        mqtt = self.cfg.mqtt
        plain = Listener(mqtt.host, self.ports.get("mqtt", mqtt.port)) if mqtt.enabled else None
        tls = (Listener(mqtt.tls.host, self.ports.get("mqtt-tls", mqtt.tls.port), self._mqtt_tls)
               if mqtt.tls.enabled else None)
        limits = Limits(max_message_bytes=mqtt.max_message_bytes,
                        commit_timeout_s=self.cfg.http.request_timeout_s,
                        connect_timeout_s=mqtt.connect_timeout_s,
                        max_inflight=mqtt.max_inflight_per_client)
        server = MqttServer(
            self.service, plain=plain, tls=tls, limits=limits, max_sessions=mqtt.max_sessions,
            session_expiry_s=mqtt.session_expiry_s,
            max_unacked_per_session=mqtt.max_unacked_per_session,
            link_connected=self._link_connected if self.cfg.cloud.routing_key else None,
            on_pause=self._mqtt_paused.inc, metrics=self.metrics, report_exit=report,
        )
        try:
            server.start()
        except EdgeSyncError as exc:  # on by default: another broker may hold the port
            raise EdgeSyncError(
                f"{exc} (another MQTT broker on this host? mqtt.port / EDGE_MQTT_PORT and "
                f"mqtt.tls.port / EDGE_MQTT_TLS_PORT choose the ports, EDGE_MQTT_ENABLED=false "
                f"turns the plain listener off)") from exc
        if plain is not None:
            self.ports["mqtt"] = server.port
        if tls is not None:
            self.ports["mqtt-tls"] = server.tls_port
        return server

    def _mqtt_figure(self, read: Callable[[MqttServer], int]) -> float:
        server = self.mqtt_server
        return float(read(server)) if server is not None else 0.0


def _blocks_degrade(rules: dict[str, Any]) -> None:
    """A script blocked on any shard makes the rules' health degraded, one reason each: its
    messages go by ``Failure`` without running it until the block ends."""
    blocks = rules["blocked_scripts"]
    if not blocks:
        return
    health = rules.setdefault("health", {"level": "healthy", "reasons": []})
    if health.get("level") in (None, "healthy"):
        health["level"] = "degraded"
    health["reasons"] = [*health.get("reasons", []), *(
        f"the script of rule node {b['node']} of chain '{b['chain']}' is blocked until "
        f"{b['until']} after {b['errors']} timeouts or memory blow-ups (last: "
        f"{b['last_error']}): its messages go by Failure" for b in blocks)]
