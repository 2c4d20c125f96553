"""Helpers shared by the command-line entry points (``edge-sync`` and ``edge-cloud``): exit
codes, the ``--config`` option, the foreground loop that a signal stops, printing and admin API
calls."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from edge_sync.config import AdminConfig
from edge_sync.errors import EdgeSyncError

EXIT_OK = 0
EXIT_CONFIG = 1  # bad configuration (or a port that cannot be bound), or a refused request
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_GAVE_UP = 3  # the supervisor gave up: restart intensity exceeded
EXIT_STORAGE = 4  # storage unusable
EXIT_UNREACHABLE = 5  # the running process could not be reached, or is restarting (HTTP 503)
EXIT_CONFLICT = 6  # the name, token or routing key is already taken (HTTP 409)
EXIT_NOT_FOUND = 7  # no such entity, relation or alarm (HTTP 404)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code_for_refusal(status: int) -> int:
    """The exit code of a command whose admin API call was answered with an error status."""
    if status == 409:
        return EXIT_CONFLICT
    if status == 507:
        return EXIT_STORAGE
    if status == 503:
        return EXIT_UNREACHABLE
    return EXIT_CONFIG


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high``. Anything else is a usage error
    (exit code 2) naming the option and the range, before any command runs: a seq or an index
    must fit the store's 8-byte keys."""

    def integer(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:  # also a literal of more than 4300 digits
            raise argparse.ArgumentTypeError(f"{text[:32]!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text[:32]} is out of range {low}..{high}")
        return value

    return integer


def config_option(parser: argparse.ArgumentParser, default: str) -> argparse.ArgumentParser:
    """Adds ``--config FILE`` to a program's parser and returns the parent parser that gives every
    subcommand the same option, so it is accepted before and after the subcommand. On the
    subcommands its default is SUPPRESS: a value given before the subcommand is kept (one given
    after it wins)."""
    text = f"YAML configuration laid over the packaged one (default: {default})"
    parser.add_argument("--config", type=Path, default=None, metavar="FILE", help=text)
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                        help=text)
    return parent


def install_stop_handlers() -> threading.Event:
    """SIGTERM and SIGINT request a stop from now on (each logged as "stop requested" with the
    signal's name): the returned event is set. Installed before a service starts, so a signal
    that comes while it starts (its ports may already answer) is a clean stop, not a kill by the
    signal's default action. Call it from the main thread (Python's rule for signals)."""
    requested = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.bind(signal=signal.Signals(signum).name).info("stop requested")
        requested.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    return requested


def run_until_signal(
    ended: Callable[[float], bool], stop: Callable[[], None], *, poll_s: float = 0.2,
    requested: threading.Event | None = None,
) -> bool:
    """The foreground loop of ``edge-sync run`` and ``edge-cloud serve``.

    Waits until a stop is requested (``requested``, from install_stop_handlers; installed here
    when not given), or until ``ended(timeout)`` reports that the process ended on its own (the
    edge's supervisor gave up), then calls ``stop()`` on this thread. The handlers stay
    installed while stopping, so a second Ctrl-C does not interrupt the clean stop. Returns True
    when a signal asked for the stop. Call it from the main thread (Python's rule for signals).
    """
    if requested is None:
        requested = install_stop_handlers()
    try:
        while not requested.is_set() and not ended(poll_s):
            pass
    finally:
        stop()
    return requested.is_set()


def reader_gone() -> int:
    """stdout's reader stopped reading (``edge-sync events | head``): not an error of ours.
    Points stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def print_json(value: Any) -> None:
    print(json.dumps(value, separators=(",", ":"), default=str))


class AdminUnreachable(Exception):
    pass


class AdminRefused(EdgeSyncError):
    """The running process's admin API answered, and refused this command's credentials (401,
    or 403): the process runs, so its store must not be written behind its back."""


REFUSED_CREDENTIALS = (401, 403)
"""Admin API answers that mean "running, but not for you": no ``admin.token`` or the wrong one
(401), or a request it does not serve without a token (403: a Host that is not loopback)."""


def credentials_refused(who: str, admin: AdminConfig, env_var: str, status: int,
                        out: Any) -> str:
    """What to tell the operator when ``who`` (the agent, the cloud) answered 401 or 403: that
    it runs, and which setting to set. Never the token itself."""
    where = f"{admin_host(admin)}:{admin.port}"
    setting = (f"set {env_var} (or admin.token in the file given with --config) to the "
               f"admin.token {who} runs with")
    if status == 401:
        why = ("no admin token is configured for this command" if not admin.token else
               "the admin token configured for this command is not the one it runs with")
        return f"{who} at {where} is running but refused the admin token (401): {why}; {setting}"
    told = out.get("message", out) if isinstance(out, dict) else out
    return f"{who} at {where} is running but refused the request ({status}: {told}); {setting}"


def admin_host(admin: AdminConfig) -> str:
    """The address a command calls for ``admin.host`` (a wildcard bind: loopback)."""
    return "127.0.0.1" if admin.host in ("0.0.0.0", "::", "") else admin.host


def admin_call(
    admin: AdminConfig, method: str, path: str, body: Any = None, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """Call the running process's admin API (the agent's or the cloud's, as ``admin`` says);
    (status, decoded JSON body). Sends the configured ``admin.token`` when there is one."""
    host = admin_host(admin)
    port = admin.port
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if admin.token:
        headers["Authorization"] = f"Bearer {admin.token}"
    req = urllib.request.Request(
        f"http://{host}:{port}{path}", data=data, method=method, headers=headers,
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"message": raw.decode(errors="replace")}
    except (urllib.error.URLError, OSError) as exc:
        raise AdminUnreachable(f"admin API at {host}:{port} is unreachable ({exc})") from exc
