"""Helpers shared by the benchmarks: progress output, statistics, free ports, process RSS, open
file limits, stopping the processes they start, the edge's environment, the agent in process with
a closed-loop poster of telemetry batches (for bench/ingest.py and bench/rules.py), the edge as a
subprocess (EdgeProcess, for bench/sync.py and bench/rpc.py), and Mosquitto (finding or installing
Debian's package, writing a broker's config file). No LMDB of its own: the edge it starts has its
store in a fresh folder."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.e2e import Cloud
    from edge_sync.api.payloads import Entry
    from edge_sync.app import EdgeApp

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr (stdout is reserved for the final JSON line)."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The benchmark's result: one compact JSON line on stdout."""
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


_LOWEST_PORT = 10_000
"""Below this, ports are left to the machine's own services."""


def _port_range() -> tuple[int, int] | None:
    """The ports [low, high) to pick from: below the kernel's ephemeral range
    (``ip_local_port_range``), which it never hands out by itself, neither to an outgoing
    connection nor to a bind to port 0; this process's share of them under pytest-xdist (the
    range split between the workers, so two never pick the same port). None when there is no
    room below the ephemeral range."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if ephemeral - _LOWEST_PORT < 1000:
        return None
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get(
        "PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit() and int(workers):
        share = (ephemeral - _LOWEST_PORT) // int(workers)
        low = _LOWEST_PORT + int(worker[2:]) % int(workers) * share
        return low, low + share
    return _LOWEST_PORT, ephemeral


_port_rng = random.Random()
"""Its own generator: the picks neither draw from nor depend on the global one, which tests seed
(Hypothesis does, for each example)."""
_handed_out: set[int] = set()
"""The ports ``free_ports`` gave in this process: never given twice (until half the range was),
so separate calls for one server's ports, made before it binds any, never get the same one."""


def free_ports(count: int = 1, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago, for servers about to
    be started (each bound together, so they differ, then released for the server to take).

    Picked at random from ``_port_range``, none given before by this process: between the pick
    and the server's bind, no other process's connection or bind to port 0 can take one, and
    another test worker picks from other ports. Without such a range (or when it is full), the
    kernel picks (bind to port 0)."""
    span = _port_range()
    socks: list[socket.socket] = []
    try:
        if span is not None:
            low, high = span
            if len(_handed_out) > (high - low) // 2:
                _handed_out.clear()
            for _ in range(50 * count):
                if len(socks) == count:
                    break
                port = _port_rng.randrange(low, high)
                if port in _handed_out:
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((host, port))
                except OSError:  # in use (or lingering): another one
                    s.close()
                    continue
                socks.append(s)
                _handed_out.add(port)
        while len(socks) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One port as ``free_ports`` picks them."""
    return free_ports(1, host)[0]


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set size) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def rounded(value: float, digits: int = 1) -> float | None:
    """A figure for the JSON line: rounded, or None (JSON null) when it was not measured."""
    return round(value, digits) if math.isfinite(value) else None


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time consumed so far by a process (default: this one), in seconds."""
    if pid is None:
        return time.process_time()  # nanoseconds, where os.times counts 10 ms ticks
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of the agent and of this process over an interval, as % of one core."""

    def __init__(self, agent_pid: int) -> None:
        self._pid = agent_pid
        self._start = (time.monotonic(), cpu_seconds(agent_pid), cpu_seconds())

    def percent(self) -> float:
        """CPU use of the measured process since construction, as % of one core."""
        wall = time.monotonic() - self._start[0]
        return (cpu_seconds(self._pid) - self._start[1]) / wall * 100

    def report(self) -> str:
        wall = time.monotonic() - self._start[0]
        agent = (cpu_seconds(self._pid) - self._start[1]) / wall * 100
        client = (cpu_seconds() - self._start[2]) / wall * 100
        return f"agent cpu {agent:.0f}%, client cpu {client:.0f}%"


def set_progress_origin(t0: float) -> None:
    """Count progress() times from ``t0`` (a time.monotonic() value): a benchmark's worker
    subprocess passes its parent's origin so every progress line shares one time axis."""
    global _T0
    _T0 = t0


def progress_origin() -> float:
    """The time.monotonic() value progress() counts from."""
    return _T0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: ``5`` into clear_refs), so a
    later peak_rss_mb(os.getpid()) covers only what follows. False when the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_parts_mb(pid: int) -> dict[str, float]:
    """Current RSS of a live process and its parts, in MiB: ``rss`` (VmRSS), ``anon`` (RssAnon:
    heap, stacks), ``file`` (RssFile: mapped files, e.g. an LMDB map's resident pages),
    ``shmem`` (RssShmem)."""
    names = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(None, 1)[0] if line else ""
        if key in names:
            out[names[key]] = int(line.split()[1]) / 1024.0
    return out


def terminate(proc: subprocess.Popen[Any], *, timeout: float = 60.0) -> int:
    """SIGTERM and wait: the exit code, or -9 when it had to be killed after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def raise_open_files(wanted: int) -> int:
    """Raise this process's open-file limit (RLIMIT_NOFILE) to at least ``wanted`` where it can
    (the hard limit too when root); children started afterwards inherit it. The soft limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    return limit


class SetupError(RuntimeError):
    """Something a benchmark needs could not be had: a program missing and not installable, a
    server that did not start."""


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, log: Path,
              timeout: float = 30.0) -> None:
    """Wait until 127.0.0.1:port accepts a TCP connection (SetupError when ``proc`` exits first
    or the time runs out; the end of ``log`` is in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with code {proc.returncode} while starting:\n"
                             f"{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
        if time.monotonic() > deadline:
            raise SetupError(f"{what} did not accept connections on port {port} within "
                             f"{timeout:.0f}s:\n{tail(log)}")
        time.sleep(0.01)


# -- the edge's environment, and the agent in process ---------------------------------------------


def edge_env(data_dir: Path, *, http_port: int = 0, admin_port: int = 0,
             mqtt_port: int | None = None) -> dict[str, str]:
    """The agent's environment: the caller's, with the store, ports and log level overridden.
    The device MQTT API is off unless ``mqtt_port`` is given (then on 127.0.0.1 there), so an
    agent never takes 1883."""
    env = dict(os.environ)
    env.update(
        EDGE_DATA_DIR=str(data_dir),
        EDGE_HTTP_HOST="127.0.0.1",
        EDGE_HTTP_PORT=str(http_port),
        EDGE_ADMIN_PORT=str(admin_port),
        EDGE_MQTT_ENABLED="false" if mqtt_port is None else "true",
        EDGE_MQTT_HOST="127.0.0.1",
        EDGE_MQTT_PORT=str(mqtt_port or 0),
        EDGE_MQTT_TLS_ENABLED="false",
        EDGE_LOG_LEVEL="WARNING",
    )
    return env


@contextlib.contextmanager
def inproc_app(workdir: Path, prefix: str, **env: str) -> Iterator[EdgeApp]:
    """``EdgeApp(cfg).start()`` on a fresh store in a temporary folder (``prefix``) under
    ``workdir``, configured like ``edge-sync run`` from edge_env() with ``env`` on top; stopped
    (at most 60 s) and its folder removed when the block ends."""
    from edge_sync.app import EdgeApp
    from edge_sync.config import load_edge_config
    from edge_sync.logsetup import configure_logging

    with tempfile.TemporaryDirectory(prefix=prefix, dir=workdir) as tmp:
        cfg = load_edge_config(None, {**edge_env(Path(tmp) / "edge"), **env})
        configure_logging(cfg.log, component="bench")
        app = EdgeApp(cfg).start()
        try:
            yield app
        finally:
            app.stop(timeout=60.0)


def create_devices(app: EdgeApp, prefix: str, count: int) -> list[uuid.UUID]:
    """``count`` devices ``prefix-0`` ... created through the in-process API (committed)."""
    created = [app.service.create_device(f"{prefix}-{i}") for i in range(count)]
    for _device, future in created:
        future.result(timeout=30)
    return [device.id for device, _ in created]


@dataclass(frozen=True, slots=True)
class PostTally:
    """What post_closed_loop()'s threads did, in entries."""

    committed: int
    """Committed within the measured ``duration`` (after the warm-up)."""
    posted: int
    """Posted in all: warm-up, measured interval and tail."""
    uncommitted: int
    """Of the tail (the posts in flight at the end), not committed within ``tail_s``."""


def post_closed_loop(post: Callable[[uuid.UUID, tuple[Entry, ...]], Future[Any]],
                     devices: Sequence[uuid.UUID], batches: Sequence[tuple[Entry, ...]], *,
                     threads: int, window: int, duration: float, warmup: float = 0.0,
                     tail_s: float = 60.0, what: str = "post_entries") -> PostTally:
    """Closed-loop posting through the in-process API: ``threads`` threads, each with its share
    of ``devices``, post ``batches`` in turn with ``post`` (``app.service.post_entries``) and keep
    ``window`` futures outstanding, for ``warmup`` + ``duration`` seconds from a common start. A
    batch counts when its future resolved (committed) within the ``duration`` after the warm-up.
    The posts in flight when the time is up (the tail) are waited for, at most ``tail_s`` in
    all, so that the app stops idle. RuntimeError (``what`` failed) when a post raised."""
    sizes = {len(b) for b in batches}
    if len(sizes) != 1:
        raise ValueError(f"batches of one size expected, got sizes {sorted(sizes)}")
    (size,) = sizes
    barrier = threading.Barrier(threads + 1)
    committed = [0] * threads
    posted = [0] * threads
    uncommitted = [0] * threads
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        mine = list(devices[index::threads]) or list(devices)
        pending: collections.deque[Future[Any]] = collections.deque()
        n = done = 0
        barrier.wait()
        begin = time.perf_counter() + warmup
        deadline = begin + duration
        try:
            while True:
                while len(pending) < window:
                    pending.append(post(mine[n % len(mine)], batches[n % len(batches)]))
                    n += 1
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    pending[0].result(timeout=remaining)
                except TimeoutError:
                    break
                pending.popleft()
                now = time.perf_counter()
                if now > deadline:
                    break
                if now >= begin:
                    done += size
            committed[index] = done
            posted[index] = n * size
            tail_deadline = time.monotonic() + tail_s
            for future in pending:  # not counted
                try:
                    future.result(timeout=max(0.0, tail_deadline - time.monotonic()))
                except TimeoutError:
                    uncommitted[index] += size
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
               for i in range(threads)]
    for t in workers:
        t.start()
    barrier.wait()
    for t in workers:
        t.join(timeout=warmup + duration + tail_s + 60)
    if errors:
        raise RuntimeError(f"{what} failed: {errors[0]!r}") from errors[0]
    if any(t.is_alive() for t in workers):
        raise RuntimeError("posting threads did not finish")
    return PostTally(sum(committed), sum(posted), sum(uncommitted))


# -- the edge, as a subprocess -------------------------------------------------------------------


class EdgeProcess:
    """``edge-sync run`` on a fresh store, linked to ``cloud``, on free loopback ports (the edge
    bench/sync.py and bench/rpc.py measure)."""

    def __init__(self, data_dir: Path, cloud: Cloud) -> None:
        self.data_dir = data_dir
        self.http_port, self.admin_port = free_port(), free_port()
        self.env = edge_env(data_dir, http_port=self.http_port, admin_port=self.admin_port)
        self.env.update(CLOUD_ROUTING_KEY=cloud.routing_key, CLOUD_ROUTING_SECRET=cloud.secret,
                        CLOUD_RPC_HOST="127.0.0.1", CLOUD_RPC_PORT=str(cloud.rpc_port),
                        EDGE_CLOUD_RECONNECT_INTERVAL_MS="100")
        self.log = data_dir.parent / "edge.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_sync.cli.edge", "run"], env=self.env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def answer(self, *, timeout: float = 5.0) -> dict[str, Any] | None:
        """GET /api/status, each try at most ``timeout`` s; None while it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.admin_port}/api/status"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                value: dict[str, Any] = json.loads(resp.read())
                return value
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def status(self) -> dict[str, Any] | None:
        """GET /api/status; None while it does not answer (SetupError once the process exited)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise SetupError(f"edge exited with {self.proc.returncode}: {tail(self.log, 15)}")
        return self.answer()

    def stop(self, *, timeout: float = 60.0) -> int | None:
        return None if self.proc is None else terminate(self.proc, timeout=timeout)

    def tail(self) -> str:
        """The end of its stderr (2,000 characters), "" without one."""
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def accepted(self) -> int:
        """Connections accepted on the device port (ESTABLISHED with a socket inode) that
        the agent holds."""
        return established(self.http_port, None if self.proc is None else self.proc.pid)


# -- Mosquitto -----------------------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_mosquitto(*, install: bool = True) -> tuple[str, str]:
    """The mosquitto binary and its version; installs Debian's package when it is missing (and
    ``install``). SetupError when it is missing and cannot be installed."""
    binary = mosquitto_binary()
    if binary is None:
        cmd = "apt-get update && apt-get install -y mosquitto"
        if not install:
            raise SetupError(f"mosquitto is not installed (`{cmd}` installs it)")
        progress(f"mosquitto not found: {cmd}")
        if os.geteuid() != 0:
            raise SetupError("mosquitto is not installed and this is not root; install it with "
                             f"`sudo sh -c '{cmd}'` and run again")
        done = subprocess.run(["sh", "-c", cmd], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                              capture_output=True, text=True)
        binary = mosquitto_binary()
        if done.returncode != 0 or binary is None:
            raise SetupError(f"could not install mosquitto (`{cmd}` exited with {done.returncode}):\n"
                             + "\n".join((done.stdout + done.stderr).splitlines()[-15:]))
    out = subprocess.run([binary, "-h"], capture_output=True, text=True)
    match = re.search(r"mosquitto version (\S+)", out.stdout + out.stderr)
    return binary, match.group(1) if match else "unknown"


def mosquitto_config(title: str, port: int, data_dir: Path, settings: Sequence[str]) -> str:
    """A mosquitto.conf: a ``# title`` line, ``user root`` when run as root (no privilege drop,
    so it can write ``data_dir``), an anonymous listener on 127.0.0.1:``port``, then
    ``settings``, then logging (errors to information) to ``data_dir``/mosquitto.log."""
    lines = [f"# {title}"]
    if os.geteuid() == 0:
        lines.append("user root")
    lines += [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        *settings,
        f"log_dest file {data_dir}/mosquitto.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    return "\n".join(lines) + "\n"


def established(port: int, pid: int | None = None) -> int:
    """TCP connections to local ``port`` that a server accepted (ESTABLISHED, with a socket
    inode: what the kernel lists in /proc/net/tcp{,6}); with ``pid``, only the sockets that
    process holds. The tables are the whole network namespace's: on a busy machine (a test
    suite running beside the benchmark) they can list other processes' sockets on the same
    local port, which only the owner's file descriptors tell apart. Counted by socket inode:
    the kernel lists the table in pieces, not as one snapshot, so while other sockets come and
    go a row can be listed twice."""
    owned = None if pid is None else socket_inodes(pid)
    rows: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as f:
            rows += f.readlines()[1:]
    return len(established_inodes(rows, port, owned))


def established_inodes(rows: Sequence[str], port: int, owned: set[str] | None) -> set[str]:
    """The inodes of the ESTABLISHED sockets on local ``port`` among /proc/net/tcp rows (of
    ``owned`` only, when given), each once however often it is listed."""
    hex_port = f":{port:04X}"
    inodes: set[str] = set()
    for row in rows:
        fields = row.split()
        if (fields[1].endswith(hex_port) and fields[3] == "01" and fields[9] != "0"
                and (owned is None or fields[9] in owned)):
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open (its /proc/PID/fd links
    ``socket:[INODE]``); empty once it has ended."""
    inodes: set[str] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes
