"""``scripts/demo``: starts the reference cloud and the edge agent on loopback with simulated
devices and shows the sync progress once a second: what each transport had acknowledged (HTTP
200s; MQTT PUBACKs of a device and of a gateway speaking for ``PLCS`` devices it creates on first
sight), the queue depth by lane and status, and the link state. A third of the way through, the
cloud is stopped for ``--outage`` seconds (the edge keeps accepting) and started again (the
backlog drains). At the end the cloud's applied events are counted per device: the cloud must
hold every acknowledged message exactly once (exit code 1 otherwise). Everything lives in a
temporary folder that is removed at the end, unless --keep is given. Both admin APIs listen on
loopback without an ``admin.token`` (whatever the environment says), so a browser can open the
Cloud Events page. The MQTT part needs paho-mqtt (the dev extra); --no-mqtt leaves it out."""

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
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as paho_client

EDGE = "demo-edge"
PLCS = 3  # the devices the demo's gateway speaks for
MQTT_TIMEOUT_S = 10.0  # for a CONNACK or a PUBACK: the MQTT server stays up during the outage
TRANSPORTS = ("http", "mqtt", "gateway")


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


def require_paho() -> None:
    """paho-mqtt comes with the dev extra only (edge_sync itself does not need it)."""
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        raise SystemExit("the demo's MQTT device and gateway need paho-mqtt, which comes with the "
                         "dev extra: pip install -e '.[dev]' (scripts/demo does), or run the demo "
                         "with --no-mqtt") from None


class Acks:
    """What the devices had acknowledged: per transport the messages (HTTP 200s, PUBACKs), per
    device the ``seq`` values of its acknowledged telemetry (one cloud event each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: Counter[str] = Counter()
        self.seqs: dict[str, dict[str, list[int]]] = {t: {} for t in TRANSPORTS}

    def add(self, transport: str, seqs_by_device: dict[str, int]) -> None:
        with self._lock:
            self.messages[transport] += 1
            for device, seq in seqs_by_device.items():
                self.seqs[transport].setdefault(device, []).append(seq)

    def count(self, transport: str) -> int:
        with self._lock:
            return self.messages[transport]

    def expected(self) -> dict[str, dict[str, Counter[int]]]:
        with self._lock:
            return {t: {d: Counter(s) for d, s in by_device.items()}
                    for t, by_device in self.seqs.items()}


class MqttDevice:
    """One MQTT 3.1.1 client with a device's access token: QoS 1 publishes, each waited for until
    its PUBACK. No reconnect: the MQTT server stays up while the cloud is away."""

    def __init__(self, port: int, token: str, name: str) -> None:
        import paho.mqtt.client as mqtt  # checked by require_paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.name = name
        self._closing = False
        self._connack = threading.Event()
        self._reason = "no CONNACK"
        self._client: paho_client.Client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311,
            reconnect_on_failure=False)
        self._client.username_pw_set(token)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.connect("127.0.0.1", port, keepalive=30)
        self._client.loop_start()
        if not self._connack.wait(MQTT_TIMEOUT_S) or not self._client.is_connected():
            self.close()
            raise SystemExit(f"MQTT client {name} could not connect: {self._reason}")

    def publish(self, topic: str, body: Any) -> bool:
        """True once the PUBACK came (the edge committed the publish to disk)."""
        info = self._client.publish(topic, json.dumps(body).encode(), qos=1)
        try:
            info.wait_for_publish(MQTT_TIMEOUT_S)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def connected(self) -> bool:
        return self._client.is_connected()

    def close(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()

    # paho's network thread
    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._reason = str(reason)
        self._connack.set()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._connack.set()
        if not self._closing:
            print(f"--- MQTT client {self.name} disconnected ({reason}): it stops publishing ---")


def cloud_telemetry(cloud_admin: str) -> dict[str, Counter[int]]:
    """Per device name, the ``seq`` values of the telemetry events the cloud applied from the
    demo's edge (a value applied twice counts twice)."""
    _, devices = http("GET", f"{cloud_admin}/api/devices?edge={EDGE}")
    names = {d["id"]: d["name"] for d in devices}
    out: dict[str, Counter[int]] = {}
    after = 0
    while True:
        query = urllib.parse.urlencode({"edge": EDGE, "after": after, "limit": 20_000})
        code, events = http("GET", f"{cloud_admin}/api/events?{query}", timeout=60)
        if code != 200:
            raise SystemExit(f"reading the cloud's events failed: {code} {events}")
        if not events:
            return out
        for e in events:
            if e["entity_type"] == "DEVICE" and e["action"] == "TIMESERIES_UPDATED":
                name = names.get(e["entity_id"], e["entity_id"])
                out.setdefault(name, Counter())[e["body"]["values"].get("seq")] += 1
        after = events[-1]["apply_index"]


def compare(expected: dict[str, dict[str, Counter[int]]], cloud: dict[str, Counter[int]],
            transports: tuple[str, ...]) -> tuple[list[str], bool]:
    """The summary lines (one per transport), and whether the cloud holds every acknowledged
    message exactly once. Telemetry stored though its sender saw no acknowledgement (a
    timeout, a closed connection) is allowed, and named."""
    lines, ok = [], True
    for t in transports:
        acked = held = missing = twice = unacked = 0
        for device, seqs in expected[t].items():
            have = cloud.get(device, Counter())
            acked += sum(seqs.values())
            held += sum(min(n, have[s]) for s, n in seqs.items())
            missing += sum((seqs - have).values())
            twice += sum(n - 1 for n in have.values() if n > 1)
            unacked += sum(1 for s in have if s not in seqs)
        devices = len(expected[t])
        line = (f"  {t:<8} the cloud has {held:>6} of {acked:>6} acknowledged telemetry events "
                f"({devices} device{'s' if devices != 1 else ''})")
        if missing or twice:
            ok = False
            line += f"  MISSING {missing}, TWICE {twice}"
        if unacked:
            line += f"  (+{unacked} stored without acknowledgement)"
        lines.append(line)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo")
    ap.add_argument("--devices", type=int, default=5, help="HTTP devices")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=20, help="points per second per device")
    ap.add_argument("--outage", type=float, default=4, help="seconds the cloud is down")
    ap.add_argument("--no-mqtt", action="store_true",
                    help=f"without the MQTT device and the MQTT gateway (of {PLCS} devices)")
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    args = ap.parse_args(argv)
    use_mqtt = not args.no_mqtt
    if use_mqtt:
        require_paho()
    transports = TRANSPORTS if use_mqtt else ("http",)

    work = Path(tempfile.mkdtemp(prefix="edge-sync-demo-"))
    http_port, admin_port, mqtt_port = free_port(), free_port(), free_port()
    rpc_port, cloud_admin_port = free_port(), free_port()
    cloud_env = dict(os.environ, CLOUD_DATA_DIR=str(work / "cloud"), EDGES_RPC_PORT=str(rpc_port),
                     CLOUD_ADMIN_PORT=str(cloud_admin_port), CLOUD_ADMIN_HOST="127.0.0.1",
                     CLOUD_ADMIN_TOKEN="", EDGES_RPC_HOST="127.0.0.1",
                     CLOUD_LOG_FILE=str(work / "cloud.log"))
    cloud_cmd = [sys.executable, "-m", "edge_sync.cli.cloud"]
    created = subprocess.run([*cloud_cmd, "edge", "create", "--name", EDGE, "--routing-key",
                              EDGE, "--secret", "demo-secret"], env=cloud_env,
                             capture_output=True, check=True)
    del created
    env = dict(os.environ, EDGE_DATA_DIR=str(work / "edge"), EDGE_HTTP_PORT=str(http_port),
               EDGE_HTTP_HOST="127.0.0.1", EDGE_ADMIN_PORT=str(admin_port),
               EDGE_ADMIN_HOST="127.0.0.1", EDGE_ADMIN_TOKEN="", EDGE_MQTT_ENABLED="true",
               EDGE_MQTT_HOST="127.0.0.1", EDGE_MQTT_PORT=str(mqtt_port), EDGE_MQTT_TLS_ENABLED="false",
               EDGE_LOG_FILE=str(work / "edge.log"), EDGE_LOG_LEVEL="INFO",
               CLOUD_ROUTING_KEY=EDGE, CLOUD_ROUTING_SECRET="demo-secret",
               CLOUD_RPC_HOST="127.0.0.1", CLOUD_RPC_PORT=str(rpc_port),
               EDGE_CLOUD_RECONNECT_INTERVAL_MS="500", EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS="2000")
    print(f"data and logs in {work}")

    def start_cloud() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*cloud_cmd, "serve"], env=cloud_env, stderr=subprocess.DEVNULL)
        wait_until_serving(f"http://127.0.0.1:{cloud_admin_port}/api/status", proc)
        return proc

    cloud: subprocess.Popen[bytes] | None = start_cloud()
    cloud_admin = f"http://127.0.0.1:{cloud_admin_port}"
    print(f"reference cloud up: gRPC on :{rpc_port}, admin on :{cloud_admin_port}")
    edge = subprocess.Popen([sys.executable, "-m", "edge_sync.cli.edge", "run"], env=env,
                            stderr=subprocess.DEVNULL)
    admin = f"http://127.0.0.1:{admin_port}"
    clients: list[MqttDevice] = []
    ok = True
    try:
        wait_until_serving(f"{admin}/api/status", edge)
        print(f"edge agent up: device API on :{http_port}, MQTT on :{mqtt_port}, admin on :{admin_port} "
              f"(open {admin}/ for the Cloud Events page)")

        def create(name: str, **extra: Any) -> str:
            code, dev = http("POST", f"{admin}/api/devices", {"name": name, **extra})
            if code != 201:
                raise SystemExit(f"device create failed: {code} {dev}")
            print(f"  device {dev['name']} id={dev['id']}" + (" (gateway)" if extra else ""))
            return str(dev["token"])

        acks = Acks()
        stop = threading.Event()
        loops: list[Callable[[], None]] = []

        for i in range(args.devices):
            loops.append(http_loop(f"demo-sensor-{i}", create(f"demo-sensor-{i}"),
                                   f"http://127.0.0.1:{http_port}", args.rate, stop, acks))
        if use_mqtt:
            device = MqttDevice(mqtt_port, create("demo-mqtt-0"), "demo-mqtt-0")
            clients.append(device)
            loops.append(mqtt_loop(device, args.rate, stop, acks))
            gateway = MqttDevice(mqtt_port, create("demo-gateway", gateway=True), "demo-gateway")
            clients.append(gateway)
            plcs = [f"demo-plc-{i}" for i in range(PLCS)]
            for plc in plcs:
                if not gateway.publish("v1/gateway/connect", {"device": plc, "type": "plc"}):
                    raise SystemExit(f"the gateway's connect of {plc} was not acknowledged")
            print(f"  gateway demo-gateway connected {', '.join(plcs)} (created on first sight)")
            loops.append(gateway_loop(gateway, plcs, args.rate, stop, acks))

        threads = [threading.Thread(target=loop, daemon=True) for loop in loops]
        for t in threads:
            t.start()
        start = time.monotonic()
        end = start + args.seconds
        outage = (start + args.seconds / 3, start + args.seconds / 3 + args.outage)
        while True:
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
            if now >= end and not stop.is_set():
                stop.set()
                for t in threads:  # each finishes the request or publish it is waiting on
                    t.join()
            pending = show(admin, acks, transports)
            if stop.is_set() and cloud is not None and pending == 0:
                break
            if now > end + 60:
                print("not drained after 60 s; see the logs")
                break
        for c in clients:
            c.close()
        clients.clear()
        ok = check_cloud(cloud_admin, acks, transports) if cloud is not None else False
        if args.keep:
            print(f"what the cloud applied: CLOUD_DATA_DIR={work / 'cloud'} "
                  f"edge-cloud events --edge {EDGE}")
    finally:
        for c in clients:
            c.close()
        edge.send_signal(signal.SIGTERM)
        code = edge.wait(30)
        print(f"edge agent stopped (exit code {code})")
        if cloud is not None:
            cloud.send_signal(signal.SIGTERM)
            print(f"cloud stopped (exit code {cloud.wait(30)})")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def show(admin: str, acks: Acks, transports: tuple[str, ...]) -> int:
    """One progress line; answers the number of events pending on the edge."""
    _, st = http("GET", f"{admin}/api/status")
    q = st["queue"]
    acked = " ".join(f"{t} {acks.count(t):>5}" for t in transports)
    print(f"acked {acked}  pending high {q['pending_high']:>4} normal {q['pending_normal']:>6}  "
          f"deployed {q['deployed']:>6}  dead {q['dead']}  link {st['link']['state']}")
    return int(q["pending"])


def check_cloud(cloud_admin: str, acks: Acks, transports: tuple[str, ...],
                wait_s: float = 10.0) -> bool:
    """The drain check: the cloud holds every acknowledged telemetry message exactly once. The
    edge counts an event deployed once the cloud acknowledged it, so this holds at once; the
    cloud is read again for up to ``wait_s`` before the difference is reported."""
    expected = acks.expected()
    deadline = time.monotonic() + wait_s
    while True:
        lines, ok = compare(expected, cloud_telemetry(cloud_admin), transports)
        if ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the cloud applies what it acknowledged; read again
    print("drained: the cloud holds every acknowledged message exactly once" if ok else
          "NOT DRAINED: the cloud lacks acknowledged messages or holds some twice")
    for line in lines:
        print(line)
    return ok


def http_loop(name: str, token: str, base: str, rate: float, stop: threading.Event,
              acks: Acks) -> Callable[[], None]:
    url = f"{base}/api/v1/{token}/telemetry"

    def run() -> None:
        value = 20.0
        seq = 0
        while not stop.wait(1.0 / rate):
            value += random.uniform(-0.5, 0.5)
            try:
                code, _ = http("POST", url, {"temperature": round(value, 2), "seq": seq})
            except OSError:
                code = 0  # no answer: not acknowledged (a resend would carry the next seq)
            if code == 200:
                acks.add("http", {name: seq})
            seq += 1

    return run


def mqtt_loop(device: MqttDevice, rate: float, stop: threading.Event,
              acks: Acks) -> Callable[[], None]:
    def run() -> None:
        value = 50.0
        seq = 0
        while not stop.wait(1.0 / rate) and device.connected():
            value += random.uniform(-1, 1)
            if device.publish("v1/devices/me/telemetry", {"humidity": round(value, 2), "seq": seq}):
                acks.add("mqtt", {device.name: seq})
            seq += 1

    return run


def gateway_loop(gateway: MqttDevice, plcs: list[str], rate: float, stop: threading.Event,
                 acks: Acks) -> Callable[[], None]:
    """One ``v1/gateway/telemetry`` publish per tick with one entry for each PLC."""

    def run() -> None:
        pressure = {plc: 2.0 + i for i, plc in enumerate(plcs)}
        seq = 0
        while not stop.wait(1.0 / rate) and gateway.connected():
            ts = int(time.time() * 1000)
            for plc in plcs:
                pressure[plc] += random.uniform(-0.05, 0.05)
            body = {plc: [{"ts": ts, "values": {"pressure": round(pressure[plc], 3), "seq": seq}}]
                    for plc in plcs}
            if gateway.publish("v1/gateway/telemetry", body):
                acks.add("gateway", dict.fromkeys(plcs, seq))
            seq += 1

    return run


if __name__ == "__main__":
    sys.exit(main())
