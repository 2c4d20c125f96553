"""Helpers shared by the command-line entry points: exit codes, printing, admin API calls."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from edge_sync.config import AdminConfig

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_GAVE_UP = 3
EXIT_STORAGE = 4
EXIT_UNREACHABLE = 5


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def print_json(value: Any) -> None:
    print(json.dumps(value, separators=(",", ":"), default=str))


class AdminUnreachable(Exception):
    pass


def admin_call(
    admin: AdminConfig, method: str, path: str, body: Any = None, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """Call the running process's admin API (the agent's or the cloud's, as ``admin`` says);
    (status, decoded JSON body). Sends the configured ``admin.token`` when there is one."""
    host = "127.0.0.1" if admin.host in ("0.0.0.0", "::", "") else admin.host
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
