"""A service the tests run as a real subprocess (`edge-sync run`, `edge-cloud serve`): its
environment, one stderr file per start, signals, waiting for its exit, and its JSON log lines.
Agent and CloudProc add how each one is started and talked to."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

STOP_DEADLINE_S = 30.0


class ServiceProcess:
    """Restartable on the same ports and data directory; every start logs to a new file."""

    label: ClassVar[str]  # how error messages name the process, e.g. "edge-sync run"
    command: ClassVar[list[str]]
    stderr_prefix: ClassVar[str]

    def __init__(
        self,
        workdir: Path,
        *,
        data_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir is not None else self.workdir / "data"
        self.env_overrides: dict[str, str] = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_paths: list[Path] = []
        self.served = False
        """Whether a start has served: from then on its ports are its clients' and never change."""

    def own_env(self) -> dict[str, str]:
        """The variables that place this process (data folder, ports, log format)."""
        raise NotImplementedError

    def environment(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("EDGE_", "CLOUD_", "EDGES_"))}
        env.update(self.own_env())
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env_overrides)
        env.update(overrides or {})
        return env

    def spawn(self, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to serve."""
        if self.running:
            raise RuntimeError(f"{self.label} already running")
        path = self.workdir / f"{self.stderr_prefix}-{len(self.stderr_paths) + 1}.stderr"
        self.stderr_paths.append(path)
        with path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command, env=self.environment(env), cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        return self.proc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> int:
        """SIGKILL the process and reap it; returns its exit status (-9)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=STOP_DEADLINE_S)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def terminate(self, *, timeout: float = STOP_DEADLINE_S) -> int:
        """SIGTERM the process and wait for it to exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout=timeout)

    def wait_exit(self, *, timeout: float = STOP_DEADLINE_S) -> int:
        """Wait for the process to exit on its own; returns the exit code (kills it on timeout)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(
                f"{self.label} did not exit within {timeout}s:\n{self.stderr_text()[-4000:]}"
            ) from None

    def pick_ports(self) -> None:
        """Take fresh ports (``free_ports``) for the next start."""
        raise NotImplementedError

    def spawn_until_serving(self, env: Mapping[str, str] | None, timeout: float,
                            ready_or_exit: Callable[[float], int | None]) -> tuple[int, str] | None:
        """Spawn, then ``ready_or_exit(seconds left)`` (None once it serves, else its exit code):
        None once it serves, or (exit code, stderr) of a start that failed otherwise.

        A port another process holds makes it exit with "cannot listen", and it starts again
        until the deadline: before it has ever served, on fresh ports (``pick_ports``: the ones
        picked may have been taken since); after, on the same ones, which its clients know (the
        killed one's may still be held for a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            self.spawn(env)
            code = ready_or_exit(max(0.0, deadline - time.monotonic()))
            if code is None:
                self.served = True
                return None
            text = self.stderr_text()
            if "cannot listen" not in text or time.monotonic() >= deadline:
                return code, text
            if not self.served:
                self.pick_ports()

    def run_to_exit(self, env: Mapping[str, str] | None = None, *,
                    timeout: float = STOP_DEADLINE_S) -> tuple[int, str]:
        """Run a process that is expected to exit by itself: (exit code, stderr)."""
        self.spawn(env)
        return self.wait_exit(timeout=timeout), self.stderr_text()

    def close(self) -> None:
        """Kill the process if it still runs (fixture teardown)."""
        if self.running:
            self.kill9()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stderr_text(self, *, all_runs: bool = False) -> str:
        """The current (or every) run's stderr."""
        paths = self.stderr_paths if all_runs else self.stderr_paths[-1:]
        return "".join(p.read_text(encoding="utf-8", errors="replace")
                       for p in paths if p.exists())

    def log_records(self, *, all_runs: bool = False) -> list[dict[str, Any]]:
        """The JSON log lines of the current (or every) run, parsed; other lines are skipped."""
        out = []
        for line in self.stderr_text(all_runs=all_runs).splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out
