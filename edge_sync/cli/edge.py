"""The ``edge-sync`` command: run the agent, show its status, events and server-side RPC
requests, provision devices.

Read-only commands (status, events, rpc list) work with the agent stopped: they open the store with LMDB
read transactions. Exit codes (edge_sync.cli.common): 0 ok; 1 bad configuration or a refused
request; 2 usage; 3 the supervisor gave up; 4 storage unusable; 5 the running agent could not be
reached; 6 conflict (the device name or token is taken).
"""

from __future__ import annotations

import argparse
import resource
import sys
import uuid
from itertools import islice
from typing import Any

from loguru import logger

from edge_sync.cli.common import (
    EXIT_CONFIG,
    EXIT_GAVE_UP,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_UNREACHABLE,
    AdminUnreachable,
    admin_call,
    config_option,
    exit_code_for_refusal,
    fail,
    print_json,
    reader_gone,
    run_until_signal,
)
from edge_sync.clock import SYSTEM_CLOCK
from edge_sync.config import EdgeConfig, load_edge_config
from edge_sync.devices.rpc import RpcStatus, by_status
from edge_sync.errors import ConfigError, EdgeSyncError, StorageError
from edge_sync.logsetup import configure_logging
from edge_sync.status import collect_status
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Status
from edge_sync.storage.rpc_store import RpcStore


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_edge_config(args.config)
    except ConfigError as exc:
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    handler = {"run": _run, "status": _status, "events": _events, "device": _device,
               "rpc": _rpc}[args.command]
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
    ev = sub.add_parser("events", parents=[config],
                        help="the cloud event log, oldest first")
    ev.add_argument("--status", choices=["pending", "deployed", "dead", "all"], default="all")
    ev.add_argument("--entity", type=uuid.UUID, default=None)
    ev.add_argument("--after-seq", type=int, default=0)
    ev.add_argument("--limit", type=int, default=100)
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
    rpc = sub.add_parser("rpc", parents=[config], help="server-side RPC requests to devices")
    rsub = rpc.add_subparsers(dest="rpc_command", required=True)
    rlist = rsub.add_parser("list", parents=[config],
                            help="the requests the edge holds, per device in arrival order")
    rlist.add_argument("--device", type=uuid.UUID, default=None)
    rlist.add_argument("--status", type=str.upper, default=None,
                       choices=[s.value for s in RpcStatus])
    rlist.add_argument("--json", action="store_true")
    return p


# -- run ---------------------------------------------------------------------------------------


def _run(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    from edge_sync.app import EdgeApp, tune_gc_for_service

    configure_logging(cfg.log, component="edge")
    _raise_open_files_limit()
    try:
        app = EdgeApp(cfg)
    except ConfigError as exc:
        logger.error("refusing to start: {}", exc)
        return fail(f"configuration: {exc}", EXIT_CONFIG)
    except StorageError as exc:
        logger.bind(data_dir=str(cfg.storage.data_dir)).error("storage unusable: {}", exc)
        return fail(f"storage unusable: {exc}", EXIT_STORAGE)
    try:
        app.start()
    except EdgeSyncError as exc:
        logger.error("start-up failed: {}", exc)
        app.store.close()
        return fail(f"start-up failed: {exc}", EXIT_CONFIG)
    tune_gc_for_service()  # this process is the agent's alone (not in EdgeApp: see there)
    run_until_signal(lambda timeout: app.wait(timeout) is not None, app.stop)
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
    try:
        code, status = admin_call(cfg.admin, "GET", "/api/status", timeout=3)
        running = code == 200
    except AdminUnreachable:
        running = False
    if not running:
        try:
            store = _open_readonly(cfg)
        except StorageError as exc:
            return fail(str(exc), EXIT_STORAGE)
        try:
            status = collect_status(store, now_ms=SYSTEM_CLOCK.now_ms())
        finally:
            store.close()
        status["agent"] = "not running"
    else:
        status["agent"] = "running"
    if args.json:
        print_json(status)
        return EXIT_OK
    q = status["queue"]
    link = status["link"]
    lines = [
        f"agent:        {status['agent']}",
        f"link:         {link.get('state')}"
        + (f" (circuit breaker {link['breaker']})" if link.get("breaker") else "")
        + (f" - {link['note']}" if link.get("note") else ""),
        f"health:       {status['health']}",
        f"pending:      {q['pending']} (high {q['pending_high']}, normal {q['pending_normal']})",
        f"deployed:     {q['deployed']}",
        f"dead letters: {q['dead']}",
        f"evicted:      {q['evicted']}",
        f"next seq:     {q['next_seq']}",
        f"oldest pending: seq {q['oldest_pending_seq']}, age {q['oldest_pending_age_ms']} ms",
        f"last ack:     {status['last_ack_ms']}",
        f"devices:      {status['devices']}",
        f"rpc open:     {status.get('rpc_open', 0)} (queued or delivered to devices)",
        f"storage:      {status['storage']['used_mb']} MiB used of {status['storage']['cap_mb']} MiB",
    ]
    print("\n".join(lines))
    return EXIT_OK


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
            print(f"{r.device_id}  {r.request_id:>10}  {r.status.value:<10} {way:<7} "
                  f"{r.method}  expires={r.expiration_time}{err}")
    return EXIT_OK


def _device(cfg: EdgeConfig, args: argparse.Namespace) -> int:
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
        message = out.get("message", out) if isinstance(out, dict) else out
        return fail(f"device not created ({code}): {message}", exit_code_for_refusal(code))
    if args.json:
        print_json(out)
    else:
        print(f"id:    {out['id']}\nname:  {out['name']}\ntoken: {out['token']}")
        if out.get("gateway"):
            print("gateway: yes (may use the MQTT gateway API)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
