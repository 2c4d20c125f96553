"""The ``edge-sync`` command: run the agent, show its status, events, server-side RPC requests
and entity graph, provision and delete devices, change the graph (assets, relations, attribute
and timeseries keys), acknowledge or clear alarms, ask for a sync, check a rule chain file; and
the operator's commands (docs/operations.md): replay dead letters, verify (and repair) the
store, watch the status with the drain rate, check a configuration.

Read-only commands (status, events, rpc list, entities, entity) work with the agent stopped:
they open the store with LMDB read transactions. Changes go through the running agent's admin
API, so they are written by its actors in order. Exit codes (edge_sync.cli.common): 0 ok; 1 bad
configuration or a refused request; 2 usage; 3 the supervisor gave up; 4 storage unusable; 5
the running agent could not be reached; 6 conflict (a name or token is taken); 7 not found
(no such entity, relation or alarm); 8 ``verify`` found problems (after ``--repair``: problems
it could not fix).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import urllib.parse
import uuid
from itertools import islice
from typing import Any

from loguru import logger

from edge_sync.cli.common import (
    EXIT_CONFIG,
    EXIT_GAVE_UP,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    REFUSED_CREDENTIALS,
    AdminUnreachable,
    admin_call,
    admin_host,
    config_option,
    credentials_refused,
    exit_code_for_refusal,
    fail,
    install_stop_handlers,
    int_in,
    print_json,
    reader_gone,
    run_until_signal,
)
from edge_sync.clock import SYSTEM_CLOCK
from edge_sync.config import EdgeConfig, load_edge_config
from edge_sync.devices.rpc import RpcStatus, by_status
from edge_sync.errors import (
    BadRequest,
    ConfigError,
    EdgeSyncError,
    NotFound,
    StorageCorrupt,
    StorageError,
)
from edge_sync.logsetup import configure_logging
from edge_sync.status import collect_status
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Status
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.validators import INT64_MAX, UINT64_MAX


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "rules":  # a file only: no configuration, no store, no agent
        try:
            return _rules_check(args)
        except BrokenPipeError:
            return reader_gone()
    if args.command == "config":  # every error at once: not the loader's first one
        try:
            return _config_check(args)
        except BrokenPipeError:
            return reader_gone()
    try:
        cfg = load_edge_config(args.config)
    except ConfigError as exc:
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    handler = {"run": _run, "status": _status, "events": _events, "device": _device,
               "rpc": _rpc, "asset": _asset, "relation": _relation, "attributes": _attributes,
               "timeseries": _timeseries, "alarm": _alarm, "entities": _entities,
               "apply-log": _apply_log,
               "entity": _entity, "sync": _sync, "replay": _replay,
               "verify": _verify}[args.command]
    try:
        return int(handler(cfg, args))
    except BrokenPipeError:
        return reader_gone()


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-sync`` command line. ``--config`` is accepted before and after the subcommand
    (``edge-sync run --config F`` and ``edge-sync --config F run``); after it wins."""
    p = argparse.ArgumentParser(prog="edge-sync", description="edge-to-cloud sync agent")
    config = config_option(p, "$EDGE_CONFIG or the packaged conf/edge.yml")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[config],
                   help="run the agent in the foreground (SIGTERM/SIGINT stop it)")
    st = sub.add_parser("status", parents=[config],
                        help="connection, queue depth, dead letters")
    st.add_argument("--json", action="store_true")
    st.add_argument("--watch", action="store_true",
                    help="refresh until Ctrl-C, with the drain rate and the time to empty")
    st.add_argument("--interval", type=float, default=2.0, metavar="S",
                    help="--watch: seconds between refreshes (default 2)")
    st.add_argument("--count", type=int_in(0, INT64_MAX), default=0, metavar="N",
                    help="--watch: stop after N refreshes (default: until Ctrl-C)")
    ev = sub.add_parser("events", parents=[config],
                        help="the cloud event log, oldest first")
    ev.add_argument("--status", choices=["pending", "deployed", "dead", "all"], default="all")
    ev.add_argument("--entity", type=uuid.UUID, default=None)
    ev.add_argument("--after-seq", type=int_in(0, INT64_MAX), default=0)
    ev.add_argument("--limit", type=int_in(0, INT64_MAX), default=100)
    ev.add_argument("--json", action="store_true")
    dev = sub.add_parser("device", parents=[config], help="devices on the edge")
    dsub = dev.add_subparsers(dest="device_command", required=True)
    create = dsub.add_parser("create", parents=[config],
                             help="provision a device through the running agent")
    create.add_argument("--name", required=True)
    create.add_argument("--type", default="default")
    create.add_argument("--token", default=None)
    create.add_argument("--label", default="")
    create.add_argument("--gateway", action="store_true",
                        help="the device may speak the MQTT gateway API for other devices")
    create.add_argument("--json", action="store_true")
    ddel = dsub.add_parser("delete", parents=[config],
                           help="delete a device (its token stops working at once)")
    ddel.add_argument("id", type=uuid.UUID)
    ddel.add_argument("--json", action="store_true")
    _graph_commands(sub, config)
    rpc = sub.add_parser("rpc", parents=[config], help="server-side RPC requests to devices")
    rsub = rpc.add_subparsers(dest="rpc_command", required=True)
    rlist = rsub.add_parser("list", parents=[config],
                            help="the requests the edge holds, per device in arrival order")
    rlist.add_argument("--device", type=uuid.UUID, default=None)
    rlist.add_argument("--status", type=str.upper, default=None,
                       choices=[s.value for s in RpcStatus])
    rlist.add_argument("--json", action="store_true")
    _operator_commands(sub, config)
    # --config like every command (README): a file check reads only its rules.script_* limits
    rules = sub.add_parser("rules", parents=[config], help="ThingsBoard rule chains")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True)
    rcheck = rules_sub.add_parser(
        "check", parents=[config],
        help="validate a rule chain file (export or synced JSON) without loading it; with "
             "--config, its scripts are compiled under that configuration's rules limits")
    rcheck.add_argument("file", help="a ThingsBoard rule chain export, or a JSON array of the "
                                     "RULE_CHAIN and RULE_CHAIN_METADATA objects")
    rcheck.add_argument("--json", action="store_true")
    return p


def _graph_commands(sub: Any, config: argparse.ArgumentParser) -> None:
    """The entity graph's subcommands: asset, relation, attributes, timeseries, alarm,
    entities, entity, sync."""
    asset = sub.add_parser("asset", parents=[config], help="assets made on the edge")
    asub = asset.add_subparsers(dest="asset_command", required=True)
    for name, helptext in (("create", "create an asset"), ("update", "change an asset")):
        cmd = asub.add_parser(name, parents=[config], help=helptext)
        if name == "update":
            cmd.add_argument("id", type=uuid.UUID)
        cmd.add_argument("--name", required=name == "create")
        cmd.add_argument("--type", default=None, help="its asset profile's name")
        cmd.add_argument("--label", default=None)
        cmd.add_argument("--info", type=_json_arg, default=None, metavar="JSON",
                         help="additionalInfo, a JSON value")
        cmd.add_argument("--json", action="store_true")
    adel = asub.add_parser("delete", parents=[config],
                           help="delete an asset with its relations and dependants")
    adel.add_argument("id", type=uuid.UUID)
    adel.add_argument("--json", action="store_true")
    rel = sub.add_parser("relation", parents=[config], help="relations between entities")
    rsub = rel.add_subparsers(dest="relation_command", required=True)
    radd = rsub.add_parser("add", parents=[config], help="add or update a relation")
    rdel = rsub.add_parser("delete", parents=[config],
                           help="delete a relation, or --all relations of an entity")
    for cmd, required in ((radd, True), (rdel, False)):
        cmd.add_argument("--from", dest="src", type=uuid.UUID, required=required)
        cmd.add_argument("--to", dest="dst", type=uuid.UUID, required=required)
        cmd.add_argument("--type", dest="rel_type", required=required, help="e.g. Contains")
        cmd.add_argument("--json", action="store_true")
    radd.add_argument("--info", type=_json_arg, default=None, metavar="JSON",
                      help="additionalInfo, a JSON value")
    rdel.add_argument("--all", dest="all_of", type=uuid.UUID, default=None, metavar="ID",
                      help="every relation from or to this entity")
    attrs = sub.add_parser("attributes", parents=[config], help="attributes of an entity")
    atsub = attrs.add_subparsers(dest="attributes_command", required=True)
    atdel = atsub.add_parser("delete", parents=[config], help="delete attribute keys")
    atdel.add_argument("id", type=uuid.UUID)
    atdel.add_argument("--scope", required=True, type=str.upper,
                       choices=["CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE",
                                "CLIENT", "SERVER", "SHARED"])
    atdel.add_argument("keys", nargs="+", metavar="KEY")
    atdel.add_argument("--json", action="store_true")
    ts = sub.add_parser("timeseries", parents=[config], help="timeseries of an entity")
    tsub = ts.add_subparsers(dest="timeseries_command", required=True)
    tdel = tsub.add_parser("delete", parents=[config],
                           help="delete timeseries keys (the latest values the edge holds)")
    tdel.add_argument("id", type=uuid.UUID)
    tdel.add_argument("keys", nargs="+", metavar="KEY")
    tdel.add_argument("--json", action="store_true")
    alarm = sub.add_parser("alarm", parents=[config], help="alarms raised on the edge")
    alsub = alarm.add_subparsers(dest="alarm_command", required=True)
    for name in ("ack", "clear"):
        cmd = alsub.add_parser(name, parents=[config],
                               help=f"{'acknowledge' if name == 'ack' else 'clear'} an alarm")
        cmd.add_argument("id", type=uuid.UUID)
        cmd.add_argument("--device", type=uuid.UUID, default=None,
                         help="its device (default: from the alarm's last event)")
        cmd.add_argument("--type", dest="alarm_type", default=None,
                         help="its type (default: from the alarm's last event)")
        cmd.add_argument("--json", action="store_true")
    ents = sub.add_parser("entities", parents=[config],
                          help="the entities the edge holds (works with the agent stopped)")
    ents.add_argument("--type", dest="entity_type", type=str.upper, default=None)
    ents.add_argument("--name", default=None)
    ents.add_argument("--json", action="store_true")
    ent = sub.add_parser("entity", parents=[config],
                         help="one entity: JSON, relations, attributes, latest values")
    ent.add_argument("id", type=uuid.UUID)
    ent.add_argument("--json", action="store_true")
    alog = sub.add_parser("apply-log", parents=[config],
                          help="what the edge's graph applied, oldest first (works with the "
                               "agent stopped)")
    alog.add_argument("--after", type=int_in(0, INT64_MAX), default=0,
                      help="entries after this index")
    alog.add_argument("--limit", type=int_in(0, INT64_MAX), default=0,
                      help="at most this many (0: all)")
    alog.add_argument("--json", action="store_true")
    sync = sub.add_parser("sync", parents=[config], help="ask the running agent for a sync")
    sync.add_argument("--full", action="store_true",
                      help="a full sync: the cloud sends everything assigned to the edge")


def _operator_commands(sub: Any, config: argparse.ArgumentParser) -> None:
    """The operator's commands: replay, verify, config check (status --watch is on status)."""
    rp = sub.add_parser("replay", parents=[config],
                        help="re-queue dead letters (the agent running or not)")
    rp.add_argument("--dead", action="store_true", help="replay dead letters (required)")
    rp.add_argument("--seq", dest="seqs", type=int_in(1, UINT64_MAX), nargs="+",
                    action="extend", default=None, metavar="N", help="these seqs")
    rp.add_argument("--entity", type=uuid.UUID, default=None, metavar="ID",
                    help="every dead letter of this entity")
    rp.add_argument("--all", action="store_true", help="every dead letter")
    rp.add_argument("--json", action="store_true")
    vf = sub.add_parser("verify", parents=[config],
                        help="audit the store's integrity (read-only unless --repair)")
    vf.add_argument("--repair", action="store_true",
                    help="rebuild what the log and records allow (the agent must be stopped)")
    vf.add_argument("--json", action="store_true")
    cf = sub.add_parser("config", parents=[config], help="the agent's configuration")
    cf_sub = cf.add_subparsers(dest="config_command", required=True)
    cc = cf_sub.add_parser("check", parents=[config],
                           help="the effective configuration (secrets masked), or every error")
    cc.add_argument("--json", action="store_true")


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc


# -- run ---------------------------------------------------------------------------------------


def _run(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    from edge_sync.app import EdgeApp, tune_gc_for_service
    from edge_sync.service_notify import ServiceNotifier

    configure_logging(cfg.log, component="edge")
    _raise_open_files_limit()
    notifier = ServiceNotifier.from_environ()  # systemd's Type=notify; a no-op elsewhere
    try:
        app = EdgeApp(cfg, link_board=notifier.link_board())
    except ConfigError as exc:
        logger.error("refusing to start: {}", exc)
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    except StorageError as exc:
        logger.bind(data_dir=str(cfg.storage.data_dir)).error("storage unusable: {}", exc)
        return fail(f"storage unusable: {exc}", EXIT_STORAGE)
    requested = install_stop_handlers()  # a SIGTERM while starting is a clean stop too
    try:
        app.start()
    except EdgeSyncError as exc:
        logger.error("start-up failed: {}", exc)
        app.store.close()
        return fail(f"start-up failed: {exc}", EXIT_CONFIG)
    tune_gc_for_service()  # this process is the agent's alone (not in EdgeApp: see there)
    notifier.ready(f"serving: device API port {app.http_port}, admin API port {app.admin_port}")
    notifier.start_watchdog(app.supervisor.healthy)

    def stop() -> None:
        notifier.stopping("stopping" if app.wait(0) is None else
                          "supervisor gave up (restart intensity exceeded); exiting with code 3")
        app.stop()

    run_until_signal(lambda timeout: app.wait(timeout) is not None, stop, requested=requested)
    code = app.wait(0)
    if code == EXIT_GAVE_UP:
        logger.error("supervisor gave up (restart intensity exceeded); exiting with code 3")
        return EXIT_GAVE_UP
    return EXIT_OK


def _raise_open_files_limit(wanted: int = 65536) -> None:
    """Devices long-polling hold a connection each: raise the soft limit on open files towards
    the hard one (a service manager's default soft limit, often 1024, would cap them)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            logger.bind(soft=soft, now=target).info(
                "open files limit raised from {} to {} (one per waiting device)", soft, target)
    except (ValueError, OSError) as exc:
        logger.warning("open files limit left as it is: {}", exc)


# -- read-only views ---------------------------------------------------------------------------


def _open_readonly(cfg: EdgeConfig) -> Any:
    from edge_sync.app import open_store

    return open_store(cfg, readonly=True)


def _status(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    if args.watch:
        return _status_watch(cfg, args)
    try:
        status = _collect(cfg)
    except AgentAnswered as exc:
        return fail(str(exc), exc.code)
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    if args.json:
        print_json(status)
        return EXIT_OK
    print(_status_text(status))
    return EXIT_OK


class AgentAnswered(EdgeSyncError):
    """The agent's admin API answered ``GET /api/status`` with an error: it runs (or something
    else listens on its port), so its status is not the store's. ``code``: the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _refusal(cfg: EdgeConfig, code: int, out: Any, refused: str) -> str:
    """The error line for an admin API answer ``code``: for 401/403 the agent runs and refused
    this command's token, and the line says what to set."""
    if code in REFUSED_CREDENTIALS:
        return f"{refused}: " + credentials_refused("the agent", cfg.admin, "EDGE_ADMIN_TOKEN",
                                                     code, out)
    message = out.get("message", out) if isinstance(out, dict) else out
    return f"{refused} ({code}): {message}"


def _collect(cfg: EdgeConfig) -> dict[str, Any]:
    """The running agent's status (its admin API), else the store's (read-only). Only an admin
    API that cannot be reached means a stopped agent: an error answer raises AgentAnswered (for
    401/403: the agent runs and refused the token, exit 1), and the store is not read."""
    try:
        code, status = admin_call(cfg.admin, "GET", "/api/status", timeout=3)
        running = True
    except AdminUnreachable:
        running = False
    if running and code in REFUSED_CREDENTIALS:
        raise AgentAnswered(credentials_refused("the agent", cfg.admin, "EDGE_ADMIN_TOKEN", code,
                                                status), EXIT_CONFIG)
    if running and (code != 200 or not isinstance(status, dict)):
        message = status.get("message", status) if isinstance(status, dict) else status
        raise AgentAnswered(
            f"the agent's admin API at {admin_host(cfg.admin)}:{cfg.admin.port} answered "
            f"GET /api/status with {code}: {message}", exit_code_for_refusal(code))
    if not running:
        store = _open_readonly(cfg)
        try:
            status = collect_status(store, now_ms=SYSTEM_CLOCK.now_ms(), health=cfg.health,
                                    clock_skew_warn_s=cfg.cloud.clock_skew_warn_s)
            status["rules"] = _stopped_rules(cfg, store)
        finally:
            store.close()
        status["agent"] = "not running"
    else:
        status["agent"] = "running"
    return dict(status)


def _stopped_rules(cfg: EdgeConfig, store: LmdbStore) -> dict[str, Any]:
    """With the agent stopped: which chain its start would put in force (``at_start``) and the
    chains kept in the store from each source (``kept``: what stays in force when the source's
    chain is refused at start; rules/source.py)."""
    from edge_sync.common.iso_time import iso_ms
    from edge_sync.storage.rule_chains import CLOUD, FILE, RuleChainStore

    kept_store, kept, problems = RuleChainStore(store), [], []
    with store.read() as txn:
        for kind in (FILE, CLOUD):
            try:
                chain = kept_store.get(txn, kind)
            except StorageCorrupt as exc:  # the status still answers; the agent says the same
                problems.append(str(exc))
                continue
            if chain is not None:
                kept.append({"source": chain.source, "name": chain.name,
                             "version": chain.version, "digest": chain.digest,
                             "since_ms": chain.since_ms, "since": iso_ms(chain.since_ms)})
    if cfg.rules.file is not None:
        at_start = (f"rules.file {cfg.rules.file} is loaded; if it is refused, the chain kept "
                    "from the file goes in force (none kept: the agent does not start)")
    else:
        at_start = ("the cloud's root rule chain in the store; if it is refused, the chain kept "
                    "from the cloud goes in force (none kept: no chain)")
    return {"chain": None, "at_start": at_start, "kept": kept, "problems": problems}


def _status_watch(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    """``status --watch``: a block per refresh (the screen cleared first on a terminal), with
    the drain rate over the last minute of refreshes; Ctrl-C ends it with 0."""
    import time

    from edge_sync.cli.drain import DrainMeter

    if args.interval <= 0 or args.count < 0:
        return fail("--interval must be above 0 and --count 0 or more", EXIT_USAGE)
    meter = DrainMeter(window_s=max(60.0, 3 * args.interval))
    tty = sys.stdout.isatty()
    done = 0
    try:
        while True:
            try:
                status = _collect(cfg)
            except AgentAnswered as exc:
                return fail(str(exc), exc.code)
            except StorageError as exc:
                return fail(str(exc), EXIT_STORAGE)
            drain = meter.add_status(status)
            if args.json:
                print_json({**status, "drain": drain.as_json()})
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                block = f"{_status_text(status)}\n{drain.text()}\n(refreshed {stamp}, every " \
                        f"{args.interval:g}s; Ctrl-C to stop)"
                print(("\033[H\033[2J" if tty else "") + block + ("" if tty else "\n"),
                      flush=True)
            done += 1
            if args.count and done >= args.count:
                return EXIT_OK
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _status_text(status: dict[str, Any]) -> str:
    q = status["queue"]
    link = status["link"]
    lines = [
        f"agent:        {status['agent']}",
        f"link:         {link.get('state')}"
        + (f" (circuit breaker {link['breaker']})" if link.get("breaker") else "")
        + (f" - {link['note']}" if link.get("note") else ""),
        f"health:       {status['health']}" + _rules_health(status),
        f"pending:      {q['pending']} (high {q['pending_high']}, normal {q['pending_normal']})",
        f"deployed:     {q['deployed']}",
        f"dead letters: {q['dead']}",
        f"evicted:      {q['evicted']}",
        f"next seq:     {q['next_seq']}",
        f"oldest pending: seq {q['oldest_pending_seq']}, age {q['oldest_pending_age_ms']} ms",
        f"last ack:     {status['last_ack_ms']}",
        f"devices:      {status['devices']}",
        f"rpc open:     {status.get('rpc_open', 0)} (queued or delivered to devices)",
        *_storage_text(status),
    ]
    graph = status.get("graph")
    if graph is not None:
        kinds = ", ".join(f"{k} {n}" for k, n in graph["entities"].items()) or "none"
        held = graph["held"]
        lines += [f"entities:     {kinds}; relations {graph['relations']}",
                  f"held:         {held['count']}"]
        lines += [f"  {h['what']} waits for {', '.join(h['waiting_for'])}" for h in held["first"]]
        if held["count"] > len(held["first"]):
            lines.append(f"  ... and {held['count'] - len(held['first'])} more")
    sync = status.get("sync")
    if sync is not None:
        lines.append(f"last full sync: {sync['last_full_ms'] or 'never'}"
                     + (f" (in progress since {sync['full_started_ms']}: {sync['full_reason']})"
                        if sync["full_in_progress"] else "")
                     + (f"; full sync asked for: {sync['full_requested']}"
                        if sync["full_requested"] else "")
                     + (f"; damaged: {sync['damaged']}" if sync["damaged"] else ""))
        lines.append(f"last contact: {sync.get('last_contact_ms') or 'never'} (with the cloud)")
        last = sync.get("last")
        if isinstance(last, dict):
            lines.append("last sync:    " + ", ".join(f"{k} {v}" for k, v in last.items()))
    lines += _rules_text(status.get("rules"), running=status.get("agent") == "running")
    return "\n".join(lines)


def _storage_text(status: dict[str, Any]) -> list[str]:
    """The storage lines: used of the cap, then what it is made of (an agent of an earlier
    release answers no parts: the first line only)."""
    st = status["storage"]
    lines = [f"storage:      {st['used_mb']} MiB used of {st['cap_mb']} MiB"]
    parts = st.get("parts_bytes")
    if not isinstance(parts, dict):
        return lines
    health = (status.get("health_detail") or {}).get("storage") or {}

    def mib(n: int) -> str:
        return f"{n / (1024 * 1024):.2f}"

    lines[0] += (f"; {st['unreclaimable_mb']} MiB not reclaimable"
                 f" ({health.get('value_pct')}% of the cap, {health.get('level')})")
    lines.append(f"  pending {mib(parts['pending'])}, delivered kept {mib(parts['delivered'])}"
                 " (reclaimable), local timeseries "
                 f"{mib(parts['local_timeseries'])} ({st['local_points']} points), latest "
                 f"{mib(parts['latest'])}, other {mib(parts['other'])} MiB")
    return lines


def _rules_health(status: dict[str, Any]) -> str:
    """`` (rule chain: reasons)`` when the rule chain degrades the health, else nothing."""
    rules = (status.get("health_detail") or {}).get("rules") or {}
    if rules.get("level") in (None, "healthy"):
        return ""
    return f" (rule chain: {'; '.join(rules.get('reasons', []))})"


def _rules_text(rules: dict[str, Any] | None, *, running: bool) -> list[str]:
    """The chain in force, its per-node counts, rules.file on disk when it is not the chain in
    force, the cloud's root chain while rules.file wins, and the last refusal (a running agent
    only)."""
    if not running:
        stopped = rules or {}
        lines = ["rule chain:   (the agent is not running: the chain in force is the agent's)"]
        if stopped.get("at_start"):
            lines.append(f"  at start: {stopped['at_start']}")
        lines += [f"  kept from {k['source']}: {k['name']!r} (version {k['version']}, digest "
                  f"{k['digest']}, in force since {k['since']})" for k in stopped.get("kept", [])]
        lines += [f"  kept chain unreadable: {p}" for p in stopped.get("problems", [])]
        return lines
    if rules is None or rules.get("chain") is None:
        lines = ["rule chain:   none in force: every accepted message goes to the cloud"]
    else:
        since = f", in force since {rules['since']}" if rules.get("since") else ""
        lines = [f"rule chain:   {rules['chain']!r} from {rules['source']} (version "
                 f"{rules['version']}, digest {rules['digest']}{since})"]
    rules = rules or {}
    disk = rules.get("file")
    if disk and not disk.get("matches"):
        lines.append(f"  file changed: {disk['note']}")
    shadow = rules.get("shadowed")
    if shadow:
        lines.append(f"  shadowed: cloud root rule chain {shadow['chain']!r} ("
                     + (f"version {shadow['version']}, " if shadow.get("version") is not None
                        else "")
                     + (f"digest {shadow['digest']}" if shadow.get("digest") else "does not parse")
                     + f", received {shadow['received']}): not in force, rules.file wins")
    lines += [f"  {n['node']}: in {n['in']}, failed {n['failed']}"
              + (f", open windows {n['open_windows']} ({n['held_messages']} messages held)"
                 if "open_windows" in n else "")
              for n in rules.get("nodes", [])]
    lines += [f"  {o['node']}: open windows {o['open_windows']} ({o['held_messages']} "
              "messages held), dropped at their deadline"
              for o in rules.get("orphaned_windows", [])]
    lines += [f"  {o['node']}: open windows {o['open_windows']} ({o['held_messages']} "
              "messages held), wait for a chain in force"
              for o in rules.get("waiting_windows", [])]
    lines += [f"  {b['node']}: script blocked since {b.get('since') or b['since_ms']} until "
              f"{b.get('until') or b['until_ms']} on shard{'s' if len(b['shards']) > 1 else ''} "
              f"{', '.join(map(str, b['shards']))} after {b['errors']} timeouts or memory "
              f"blow-ups (last: {_first_line(b['last_error'])}): its messages go by Failure"
              for b in rules.get("blocked_scripts", [])]
    windows = sum((rules.get("dropped_windows") or {}).values())
    lost = sum((rules.get("dropped_messages") or {}).values())
    if windows or lost:
        lines.append(f"  dropped at their deadline (node not in the chain): {windows} windows, "
                     f"{lost} messages lost")
    refusal = rules.get("last_refusal")
    if refusal:
        at = refusal.get("at") or refusal["at_ms"]
        still = f" ({refusal['still']})" if refusal.get("still") else ""
        lines.append(f"  last refusal from {refusal['source']} at {at}{still}: "
                     + "; ".join(refusal["problems"]))
    return lines


def _first_line(text: str) -> str:
    """A script error's message without its stack."""
    return text.splitlines()[0] if text else text


def _events(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    status = None if args.status == "all" else Status(args.status.upper())
    try:
        store = _open_readonly(cfg)
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    try:
        log = EventLog(store)
        with store.read() as txn:
            events = list(islice(
                log.iter_events(txn, status=status, entity_id=args.entity,
                                after_seq=args.after_seq),
                max(0, args.limit),
            ))
    finally:
        store.close()
    for e in events:
        if args.json:
            print_json(e.as_json())
        else:
            err = f"  error={e.error}" if e.error else ""
            print(f"{e.seq:>10}  {e.status.value:<8} {e.lane.name:<6} {e.type:<8} {e.action:<22} "
                  f"{e.entity_id}  ts={e.ts}{err}")
    return EXIT_OK


def _rpc(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    """``rpc list``: read-only, with the agent running or not."""
    try:
        store = _open_readonly(cfg)
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    try:
        with store.read() as txn:
            requests = by_status(RpcStore(store).scan(txn, args.device),
                                 RpcStatus(args.status) if args.status else None)
    finally:
        store.close()
    for r in requests:
        if args.json:
            print_json(r.as_json())
        else:
            way = "one-way" if r.oneway else "two-way"
            err = f"  error={r.error}" if r.error else ""
            made = "" if r.reported else f"  origin={r.origin.value}"
            print(f"{r.device_id}  {r.request_id:>10}  {r.status.value:<10} {way:<7} "
                  f"{r.method}  expires={r.expiration_time}{err}{made}")
    return EXIT_OK


def _device(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    if args.device_command == "delete":
        return _change(cfg, args, "DELETE", f"/api/devices/{args.id}", None, "device not deleted")
    body: dict[str, Any] = {"name": args.name, "type": args.type, "label": args.label}
    if args.gateway:
        body["gateway"] = True
    if args.token:
        body["token"] = args.token
    try:
        code, out = admin_call(cfg.admin, "POST", "/api/devices", body)
    except AdminUnreachable as exc:
        return fail(f"{exc}; is `edge-sync run` running?", EXIT_UNREACHABLE)
    if code != 201:
        return fail(_refusal(cfg, code, out, "device not created"), exit_code_for_refusal(code))
    if args.json:
        print_json(out)
    else:
        print(f"id:    {out['id']}\nname:  {out['name']}\ntoken: {out['token']}")
        if out.get("gateway"):
            print("gateway: yes (may use the MQTT gateway API)")
    return EXIT_OK


# -- the entity graph ----------------------------------------------------------------------------


def _change(cfg: EdgeConfig, args: argparse.Namespace, method: str, path: str, body: Any,
            refused: str, ok: tuple[int, ...] = (200, 201, 202)) -> int:
    """A change through the running agent's admin API; prints its answer (the entity's id and
    the seqs of its events)."""
    try:
        code, out = admin_call(cfg.admin, method, path, body)
    except AdminUnreachable as exc:
        return fail(f"{exc}; is `edge-sync run` running?", EXIT_UNREACHABLE)
    if code not in ok:
        return fail(_refusal(cfg, code, out, refused),
                    EXIT_NOT_FOUND if code == 404 else exit_code_for_refusal(code))
    if getattr(args, "json", False):
        print_json(out)
    elif isinstance(out, dict):
        seqs = out.get("seqs")
        parts = [f"id: {out['id']}"] if out.get("id") else []
        if seqs is not None:
            parts.append("events: " + (", ".join(str(s) for s in seqs) if seqs else "none"))
        print("  ".join(parts) or "ok")
    return EXIT_OK


def _asset(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    if args.asset_command == "delete":
        return _change(cfg, args, "DELETE", f"/api/assets/{args.id}", None, "asset not deleted")
    body = {k: v for k, v in (("name", args.name), ("type", args.type), ("label", args.label),
                              ("additionalInfo", args.info)) if v is not None}
    if args.asset_command == "create":
        return _change(cfg, args, "POST", "/api/assets", body, "asset not created")
    return _change(cfg, args, "PUT", f"/api/assets/{args.id}", body, "asset not updated")


def _relation(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    if args.relation_command == "add":
        body = {"from": str(args.src), "to": str(args.dst), "type": args.rel_type,
                "additionalInfo": args.info}
        return _change(cfg, args, "POST", "/api/relations", body, "relation not added")
    if args.all_of is not None:
        if args.src or args.dst or args.rel_type:
            return fail("--all deletes every relation of an entity: no --from, --to, --type",
                        EXIT_USAGE)
        return _change(cfg, args, "DELETE", f"/api/relations?entity={args.all_of}", None,
                       "relations not deleted")
    if not (args.src and args.dst and args.rel_type):
        return fail("name the relation (--from, --to, --type) or --all ID", EXIT_USAGE)
    query = urllib.parse.urlencode({"from": args.src, "to": args.dst, "type": args.rel_type})
    return _change(cfg, args, "DELETE", f"/api/relations?{query}", None, "relation not deleted")


def _attributes(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    scope = args.scope if args.scope.endswith("_SCOPE") else f"{args.scope}_SCOPE"
    return _change(cfg, args, "DELETE", f"/api/entities/{args.id}/attributes/{scope}",
                   {"keys": args.keys}, "attributes not deleted")


def _timeseries(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    return _change(cfg, args, "DELETE", f"/api/entities/{args.id}/timeseries",
                   {"keys": args.keys}, "timeseries not deleted")


def _alarm(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"alarm_id": str(args.id),
                            "action": "ALARM_ACK" if args.alarm_command == "ack" else "ALARM_CLEAR"}
    if args.device is not None:
        body["device"] = str(args.device)
    if args.alarm_type:
        body["type"] = args.alarm_type
    refused = "alarm not acknowledged" if args.alarm_command == "ack" else "alarm not cleared"
    return _change(cfg, args, "POST", "/api/alarms", body, refused)


def _with_store(cfg: EdgeConfig, read: Any) -> Any:
    """``read(store)`` on the store opened read-only (the agent running or not)."""
    store = _open_readonly(cfg)
    try:
        return read(store)
    finally:
        store.close()


def _entities(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    from edge_sync.api.entity_service import list_entities, parse_type

    try:
        kind = parse_type(args.entity_type)
        found = _with_store(cfg, lambda store: list_entities(store, entity_type=kind,
                                                             name=args.name))
    except BadRequest as exc:
        return fail(str(exc), EXIT_USAGE)
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    for e in found:
        if args.json:
            print_json(e)
        else:
            origin = f"  ({e['origin']})" if e["origin"] else ""
            print(f"{e['entity_type']:<20} {e['id']}  {e['name']}{origin}")
    return EXIT_OK


def _entity(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    from edge_sync.api.entity_service import entity_details

    try:
        found = _with_store(cfg, lambda store: entity_details(store, args.id))
    except NotFound as exc:
        return fail(str(exc), EXIT_NOT_FOUND)
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    if args.json:
        print_json(found)
        return EXIT_OK
    print(f"{found['entity_type']} {found['id']}  {found.get('name') or ''}")
    if found.get("origin"):
        print(f"origin: {found['origin']}" + (f" (event {found['origin_seq']})"
                                              if found.get("origin_seq") else ""))
    if "held" in found:
        print(f"held: waits for {', '.join(found['held']['waiting_for'])}")
    print("json: " + json.dumps(found.get("entity"), separators=(",", ":")))
    for way, end in (("from", "to"), ("to", "from")):
        for r in found["relations"][way]:
            other = r.get(end) or {}
            arrow = f"-{r.get('type')}->" if way == "from" else f"<-{r.get('type')}-"
            print(f"relation: {arrow} {other.get('entityType')} {other.get('id')}")
    for scope, values in found["attributes"].items():
        for key, value in values.items():
            print(f"attribute {scope}: {key} = {json.dumps(value)}")
    for key, latest in found["latest"].items():
        print(f"latest: {key} = {json.dumps(latest['value'])} (ts {latest['ts']})")
    return EXIT_OK


def _apply_log(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    from edge_sync.api.entity_service import apply_log_entries

    if args.after < 0 or args.limit < 0:
        return fail("--after and --limit must be 0 or more", EXIT_USAGE)
    try:
        entries = _with_store(cfg, lambda store: apply_log_entries(
            store, after=args.after, limit=args.limit))
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    for e in entries:
        if args.json:
            print_json(e)
        else:
            print(f"{e['index']:>8} {e['ts']} {e['action']:<8} {e['entity_type']:<20} "
                  f"{e['id']}  ({e['origin']})")
    return EXIT_OK


def _sync(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    return _change(cfg, args, "POST", "/api/sync", {"full": bool(args.full)},
                   "sync not requested")


# -- the operator's commands ------------------------------------------------------------------


def _agent_reachable(cfg: EdgeConfig) -> bool:
    """Whether the agent's admin API answers (how every command tells a running agent)."""
    try:
        admin_call(cfg.admin, "GET", "/healthz", timeout=3)
    except AdminUnreachable:
        return False
    return True


def _store_logging(cfg: EdgeConfig) -> None:
    """A command that writes the stopped agent's store (replay, verify --repair) logs what it
    did as the agent would: the project's log set-up with ``log.format`` and ``log.level``
    (EDGE_LOG_FORMAT, EDGE_LOG_LEVEL), each line with its fields, to stderr under the component
    ``edge-sync``; not to ``log.file``, which is the agent's."""
    configure_logging(dataclasses.replace(cfg.log, file=None), component="edge-sync")


def _open_writable(cfg: EdgeConfig) -> Any:
    """The store opened for writing with the agent stopped. Its writer lock is the agent's:
    while an agent holds the store (its admin API unreachable or not), this fails. A path that
    holds no store is refused (StorageError), never made into a new empty one: an operator's
    typo in storage.data_dir must not look like a store without dead letters."""
    from edge_sync.app import open_store

    if not (cfg.storage.data_dir / "data.mdb").is_file():
        raise StorageError(f"no edge-sync store at {cfg.storage.data_dir} (no data.mdb): "
                           "check storage.data_dir")
    return open_store(cfg)


def _replay(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    """``replay --dead --seq N ... | --entity ID | --all``: through the running agent's admin
    API, else on the store directly (its writer lock keeps an agent from starting meanwhile)."""
    from edge_sync.storage import dead_letters

    chosen = sum((args.seqs is not None, args.entity is not None, bool(args.all)))
    if not args.dead or chosen != 1:
        return fail("usage: edge-sync replay --dead (--seq N [N ...] | --entity ID | --all): "
                    + ("--dead is required" if not args.dead
                       else "name the dead letters with exactly one of --seq, --entity, --all"),
                    EXIT_USAGE)
    try:
        selection = dead_letters.Selection(
            seqs=tuple(args.seqs) if args.seqs is not None else None,
            entity=args.entity, all=bool(args.all))
    except BadRequest as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        before = _with_store(cfg, lambda store: _dead_letters(store))
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    via = "agent"
    try:
        code, out = admin_call(cfg.admin, "POST", "/api/dead-letters/replay", selection.as_json())
    except AdminUnreachable:
        via = "store"
        _store_logging(cfg)
        try:
            result = _replay_on_store(cfg, selection)
        except StorageError as exc:
            return fail(f"{exc} (the agent's admin API is unreachable: is it running with "
                        "admin.enabled false, or on another port?)", EXIT_STORAGE)
        out = result.as_json()
    else:
        if code != 200:
            return fail(_refusal(cfg, code, out, "dead letters not replayed"),
                        exit_code_for_refusal(code))
    replayed = [{"seq": seq, **before.get(seq, {})} for seq in out["replayed"]]
    if args.json:
        print_json({"replayed": replayed, "skipped": out["skipped"], "via": via})
        return EXIT_OK
    for r in replayed:
        print(f"replayed {r['seq']:>10}  {r.get('lane', '?'):<6} {r.get('entity', '?')}  "
              f"was dead: {r.get('reason', '?')}")
    for s in out["skipped"]:
        print(f"skipped  {s['seq']:>10}  {s['reason']}")
    where = ("the running agent sends them now" if via == "agent"
             else "the agent sends them when it next runs")
    print(f"{len(replayed)} dead letter(s) replayed, {len(out['skipped'])} skipped ({where})")
    return EXIT_OK


def _dead_letters(store: Any) -> dict[int, dict[str, Any]]:
    """Every dead letter: seq -> entity, lane, reason (what the replay output shows)."""
    from edge_sync.storage import dead_letters

    with store.read() as txn:
        return {e.seq: {"entity": str(e.entity_id), "lane": e.lane.name.lower(),
                        "reason": e.error or ""}
                for e in dead_letters.dead_events(EventLog(store), txn)}


def _replay_on_store(cfg: EdgeConfig, selection: Any) -> Any:
    """The replay with the agent stopped: one write transaction, each replay logged (the
    caller set up logging: _store_logging). Nothing
    the agent caches at start depends on it (next_seq is unchanged; counts come from the
    store; the link reads every pending event from the start of its first stream)."""
    from edge_sync.storage import dead_letters

    store = _open_writable(cfg)
    try:
        log = EventLog(store)
        result = store.write(lambda txn: dead_letters.replay(log, txn, selection),
                             maintenance=True)
    finally:
        store.close()
    for r in result.replayed:  # (the agent's edge_sync_dead_letters_replayed_total counts its own)
        logger.bind(seq=r.seq, entity=str(r.entity_id), lane=r.lane.name.lower(),
                    error=r.reason).info("dead letter replayed")
    return result


def _config_check(args: argparse.Namespace) -> int:
    """``config check [--config FILE]``: every setting as the agent would run with it (packaged
    defaults, the file, environment overrides; secrets masked), exit 0; or every error, exit 1."""
    from edge_sync.config import check_edge_config, effective_settings

    cfg, errors = check_edge_config(args.config)
    if cfg is not None and cfg.rules.file is not None:
        errors = _rules_file_errors(cfg)
        if errors:
            cfg = None
    if cfg is None:
        if args.json:
            print_json({"ok": False, "errors": errors})
        else:
            for message in errors:
                print(f"error: {message}")
            print(f"{len(errors)} error(s) in the configuration")
        return EXIT_CONFIG
    settings = effective_settings(cfg)
    if args.json:
        print_json({"ok": True, "settings": dict(settings)})
    else:
        for key, value in settings:
            print(f"{key}: {value}")
        print(f"configuration ok ({len(settings)} settings)")
    return EXIT_OK


def _rules_file_errors(cfg: EdgeConfig) -> list[str]:
    """``rules.file`` checked as the agent loads it at start (read, parsed, validated with its
    scripts compiled under the configuration's rules limits): every problem, each named
    ``rules.file``. The agent falls back to the last chain in force from the file when it
    kept one; a configuration check does not count on that."""
    from edge_sync.rules.sandbox import ScriptLimits
    from edge_sync.rules.source import check_chain_file

    assert cfg.rules.file is not None
    found = check_chain_file(cfg.rules.file, ScriptLimits.of_config(cfg.rules))
    return [f"rules.file: {p}" for p in found] if isinstance(found, list) else []


EXIT_DAMAGED = 8  # verify: the store has problems (after --repair: ones it could not fix)


def _verify(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    """``verify [--repair]``: the audit of storage/verify.py on a read snapshot (the agent may
    run); with --repair, in one write transaction on the stopped agent's store, then again."""
    from edge_sync.storage import verify

    repaired: list[verify.Problem] = []
    if args.repair:
        if _agent_reachable(cfg):
            return fail("verify --repair refused: the agent is running (its admin API answers);"
                        " stop it first", EXIT_CONFIG)
        _store_logging(cfg)
        try:
            store = _open_writable(cfg)
        except StorageError as exc:
            return fail(f"verify --repair refused: {exc}", EXIT_STORAGE)
        try:
            found = store.write(lambda txn: verify.repair(store, txn), maintenance=True)
        finally:
            store.close()
        repaired = [p for p in found.problems if p.fix is not None]
        for p in repaired:
            logger.bind(db=p.db, key=p.key, problem=p.what, repair=p.repair).warning(
                "store repaired: {} {}: {}; {}", p.db, p.key, p.what, p.repair)
    try:
        result = _with_store(cfg, lambda store: _audit(store))
    except StorageError as exc:
        return fail(str(exc), EXIT_STORAGE)
    code = EXIT_OK if result.healthy else EXIT_DAMAGED
    if args.json:
        print_json({"healthy": result.healthy,
                    "problems": [_problem_json(p) for p in result.problems],
                    "repaired": [_problem_json(p) for p in repaired],
                    "notes": [_problem_json(p) for p in result.notes],
                    "checked": result.checked})
        return code
    for p in repaired:
        print(f"repaired: {p}; {p.repair}")
    for p in result.problems:
        print(("NOT REPAIRED: " if args.repair else "problem: ") + str(p)
              + ("" if args.repair or p.fix is None else "  [--repair fixes it]"))
    for p in result.notes:
        print(f"note: {p}")
    entries = sum(result.checked.values())
    print(f"{'healthy' if result.healthy else 'DAMAGED'}: {len(result.problems)} problem(s), "
          f"{len(repaired)} repaired, {len(result.notes)} note(s); {entries} entries in "
          f"{len(result.checked)} databases checked")
    return code


def _audit(store: Any) -> Any:
    from edge_sync.storage import verify

    with store.read() as txn:
        return verify.audit(store, txn)


def _problem_json(p: Any) -> dict[str, str]:
    return {"db": p.db, "key": p.key, "what": p.what,
            **({"repair": p.repair} if p.fix is not None else {})}


def _rules_check(args: argparse.Namespace) -> int:
    """``rules check FILE``: 0 and a one-line summary, or 1 and every problem, one a line."""
    from edge_sync.rules.chain import parse_file
    from edge_sync.rules.runtime import digest
    from edge_sync.rules.sandbox import ScriptLimits
    from edge_sync.rules.validate import notes, summary, validate

    limits: ScriptLimits | None = None
    if getattr(args, "config", None) is not None:  # the site's script limits, as the agent's
        try:
            rules = load_edge_config(args.config).rules
        except ConfigError as exc:
            return fail(f"configuration: {exc}", EXIT_CONFIG)
        limits = ScriptLimits.of_config(rules)
    try:
        with open(args.file, "rb") as f:
            raw = f.read()
        chain, meta = parse_file(raw, args.file)
    except OSError as exc:
        problems = [f"{args.file}: {exc.strerror or exc}"]
    except BadRequest as exc:
        problems = [str(exc)]
    else:
        problems = [str(p) for p in validate(chain, meta, limits)]
        if not problems:
            fingerprint = digest(chain, meta)  # as the agent's status shows the chain in force
            if args.json:
                print_json({"ok": True, "name": chain.name, "type": chain.type,
                            "nodes": len(meta.nodes), "connections": len(meta.connections),
                            "node_types": sorted({n.type for n in meta.nodes}),
                            "digest": fingerprint, "notes": notes(meta)})
            else:
                print(summary(chain, meta))
                print(f"digest {fingerprint}")
                for note in notes(meta):
                    print(f"note: {note}")
            return EXIT_OK
    if args.json:
        print_json({"ok": False, "problems": problems})
    else:
        print("\n".join(problems))
    return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
