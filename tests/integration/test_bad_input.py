"""Bad input to a real `edge-sync run` process: refused precisely, logged once without the
token, and harmless; bad configuration and unusable storage end start-up with the documented
exit codes (1 configuration, 4 storage) and a message that says what to do; a full store
refuses with 507 and keeps everything it accepted.

Most tests share one agent process (module scope). Each refusal they provoke is recorded, and
the last checks compare the agent's JSON log with that record.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Lane, NewEvent
from tests.helpers.agent import Agent, HttpClient, Response, read_log

MAX_BODY = 256 * 1024
UNKNOWN_TOKEN = "no-such-token-7f3a9c"

pytestmark = pytest.mark.slow


@dataclass
class Session:
    """The shared agent, its device, what it accepted and what it refused (in order)."""

    agent: Agent
    device_id: str
    token: str
    accepted: list[int] = field(default_factory=list)
    refusals: list[tuple[int, str]] = field(default_factory=list)  # (status, device field)
    next_value: int = 1000

    def post_valid(self) -> None:
        value = self.next_value
        self.next_value += 1
        assert self.agent.post_telemetry(self.token, {"v": value}) == 200
        self.accepted.append(value)

    def refused(self, resp: Response, status: int, *, known_token: bool = True) -> dict[str, Any]:
        """Assert a refusal's status and JSON error body; record it for the log checks."""
        assert resp.status == status, (resp.status, resp.body)
        assert resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        assert body["status"] == status
        assert isinstance(body["message"], str) and body["message"]
        self.refusals.append((status, self.device_id if known_token else "unknown"))
        return body


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    with Agent(tmp_path_factory.mktemp("bad-input"),
               env={"EDGE_HTTP_MAX_BODY_BYTES": str(MAX_BODY)}) as agent:
        agent.start()
        device_id, token = agent.create_device("sensor-1")
        s = Session(agent, device_id, token)
        for _ in range(3):
            s.post_valid()
        yield s


def telemetry(s: Session, body: bytes, token: str | None = None) -> Response:
    return s.agent.device("POST", f"/api/v1/{token or s.token}/telemetry", body)


# -- malformed and wrongly shaped bodies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"v": 1', "malformed JSON: Expecting ',' delimiter at line 1 column 8"),
        (b'{"v": }', "malformed JSON: Expecting value at line 1 column 7"),
        (b"not json", "malformed JSON: Expecting value at line 1 column 1"),
        (b"", "empty body: expected a JSON object or array"),
        (b'{"v": "\xff\xfe"}', "body is not UTF-8"),
    ],
    ids=["unterminated", "missing-value", "text", "empty", "not-utf8"],
)
def test_malformed_json_is_400_naming_the_problem(session: Session, body: bytes,
                                                   message: str) -> None:
    out = session.refused(telemetry(session, body), 400)
    assert out["error"] == "bad request"
    assert out["message"].startswith(message), out["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"ts": "x", "values": {}}, "telemetry: 'ts' must be ms since 1970"),
        ({"ts": -1, "values": {"v": 1}}, "telemetry: 'ts' -1 is before 1970"),
        ({"ts": 1, "values": [1]}, "telemetry.values: expected a JSON object"),
        ("a string", "telemetry: expected a JSON object"),
        (42, "telemetry: expected a JSON object"),
        ([{"v": 1}, 7], "telemetry[1]: expected a JSON object"),
        ({"": 1}, "telemetry: keys must be 1 to 255 bytes of UTF-8"),
        ({"k" * 256: 1}, "telemetry: keys must be 1 to 255 bytes of UTF-8"),
    ],
    ids=["ts-string", "ts-negative", "values-list", "string", "number", "list-item",
         "empty-key", "long-key"],
)
def test_wrong_shapes_are_400(session: Session, body: Any, message: str) -> None:
    out = session.refused(telemetry(session, json.dumps(body).encode()), 400)
    assert out["message"].startswith(message), out["message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400 + b".5"])
def test_non_finite_numbers_are_400(session: Session, literal: bytes) -> None:
    # 1e400 is no longer among them: a whole number written with an exponent is a long, or
    # beyond 64 bits the string of its digits, as ThingsBoard stores it (api/tb_values.py)
    out = session.refused(telemetry(session, b'{"v": ' + literal + b"}"), 400)
    assert out["message"] == "telemetry: value of 'v' is not a finite number"


def test_deeply_nested_body_is_400(session: Session) -> None:
    out = session.refused(telemetry(session, b"[" * 200_000), 400)
    assert out["message"] == "malformed JSON: nested too deeply"
    out = session.refused(telemetry(session, b'{"v": ' + b"[" * 200_000), 400)
    assert out["message"] == "malformed JSON: nested too deeply"


def test_attributes_post_with_wrong_shape_is_400(session: Session) -> None:
    resp = session.agent.device("POST", f"/api/v1/{session.token}/attributes", [1, 2])
    out = session.refused(resp, 400)
    assert out["message"] == "attributes: expected a JSON object of key/value pairs"


# -- tokens ---------------------------------------------------------------------------------------


def test_unknown_token_is_401(session: Session) -> None:
    out = session.refused(telemetry(session, b'{"v": 1}', UNKNOWN_TOKEN), 401,
                          known_token=False)
    assert out == {"status": 401, "error": "unauthorized",
                   "message": "unknown device access token"}
    resp = session.agent.device("POST", f"/api/v1/{UNKNOWN_TOKEN}/attributes", {"a": 1})
    session.refused(resp, 401, known_token=False)


def test_attributes_get_with_unknown_token_is_401(session: Session) -> None:
    resp = session.agent.device("GET", f"/api/v1/{UNKNOWN_TOKEN}/attributes?clientKeys=a")
    out = session.refused(resp, 401, known_token=False)
    assert out["message"] == "unknown device access token"


# -- size -----------------------------------------------------------------------------------------


def oversized() -> bytes:
    body = b'{"v": "' + b"z" * MAX_BODY + b'"}'
    assert len(body) > MAX_BODY
    return body


def test_oversized_body_is_413(session: Session) -> None:
    out = session.refused(telemetry(session, oversized()), 413)
    assert out["error"] == "payload too large"


def test_oversized_chunked_body_is_413(session: Session) -> None:
    body = oversized()

    def slow_device() -> Iterator[bytes]:
        yield body[:1000]
        time.sleep(0.5)  # a slow device: the rest comes in later segments
        for i in range(1000, len(body), 16384):
            yield body[i:i + 16384]

    with HttpClient(session.agent.http_port) as client:
        resp = client.request("POST", f"/api/v1/{session.token}/telemetry", slow_device(),
                              chunked=True)
    if resp.status in (400, 413):
        session.refusals.append((resp.status, session.device_id))
    out = session.refused(resp, 413)
    session.refusals.pop()  # recorded above
    assert out["message"] == f"body is larger than the limit of {MAX_BODY} bytes (http.max_body_bytes)"


def test_body_one_byte_over_the_limit_is_413(session: Session) -> None:
    body = b'{"v": "' + b"o" * (MAX_BODY + 1 - 9) + b'"}'
    assert len(body) == MAX_BODY + 1
    out = session.refused(telemetry(session, body), 413)
    assert out["message"] == (f"body of {MAX_BODY + 1} bytes is larger than the limit of {MAX_BODY} "
                              "bytes (http.max_body_bytes)")


def test_body_arriving_in_two_segments_is_read_whole(session: Session) -> None:
    value = session.next_value
    session.next_value += 1
    prefix = b'{"v": ' + str(value).encode() + b', "pad": "'
    body = prefix + b"p" * (MAX_BODY - len(prefix) - 2) + b'"}'
    assert len(body) == MAX_BODY  # at the limit, so also accepted once read whole

    def slow_device() -> Iterator[bytes]:
        yield body[:1000]
        time.sleep(0.5)  # a slow device: the rest comes in a later segment
        yield body[1000:]

    with HttpClient(session.agent.http_port) as client:
        resp = client.request("POST", f"/api/v1/{session.token}/telemetry", slow_device(),
                              headers={"Content-Length": str(len(body))})
    if resp.status == 400:
        session.refusals.append((400, session.device_id))
    assert resp.status == 200, resp.body
    session.accepted.append(value)


# -- after all of that ----------------------------------------------------------------------------


def _accepted_values(s: Session) -> list[int]:
    events = [e for e in read_log(s.agent.data_dir) if e.entity_id == uuid.UUID(s.device_id)]
    assert [e.action for e in events[:2]] == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    assert {e.action for e in events[2:]} <= {Action.TIMESERIES_UPDATED}
    return [e.body["values"]["v"] for e in events[2:]]


def test_agent_still_serves_and_kept_everything(session: Session) -> None:
    session.post_valid()
    resp = session.agent.device("GET", f"/api/v1/{session.token}/attributes")
    assert (resp.status, resp.json()) == (200, {"client": {}, "shared": {}})
    assert session.agent.running
    assert _accepted_values(session) == session.accepted
    status = session.agent.admin("GET", "/api/status").json()
    assert status["queue"]["total"] == 2 + len(session.accepted)


def test_each_refusal_logged_once_as_warning_without_the_token(session: Session) -> None:
    records = session.agent.log_records()
    refusals = [r for r in records if r.get("component") == "device-http"
                and "refused with" in r["message"]]
    assert [(int(r["code"]), r["device"]) for r in refusals] == session.refusals
    assert all(r["level"] == "WARNING" for r in refusals)
    text = session.agent.stderr_text()
    assert session.token not in text
    assert UNKNOWN_TOKEN not in text
    assert all(line.startswith("{") for line in text.splitlines()), "a non-JSON log line"


# -- configuration and storage errors at start-up --------------------------------------------------


def test_non_integer_port_exits_1_naming_key_value_and_expectation(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    code, err = agent.run_to_exit({"EDGE_HTTP_PORT": "abc"})
    assert code == 1, err
    assert "http.port" in err
    assert "'abc'" in err
    assert "expected an integer" in err
    assert "EDGE_HTTP_PORT" in err
    assert not agent.data_dir.exists(), "a bad configuration must not touch storage"


def test_device_port_in_use_exits_1_naming_the_address(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", agent.http_port))
        taken.listen()
        code, err = agent.run_to_exit()
    assert code == 1, err
    last = err.splitlines()[-1]
    assert last.startswith("error: start-up failed: device-http: cannot listen on ")
    assert f"127.0.0.1:{agent.http_port}" in last
    assert "address already in use" in last


def test_storage_path_that_cannot_be_created_exits_4(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("a regular file\n")
    data_dir = afile / "sub"
    code, err = Agent(tmp_path / "w", data_dir=data_dir).run_to_exit()
    assert code == 4, err
    last = err.splitlines()[-1]
    assert last.startswith("error: storage unusable: ")
    assert str(data_dir) in last
    assert "cannot be created" in last
    assert "EDGE_DATA_DIR" in last


def _stamped_store(path: Path, events: int = 0) -> Path:
    """A real edge-sync store at path (made by LmdbStore), optionally with events in it."""
    store = LmdbStore(path)
    try:
        if events:
            log = EventLog(store)
            entity = uuid.uuid4()
            batch = [NewEvent("DEVICE", "DEVICE", entity, Action.TIMESERIES_UPDATED,
                              {"ts": i, "values": {"v": i, "pad": "x" * 200}}, i, Lane.NORMAL)
                     for i in range(events)]
            store.write(lambda txn: log.append(txn, batch, first_seq=log.next_seq(txn),
                                               created_time=1, tenant_id=bytes(16),
                                               edge_id=bytes(16)))
    finally:
        store.close()
    return path / "data.mdb"


def test_corrupt_data_file_exits_4_and_is_left_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    garbage = os.urandom(64 * 1024)
    (data_dir / "data.mdb").write_bytes(garbage)
    code, err = Agent(tmp_path / "w", data_dir=data_dir).run_to_exit()
    assert code == 4, err
    last = err.splitlines()[-1]
    assert f"{data_dir / 'data.mdb'} is not a valid LMDB file" in last
    assert "restore it from a backup or move it away" in last
    assert (data_dir / "data.mdb").read_bytes() == garbage


def test_truncated_data_file_exits_4_and_is_left_alone(tmp_path: Path) -> None:
    real = _stamped_store(tmp_path / "real").read_bytes()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "data.mdb").write_bytes(real[:100])
    code, err = Agent(tmp_path / "w", data_dir=data_dir).run_to_exit()
    assert code == 4, err
    last = err.splitlines()[-1]
    assert f"{data_dir / 'data.mdb'} is truncated (100 bytes)" in last
    assert "restore it from a backup or move it away" in last
    assert (data_dir / "data.mdb").read_bytes() == real[:100]


def test_data_file_truncated_mid_way_exits_4(tmp_path: Path) -> None:
    data_file = _stamped_store(tmp_path / "data", events=2000)
    size = data_file.stat().st_size
    assert size > 64 * 1024
    with data_file.open("r+b") as f:
        f.truncate(16 * 1024)
    code, err = Agent(tmp_path / "w", data_dir=tmp_path / "data").run_to_exit()
    assert code == 4, f"exit {code}: {err[-2000:]}"
    assert "truncated" in err.splitlines()[-1]


# -- storage full ---------------------------------------------------------------------------------


def test_storage_full_is_507_keeps_what_it_accepted_and_keeps_answering(tmp_path: Path) -> None:
    agent = Agent(tmp_path, env={"EDGE_STORAGE_MAP_SIZE_INITIAL_MB": "1",
                                 "EDGE_STORAGE_MAX_MB": "1"})
    with agent:
        agent.start()
        device_id, token = agent.create_device("filler")
        accepted: list[int] = []
        pad = "f" * 2000
        refusal: Response | None = None
        with agent.client() as client:
            for value in range(2000):  # 1 MiB holds a few hundred of these
                resp = client.post_json(f"/api/v1/{token}/telemetry", {"v": value, "pad": pad})
                if resp.status != 200:
                    refusal = resp
                    break
                accepted.append(value)
        assert refusal is not None, "the store never filled up"
        assert len(accepted) > 100
        assert refusal.status == 507
        assert refusal.headers["retry-after"] == "1"
        body = refusal.json()
        assert body["status"] == 507
        assert body["error"] == "insufficient storage"
        assert body["message"].startswith("storage full, new data refused")
        assert "storage.max_size_mb" in body["message"]
        # Still answering: the same post is refused again, reads work.
        again = agent.device("POST", f"/api/v1/{token}/telemetry", {"v": -1, "pad": pad})
        assert again.status == 507
        attrs = agent.device("GET", f"/api/v1/{token}/attributes")
        assert (attrs.status, attrs.json()) == (200, {"client": {}, "shared": {}})
        assert agent.admin("GET", "/api/status").status == 200
        assert agent.terminate() == 0
        # the refusals in a few lines, not one per request (each is a DEBUG line): the first in
        # full, the second in the summary told at the stop; each counted
        records = agent.log_records()
        assert [r for r in records if r.get("code") == "507"] == []  # at DEBUG
        assert agent.stderr_text().count("append refused: storage full") == 0
        queue = [(r["level"], r["message"].split(" (")[0].split(";")[0])
                 for r in records if r.get("component") == "queue"
                 and "refused" in r["message"]]
        assert queue == [
            ("WARNING", "storage full: new data refused from now on"),
            ("WARNING", "storage full: 1 more commands refused from 1 entities since the last "
                        "line, 2 since " + next(r["since"] for r in records
                                                if r.get("refused") == 1)),
        ]

        def stored() -> list[int]:
            events = [e for e in read_log(agent.data_dir) if e.entity_id == uuid.UUID(device_id)]
            return [e.body["values"]["v"] for e in events[2:]]

        assert stored() == accepted
        # After a restart on the full store: everything is still there, and it still answers.
        agent.start()
        again = agent.device("POST", f"/api/v1/{token}/telemetry", {"v": -2, "pad": pad})
        assert again.status == 507
        assert again.json()["error"] == "insufficient storage"
        assert agent.device("GET", f"/api/v1/{token}/attributes").status == 200
        assert agent.terminate() == 0
        assert stored() == accepted
