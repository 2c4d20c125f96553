"""A stand-in for systemd's notification socket: a real AF_UNIX datagram socket (a path in a
short temporary folder, or an abstract name) read by a thread that keeps every datagram, in
arrival order, for the tests to wait on and assert about.

    with NotifySocket() as sock:
        env = {"NOTIFY_SOCKET": sock.address}
        ...
        sock.wait_for(lambda ms: "READY=1" in ms, what="READY=1")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

from tests.helpers.wait import wait_until

__all__ = ["NotifySocket"]


class NotifySocket:
    def __init__(self, *, abstract: bool = False) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._folder: str | None = None
        if abstract:
            name = f"edge-sync-test-{os.getpid()}-{id(self)}"
            self._sock.bind("\0" + name)
            self.address = "@" + name
        else:  # a sun_path is at most 107 bytes: a folder of its own directly under /tmp
            self._folder = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
            self.address = os.path.join(self._folder, "notify")
            self._sock.bind(self.address)
        self._sock.settimeout(0.1)
        self._condition = threading.Condition()
        self._messages: list[str] = []
        self._arrivals: list[float] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._condition:
                self._arrivals.append(time.monotonic())
                self._messages.append(data.decode())
                self._condition.notify_all()

    def messages(self) -> list[str]:
        """Every datagram so far, in arrival order."""
        with self._condition:
            return list(self._messages)

    def arrivals(self) -> list[tuple[float, str]]:
        """(time.monotonic() when read, datagram) for every datagram so far."""
        with self._condition:
            return list(zip(self._arrivals, self._messages, strict=True))

    def wait_for(self, predicate: Callable[[list[str]], object], *, what: str,
                 timeout: float = 20.0) -> list[str]:
        """Wait until predicate(messages) is truthy; the messages then."""
        wait_until(lambda: predicate(self._messages), timeout=timeout, what=what,
                   condition=self._condition, show=self.messages)
        return self.messages()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2.0)
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
