"""Chaos: wrong credentials, a wrong TLS root, an expired or mismatched server certificate, with
a real `edge-sync run` and a real `edge-cloud serve` logging JSON at DEBUG (to stderr and to a
log file each). For every fault:

- the edge logs, on every failed attempt, a line saying what failed in the words an operator
  needs ('bad credentials' and which settings to check; the TLS error: 'certificate',
  'handshake', 'Hostname Verification', with the gRPC status);
- it retries at the pace of its backoff (edge_sync_link_connect_attempts_total, the gaps between
  attempts), never in a storm;
- nothing reaches the cloud while it is broken, and the edge keeps accepting data;
- once fixed (the edge restarted with the right secret or root, the edge registered in the
  cloud, the cloud restarted with a valid certificate), everything is delivered exactly once,
  and downlinks flow again;
- the routing secrets and the device access tokens appear in none of the log files of either
  process.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import Agent, read_log
from tests.helpers.cloud_proc import (
    CloudProc,
    check_delivered,
    edge_status,
    link_env,
    wait_connected,
    wait_drained,
)
from tests.helpers.tls import Pki, make_pki
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

RK = "rk-creds-tls"
SECRET = "sec-5b8e0f2a9c41d7e3"
WRONG_SECRET = "wrong-sec-33aa7e19c4f0"
TOKENS = ("tok-edge-a-9d3c51e8b7", "tok-edge-b-4f2a6c0d19")
CLOUD_TOKEN = "tok-cloud-c-7e1b5a93f2"
DEADLINE_S = 30.0
MAX_INTERVAL_S = 2.0  # EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS
JITTER = 0.2
POINTS = 5  # per device, posted while the link is broken


# -- processes -------------------------------------------------------------------------------------


def tls_env(cert: Path, key: Path) -> dict[str, str]:
    return {"EDGES_RPC_SSL_ENABLED": "true", "EDGES_RPC_SSL_CERT": str(cert),
            "EDGES_RPC_SSL_PRIVATE_KEY": str(key)}


def make_cloud(tmp_path: Path, pki: Pki | None) -> CloudProc:
    """A cloud listening on localhost (IPv4 and IPv6, as the edge dials it), logging DEBUG to
    stderr and to cloud.log."""
    env = {"EDGES_RPC_HOST": "localhost", "CLOUD_LOG_LEVEL": "DEBUG",
           "CLOUD_LOG_FILE": str(tmp_path / "cloud" / "cloud.log"),
           "CLOUD_DOWNLINK_RESEND_TIMEOUT_MS": "2000"}
    if pki is not None:
        env.update(tls_env(pki.server_cert, pki.server_key))
    return CloudProc(tmp_path / "cloud", env=env)


def make_edge(tmp_path: Path, cloud: CloudProc, *, routing_key: str = RK, secret: str = SECRET,
              root: Path | None = None) -> Agent:
    """An edge dialing localhost, with a 200 ms .. 2 s backoff, logging DEBUG to stderr and
    to edge.log."""
    extra = {
        "CLOUD_RPC_HOST": "localhost",
        "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "200",
        "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": str(int(MAX_INTERVAL_S * 1000)),
        "EDGE_CLOUD_RECONNECT_JITTER": str(JITTER),
        "EDGE_CLOUD_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "5",
        "EDGE_CLOUD_CIRCUIT_BREAKER_OPEN_S": "1",
        "CLOUD_RPC_TIMEOUT": "3000",
        "EDGE_LOG_LEVEL": "DEBUG",
        "EDGE_LOG_FILE": str(tmp_path / "edge" / "edge.log"),
    }
    if root is not None:
        extra.update({"CLOUD_RPC_SSL_ENABLED": "true", "CLOUD_RPC_SSL_CERT": str(root)})
    return Agent(tmp_path / "edge", env=link_env(cloud, routing_key, secret, **extra))


def reissue(pki: Pki, *, host: str, name: str) -> Pki:
    """A new server certificate for `host`, valid 30 days, signed by pki's CA (a renewal)."""
    folder = pki.ca_cert.parent
    ca_key = pki.ca_cert.with_suffix(".key")
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={host}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "30", "-extfile", str(ext))
    return Pki(pki.ca_cert, cert, key)


# -- the broken phase --------------------------------------------------------------------------------


def provision_and_post(agent: Agent) -> list[str]:
    """Two devices with known tokens, POINTS points each, all accepted while the link is down;
    their ids."""
    ids = []
    for i, token in enumerate(TOKENS):
        resp = agent.admin("POST", "/api/devices", {"name": f"dev-{i}", "token": token})
        assert resp.status == 201, resp.body
        ids.append(str(resp.json()["id"]))
        for v in range(POINTS):
            assert agent.post_telemetry(token, {"v": v}) == 200
    return ids


def attempts(agent: Agent) -> int:
    return int(edge_status(agent)["metrics"].get("edge_sync_link_connect_attempts_total", 0))


def _seconds(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


def check_paced(agent: Agent, *, steady_from: int, gaps: int) -> None:
    """The edge retries at the pace of its backoff, never in a storm. Waits (on the attempt
    counter) until `steady_from` + `gaps` attempts were made, then reads the edge's own log:
    every attempt is logged (CONNECTING), every failure too, and the delay from the k-th
    failure to the next attempt is the backoff's; from failure `steady_from` on, that is the
    maximum delay (+/- its jitter; BAD_CREDENTIALS: exactly the maximum)."""
    wanted = steady_from + gaps

    def link_log() -> tuple[list[float], list[float]]:
        link = [r for r in agent.log_records() if r.get("component") == "link" and "state" in r]
        return ([_seconds(r) for r in link if r["state"] == "CONNECTING"],
                [_seconds(r) for r in link
                 if r["old_state"] == "CONNECTING" and r["state"] in ("BACKOFF", "AUTH_FAILED")])

    # What the delays are computed from: the failure lines 1..wanted-1 and the CONNECTING lines
    # 2..wanted. The attempt counter is bumped just before an attempt's CONNECTING line, so it
    # cannot stand for that line: wait for the lines themselves.
    def logged() -> tuple[list[float], list[float]] | None:
        starts, failures = link_log()
        return (starts, failures) if len(starts) >= wanted and len(failures) >= wanted - 1 else None

    counted_before = attempts(agent)
    starts, failures = wait_until(
        logged, timeout=DEADLINE_S + wanted * MAX_INTERVAL_S * (1 + JITTER),
        what=f"{wanted} connection attempts and {wanted - 1} failures logged",
        show=lambda: tuple(len(x) for x in link_log()))
    counted_after = attempts(agent)
    # every attempt is counted, then logged: at most one counted attempt not logged yet
    assert counted_before - 1 <= len(starts) <= counted_after, (counted_before, len(starts),
                                                                counted_after)
    delays = [round(start - failed, 3) for failed, start in zip(failures, starts[1:], strict=False)]
    assert len(delays) >= wanted - 1, (len(starts), len(failures))
    assert all(d >= 0.05 for d in delays), f"an attempt right after a failure: {delays}"
    steady = delays[steady_from - 1:]
    assert len(steady) >= gaps, delays
    low, high = MAX_INTERVAL_S * (1 - JITTER) - 0.02, MAX_INTERVAL_S * (1 + JITTER) + 0.3
    assert all(low <= d <= high for d in steady), \
        f"delays before each attempt {delays}: from the {steady_from}th, want {low}..{high}"
    span = starts[-1] - starts[0]
    assert len(starts) - 1 <= steady_from + span / (MAX_INTERVAL_S * (1 - JITTER)), \
        f"{len(starts)} attempts in {span:.1f}s: more than the backoff allows"


def check_nothing_delivered(cloud: CloudProc, agent: Agent) -> None:
    rows = cloud.status()["edges"]
    assert [r["applied_events"] for r in rows] == [0] * len(rows)
    st = edge_status(agent)
    assert st["queue"]["pending"] == st["queue"]["total"] == len(TOKENS) * (POINTS + 2)
    assert st["metrics"].get("edge_sync_link_connects_accepted_total", 0) == 0
    assert st["metrics"].get("edge_sync_uplink_events_sent_total", 0) == 0


def failure_lines(agent: Agent) -> list[dict[str, Any]]:
    """The edge's log lines of failed connection attempts (all of its runs)."""
    return [r for r in agent.log_records(all_runs=True) if r.get("component") == "link"
            and r.get("state") in ("AUTH_FAILED", "BACKOFF") and r.get("old_state") == "CONNECTING"]


# -- the fixed phase -------------------------------------------------------------------------------


def check_everything_delivered_once(cloud: CloudProc, agent: Agent) -> None:
    """Drained; the cloud holds the edge's log exactly (each event once, in order); then a
    device created in the cloud reaches the edge (downlinks flow) and its points come back."""
    wait_connected(agent, timeout=DEADLINE_S)
    st = wait_drained(agent, timeout=DEADLINE_S)
    assert st["queue"]["total"] == len(TOKENS) * (POINTS + 2)
    cloud.wait_applied(RK, st["queue"]["total"], timeout=DEADLINE_S)
    check_delivered(cloud.events(RK), read_log(agent.data_dir))

    cloud.create_device(RK, "dev-cloud", token=CLOUD_TOKEN)
    wait_until(lambda: agent.post_telemetry(CLOUD_TOKEN, {"v": 0}) == 200, timeout=DEADLINE_S,
               what="the cloud's device usable on the edge")
    wait_drained(agent, timeout=DEADLINE_S)
    total = edge_status(agent)["queue"]["total"]
    cloud.wait_applied(RK, total, timeout=DEADLINE_S)
    check_delivered(cloud.events(RK), read_log(agent.data_dir))
    wait_until(lambda: cloud.edge_row(RK)["queued_downlinks"] == 0, timeout=DEADLINE_S,
               what="the cloud's downlink queue empty")


def check_no_secret_logged(tmp_path: Path, agent: Agent, cloud: CloudProc,
                           secrets: tuple[str, ...]) -> None:
    """Stop both (so the file sinks are flushed), then grep every log file of both."""
    if agent.running:
        assert agent.terminate() == 0
    if cloud.running:
        assert cloud.terminate() == 0
    files = sorted({*agent.stderr_paths, *cloud.stderr_paths,
                    *(tmp_path / "edge").glob("edge*.log"), *(tmp_path / "cloud").glob("cloud*.log")})
    assert any(f.name == "edge.log" for f in files) and any(f.name == "cloud.log" for f in files)
    hits = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        assert '"level":"INFO"' in text, f"{f} holds no log lines"
        hits += [(f.name, s) for s in secrets if s in text]
    assert hits == [], f"secrets or tokens in the logs: {hits}"


ALL_SECRETS = (SECRET, WRONG_SECRET, *TOKENS, CLOUD_TOKEN)


# -- credentials -------------------------------------------------------------------------------------


def check_bad_credentials_reported(agent: Agent, cloud: CloudProc, routing_key: str) -> None:
    st = edge_status(agent)
    assert st["link"]["state"] in ("AUTH_FAILED", "CONNECTING")  # CONNECTING: the next attempt
    answered = int(st["metrics"]["edge_sync_link_bad_credentials_total"])
    assert answered >= 2
    # Each answer is counted, then logged: wait for the line of every answer counted so far
    # (more attempts may be answered meanwhile, so bound the count by the counter read after).
    lines = wait_until(lambda: ls if len(ls := failure_lines(agent)) >= answered else None,
                       timeout=DEADLINE_S, what=f"{answered} failed connects logged",
                       show=lambda: len(failure_lines(agent)))
    answered_after = int(edge_status(agent)["metrics"]["edge_sync_link_bad_credentials_total"])
    assert [r["state"] for r in lines] == ["AUTH_FAILED"] * len(lines)
    assert answered <= len(lines) <= answered_after, (answered, len(lines), answered_after)
    for r in lines:
        assert r["level"] == "ERROR", r
        assert f"cloud refused routing key {routing_key!r}: bad credentials" in r["message"], r
        assert "check CLOUD_ROUTING_KEY and CLOUD_ROUTING_SECRET" in r["message"], r
    def cloud_refusals() -> list[dict[str, Any]]:
        return [r for r in cloud.log_records() if r["level"] == "WARNING"
                and r["message"].startswith("bad credentials")]

    # the cloud logs each refusal it answered; one more may be under way
    refused = wait_until(lambda: rs if len(rs := cloud_refusals()) >= answered else None,
                         timeout=DEADLINE_S, what=f"{answered} refusals logged by the cloud",
                         show=lambda: len(cloud_refusals()))
    assert len(refused) <= attempts(agent), (len(refused), attempts(agent))


def test_wrong_secret_then_fixed_by_restarting_with_the_right_one(tmp_path, procs):
    cloud = procs(make_cloud(tmp_path, None)).start()
    cloud.create_edge("edge-creds", RK, SECRET)
    agent = procs(make_edge(tmp_path, cloud, secret=WRONG_SECRET)).start()
    provision_and_post(agent)
    # BAD_CREDENTIALS: the next attempt only after the maximum backoff, every time.
    check_paced(agent, steady_from=1, gaps=2)
    check_bad_credentials_reported(agent, cloud, RK)
    check_nothing_delivered(cloud, agent)

    assert agent.terminate() == 0
    agent.start({"CLOUD_ROUTING_SECRET": SECRET})
    check_everything_delivered_once(cloud, agent)
    check_no_secret_logged(tmp_path, agent, cloud, ALL_SECRETS)


def test_unknown_edge_then_recovers_by_itself_once_created_in_the_cloud(tmp_path, procs):
    cloud = procs(make_cloud(tmp_path, None)).start()
    agent = procs(make_edge(tmp_path, cloud)).start()  # RK is not registered yet
    provision_and_post(agent)
    check_paced(agent, steady_from=1, gaps=2)
    check_bad_credentials_reported(agent, cloud, RK)
    check_nothing_delivered(cloud, agent)

    pid = agent.pid
    cloud.create_edge("edge-late", RK, SECRET)  # through the running cloud's admin API
    check_everything_delivered_once(cloud, agent)
    assert agent.pid == pid, "the edge had to be restarted"
    check_no_secret_logged(tmp_path, agent, cloud, ALL_SECRETS)


# -- TLS ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFault:
    words: tuple[str, ...]  # what every failure line must say
    fix: str  # "edge": restart the edge trusting the right root; "cloud": restart the cloud
    #           with a renewed certificate for localhost from the same CA


TLS_FAULTS = {
    "wrong-root": TlsFault(("UNAVAILABLE", "handshake failed", "CERTIFICATE_VERIFY_FAILED",
                            "unable to get local issuer certificate"), "edge"),
    "expired-cert": TlsFault(("UNAVAILABLE", "handshake failed", "CERTIFICATE_VERIFY_FAILED",
                              "certificate has expired"), "cloud"),
    "mismatched-host": TlsFault(("UNAVAILABLE", "Hostname Verification Check failed"), "cloud"),
}


@pytest.mark.parametrize("fault", list(TLS_FAULTS), ids=list(TLS_FAULTS))
def test_tls_fault_reported_paced_and_recovered_once_fixed(tmp_path, procs, fault):
    spec = TLS_FAULTS[fault]
    good = make_pki(tmp_path / "pki-good", host="localhost", name="good")
    if fault == "wrong-root":
        served, trusted = good, make_pki(tmp_path / "pki-other", name="other").ca_cert
    elif fault == "expired-cert":
        served = make_pki(tmp_path / "pki-expired", host="localhost", days=-1, name="expired")
        trusted = served.ca_cert
    else:
        served = make_pki(tmp_path / "pki-otherhost", host="otherhost", name="otherhost")
        trusted = served.ca_cert
    cloud = procs(make_cloud(tmp_path, served)).start()
    cloud.create_edge("edge-tls", RK, SECRET)
    agent = procs(make_edge(tmp_path, cloud, root=trusted)).start()
    provision_and_post(agent)

    # Backoff 0.2, 0.4, 0.8, 1.6 s, then the 2 s maximum (the breaker opens after 5 failures
    # for 1 s, less than that): from the 5th attempt on, one every 2 s (+/- 20%).
    check_paced(agent, steady_from=5, gaps=2)
    st = edge_status(agent)
    assert st["link"]["state"] in ("BACKOFF", "CONNECTING")
    lines = failure_lines(agent)
    assert len(lines) >= 6
    for r in lines:
        assert r["level"] == "WARNING" and r["state"] == "BACKOFF", r
        missing = [w for w in spec.words if w.lower() not in r["message"].lower()]
        assert missing == [], f"{missing} not in {r['message']!r}"
    check_nothing_delivered(cloud, agent)

    pid = agent.pid
    if spec.fix == "edge":
        assert agent.terminate() == 0
        agent.start({"CLOUD_RPC_SSL_CERT": str(good.ca_cert)})
    else:
        renewed = reissue(served, host="localhost", name="renewed")
        assert cloud.terminate() == 0
        cloud.start(tls_env(renewed.server_cert, renewed.server_key))
    check_everything_delivered_once(cloud, agent)
    if spec.fix == "cloud":
        assert agent.pid == pid, "the edge had to be restarted"
    check_no_secret_logged(tmp_path, agent, cloud, ALL_SECRETS)
