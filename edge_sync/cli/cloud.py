"""The ``edge-cloud`` command: the reference cloud (serve) and its operator commands.

Writes (edge create, device create, attr set) go through the running server's admin API, so
the downlinks they queue are sent at once; with the server stopped (nothing answers on its admin
port) they write the LMDB store directly (the server sends what is queued when the edge
connects). A server that answers but refuses the admin token (401/403) is an error, exit 1,
never a reason to write the store behind it. ``edge sync`` (a full sync of
a connected edge) and ``rpc`` (a server-side RPC request to a device) need the running server.
Reads (events, edge list) work either way.

The entity graph (cloud/graph_store.py, through cloud/admin_http.EntityAdmin): ``entity create /
import / update / delete / list / show``, ``assign`` / ``unassign --edge RK``, ``relation add /
delete / list``; writes through the running server (so what they queue reaches a connected edge
at once) or, stopped, the store; reads from the store. An entity is named by its id, or by a
name only one entity has (``--type`` narrows it). ``entity import`` takes ThingsBoard's export
files (cloud/tb_import.py). Exit codes (edge_sync.cli.common): 0 ok; 1 bad
configuration or a refused request (an unknown edge or device, a bad value); 2 usage; 4
storage unusable; 6 conflict (the routing key, device name or token is taken). ``rpc`` exits 1
as well when the request gets no answer (ThingsBoard's 504: it timed out, expired or the
device answered an error), after printing its id and status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from edge_sync.cli.common import (
    EXIT_CONFIG,
    EXIT_CONFLICT,
    EXIT_OK,
    EXIT_STORAGE,
    REFUSED_CREDENTIALS,
    AdminRefused,
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
from edge_sync.config import CloudConfig, LogLevel, load_cloud_config
from edge_sync.errors import BadRequest, ConfigError, Conflict, EdgeSyncError, StorageError
from edge_sync.logsetup import configure_logging
from edge_sync.validators import INT64_MAX


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_cloud_config(args.config)
    except ConfigError as exc:
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    if args.command == "serve":
        return _serve(cfg)
    _quiet_logging(cfg)
    handler: Callable[[CloudConfig, argparse.Namespace], int] = {
        ("edge", "create"): _edge_create,
        ("edge", "list"): _edge_list,
        ("edge", "sync"): _edge_sync,
        ("device", "create"): _device_create,
        ("device", "list"): _device_list,
        ("attr", "set"): _attr_set,
        ("events", None): _events,
        ("rpc", None): _rpc,
        ("status", None): _status,
        ("entity", "create"): _entity_create,
        ("entity", "import"): _entity_import,
        ("entity", "update"): _entity_update,
        ("entity", "delete"): _entity_delete,
        ("entity", "list"): _entity_list,
        ("entity", "show"): _entity_show,
        ("assign", None): _assign,
        ("unassign", None): _assign,
        ("relation", "add"): _relation_add,
        ("relation", "delete"): _relation_delete,
        ("relation", "list"): _relation_list,
    }[(args.command, getattr(args, "sub", None))]
    try:
        return handler(cfg, args)
    except BrokenPipeError:
        return reader_gone()
    except Conflict as exc:
        return fail(str(exc), EXIT_CONFLICT)
    except StorageError as exc:
        return fail(f"storage unusable: {exc}", EXIT_STORAGE)
    except EdgeSyncError as exc:
        return fail(str(exc), EXIT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    """The ``edge-cloud`` command line. ``--config`` is accepted before and after the subcommand
    (``edge-cloud serve --config F`` and ``edge-cloud --config F serve``); after it wins."""
    p = argparse.ArgumentParser(prog="edge-cloud", description="edge-sync's reference cloud")
    config = config_option(p, "$CLOUD_CONFIG or the packaged conf/cloud.yml")
    sub = p.add_subparsers(dest="command", required=True)

    def add(group: Any, name: str, text: str) -> argparse.ArgumentParser:
        """A subcommand that takes --config like every other."""
        parser: argparse.ArgumentParser = group.add_parser(name, parents=[config], help=text)
        return parser

    add(sub, "serve", "run the cloud in the foreground (SIGTERM/SIGINT stop it)")

    edge = add(sub, "edge", "edges registered with the cloud")
    esub = edge.add_subparsers(dest="sub", required=True)
    ec = add(esub, "create", "register an edge; prints its routing key and secret")
    ec.add_argument("--name", required=True)
    ec.add_argument("--routing-key", default=None, help="default: a new UUID")
    ec.add_argument("--secret", default=None, help="default: a new random secret")
    ec.add_argument("--type", default="default")
    ec.add_argument("--json", action="store_true")
    el = add(esub, "list", "registered edges")
    el.add_argument("--json", action="store_true")
    es = add(esub, "sync", "run a full sync of a connected edge now (the server must be running)")
    es.add_argument("--edge", required=True, help="routing key (or id) of the edge")
    es.add_argument("--json", action="store_true")

    dev = add(sub, "device", "devices assigned to edges")
    dsub = dev.add_subparsers(dest="sub", required=True)
    dc = add(dsub, "create", "create a device on an edge (sent to it as downlinks)")
    dc.add_argument("--edge", required=True, help="routing key of the edge")
    dc.add_argument("--name", required=True)
    dc.add_argument("--type", default="default")
    dc.add_argument("--label", default="")
    dc.add_argument("--token", default=None, help="access token (default: generated)")
    dc.add_argument("--json", action="store_true")
    dl = add(dsub, "list", "devices of an edge")
    dl.add_argument("--edge", required=True, help="routing key of the edge")
    dl.add_argument("--json", action="store_true")

    attr = add(sub, "attr", "shared attributes of devices")
    asub = attr.add_subparsers(dest="sub", required=True)
    aset = add(asub, "set", "set shared attributes of a device (sent as a downlink)")
    aset.add_argument("--device", required=True, help="device id or name")
    aset.add_argument("--edge", default=None, help="routing key, when several edges have the name")
    aset.add_argument("--key", default=None)
    aset.add_argument("--value", default=None, help="JSON value, or text when it is not JSON")
    aset.add_argument("pairs", nargs="*", metavar="KEY=VALUE",
                      help="attributes; VALUE is JSON (42, true, \"x\", {...}) or else text")
    aset.add_argument("--json", action="store_true")

    ev = add(sub, "events", "what the cloud applied from an edge, in apply order "
                            "(across its stores; seqs restart at 1 in each store)")
    ev.add_argument("--edge", required=True, help="routing key of the edge")
    ev.add_argument("--after", type=int_in(0, INT64_MAX), default=0,
                    help="only after this apply index")
    ev.add_argument("--limit", type=int_in(0, INT64_MAX), default=0,
                    help="at most this many (0: all)")
    ev.add_argument("--json", action="store_true")
    rpc = add(sub, "rpc", "send a server-side RPC request to a device (the server must be "
                          "running); prints the answer, or the request's id and status, as JSON")
    rpc.add_argument("--device", required=True, help="device id, or name (with --edge when "
                                                     "several edges have one of that name)")
    rpc.add_argument("--edge", default=None, help="routing key (or id) of the device's edge")
    rpc.add_argument("--method", required=True)
    rpc.add_argument("--params", default="{}", help="JSON (default {}); text when it is not JSON")
    rpc.add_argument("--oneway", action="store_true", help="expect no answer")
    rpc.add_argument("--timeout", type=float, default=None, metavar="N",
                     help="seconds to wait for the answer (ThingsBoard's default: 10); with "
                          "--persistent, how long the request may wait for the edge")
    rpc.add_argument("--persistent", action="store_true",
                     help="kept until the edge takes it (or it expires); prints its id at once")
    st = add(sub, "status", "is the server running, edges and their queues")
    st.add_argument("--json", action="store_true")
    _entity_parsers(sub, add)
    return p


def _entity_parsers(sub: Any, add: Callable[[Any, str, str], argparse.ArgumentParser]) -> None:
    """entity, assign, unassign and relation: the entity graph's commands."""
    kind_help = "entity kind: ASSET, DASHBOARD, RULE_CHAIN, CUSTOMER, ... (case does not matter)"
    out_help = "print the answer as one JSON line"

    ent = add(sub, "entity", "entities of every kind but devices (the entity graph)")
    esub = ent.add_subparsers(dest="sub", required=True)
    ec = add(esub, "create", "create an entity (not assigned to any edge)")
    ec.add_argument("--type", required=True, help=kind_help)
    ec.add_argument("--name", default=None, help="its name (title of a dashboard or customer, "
                                                 "email of a user); wins over the JSON's")
    ec.add_argument("--json", dest="json_file", default=None, metavar="FILE",
                    help="its ThingsBoard JSON ('-': standard input)")
    ec.add_argument("--output", choices=("text", "json"), default="text", help=out_help)
    ei = add(esub, "import", "import a ThingsBoard export file (all or nothing)")
    ei.add_argument("file", help="the export's JSON ('-': standard input)")
    ei.add_argument("--type", default=None, help=kind_help + "; default: told by the shape")
    ei.add_argument("--assign", default=None, metavar="ROUTING_KEY",
                    help="assign what the file brings to this edge")
    ei.add_argument("--keep-ids", action="store_true",
                    help="keep the ids the file has (default: new ids, as ThingsBoard does)")
    ei.add_argument("--output", choices=("text", "json"), default="text", help=out_help)
    eu = add(esub, "update", "replace an entity's JSON (a rule chain: also a rule chain export)")
    eu.add_argument("id", help="entity id (or unique name)")
    eu.add_argument("--json", dest="json_file", required=True, metavar="FILE",
                    help="the new ThingsBoard JSON ('-': standard input)")
    eu.add_argument("--type", default=None, help=kind_help)
    eu.add_argument("--output", choices=("text", "json"), default="text", help=out_help)
    ed = add(esub, "delete", "delete an entity (its entity views and metadata go with it)")
    ed.add_argument("id", help="entity id (or unique name)")
    ed.add_argument("--type", default=None, help=kind_help)
    ed.add_argument("--output", choices=("text", "json"), default="text", help=out_help)
    el = add(esub, "list", "entities, of one kind, name or edge")
    el.add_argument("--type", default=None, help=kind_help)
    el.add_argument("--name", default=None)
    el.add_argument("--edge", default=None, help="routing key: the entities that edge holds")
    el.add_argument("--json", action="store_true")
    es = add(esub, "show", "one entity with its ThingsBoard JSON")
    es.add_argument("id", help="entity id (or unique name)")
    es.add_argument("--type", default=None, help=kind_help)
    es.add_argument("--json", action="store_true")

    for name, text in (("assign", "assign entities (or devices) to an edge: sent to it"),
                       ("unassign", "take entities (or devices) off an edge")):
        asg = add(sub, name, text)
        asg.add_argument("--edge", required=True, help="routing key (or id) of the edge")
        asg.add_argument("ids", nargs="+", metavar="ID", help="entity ids (or unique names)")
        asg.add_argument("--type", default=None, help=kind_help)
        asg.add_argument("--output", choices=("text", "json"), default="text", help=out_help)

    rel = add(sub, "relation", "relations between entities (devices and edges included)")
    rsub = rel.add_subparsers(dest="sub", required=True)
    for name, text in (("add", "add (or replace) a relation"), ("delete", "delete a relation")):
        r = add(rsub, name, text)
        r.add_argument("--from", dest="src", required=True, help="entity id (or unique name)")
        r.add_argument("--to", dest="dst", required=True, help="entity id (or unique name)")
        r.add_argument("--type", required=True, help="relation type, e.g. Contains, Manages")
        r.add_argument("--group", default="COMMON", help="relation type group (default COMMON)")
        r.add_argument("--output", choices=("text", "json"), default="text", help=out_help)
    rl = add(rsub, "list", "the relations from and to an entity")
    rl.add_argument("id", help="entity id (or unique name)")
    rl.add_argument("--json", action="store_true")


def _quiet_logging(cfg: CloudConfig) -> None:
    """Operator commands log warnings and errors only (to stderr)."""
    levels = list(LogLevel)
    level = max(cfg.log.level, LogLevel.WARNING, key=levels.index)
    configure_logging(dataclasses.replace(cfg.log, level=level, file=None), component="edge-cloud")


# -- serve -------------------------------------------------------------------------------------


def _serve(cfg: CloudConfig) -> int:
    from edge_sync.cloud.server import CloudServer
    from edge_sync.service_notify import ServiceNotifier

    try:
        configure_logging(cfg.log, component="cloud")
    except ConfigError as exc:
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    try:
        server = CloudServer(cfg)
    except ConfigError as exc:
        logger.error("refusing to start: {}", exc)
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    except StorageError as exc:
        logger.bind(data_dir=str(cfg.storage.data_dir)).error("storage unusable: {}", exc)
        return fail(f"storage unusable: {exc}", EXIT_STORAGE)
    requested = install_stop_handlers()  # a SIGTERM while starting is a clean stop too
    try:
        server.start()
    except EdgeSyncError as exc:
        logger.error("start-up failed: {}", exc)
        return fail(f"start-up failed: {exc}", EXIT_CONFIG)
    notifier = ServiceNotifier(watchdog_s=None)  # READY/STOPPING for Type=notify; no watchdog
    notifier.ready(f"serving: gRPC port {server.port}, admin API port {server.admin_port}")

    def stop() -> None:
        notifier.stopping()
        server.stop()

    run_until_signal(server.wait, stop, requested=requested)
    return EXIT_OK


# -- the running server, or the store directly -------------------------------------------------


def _running(cfg: CloudConfig) -> bool:
    """True when a cloud answers on cfg.admin (then writes go through it); False only when
    nothing answers there (then a write goes to the store). Whatever else answers is an error,
    never a reason to write the store behind a server: 401/403 (AdminRefused, exit 1) is a
    running cloud that refused this command's admin token; any other answer is BadRequest."""
    try:
        code, status = admin_call(cfg.admin, "GET", "/api/status", timeout=3)
    except AdminUnreachable:
        return False
    _refused_token(cfg, code, status)
    if code != 200 or not isinstance(status, dict) or status.get("server") != "running":
        told = status.get("message", status) if isinstance(status, dict) else status
        raise BadRequest(
            f"{admin_host(cfg.admin)}:{cfg.admin.port} answers GET /api/status with {code}, "
            f"not as a running edge-cloud ({str(told)[:200]}): check admin.host and admin.port "
            "(CLOUD_ADMIN_HOST, CLOUD_ADMIN_PORT); the store is not written while something "
            "answers there")
    if status.get("data_dir") != str(Path(cfg.storage.data_dir).resolve()):
        print(f"warning: the cloud at {cfg.admin.host}:{cfg.admin.port} serves the store in "
              f"{status.get('data_dir')}, not {cfg.storage.data_dir}; using the running cloud",
              file=sys.stderr)
    return True


def _refused_token(cfg: CloudConfig, code: int, answer: Any) -> None:
    """AdminRefused when the running cloud refused this command's admin token (401/403)."""
    if code in REFUSED_CREDENTIALS:
        raise AdminRefused(credentials_refused("the cloud", cfg.admin, "CLOUD_ADMIN_TOKEN", code,
                                               answer))


def _api(cfg: CloudConfig, method: str, path: str, body: Any = None) -> Any:
    """Call the running server; EdgeSyncError / StorageError with its message when refused."""
    code, out = admin_call(cfg.admin, method, path, body)
    _refused_token(cfg, code, out)
    if code >= 400:
        message = out.get("message", out) if isinstance(out, dict) else out
        if code in (500, 507):
            raise StorageError(f"the server refused ({code}): {message}")
        if code == 409:
            raise Conflict(f"refused ({code}): {message}")
        raise BadRequest(f"refused ({code}): {message}")
    return out


def _with_service(cfg: CloudConfig, fn: Callable[[Any], Any], *, readonly: bool = False) -> Any:
    from edge_sync.cloud.server import open_cloud_store
    from edge_sync.cloud.service import CloudService

    store = open_cloud_store(cfg, readonly=readonly)
    try:
        return fn(CloudService(store))
    finally:
        store.close()


# -- edges -------------------------------------------------------------------------------------


def _edge_create(cfg: CloudConfig, args: argparse.Namespace) -> int:
    body = {"name": args.name, "routing_key": args.routing_key, "secret": args.secret,
            "type": args.type}
    if _running(cfg):
        out = _api(cfg, "POST", "/api/edges", {k: v for k, v in body.items() if v is not None})
    else:
        def create(service: Any) -> dict[str, Any]:
            edge, secret, created = service.create_edge(
                args.name, routing_key=args.routing_key, secret=args.secret, type_=args.type)
            return {**edge.as_json(), "secret": secret, "created": created}

        out = _with_service(cfg, create)
    if args.json:
        print_json(out)
    else:
        note = "" if out.get("created", True) else "  (already registered)"
        print(f"id:          {out['id']}{note}\nname:        {out['name']}\n"
              f"routing key: {out['routing_key']}\nsecret:      {out['secret']}")
    return EXIT_OK


def _edge_list(cfg: CloudConfig, args: argparse.Namespace) -> int:
    if _running(cfg):
        rows = _api(cfg, "GET", "/api/edges")
    else:
        rows = _with_service(cfg, lambda s: s.edges(), readonly=True)
    for row in rows:
        if args.json:
            print_json(row)
        else:
            state = {True: "connected", False: "disconnected"}.get(row.get("connected"), "-")
            print(f"{row['routing_key']}  {row['name']:<20} {row['id']}  {state:<12} "
                  f"applied={row['applied_events']} queued={row['queued_downlinks']} "
                  f"devices={row['devices']}")
    return EXIT_OK


def _edge_sync(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """A full sync of the edge on its stream: only the running server has the stream."""
    if not _running(cfg):
        raise BadRequest(f"no cloud answers on {cfg.admin.host}:{cfg.admin.port}: a sync runs "
                         "on the edge's stream, so the server must be running")
    out = _api(cfg, "POST", f"/api/edges/{urllib.parse.quote(args.edge, safe='')}/sync", {})
    if args.json:
        print_json(out)
    else:
        print(f"full sync of edge {out['routing_key']} ({out['edge_id']}) requested")
    return EXIT_OK


def _status(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """The server, every edge and its queues; each edge's parked downlinks (refused as many
    times as downlink.max_attempts allows, or too large) listed with the edge's error."""
    if _running(cfg):
        out = _api(cfg, "GET", "/api/status")
        for row in out["edges"]:
            row["parked"] = (_api(cfg, "GET", f"/api/edges/{row['id']}/downlinks/parked")
                             if row.get("parked_downlinks") else [])
    else:
        def rows(service: Any) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = service.edges()
            for row in found:
                row["parked"] = ([p.as_json() for p in service.parked_downlinks(row["id"])]
                                 if row.get("parked_downlinks") else [])
            return found

        out = {"server": "not running", "data_dir": str(Path(cfg.storage.data_dir).resolve()),
               "edges": _with_service(cfg, rows, readonly=True)}
    if args.json:
        print_json(out)
        return EXIT_OK
    print(f"server:   {out['server']}\ndata dir: {out['data_dir']}")
    if "rpc" in out:
        print(f"rpc port: {out['rpc']['port']} (streams {out['rpc']['streams']})")
    for row in out["edges"]:
        state = {True: "connected", False: "disconnected"}.get(row.get("connected"), "-")
        print(f"edge {row['name']} ({row['routing_key']}): {state}, applied "
              f"{row['applied_events']}, queued downlinks {row['queued_downlinks']}, "
              f"parked downlinks {row.get('parked_downlinks', 0)}")
        for p in row.get("parked", []):
            tries = f", {p['attempts']} attempts" if p["attempts"] else ""
            first_line = (p["error"].splitlines() or [""])[0][:300]  # not the stack trace
            print(f"  parked downlink {p['downlink_id']} ({p['kinds']}): {p['cause']}{tries}: "
                  f"{first_line}")
    return EXIT_OK


# -- devices and attributes --------------------------------------------------------------------


def _device_create(cfg: CloudConfig, args: argparse.Namespace) -> int:
    body = {"edge": args.edge, "name": args.name, "type": args.type, "label": args.label}
    if args.token is not None:
        body["token"] = args.token
    if _running(cfg):
        out = _api(cfg, "POST", "/api/devices", body)
    else:
        def create(service: Any) -> dict[str, Any]:
            device, numbers = service.create_device(
                args.edge, args.name, type_=args.type, label=args.label, token=args.token)
            return {**device.as_json(with_token=True), "downlinks": numbers}

        out = _with_service(cfg, create)
    if args.json:
        print_json(out)
    else:
        print(f"id:    {out['id']}\nname:  {out['name']}\ntoken: {out['token']}")
    return EXIT_OK


def _device_list(cfg: CloudConfig, args: argparse.Namespace) -> int:
    def devices(service: Any) -> list[dict[str, Any]]:
        edge = service.edge(args.edge)
        return [d.as_json() for d in service.store.devices_of_edge(edge.edge_id)]

    for row in _with_service(cfg, devices, readonly=True):
        if args.json:
            print_json(row)
        else:
            print(f"{row['id']}  {row['name']:<24} {row['type']:<12} {row['origin']}")
    return EXIT_OK


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def attribute_values(pairs: list[str], key: str | None, value: str | None) -> dict[str, Any]:
    """{key: value} from KEY=VALUE arguments and/or --key/--value; BadRequest."""
    values: dict[str, Any] = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise BadRequest(f"{pair!r}: expected KEY=VALUE")
        values[k] = _json_or_text(v)
    if key is not None or value is not None:
        if key is None or value is None:
            raise BadRequest("--key and --value go together")
        values[key] = _json_or_text(value)
    if not values:
        raise BadRequest("no attribute given: KEY=VALUE or --key K --value V")
    return values


def _attr_set(cfg: CloudConfig, args: argparse.Namespace) -> int:
    values = attribute_values(args.pairs, args.key, args.value)
    if _running(cfg):
        body: dict[str, Any] = {"device": args.device, "values": values}
        if args.edge:
            body["edge"] = args.edge
        out = _api(cfg, "POST", "/api/attributes", body)
    else:
        def set_values(service: Any) -> dict[str, Any]:
            device, number = service.set_attributes(args.device, values, edge_ref=args.edge)
            return {"device": str(device.id), "name": device.name,
                    "edge_id": str(device.edge_id), "values": values, "downlink": number}

        out = _with_service(cfg, set_values)
    if args.json:
        print_json(out)
    else:
        print(f"device {out['name']} ({out['device']}): set {', '.join(sorted(values))} "
              f"(downlink {out['downlink']})")
    return EXIT_OK


# -- server-side RPC ---------------------------------------------------------------------------


def _rpc(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """POST /api/rpc/{oneway|twoway}/{device} on the running server: the device's answer (a
    two-way request), else {"rpcId", "status"}; a request without answer (504) prints its id
    and status and exits 1."""
    if not _running(cfg):
        raise BadRequest(f"no cloud answers on {cfg.admin.host}:{cfg.admin.port}: an RPC "
                         "request goes through the running server")
    body: dict[str, Any] = {"method": args.method, "params": _json_or_text(args.params)}
    if args.persistent:
        body["persistent"] = True
    wait_s = 10.0
    if args.timeout is not None:
        if args.timeout <= 0:
            raise BadRequest("--timeout: expected a number of seconds above 0")
        body["timeout"] = round(args.timeout * 1000)
        wait_s = args.timeout
    path = (f"/api/rpc/{'oneway' if args.oneway else 'twoway'}/"
            f"{urllib.parse.quote(args.device, safe='')}")
    if args.edge:
        path += "?" + urllib.parse.urlencode({"edge": args.edge})
    code, rpc_id, out = rpc_call(cfg, path, body, timeout=wait_s + 10)
    if code == 200 and not args.persistent and not args.oneway:
        print_json(out)  # the device's answer (null: it answered nothing)
        return EXIT_OK
    if code in (200, 406, 504) and rpc_id:
        record = _api(cfg, "GET", f"/api/rpc/{rpc_id}")
        shown = {"rpcId": rpc_id, "status": record["status"]}
        if record.get("response") is not None:
            shown["response"] = record["response"]
        print_json(shown)
        if code == 504:
            return fail(f"rpc {rpc_id} got no answer: {record['status']}"
                        + (f" ({record['error']})" if record.get("error") else ""), EXIT_CONFIG)
        return EXIT_OK
    _refused_token(cfg, code, out)
    message = out.get("message", out) if isinstance(out, dict) else out
    return fail(f"refused ({code}): {message}", exit_code_for_refusal(code))


def rpc_call(cfg: CloudConfig, path: str, body: Any, *, timeout: float) -> tuple[int, str, Any]:
    """POST an RPC request to the admin API: (status, the X-Rpc-Id header, decoded body; None
    when empty). Like admin_call, which does not give the header."""
    admin = cfg.admin
    host = admin_host(admin)
    headers = {"Content-Type": "application/json"}
    if admin.token:
        headers["Authorization"] = f"Bearer {admin.token}"
    req = urllib.request.Request(f"http://{host}:{admin.port}{path}",
                                 data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, code, rpc_id = resp.read(), resp.status, resp.headers.get("X-Rpc-Id", "")
    except urllib.error.HTTPError as exc:
        raw, code, rpc_id = exc.read(), exc.code, exc.headers.get("X-Rpc-Id", "")
    except (urllib.error.URLError, OSError) as exc:
        raise AdminUnreachable(f"admin API at {host}:{admin.port} is unreachable ({exc})") from exc
    try:
        out = json.loads(raw) if raw else None
    except ValueError:
        out = raw.decode(errors="replace")
    return code, rpc_id, out


# -- the entity graph --------------------------------------------------------------------------


def _entities(cfg: CloudConfig, fn: Callable[[Any], Any], *, readonly: bool = False) -> Any:
    """fn(EntityAdmin) on the store directly (the server stopped, or a read)."""
    from edge_sync.cloud.admin_http import EntityAdmin

    return _with_service(cfg, lambda service: fn(EntityAdmin(service)), readonly=readonly)


def _quoted(ref: str) -> str:
    return urllib.parse.quote(ref, safe="")


def _read_json(name: str) -> tuple[Any, str]:
    """(decoded JSON, the name to show) of a file, or standard input for '-'; BadRequest."""
    from edge_sync.cloud import tb_import

    if name == "-":
        return tb_import.load(sys.stdin.buffer.read(), "<stdin>"), "<stdin>"
    path = Path(name)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"{name}: cannot read: {exc.strerror or exc}") from exc
    return tb_import.load(raw, path.name), path.name


def _print_entity(row: dict[str, Any], verb: str) -> None:
    edges = ", ".join(row["edges"]) if row["edges"] else "none"
    if row.get("on_every_edge"):
        edges = "every edge"
    head = f"{verb} " if verb else ""
    print(f"{head}{row['entity_type']} {row['name']!r}\nid:    {row['id']}\nedges: {edges}")


def _entity_create(cfg: CloudConfig, args: argparse.Namespace) -> int:
    body = _read_json(args.json_file)[0] if args.json_file else None
    if _running(cfg):
        request: dict[str, Any] = {"type": args.type, "name": args.name, "entity": body}
        out = _api(cfg, "POST", "/api/entities",
                   {k: v for k, v in request.items() if v is not None})
    else:
        out = _entities(cfg, lambda ops: ops.create(args.type, args.name, body))
    if args.output == "json":
        print_json(out)
    else:
        _print_entity(out, "created")
    return EXIT_OK


def _entity_import(cfg: CloudConfig, args: argparse.Namespace) -> int:
    doc, source = _read_json(args.file)
    if _running(cfg):
        request: dict[str, Any] = {"file": doc, "source": source, "keep_ids": args.keep_ids}
        if args.type:
            request["type"] = args.type
        if args.assign:
            request["assign"] = args.assign
        out = _api(cfg, "POST", "/api/entities/import", request)
    else:
        out = _entities(cfg, lambda ops: ops.import_file(
            doc, entity_type=args.type, assign=args.assign, keep_ids=args.keep_ids,
            source=source))
    if args.output == "json":
        print_json(out)
        return EXIT_OK
    for row in out["entities"]:
        print(f"{row['id']}  {row['entity_type']:<16} {row['name']}")
    for note in out["notes"]:
        print(f"note: {note}")
    where = f", assigned to edge {out['assigned_to']}" if out.get("assigned_to") else ""
    print(f"imported {len(out['entities'])} entities from {source}{where}")
    return EXIT_OK


def _entity_update(cfg: CloudConfig, args: argparse.Namespace) -> int:
    body = _read_json(args.json_file)[0]
    if _running(cfg):
        query = f"?type={_quoted(args.type)}" if args.type else ""
        out = _api(cfg, "PUT", f"/api/entities/{_quoted(args.id)}{query}", body)
    else:
        out = _entities(cfg, lambda ops: ops.update(args.id, body, args.type))
    if args.output == "json":
        print_json(out)
    else:
        _print_entity(out, "updated")
        for note in out.get("notes", []):
            print(f"note: {note}")
    return EXIT_OK


def _entity_delete(cfg: CloudConfig, args: argparse.Namespace) -> int:
    if _running(cfg):
        query = f"?type={_quoted(args.type)}" if args.type else ""
        out = _api(cfg, "DELETE", f"/api/entities/{_quoted(args.id)}{query}")
    else:
        out = _entities(cfg, lambda ops: ops.delete(args.id, args.type))
    if args.output == "json":
        print_json(out)
    else:
        first, *rest = out["deleted"]
        print(f"deleted {first['entity_type']} {out['name']!r} ({first['id']})")
        for ref in rest:
            print(f"  and {ref['entity_type']} {ref['id']}")
    return EXIT_OK


def _entity_list(cfg: CloudConfig, args: argparse.Namespace) -> int:
    rows = _entities(cfg, lambda ops: ops.entities(entity_type=args.type, name=args.name,
                                                   edge=args.edge), readonly=True)
    for row in rows:
        if args.json:
            print_json(row)
        else:
            edges = "every edge" if row["on_every_edge"] else (",".join(row["edges"]) or "-")
            print(f"{row['id']}  {row['entity_type']:<16} {row['name']:<32} edges={edges}")
    return EXIT_OK


def _entity_show(cfg: CloudConfig, args: argparse.Namespace) -> int:
    row = _entities(cfg, lambda ops: ops.show(args.id, args.type), readonly=True)
    if args.json:
        print_json(row)
        return EXIT_OK
    _print_entity(row, "")
    print(json.dumps(row["entity"], indent=2, ensure_ascii=False))
    if row.get("metadata") is not None:
        print("metadata:")
        print(json.dumps(row["metadata"], indent=2, ensure_ascii=False))
    return EXIT_OK


def _assign(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """assign / unassign each id in turn; a failure is reported on its line and the others go
    on; the exit code is the first failure's."""
    on = args.command == "assign"
    running = _running(cfg)
    first_failure = EXIT_OK
    for ref in args.ids:
        try:
            if running:
                query = f"?type={_quoted(args.type)}" if args.type else ""
                out = _api(cfg, "POST" if on else "DELETE",
                           f"/api/edges/{_quoted(args.edge)}/entities/{_quoted(ref)}{query}")
            else:
                def op(ops: Any, ref: str = ref) -> Any:
                    return ops.assign(args.edge, ref, args.type, on=on)

                out = _entities(cfg, op)
        except (Conflict, StorageError, EdgeSyncError) as exc:
            code = (EXIT_CONFLICT if isinstance(exc, Conflict) else
                    EXIT_STORAGE if isinstance(exc, StorageError) else EXIT_CONFIG)
            fail(f"{ref}: {exc}", code)
            first_failure = first_failure or code
            continue
        if args.output == "json":
            print_json(out)
        else:
            state = ("assigned to" if on else "unassigned from") if out["changed"] else (
                "already on" if on else "was not on")
            print(f"{out['entity_type']} {out['name']!r} ({out['id']}) {state} edge "
                  f"{out['edge']}")
    return first_failure


def _relation_add(cfg: CloudConfig, args: argparse.Namespace) -> int:
    body = {"from": args.src, "to": args.dst, "type": args.type, "typeGroup": args.group}
    if _running(cfg):
        out = _api(cfg, "POST", "/api/relations", body)
    else:
        out = _entities(cfg, lambda ops: ops.add_relation(body))
    if args.output == "json":
        print_json(out)
    else:
        print(f"relation added: {_relation_text(out)}")
    return EXIT_OK


def _relation_delete(cfg: CloudConfig, args: argparse.Namespace) -> int:
    query = {"fromId": args.src, "toId": args.dst, "relationType": args.type,
             "relationTypeGroup": args.group}
    if _running(cfg):
        out = _api(cfg, "DELETE", "/api/relations?" + urllib.parse.urlencode(query))
    else:
        out = _entities(cfg, lambda ops: ops.delete_relation(query))
    if args.output == "json":
        print_json(out)
    else:
        print(f"relation deleted: {_relation_text(out)}")
    return EXIT_OK


def _relation_list(cfg: CloudConfig, args: argparse.Namespace) -> int:
    for rel in _entities(cfg, lambda ops: ops.relations(args.id), readonly=True):
        if args.json:
            print_json(rel)
        else:
            print(_relation_text(rel))
    return EXIT_OK


def _relation_text(rel: dict[str, Any]) -> str:
    src, dst = rel["from"], rel["to"]
    return (f"{src['entityType']} {src['id']} -{rel['type']} ({rel['typeGroup']})-> "
            f"{dst['entityType']} {dst['id']}")


# -- events ------------------------------------------------------------------------------------


def _events(cfg: CloudConfig, args: argparse.Namespace) -> int:
    from edge_sync.cloud.server import open_cloud_store
    from edge_sync.cloud.service import CloudService

    store = open_cloud_store(cfg, readonly=True)
    try:
        edge = CloudService(store).edge(args.edge)
        for e in store.iter_events(edge.edge_id, after=args.after, limit=args.limit):
            if args.json:
                print_json(e.as_json())
            else:
                body = json.dumps(e.body, separators=(",", ":"), default=str)
                print(f"{e.apply_index:>10}  store={e.store_id or '-'}  seq={e.seq}  "
                      f"{e.entity_type:<8} {e.entity_id}  {e.action:<20} ts={e.ts}  {body}")
    finally:
        store.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
