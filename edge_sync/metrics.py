"""Process-wide counters and gauges, rendered in Prometheus' text format for GET /metrics.

Each counter has one writing thread (its owning actor), so plain int updates are enough; readers
may see a value a moment old, never a torn one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class Metrics:
    """A small registry: counters owned by actors, gauges computed when scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def counter(self, name: str, help_text: str) -> Counter:
        with self._lock:
            found = self._counters.get(name)
            if found is None:
                found = self._counters[name] = Counter(name, help_text)
            return found

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        with self._lock:
            self._gauges[name] = (help_text, read)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            counters = list(self._counters.values())
            gauges = list(self._gauges.items())
        out: dict[str, float] = {c.name: c.value for c in counters}
        for name, (_help, read) in gauges:
            try:
                out[name] = read()
            except Exception:  # a gauge whose source is restarting is simply absent
                continue
        return out

    def render_prometheus(self) -> str:
        with self._lock:
            counters = list(self._counters.values())
            gauges = list(self._gauges.items())
        lines: list[str] = []
        for c in counters:
            lines += [f"# HELP {c.name} {c.help}", f"# TYPE {c.name} counter", f"{c.name} {c.value}"]
        for name, (help_text, read) in gauges:
            try:
                value = read()
            except Exception:
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
