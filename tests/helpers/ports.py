"""The one way the tests pick TCP ports for a server they start: ``bench.common.free_ports``
(below the kernel's ephemeral range, which no other process's connection can take before the
server binds, and a range of its own for each pytest-xdist worker)."""

from __future__ import annotations

from bench.common import free_ports

__all__ = ["free_ports"]
