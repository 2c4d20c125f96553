"""Both admin APIs against what a web page on the operator's machine could send them, on the real
`edge-sync run` and `edge-cloud serve` processes.

A browser sends a cross-site POST without asking first only when its body is text/plain, a form
or multipart; JSON needs a CORS preflight, which these APIs never allow. So every state-changing
route must refuse non-JSON bodies (415) and foreign Origins (403), and change nothing: each test
reads the store back to prove it. With ``admin.token`` set, every route but the health probes
needs the bearer token; an admin API bound beyond loopback without a token refuses to start.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import Agent, read_log
from tests.helpers.cloud_proc import CloudProc
from tests.helpers.wait import wait_until

EVIL = "http://evil.example"
TOKEN = "s3cret-admin-token-for-tests-0123456789"

# (method, path, a valid JSON body) of every state-changing route.
EDGE_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/devices", {"name": "csrf-device", "token": "csrf-token-1"}),
    ("/api/alarms", {"device": "00000000-0000-0000-0000-000000000001", "type": "High"}),
    ("/api/debug/crash", {"target": "queue"}),
]
CLOUD_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/edges", {"name": "evil-edge", "routing_key": "evil-rk", "secret": "evil"}),
    ("/api/devices", {"edge": "rk-1", "name": "csrf-device", "token": "csrf-token-2"}),
    ("/api/attributes", {"device": "dev-1", "edge": "rk-1", "key": "valve", "value": "open"}),
]


def raw(port: int, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request with exactly these headers: (status, lower-cased headers, JSON body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        out_headers = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = data.decode(errors="replace")
    return resp.status, out_headers, parsed


def attacks(body: dict[str, Any]) -> list[tuple[str, bytes, dict[str, str], int]]:
    """(name, body, headers, expected status) of what a cross-site page can send."""
    as_json = json.dumps(body).encode()
    form = "&".join(f"{k}={v}" for k, v in body.items()).encode()
    return [
        ("text/plain, foreign Origin", as_json, {"Content-Type": "text/plain", "Origin": EVIL}, 415),
        ("form, foreign Origin", form,
         {"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL}, 415),
        ("multipart, foreign Origin", b"--x\r\n\r\n" + as_json + b"\r\n--x--\r\n",
         {"Content-Type": "multipart/form-data; boundary=x", "Origin": EVIL}, 415),
        ("text/plain, no Origin", as_json, {"Content-Type": "text/plain"}, 415),
        ("no Content-Type", as_json, {}, 415),
        ("JSON, foreign Origin", as_json, {"Content-Type": "application/json", "Origin": EVIL}, 403),
        ("JSON, Origin null", as_json, {"Content-Type": "application/json", "Origin": "null"}, 403),
    ]


def edge_state(agent: Agent) -> list[tuple[int, str, str, str]]:
    return [(e.seq, e.type, e.action, str(e.entity_id)) for e in read_log(agent.data_dir)]


def cloud_state(cloud: CloudProc) -> tuple[str, str]:
    """The cloud's edges (with their downlink queues) and rk-1's devices, as the store holds them."""
    edges = json.dumps(cloud.admin("GET", "/api/edges"), sort_keys=True)
    devices = json.dumps(cloud.admin("GET", "/api/devices?edge=rk-1"), sort_keys=True)
    return edges, devices


@pytest.fixture
def agent(tmp_path: Path, procs: Any) -> Agent:
    return procs(Agent(tmp_path / "edge", env={"EDGE_FAULT_INJECTION": "true"})).start()


@pytest.fixture
def cloud(tmp_path: Path, procs: Any) -> CloudProc:
    c = procs(CloudProc(tmp_path / "cloud")).start()
    c.create_edge("plant-1", "rk-1", "secret-1")
    c.create_device("rk-1", "dev-1", token="dev-1-token")
    return c


# -- the edge ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), EDGE_ROUTES, ids=[r[0] for r in EDGE_ROUTES])
def test_edge_refuses_cross_site_writes_and_changes_nothing(
        agent: Agent, path: str, body: dict[str, Any]) -> None:
    before = edge_state(agent)
    for name, data, headers, expected in attacks(body):
        status, out_headers, out = raw(agent.admin_port, "POST", path, data, headers)
        assert status == expected, f"{name}: {status} {out}"
        assert out["status"] == expected and out["message"], name
        assert "access-control-allow-origin" not in out_headers, name
    assert edge_state(agent) == before
    messages = [r["message"] for r in agent.log_records()]
    assert not [m for m in messages if "fault injected" in m]
    refused = [m for m in messages if m.startswith("admin request refused")]
    assert len(refused) == len(attacks(body))


def test_edge_answers_no_preflight_with_an_allow(agent: Agent) -> None:
    """The browser asks before a cross-site JSON POST; the answer must not let it through."""
    status, headers, _ = raw(agent.admin_port, "OPTIONS", "/api/devices", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 405
    assert not [h for h in headers if h.startswith("access-control-")]


def test_edge_accepts_json_without_origin_or_with_its_own(agent: Agent) -> None:
    own = f"http://127.0.0.1:{agent.admin_port}"
    for name, headers in (("no Origin", {}), ("own Origin", {"Origin": own})):
        body = {"name": f"dev-{name}", "token": f"token-{name.replace(' ', '-')}"}
        status, out_headers, out = raw(agent.admin_port, "POST", "/api/devices",
                                       json.dumps(body).encode(),
                                       {"Content-Type": "application/json", **headers})
        assert status == 201, f"{name}: {out}"
        assert out["name"] == body["name"] and out["token"] == body["token"]
        assert out_headers["cache-control"] == "no-store"
    added = [e for e in read_log(agent.data_dir) if e.type == "DEVICE" and e.action == "ADDED"]
    assert [e.body["name"] for e in added] == ["dev-no Origin", "dev-own Origin"]
    # The device tokens the answers carried are in no log line.
    assert "token-no-Origin" not in agent.stderr_text()
    assert "token-own-Origin" not in agent.stderr_text()


def test_edge_refuses_a_rebound_host_name_without_token(agent: Agent) -> None:
    """A page on evil.example resolved to 127.0.0.1 is same-origin to the browser; its Host is not."""
    status, _, out = raw(agent.admin_port, "GET", "/api/cloud-events",
                         headers={"Host": f"evil.example:{agent.admin_port}"})
    assert status == 403 and "Host" in out["message"]
    status, _, _ = raw(agent.admin_port, "GET", "/api/cloud-events",
                       headers={"Host": f"localhost:{agent.admin_port}"})
    assert status == 200


def test_edge_token_required_everywhere_but_the_health_probes(tmp_path: Path, procs: Any) -> None:
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_ADMIN_TOKEN": TOKEN}))
    agent.spawn()
    wait_health(agent.admin_port, agent)
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/api/status", "/api/cloud-events", "/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            status, out_headers, _ = raw(agent.admin_port, "GET", path, headers=headers)
            assert status == 401, (path, headers)
            assert out_headers["www-authenticate"].startswith("Bearer")
        assert raw(agent.admin_port, "GET", path, headers=good)[0] == 200, path
    body = json.dumps({"name": "tok-dev", "token": "tok-dev-token"}).encode()
    assert raw(agent.admin_port, "POST", "/api/devices", body,
               {"Content-Type": "application/json"})[0] == 401
    assert [e for e in read_log(agent.data_dir) if e.type == "DEVICE"] == []
    for probe in ("/healthz", "/readyz"):
        status, _, out = raw(agent.admin_port, "GET", probe)
        assert status == 200, (probe, out)
    # The Cloud Events page's shell and files hold no data: public, the data behind them is not.
    for path in ("/", "/static/app.js", "/static/app.css", "/static/index.html"):
        assert raw(agent.admin_port, "GET", path)[0] == 200, path
    assert raw(agent.admin_port, "GET", "/static/other.js")[0] == 401
    assert raw(agent.admin_port, "GET", "/readyz")[2]["components"]["queue"] is True
    # The CLI sends the token from the same configuration (here: the environment).
    cli = subprocess.run([sys.executable, "-m", "edge_sync.cli.edge", "device", "create",
                          "--name", "cli-dev", "--json"], env=agent.environment(),
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout.strip().splitlines()[-1])["name"] == "cli-dev"
    assert TOKEN not in agent.stderr_text()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_edge_refuses_to_start_beyond_loopback_without_token(
        tmp_path: Path, procs: Any, host: str) -> None:
    agent = procs(Agent(tmp_path / "edge", env={"EDGE_ADMIN_HOST": host}))
    code, stderr = agent.run_to_exit()
    assert code == 1, stderr
    assert "admin.token" in stderr and "loopback" in stderr


# -- the reference cloud ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), CLOUD_ROUTES, ids=[r[0] for r in CLOUD_ROUTES])
def test_cloud_refuses_cross_site_writes_and_changes_nothing(
        cloud: CloudProc, path: str, body: dict[str, Any]) -> None:
    before = cloud_state(cloud)
    for name, data, headers, expected in attacks(body):
        status, out_headers, out = raw(cloud.admin_port, "POST", path, data, headers)
        assert status == expected, f"{name}: {status} {out}"
        assert "access-control-allow-origin" not in out_headers, name
    assert cloud_state(cloud) == before
    assert "evil-rk" not in json.dumps(cloud.admin("GET", "/api/edges"))


def test_cloud_accepts_json_without_origin_or_with_its_own(cloud: CloudProc) -> None:
    own = f"http://127.0.0.1:{cloud.admin_port}"
    for rk, headers in (("rk-a", {}), ("rk-b", {"Origin": own})):
        body = json.dumps({"name": rk, "routing_key": rk, "secret": f"secret-{rk}"}).encode()
        status, out_headers, out = raw(cloud.admin_port, "POST", "/api/edges", body,
                                       {"Content-Type": "application/json", **headers})
        assert status == 201, out
        assert out["routing_key"] == rk and out["secret"] == f"secret-{rk}"
        assert out_headers["cache-control"] == "no-store"
    keys = sorted(e["routing_key"] for e in cloud.admin("GET", "/api/edges"))
    assert keys == ["rk-1", "rk-a", "rk-b"]
    assert "secret-rk-a" not in cloud.stderr_text()


def test_cloud_token_required_and_sent_by_the_cli(tmp_path: Path, procs: Any) -> None:
    cloud = procs(CloudProc(tmp_path / "cloud", env={"CLOUD_ADMIN_TOKEN": TOKEN}))
    cloud.spawn()
    wait_health(cloud.admin_port, cloud)
    assert raw(cloud.admin_port, "GET", "/api/status")[0] == 401
    assert raw(cloud.admin_port, "GET", "/api/status",
               headers={"Authorization": "Bearer nope"})[0] == 401
    body = json.dumps({"name": "e", "routing_key": "rk-x", "secret": "x"}).encode()
    assert raw(cloud.admin_port, "POST", "/api/edges", body,
               {"Content-Type": "application/json"})[0] == 401
    assert raw(cloud.admin_port, "GET", "/healthz")[0] == 200
    assert raw(cloud.admin_port, "GET", "/readyz")[0] == 200
    out = cloud.cli_json("edge", "create", "--name", "plant-9", "--routing-key", "rk-9", "--json")
    assert out["routing_key"] == "rk-9"
    status, _, edges = raw(cloud.admin_port, "GET", "/api/edges",
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and [e["routing_key"] for e in edges] == ["rk-9"]
    assert TOKEN not in cloud.stderr_text()


def test_cloud_refuses_to_start_beyond_loopback_without_token(tmp_path: Path, procs: Any) -> None:
    cloud = procs(CloudProc(tmp_path / "cloud", env={"CLOUD_ADMIN_HOST": "0.0.0.0"}))
    code, stderr = cloud.run_to_exit()
    assert code == 1, stderr
    assert "admin.token" in stderr and "loopback" in stderr


# -- helpers ---------------------------------------------------------------------------------------


def wait_health(port: int, proc: Any, *, timeout: float = 20.0) -> None:
    """Wait until /healthz answers: the helpers' own start-up waits poll /api/status, which a
    token now guards."""

    def healthy() -> bool:
        if not proc.running:
            raise AssertionError(f"{proc.label} exited:\n{proc.stderr_text()[-3000:]}")
        try:
            return raw(port, "GET", "/healthz")[0] == 200
        except OSError:
            return False

    wait_until(healthy, timeout=timeout, what=f"{proc.label}: /healthz answering 200")
