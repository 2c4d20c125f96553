"""The one way the tests pick TCP ports for a server they start."""

from __future__ import annotations

import socket

__all__ = ["free_ports"]


def free_ports(count: int = 1) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago (bound to port 0
    together, so they differ, then released for the server under test to take)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
