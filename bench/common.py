"""Helpers shared by the benchmarks: progress output, statistics, free ports, process RSS and
stopping the processes they start."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
        t = os.times()
        return t.user + t.system
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
