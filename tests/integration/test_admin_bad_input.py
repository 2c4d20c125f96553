"""Bad input to the edge's admin API and its CLI: a whole EdgeApp in this process (real LMDB,
the real aiohttp admin API on loopback), and `edge-sync` as a subprocess.

Seqs and query integers beyond 64 bits are refused with 400 naming the range, and nothing
restarts; a replay that fails unexpectedly all the same answers its caller and leaves the queue
running; every route that changes state answers an oversized body with the JSON 413 and one log
line; the CLI refuses integer options out of range as a usage error (exit code 2), with the
agent stopped too.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from edge_sync.actors.messages import ReplayDead
from edge_sync.api.admin_http import AdminHttpApi
from edge_sync.app import EdgeApp
from edge_sync.cli.common import EXIT_USAGE
from edge_sync.config import load_edge_config
from edge_sync.storage.dead_letters import Selection
from tests.helpers.agent import HttpClient, Response
from tests.helpers.log_capture import log_records

DEADLINE = 10.0
ROOT = Path(__file__).resolve().parents[2]
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
OVERSIZED = b'{"x": "' + b"a" * 70_000 + b'"}'  # over the admin API's 64 KiB
TOO_LARGE = "body too large: at most 65,536 bytes"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    """An agent of its own per test (the suite stops every actor after each test)."""
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"),
        "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0", "EDGE_HTTP_HOST": "127.0.0.1",
        "EDGE_MQTT_ENABLED": "false", "EDGE_FAULT_INJECTION": "true",
    })
    edge = EdgeApp(cfg).start()
    yield edge
    edge.stop(timeout=30)


def admin(app: EdgeApp, method: str, path: str, body: object = None, *,
          raw: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    with HttpClient(app.admin_port, timeout=2 * DEADLINE) as client:
        return client.request(method, path, data, headers=headers)


def bad_request(message: str) -> dict[str, object]:
    return {"status": 400, "error": "bad request", "message": message}


# -- seqs and integers beyond 64 bits ----------------------------------------------------------


def test_a_seq_beyond_64_bits_is_400_and_the_queue_does_not_restart(app: EdgeApp) -> None:
    resp = admin(app, "POST", "/api/dead-letters/replay", {"seqs": [5, UINT64_MAX + 1]})
    assert (resp.status, resp.json()) == (
        400, bad_request("seqs: integers from 1 to 18446744073709551615 only"))
    # the largest seq the store can hold is a seq: no dead letter here, so skipped
    resp = admin(app, "POST", "/api/dead-letters/replay", {"seqs": [UINT64_MAX]})
    assert (resp.status, resp.json()) == (
        200, {"replayed": [], "skipped": [{"seq": UINT64_MAX, "reason": "unknown seq"}]})
    assert app.supervisor.restarts("queue") == 0


def test_a_replay_that_fails_unexpectedly_answers_its_caller_and_the_queue_keeps_running(
        app: EdgeApp) -> None:
    selection = Selection(seqs=(1,))
    object.__setattr__(selection, "seqs", (UINT64_MAX + 1,))  # past the checks: a defect
    reply: Future[object] = Future()
    with log_records() as records:
        app.queue.tell(ReplayDead(selection, reply))
        failure = reply.exception(timeout=DEADLINE)
    assert isinstance(failure, struct.error), failure
    failed = [r for r in records if r["message"].startswith("dead-letter replay failed")]
    assert [(r["level"].name, r["message"], r["extra"]["component"]) for r in failed] == [
        ("ERROR", f"dead-letter replay failed unexpectedly: {failure}", "queue")]
    assert failed[0]["exception"] is not None  # with its traceback
    assert app.supervisor.restarts("queue") == 0
    _, created = app.service.create_device("after-a-failed-replay")  # the same incarnation
    assert len(created.result(DEADLINE)) == 2  # ADDED, CREDENTIALS_UPDATED


@pytest.mark.parametrize(("path", "message"), [
    ("/api/apply-log?after=99999999999999999999999",
     "after: 99999999999999999999999 is out of range 0..9223372036854775807"),
    ("/api/apply-log?after=9223372036854775808",
     "after: 9223372036854775808 is out of range 0..9223372036854775807"),
    ("/api/apply-log?after=" + "9" * 5000, f"after: {'9' * 32!r} is not an integer"),
    (f"/api/devices/{uuid.UUID(int=1)}/timeseries?startTs=18446744073709551616",
     "startTs: 18446744073709551616 is out of range 0..9223372036854775807"),
    (f"/api/devices/{uuid.UUID(int=1)}/timeseries?endTs=-1", "endTs: -1 is out of range "
                                                             "0..9223372036854775807"),
    ("/api/cloud-events?after=18446744073709551616",
     "after: 18446744073709551616 is out of range 0..9223372036854775807"),
], ids=["after-huge", "after-int64-max-plus-1", "after-5000-digits", "startTs", "endTs",
        "cloud-events"])
def test_query_integers_out_of_range_are_400_naming_the_range(app: EdgeApp, path: str,
                                                               message: str) -> None:
    with log_records() as records:
        resp = admin(app, "GET", path)
    assert (resp.status, resp.json()) == (400, bad_request(message))
    assert [r for r in records if r["level"].name == "ERROR" or r["exception"]] == []


def test_the_largest_apply_log_index_is_accepted(app: EdgeApp) -> None:
    resp = admin(app, "GET", f"/api/apply-log?after={INT64_MAX}")
    assert (resp.status, resp.json()) == (200, [])


# -- bodies --------------------------------------------------------------------------------------


def _state_changing_routes(app: EdgeApp) -> list[tuple[str, str]]:
    """(method, path) of every route of the admin API that changes state, as its make_app
    builds it (with fault injection: the debug crash route too), path parameters filled in."""
    api = AdminHttpApi(app.store, app.service, app.metrics, crash=lambda _target: False)
    values = {"{id}": str(uuid.UUID(int=7)), "{scope}": "SERVER_SCOPE"}
    out = []
    for route in api.make_app().router.routes():
        if route.method in ("POST", "PUT", "PATCH", "DELETE"):
            path = route.resource.canonical if route.resource is not None else ""
            for name, value in values.items():
                path = path.replace(name, value)
            out.append((route.method, path))
    return out


def test_every_route_that_changes_state_answers_an_oversized_body_with_json_413(
        app: EdgeApp) -> None:
    routes = _state_changing_routes(app)
    assert {("POST", "/api/alarms"), ("POST", "/api/sync"), ("POST", "/api/debug/crash"),
            ("POST", "/api/devices"), ("POST", "/api/dead-letters/replay"),
            ("PUT", f"/api/assets/{uuid.UUID(int=7)}")} <= set(routes)
    with log_records() as records:
        answers = {(method, path): admin(app, method, path, raw=OVERSIZED)
                   for method, path in routes}
    for route, resp in answers.items():
        assert resp.headers["content-type"].startswith("application/json"), route
        assert (resp.status, resp.json()) == (
            413, {"status": 413, "error": "payload too large", "message": TOO_LARGE}), route
    logged = [(r["extra"]["method"], r["extra"]["path"], r["extra"]["code"], r["level"].name)
              for r in records if r["message"] == f"admin request refused: {TOO_LARGE}"]
    assert sorted(logged) == sorted((m, p, "413", "WARNING") for m, p in routes)
    assert app.supervisor.restarts("queue") == 0


def test_a_body_that_is_not_what_its_content_encoding_says_is_400(app: EdgeApp) -> None:
    with log_records() as records:
        resp = admin(app, "POST", "/api/sync", {"full": False},
                     headers={"Content-Encoding": "gzip"})
    assert resp.status == 400, resp.body
    assert resp.json()["message"].startswith("body cannot be read: "), resp.json()
    assert [r["extra"]["code"] for r in records
            if r["message"].startswith("admin request refused: body cannot be read")] == ["400"]


# -- the CLI -------------------------------------------------------------------------------------


def test_an_offline_replay_of_a_seq_beyond_64_bits_is_a_usage_error(app: EdgeApp) -> None:
    """`edge-sync replay` with the agent unreachable (no admin API where it looks): the seq
    is refused before the store is opened, exit code 2, one error line and no traceback."""
    env = {**os.environ, "EDGE_DATA_DIR": str(app.cfg.storage.data_dir),
           "EDGE_ADMIN_PORT": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "edge_sync.cli.edge", "replay", "--dead", "--seq",
         str(UINT64_MAX + 1)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "edge-sync replay: error: argument --seq: 18446744073709551616 is out of range "
        "1..18446744073709551615")
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
