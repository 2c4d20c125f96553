"""``scripts/demo``: starts the reference cloud and the edge agent on loopback with simulated
devices and shows the sync progress (queue depth by lane and status, the link state) once a
second. A third of the way through, the cloud is stopped for ``--outage`` seconds (the edge
keeps accepting) and started again (the backlog drains). Everything lives in a temporary folder
that is removed at the end, unless --keep is given. Both admin APIs listen on loopback without an
``admin.token`` (whatever the environment says), so a browser can open the Cloud Events page."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited with code {proc.returncode}")
        try:
            if http("GET", url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)  # polling a socket that is not up yet
    raise SystemExit("the agent did not start in time")


def drained(admin: str) -> bool:
    _, st = http("GET", f"{admin}/api/status")
    return bool(st["queue"]["pending"] == 0)


def show(admin: str, accepted: int) -> None:
    _, st = http("GET", f"{admin}/api/status")
    q = st["queue"]
    print(f"accepted {accepted:>6}  pending high {q['pending_high']:>4} "
          f"normal {q['pending_normal']:>6}  deployed {q['deployed']:>6}  "
          f"dead {q['dead']}  link {st['link']['state']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo")
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=20, help="points per second per device")
    ap.add_argument("--outage", type=float, default=4, help="seconds the cloud is down")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="edge-sync-demo-"))
    http_port, admin_port, mqtt_port = free_port(), free_port(), free_port()
    rpc_port, cloud_admin_port = free_port(), free_port()
    cloud_env = dict(os.environ, CLOUD_DATA_DIR=str(work / "cloud"), EDGES_RPC_PORT=str(rpc_port),
                     CLOUD_ADMIN_PORT=str(cloud_admin_port), CLOUD_ADMIN_HOST="127.0.0.1",
                     CLOUD_ADMIN_TOKEN="", EDGES_RPC_HOST="127.0.0.1",
                     CLOUD_LOG_FILE=str(work / "cloud.log"))
    cloud_cmd = [sys.executable, "-m", "edge_sync.cli.cloud"]
    created = subprocess.run([*cloud_cmd, "edge", "create", "--name", "demo-edge", "--routing-key",
                              "demo-edge", "--secret", "demo-secret"], env=cloud_env,
                             capture_output=True, check=True)
    del created
    env = dict(os.environ, EDGE_DATA_DIR=str(work / "edge"), EDGE_HTTP_PORT=str(http_port),
               EDGE_HTTP_HOST="127.0.0.1", EDGE_ADMIN_PORT=str(admin_port),
               EDGE_ADMIN_HOST="127.0.0.1", EDGE_ADMIN_TOKEN="",
               EDGE_MQTT_HOST="127.0.0.1", EDGE_MQTT_PORT=str(mqtt_port), EDGE_MQTT_TLS_ENABLED="false",
               EDGE_LOG_FILE=str(work / "edge.log"), EDGE_LOG_LEVEL="INFO",
               CLOUD_ROUTING_KEY="demo-edge", CLOUD_ROUTING_SECRET="demo-secret",
               CLOUD_RPC_HOST="127.0.0.1", CLOUD_RPC_PORT=str(rpc_port),
               EDGE_CLOUD_RECONNECT_INTERVAL_MS="500", EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS="2000")
    print(f"data and logs in {work}")

    def start_cloud() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*cloud_cmd, "serve"], env=cloud_env, stderr=subprocess.DEVNULL)
        wait_until_serving(f"http://127.0.0.1:{cloud_admin_port}/api/status", proc)
        return proc

    cloud: subprocess.Popen[bytes] | None = start_cloud()
    print(f"reference cloud up: gRPC on :{rpc_port}, admin on :{cloud_admin_port}")
    edge = subprocess.Popen([sys.executable, "-m", "edge_sync.cli.edge", "run"], env=env,
                            stderr=subprocess.DEVNULL)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        wait_until_serving(f"{admin}/api/status", edge)
        print(f"edge agent up: device API on :{http_port}, MQTT on :{mqtt_port}, admin on :{admin_port} "
              f"(open {admin}/ for the Cloud Events page)")
        tokens = []
        for i in range(args.devices):
            code, dev = http("POST", f"{admin}/api/devices", {"name": f"demo-sensor-{i}"})
            if code != 201:
                raise SystemExit(f"device create failed: {code} {dev}")
            tokens.append(dev["token"])
            print(f"  device {dev['name']} id={dev['id']}")
        stop = threading.Event()
        accepted = [0] * len(tokens)

        def device_loop(i: int, token: str) -> None:
            value = 20.0
            url = f"http://127.0.0.1:{http_port}/api/v1/{token}/telemetry"
            while not stop.wait(1.0 / args.rate):
                value += random.uniform(-0.5, 0.5)
                code, _ = http("POST", url, {"temperature": round(value, 2), "seq": accepted[i]})
                if code == 200:
                    accepted[i] += 1

        threads = [threading.Thread(target=device_loop, args=(i, t), daemon=True)
                   for i, t in enumerate(tokens)]
        for t in threads:
            t.start()
        start = time.monotonic()
        end = start + args.seconds
        outage = (start + args.seconds / 3, start + args.seconds / 3 + args.outage)
        while time.monotonic() < end or not drained(admin):
            time.sleep(1)  # the demo's display interval
            now = time.monotonic()
            if cloud is not None and outage[0] <= now < outage[1]:
                cloud.send_signal(signal.SIGTERM)
                cloud.wait(30)
                cloud = None
                print("--- cloud stopped: the edge keeps accepting and queues ---")
            elif cloud is None and now >= outage[1]:
                cloud = start_cloud()
                print("--- cloud back: the backlog drains ---")
            if now >= end:
                stop.set()
            show(admin, sum(accepted))
            if now > end + 60:
                print("not drained after 60 s; see the logs")
                break
        stop.set()
        for t in threads:
            t.join()
        show(admin, sum(accepted))
        if args.keep:
            print(f"what the cloud applied: CLOUD_DATA_DIR={work / 'cloud'} "
                  "edge-cloud events --edge demo-edge")
    finally:
        edge.send_signal(signal.SIGTERM)
        code = edge.wait(30)
        print(f"edge agent stopped (exit code {code})")
        if cloud is not None:
            cloud.send_signal(signal.SIGTERM)
            print(f"cloud stopped (exit code {cloud.wait(30)})")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
